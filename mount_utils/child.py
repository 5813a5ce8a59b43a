"""Helper commands (mkfs, fsck, resize2fs, mount.nfs) die with the process that started them.

If the daemon is SIGKILLed while mkfs runs, an orphaned mkfs would keep writing to a device
that a restarted daemon may already be probing, formatting or mounting. PR_SET_PDEATHSIG makes
the kernel kill the child when its parent thread dies, so after a crash exactly one writer
(the new daemon) remains; the interrupted step is then redone, which is safe on a device that
was blank before it started.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import Callable

PR_SET_PDEATHSIG = 1

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def die_with_parent() -> None:
    """``preexec_fn`` for subprocess: ask for SIGKILL when the parent dies."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_setpriv_lock = threading.Lock()
_setpriv: list[str | None] = []  # [path or None] once looked up


def _setpriv_with_pdeathsig() -> str | None:
    """util-linux's setpriv when it has ``--pdeathsig`` (2.33+), else None; looked up once."""
    with _setpriv_lock:
        if not _setpriv:
            path = shutil.which("setpriv")
            if path is not None:
                try:
                    out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10,
                                         stdin=subprocess.DEVNULL)
                    if "--pdeathsig" not in out.stdout:
                        path = None
                except (OSError, subprocess.SubprocessError):
                    path = None
            _setpriv.append(path)
        return _setpriv[0]


def helper_command(argv: Sequence[str]) -> tuple[list[str], Callable[[], None] | None]:
    """How to start helper `argv` so that it dies with us: (the argv to run, the
    ``preexec_fn`` to pass). With util-linux's ``setpriv --pdeathsig KILL`` in front, which
    sets the same PR_SET_PDEATHSIG and execs the helper, subprocess needs no ``preexec_fn``
    and can use vfork: a fork of the daemon (80 MB, 30 threads) cost ~6 ms a helper, most of a
    device stage's blkid/wipefs/fsck time; vfork plus setpriv ~1.5 ms. Without such a setpriv,
    ``die_with_parent`` as before. A helper that is not on PATH raises FileNotFoundError here,
    as starting it would."""
    tool = argv[0]
    if os.sep not in tool:
        found = shutil.which(tool)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, f"{tool}: command not found", tool)
        tool = found
    elif not os.path.exists(tool):
        raise FileNotFoundError(errno.ENOENT, f"{tool}: no such file", tool)
    setpriv = _setpriv_with_pdeathsig()
    if setpriv is None:
        return [tool, *argv[1:]], die_with_parent
    return [setpriv, "--pdeathsig", "KILL", "--", tool, *argv[1:]], None
