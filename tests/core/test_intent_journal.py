"""The intent journal: durable before the step, interrupted steps found after a crash."""

from __future__ import annotations

import json

from tests.fixtures_mounts import mount_cleanup  # noqa: F401 - pytest fixture
from volumemanager.intent_journal import COMPACT_AFTER_RECORDS, FileIntentJournal


def lines(path) -> list[dict]:
    return [json.loads(x) for x in open(path)]


def test_begin_is_on_disk_before_the_step_and_end_closes_it(tmp_path):
    j = FileIntentJournal(str(tmp_path), boot_id="boot-1")
    tok = j.begin("mount_device", "vol-1", None, {"device_mount_path": "/x"})
    recs = lines(j.path)
    assert recs[-1]["type"] == "begin" and recs[-1]["step"] == "mount_device"
    j.end(tok, "ok")
    j.close()
    j2 = FileIntentJournal(str(tmp_path), boot_id="boot-1")
    assert j2.open_intents() == [] and not j2.rebooted


def test_interrupted_step_is_reported_after_a_crash_and_reboot_detected(tmp_path):
    j = FileIntentJournal(str(tmp_path), boot_id="boot-1")
    j.begin("tear_down", "vol-2", "pod-a", {"mount_path": "/p"})
    done = j.begin("set_up", "vol-3", "pod-b", {})
    j.end(done, "ok")
    j.begin("mount_device", "vol-4", None, {})  # its fsync also makes the end above durable
    # crash: no close, no end for the first and last step
    j2 = FileIntentJournal(str(tmp_path), boot_id="boot-2")
    assert [(r["step"], r["volume_id"], r["pod_uid"]) for r in j2.open_intents()] == [
        ("tear_down", "vol-2", "pod-a"), ("mount_device", "vol-4", None)]
    assert j2.rebooted and j2.previous_boot_id == "boot-1"
    # carried forward until dealt with, even through another crash
    j3 = FileIntentJournal(str(tmp_path), boot_id="boot-2")
    assert len(j3.open_intents()) == 2
    j3.forget_previous()
    j3.compact()
    assert FileIntentJournal(str(tmp_path), boot_id="boot-2").open_intents() == []


def test_compaction_keeps_open_intents_and_bounds_the_file(tmp_path):
    j = FileIntentJournal(str(tmp_path), boot_id="b")
    keep = j.begin("mount_device", "kept", None, {})
    for i in range(COMPACT_AFTER_RECORDS // 2 + 10):
        j.end(j.begin("set_up", f"v{i}", "p", {}), "ok")
    assert len(lines(j.path)) < COMPACT_AFTER_RECORDS
    j.close()
    assert [r["volume_id"] for r in FileIntentJournal(str(tmp_path), boot_id="b").open_intents()] == ["kept"]
    del keep


def test_no_secret_values_are_written(tmp_path):
    from operation_executor.types import SecretRef

    j = FileIntentJournal(str(tmp_path), boot_id="b")
    j.end(j.begin("mount_device", "v", None, {"secret": SecretRef("ns", "creds")}), "ok")
    j.close()
    text = open(j.path).read()
    assert "creds" in text and "hunter2" not in text


def test_a_non_durable_begin_is_still_written_before_the_step(tmp_path):
    """durable=False skips the fsync, never the write: a daemon killed right after begin()
    returns still leaves the record for the next run (the kernel holds it)."""
    j = FileIntentJournal(str(tmp_path), boot_id="b")
    j.begin("set_up", "tmpfs-vol", "pod", {"mount_path": "/m"}, durable=False)
    assert lines(j.path)[-1]["volume_id"] == "tmpfs-vol"
    done = j.begin("set_up", "other", "pod", {}, durable=False)
    j.end(done, "ok")
    j.begin("mount_device", "disk", None, {})  # durable: carries the records before it
    # crash without close()
    assert [r["volume_id"] for r in FileIntentJournal(str(tmp_path), boot_id="b").open_intents()] == [
        "tmpfs-vol", "disk"]


def test_concurrent_steps_and_compactions_lose_no_open_intent(tmp_path, monkeypatch):
    """Appends take no lock and compaction swaps the file under the same fd: whatever the
    interleaving, the intents left open are exactly the ones found by the next run."""
    import threading

    import volumemanager.intent_journal as ij

    monkeypatch.setattr(ij, "COMPACT_AFTER_RECORDS", 50)
    j = FileIntentJournal(str(tmp_path), boot_id="b")
    left_open: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(200):
            vid = f"w{n}-{i}"
            tok = j.begin("set_up", vid, "p", {}, durable=(i % 7 == 0))
            if i % 41 == 0:
                with lock:
                    left_open.append(vid)  # "crashes" in the middle of this step
            else:
                j.end(tok, "ok")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    j.close()  # flushes the last end records (a crash may lose those: a finished step then looks interrupted)
    found = sorted(r["volume_id"] for r in FileIntentJournal(str(tmp_path), boot_id="b").open_intents())
    assert found == sorted(left_open)


# --- issue 11, item 5: teardown never needs free space --------------------------------------


def test_a_torn_tail_is_cut_at_load_and_a_record_glued_to_it_still_counts(tmp_path):
    """A crash (or ENOSPC) mid-write leaves a record without its newline. The next run
    ignores it, its file no longer holds it, and a whole record that another thread appended
    right after the torn one (glued onto the same line) is still read: the completed step it
    ends is not reported as interrupted."""
    def rec(**r) -> str:
        return json.dumps(r) + "\n"

    path = tmp_path / "intents.jsonl"
    path.write_text(
        rec(type="header", boot_id="b", pid=1, t=0)
        + "".join(rec(type="begin", id=v, t=i, step="set_up", volume_id=v, pod_uid="p", details={})
                  for i, v in enumerate(["done-a", "done-b", "open-c"]))
        + '{"type": "begin", "id": "torn-1", "t": 9, "step": "set_up", "volu' + rec(type="end", id="done-a", outcome="ok")
        + '{"type": "end", "id": "open-' + rec(type="end", id="done-b", outcome="ok")
        + '{"type": "begin", "id": "torn-2", "step": "set_')  # the torn last line: no newline
    j2 = FileIntentJournal(str(tmp_path), boot_id="b", reserve_bytes=0)
    assert [r["volume_id"] for r in j2.open_intents()] == ["open-c"]
    assert [r.get("volume_id") for r in lines(j2.path)] == [None, "open-c"]  # header + the open intent
    j2.close()


def _fill(path) -> None:
    """Write zeros to ``path`` until the filesystem refuses another byte."""
    import errno
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 4096, 1):
            chunk = b"\0" * size
            while True:
                try:
                    if os.write(fd, chunk) < size:
                        break
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def _whole_lines(path) -> list[dict]:
    """Every line of the file, each a whole record (a torn one fails the test)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n"), f"torn tail: {data[-80:]!r}"
    return [json.loads(x) for x in data.splitlines()]


def test_enospc_releases_the_reserve_teardown_goes_on_and_the_journal_recovers(mount_cleanup, monkeypatch, caplog):
    import logging
    import os
    import subprocess

    import pytest

    import volumemanager.intent_journal as ij
    from operation_executor.errors import WaitingError

    monkeypatch.setattr(ij, "RETRY_SECONDS", 0.0)
    fs = mount_cleanup / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs)], check=True)
    caplog.set_level(logging.INFO, logger=ij.__name__)
    state = str(fs / "state")
    j = FileIntentJournal(state, boot_id="b", reserve_bytes=256 * 1024)
    j2 = None
    try:
        assert os.stat(j.reserve_path).st_blocks * 512 >= 256 * 1024
        j.end(j.begin("set_up", "done", "p", {}), "ok")
        j.begin("set_up", "still-open", "p", {})
        big = {"mount_path": "/m/" + "x" * 6000}  # crosses a page: the write is torn, not refused

        # Full: the append is torn; the reserve is given back and the journal rewritten.
        _fill(fs / "filler-1")
        t1 = j.begin("tear_down", "td-1", "p", big, required=False)
        assert os.stat(j.reserve_path).st_size == 0
        recs = _whole_lines(j.path)
        assert [r.get("volume_id") for r in recs] == [None, "still-open", "td-1"]

        # Full again, reserve gone: teardown goes on unrecorded, mounting waits with a clear error.
        _fill(fs / "filler-2")
        t2 = j.begin("tear_down", "td-2", "p", big, required=False)
        with pytest.raises(WaitingError) as refused:
            j.begin("mount_device", "refused", None, big)
        assert refused.value.code == "NO_SPACE"
        assert refused.value.message == (f"no space left on device in {state}: cannot record the intent to "
                                         f"mount_device refused")
        assert refused.value.waiting_for == f"free space in {state}"
        for _ in range(50):  # logged once, not per record
            j.end(j.begin("tear_down", "td-n", "p", {}, required=False), "ok")
        j.end(t1, "ok")
        j.end(t2, "ok")

        # Space returns: the next required step is recorded without a restart, the torn tail
        # is gone, the reserve is back.
        os.unlink(fs / "filler-1")
        os.unlink(fs / "filler-2")
        j.begin("mount_device", "after", None, {"device_mount_path": "/g"})
        assert os.stat(j.reserve_path).st_blocks * 512 >= 256 * 1024
        assert [r.get("volume_id") for r in _whole_lines(j.path)] == [None, "still-open", "after"]
        assert j._healthy

        # A crash now: exactly the steps that did not end are found.
        j2 = FileIntentJournal(state, boot_id="b", reserve_bytes=256 * 1024)
        assert sorted(r["volume_id"] for r in j2.open_intents()) == ["after", "still-open"]
    finally:
        j.close()
        if j2 is not None:
            j2.close()
    messages = [r.getMessage() for r in caplog.records if r.name == ij.__name__]
    assert sum(f"no space left on device in {state}" in m for m in messages) == 1, messages
    assert sum("teardown steps proceed without an intent record" in m for m in messages) == 1, messages
    assert sum(f"space is back in {state}" in m for m in messages) == 1, messages


def test_a_full_disk_at_start_up_keeps_the_old_file_and_cuts_its_torn_tail(mount_cleanup, monkeypatch):
    """The daemon starts on a full root dir: the journal opens (no crash), refuses required
    steps, lets teardown run, and rewrites itself once space returns."""
    import os
    import subprocess

    import pytest

    import volumemanager.intent_journal as ij
    from operation_executor.errors import WaitingError

    monkeypatch.setattr(ij, "RETRY_SECONDS", 0.0)
    fs = mount_cleanup / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs)], check=True)
    state = str(fs / "state")
    j = FileIntentJournal(state, boot_id="b1", reserve_bytes=0)
    j.begin("set_up", "interrupted", "p", {})
    os.close(j._fd)  # crash
    with open(j.path, "a") as f:
        f.write('{"type": "begin", "id": "torn"')
    _fill(fs / "filler")
    j2 = FileIntentJournal(state, boot_id="b2", reserve_bytes=0)
    try:
        assert [r["volume_id"] for r in j2.open_intents()] == ["interrupted"] and j2.rebooted
        assert open(j2.path, "rb").read().endswith(b"\n")
        j2.end(j2.begin("tear_down", "td", "p", {}, required=False), "ok")
        with pytest.raises(WaitingError):
            j2.begin("set_up", "new", "p", {"x": "y" * 6000})
        os.unlink(fs / "filler")
        j2.forget_previous()
        j2.begin("set_up", "new", "p", {})
        recs = _whole_lines(j2.path)
        assert recs[0] == {**recs[0], "type": "header", "boot_id": "b2"}
        assert [r.get("volume_id") for r in recs[1:]] == ["new"]
    finally:
        j2.close()


def test_many_threads_meeting_a_full_disk_log_once_and_lose_no_open_intent(mount_cleanup, monkeypatch, caplog):
    """Eight threads of teardown and mount steps run into ENOSPC together: the reserve is given
    back once, each condition is logged once, teardown always runs, and after space returns a
    crash finds exactly the steps left open, whatever was torn or refused on the way."""
    import logging
    import os
    import subprocess
    import threading

    from operation_executor.errors import WaitingError

    import volumemanager.intent_journal as ij

    monkeypatch.setattr(ij, "RETRY_SECONDS", 0.0)
    fs = mount_cleanup / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs)], check=True)
    caplog.set_level(logging.INFO, logger=ij.__name__)
    state = str(fs / "state")
    j = FileIntentJournal(state, boot_id="b", reserve_bytes=128 * 1024)
    left_open: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        for i in range(150):
            vid = f"w{n}-{i}"
            required = i % 2 == 0
            try:
                tok = j.begin("set_up" if required else "tear_down", vid, "p", {"mount_path": "/m/" + "x" * 400},
                              required=required)
            except WaitingError as e:
                assert e.code == "NO_SPACE" and state in e.message
                continue
            if i % 37 == 0:
                with lock:
                    left_open.append(vid)
            else:
                j.end(tok, "ok")

    try:
        _fill(fs / "filler")
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        os.unlink(fs / "filler")
        j.begin("mount_device", "after", None, {})
        left_open.append("after")
        _whole_lines(j.path)
        j2 = FileIntentJournal(state, boot_id="b", reserve_bytes=0)
        assert sorted(r["volume_id"] for r in j2.open_intents()) == sorted(left_open)
        j2.close()
    finally:
        j.close()
    messages = [r.getMessage() for r in caplog.records if r.name == ij.__name__]
    assert sum("gave back the intent journal's" in m for m in messages) == 1, messages
    assert sum("teardown steps proceed without an intent record" in m for m in messages) == 1, messages
    assert sum(f"space is back in {state}" in m for m in messages) == 1, messages
