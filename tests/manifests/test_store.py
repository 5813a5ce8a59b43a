"""ManifestStore: last-good objects per file, removal, duplicates, generations."""

from __future__ import annotations

import os
import threading
import time

import pytest

from volumemanager.manifests import ManifestStore, derived_pod_uid

from .helpers import pod_yaml, write


@pytest.fixture
def mdir(tmp_path):
    d = tmp_path / "manifests"
    d.mkdir()
    return d


def pod_names(snapshot):
    return sorted(p.key for p in snapshot.pods.values())


def test_rescan_reads_files_and_ignores_others(mdir):
    write(mdir / "a.yaml", pod_yaml("a"))
    write(mdir / "b.yml", pod_yaml("b"))
    (mdir / "c.json").write_text('{"kind": "Pod", "metadata": {"name": "c"}}')
    write(mdir / ".hidden.yaml", pod_yaml("hidden"))
    write(mdir / "a.yaml~", pod_yaml("backup"))
    write(mdir / "a.yaml.swp", pod_yaml("swap"))
    write(mdir / "#a.yaml#", pod_yaml("autosave"))
    write(mdir / "notes.txt", pod_yaml("txt"))
    (mdir / "sub.yaml").mkdir()
    write(mdir / "sub.yaml" / "x.yaml", pod_yaml("nested"))
    store = ManifestStore(str(mdir))
    assert store.rescan() is True
    snap = store.snapshot()
    assert pod_names(snap) == ["default/a", "default/b", "default/c"]
    assert snap.errors == ()
    assert snap.pods[derived_pod_uid("default", "a")].origin.file == "a.yaml"
    assert store.rescan() is False  # nothing changed
    assert store.snapshot() is snap


def test_generation_increments_only_on_change(mdir):
    store = ManifestStore(str(mdir))
    g0 = store.snapshot().generation
    write(mdir / "a.yaml", pod_yaml("a"))
    assert store.rescan()
    g1 = store.snapshot().generation
    assert g1 > g0
    assert not store.update_file(str(mdir / "a.yaml"))  # same content, forced re-read
    assert store.snapshot().generation == g1
    write(mdir / "a.yaml", pod_yaml("a2"))
    assert store.update_file(str(mdir / "a.yaml"))
    assert store.snapshot().generation > g1


def test_broken_yaml_keeps_previous_objects(mdir):
    f = write(mdir / "web.yaml", pod_yaml("web") + "---\n" + pod_yaml("db"))
    store = ManifestStore(str(mdir))
    store.rescan()
    before = store.snapshot()
    assert pod_names(before) == ["default/db", "default/web"]
    f.write_text("kind: Pod\nmetadata: {name: [web\n")  # half-written
    assert store.update_file(str(f))
    after = store.snapshot()
    assert pod_names(after) == ["default/db", "default/web"]
    assert after.pods == before.pods  # the very same objects
    (error,) = after.errors
    assert error.file == "web.yaml" and "YAML syntax error" in error.message
    assert "keeping the 2 object(s)" in error.message
    # fixed again: the new content wins, the error goes
    write(f, pod_yaml("web"))
    assert store.update_file(str(f))
    assert pod_names(store.snapshot()) == ["default/web"]
    assert store.snapshot().errors == ()


@pytest.mark.parametrize("content", ["", "\n"])
def test_truncated_file_keeps_previous_objects(mdir, content):
    f = write(mdir / "web.yaml", pod_yaml("web"))
    store = ManifestStore(str(mdir))
    store.rescan()
    f.write_text(content)
    store.rescan()
    assert pod_names(store.snapshot()) == ["default/web"]
    assert "empty" in store.snapshot().errors[0].message


def test_broken_file_that_never_parsed_has_only_an_error(mdir):
    write(mdir / "bad.yaml", "a: [\n")
    store = ManifestStore(str(mdir))
    store.rescan()
    snap = store.snapshot()
    assert snap.pods == {} and len(snap.errors) == 1
    assert "keeping" not in snap.errors[0].message


def test_invalid_document_keeps_its_last_good_version(mdir):
    f = write(mdir / "web.yaml", pod_yaml("web") + "---\n" + pod_yaml("db") + "---\n" + pod_yaml("old"))
    store = ManifestStore(str(mdir))
    store.rescan()
    old_web = store.snapshot().pod_by_key("default/web")
    # web becomes invalid, db changes, old is removed, new appears
    f.write_text(
        pod_yaml("web", volumes="    - name: x\n      hostPath: {path: relative}\n")
        + "---\n" + pod_yaml("db", volumes="    - name: other\n      emptyDir: {}\n")
        + "---\n" + pod_yaml("new")
    )
    assert store.update_file(str(f))
    snap = store.snapshot()
    assert pod_names(snap) == ["default/db", "default/new", "default/web"]
    assert snap.pod_by_key("default/web") == old_web  # last good version kept
    assert [v.name for v in snap.pod_by_key("default/db").volumes] == ["other"]
    (error,) = snap.errors
    assert (error.file, error.document, error.field) == ("web.yaml", 1, "spec.volumes[0].hostPath.path")
    assert "keeping its last good version" in error.message


def test_invalid_document_whose_name_cannot_be_read_is_dropped(mdir):
    f = write(mdir / "web.yaml", pod_yaml("web"))
    store = ManifestStore(str(mdir))
    store.rescan()
    f.write_text("kind: Pod\nmetadata: {name: ../web}\n")
    store.update_file(str(f))
    snap = store.snapshot()
    assert snap.pods == {}
    assert snap.errors[0].field == "metadata.name"


def test_removing_a_file_removes_its_objects(mdir):
    write(mdir / "a.yaml", pod_yaml("a"))
    b = write(mdir / "b.yaml", pod_yaml("b"))
    store = ManifestStore(str(mdir))
    store.rescan()
    b.unlink()
    assert store.rescan()
    assert pod_names(store.snapshot()) == ["default/a"]
    assert store.remove_file(str(mdir / "a.yaml"))
    assert store.snapshot().pods == {}
    assert not store.remove_file(str(mdir / "a.yaml"))


def test_removing_a_broken_file_removes_its_kept_objects(mdir):
    f = write(mdir / "a.yaml", pod_yaml("a"))
    store = ManifestStore(str(mdir))
    store.rescan()
    f.write_text("a: [")
    store.rescan()
    assert pod_names(store.snapshot()) == ["default/a"]
    f.unlink()
    store.rescan()
    assert store.snapshot().pods == {} and store.snapshot().errors == ()


def test_duplicates_first_in_path_order_wins(mdir):
    write(mdir / "b.yaml", pod_yaml("web", volumes="    - name: from-b\n      emptyDir: {}\n"))
    write(mdir / "a.yaml", pod_yaml("web", volumes="    - name: from-a\n      emptyDir: {}\n"))
    write(mdir / "c.yaml", "kind: PersistentVolume\nmetadata: {name: pv}\nspec: {local: {path: /a}}\n"
          "---\nkind: PersistentVolume\nmetadata: {name: pv}\nspec: {local: {path: /b}}\n")
    store = ManifestStore(str(mdir))
    store.rescan()
    snap = store.snapshot()
    assert [v.name for v in snap.pod_by_key("default/web").volumes] == ["from-a"]
    assert snap.pvs["pv"].source.path == "/a"
    messages = sorted(str(e) for e in snap.errors)
    assert len(messages) == 2
    assert messages[0].startswith("b.yaml: document 1: metadata.name: duplicate Pod 'default/web': already defined in a.yaml: document 1")
    assert messages[1].startswith("c.yaml: document 2: metadata.name: duplicate PersistentVolume 'pv'")
    # the winner goes: the other takes over
    (mdir / "a.yaml").unlink()
    store.rescan()
    snap = store.snapshot()
    assert [v.name for v in snap.pod_by_key("default/web").volumes] == ["from-b"]
    assert len(snap.errors) == 1


def test_same_name_different_kinds_or_namespaces_are_not_duplicates(mdir):
    write(mdir / "a.yaml", pod_yaml("x", "ns1") + "---\n" + pod_yaml("x", "ns2")
          + "---\nkind: PersistentVolumeClaim\nmetadata: {name: x, namespace: ns1}\n"
          + "---\nkind: Secret\nmetadata: {name: x, namespace: ns1}\n")
    store = ManifestStore(str(mdir))
    store.rescan()
    snap = store.snapshot()
    assert snap.errors == ()
    assert len(snap.pods) == 2 and ("ns1", "x") in snap.pvcs and ("ns1", "x") in snap.secrets


def test_duplicate_pod_uid(mdir):
    write(mdir / "a.yaml", "kind: Pod\nmetadata: {name: a, uid: same}\n---\nkind: Pod\nmetadata: {name: b, uid: same}\n")
    store = ManifestStore(str(mdir))
    store.rescan()
    snap = store.snapshot()
    assert [p.name for p in snap.pods.values()] == ["a"]
    (error,) = snap.errors
    assert error.field == "metadata.uid" and "duplicate pod UID" in error.message


def test_missing_directory_is_an_error_and_keeps_objects(tmp_path):
    mdir = tmp_path / "manifests"
    store = ManifestStore(str(mdir))
    assert store.rescan()
    snap = store.snapshot()
    assert snap.pods == {} and "does not exist" in snap.errors[0].message
    mdir.mkdir()
    write(mdir / "a.yaml", pod_yaml("a"))
    assert store.rescan()
    assert pod_names(store.snapshot()) == ["default/a"] and store.snapshot().errors == ()
    os.rename(mdir, tmp_path / "elsewhere")
    assert store.rescan()
    snap = store.snapshot()
    assert pod_names(snap) == ["default/a"]
    assert "does not exist" in snap.errors[0].message


def test_secret_values_never_in_errors_or_snapshot_repr(mdir):
    write(mdir / "s.yaml", "kind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\n")
    store = ManifestStore(str(mdir))
    store.rescan()
    assert "hunter2" not in repr(store.snapshot())
    (mdir / "s.yaml").write_text("kind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2\n")
    store.rescan()
    snap = store.snapshot()
    assert snap.secrets[("default", "s")].data == {"password": b"hunter2"}
    assert "hunter2" not in repr(snap) and "hunter2" not in str(snap.errors)


def test_symlink_outside_the_directory_is_refused(mdir, tmp_path):
    outside = write(tmp_path / "outside.yaml", pod_yaml("evil"))
    (mdir / "link.yaml").symlink_to(outside)
    store = ManifestStore(str(mdir))
    store.rescan()
    snap = store.snapshot()
    assert snap.pods == {}
    assert "outside the manifest dir" in snap.errors[0].message


def test_a_symlink_whose_target_is_gone_keeps_its_objects_until_the_symlink_goes(mdir):
    """The ``..data`` layout of a ConfigMap mounted as the manifest dir (or a config mount
    inside it that failed): a dangling manifest symlink is a file that cannot be read, not an
    operator removing the pods, so their volumes are not torn down."""
    data = mdir / "..2026_11_28"
    data.mkdir()
    write(data / "web.yaml", pod_yaml("web"))
    (mdir / "..data").symlink_to(data.name)
    (mdir / "web.yaml").symlink_to("..data/web.yaml")
    store = ManifestStore(str(mdir))
    store.rescan()
    assert pod_names(store.snapshot()) == ["default/web"]

    (data / "web.yaml").unlink()
    data.rmdir()
    store.rescan()
    snap = store.snapshot()
    assert pod_names(snap) == ["default/web"]
    assert any("symlink target '..data/web.yaml' does not exist" in e.message and "keeping" in e.message
               for e in snap.errors), snap.errors

    (mdir / "web.yaml").unlink()
    store.rescan()
    assert pod_names(store.snapshot()) == []


def test_concurrent_updates_and_snapshots(mdir):
    files = [write(mdir / f"p{i}.yaml", pod_yaml(f"p{i}")) for i in range(5)]
    store = ManifestStore(str(mdir))
    stop = threading.Event()
    failures = []

    def reader():
        while not stop.is_set():
            snap = store.snapshot()
            if len(snap.pods) not in range(0, 6):
                failures.append(len(snap.pods))
            time.sleep(0.0005)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for round_ in range(20):
            for f in files:
                write(f, pod_yaml(f.stem, volumes=f"    - name: v{round_}\n      emptyDir: {{}}\n"))
            writers = [threading.Thread(target=store.rescan, kwargs={"force": True}) for _ in range(2)]
            for w in writers:
                w.start()
            for w in writers:
                w.join()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures
    snap = store.snapshot()
    assert len(snap.pods) == 5
    assert all(p.volumes[0].name == "v19" for p in snap.pods.values())


# --- issue 11, item 4: one pod per UID, sticky -----------------------------------------------

def _uid_pod(name: str, uid: str = "same") -> str:
    return f"kind: Pod\nmetadata: {{name: {name}, uid: {uid}}}\nspec:\n  volumes:\n  - {{name: v, emptyDir: {{}}}}\n"


def _holder(store) -> str:
    snap = store.snapshot()
    return snap.pods["same"].name


@pytest.mark.parametrize("newcomer_file", ["0-first.yaml", "z-last.yaml"])
def test_uid_holder_keeps_it_whatever_the_file_order(mdir, newcomer_file):
    write(mdir / "m-holder.yaml", _uid_pod("holder"))
    store = ManifestStore(str(mdir))
    store.rescan()
    assert _holder(store) == "holder"
    write(mdir / newcomer_file, _uid_pod("newcomer"))
    store.rescan()
    assert _holder(store) == "holder"
    (error,) = store.snapshot().errors
    assert error.field == "metadata.uid" and error.file == newcomer_file
    assert "'default/holder'" in error.message and "'default/newcomer'" in error.message


def test_uid_holder_keeps_it_when_documents_are_swapped_between_files(mdir):
    write(mdir / "a.yaml", _uid_pod("first"))
    write(mdir / "b.yaml", _uid_pod("second"))
    store = ManifestStore(str(mdir))
    store.rescan()
    assert _holder(store) == "first"
    # Swap the documents: "second" now comes first in path order.
    write(mdir / "a.yaml", _uid_pod("second"))
    write(mdir / "b.yaml", _uid_pod("first"))
    store.rescan()
    assert _holder(store) == "first"
    (error,) = store.snapshot().errors
    assert error.file == "a.yaml" and "'default/second' ignored" in error.message


def test_uid_goes_to_the_newcomer_once_the_holder_document_is_gone(mdir):
    write(mdir / "a.yaml", _uid_pod("first"))
    write(mdir / "b.yaml", _uid_pod("second"))
    store = ManifestStore(str(mdir))
    store.rescan()
    (mdir / "a.yaml").unlink()
    store.rescan()
    assert _holder(store) == "second" and store.snapshot().errors == ()
    write(mdir / "a.yaml", _uid_pod("first"))  # back again: now it is the newcomer
    store.rescan()
    assert _holder(store) == "second"


def test_uid_holder_from_before_a_restart_keeps_it(mdir):
    write(mdir / "a.yaml", _uid_pod("second"))
    write(mdir / "b.yaml", _uid_pod("first"))
    store = ManifestStore(str(mdir))
    store.prefer_uid_holders({"same": ("default", "first")})
    store.rescan()
    assert _holder(store) == "first"
    (error,) = store.snapshot().errors
    assert error.file == "a.yaml"
