"""Per-key exponential backoff, kubelet-style (goroutinemap/exponentialbackoff)."""

from __future__ import annotations

import random
from dataclasses import dataclass

# First retry after half a second: most failures (a device a moment late, a driver still
# starting) clear quickly, and the event-driven reconciler retries as soon as this allows.
INITIAL_BACKOFF_SECONDS = 0.5
# Doubling up to about two minutes, as the kubelet does (2m2s); the extra 2 s make our
# backoff recognisable in logs next to other two-minute timeouts.
MAX_BACKOFF_SECONDS = 122.0
BACKOFF_FACTOR = 2.0
# +/-10 % jitter so a thousand volumes failing together do not retry in lock-step.
JITTER_FRACTION = 0.1


@dataclass
class Backoff:
    """Backoff state of one key after the last failure of operation ``operation``.

    ``base`` is the un-jittered delay (it doubles); ``duration`` is what was actually chosen.
    """

    operation: str
    last_error_at: float
    base: float
    duration: float

    def retry_at(self) -> float:
        return self.last_error_at + self.duration

    def remaining(self, now: float) -> float:
        return max(0.0, self.retry_at() - now)


def next_backoff(previous: Backoff | None, operation: str, now: float, rng: random.Random | None = None) -> Backoff:
    """The backoff after a failure of ``operation`` at ``now``.

    A failure of a different operation than the one that failed before starts over from the
    initial delay: an unmount after a failed mount must not inherit the mount's long wait.
    """
    if previous is None or previous.operation != operation:
        base = INITIAL_BACKOFF_SECONDS
    else:
        base = min(previous.base * BACKOFF_FACTOR, MAX_BACKOFF_SECONDS)
    r = rng.random() if rng is not None else random.random()
    jitter = 1.0 + JITTER_FRACTION * (2.0 * r - 1.0)
    return Backoff(operation=operation, last_error_at=now, base=base, duration=base * jitter)
