"""Symlink-safe directory and file creation below a trusted root."""

from __future__ import annotations

import os
import stat

import pytest

from mount_utils.paths import PathSafetyError, check_no_symlinks, safe_create_file, safe_makedirs


# Both ways of resolving a path below the root must refuse the same things.
pytestmark = pytest.mark.usefixtures("path_resolution")

def test_makedirs_creates_and_is_idempotent(tmp_path):
    root = str(tmp_path)
    safe_makedirs(root, os.path.join(root, "pods/u1/volumes/x~y/v"), 0o750)
    assert (tmp_path / "pods/u1/volumes/x~y/v").is_dir()
    safe_makedirs(root, "pods/u1/volumes/x~y/v")  # relative to root, already there
    safe_makedirs(root, root)  # the root itself: nothing to do
    mode = stat.S_IMODE(os.stat(tmp_path / "pods").st_mode)
    assert mode & 0o027 == 0  # 0750 minus umask


def test_makedirs_refuses_symlinked_component(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "pods").mkdir(parents=True)
    (root / "pods" / "u1").symlink_to(outside)
    with pytest.raises(PathSafetyError) as exc:
        safe_makedirs(str(root), str(root / "pods/u1/volumes/v"))
    assert "u1" in str(exc.value)
    assert list(outside.iterdir()) == []  # nothing created through the link


def test_makedirs_refuses_final_symlink_and_file(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(PathSafetyError):
        safe_makedirs(str(tmp_path), "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(PathSafetyError):
        safe_makedirs(str(tmp_path), "file/sub")


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "/", "a/./../b"])
def test_makedirs_refuses_dotdot_and_outside(tmp_path, bad):
    with pytest.raises(PathSafetyError):
        safe_makedirs(str(tmp_path / "root"), bad)


def test_outside_is_component_wise(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(PathSafetyError):
        safe_makedirs(str(tmp_path / "root"), str(tmp_path / "rootx" / "a"))


def test_check_no_symlinks(tmp_path):
    (tmp_path / "a/b").mkdir(parents=True)
    check_no_symlinks(str(tmp_path), "a/b/c/d")  # missing parts are fine
    (tmp_path / "a/l").symlink_to(tmp_path / "a/b")
    with pytest.raises(PathSafetyError):
        check_no_symlinks(str(tmp_path), "a/l")
    with pytest.raises(PathSafetyError):
        check_no_symlinks(str(tmp_path), "a/l/x")
    (tmp_path / "a/f").write_text("")
    check_no_symlinks(str(tmp_path), "a/f")
    with pytest.raises(PathSafetyError):
        check_no_symlinks(str(tmp_path), "a/f/x")


def test_safe_create_file(tmp_path):
    safe_create_file(str(tmp_path), "dev/v1", 0o600)
    p = tmp_path / "dev/v1"
    assert p.is_file() and p.stat().st_size == 0
    p.write_text("keep")
    safe_create_file(str(tmp_path), "dev/v1")  # existing file accepted, not truncated
    assert p.read_text() == "keep"
    (tmp_path / "dev/link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PathSafetyError):
        safe_create_file(str(tmp_path), "dev/link")
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / "dev/dir").mkdir()
    with pytest.raises(IsADirectoryError):
        safe_create_file(str(tmp_path), "dev/dir")
    os.mkfifo(tmp_path / "dev/fifo")
    with pytest.raises(PathSafetyError):
        safe_create_file(str(tmp_path), "dev/fifo")
