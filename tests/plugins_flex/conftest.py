"""Fixtures for the FlexVolume driver tests: a plugin dir and a work dir in tmp_path; at
teardown every mount below tmp_path is removed and every loop device over a file below it
detached (the loopdisk driver attaches them itself)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.fixtures_mounts import require_root, require_tools, unmount_all_under
from tests.plugins_flex.drivers import REQUIRED_TOOLS


def detach_loops_over(directory: Path) -> list[str]:
    """Detach every loop device whose backing file is below ``directory``; returns them."""
    out = subprocess.run(["losetup", "-n", "-O", "NAME,BACK-FILE", "-l"], capture_output=True, text=True,
                         timeout=30).stdout
    gone = []
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(str(directory)):
            subprocess.run(["losetup", "-d", parts[0]], capture_output=True, timeout=30)
            gone.append(parts[0])
    return gone


@pytest.fixture
def flex_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(plugin_dir, work_dir): the plugin dir is not created (tests create it when they want)."""
    require_root()
    require_tools(*REQUIRED_TOOLS)
    plugin_dir = tmp_path / "exec"
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    try:
        yield plugin_dir, work_dir
    finally:
        left = unmount_all_under(tmp_path)
        detach_loops_over(tmp_path)
        assert not left, f"could not unmount {left}"


@pytest.fixture
def backing_file(tmp_path: Path) -> Path:
    """A 64 MiB sparse file for the loopdisk driver to attach."""
    path = tmp_path / "disk.img"
    with open(path, "xb") as f:
        f.truncate(64 << 20)
    return path
