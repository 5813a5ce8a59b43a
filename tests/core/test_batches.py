"""Batches of quick-lane operations (issue 16, item 1): many operations as one work item, each
volume still under its own key, with its own error, backoff and result."""

from __future__ import annotations

import json
import threading

import pytest

from operation_executor.errors import AlreadyPendingError, BackoffError, FinalError, UncertainError
from operation_executor.executor import QUICK_LANE, BatchItem, OperationExecutor, OperationKey
from operation_executor.generator import OperationGenerator
from operation_executor.journal import IntentsRefused, JournalStep
from operation_executor.plugin import PluginRegistry
from operation_executor.states import VolumeMountState
from operation_executor.types import PodRef, VolumeSpec, VolumeToMount
from tests.core.scripted_plugin import ScriptedPlugin, final
from tests.daemon_harness import wait_until
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.cache.desired_state import DesiredPod, DesiredStateOfWorld
from volumemanager.intent_journal import FileIntentJournal
from volumemanager.reconciler import BATCH_SIZE, Reconciler

pytestmark = pytest.mark.timeout(30)


# --- the executor ---------------------------------------------------------------------------


def test_run_batch_refuses_busy_and_backed_off_keys_alone_and_reports_each_outcome():
    ex = OperationExecutor(max_workers=2)
    singles: list[str] = []
    batches: list[list[str]] = []
    ex.add_completion_callback(lambda o: singles.append(o.key.volume_id))
    ex.add_batch_completion_callback(lambda os_: batches.append([o.key.volume_id for o in os_]))
    release = threading.Event()
    ex.run(OperationKey("busy", "p"), "mount", lambda: release.wait(5))
    ex.run(OperationKey("failed", "p"), "mount", lambda: (_ for _ in ()).throw(final()))
    wait_until(lambda: not ex.is_pending("failed"), 5, what="the failure")
    singles.clear()
    batches.clear()

    ran: list[list[str]] = []

    def fn(items: list[BatchItem]):
        ran.append([i.key.volume_id for i in items])
        return {i.key: ((FinalError("bad", code="X") if i.key.volume_id == "b" else None), 0.001)
                for i in items if i.key.volume_id != "lost"}

    keys = [OperationKey(v, "p") for v in ("a", "busy", "failed", "b", "lost")]
    refused = ex.run_batch([BatchItem(k, "mount") for k in keys], fn, QUICK_LANE)
    assert isinstance(refused[OperationKey("busy", "p")], AlreadyPendingError)
    assert isinstance(refused[OperationKey("failed", "p")], BackoffError)
    assert set(refused) == {OperationKey("busy", "p"), OperationKey("failed", "p")}
    release.set()
    assert ex.wait_idle(5)
    assert ran == [["a", "b", "lost"]]  # one work item for the three that could start
    assert [sorted(b) for b in batches if "a" in b] == [["a", "b", "lost"]]  # one batch callback
    assert sorted(v for v in singles if v != "busy") == ["a", "b", "lost"]  # and each outcome alone
    # Each key keeps its own backoff: the failed one and the one without a result (uncertain).
    assert ex.backoff_remaining(OperationKey("b", "p")) > 0
    assert ex.backoff_remaining(OperationKey("lost", "p")) > 0
    assert ex.backoff_remaining(OperationKey("a", "p")) == 0


def test_a_batch_that_raises_fails_each_of_its_items():
    ex = OperationExecutor()
    seen = []
    ex.add_batch_completion_callback(lambda outcomes: seen.extend(outcomes))

    def boom(items):
        raise UncertainError("worker lost", code="UNEXPECTED")

    ex.run_batch([BatchItem(OperationKey(v), "mount") for v in ("x", "y")], boom)
    assert ex.wait_idle(5)
    assert sorted(o.key.volume_id for o in seen) == ["x", "y"]
    assert all(isinstance(o.error, UncertainError) for o in seen)


# --- the journal ----------------------------------------------------------------------------


def test_begin_many_records_every_intent_in_one_append(tmp_path):
    j = FileIntentJournal(str(tmp_path))
    tokens = j.begin_many([JournalStep("set_up", f"v{i}", "p", {"mount_path": f"/m/{i}"}) for i in range(5)],
                          durable=False)
    assert len(tokens) == len(set(tokens)) == 5
    for t in tokens[:3]:
        j.end(t, "ok")
    j.begin("set_up", "w", "p", {})  # carries the ends
    j.close()
    recs = [json.loads(line) for line in (tmp_path / j.path.rsplit("/", 1)[-1]).read_text().splitlines()]
    begins = [r for r in recs if r.get("type") == "begin"]
    assert [r["volume_id"] for r in begins] == ["v0", "v1", "v2", "v3", "v4", "w"]
    assert sum(1 for r in recs if r.get("type") == "end") == 3
    again = FileIntentJournal(str(tmp_path))
    assert sorted(r["volume_id"] for r in again.open_intents()) == ["v3", "v4", "w"]
    again.close()


def test_intents_refused_names_each_volume():
    err = IntentsRefused([FinalError("one", code="NO_SPACE"), FinalError("two", code="NO_SPACE")])  # type: ignore[list-item]
    assert [e.message for e in err.per_step] == ["one", "two"] and err.code == "NO_SPACE"


# --- the reconciler -------------------------------------------------------------------------


class QuickPlugin(ScriptedPlugin):
    """Scripted, on the quick lane, not device-mountable: its pod views are batched."""

    name = "test/quick"

    def __init__(self) -> None:
        super().__init__(device_mountable=False)

    def operation_lane(self, spec: VolumeSpec) -> str:
        return QUICK_LANE


class World:
    def __init__(self, plugin: ScriptedPlugin) -> None:
        self.plugin = plugin
        reg = PluginRegistry()
        reg.register(plugin)
        self.dsw = DesiredStateOfWorld()
        self.asw = ActualStateOfWorld()
        self.executor = OperationExecutor(max_workers=4)
        self.work_items: list[int] = []
        self.executor.add_batch_completion_callback(lambda outcomes: self.work_items.append(len(outcomes)))
        self.rec = Reconciler(self.dsw, self.asw, self.executor, OperationGenerator(reg, self.asw),
                              ready_to_unmount=lambda: True)
        self.thread = threading.Thread(target=self.rec.run, daemon=True)
        self.thread.start()

    def pods(self, n: int) -> None:
        changed: set[str] = set()
        for i in range(n):
            pod = PodRef(f"u{i:03d}", "ns", f"p{i:03d}")
            spec = VolumeSpec(name=f"v{i:03d}", plugin_name=self.plugin.name, source=None)
            vtm = VolumeToMount(self.plugin.volume_id(spec, pod), pod, spec.name, spec, self.plugin.name, False)
            changed |= self.dsw.set_pod(DesiredPod(pod, (vtm,)))
        self.rec.mark_dirty(changed)

    def remove_all(self) -> None:
        changed: set[str] = set()
        for uid in self.dsw.pod_uids():
            changed |= self.dsw.remove_pod(uid)
        self.rec.mark_dirty(changed)

    def state(self, i: int) -> VolumeMountState:
        return self.asw.pod_state(f"{self.plugin.name}/u{i:03d}-v{i:03d}", f"u{i:03d}")

    def close(self) -> None:
        self.rec.stop()
        self.thread.join(5)
        self.executor.shutdown()


@pytest.fixture
def quick():
    w = World(QuickPlugin())
    yield w
    w.close()


def test_quick_lane_mounts_and_unmounts_run_in_batches_with_errors_per_volume(quick):
    n = 3 * BATCH_SIZE
    quick.plugin.script("set_up", "v007", final("no such thing"))
    quick.pods(n)
    wait_until(lambda: sum(quick.state(i) is VolumeMountState.MOUNTED for i in range(n)) == n - 1, 10,
               what="all but the failing volume mounted")
    assert max(quick.work_items) > 1 and len(quick.work_items) < n  # batches, not one item per volume
    # The failure is the failing volume's alone: its own error and backoff, nothing else failed.
    res = quick.asw.result(f"{quick.plugin.name}/u007-v007", "u007")
    assert res is not None and res.error is not None and "no such thing" in str(res.error)
    assert quick.executor.backoff_remaining(OperationKey(f"{quick.plugin.name}/u007-v007", "u007")) > 0
    others = [quick.asw.result(f"{quick.plugin.name}/u{i:03d}-v{i:03d}", f"u{i:03d}") for i in range(n) if i != 7]
    assert all(r is not None and r.error is None for r in others)
    # Its retry comes after the backoff, alone, and succeeds.
    wait_until(lambda: quick.state(7) is VolumeMountState.MOUNTED, 15, what="the retry")

    quick.work_items.clear()
    quick.remove_all()
    wait_until(lambda: all(quick.state(i) is VolumeMountState.NOT_MOUNTED for i in range(n)), 10,
               what="everything torn down")
    assert quick.plugin.count("tear_down") == n
    assert max(quick.work_items) > 1 and len(quick.work_items) < n


def test_device_mountable_volumes_are_never_batched():
    w = World(ScriptedPlugin(device_mountable=False))  # default lane: one work item each
    try:
        w.pods(10)
        wait_until(lambda: all(w.state(i) is VolumeMountState.MOUNTED for i in range(10)), 10, what="mounted")
        assert set(w.work_items) == {1}
    finally:
        w.close()
