"""Helper commands (mkfs, fsck, resize2fs, mount.nfs) die with the process that started them.

If the daemon is SIGKILLed while mkfs runs, an orphaned mkfs would keep writing to a device
that a restarted daemon may already be probing, formatting or mounting. PR_SET_PDEATHSIG makes
the kernel kill the child when its parent thread dies, so after a crash exactly one writer
(the new daemon) remains; the interrupted step is then redone, which is safe on a device that
was blank before it started.
"""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def die_with_parent() -> None:
    """``preexec_fn`` for subprocess: ask for SIGKILL when the parent dies."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
