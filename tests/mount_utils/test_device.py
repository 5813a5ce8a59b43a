"""Block device facts on real loop devices."""

from __future__ import annotations

import os

import pytest

from mount_utils.device import (
    NotABlockDeviceError,
    block_device_ready,
    device_size_bytes,
    loop_backing_file,
    major_minor,
    resolve_device,
)


def test_loop_device_facts(loop_device):
    assert block_device_ready(loop_device.path)
    assert device_size_bytes(loop_device.path) == 64 << 20
    major, minor = major_minor(loop_device.path)
    assert major == 7
    assert os.path.realpath(loop_backing_file(loop_device.path)) == os.path.realpath(loop_device.backing_file)


def test_grown_loop_device_reports_new_size(loop_device):
    loop_device.grow(96)
    assert device_size_bytes(loop_device.path) == 96 << 20


def test_detached_loop_device_not_ready(loop_device_factory):
    dev = loop_device_factory(16)
    path = dev.path
    dev.detach()
    # The node stays (loop devices are preallocated) but nothing is behind it, unless another
    # test attached it meanwhile: then it is someone else's and ready.
    if loop_backing_file(path) is None:
        assert not block_device_ready(path)


def test_not_ready_for_missing_or_non_block(tmp_path):
    assert not block_device_ready(str(tmp_path / "nope"))
    (tmp_path / "f").write_text("x")
    assert not block_device_ready(str(tmp_path / "f"))
    with pytest.raises(NotABlockDeviceError):
        major_minor(str(tmp_path / "f"))
    with pytest.raises(FileNotFoundError):
        major_minor(str(tmp_path / "nope"))


def test_resolve_device_follows_by_id_style_symlink(loop_device, tmp_path):
    by_id = tmp_path / "disk" / "by-id"
    by_id.mkdir(parents=True)
    (by_id / "virtio-vol1").symlink_to(os.path.relpath(loop_device.path, by_id))
    assert resolve_device(str(by_id / "virtio-vol1")) == loop_device.path
    (by_id / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(FileNotFoundError):
        resolve_device(str(by_id / "dangling"))
    (tmp_path / "file").write_text("")
    with pytest.raises(NotABlockDeviceError):
        resolve_device(str(tmp_path / "file"))
