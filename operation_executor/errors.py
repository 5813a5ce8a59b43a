"""Typed outcomes of volume operations.

The reconciler decides what to do next from the *type* of an operation's failure, never from
its message, so each failure mode is its own class:

* ``FinalError``: the operation certainly did not leave anything behind (or left exactly the
  state it reports). The volume's state is set from the error; retried after backoff.
* ``UncertainError``: the operation may still be in progress or may have half-completed
  (a gRPC deadline, a killed mkfs). The volume must be treated as *possibly mounted*: it is
  retried while desired, and torn down with the reverse operation when no longer desired.
* ``TransientError``: the operation certainly did not start (driver not registered, device
  not present yet). The state is left unchanged; ``WaitingError`` marks the common case
  "waiting for something outside our control" so status can say what it waits for.

Executor refusals (``AlreadyPendingError``, ``BackoffError``) are expected results of
``OperationExecutor.run`` and are not failures of any operation.
"""

from __future__ import annotations

from typing import Any, Sequence


class OperationError(Exception):
    """Base of every failure an operation reports.

    ``code`` is a short machine-readable cause (a gRPC status name such as
    ``DEADLINE_EXCEEDED``, or one of our own such as ``DEVICE_NOT_FOUND``); ``message`` is
    the human sentence shown by ``status`` and ``explain``. Neither may contain secrets.

    ``holders`` are the processes that keep the volume busy (``mount_utils.holders.Holder``,
    each with ``to_dict()``), when the failure is "in use": a typed field, so that ``status``
    and ``explain`` can name them without parsing the message.
    """

    def __init__(self, message: str, code: str | None = None, *, holders: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.holders = tuple(holders)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


class FinalError(OperationError):
    """The operation failed and certainly left nothing in progress."""


class UncertainError(OperationError):
    """The operation may still be running or may have partly succeeded."""


class TransientError(OperationError):
    """The operation certainly did not start; state is unchanged and it is retried later."""


class WaitingError(TransientError):
    """The operation cannot start until something outside the daemon happens.

    ``waiting_for`` names that thing (``device /dev/loop3``, ``CSI driver csi.example.com``)
    so that ``status`` shows the volume as ``waiting`` and ``explain`` can say on what.
    """

    def __init__(self, message: str, waiting_for: str, code: str | None = None) -> None:
        super().__init__(message, code)
        self.waiting_for = waiting_for


class ExecutorRefusal(Exception):
    """Base for the expected refusals of ``OperationExecutor.run``."""


class AlreadyPendingError(ExecutorRefusal):
    """An operation that conflicts with the requested key is still in flight."""


class BackoffError(ExecutorRefusal):
    """The key failed recently and its backoff window has not elapsed."""

    def __init__(self, message: str, retry_in: float) -> None:
        super().__init__(message)
        self.retry_in = retry_in


def is_uncertain(err: BaseException) -> bool:
    """True when ``err`` leaves the volume possibly mounted.

    Anything we did not classify (a bug, an OSError from an unexpected place) counts as
    uncertain: assuming "not mounted" after an unknown failure is how mounts leak.
    """
    if isinstance(err, UncertainError):
        return True
    if isinstance(err, (FinalError, TransientError)):
        return False
    return True
