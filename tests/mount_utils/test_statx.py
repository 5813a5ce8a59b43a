"""statx answers mount-root questions itself (no mountinfo read), including for a bind mount
within one filesystem, which st_dev comparison cannot see."""

from __future__ import annotations

import pytest

from mount_utils import syscalls as sc
from tests.fixtures_mounts import mount_cleanup, require_root  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(20)


def test_statx_mount_root_is_known_and_right(mount_cleanup):
    require_root()
    src = mount_cleanup / "src"
    dst = mount_cleanup / "dst"
    src.mkdir()
    dst.mkdir()
    assert sc.statx_mount_root("/") is True
    assert sc.statx_mount_root(str(src)) is False, "must answer, not fall back (None)"
    sc.sys_mount(str(src), str(dst), None, sc.MS_BIND, None)
    try:
        assert sc.statx_mount_root(str(dst)) is True
        assert sc.statx_mount_root(str(src)) is False
    finally:
        sc.sys_umount(str(dst))
