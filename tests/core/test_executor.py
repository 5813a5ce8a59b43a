"""OperationExecutor: exclusivity per key (with whole-volume wildcards) and per-key backoff."""

from __future__ import annotations

import threading
import time

import pytest

from operation_executor.backoff import INITIAL_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS, next_backoff
from operation_executor.errors import AlreadyPendingError, BackoffError, FinalError, WaitingError
from operation_executor.executor import QUICK_LANE, OperationExecutor, OperationKey

pytestmark = pytest.mark.timeout(20)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def blocker():
    ev = threading.Event()
    return ev, (lambda: ev.wait(5))


def test_whole_volume_key_conflicts_with_pod_keys_and_pods_run_in_parallel():
    ex = OperationExecutor(max_workers=4)
    release, block = blocker()
    ex.run(OperationKey("v", "pod-a"), "mount", block)
    ex.run(OperationKey("v", "pod-b"), "mount", block)  # another pod: parallel
    with pytest.raises(AlreadyPendingError):
        ex.run(OperationKey("v", "pod-a"), "unmount", lambda: None)
    with pytest.raises(AlreadyPendingError):
        ex.run(OperationKey("v"), "unmount_device", lambda: None)
    ex.run(OperationKey("other"), "mount", lambda: None)
    assert ex.is_pending("v") and ex.is_pending("v", "pod-a") and not ex.is_pending("v", "pod-c")
    release.set()
    assert ex.wait_idle(5)
    ex.shutdown()


def test_pod_key_conflicts_with_running_whole_volume_op():
    ex = OperationExecutor()
    release, block = blocker()
    ex.run(OperationKey("v"), "mount", block)
    with pytest.raises(AlreadyPendingError):
        ex.run(OperationKey("v", "p"), "unmount", lambda: None)
    release.set()
    ex.wait_idle(5)
    ex.shutdown()


def test_backoff_after_failure_and_reset_by_other_operation():
    clock = Clock()
    done = threading.Event()
    ex = OperationExecutor(clock=clock, on_complete=lambda o: done.set())

    def fail():
        raise FinalError("boom")

    key = OperationKey("v")
    ex.run(key, "mount", fail)
    assert done.wait(5)
    ex.wait_idle(5)
    with pytest.raises(BackoffError) as e:
        ex.run(key, "mount", fail)
    assert 0 < e.value.retry_in <= INITIAL_BACKOFF_SECONDS * 1.1
    ex.run(key, "unmount", lambda: None)  # a different operation is not held back
    ex.wait_idle(5)
    ex.run(key, "mount", lambda: None)  # the success cleared the backoff
    ex.wait_idle(5)
    ex.shutdown()


def test_waiting_is_not_backed_off():
    ex = OperationExecutor()
    key = OperationKey("v")

    def wait():
        raise WaitingError("no device", waiting_for="device /dev/x")

    ex.run(key, "mount", wait)
    ex.wait_idle(5)
    ex.run(key, "mount", wait)  # immediately again: no BackoffError
    ex.wait_idle(5)
    ex.shutdown()


def test_backoff_doubles_to_cap_with_jitter():
    b = None
    seen = []
    for i in range(20):
        b = next_backoff(b, "mount", float(i))
        seen.append(b.base)
    assert seen[0] == INITIAL_BACKOFF_SECONDS and seen[1] == 2 * INITIAL_BACKOFF_SECONDS
    assert seen[-1] == MAX_BACKOFF_SECONDS
    assert next_backoff(b, "unmount", 0.0).base == INITIAL_BACKOFF_SECONDS


def test_lanes_do_not_wait_for_each_other():
    """A driver answering one call at a time must not park the workers an emptyDir or
    another driver needs: each lane has its own."""
    ex = OperationExecutor(max_workers=2, quick_workers=1)
    release, block = blocker()
    for i in range(4):  # more slow calls than a lane has workers: some queue
        ex.run(OperationKey(f"slow-{i}"), "mount", block, lane="csi:slow.example.com")
    for i in range(3):
        ex.run(OperationKey(f"local-{i}"), "mount", block)  # the default lane, 2 workers
    done = {name: threading.Event() for name in ("quick", "other-driver")}
    ex.run(OperationKey("tmpfs", "pod"), "mount", done["quick"].set, lane=QUICK_LANE)
    ex.run(OperationKey("fast-csi"), "mount", done["other-driver"].set, lane="csi:fast.example.com")
    for name, ev in done.items():
        assert ev.wait(2), f"the {name} operation waited behind another lane"
    assert ex.is_pending("slow-3") and ex.is_pending("local-2")
    deadline = time.monotonic() + 2  # the quick and the other driver's operation finish
    while ex.pending_count() != 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ex.pending_count() == 7
    release.set()
    assert ex.wait_idle(5)
    assert ex.pending_count() == 0
    ex.shutdown()
