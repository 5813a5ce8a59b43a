"""A durable record of what the daemon is about to do, written before it does it (Mesos'
checkpointed intents): ``begin`` is written, and fsync'd, before the plugin call starts;
``end`` is written after it, with the next ``begin``.

Batching is safe in exactly that direction: losing an ``end`` makes a finished step look
interrupted, and every step is idempotent, so the worst case is one extra call after a crash.
Concurrent ``begin`` calls share one fsync (group commit), which keeps a thousand volumes
coming up in parallel from paying a thousand fsyncs in a row. A ``begin(durable=False)`` is
written but not fsync'd: for steps whose only effect is a mount, which a power loss undoes
anyway, while a crash of the daemon alone never loses what was written to the kernel.

At start-up ``open_intents()`` lists the steps of the previous run that began and never
ended, and ``previous_boot_id`` tells whether the node rebooted since (then every mount is
gone and staging must be redone). Records hold paths and ids, never secret values.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Mapping

log = logging.getLogger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
JOURNAL_NAME = "intents.jsonl"
# Rewrite the file (keeping only open intents) after this many records, so it stays small
# however long the daemon runs; a compaction costs one write + fsync + rename.
COMPACT_AFTER_RECORDS = 20_000


def current_boot_id(path: str = BOOT_ID_PATH) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileIntentJournal:
    def __init__(self, state_dir: str, boot_id: str | None = None) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, JOURNAL_NAME)
        self.boot_id = boot_id or current_boot_id()
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.previous_boot_id, self._previous_open = self._load()
        # Lock order: _sync_lock, then _lock. _lock guards the records and is never held
        # across a write (a thousand operations at once would queue behind it, each handing
        # the GIL over); appends go out as single O_APPEND writes, which the kernel keeps
        # whole. _sync_lock lets one fsync cover every durable begin written before it.
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._pending: list[str] = []  # end records, written with the next begin
        self._seq = 0
        self._durable_written = 0  # durable begins whose write has returned
        self._synced = 0  # ... of which this many are known to be on disk
        self._open: dict[int, dict] = {}
        self._records = 0
        self._fd: int | None = None
        # Start a fresh file that carries the previous run's open intents forward until the
        # reconstruction has dealt with them (they are dropped by ``forget_previous``).
        self._rewrite(list(self._previous_open.values()))

    # --- reading the previous run ---------------------------------------------------------

    def _load(self) -> tuple[str | None, dict[int, dict]]:
        open_: dict[int, dict] = {}
        boot = None
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a torn last line after a crash
                    if rec.get("type") == "header":
                        boot = rec.get("boot_id")
                    elif rec.get("type") == "begin":
                        open_[rec["id"]] = rec
                    elif rec.get("type") == "end":
                        open_.pop(rec.get("id"), None)
        except FileNotFoundError:
            pass
        return boot, open_

    def open_intents(self) -> list[dict]:
        """Steps of the previous run that began and never ended (oldest first)."""
        return sorted(self._previous_open.values(), key=lambda r: r.get("t", 0))

    @property
    def rebooted(self) -> bool:
        return self.previous_boot_id is not None and self.previous_boot_id != self.boot_id

    def forget_previous(self) -> None:
        """The previous run's open intents have been dealt with: drop them from the file."""
        self._previous_open = {}
        self.compact()

    # --- IntentJournal --------------------------------------------------------------------

    def begin(
        self, step: str, volume_id: str, pod_uid: str | None, details: Mapping[str, Any], durable: bool = True
    ) -> object:
        with self._lock:
            self._seq += 1
            token = self._seq
            rec = {"type": "begin", "id": f"{self.boot_id[:8]}-{os.getpid()}-{token}", "t": time.time(),
                   "step": step, "volume_id": volume_id, "pod_uid": pod_uid, "details": dict(details)}
            self._open[token] = rec
            lines, self._pending = self._pending, []
        lines.append(json.dumps(rec, default=str) + "\n")
        self._append("".join(lines))
        if durable:
            with self._lock:
                self._durable_written += 1
                mine = self._durable_written
            self._sync(mine)
        return token

    def end(self, token: object, outcome: str) -> None:
        with self._lock:
            rec = self._open.pop(token, None)  # type: ignore[arg-type]
            if rec is None:
                return
            self._pending.append(json.dumps({"type": "end", "id": rec["id"], "outcome": outcome}) + "\n")
            self._records += 2
            compact = self._records >= COMPACT_AFTER_RECORDS
        if compact:
            self.compact()

    def _append(self, text: str) -> None:
        data = text.encode()
        while data:
            data = data[os.write(self._fd, data):]

    def _sync(self, upto: int) -> None:
        """Make the first ``upto`` durable begins durable (group commit)."""
        with self._sync_lock:
            if self._synced >= upto:
                return  # another thread's fsync already covered this record
            with self._lock:
                covered = self._durable_written  # every one of these writes has returned
            os.fsync(self._fd)
            self._synced = covered

    def compact(self) -> None:
        """Rewrite the file with only the open intents. The new file takes over the same fd
        number (dup2), so an append racing with the compaction lands in the old or the new
        file, never in some other file that reused a closed fd; a begin that lands in the
        old one is in the new one too (it was an open intent when the file was rewritten)."""
        with self._sync_lock, self._lock:
            keep = list(self._previous_open.values()) + list(self._open.values())
            self._pending = []
            self._records = 0
            self._rewrite(keep)
            self._synced = self._durable_written

    def _rewrite(self, records: list[dict]) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"type": "header", "boot_id": self.boot_id, "pid": os.getpid(), "t": time.time()}) + "\n")
            for rec in records:
                f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.state_dir)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if getattr(self, "_fd", None) is None:
            self._fd = fd
        else:
            os.dup2(fd, self._fd, inheritable=False)
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
        if lines:
            self._append("".join(lines))
        os.fsync(self._fd)
        os.close(self._fd)
