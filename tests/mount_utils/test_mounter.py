"""LinuxMounter against real mounts in tmp_path, and the FakeMounter's contract."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from mount_utils import syscalls as sc
from mount_utils.mounter import FakeMounter, LinuxMounter, Mounter, MountError, NotMountedError, needs_helper
from mount_utils.mountinfo import MountTable
from tests.fixtures_mounts import assert_no_mounts_under, require_tools

SECRET = "password=hunter2"


@pytest.fixture(params=["statx", "mountinfo"])
def mounter(request) -> LinuxMounter:
    """Both ways of answering is_mount_point must agree."""
    return LinuxMounter(use_statx=request.param == "statx")


def mkdirs(base, *names):
    out = []
    for n in names:
        p = base / n
        p.mkdir(parents=True)
        out.append(str(p))
    return out


def test_protocol_is_satisfied():
    assert isinstance(LinuxMounter(), Mounter)
    assert isinstance(FakeMounter(), Mounter)


def test_tmpfs_mount_seen_in_mountinfo(mount_cleanup, mounter):
    (target,) = mkdirs(mount_cleanup, "tmp")
    mounter.mount_tmpfs(target, size_bytes=4 << 20, mode=0o750)
    top = MountTable.read().top(target)
    assert top is not None and top.fs_type == "tmpfs"
    assert "nosuid" in top.mount_options and "nodev" in top.mount_options
    assert "size=4096k" in top.super_options and "mode=750" in top.super_options
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750
    assert mounter.is_mount_point(target)
    mounter.unmount(target)
    assert not mounter.is_mount_point(target)
    assert_no_mounts_under(mount_cleanup)


def test_generic_mount_via_syscall_with_flags_and_data(mount_cleanup, mounter):
    (target,) = mkdirs(mount_cleanup, "t")
    mounter.mount("tmpfs", target, "tmpfs", ["noexec", "nodev", "size=1m", "defaults"], ["mode=0700"])
    top = MountTable.read().top(target)
    assert {"noexec", "nodev"} <= set(top.mount_options)
    assert "mode=700" in top.super_options
    mounter.unmount(target)


def test_bind_mount_same_filesystem_is_a_mount_point(mount_cleanup, mounter):
    src, dst = mkdirs(mount_cleanup, "src", "dst")
    (mount_cleanup / "src" / "data").write_text("x")
    assert not mounter.is_mount_point(dst)
    mounter.bind_mount(src, dst)
    # Same filesystem, same st_dev: a device-number comparison would say "not mounted".
    assert os.stat(src).st_dev == os.stat(dst).st_dev
    assert mounter.is_mount_point(dst)
    assert not mounter.is_mount_point(src)
    assert not mounter.is_mount_point(str(mount_cleanup))
    assert (mount_cleanup / "dst" / "data").read_text() == "x"
    top = MountTable.read().top(dst)
    assert top.root.endswith("/src")
    assert mounter.mount_refs(dst) == []
    mounter.unmount(dst)
    assert not mounter.is_mount_point(dst)


def test_read_only_bind_mount(mount_cleanup, mounter):
    src, dst = mkdirs(mount_cleanup, "src", "dst")
    mounter.bind_mount(src, dst, read_only=True)
    top = MountTable.read().top(dst)
    assert top.read_only
    with pytest.raises(OSError) as exc:
        (mount_cleanup / "dst" / "f").write_text("no")
    assert exc.value.errno == errno.EROFS
    # The source stays writable.
    (mount_cleanup / "src" / "f").write_text("yes")
    mounter.unmount(dst)


def test_read_only_bind_keeps_nosuid_nodev_of_the_source(mount_cleanup, mounter):
    (base,) = mkdirs(mount_cleanup, "base")
    mounter.mount_tmpfs(base)  # nosuid,nodev
    os.mkdir(os.path.join(base, "d"))
    (dst,) = mkdirs(mount_cleanup, "dst")
    mounter.bind_mount(os.path.join(base, "d"), dst, read_only=True, options=["noexec"])
    top = MountTable.read().top(dst)
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(top.mount_options)


def test_mount_with_bind_option_routes_to_bind(mount_cleanup, mounter):
    src, dst = mkdirs(mount_cleanup, "src", "dst")
    mounter.mount(src, dst, "none", ["bind", "ro"])
    assert MountTable.read().top(dst).read_only


def test_non_flag_option_for_bind_refused_up_front(mount_cleanup, mounter):
    src, dst = mkdirs(mount_cleanup, "src", "dst")
    with pytest.raises(ValueError):
        mounter.bind_mount(src, dst, options=["size=1m"])
    assert not mounter.is_mount_point(dst)


@pytest.mark.timeout(60)
def test_failed_remount_undoes_the_bind(mount_cleanup):
    """A real remount refusal: in a new user namespace the atime flags of copied mounts are
    locked, so remounting a bind of a noatime mount with 'strictatime' fails with EPERM."""
    require_tools("unshare")
    base, dst = mkdirs(mount_cleanup, "base", "dst")
    sc.sys_mount("tmpfs", base, "tmpfs", sc.MS_NOATIME, None)
    script = textwrap.dedent(f"""
        import errno
        from mount_utils.mounter import LinuxMounter, MountError
        m = LinuxMounter()
        try:
            m.bind_mount({base!r}, {dst!r}, read_only=True, options=["strictatime"])
        except MountError as e:
            print(errno.errorcode[e.errno], "bind undone" in str(e))
        print(m.is_mount_point({dst!r}))
    """)
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
         sys.executable, "-c", script],
        capture_output=True, text=True, timeout=30, cwd=os.getcwd(),
    )
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"cannot create a user namespace: {proc.stderr.strip()}")
    assert proc.stdout.split() == ["EPERM", "True", "False"], proc.stderr


def test_bind_of_missing_source_names_paths(mount_cleanup, mounter):
    (dst,) = mkdirs(mount_cleanup, "dst")
    missing = str(mount_cleanup / "missing")
    with pytest.raises(MountError) as exc:
        mounter.bind_mount(missing, dst)
    assert exc.value.errno == errno.ENOENT
    assert dst in str(exc.value) and missing in str(exc.value)
    assert not mounter.is_mount_point(dst)


def test_bind_mount_of_a_file(mount_cleanup, mounter):
    src = mount_cleanup / "src.txt"
    src.write_text("content")
    dst = mount_cleanup / "dst.txt"
    dst.touch()
    mounter.bind_mount(str(src), str(dst), read_only=True)
    assert mounter.is_mount_point(str(dst))
    assert dst.read_text() == "content"
    mounter.unmount(str(dst))
    assert not mounter.is_mount_point(str(dst))


def test_stacked_mounts_and_refs(mount_cleanup, mounter):
    (base, a, b) = mkdirs(mount_cleanup, "base", "a", "b")
    mounter.mount_tmpfs(base)
    os.mkdir(os.path.join(base, "vol"))
    mounter.bind_mount(os.path.join(base, "vol"), a)
    mounter.bind_mount(os.path.join(base, "vol"), b)
    assert mounter.mount_refs(a) == [b]
    mounter.mount_tmpfs(a)  # stacked on top of the bind
    assert len(mounter.mount_table().at(a)) == 2
    assert mounter.mount_refs(a) == []  # the visible mount at a is the tmpfs
    mounter.unmount(a)
    assert mounter.is_mount_point(a)
    mounter.unmount(a)
    assert not mounter.is_mount_point(a)


def test_unmount_not_mounted(mount_cleanup, mounter):
    (d,) = mkdirs(mount_cleanup, "d")
    with pytest.raises(NotMountedError) as exc:
        mounter.unmount(d)
    assert exc.value.errno == errno.EINVAL and d in str(exc.value)
    with pytest.raises(NotMountedError) as exc:
        mounter.unmount(str(mount_cleanup / "missing"))
    assert exc.value.errno == errno.ENOENT


def test_unmount_busy_raises_mount_error(mount_cleanup, mounter):
    (d,) = mkdirs(mount_cleanup, "d")
    mounter.mount_tmpfs(d)
    fd = os.open(os.path.join(d, "f"), os.O_CREAT | os.O_RDWR)
    cwd = os.getcwd()
    try:
        os.chdir(d)
        with pytest.raises(MountError) as exc:
            mounter.unmount(d)
        assert not isinstance(exc.value, NotMountedError)
        assert exc.value.errno == errno.EBUSY
    finally:
        os.chdir(cwd)
        os.close(fd)
    mounter.unmount(d)


def test_unmount_does_not_follow_a_symlink(mount_cleanup, mounter):
    (d,) = mkdirs(mount_cleanup, "d")
    mounter.mount_tmpfs(d)
    link = mount_cleanup / "link"
    link.symlink_to(d)
    assert not mounter.is_mount_point(str(link))
    with pytest.raises(NotMountedError):
        mounter.unmount(str(link))
    assert mounter.is_mount_point(d)


def test_is_mount_point_missing_and_through_symlinked_parent(mount_cleanup, mounter):
    assert not mounter.is_mount_point(str(mount_cleanup / "nope"))
    assert not mounter.is_mount_point(str(mount_cleanup / "nope" / "deeper"))
    (real,) = mkdirs(mount_cleanup, "real/m")
    os.symlink(mount_cleanup / "real", mount_cleanup / "alias")
    mounter.mount_tmpfs(real)
    assert mounter.is_mount_point(str(mount_cleanup / "alias" / "m"))


def test_sensitive_options_masked_in_syscall_errors(mount_cleanup, mounter):
    (d,) = mkdirs(mount_cleanup, "d")
    with pytest.raises(MountError) as exc:
        mounter.mount("nodev", d, "tmpfs", ["size=1m"], [SECRET])  # tmpfs rejects password=
    msg = str(exc.value)
    assert "hunter2" not in msg and "<masked>" in msg and d in msg and "size=1m" in msg
    assert "hunter2" not in repr(exc.value)
    assert not mounter.is_mount_point(d)


@pytest.mark.parametrize("bad", [["ro,uid=0"], ["a\nb"], [""], ["-o"], ["x\x00y"]])
def test_invalid_options_refused_before_mounting(mount_cleanup, mounter, bad):
    (d,) = mkdirs(mount_cleanup, "d")
    with pytest.raises(ValueError):
        mounter.mount("tmpfs", d, "tmpfs", bad)
    with pytest.raises(ValueError) as exc:
        mounter.mount("tmpfs", d, "tmpfs", [], bad)
    assert "uid=0" not in str(exc.value)  # sensitive options named by index only
    assert not mounter.is_mount_point(d)


def test_needs_helper():
    assert needs_helper("nfs") and needs_helper("nfs4") and needs_helper("fuse.sshfs") and needs_helper("cifs")
    assert not needs_helper("ext4") and not needs_helper("tmpfs") and not needs_helper("xfs")


def test_helper_type_uses_mount_command_and_masks_secret(mount_cleanup, mounter):
    """The real mount(8): no mount.nfs helper is installed here, so it fails; the error names
    the target and source, and the secret never appears."""
    (d,) = mkdirs(mount_cleanup, "d")
    with pytest.raises(MountError) as exc:
        mounter.mount("server:/export", d, "nfs", ["vers=4.1", "hard"], [SECRET])
    msg = str(exc.value)
    assert "hunter2" not in msg and d in msg and "server:/export" in msg and "<masked>" in msg
    assert not mounter.is_mount_point(d)


def _fake_mount_command(tmp_path, body: str) -> str:
    """A stand-in for mount(8) at the outermost edge (NFS cannot be mounted in this kernel)."""
    script = tmp_path / "fake-mount"
    script.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return str(script)


def test_mount_command_argv_and_stderr_scrubbed(mount_cleanup):
    record = mount_cleanup / "argv"
    cmd = _fake_mount_command(mount_cleanup, f"""\
        printf '%s\\n' "$@" > {record}
        echo "mount error: bad option $4; password hunter2 rejected" >&2
        exit 32
        """)
    m = LinuxMounter(mount_command=cmd)
    (d,) = mkdirs(mount_cleanup, "d")
    with pytest.raises(MountError) as exc:
        m.mount("srv:/x", d, "nfs", ["vers=4"], [SECRET])
    assert record.read_text().split("\n")[:-1] == ["-t", "nfs", "-o", f"vers=4,{SECRET}", "--", "srv:/x", d]
    msg = str(exc.value)
    assert "exited with status 32" in msg and "hunter2" not in msg and "<masked>" in msg


@pytest.mark.timeout(20)
def test_mount_command_timeout_is_uncertain(mount_cleanup):
    cmd = _fake_mount_command(mount_cleanup, "exec sleep 30\n")
    m = LinuxMounter(mount_command=cmd, command_timeout=0.5)
    (d,) = mkdirs(mount_cleanup, "d")
    with pytest.raises(MountError) as exc:
        m.mount("srv:/x", d, "nfs4")
    assert exc.value.errno == errno.ETIMEDOUT and exc.value.uncertain
    assert "timed out" in str(exc.value)


def test_mount_command_missing():
    m = LinuxMounter(mount_command="/nonexistent/mount")
    with pytest.raises(MountError) as exc:
        m.mount("srv:/x", "/tmp/nowhere", "nfs")
    assert exc.value.errno == errno.ENOENT


# -- FakeMounter ------------------------------------------------------------------------------


def test_fake_records_calls_and_tracks_table():
    f = FakeMounter()
    f.mount("/dev/sdb", "/g/global", "ext4", ["noatime"], ["secret"])
    f.bind_mount("/g/global", "/pods/a/vol")
    f.bind_mount("/g/global", "/pods/b/vol", read_only=True)
    f.mount_tmpfs("/pods/a/cache", size_bytes=1024, mode=0o700)
    assert f.is_mount_point("/pods/a/vol") and f.is_mount_point("/g/global/")
    assert not f.is_mount_point("/pods/c/vol")
    assert sorted(f.mount_refs("/g/global")) == ["/pods/a/vol", "/pods/b/vol"]
    assert f.mount_table().top("/pods/b/vol").read_only
    f.unmount("/pods/a/vol")
    assert f.mount_refs("/g/global") == ["/pods/b/vol"]
    assert f.log[0] == ("mount", "/dev/sdb", "/g/global", "ext4", ("noatime",), ("secret",))
    assert f.log[1] == ("bind_mount", "/g/global", "/pods/a/vol", False, ())
    assert ("mount_tmpfs", "/pods/a/cache", 1024, 0o700) in f.log
    assert f.calls("unmount") == [("unmount", "/pods/a/vol")]
    assert "secret" not in repr(f.mount_table().mounts)


def test_fake_bind_of_subdir_and_plain_dirs_share_refs():
    f = FakeMounter()
    f.bind_mount("/host/data", "/p1")
    f.bind_mount("/host/data/", "/p2")
    f.bind_mount("/host/other", "/p3")
    assert f.mount_refs("/p1") == ["/p2"]
    f.mount_tmpfs("/t")
    f.bind_mount("/t/sub", "/p4")
    f.bind_mount("/t/sub", "/p5")
    assert f.mount_refs("/p4") == ["/p5"]
    assert f.mount_table().top("/p4").root == "/sub"


def test_fake_unmount_errors_and_injected_failures():
    f = FakeMounter()
    with pytest.raises(NotMountedError):
        f.unmount("/x")
    f.fail_next("/x")
    with pytest.raises(MountError) as exc:
        f.mount_tmpfs("/x")
    assert exc.value.errno == errno.EIO
    assert not f.is_mount_point("/x")
    f.mount_tmpfs("/x")  # only the next call failed
    f.fail_next("/x", MountError(errno.EBUSY, "busy", "/x"), operation="unmount")
    assert f.is_mount_point("/x")  # queries do not consume a failure aimed at unmount
    with pytest.raises(MountError) as exc:
        f.unmount("/x")
    assert exc.value.errno == errno.EBUSY
    f.unmount("/x")
    assert f.calls("unmount") == [("unmount", "/x")] * 3


def test_fake_refuses_bad_options_and_requires_targets(tmp_path):
    f = FakeMounter(require_targets=True)
    with pytest.raises(ValueError):
        f.mount("a", str(tmp_path), "ext4", ["ro,uid=0"])
    with pytest.raises(MountError) as exc:
        f.mount_tmpfs(str(tmp_path / "missing"))
    assert exc.value.errno == errno.ENOENT
    f.mount_tmpfs(str(tmp_path))
    assert f.is_mount_point(str(tmp_path))


def test_fake_stacked_and_busy():
    f = FakeMounter()
    f.mount_tmpfs("/a")
    f.mount_tmpfs("/a")
    f.mount_tmpfs("/a/b")
    assert [m.fs_type for m in f.mount_table().at("/a")] == ["tmpfs", "tmpfs"]
    with pytest.raises(MountError) as exc:
        f.unmount("/a")
    assert exc.value.errno == errno.EBUSY
    f.unmount("/a/b")
    f.unmount("/a")
    f.unmount("/a")
    assert not f.is_mount_point("/a")


def test_mount_error_is_oserror_with_target():
    e = MountError(errno.EPERM, "Operation not permitted", "/t", source="/s", fs_type="ext4",
                   shown_options=["ro", "<masked>"])
    assert isinstance(e, OSError) and e.errno == errno.EPERM and e.filename == "/t"
    assert str(e) == "mount '/s' on '/t' (type ext4, options ro,<masked>) failed: Operation not permitted"
    import pickle
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and type(e2) is MountError


def test_unmount_outlasts_a_brief_reference_to_the_mount(mount_cleanup):
    """Issue 16: a reference held for a moment (here an open directory fd, closed 2 ms later;
    in the field a stat of the mount point by someone) makes umount2 fail with EBUSY: the
    unmount tries again within ~10 ms instead of failing into a 0.5 s backoff. A reference
    that stays is still EBUSY."""
    import threading

    m = LinuxMounter()
    target = mount_cleanup / "brief"
    target.mkdir()
    m.mount_tmpfs(str(target), size_bytes=1 << 20)
    fd = os.open(str(target), os.O_RDONLY | os.O_DIRECTORY)
    closer = threading.Timer(0.002, os.close, (fd,))
    closer.start()
    m.unmount(str(target))
    closer.join()
    assert not m.is_mount_point(str(target))

    m.mount_tmpfs(str(target), size_bytes=1 << 20)
    fd = os.open(str(target), os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(MountError) as exc:
            m.unmount(str(target))
        assert exc.value.errno == errno.EBUSY
    finally:
        os.close(fd)
    m.unmount(str(target))
