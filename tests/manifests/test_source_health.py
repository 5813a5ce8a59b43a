"""Issue 11, item 3: a manifest dir that cannot be read is a *failed* source, not "no pods".

The source reports it (``health()``: failed since when, why), retries every second rather than
every rescan interval, keeps the objects it last read, and is synced again once read whole.
"""

from __future__ import annotations

import os
import time

import pytest

from volumemanager.sources import ManifestDirSource
from volumemanager.sources.base import FAILED, STARTING, SYNCED, SourceHealth

from .helpers import pod_yaml, wait_for, write

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def started():
    sources = []

    def start(directory):
        source = ManifestDirSource(str(directory))  # the default 30 s rescan: the retry must be faster
        source.start(lambda: None)
        sources.append(source)
        return source

    yield start
    for source in sources:
        source.stop()


def keys(source):
    return sorted(p.key for p in source.snapshot().pods.values())


def test_health_before_start_is_starting(tmp_path):
    health = ManifestDirSource(str(tmp_path)).health()
    assert health.state == STARTING and not health.ok and not health.synced


def test_missing_dir_at_start_is_failed_and_retried_every_second(tmp_path, started):
    mdir = tmp_path / "manifests"
    before = time.time()
    source = started(mdir)
    health = source.health()
    assert health.state == FAILED and not health.ok and not source.synced
    assert health.error == "manifest directory does not exist"
    assert before <= health.failed_since <= time.time()
    assert health.to_dict() == {"name": source.name, "state": "failed", "since": health.failed_since,
                                "error": "manifest directory does not exist"}
    assert "failed since" in health.describe() and "nothing is torn down" in health.describe()

    mdir.mkdir()
    write(mdir / "a.yaml", pod_yaml("a"))
    # No inotify watch on a directory that did not exist: only the 1 s retry can see it.
    wait_for(lambda: source.health().ok, 3.0, "the retry to read the new directory")
    assert source.synced and source.health().state == SYNCED
    assert keys(source) == ["default/a"]
    assert source.snapshot().errors == ()


def test_a_file_in_place_of_the_dir_is_failed(tmp_path, started):
    mdir = tmp_path / "manifests"
    mdir.write_text("not a directory\n")
    source = started(mdir)
    assert source.health().state == FAILED
    assert source.health().error == "manifest directory is not a directory"
    mdir.unlink()
    mdir.mkdir()
    wait_for(lambda: source.health().ok, 3.0, "the directory")


def test_dir_that_vanishes_later_keeps_its_objects_and_is_failed(tmp_path, started):
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    write(mdir / "a.yaml", pod_yaml("a"))
    write(mdir / "b.yaml", pod_yaml("b"))
    source = started(mdir)
    assert source.health().ok
    os.rename(mdir, tmp_path / "moved-away")
    wait_for(lambda: source.health().state == FAILED, 3.0, "the failure")
    assert source.synced  # it was read whole once; it is failed now
    assert keys(source) == ["default/a", "default/b"]  # the last objects stay
    since = source.health().failed_since
    time.sleep(1.2)  # a retry that fails again does not move "since"
    assert source.health().failed_since == since
    os.rename(tmp_path / "moved-away", mdir)
    wait_for(lambda: source.health().ok, 3.0, "the restored directory")
    assert keys(source) == ["default/a", "default/b"]


def test_an_empty_readable_dir_is_synced(tmp_path, started):
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    source = started(mdir)
    assert source.health().ok and keys(source) == []


def test_source_health_states():
    assert SourceHealth("s", True).state == SYNCED
    assert SourceHealth("s", False).state == STARTING
    assert SourceHealth("s", True, 1.0, "gone").state == FAILED
    assert not SourceHealth("s", True, 1.0, "gone").ok
