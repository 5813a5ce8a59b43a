"""set_volume_ownership on real tmpfs and ext4-on-loop mounts: the kubelet's fsGroup rules,
symlinks never followed, mounts below never crossed, OnRootMismatch costing one stat.

Every test runs twice (the ``impl`` fixture): with the C walk (``mount_utils._ownership``) and
with the Python one, chosen through ``VOLUMEMANAGER_FSGROUP_WALK`` so that the subprocesses of
the setpriv and strace tests walk the same way. ``test_native_and_python_leave_identical_trees``
compares the two on one mixed tree."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from mount_utils import ownership
from mount_utils.ownership import (
    IMPL_ENV,
    ON_ROOT_MISMATCH,
    OwnershipError,
    OwnershipIncompleteError,
    set_volume_ownership,
)
from tests.fixtures_mounts import require_root, require_tools

GID = 4321
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True, params=["native", "python"])
def impl(request, monkeypatch) -> str:
    """The walk under test: the C one (skipped when it is not built) or the Python one."""
    if request.param == "native" and ownership._native is None:
        pytest.skip("mount_utils._ownership is not built (no C compiler at install time)")
    monkeypatch.setenv(IMPL_ENV, request.param)
    return request.param


def _mount_tmpfs(path) -> str:
    require_root()
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs", str(path)], check=True)
    return str(path)


def _mount_ext4(loop_device_factory, path, size_mb: int = 64, inodes: int | None = None) -> str:
    require_tools("mkfs.ext4")
    dev = loop_device_factory(size_mb)
    cmd = ["mkfs.ext4", "-q", "-F"] + (["-N", str(inodes)] if inodes else []) + [dev.path]
    subprocess.run(cmd, check=True, capture_output=True)
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", dev.path, str(path)], check=True)
    return str(path)


@pytest.fixture(params=["tmpfs", "ext4"])
def volume(request, mount_cleanup, loop_device_factory) -> str:
    """An empty, freshly mounted volume (tmpfs, or ext4 on a loop device) owned by root:root."""
    path = mount_cleanup / "vol"
    if request.param == "tmpfs":
        return _mount_tmpfs(path)
    root = _mount_ext4(loop_device_factory, path)
    os.rmdir(os.path.join(root, "lost+found"))
    return root


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _populate(root: str) -> None:
    os.makedirs(f"{root}/a/b")
    os.chmod(f"{root}/a", 0o700)
    os.chmod(f"{root}/a/b", 0o750)
    for p, m in (("f", 0o644), ("a/g", 0o600), ("a/b/x", 0o755), ("a/suid", 0o4755)):
        with open(f"{root}/{p}", "w") as f:
            f.write(p)
        os.chmod(f"{root}/{p}", m)
    os.symlink("/etc/passwd", f"{root}/passwd-link")
    os.symlink("a", f"{root}/dir-link")
    os.mkfifo(f"{root}/a/fifo", 0o600)


def test_kubelet_rules_for_files_dirs_and_symlinks(volume, impl):
    _populate(volume)
    passwd_before = os.stat("/etc/passwd")
    fds_before = len(os.listdir("/proc/self/fd"))

    res = set_volume_ownership(volume, GID)

    assert res.native == (impl == "native")
    assert res.complete and res.changed and res.failed == 0 and res.skipped_reason is None
    assert (res.dirs, res.files) == (3, 7)  # root, a, a/b; f g x suid fifo and two symlinks
    assert len(os.listdir("/proc/self/fd")) == fds_before
    for p in ("", "a", "a/b", "f", "a/g", "a/b/x", "a/suid", "a/fifo", "passwd-link", "dir-link"):
        assert os.lstat(os.path.join(volume, p)).st_gid == GID, p
    # Directories: | 0660 | 0110 and setgid; files: | 0660; the setuid bit chown drops comes back.
    assert _mode(volume) == 0o2775
    assert _mode(f"{volume}/a") == 0o2770
    assert _mode(f"{volume}/a/b") == 0o2770
    assert _mode(f"{volume}/f") == 0o664
    assert _mode(f"{volume}/a/g") == 0o660
    assert _mode(f"{volume}/a/b/x") == 0o775
    assert _mode(f"{volume}/a/suid") == 0o4775
    assert _mode(f"{volume}/a/fifo") == 0o660
    # Symlinks: their own group only; the target outside the volume is untouched.
    passwd_after = os.stat("/etc/passwd")
    assert (passwd_after.st_mode, passwd_after.st_gid, passwd_after.st_ctime_ns) == (
        passwd_before.st_mode, passwd_before.st_gid, passwd_before.st_ctime_ns)

    # A second walk finds everything right and changes nothing (no ctime moves).
    ctime = os.stat(f"{volume}/a/g").st_ctime_ns
    again = set_volume_ownership(volume, GID)
    assert not again.changed and again.changed_entries == 0 and (again.dirs, again.files) == (3, 7)
    assert os.stat(f"{volume}/a/g").st_ctime_ns == ctime


def test_read_only_masks(volume):
    os.mkdir(f"{volume}/d", 0o700)
    with open(f"{volume}/d/f", "w"):
        pass
    os.chmod(f"{volume}/d/f", 0o600)
    os.chmod(volume, 0o700)

    res = set_volume_ownership(volume, GID, read_only=True)

    assert res.complete
    assert _mode(f"{volume}/d/f") == 0o640
    assert _mode(f"{volume}/d") == 0o2750
    assert _mode(volume) == 0o2750


def test_mount_below_is_not_crossed(mount_cleanup):
    root = _mount_tmpfs(mount_cleanup / "vol")
    other = _mount_tmpfs(f"{root}/other-fs")
    with open(f"{other}/inside", "w"):
        pass
    os.makedirs(f"{root}/src")
    with open(f"{root}/src/f", "w"):
        pass
    os.mkdir(f"{root}/bound")
    # A bind mount within the same filesystem: same st_dev, caught through mountinfo.
    subprocess.run(["mount", "--bind", f"{root}/src", f"{root}/bound"], check=True)
    os.mkdir(f"{root}/src/sub")
    other_root = os.lstat(other)

    # Through a symlinked parent: mountinfo's resolved paths must still match the walk's.
    os.symlink(mount_cleanup, mount_cleanup / "parent-link")
    res = set_volume_ownership(mount_cleanup / "parent-link" / "vol", GID)

    assert res.complete
    assert os.lstat(f"{other}/inside").st_gid == 0
    assert (os.lstat(other).st_gid, os.lstat(other).st_mode) == (other_root.st_gid, other_root.st_mode)
    assert os.lstat(f"{root}/src/f").st_gid == GID  # reached once, through src
    assert (res.dirs, res.files) == (3, 1)  # root, src, src/sub; other-fs and bound skipped


def test_failures_are_reported_with_paths_and_the_rest_is_done(mount_cleanup, loop_device_factory):
    """An immutable file (chown fails for root too) is one failure; everything else is done, and
    the root is left wrong so that OnRootMismatch walks again next time."""
    require_tools("chattr")
    root = _mount_ext4(loop_device_factory, mount_cleanup / "vol")
    os.makedirs(f"{root}/d")
    for n in ("ok1", "stuck", "ok2"):
        with open(f"{root}/d/{n}", "w"):
            pass
    subprocess.run(["chattr", "+i", f"{root}/d/stuck"], check=True)
    try:
        res = set_volume_ownership(root, GID)
        assert res.failed == 1 and not res.complete
        assert res.errors[0].filename == f"{root}/d/stuck"
        assert isinstance(res.errors[0], OwnershipError)
        assert os.lstat(f"{root}/d/ok1").st_gid == GID and os.lstat(f"{root}/d/ok2").st_gid == GID
        assert os.lstat(root).st_gid == 0  # root last, and only after a complete walk
        with pytest.raises(OwnershipIncompleteError, match="stuck"):
            res.raise_for_failures()
        assert set_volume_ownership(root, GID, ON_ROOT_MISMATCH).skipped_reason is None
    finally:
        subprocess.run(["chattr", "-i", f"{root}/d/stuck"], check=True)
    assert set_volume_ownership(root, GID).complete
    assert os.lstat(root).st_gid == GID


def test_unreadable_directory_is_reported_and_the_walk_continues(mount_cleanup):
    """Without CAP_DAC_OVERRIDE/DAC_READ_SEARCH (as a confined daemon might run), a mode-000
    directory cannot be listed: it is one failure with its path; its siblings are done."""
    require_tools("setpriv")
    root = _mount_tmpfs(mount_cleanup / "vol")
    os.makedirs(f"{root}/locked/inner")
    os.makedirs(f"{root}/open")
    with open(f"{root}/open/f", "w"):
        pass
    os.chmod(f"{root}/locked", 0)
    script = textwrap.dedent(f"""
        import json
        from mount_utils.ownership import set_volume_ownership
        r = set_volume_ownership({root!r}, {GID})
        print(json.dumps([r.failed, [e.filename for e in r.errors], r.files, r.dirs]))
    """)
    proc = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                           sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    failed, paths, files, dirs = __import__("json").loads(proc.stdout)
    assert failed == 1 and paths == [f"{root}/locked"]
    assert os.lstat(f"{root}/open/f").st_gid == GID
    assert os.lstat(root).st_gid == 0


STRACE_SCRIPT = """
import os, sys
from mount_utils.ownership import set_volume_ownership
os.write(1, b"")  # warm
os.getppid()  # marker: everything between the two getppid() calls is the call under test
r = set_volume_ownership(sys.argv[1], {gid}, sys.argv[2])
os.getppid()
print(r.skipped_reason, r.files)
"""


def _syscalls_of_call(root: str, policy: str) -> tuple[list[str], str]:
    require_tools("strace")
    proc = subprocess.run(["strace", "-qq", "-f", "-e", "trace=all", "-o", "/dev/stderr",
                           sys.executable, "-c", STRACE_SCRIPT.format(gid=GID), root, policy],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    marks = [i for i, line in enumerate(lines) if "getppid()" in line]
    assert len(marks) == 2, lines[-20:]
    calls = [line.split("(", 1)[0].split()[-1] for line in lines[marks[0] + 1:marks[1]]]
    return calls, proc.stdout


def test_on_root_mismatch_costs_one_stat_when_right(mount_cleanup):
    root = _mount_tmpfs(mount_cleanup / "vol")
    os.makedirs(f"{root}/d")
    with open(f"{root}/d/f", "w"):
        pass
    # Not right yet: OnRootMismatch walks.
    calls, out = _syscalls_of_call(root, ON_ROOT_MISMATCH)
    assert out.split() == ["None", "1"]
    assert "getdents64" in calls
    # Right now: one lstat of the root, nothing else touches the filesystem.
    calls, out = _syscalls_of_call(root, ON_ROOT_MISMATCH)
    assert out.split() == ["OnRootMismatch:", "root", "already", "matches", "0"]
    fs_calls = [c for c in calls if c not in ("clock_gettime", "clock_gettime64", "getpid", "gettid",
                                              "futex", "write", "brk", "mmap", "munmap")]
    stats = [c for c in fs_calls if c in ("lstat", "stat", "newfstatat", "statx", "fstatat64")]
    assert len(stats) == 1, calls
    assert fs_calls == stats, calls
    # A root one bit short (no setgid) is not "right".
    os.chmod(root, 0o775)
    assert set_volume_ownership(root, GID, ON_ROOT_MISMATCH).files == 1


def test_timeout_stops_the_walk_and_leaves_the_root(mount_cleanup):
    root = _mount_tmpfs(mount_cleanup / "vol")
    for d in range(5):
        os.makedirs(f"{root}/d{d}")
    fds_before = len(os.listdir("/proc/self/fd"))
    res = set_volume_ownership(root, GID, timeout=0.0, workers=2)
    assert res.timed_out and not res.complete
    assert os.lstat(root).st_gid == 0
    assert len(os.listdir("/proc/self/fd")) == fds_before
    with pytest.raises(OwnershipIncompleteError, match="deadline"):
        res.raise_for_failures()


def test_timeout_in_the_middle_of_the_walk_closes_everything(mount_cleanup):
    """A deadline that passes while batches are queued and directories are open (20,000 files
    take far longer than 5 ms): the walk stops, every fd is closed, the root is left alone."""
    root = _mount_tmpfs(mount_cleanup / "vol")
    for d in range(200):
        dp = f"{root}/d{d}"
        os.mkdir(dp)
        for i in range(100):
            os.close(os.open(f"{dp}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    fds_before = len(os.listdir("/proc/self/fd"))
    res = set_volume_ownership(root, GID, timeout=0.005, workers=3)
    assert res.timed_out and not res.complete and res.files < 20_000
    assert os.lstat(root).st_gid == 0
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert set_volume_ownership(root, GID).complete


def test_bad_input_and_single_file_root(tmp_path):
    with pytest.raises(ValueError, match="fsGroupChangePolicy"):
        set_volume_ownership(tmp_path, GID, "Sometimes")
    with pytest.raises(ValueError, match="fsGroup"):
        set_volume_ownership(tmp_path, -1)
    with pytest.raises(OwnershipError) as exc:
        set_volume_ownership(tmp_path / "missing", GID)
    assert exc.value.filename == str(tmp_path / "missing")
    f = tmp_path / "file-volume"
    f.write_text("x")
    os.chmod(f, 0o600)
    res = set_volume_ownership(f, GID)
    assert res.changed and (res.files, res.dirs) == (1, 0)
    assert (os.lstat(f).st_gid, _mode(str(f))) == (GID, 0o660)


@pytest.mark.parametrize("workers", [1, 2])
def test_100k_files_get_group_and_setgid(mount_cleanup, loop_device_factory, workers):
    """The issue's bar: 100,000 files (100 dirs x 1,000) on ext4 on a loop device."""
    root = _mount_ext4(loop_device_factory, mount_cleanup / "vol", size_mb=512, inodes=120_000)
    for d in range(100):
        dp = f"{root}/d{d}"
        os.mkdir(dp, 0o755)
        dfd = os.open(dp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(1000):
                os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd))
        finally:
            os.close(dfd)

    res = set_volume_ownership(root, GID, workers=workers)

    assert res.complete and res.files == 100_000 + 0 and res.dirs == 102  # + lost+found, root
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        st = os.lstat(dirpath)
        if st.st_gid != GID or not st.st_mode & stat.S_ISGID or stat.S_IMODE(st.st_mode) & 0o770 != 0o770:
            bad.append(dirpath)
        for n in filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if st.st_gid != GID or stat.S_IMODE(st.st_mode) != 0o664:
                bad.append(n)
    assert not bad[:10]
    assert set_volume_ownership(root, GID, ON_ROOT_MISMATCH).skipped_reason is not None


def test_without_fchmodat2_as_on_kernels_before_6_6(volume, monkeypatch):
    """Kernels < 6.6 (or a seccomp filter) lack fchmodat2: the O_PATH + /proc fallback gives the
    same modes and still never chmods through a symlink."""
    from mount_utils import ownership

    monkeypatch.setattr(ownership, "_fchmodat2_works", False)
    _populate(volume)
    passwd_before = os.stat("/etc/passwd")
    res = set_volume_ownership(volume, GID)
    assert res.complete
    assert (_mode(f"{volume}/f"), _mode(f"{volume}/a/g"), _mode(f"{volume}/a/suid")) == (0o664, 0o660, 0o4775)
    passwd_after = os.stat("/etc/passwd")
    assert (passwd_after.st_mode, passwd_after.st_ctime_ns) == (passwd_before.st_mode, passwd_before.st_ctime_ns)


def _snapshot(root: str) -> dict[str, tuple[int, int, int]]:
    """(file type, mode, gid) of every entry below `root`, keyed by relative path, not crossing
    into mounts (what is below a mount point is compared separately)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath != root and os.path.ismount(dirpath):
            dirnames[:] = []
        for n in [""] + dirnames + filenames if dirpath == root else dirnames + filenames:
            p = os.path.join(dirpath, n) if n else dirpath
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_gid)
    return out


def _mixed_tree(root: str) -> None:
    """Files of many modes (setuid, setgid with g+x, sticky), symlinks in and out, a fifo, a
    deep chain (deeper than the C walk's inline depth), a directory bigger than one batch, an
    immutable file, a tmpfs mount and a bind mount below the root."""
    _populate(root)
    for i, m in enumerate((0o000, 0o600, 0o2755, 0o6755, 0o1777, 0o664, 0o4700)):
        with open(f"{root}/m{i}", "w"):
            pass
        os.chmod(f"{root}/m{i}", m)
    deep = root
    for i in range(80):
        deep = os.path.join(deep, f"l{i}")
        os.mkdir(deep, 0o700 if i % 2 else 0o755)
    with open(f"{deep}/bottom", "w"):
        pass
    os.symlink("../../..", f"{deep}/up-link")
    os.mkdir(f"{root}/big")
    bfd = os.open(f"{root}/big", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(2500):
            os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o640 if i % 3 else 0o644, dir_fd=bfd))
    finally:
        os.close(bfd)
    os.mkdir(f"{root}/big/sub")
    os.mkfifo(f"{root}/big/sub/fifo", 0o644)
    os.makedirs(f"{root}/locked/d")
    with open(f"{root}/locked/d/stuck", "w"):
        pass
    os.chmod(f"{root}/locked/d/stuck", 0o600)
    os.mkdir(f"{root}/mnt")
    _mount_tmpfs(f"{root}/mnt")
    with open(f"{root}/mnt/inside", "w"):
        pass
    os.mkdir(f"{root}/bound")
    subprocess.run(["mount", "--bind", f"{root}/a", f"{root}/bound"], check=True)
    subprocess.run(["chattr", "+i", f"{root}/locked/d/stuck"], check=True)


@pytest.mark.parametrize("read_only", [False, True])
def test_native_and_python_leave_identical_trees(mount_cleanup, loop_device_factory, impl, read_only):
    """The C walk is judged against the Python one (the reference): the same mixed tree, walked
    by each on its own ext4, ends with the same types, modes and gids everywhere, the same
    counts and the same failures (the immutable file), and the mounts below untouched."""
    if impl == "python":
        pytest.skip("compares both walks: runs once, under the native parameter")
    require_tools("chattr")
    roots = {}
    for kind in ("python", "native"):
        root = _mount_ext4(loop_device_factory, mount_cleanup / kind)
        os.rmdir(os.path.join(root, "lost+found"))
        _mixed_tree(root)
        roots[kind] = root
    try:
        before = _snapshot(roots["python"])
        assert before == _snapshot(roots["native"])
        results = {kind: set_volume_ownership(root, GID, read_only=read_only, native=kind == "native")
                   for kind, root in roots.items()}
        after = {kind: _snapshot(root) for kind, root in roots.items()}
        assert after["python"] == after["native"]
        assert after["python"] != before
        py, nat = results["python"], results["native"]
        assert (nat.native, py.native) == (True, False)
        assert (nat.files, nat.dirs, nat.changed_entries, nat.failed, nat.timed_out) == (
            py.files, py.dirs, py.changed_entries, py.failed, py.timed_out)
        assert py.failed == 1 and py.files > 2500 and py.dirs > 80
        for kind, res in results.items():
            assert [e.filename for e in res.errors] == [f"{roots[kind]}/locked/d/stuck"]
            assert [e.errno for e in res.errors] == [py.errors[0].errno]
            assert os.lstat(f"{roots[kind]}/mnt/inside").st_gid == 0
            assert os.lstat(f"{roots[kind]}/mnt").st_gid == 0
            assert os.lstat(roots[kind]).st_gid == 0  # incomplete walk: the root left for next time
        # A second walk of each (still one failure) changes nothing more, in both.
        again = {kind: set_volume_ownership(root, GID, read_only=read_only, native=kind == "native")
                 for kind, root in roots.items()}
        assert again["python"].changed_entries == again["native"].changed_entries == 0
        assert {kind: _snapshot(root) for kind, root in roots.items()} == after
    finally:
        for root in roots.values():
            subprocess.run(["chattr", "-i", f"{root}/locked/d/stuck"], check=False)
    done = {kind: set_volume_ownership(root, GID, read_only=read_only, native=kind == "native")
            for kind, root in roots.items()}
    assert all(r.complete for r in done.values())
    assert _snapshot(roots["python"]) == _snapshot(roots["native"])


def test_native_walk_runs_without_the_gil(mount_cleanup, impl):
    """The C walk releases the GIL for the whole walk: a Python thread keeps running meanwhile."""
    if impl == "python":
        pytest.skip("about the C walk")
    import threading

    root = _mount_tmpfs(mount_cleanup / "vol")
    for d in range(20):
        dfd_path = f"{root}/d{d}"
        os.mkdir(dfd_path)
        dfd = os.open(dfd_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(1000):
                os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd))
        finally:
            os.close(dfd)
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        start_ticks = ticks
        res = set_volume_ownership(root, GID, workers=1)
        during = ticks - start_ticks
    finally:
        stop.set()
        t.join()
    assert res.complete and res.native and res.files == 20_000
    # With the GIL held for the whole walk the counter would stand still (switch interval 5 ms
    # only applies between bytecodes of the walking thread, of which there are none).
    assert during > 1000, during


def test_native_requested_but_not_built(tmp_path, monkeypatch, impl):
    if impl == "native":
        pytest.skip("about the fallback: runs once")
    monkeypatch.setattr(ownership, "_native", None)
    assert not ownership.native_available()
    res = set_volume_ownership(tmp_path, GID)
    assert res.complete and not res.native
    with pytest.raises(RuntimeError, match="not built"):
        set_volume_ownership(tmp_path, GID, native=True)
