"""The atomic writer: layout, atomic swaps under a concurrent reader, removed keys, no-op
updates, hostile paths and planted symlinks, crash leftovers. On a real tmpfs (as secret
volumes are) and on the disk under tmp_path (durable writes with fsync)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from mount_utils import syscalls as sc
from mount_utils.atomic_writer import AtomicWriteError, AtomicWriter, FileProjection, _fs_is_memory
from mount_utils.paths import PathSafetyError

TS_RE = re.compile(r"^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d{9}$")


def _mount_tmpfs(path) -> None:
    path.mkdir()
    sc.sys_mount("tmpfs", str(path), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=16m,mode=0755")


@pytest.fixture
def tmpfs_dir(mount_cleanup):
    """A fresh tmpfs below tmp_path (unmounted at teardown by mount_cleanup)."""
    target = mount_cleanup / "vol"
    _mount_tmpfs(target)
    return target


@pytest.fixture(params=["tmpfs", "disk"])
def vol(request, mount_cleanup):
    """The volume dir: a tmpfs mount, or a plain dir on the disk holding tmp_path."""
    target = mount_cleanup / "vol"
    if request.param == "tmpfs":
        _mount_tmpfs(target)
    else:
        target.mkdir()
    return target


def fp(data: str | bytes, mode: int = 0o644, fs_user: int | None = None) -> FileProjection:
    return FileProjection(data.encode() if isinstance(data, str) else data, mode, fs_user)


def version_dirs(vol) -> list[str]:
    return sorted(n for n in os.listdir(vol) if TS_RE.match(n))


def test_layout_symlinks_modes_nested(vol):
    w = AtomicWriter(str(vol))
    changed = w.write({
        "a.txt": fp("alpha"),
        "secret": fp(b"\x00s3cret", 0o400, fs_user=1234),
        "dir/x": fp("x", 0o600),
        "dir/sub/y": fp("y", 0o755),
    })
    assert changed is True
    current = os.readlink(vol / "..data")
    assert TS_RE.match(current)
    assert w.current_version() == current
    assert sorted(os.listdir(vol)) == sorted(["..data", current, "a.txt", "secret", "dir"])
    for name in ("a.txt", "secret", "dir"):
        assert os.readlink(vol / name) == f"..data/{name}"
    data_dir = vol / current
    assert stat.S_IMODE(os.lstat(data_dir).st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(data_dir / "dir").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(data_dir / "dir/sub").st_mode) == 0o755
    assert sorted(os.listdir(data_dir)) == ["a.txt", "dir", "secret"]
    assert (vol / "a.txt").read_text() == "alpha"
    assert (vol / "dir/x").read_text() == "x"
    assert (vol / "dir/sub/y").read_text() == "y"
    assert (vol / "secret").read_bytes() == b"\x00s3cret"
    modes = {p: stat.S_IMODE(os.stat(vol / p).st_mode) for p in ("a.txt", "secret", "dir/x", "dir/sub/y")}
    assert modes == {"a.txt": 0o644, "secret": 0o400, "dir/x": 0o600, "dir/sub/y": 0o755}
    assert os.stat(vol / "secret").st_uid == 1234
    assert os.stat(vol / "a.txt").st_uid == os.getuid()


def test_memory_filesystem_detected(tmpfs_dir, tmp_path):
    """fsync is skipped exactly where statfs says tmpfs/ramfs."""
    for path in (tmpfs_dir, tmp_path):
        fs_type = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                                 text=True, check=True).stdout.strip()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert _fs_is_memory(fd) is (fs_type in ("tmpfs", "ramfs")), (path, fs_type)
        finally:
            os.close(fd)
    fd = os.open(tmpfs_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _fs_is_memory(fd)
    finally:
        os.close(fd)


def test_unchanged_payload_makes_no_writes(vol):
    w = AtomicWriter(str(vol))
    payload = {"a": fp("1"), "d/b": fp("2", 0o600)}
    assert w.write(payload) is True
    first = os.readlink(vol / "..data")
    before = {n: os.lstat(vol / n) for n in os.listdir(vol)}
    inner_before = os.stat(vol / first / "a")
    time.sleep(0.01)
    assert w.write(dict(payload)) is False
    assert os.readlink(vol / "..data") == first
    after = {n: os.lstat(vol / n) for n in os.listdir(vol)}
    assert after.keys() == before.keys()
    for n in before:
        assert (after[n].st_ino, after[n].st_mtime_ns, after[n].st_ctime_ns) == \
               (before[n].st_ino, before[n].st_mtime_ns, before[n].st_ctime_ns), n
    inner_after = os.stat(vol / first / "a")
    assert (inner_after.st_ino, inner_after.st_mtime_ns) == (inner_before.st_ino, inner_before.st_mtime_ns)


def test_changed_mode_or_bytes_republishes(vol):
    w = AtomicWriter(str(vol))
    w.write({"a": fp("1")})
    first = os.readlink(vol / "..data")
    assert w.write({"a": fp("1", 0o600)}) is True
    second = os.readlink(vol / "..data")
    assert second != first and not os.path.lexists(vol / first)
    assert stat.S_IMODE(os.stat(vol / "a").st_mode) == 0o600
    assert w.write({"a": fp("2", 0o600)}) is True
    assert (vol / "a").read_text() == "2"
    assert version_dirs(vol) == [os.readlink(vol / "..data")]


def test_removed_key_removes_file_and_link(vol):
    w = AtomicWriter(str(vol))
    w.write({"a": fp("a"), "b": fp("b"), "d/x": fp("x"), "d/y": fp("y"), "e/z": fp("z")})
    old = os.readlink(vol / "..data")
    assert w.write({"a": fp("a"), "d/x": fp("x")}) is True
    assert not os.path.lexists(vol / "b")
    assert not os.path.lexists(vol / "e")
    assert not os.path.lexists(vol / "d/y")
    assert (vol / "d/x").read_text() == "x"
    assert not os.path.lexists(vol / old)
    assert sorted(os.listdir(vol)) == sorted(["..data", os.readlink(vol / "..data"), "a", "d"])
    assert w.write({}) is True  # everything removed: an empty version
    assert sorted(os.listdir(vol)) == sorted(["..data", os.readlink(vol / "..data")])
    assert os.listdir(vol / "..data") == []


@pytest.mark.parametrize("path", [
    "", "..", "../x", "/abs", "/etc/passwd", "a/../b", "a/..", "a//b", "a/", "./a", "a/./b",
    "..data", "..data/x", "..2026_01_01_00_00_00.1", "..foo", "a\0b", "x" * 256, "a/" * 2049 + "b",
])
def test_hostile_paths_refused_touch_nothing(tmpfs_dir, path):
    w = AtomicWriter(str(tmpfs_dir))
    with pytest.raises(AtomicWriteError) as exc:
        w.write({"ok": fp("fine"), path: fp("bad")})
    assert exc.value.path is not None
    assert os.listdir(tmpfs_dir) == []


def test_bad_payloads_refused_with_the_path(tmpfs_dir):
    w = AtomicWriter(str(tmpfs_dir), max_total_bytes=10)
    cases = [
        ({"a": fp("x"), "a/b": fp("y")}, "a", "both a file and the directory"),
        ({"big": fp("0123456789A")}, "big", "size limit of 10 bytes"),
        ({"a": fp("12345"), "b": fp("123456")}, "b", "size limit"),
        ({"m": fp("x", 0o4755)}, "m", "mode"),
        ({"m": fp("x", -1)}, "m", "mode"),
        ({"u": fp("x", 0o644, -5)}, "u", "fs_user"),
        ({"s": "not a projection"}, "s", "FileProjection"),
    ]
    for payload, path, words in cases:
        with pytest.raises(AtomicWriteError) as exc:
            w.write(payload)
        assert exc.value.path == path and words in str(exc.value), (payload.keys(), str(exc.value))
    assert os.listdir(tmpfs_dir) == []


def test_errors_and_repr_never_show_the_bytes(tmpfs_dir):
    w = AtomicWriter(str(tmpfs_dir), max_total_bytes=4)
    with pytest.raises(AtomicWriteError) as exc:
        w.write({"k": fp("TOPSECRETVALUE")})
    assert "TOPSECRET" not in str(exc.value)
    assert "TOPSECRET" not in repr(fp("TOPSECRETVALUE"))


def _tree(path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, path)
            out[rel] = ("link:" + os.readlink(p)) if os.path.islink(p) else (
                "dir" if os.path.isdir(p) else open(p, "rb").read())
    return out


def test_planted_symlinks_are_never_followed(tmpfs_dir, tmp_path):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "passwd").write_text("host file")
    (outside / "sub" / "keep").write_text("keep")
    snapshot = _tree(outside)
    vol = tmpfs_dir
    w = AtomicWriter(str(vol))
    w.write({"a": fp("1"), "d/x": fp("x")})
    current = os.readlink(vol / "..data")

    # The pod plants: a key's link to the host, a symlink inside the version dir, a link where
    # a leftover version dir would be, a link where a new key's link goes, and ..data_tmp.
    os.unlink(vol / "a")
    os.symlink(outside, vol / "a")
    os.symlink(outside, vol / current / "evil")
    os.symlink(outside, vol / "..2020_01_01_00_00_00.000000001")
    os.symlink(outside, vol / "passwd")
    os.symlink(outside, vol / "..data_tmp")
    assert w.write({"a": fp("1"), "d/x": fp("x"), "passwd": fp("new")}) is True
    assert _tree(outside) == snapshot
    assert os.readlink(vol / "a") == "..data/a" and (vol / "a").read_text() == "1"
    assert (vol / "passwd").read_text() == "new"
    assert not os.path.lexists(vol / current)
    assert sorted(os.listdir(vol)) == sorted(["..data", os.readlink(vol / "..data"), "a", "d", "passwd"])

    # ..data itself replaced by a link out of the volume, and a directory of the version dir
    # replaced by one: the writer republishes, removes only its own names.
    current = os.readlink(vol / "..data")
    os.rename(vol / current / "d", vol / "moved-by-pod")
    os.symlink(outside / "sub", vol / current / "d")
    assert w.write({"a": fp("1"), "d/x": fp("x"), "passwd": fp("new")}) is True
    assert _tree(outside) == snapshot
    os.unlink(vol / "..data")
    os.symlink(outside, vol / "..data")
    assert w.write({"a": fp("1"), "d/x": fp("x"), "passwd": fp("new")}) is True
    assert _tree(outside) == snapshot
    assert TS_RE.match(os.readlink(vol / "..data")) and (vol / "d/x").read_text() == "x"
    assert (vol / "moved-by-pod").is_dir()  # not ours: left alone


def test_planted_directory_refused_not_removed(tmpfs_dir):
    w = AtomicWriter(str(tmpfs_dir))
    (tmpfs_dir / "k").mkdir()
    (tmpfs_dir / "k" / "pod-file").write_text("pod data")
    with pytest.raises(PathSafetyError) as exc:
        w.write({"k": fp("v")})
    assert str(tmpfs_dir / "k") in str(exc.value)
    assert (tmpfs_dir / "k" / "pod-file").read_text() == "pod data"
    assert os.listdir(tmpfs_dir) == ["k"]


def test_symlinked_target_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(PathSafetyError):
        AtomicWriter(str(tmp_path / "link")).write({"a": fp("1")})
    (tmp_path / "root" / "pods").mkdir(parents=True)
    (tmp_path / "root" / "pods" / "vol").symlink_to(real)
    with pytest.raises(PathSafetyError):
        AtomicWriter(str(tmp_path / "root/pods/vol/x"), root=str(tmp_path / "root")).write({"a": fp("1")})
    assert os.listdir(real) == []
    (tmp_path / "root" / "pods" / "v2").mkdir()
    assert AtomicWriter(str(tmp_path / "root/pods/v2"), root=str(tmp_path / "root")).write({"a": fp("1")})
    assert (tmp_path / "root/pods/v2/a").read_text() == "1"


def test_crash_leftovers_cleaned(vol):
    w = AtomicWriter(str(vol))
    w.write({"a": fp("1"), "b": fp("2")})
    v1 = os.readlink(vol / "..data")

    # A crash while writing the next version: a half-filled version dir and ..data_tmp.
    half = "..2026_01_01_00_00_00.000000007"
    os.mkdir(vol / half)
    (vol / half / "a").write_text("partial")
    os.symlink(half, vol / "..data_tmp")
    os.symlink("..data/zzz", vol / "..link_tmp")
    assert (vol / "a").read_text() == "1"  # the old version is still the published one
    assert w.write({"a": fp("1"), "b": fp("2")}) is False  # same payload: nothing republished
    assert sorted(os.listdir(vol)) == sorted(["..data", v1, "a", "b"])

    # A crash right after the swap: the new version published, the old dir and the removed
    # key's link still there. The next write (same payload) finishes the job.
    v2 = "..2026_01_01_00_00_01.000000001"
    os.mkdir(vol / v2, 0o755)
    os.chmod(vol / v2, 0o755)
    (vol / v2 / "a").write_bytes(b"3")
    os.chmod(vol / v2 / "a", 0o644)
    os.symlink(v2, vol / "..data_tmp")
    os.rename(vol / "..data_tmp", vol / "..data")
    assert not os.path.exists(vol / "b")  # dangling: b is not in the published version
    assert w.write({"a": fp("3")}) is True  # data unchanged, but b's stale link removed
    assert os.readlink(vol / "..data") == v2
    assert sorted(os.listdir(vol)) == sorted(["..data", v2, "a"])

    # A crash after the swap but before a new key's link: the next write adds the link.
    os.unlink(vol / "a")
    assert w.write({"a": fp("3")}) is True
    assert os.readlink(vol / "a") == "..data/a"
    assert w.write({"a": fp("3")}) is False


READER = textwrap.dedent(r"""
    import json, os, sys
    vol, stop, ready = sys.argv[1:4]
    EXPECT = json.loads(sys.argv[4])
    stats = {"consistent": 0, "held": 0, "retries": 0, "mixed": [], "versions": set()}

    def read_tree(base, prefix=""):
        # every file below base, following links; a dangling link is "not there"
        out = {}
        for name in os.listdir(base):
            if name.startswith(".."):
                continue
            p = os.path.join(base, name)
            try:
                if os.path.isdir(p):
                    out.update(read_tree(p, prefix + name + "/"))
                else:
                    with open(p, "rb") as f:
                        out[prefix + name] = f.read().decode()
            except FileNotFoundError:
                if os.path.islink(p) and not os.path.exists(p):
                    continue
                raise
        return out

    def check(files, how):
        versions = {c.split(":")[0] for c in files.values()}
        v = versions.pop() if len(versions) == 1 else None
        if v not in EXPECT or sorted(files) != sorted(EXPECT[v]) or any(
                files[k] != EXPECT[v][k] for k in files):
            stats["mixed"].append({"how": how, "files": {k: c[:20] for k, c in files.items()}})
        else:
            stats["versions"].add(v)
        return v

    i = 0
    while not os.path.exists(stop):
        i += 1
        try:
            if i % 2:
                # through the user-visible names; valid only if ..data did not move meanwhile
                t1 = os.readlink(os.path.join(vol, "..data"))
                files = read_tree(vol)
                t2 = os.readlink(os.path.join(vol, "..data"))
                if t1 != t2:
                    stats["retries"] += 1
                    continue
                check(files, "visible")
                stats["consistent"] += 1
            else:
                # ..data resolved once, the version dir read through a held fd; the old
                # version is removed after the next swap, so valid only if ..data did not move
                t1 = os.readlink(os.path.join(vol, "..data"))
                fd = os.open(os.path.join(vol, t1), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    files = read_tree("/proc/self/fd/%d" % fd)
                finally:
                    os.close(fd)
                if os.readlink(os.path.join(vol, "..data")) != t1:
                    stats["retries"] += 1
                    continue
                check(files, "held")
                stats["held"] += 1
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            # An old version removed while being read, or a name that was a file in one
            # version and a directory in the next, met across the swap: a reader retries.
            stats["retries"] += 1
        if i == 1:
            open(ready, "w").close()
    stats["versions"] = sorted(stats["versions"])
    print(json.dumps(stats))
""")


def _payload_set(version: str, names: list[str]) -> dict[str, str]:
    # The version stamp in every file, padded so a half-written file would show.
    return {n: f"{version}:{n}:" + "." * 3000 for n in names}


def test_updates_swap_atomically_under_a_concurrent_reader(tmpfs_dir, tmp_path):
    sets = {
        "A": _payload_set("A", ["one", "two", "nested/three", "nested/deep/four"]),
        "B": _payload_set("B", ["one", "five", "nested/three", "other/six"]),
    }
    w = AtomicWriter(str(tmpfs_dir))
    w.write({k: fp(v) for k, v in sets["A"].items()})
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", READER, str(tmpfs_dir), str(stop), str(ready),
                             json.dumps(sets)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for i in range(200):
            name = "B" if i % 2 == 0 else "A"
            assert w.write({k: fp(v) for k, v in sets[name].items()}) is True
            time.sleep(0.002)
        stop.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    stats = json.loads(out)
    assert stats["mixed"] == [], stats["mixed"][:3]
    assert stats["consistent"] > 10 and stats["held"] > 10, stats
    assert stats["versions"] == ["A", "B"], stats
    assert len(version_dirs(tmpfs_dir)) == 1
    assert sorted(n for n in os.listdir(tmpfs_dir) if not n.startswith("..")) == ["nested", "one", "two"]
