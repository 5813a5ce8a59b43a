"""Fixtures for mount_utils tests: the shared real-mount fixtures live in tests/fixtures_mounts.py."""

from tests.fixtures_mounts import loop_device, loop_device_factory, mount_cleanup  # noqa: F401
