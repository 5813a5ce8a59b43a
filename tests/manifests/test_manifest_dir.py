"""ManifestDirSource against a real directory with real inotify events."""

from __future__ import annotations

import os
import threading

import pytest

from volumemanager.sources import DesiredStateSource, ManifestDirSource

from .helpers import pod_yaml, wait_for, write, write_atomic

pytestmark = pytest.mark.timeout(30)


class Changes:
    """Counts on_change calls (made from the source's threads)."""

    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.count += 1


@pytest.fixture
def mdir(tmp_path):
    d = tmp_path / "manifests"
    d.mkdir()
    return d


@pytest.fixture
def started():
    sources = []

    def start(directory, **kwargs):
        source = ManifestDirSource(str(directory), **kwargs)
        changes = Changes()
        source.start(changes)
        sources.append(source)
        return source, changes

    yield start
    for source in sources:
        source.stop()


def keys(source):
    return sorted(p.key for p in source.snapshot().pods.values())


def test_is_a_desired_state_source(mdir):
    source = ManifestDirSource(str(mdir))
    assert isinstance(source, DesiredStateSource)
    assert source.name == f"manifest-dir:{mdir}"
    assert not source.synced


def test_first_read_is_synchronous(mdir, started):
    write(mdir / "a.yaml", pod_yaml("a"))
    source, changes = started(mdir)
    assert source.synced
    assert keys(source) == ["default/a"]
    assert changes.count == 0


def test_sees_new_file_edit_atomic_rename_and_deletion(mdir, started):
    source, changes = started(mdir)
    assert keys(source) == []

    write(mdir / "a.yaml", pod_yaml("a"))
    wait_for(lambda: keys(source) == ["default/a"], 1.5, "a new file")
    wait_for(lambda: changes.count >= 1, 1.0, "on_change")

    n = changes.count
    write(mdir / "a.yaml", pod_yaml("a", volumes="    - name: edited\n      emptyDir: {}\n"))
    wait_for(lambda: source.snapshot().pod_by_key("default/a").volumes[0].name == "edited", 1.5, "an edit")
    wait_for(lambda: changes.count > n, 1.0, "on_change after the edit")

    n = changes.count
    write_atomic(mdir / "a.yaml", pod_yaml("renamed"))
    wait_for(lambda: keys(source) == ["default/renamed"], 1.5, "an atomic rename")
    wait_for(lambda: changes.count > n, 1.0, "on_change after the rename")

    n = changes.count
    (mdir / "a.yaml").unlink()
    wait_for(lambda: keys(source) == [], 1.5, "a deletion")
    wait_for(lambda: changes.count > n, 1.0, "on_change after the deletion")


def test_rename_out_of_the_manifest_names(mdir, started):
    write(mdir / "a.yaml", pod_yaml("a"))
    source, _ = started(mdir)
    os.rename(mdir / "a.yaml", mdir / "a.yaml.disabled")
    wait_for(lambda: keys(source) == [], 1.5, "a rename to an ignored name")
    os.rename(mdir / "a.yaml.disabled", mdir / "b.yaml")
    wait_for(lambda: keys(source) == ["default/a"], 1.5, "a rename back")


def test_burst_of_writes_is_one_change(mdir, started):
    source, changes = started(mdir)
    with open(mdir / "a.yaml", "w") as f:
        text = pod_yaml("a")
        for ch in text:  # many small writes
            f.write(ch)
            f.flush()
    wait_for(lambda: keys(source) == ["default/a"], 1.5, "the written file")
    assert changes.count <= 3  # debounced: not one change per write
    assert source.snapshot().errors == ()


def test_broken_edit_keeps_objects_and_reports(mdir, started):
    write(mdir / "a.yaml", pod_yaml("a"))
    source, changes = started(mdir)
    (mdir / "a.yaml").write_text("kind: Pod\nmetadata: {name: [a\n")
    wait_for(lambda: source.snapshot().errors != (), 1.5, "the syntax error")
    assert keys(source) == ["default/a"]
    assert changes.count >= 1  # the error is a change too (status shows it)


def test_no_change_no_callback(mdir, started):
    write(mdir / "a.yaml", pod_yaml("a"))
    source, changes = started(mdir)
    generation = source.snapshot().generation
    write(mdir / "a.yaml", pod_yaml("a"))  # same content
    write(mdir / ".hidden.yaml", pod_yaml("h"))
    write(mdir / "a.yaml.swp", "junk")
    write(mdir / "notes.txt", "junk")
    # A real change after the no-op ones: once it is seen, the no-op events have been handled
    # too (events are handled in order), so there is nothing left to wait for.
    write_atomic(mdir / "sentinel.yaml", pod_yaml("sentinel"))  # one event, one change
    wait_for(lambda: "default/sentinel" in keys(source), 1.5, "the sentinel file")
    assert keys(source) == ["default/a", "default/sentinel"]
    assert source.snapshot().generation == generation + 1
    assert changes.count == 1


def test_missing_directory_appears_later(tmp_path, started):
    mdir = tmp_path / "later"
    source, changes = started(mdir, rescan_interval=0.1)
    assert not source.synced  # a directory that could not be read is not a real "no pods"
    assert source.health().state == "failed"
    assert "does not exist" in source.snapshot().errors[0].message
    mdir.mkdir()
    write(mdir / "a.yaml", pod_yaml("a"))
    wait_for(lambda: keys(source) == ["default/a"], 2.0, "the directory to be picked up")
    assert source.snapshot().errors == ()
    # and from then on it is watched: a new file is seen without waiting for a rescan
    source.rescan_interval = 3600.0
    write(mdir / "b.yaml", pod_yaml("b"))
    wait_for(lambda: keys(source) == ["default/a", "default/b"], 1.5, "a file in the new directory")


def test_directory_replaced(tmp_path, started):
    mdir = tmp_path / "m"
    mdir.mkdir()
    write(mdir / "a.yaml", pod_yaml("a"))
    source, _ = started(mdir, rescan_interval=0.2)
    new = tmp_path / "m.new"
    new.mkdir()
    write(new / "b.yaml", pod_yaml("b"))
    os.rename(mdir, tmp_path / "m.old")
    os.rename(new, mdir)
    wait_for(lambda: keys(source) == ["default/b"], 2.0, "the replaced directory")
    write(mdir / "c.yaml", pod_yaml("c"))
    wait_for(lambda: keys(source) == ["default/b", "default/c"], 1.5, "a file in the replaced directory")


def test_resync_rereads_and_notifies(mdir, started):
    f = write(mdir / "a.yaml", pod_yaml("a"))
    source, changes = started(mdir)
    source.stop()  # no watcher: only resync can see the change now
    write(f, pod_yaml("b"))
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    source.resync()
    assert keys(source) == ["default/b"]
    assert changes.count == 1


def test_stop_is_idempotent(mdir, started):
    source, _ = started(mdir)
    source.stop()
    source.stop()


def test_errors_are_logged_once_without_secret_values(mdir, started, caplog):
    caplog.set_level("INFO", logger="volumemanager.sources.manifest_dir")
    write(mdir / "s.yaml", "kind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\n")
    source, changes = started(mdir)
    (mdir / "s.yaml").write_text("kind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2\n")
    wait_for(lambda: source.snapshot().errors != (), 1.5, "the error")
    wait_for(lambda: any("manifest error" in r.getMessage() for r in caplog.records), 1.0, "the log line")
    write_atomic(mdir / "other.yaml", pod_yaml("other"))  # another change: the error is not logged again
    wait_for(lambda: "default/other" in keys(source), 1.5, "the other file")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("manifest error: s.yaml: YAML syntax error")
    assert all("hunter2" not in r.getMessage() for r in caplog.records)
    write_atomic(mdir / "s.yaml", "kind: Secret\nmetadata: {name: s}\nstringData: {password: fixed}\n")
    wait_for(lambda: any("resolved" in r.getMessage() for r in caplog.records), 1.5, "the resolved line")


def test_events_sort_into_read_now_debounced_and_rescan(mdir):
    """Issue 16: a rename into place (or a delete) is final and read at once; a write may be a
    writer mid-way and waits for the debounce; an atomic writer's hidden temp file causes no
    rescan of every file unless a manifest is a symlink (whose target it could be)."""
    from watchdog.events import FileDeletedEvent, FileModifiedEvent, FileMovedEvent

    source = ManifestDirSource(str(mdir))
    tmp, final = str(mdir / ".web.yaml.tmp"), str(mdir / "web.yaml")
    source._event(tmp, FileMovedEvent(tmp, final))
    source._event(final, FileMovedEvent(tmp, final))
    assert source._ready == {final} and not source._pending and not source._pending_rescan
    other = str(mdir / "db.yaml")
    source._event(other, FileModifiedEvent(other))
    assert other in source._pending and other not in source._ready
    source._event(other, FileDeletedEvent(other))  # still debounced: it was being written
    assert other in source._pending
    source._event(final, FileModifiedEvent(final))  # written again after the rename: wait
    assert final in source._pending and final not in source._ready

    # A symlinked manifest (the ..data layout): a change to any other name may be its content.
    (mdir / "real").mkdir()
    (mdir / "real" / "pod.yaml").write_text(pod_yaml("linked"))
    os.symlink("real/pod.yaml", mdir / "linked.yaml")
    source.store.update_file(str(mdir / "linked.yaml"))
    assert source.store.has_symlinks()
    source._event(tmp, FileModifiedEvent(tmp))
    assert source._pending_rescan
