"""Events on pods, aggregated and rate limited the way client-go's EventCorrelator does it.

Why: a volume that fails to mount is retried with backoff for as long as its pod exists; one
Event per retry floods the API server and the pod's ``describe`` (kubernetes PR #63339,
#46364). So the same (pod, type, reason, message) within ``window`` seconds is ONE Event whose
``count`` and ``lastTimestamp`` are patched, and the writes per pod go through a token bucket
(client-go's spam filter: burst 25, one token per 5 minutes). Unlike client-go, an occurrence
that finds the bucket empty is not dropped: it stays pending, and the next write (when a token
is back) carries the right count. Messages must be stable for this to work: callers strip
times and retry counters out of them (see ``reporter.stable_lines``).

Occurrences are recorded by ``observe`` (cheap, any thread); the reporter's single worker
thread calls ``flush`` to write them, so an operation never waits for the API server.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from operation_executor.types import PodRef

WARNING = "Warning"
NORMAL = "Normal"

# Reasons, as the kubelet names them (pkg/kubelet/events/event.go).
FAILED_MOUNT = "FailedMount"
FAILED_MAP_VOLUME = "FailedMapVolume"
FAILED_ATTACH_VOLUME = "FailedAttachVolume"
VOLUME_RESIZE_FAILED = "VolumeResizeFailed"
FILE_SYSTEM_RESIZE_SUCCESSFUL = "FileSystemResizeSuccessful"

#: ``source.component`` of our Events (the kubelet writes "kubelet"; a second writer on the
#: node should be told apart).
COMPONENT = "volumemanager"
DEFAULT_BURST = 25  # client-go spam filter defaults
DEFAULT_REFILL_SECONDS = 300.0
DEFAULT_WINDOW_SECONDS = 600.0  # client-go's aggregator interval; Events live 1 h in the API
MAX_SERIES = 4096  # client-go's LRU cache size
MAX_MESSAGE = 1024  # the API server refuses longer Event messages (validation: 1 KiB for the new API)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Series:
    """One aggregated Event: every occurrence of the same (pod, type, reason, message)."""

    pod: PodRef
    type: str
    reason: str
    message: str
    first: float  # wall time of the first occurrence
    last: float  # wall time of the latest
    count: int = 1
    name: str | None = None  # the Event's name once it exists in the API
    sent_count: int = 0  # the count the API holds


class TokenBucket:
    """``burst`` tokens, one more every ``refill_seconds``; per involved object."""

    def __init__(self, burst: int, refill_seconds: float, now: float) -> None:
        self.burst = burst
        self.refill = refill_seconds
        self.tokens = float(burst)
        self.at = now

    def _fill(self, now: float) -> None:
        if self.refill > 0:
            self.tokens = min(float(self.burst), self.tokens + (now - self.at) / self.refill)
        self.at = now

    def take(self, now: float) -> bool:
        self._fill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def next_token_in(self, now: float) -> float:
        self._fill(now)
        return max(0.0, (1.0 - self.tokens) * self.refill)

    def full(self, now: float) -> bool:
        self._fill(now)
        return self.tokens >= self.burst


class EventRecorder:
    """Aggregates occurrences into Events and writes them with a lightkube client."""

    def __init__(self, node_name: str, *, burst: int = DEFAULT_BURST, refill_seconds: float = DEFAULT_REFILL_SECONDS,
                 window_seconds: float = DEFAULT_WINDOW_SECONDS, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node_name = node_name
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.window = window_seconds
        self._wall = wall
        self._clock = clock
        self._lock = threading.Lock()
        self._series: OrderedDict[tuple[str, str, str, str], _Series] = OrderedDict()
        self._dirty: set[tuple[str, str, str, str]] = set()
        self._buckets: dict[str, TokenBucket] = {}
        self.writes = 0  # Events created or patched (for tests and status)
        self.deferred = 0  # writes put off for want of a token

    # --- any thread ---------------------------------------------------------------------

    def observe(self, pod: PodRef, type_: str, reason: str, message: str) -> None:
        """Record one occurrence. Never talks to the API server."""
        message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
        key = (pod.uid, type_, reason, message)
        now = self._wall()
        with self._lock:
            s = self._series.get(key)
            if s is not None and now - s.last <= self.window:
                s.count += 1
                s.last = now
                self._series.move_to_end(key)
            else:
                self._series[key] = _Series(pod, type_, reason, message, now, now)
                self._series.move_to_end(key)
                while len(self._series) > MAX_SERIES:
                    old, _ = self._series.popitem(last=False)
                    self._dirty.discard(old)
            self._dirty.add(key)

    def pending(self) -> int:
        with self._lock:
            return len(self._dirty)

    # --- the reporter's worker ------------------------------------------------------------

    def flush(self, client: Any) -> float | None:
        """Write every pending series that its pod's bucket allows. Returns the seconds until a
        deferred write may go (None: nothing deferred). API errors propagate (the reporter
        backs off); what was not written stays pending."""
        from lightkube.core.exceptions import ApiError

        with self._lock:
            keys = [k for k in self._series if k in self._dirty]
        next_in: float | None = None
        for key in keys:
            with self._lock:
                s = self._series.get(key)
                if s is None or key not in self._dirty:
                    continue
                now = self._clock()
                bucket = self._buckets.get(s.pod.uid)
                if bucket is None:
                    bucket = self._buckets[s.pod.uid] = TokenBucket(self.burst, self.refill_seconds, now)
                if not bucket.take(now):
                    self.deferred += 1
                    wait = bucket.next_token_in(now)
                    next_in = wait if next_in is None else min(next_in, wait)
                    continue
                count, last, name = s.count, s.last, s.name
                self._dirty.discard(key)
            try:
                if name is None:
                    name = self._create(client, s, count, last)
                else:
                    try:
                        self._patch(client, s, name, count, last)
                    except ApiError as e:
                        if e.status.code != 404:  # expired from the API (1 h TTL): a new Event
                            raise
                        name = self._create(client, s, count, last)
            except BaseException:
                with self._lock:
                    self._dirty.add(key)
                raise
            with self._lock:
                s.name, s.sent_count = name, count
                self.writes += 1
        self._prune()
        return next_in

    def _create(self, client: Any, s: _Series, count: int, last: float) -> str:
        from lightkube.resources.core_v1 import Event

        # The kubelet's name: <object name>.<hex nanoseconds>.
        name = f"{s.pod.name}.{int(s.first * 1e9):x}"
        obj = Event.from_dict({
            "metadata": {"name": name, "namespace": s.pod.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": s.pod.name,
                               "namespace": s.pod.namespace, "uid": s.pod.uid},
            "reason": s.reason, "message": s.message, "type": s.type, "count": count,
            "firstTimestamp": _rfc3339(s.first), "lastTimestamp": _rfc3339(last),
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT, "reportingInstance": self.node_name,
        })
        try:
            client.create(obj, namespace=s.pod.namespace)
        except Exception as e:
            from lightkube.core.exceptions import ApiError

            if isinstance(e, ApiError) and e.status.code == 409:  # ours from before a retry: patch it
                self._patch(client, s, name, count, last)
            else:
                raise
        return name

    def _patch(self, client: Any, s: _Series, name: str, count: int, last: float) -> None:
        from lightkube.resources.core_v1 import Event
        from lightkube.types import PatchType

        client.patch(Event, name, {"count": count, "lastTimestamp": _rfc3339(last), "message": s.message},
                     namespace=s.pod.namespace, patch_type=PatchType.MERGE)

    def _prune(self) -> None:
        """Forget series whose window is over and buckets that are full again (bounded memory)."""
        now, mono = self._wall(), self._clock()
        with self._lock:
            for key in [k for k, s in self._series.items() if k not in self._dirty and now - s.last > self.window]:
                del self._series[key]
            live = {s.pod.uid for s in self._series.values()}
            for uid in [u for u, b in self._buckets.items() if u not in live and b.full(mono)]:
                del self._buckets[uid]
