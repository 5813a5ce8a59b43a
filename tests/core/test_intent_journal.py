"""The intent journal: durable before the step, interrupted steps found after a crash."""

from __future__ import annotations

import json

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
