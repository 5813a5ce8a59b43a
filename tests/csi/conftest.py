"""Fixtures for the CSI tests: csi-loop plugin processes that are always cleaned up.

``csi_loop`` is a factory (``tests.csi_loop.harness.plugin_factory``):
``csi_loop(name="a.test", no_stage=False, registration=True, ...)`` starts a plugin with its own
state dir under tmp_path, its registration socket in the shared ``registry_dir``, and returns
its ``CSILoopPlugin``. At teardown every plugin is stopped by PID, everything mounted under
tmp_path is unmounted and the plugins' loop devices are detached.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.csi_loop.harness import CSILoopPlugin, plugin_factory

REQUIRED_TOOLS = ("losetup", "mkfs.ext4", "blkid", "mount", "umount")


@pytest.fixture
def require_loop() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    d = tmp_path / "plugins_registry"
    d.mkdir()
    return d


@pytest.fixture
def csi_loop(tmp_path: Path, registry_dir: Path, require_loop: None) -> Iterator[Callable[..., CSILoopPlugin]]:
    with plugin_factory(tmp_path, registry_dir) as make:
        yield make
