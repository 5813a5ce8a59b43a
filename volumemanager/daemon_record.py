"""The daemon's record of the settings it runs with: ``<root-dir>/state/daemon.json``.

Why: ``status`` without a daemon must judge the disk against the desired state the daemon
used, not against the defaults of a command run later without the same flags. Otherwise
every mount the daemon made looks like an orphan and the node name is the host name. So the
daemon writes what it runs with (sources, manifest dir, node name, socket, registry dir, pid,
start time, version) at start and on SIGHUP, and marks the record stopped on a clean exit.
The file is replaced atomically (temp file, fsync, rename): a reader sees the old record or
the new one, never half of one. It holds no secrets.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

RECORD_DIR = "state"
RECORD_NAME = "daemon.json"
RECORD_FORMAT = 1


def record_path(root_dir: str) -> str:
    return os.path.join(os.path.abspath(root_dir), RECORD_DIR, RECORD_NAME)


def _version() -> str:
    from volumemanager import __version__

    return __version__


def build_record(cfg: Any, sources: list[str], started_at: float, pid: int | None = None) -> dict:
    """The record of a running daemon with config ``cfg`` (a ``DaemonConfig``)."""
    return {
        "format": RECORD_FORMAT,
        "version": _version(),
        "pid": os.getpid() if pid is None else pid,
        "started_at": started_at,
        "written_at": time.time(),
        "stopped_at": None,
        "root_dir": os.path.abspath(cfg.root_dir),
        "manifest_dir": cfg.manifest_dir,
        "sources": list(sources),
        "node_name": cfg.node_name,
        "socket": cfg.socket,
        "plugins_registry_dir": cfg.registry_dir,
        "csi_drivers": list(cfg.csi_driver),
        "config": cfg.config,
    }


def write_record(root_dir: str, record: dict) -> str:
    """Atomically replace the record under ``root_dir``; returns its path."""
    path = record_path(root_dir)
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o750, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".daemon-", suffix=".json.tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # the rename itself survives a crash only once the directory is on disk
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


class RecordError(Exception):
    """The record exists but cannot be read or parsed (the message names the file)."""


def read_record(root_dir: str) -> dict | None:
    """The record under ``root_dir``; None when there is none. Raises ``RecordError``."""
    path = record_path(root_dir)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RecordError(f"{path}: cannot read the daemon's record: {e.strerror}") from None
    except ValueError as e:
        raise RecordError(f"{path}: not a valid daemon record: {e}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: not a valid daemon record: not a JSON object")
    return data


def pid_alive(pid: object) -> bool:
    """Whether a process with this pid exists (it may be another program after a reboot or a
    pid wrap: callers say "a process", not "the daemon")."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
