from tests.daemon_harness import daemon, daemon_factory  # noqa: F401 - pytest fixtures
