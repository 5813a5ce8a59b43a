"""The pod owner record (uid -> namespace/name) that keeps one pod per UID across restarts."""

from __future__ import annotations

import json

from volumemanager.pod_owners import PRUNE_MIN, PodOwners


def test_round_trip_and_only_changes_are_written(tmp_path):
    rec = PodOwners(str(tmp_path / "state"))
    assert rec.load() == {}
    assert rec.update([("u1", "demo/a"), ("u2", "demo/b")], lambda uid: True)
    assert not rec.update([("u1", "demo/a")], lambda uid: True)  # nothing new: no write
    again = PodOwners(str(tmp_path / "state"))
    assert again.load() == {"u1": "demo/a", "u2": "demo/b"}
    assert again.get("u1") == "demo/a"


def test_unusable_file_counts_as_empty(tmp_path):
    (tmp_path / "pod-owners.json").write_text("{not json")
    assert PodOwners(str(tmp_path)).load() == {}
    (tmp_path / "pod-owners.json").write_text(json.dumps({"owners": {"u": 3, "v": "no-slash", "w": "ns/ok"}}))
    assert PodOwners(str(tmp_path)).load() == {"w": "ns/ok"}


def test_prune_and_bounded_growth(tmp_path):
    rec = PodOwners(str(tmp_path))
    rec.update([(f"u{i}", f"ns/p{i}") for i in range(3)], lambda uid: True)
    rec.prune(lambda uid: uid != "u1")
    assert PodOwners(str(tmp_path)).load() == {"u0": "ns/p0", "u2": "ns/p2"}
    live = {"new"}
    rec.update([(f"g{i}", f"ns/g{i}") for i in range(PRUNE_MIN + 1)], lambda uid: uid in live)
    rec.update([("new", "ns/new")], lambda uid: uid in live)
    assert rec.owners() == {"new": "ns/new"}


def test_a_write_that_fails_is_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    rec = PodOwners(str(blocker / "state"))  # its parent is a file: cannot be created
    assert rec.update([("u", "ns/p")], lambda uid: True)
    assert rec.get("u") == "ns/p"


def test_new_owners_are_appended_and_folded_into_the_file(tmp_path):
    """A new UID is one appended line, not a rewrite of every UID (issue 16); the log is
    folded into the file once it is longer than the file, and a torn line is skipped."""
    rec = PodOwners(str(tmp_path))
    for i in range(PRUNE_MIN + 1):  # one more than the log holds before its first fold
        rec.update([(f"u{i}", f"ns/p{i}")], lambda uid: True)
    assert json.loads((tmp_path / "pod-owners.json").read_text())["owners"]["u0"] == "ns/p0"
    assert not (tmp_path / "pod-owners.log").exists()
    before = (tmp_path / "pod-owners.json").read_text()
    rec.update([("new", "ns/new")], lambda uid: True)
    assert (tmp_path / "pod-owners.json").read_text() == before  # appended, not rewritten
    assert '"uid": "new"' in (tmp_path / "pod-owners.log").read_text()
    with open(tmp_path / "pod-owners.log", "a") as f:
        f.write('{"uid": "torn", "ke')  # a crash mid-write
    rec.update([("after", "ns/after")], lambda uid: True)
    again = PodOwners(str(tmp_path))
    owners = again.load()
    assert owners["new"] == "ns/new" and owners["after"] == "ns/after" and "torn" not in owners
    assert owners == rec.owners()
