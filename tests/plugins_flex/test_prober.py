"""FlexProber: drivers appear, change and disappear under a real plugin dir (inotify plus the
slow rescan), without a restart."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from tests.plugins_flex.drivers import LOOPDISK, TMPFS, install_driver, set_behaviour, verbs
from volumemanager.plugins.flexvolume_driver import (
    FlexProber,
    dir_name_for_driver,
    driver_name_from_dir,
    executable_path,
)


class Changes:
    """Records on_change calls."""

    def __init__(self) -> None:
        self.calls: list[set[str]] = []
        self.lock = threading.Lock()

    def __call__(self, names: set[str]) -> None:
        with self.lock:
            self.calls.append(set(names))

    def seen(self, name: str) -> int:
        with self.lock:
            return sum(1 for c in self.calls if name in c)


def wait_for(pred, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def prober_factory():
    probers: list[FlexProber] = []

    def make(plugin_dir, on_change=None, **kw) -> FlexProber:
        p = FlexProber(str(plugin_dir), on_change, **kw)
        probers.append(p)
        p.start()
        return p

    yield make
    for p in probers:
        p.stop()


def test_names():
    assert driver_name_from_dir("acme~cifs") == "acme/cifs"
    assert dir_name_for_driver("acme/cifs") == "acme~cifs"
    assert executable_path("/x", "acme~cifs") == "/x/acme~cifs/cifs"
    assert executable_path("/x", "lvm") == "/x/lvm/lvm"


def test_driver_dir_appearing_after_start_is_probed(flex_dirs, prober_factory):
    plugin_dir, work = flex_dirs
    changes = Changes()
    # The plugin dir itself does not exist yet; the rescan is slow, so inotify (or the
    # missing-dir poll) must be what notices.
    prober = prober_factory(plugin_dir, changes, rescan_interval=60)
    assert prober.drivers() == {}
    assert not plugin_dir.exists()

    loop = install_driver(plugin_dir, LOOPDISK, work, atomic_dir=True)
    wait_for(lambda: prober.get(LOOPDISK) is not None, what="loopdisk to load")
    assert prober.get(LOOPDISK).capabilities.attach is True
    assert changes.seen(LOOPDISK) == 1

    tmpfs = install_driver(plugin_dir, TMPFS, work, atomic_dir=True)
    wait_for(lambda: prober.get(TMPFS) is not None, what="tmpfs to load (inotify)")
    assert prober.get(TMPFS).capabilities.attach is False
    assert prober.get(TMPFS).executable == str(plugin_dir / "test~tmpfs" / "tmpfs")
    assert verbs(tmpfs) == ["init"] and verbs(loop) == ["init"]

    # Removing the executable forgets the driver; removing the dir too.
    os.unlink(tmpfs.executable)
    wait_for(lambda: prober.get(TMPFS) is None, what="tmpfs to be forgotten")
    shutil.rmtree(loop.dir)
    wait_for(lambda: prober.get(LOOPDISK) is None, what="loopdisk to be forgotten")
    assert changes.seen(TMPFS) == 2 and changes.seen(LOOPDISK) == 2
    assert prober.drivers() == {}


def test_changed_driver_is_reinitialised_and_failed_init_is_not_loaded(flex_dirs, prober_factory):
    plugin_dir, work = flex_dirs
    plugin_dir.mkdir()
    tmpfs = install_driver(plugin_dir, TMPFS, work)
    set_behaviour(tmpfs, "fail", "init", "cannot reach the storage")
    (plugin_dir / ".hidden~x").mkdir()
    changes = Changes()
    prober = prober_factory(plugin_dir, changes, rescan_interval=0.5)
    assert prober.get(TMPFS) is None
    assert "cannot reach the storage" in prober.errors()[TMPFS]
    # Retried by the rescan; loads once init succeeds.
    (tmpfs.state_dir / "fail.init").unlink()
    wait_for(lambda: prober.get(TMPFS) is not None, what="retry of a failed init")
    assert prober.errors() == {}
    first = prober.get(TMPFS)

    # Replacing the executable (an upgrade) re-runs init and swaps the driver object.
    install_driver(plugin_dir, TMPFS, work)
    wait_for(lambda: prober.get(TMPFS) is not first, what="re-init after an upgrade")
    assert changes.seen(TMPFS) == 2
    assert set(prober.drivers()) == {TMPFS}


def test_drivers_present_at_start_are_loaded_before_start_returns(flex_dirs, prober_factory):
    plugin_dir, work = flex_dirs
    install_driver(plugin_dir, TMPFS, work)
    install_driver(plugin_dir, LOOPDISK, work)
    changes = Changes()
    prober = prober_factory(plugin_dir, changes, rescan_interval=60)
    assert set(prober.drivers()) == {TMPFS, LOOPDISK}
    assert changes.calls == [{TMPFS, LOOPDISK}]
    # Nothing changed: no second init.
    assert prober.probe() == set()
