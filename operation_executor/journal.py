"""Where operations record their intent before acting and their outcome after.

The operation generator calls ``begin`` before every state-changing plugin call and ``end``
after it. A durable implementation (fsync'd, as Mesos does) lets the daemon finish or undo an
interrupted step after a crash; ``NullJournal`` is for tests and tools that do not need it.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Protocol, Sequence

from operation_executor.errors import TransientError


class IntentsRefused(TransientError):
    """``begin_many`` could not record its intents (a full disk): none of its steps may start.
    ``per_step`` holds each step's own error (naming its volume), in order."""

    def __init__(self, per_step: Sequence[TransientError]) -> None:
        first = per_step[0]
        super().__init__(first.message, code=first.code)
        self.per_step = list(per_step)


class JournalStep(NamedTuple):
    """One intent of ``begin_many``: the same fields as ``begin``'s."""

    step: str
    volume_id: str
    pod_uid: str | None
    details: Mapping[str, Any]


class IntentJournal(Protocol):
    def begin(
        self,
        step: str,
        volume_id: str,
        pod_uid: str | None,
        details: Mapping[str, Any],
        durable: bool = True,
        required: bool = True,
    ) -> object:
        """Record that ``step`` is about to run; returns a token for ``end``. When it returns
        the record survives the daemon being killed, and with ``durable`` (fsync) a power loss
        too. ``details`` never holds secret values, only references.

        When the record cannot be written (a full disk): a ``required`` begin raises a
        ``TransientError`` (the step did not start; it is retried); otherwise it returns a
        token anyway and the step runs unrecorded. Teardown steps are not required: they are
        what frees space, and the disk scan at start-up finds what an interrupted one left."""
        ...

    def begin_many(
        self,
        steps: Sequence[JournalStep],
        durable: bool = True,
        required: bool = True,
    ) -> list[object]:
        """``begin`` for several steps at once (a batch of operations), in one write: one
        token per step, in order. All are recorded or, when the write fails and ``required``,
        none is (``IntentsRefused``, with each step's own error)."""
        ...

    def end(self, token: object, outcome: str) -> None:
        """Record the outcome (``ok``, ``final``, ``uncertain``, ``transient``)."""
        ...


class NullJournal:
    def begin(
        self,
        step: str,
        volume_id: str,
        pod_uid: str | None,
        details: Mapping[str, Any],
        durable: bool = True,
        required: bool = True,
    ) -> object:
        return None

    def begin_many(self, steps: Sequence[JournalStep], durable: bool = True, required: bool = True) -> list[object]:
        return [None] * len(steps)

    def end(self, token: object, outcome: str) -> None:
        return None
