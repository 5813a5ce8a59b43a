import pytest

from tests.csi_loop.harness import plugin_factory
from tests.daemon_harness import daemon, daemon_factory  # noqa: F401 - pytest fixtures


@pytest.fixture
def csi_loop(tmp_path):
    """A reference CSI node plugin registering in the daemon harness's registry dir (so that
    ``status --json`` lists a driver); stopped by PID, its mounts and loop devices removed."""
    with plugin_factory(tmp_path / "drivers", registration_dir=tmp_path / "plugins_registry",
                        cleanup_roots=[tmp_path]) as make:
        yield make
