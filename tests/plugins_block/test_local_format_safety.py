"""The local plugin's side of issue 11: refusals become final errors with stable codes, our
own global mount is adopted (not "in use"), and a format interrupted by a crash is finished."""

from __future__ import annotations

import os
import subprocess

import pytest

from mount_utils.mountinfo import MountTable
from operation_executor.errors import FinalError, UncertainError
from operation_executor.types import VolumeSpec
from tests.fixtures_mounts import require_tools, sha256_of
from volumemanager.manifests.models import LocalSource
from volumemanager.plugins.local import LocalPlugin

pytestmark = pytest.mark.timeout(60)


def local_spec(path: str, name: str = "pv-local", fs_type: str | None = None) -> VolumeSpec:
    return VolumeSpec(name=name, plugin_name=LocalPlugin.name, source=LocalSource(path=path, fs_type=fs_type),
                      read_only=False, volume_mode="Filesystem", mount_options=(), pv_name=name)


def top_mount(path: str):
    return MountTable.read().top(os.path.realpath(path))


def test_own_global_mount_is_adopted_and_another_pv_on_the_device_is_refused(plugin, loop_device):
    require_tools("blkid", "wipefs", "mkfs.ext4")
    first = local_spec(loop_device.path, "pv-first")
    dmp = plugin.device_mount_path(first)
    plugin.mount_device(first, loop_device.path, dmp)
    assert top_mount(dmp).source == loop_device.path
    plugin.mount_device(first, loop_device.path, dmp)  # as after a restart: adopted, no error

    second = local_spec(loop_device.path, "pv-second")
    with pytest.raises(FinalError) as info:
        plugin.mount_device(second, loop_device.path, plugin.device_mount_path(second))
    assert info.value.code == "DEVICE_IN_USE" and f"mounted at {dmp}" in info.value.message
    assert top_mount(plugin.device_mount_path(second)) is None
    plugin.unmount_device(first, dmp)


def test_filesystem_mismatch_is_final_and_untouched(plugin, loop_device):
    require_tools("blkid", "wipefs", "mkfs.ext4")
    subprocess.run(["mkfs.ext4", "-q", "-F", loop_device.path], check=True, capture_output=True, timeout=60)
    before = sha256_of(loop_device.path)
    spec = local_spec(loop_device.path, fs_type="xfs")
    with pytest.raises(FinalError) as info:
        plugin.mount_device(spec, loop_device.path, plugin.device_mount_path(spec))
    assert info.value.code == "FILESYSTEM_MISMATCH"
    assert "type ext4" in info.value.message and "fsType xfs" in info.value.message
    assert sha256_of(loop_device.path) == before
    assert not os.path.exists(plugin.device_mount_path(spec))


def test_format_interrupted_by_a_crash_is_finished_on_the_next_try(plugin, host, loop_device, tmp_path,
                                                                   monkeypatch):
    """mkfs killed after writing part of the device (a stand-in first on PATH: a real mkfs of a
    loop device is too fast to kill at a chosen moment) leaves it not blank; the marker in the
    plugin dir lets the retry format it, where any other non-blank device is refused."""
    require_tools("blkid", "wipefs", "mkfs.ext4")
    spec = local_spec(loop_device.path)
    dmp = plugin.device_mount_path(spec)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mkfs.ext4").write_text(
        f"#!/bin/sh\nprintf 'half' | dd of={loop_device.path} bs=1 seek=2048 conv=notrunc 2>/dev/null\n"
        "kill -KILL $$\n")
    (bindir / "mkfs.ext4").chmod(0o755)
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", f"{bindir}:{path}")
    with pytest.raises(UncertainError) as info:
        plugin.mount_device(spec, loop_device.path, dmp)
    assert info.value.code == "FORMAT_UNCERTAIN"
    marker = os.path.join(host.plugin_dir(LocalPlugin.name), "formatting", spec.name)
    assert os.path.exists(marker)

    other = local_spec(loop_device.path, "pv-other")  # no marker of its own: refused
    with pytest.raises(FinalError) as refused:
        plugin.mount_device(other, loop_device.path, plugin.device_mount_path(other))
    assert refused.value.code == "REFUSE_TO_FORMAT" and "non-zero data at offset 2048" in refused.value.message

    monkeypatch.setenv("PATH", path)
    plugin.mount_device(spec, loop_device.path, dmp)
    assert top_mount(dmp).fs_type == "ext4" and not os.path.exists(marker)
    plugin.unmount_device(spec, dmp)
