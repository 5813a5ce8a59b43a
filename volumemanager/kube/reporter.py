"""Reporting back to the API server like the kubelet: Events on pods, ``node.status.volumesInUse``
and this node's CSINode (with the Node's CSI annotation and topology labels).

One background thread does every write, so nothing the daemon does ever waits for the API
server: operation outcomes and driver changes only record what is to be written and wake the
thread. Each of the three writers has its own state and backoff: a Node that does not exist
yet, 401/403 or an unreachable server is logged once per change of state (not once per retry),
retried with exponential backoff, and the others carry on meanwhile.

Narrow inputs (``ReporterInputs``): a function that gives the current in-use unique names, the
executor's completion callbacks with a way to find the API pods an outcome concerns and the
``explain`` cause chain of a (pod, volume), and the CSI driver registry's list and subscribe.
The daemon builds them in ``kube/wiring.py``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from operation_executor.errors import OperationError
from operation_executor.executor import OperationOutcome
from operation_executor.types import PodRef
from volumemanager.kube import events as ev
from volumemanager.kube.csinode import CSINodeWriter, DriverLike, NodeMissing
from volumemanager.kube.node_status import VolumesInUseWriter

log = logging.getLogger(__name__)

# Operation names of the executor (operation_executor/generator.py); compared as strings so
# this module needs nothing of the generator.
MOUNT_VOLUME = "mount_volume"
EXPAND_VOLUME = "expand_volume"


@dataclass(frozen=True)
class EventTarget:
    """A pod from the API that an operation outcome concerns, and its name for the volume."""

    pod: PodRef
    volume: str  # spec.volumes[].name
    block: bool = False  # volumeMode Block: FailedMapVolume instead of FailedMount
    label: str = ""  # the operation as people know it (NodeStageVolume, MountVolume.SetUp ...)


@dataclass
class ReporterInputs:
    volumes_in_use: Callable[[], Iterable[str]]
    # volumesInUse is written only once this is true (kubelet: ReconcilerStatesHasBeenSynced):
    # an empty list sent before the desired state is read would let the ADC detach live volumes.
    in_use_ready: Callable[[], bool] = lambda: True
    add_completion_callback: Callable[[Callable[[OperationOutcome], None]], None] | None = None
    event_targets: Callable[[OperationOutcome], list[EventTarget]] = lambda outcome: []
    explain: Callable[[PodRef, str], list[str]] = lambda pod, volume: []
    drivers: Callable[[], Iterable[DriverLike]] = lambda: []
    subscribe_drivers: Callable[[Callable[[str], None]], None] | None = None


@dataclass
class ReporterTuning:
    """Timings; tests shrink them."""

    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    debounce: float = 0.2  # coalesce a burst of changes into one write
    in_use_poll: float = 2.0  # look at the in-use set this often even without a wake-up
    client_timeout: float = 10.0
    event_burst: int = ev.DEFAULT_BURST
    event_refill_seconds: float = ev.DEFAULT_REFILL_SECONDS
    event_window_seconds: float = ev.DEFAULT_WINDOW_SECONDS
    max_queued_outcomes: int = 1000


_TIMES = re.compile(r" since \S+ \(\d+s ago\)")


def stable_lines(lines: Iterable[str]) -> list[str]:
    """The explain lines without what changes from one retry to the next (times, retry
    countdowns, "in progress"), so identical failures aggregate into one Event."""
    out = []
    for line in lines:
        if line.startswith("next retry in ") or (line.startswith("operation ") and line.endswith(" in progress")):
            continue
        out.append(_TIMES.sub("", line))
    return out


def event_for(outcome: OperationOutcome, target: EventTarget) -> tuple[str, str, str] | None:
    """(type, reason, message prefix) for an outcome, or None when the kubelet emits nothing
    (successful mounts: SuccessfulMountVolume is no longer emitted, PR #63339; tear-downs)."""
    op = outcome.operation
    label = target.label if target.label and target.label != op else _kubelet_label(op, target.block)
    if outcome.error is None:
        if op == EXPAND_VOLUME:
            return ev.NORMAL, ev.FILE_SYSTEM_RESIZE_SUCCESSFUL, f'{label} succeeded for volume "{target.volume}"'
        return None
    if op == EXPAND_VOLUME:
        return ev.WARNING, ev.VOLUME_RESIZE_FAILED, f'{label} failed for volume "{target.volume}"'
    if _is_attach(op):
        return ev.WARNING, ev.FAILED_ATTACH_VOLUME, f'{label} failed for volume "{target.volume}"'
    if op == MOUNT_VOLUME:
        reason = ev.FAILED_MAP_VOLUME if target.block else ev.FAILED_MOUNT
        return ev.WARNING, reason, f'{label} failed for volume "{target.volume}"'
    return None


def _kubelet_label(operation: str, block: bool) -> str:
    """The kubelet's name of an operation, for a plugin that names none of its own."""
    if operation == MOUNT_VOLUME:
        return "MapVolume.MapPodDevice" if block else "MountVolume.SetUp"
    if operation == EXPAND_VOLUME:
        return "NodeExpandVolume"
    return operation


def _is_attach(operation: str) -> bool:
    """Attach-side operations (attach, ControllerPublishVolume), not detach/unpublish."""
    op = operation.lower().replace("_", "").replace(".", "")
    return op.startswith("attach") or op.startswith("controllerpublish")


def _describe_error(e: BaseException) -> str:
    """A stable one-line state name for logging once per change."""
    from lightkube.core.exceptions import ApiError

    if isinstance(e, NodeMissing):
        return "node-missing"
    if isinstance(e, ApiError):
        code = e.status.code
        return {401: "unauthorized", 403: "forbidden"}.get(code, f"http-{code}")
    try:
        import httpx2

        if isinstance(e, httpx2.TransportError):
            return "unreachable"
    except ImportError:  # pragma: no cover
        pass
    return type(e).__name__


@dataclass
class _Task:
    """One writer's retry state."""

    name: str
    dirty: bool = True
    next_at: float = 0.0
    backoff: float = 0.0
    state: str = "ok"
    since: float = field(default_factory=time.time)
    last_error: str | None = None


class Reporter:
    """The background reporter. ``start()`` runs the thread; ``stop()`` ends it."""

    def __init__(self, client_factory: Callable[[], Any], node_name: str, inputs: ReporterInputs,
                 tuning: ReporterTuning | None = None) -> None:
        self.node_name = node_name
        self.inputs = inputs
        self.tuning = tuning or ReporterTuning()
        t = self.tuning
        self._client_factory = client_factory
        self._client: Any = None
        self.events = ev.EventRecorder(node_name, burst=t.event_burst, refill_seconds=t.event_refill_seconds,
                                       window_seconds=t.event_window_seconds)
        self.in_use = VolumesInUseWriter(node_name, inputs.volumes_in_use, inputs.in_use_ready)
        self.csinode = CSINodeWriter(node_name, inputs.drivers)
        self._outcomes: deque[OperationOutcome] = deque(maxlen=t.max_queued_outcomes)
        self._tasks = {n: _Task(n) for n in ("csinode", "volumes_in_use", "events")}
        self._tasks["events"].dirty = False
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._woken_at = 0.0

    # --- inputs (any thread, never blocking) -------------------------------------------------

    def on_outcome(self, outcome: OperationOutcome) -> None:
        """The executor's completion callback: queue, wake, return."""
        self._outcomes.append(outcome)
        self.wake("volumes_in_use")

    def on_driver_change(self, name: str) -> None:
        self.wake("csinode")

    def wake(self, task: str | None = None) -> None:
        with self._cond:
            if task is not None:
                self._tasks[task].dirty = True
            self._woken_at = time.monotonic()
            self._cond.notify()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> "Reporter":
        if self.inputs.add_completion_callback is not None:
            self.inputs.add_completion_callback(self.on_outcome)
        if self.inputs.subscribe_drivers is not None:
            self.inputs.subscribe_drivers(self.on_driver_change)
        self._thread = threading.Thread(target=self._run, name="kube-reporter", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        client, self._client = self._client, None
        if client is not None:
            try:
                client._client._client.close()  # lightkube keeps its httpx2 client there
            except Exception:  # noqa: BLE001
                pass

    def health(self) -> dict:
        """Per writer: state (ok, unauthorized, forbidden, unreachable, node-missing, ...), since,
        last error; for logs, tests and a later status field."""
        with self._cond:
            return {n: {"state": t.state, "since": t.since, "last_error": t.last_error}
                    for n, t in self._tasks.items()}

    # --- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        t = self.tuning
        last_poll = 0.0
        while True:
            with self._cond:
                if self._stop:
                    return
                now = time.monotonic()
                due = [task for task in self._tasks.values() if task.dirty and task.next_at <= now]
                if not due and not self._outcomes and now - last_poll < t.in_use_poll:
                    waits = [task.next_at - now for task in self._tasks.values() if task.dirty]
                    waits.append(t.in_use_poll - (now - last_poll))
                    self._cond.wait(max(0.01, min(waits)))
                    continue
                quiet = now - self._woken_at
            if quiet < t.debounce:
                time.sleep(t.debounce - quiet)
            self._drain_outcomes()
            if time.monotonic() - last_poll >= t.in_use_poll:
                last_poll = time.monotonic()
                if self._safe(self.in_use.needs_write, True):
                    self._tasks["volumes_in_use"].dirty = True
            for name, fn in (("csinode", self.csinode.write), ("volumes_in_use", self.in_use.write),
                             ("events", self._flush_events)):
                self._attempt(name, fn)

    def _safe(self, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - an input that fails must not end the reporter
            log.exception("reporter input failed")
            return default

    def _drain_outcomes(self) -> None:
        """Turn queued outcomes into Event occurrences (here, not in the executor's thread:
        finding the pods and the explain text walks the state)."""
        while self._outcomes:
            outcome = self._outcomes.popleft()
            for target in self._safe(lambda: self.inputs.event_targets(outcome), []):
                kind = event_for(outcome, target)
                if kind is None:
                    continue
                type_, reason, head = kind
                message = head
                if outcome.error is not None:
                    chain = stable_lines(self._safe(lambda: self.inputs.explain(target.pod, target.volume), []))
                    cause = "; ".join(chain) if chain else _error_text(outcome.error)
                    message = f"{head}: {cause}"
                self.events.observe(target.pod, type_, reason, message)
        if self.events.pending():
            self._tasks["events"].dirty = True

    def _flush_events(self, client: Any) -> None:
        wait = self.events.flush(client)
        if wait is not None:  # deferred by the rate limit: come back when a token is due
            task = self._tasks["events"]
            with self._cond:
                task.dirty = True
                task.next_at = time.monotonic() + wait

    def _attempt(self, name: str, fn: Callable[[Any], None]) -> None:
        task = self._tasks[name]
        with self._cond:
            if not task.dirty or task.next_at > time.monotonic():
                return
            task.dirty = False
        try:
            if self._client is None:
                self._client = self._client_factory()
            fn(self._client)
        except Exception as e:  # noqa: BLE001 - every failure is retried; none ends the thread
            self._failed(task, e)
            return
        self._succeeded(task)

    def _failed(self, task: _Task, e: Exception) -> None:
        t = self.tuning
        state = _describe_error(e)
        with self._cond:
            task.dirty = True
            task.backoff = min(t.backoff_max, task.backoff * 2 if task.backoff else t.backoff_initial)
            task.next_at = time.monotonic() + task.backoff
            task.last_error = str(e) or type(e).__name__
            changed = state != task.state
            if changed:
                task.state, task.since = state, time.time()
        if changed:
            log.warning("API server: writing %s of node %s failed (%s): %s; retrying with backoff",
                        task.name, self.node_name, state, task.last_error)
        else:
            log.debug("API server: %s still failing (%s), next try in %.1fs", task.name, state, task.backoff)

    def _succeeded(self, task: _Task) -> None:
        with self._cond:
            recovered = task.state != "ok"
            was = task.state
            task.backoff = 0.0
            if recovered:
                task.state, task.since, task.last_error = "ok", time.time(), None
        if recovered:
            log.warning("API server: writing %s of node %s works again (was %s)", task.name, self.node_name, was)


def _error_text(e: BaseException) -> str:
    return str(e) if isinstance(e, OperationError) else (str(e) or type(e).__name__)


def start_reporter(cfg: Any, node_name: str, inputs: ReporterInputs,
                   tuning: ReporterTuning | None = None) -> Reporter:
    """Start reporting to the API server of ``cfg`` (an ``ApiServerConfig``). The client is
    made in the reporter's thread: a kubeconfig that cannot be read is logged and retried,
    never a failed start of the daemon."""
    from volumemanager.kube.config import make_client

    tuning = tuning or ReporterTuning()
    return Reporter(lambda: make_client(cfg, timeout=tuning.client_timeout), node_name, inputs, tuning).start()
