"""Runs volume operations: at most one in flight per key, per-key backoff, a bounded pool.

Keys follow the kubelet's nestedpendingoperations: an ``OperationKey`` with ``pod_uid=None``
stands for the whole volume and conflicts with every operation on that volume (staging,
unstaging, and mounting a device-mountable volume, so MountDevice never races); a key with a
pod conflicts only with the whole-volume key and with itself, so per-pod operations of
different pods run in parallel.

``run`` never waits for an operation: it starts it or refuses with ``AlreadyPendingError`` /
``BackoffError``, which the reconciler treats as normal answers.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping

from operation_executor.backoff import Backoff, next_backoff
from operation_executor.errors import AlreadyPendingError, BackoffError, UncertainError, WaitingError

log = logging.getLogger(__name__)

# Operations run in lanes, each with workers of its own, so that operations that wait (on a
# CSI driver, an NFS server, mkfs) never hold up those of another lane.
DEFAULT_LANE = "default"  # hostPath, local, NFS, and plugins that name no lane
QUICK_LANE = "quick"  # a few local syscalls (emptyDir): they hold the GIL, a handful suffices
DEFAULT_MAX_WORKERS = 16  # the default lane: enough for a few slow mounts at once on 2 cores
DEFAULT_QUICK_WORKERS = 4
# Any other lane (one per CSI driver): a driver answering one call at a time parks at most
# this many workers, and only its own volumes wait behind it.
DEFAULT_LANE_WORKERS = 8


_MISSING = object()


@dataclass(frozen=True, slots=True)
class OperationKey:
    volume_id: str
    pod_uid: str | None = None  # None: the whole volume


@dataclass(frozen=True)
class OperationOutcome:
    key: OperationKey
    operation: str
    error: BaseException | None
    started_at: float
    duration: float
    plugin: str = ""


CompletionCallback = Callable[[OperationOutcome], None]
# Told every outcome of one work item at once (one for ``run``, the whole batch for
# ``run_batch``): what a consumer does once per change (a wake-up, a summary line) it does once.
BatchCompletionCallback = Callable[[list[OperationOutcome]], None]


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One operation of a batch: its own key (exclusivity, backoff and errors stay per volume)."""

    key: OperationKey
    operation: str
    plugin: str = ""


# Runs the accepted items of a batch, in one worker, and answers for each: (error or None,
# seconds it took). A key it leaves out counts as uncertain (we cannot know what it did).
BatchFn = Callable[[list[BatchItem]], Mapping[OperationKey, tuple[BaseException | None, float]]]


class OperationExecutor:
    def __init__(
        self,
        max_workers: int = DEFAULT_MAX_WORKERS,
        on_complete: CompletionCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        quick_workers: int = DEFAULT_QUICK_WORKERS,
    ) -> None:
        self._lane_sizes = {DEFAULT_LANE: max_workers, QUICK_LANE: quick_workers}
        self._lanes: dict[str, ThreadPoolExecutor] = {}  # created on first use
        self._on_complete: list[CompletionCallback] = [on_complete] if on_complete else []
        self._on_batch_complete: list[BatchCompletionCallback] = []
        self._clock = clock
        self._lock = threading.Lock()
        # volume_id -> {pod_uid or None: operation name}
        self._pending: dict[str, dict[str | None, str]] = {}
        self._pending_count = 0
        self._backoff: dict[OperationKey, Backoff] = {}
        self._idle = threading.Condition(self._lock)
        self._closed = False

    def add_completion_callback(self, cb: CompletionCallback) -> None:
        self._on_complete.append(cb)

    def add_batch_completion_callback(self, cb: BatchCompletionCallback) -> None:
        """``cb`` gets the outcomes of each work item as one list (see BatchCompletionCallback)."""
        self._on_batch_complete.append(cb)

    # --- queries --------------------------------------------------------------------------

    def is_pending(self, volume_id: str, pod_uid: str | None = None) -> bool:
        """With ``pod_uid=None``: any operation on the volume; else one that conflicts with
        the (volume, pod) key."""
        with self._lock:
            return self._conflict(OperationKey(volume_id, pod_uid)) is not None

    def pending_operation(self, volume_id: str, pod_uid: str | None = None) -> str | None:
        with self._lock:
            return self._conflict(OperationKey(volume_id, pod_uid))

    def backoff_remaining(self, key: OperationKey) -> float:
        with self._lock:
            b = self._backoff.get(key)
            return b.remaining(self._clock()) if b else 0.0

    def pending_count(self) -> int:
        """Operations in flight (O(1): the daemon asks after every reconciler wake-up)."""
        with self._lock:
            return self._pending_count

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no operation is in flight (for tests and orderly shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True

    # --- running --------------------------------------------------------------------------

    def run(
        self, key: OperationKey, operation: str, fn: Callable[[], None], plugin: str = "", lane: str = DEFAULT_LANE
    ) -> None:
        """Start ``fn`` for ``key`` unless a conflicting operation runs or the key backs off.

        A different operation than the one that failed last on this key is not held back by
        that failure's backoff (an unmount may follow a failed mount at once). ``lane``
        names the workers that run it (see DEFAULT_LANE).
        """
        with self._lock:
            if self._closed:
                raise AlreadyPendingError("executor is shutting down")
            refusal = self._refusal(key, operation)
            if refusal is not None:
                raise refusal
            self._mark_pending(key, operation)
            pool = self._pool(lane)
        try:
            pool.submit(self._execute, key, operation, fn, plugin)
        except RuntimeError:
            with self._lock:
                self._remove_pending(key)
            raise AlreadyPendingError("executor is shutting down") from None

    def run_batch(self, items: list[BatchItem], fn: BatchFn,
                  lane: str = DEFAULT_LANE) -> dict[OperationKey, AlreadyPendingError | BackoffError]:
        """Start the items that may run now as **one** work item: ``fn`` gets them in one
        worker, with one hand-off to the pool for all of them, and the completion callbacks
        get their outcomes as one list. Each item keeps its own key: one that conflicts with a
        running operation or backs off is refused alone, exactly as ``run`` would refuse it
        (returned: key -> the refusal; the others started). Never waits."""
        refused: dict[OperationKey, AlreadyPendingError | BackoffError] = {}
        accepted: list[BatchItem] = []
        with self._lock:
            if self._closed:
                raise AlreadyPendingError("executor is shutting down")
            for item in items:
                refusal = self._refusal(item.key, item.operation)
                if refusal is not None:
                    refused[item.key] = refusal
                    continue
                self._mark_pending(item.key, item.operation)
                accepted.append(item)
            if not accepted:
                return refused
            pool = self._pool(lane)
        try:
            pool.submit(self._execute_batch, accepted, fn)
        except RuntimeError:
            with self._lock:
                for item in accepted:
                    self._remove_pending(item.key)
            raise AlreadyPendingError("executor is shutting down") from None
        return refused

    def _refusal(self, key: OperationKey, operation: str) -> AlreadyPendingError | BackoffError | None:
        running = self._conflict(key)
        if running is not None:
            return AlreadyPendingError(f"operation {running} is in progress for volume {key.volume_id}")
        b = self._backoff.get(key)
        if b is not None and b.operation == operation:
            remaining = b.remaining(self._clock())
            if remaining > 0:
                return BackoffError(
                    f"{operation} for volume {key.volume_id} failed; next retry in {remaining:.1f}s", remaining
                )
        return None

    def _mark_pending(self, key: OperationKey, operation: str) -> None:
        self._pending.setdefault(key.volume_id, {})[key.pod_uid] = operation
        self._pending_count += 1

    def _pool(self, lane: str) -> ThreadPoolExecutor:
        pool = self._lanes.get(lane)
        if pool is None:
            size = self._lane_sizes.get(lane, DEFAULT_LANE_WORKERS)
            pool = self._lanes[lane] = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"vm-{lane}")
        return pool

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            pools = list(self._lanes.values())
        for pool in pools:
            pool.shutdown(wait=wait, cancel_futures=False)

    # --- internals ------------------------------------------------------------------------

    def _conflict(self, key: OperationKey) -> str | None:
        ops = self._pending.get(key.volume_id)
        if not ops:
            return None
        if key.pod_uid is None:
            return next(iter(ops.values()))
        if None in ops:
            return ops[None]
        return ops.get(key.pod_uid)

    def _remove_pending(self, key: OperationKey) -> None:
        ops = self._pending.get(key.volume_id)
        if ops is not None:
            if ops.pop(key.pod_uid, _MISSING) is not _MISSING:
                self._pending_count -= 1
            if not ops:
                del self._pending[key.volume_id]
        if not self._pending:
            self._idle.notify_all()

    def _execute(self, key: OperationKey, operation: str, fn: Callable[[], None], plugin: str) -> None:
        started = self._clock()
        error: BaseException | None = None
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - an operation must never kill its worker
            error = e
        finished = self._clock()
        self._finish([OperationOutcome(key, operation, error, started, finished - started, plugin)], finished)

    def _execute_batch(self, items: list[BatchItem], fn: BatchFn) -> None:
        started = self._clock()
        try:
            results: Mapping[OperationKey, tuple[BaseException | None, float]] = fn(items)
            whole: BaseException | None = None
        except BaseException as e:  # noqa: BLE001 - the batch as a whole failed: each item did
            results, whole = {}, e
        finished = self._clock()
        outcomes = []
        for item in items:
            result = results.get(item.key)
            if result is None:
                error: BaseException | None = whole or UncertainError(
                    f"{item.operation} of volume {item.key.volume_id}: its batch gave no result", code="UNEXPECTED")
                seconds = finished - started
            else:
                error, seconds = result
            outcomes.append(OperationOutcome(item.key, item.operation, error, started, seconds, item.plugin))
        self._finish(outcomes, finished)

    def _finish(self, outcomes: list[OperationOutcome], finished: float) -> None:
        """Release the keys and settle each one's backoff under one lock, then tell the callbacks."""
        with self._lock:
            for o in outcomes:
                self._remove_pending(o.key)
                if o.error is None or isinstance(o.error, WaitingError):
                    # Waiting is not failing: the volume is re-examined on the event it waits
                    # for (a device, a driver), which must not be delayed by a growing backoff.
                    self._backoff.pop(o.key, None)
                else:
                    self._backoff[o.key] = next_backoff(self._backoff.get(o.key), o.operation, finished)
        for cb in self._on_complete:
            for outcome in outcomes:
                try:
                    cb(outcome)
                except Exception:  # noqa: BLE001
                    log.exception("operation completion callback failed")
        for batch_cb in self._on_batch_complete:
            try:
                batch_cb(outcomes)
            except Exception:  # noqa: BLE001
                log.exception("operation completion callback failed")

    def forget_volume(self, volume_id: str) -> None:
        """Drop backoff state of a volume that is neither desired nor mounted any more, so
        the map stays bounded by the volumes the node really has."""
        with self._lock:
            for key in [k for k in self._backoff if k.volume_id == volume_id]:
                del self._backoff[key]
