from tests.daemon_harness import daemon, daemon_factory  # noqa: F401 - pytest fixtures
from tests.fixtures_mounts import loop_device, loop_device_factory, mount_cleanup  # noqa: F401 - pytest fixtures
