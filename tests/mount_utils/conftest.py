"""Fixtures for mount_utils tests: the shared real-mount fixtures live in tests/fixtures_mounts.py."""

from tests.fixtures_mounts import loop_device, loop_device_factory, mount_cleanup  # noqa: F401

import pytest

from mount_utils import syscalls


@pytest.fixture(params=["openat2", "walk"])
def path_resolution(request, monkeypatch):
    """Run a test once with openat2 and once as on a kernel without it (< 5.6, or a seccomp
    filter refusing it), where every component is opened with O_NOFOLLOW in turn."""
    if request.param == "walk":
        monkeypatch.setattr(syscalls, "_openat2_works", False)
    return request.param
