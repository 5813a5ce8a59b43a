"""``status``'s orphans from the kernel's table parse only the unknown lines below the root dir
(issue 16: parsing the whole table was a fifth of ``status`` at 10,000 volumes) and must be
exactly what ``find_orphans`` finds in the fully parsed table. Real tmpfs and bind mounts in tmp."""

from __future__ import annotations

import os
import subprocess

import pytest

from mount_utils.mounter import LinuxMounter
from operation_executor.types import MarkDeviceOpts, MarkVolumeOpts, PodRef, VolumeSpec
from tests.fixtures_mounts import mount_cleanup, require_root  # noqa: F401 - fixture
from volumemanager import status as st
from volumemanager.cache.actual_state import ActualStateOfWorld

pytestmark = pytest.mark.timeout(60)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def test_orphans_from_the_raw_lines_equal_those_of_the_parsed_table(mount_cleanup):  # noqa: F811
    require_root()
    root = mount_cleanup / "root"
    known_dir, orphan_dir, spaced = root / "pods/u1/vol", root / "pods/u2/stray", root / "pods/u3/with space"
    staged, outside, sibling = root / "plugins/g/disk", mount_cleanup / "outside", mount_cleanup / "root-sibling"
    for d in (known_dir, orphan_dir, spaced, staged, outside, sibling):
        os.makedirs(d)
    _mount("-t", "tmpfs", "tmpfs", str(root))  # the root itself is a mount: never an orphan
    for d in (known_dir, orphan_dir, spaced, staged, outside, sibling):
        os.makedirs(d, exist_ok=True)
        _mount("-t", "tmpfs", "tmpfs", str(d))
    # A bind mount outside the root whose source is below it: the root's path is in the line.
    _mount("--bind", str(known_dir), str(outside))

    asw = ActualStateOfWorld()
    pod = PodRef("u1", "ns", "p")
    spec = VolumeSpec(name="vol", plugin_name="test/p", source=None)
    asw.mark_volume_mounted(MarkVolumeOpts("test/vol", pod, "vol", spec, "test/p", str(known_dir), False))
    asw.mark_device_mounted(MarkDeviceOpts("test/disk", spec, "test/p", "/dev/x", str(staged)))
    known = asw.known_mount_paths()
    assert known == {str(known_dir), str(staged)}

    mounter = LinuxMounter()
    want = st.find_orphans(str(root), mounter.mount_table(), known)
    got = st.orphans(mounter, str(root), known)
    assert got == want
    assert [o["mount_path"] for o in got] == [str(orphan_dir), str(spaced)]
    assert {o["fs_type"] for o in got} == {"tmpfs"}
    # With nothing known every mount below the root (but the root) is an orphan, in table order.
    assert st.orphans(mounter, str(root), set()) == st.find_orphans(str(root), mounter.mount_table(), set())
    assert len(st.orphans(mounter, str(root), set())) == 4
