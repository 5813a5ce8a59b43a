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

A full filesystem (issue 11) must never stop a teardown, which is what frees space:

* A reserve file (``intents.reserve``, really allocated blocks) is kept beside the journal.
  When an append meets ENOSPC the reserve is given back and the journal rewritten
  (compaction) into the freed space; the reserve is allocated again once space returns.
* A failed or short write may leave a torn record at the tail. Nothing is appended after
  it: the next append first rewrites the file (the rewrite holds every open intent, so it
  also records the step that failed). Truncating in place would race with the lock-free
  appends of other threads; the rewrite swaps the file under the same fd, which they
  already tolerate. At load a torn line is skipped, and a whole record glued after a torn
  one (an append racing with the failure) is still read.
* When the journal cannot be written, ``begin(required=False)`` (teardown) returns anyway
  and the step runs unrecorded; a required ``begin`` (mount, stage, expand) raises a
  ``WaitingError`` with code ``NO_SPACE`` naming the state dir, so the operation did not
  start, is retried, and ``status``/``explain`` say why. The next operation after space
  returns rewrites the journal and goes ahead: no restart needed. The log says so once when
  the trouble starts and once when it is over, never per record.

The hot path is unchanged: a ``begin`` is one write(2) (plus the group fsync) after one
attribute test; every recovery happens on the slow path, which only a failure enters.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from typing import Any, Mapping, Sequence

from operation_executor.errors import TransientError, WaitingError
from operation_executor.journal import IntentsRefused, JournalStep
from volumemanager.controller.durable import fsync_dir

log = logging.getLogger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
JOURNAL_NAME = "intents.jsonl"
RESERVE_NAME = "intents.reserve"
# Rewrite the file (keeping only open intents) after this many records, so it stays small
# however long the daemon runs; a compaction costs one write + fsync + rename.
COMPACT_AFTER_RECORDS = 20_000
# ... and much sooner while the reserve is given back: the journal then lives on space it
# borrowed, and a short file leaves room for the rewrite that the next ENOSPC needs.
COMPACT_AFTER_RECORDS_WITHOUT_RESERVE = 1_000
# Really allocated space given back when the filesystem is full: a record is ~250 bytes, so
# this holds a rewrite of thousands of open intents and thousands of appends after it.
RESERVE_BYTES = 4 * 1024 * 1024
# Slow-path attempts (rewrite the journal, allocate the reserve again) while the filesystem is
# full happen at most this often; in between, a required begin fails at once.
RETRY_SECONDS = 1.0
NO_SPACE = "NO_SPACE"
JOURNAL_ERROR = "JOURNAL_ERROR"
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Every record is a json.dumps of a dict whose first key is "type", so a record starts with
# exactly this; inside a string value the quotes would be escaped, so it cannot occur there.
_RECORD_START = '{"type": '


def current_boot_id(path: str = BOOT_ID_PATH) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _is_no_space(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in _NO_SPACE_ERRNOS


def parse_record(line: str) -> dict | None:
    """One journal line as a record; None for a torn line. A line that is a torn record
    with a whole one glued after it (an append that raced with a failed write) yields the
    whole one: the leftmost record start from which the rest of the line parses."""
    try:
        rec = json.loads(line)
        return rec if isinstance(rec, dict) else None
    except ValueError:
        pass
    i = line.find(_RECORD_START, 1)
    while i != -1:
        try:
            rec = json.loads(line[i:])
            return rec if isinstance(rec, dict) else None
        except ValueError:
            i = line.find(_RECORD_START, i + 1)
    return None


class FileIntentJournal:
    def __init__(
        self, state_dir: str, boot_id: str | None = None, reserve_bytes: int = RESERVE_BYTES
    ) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, JOURNAL_NAME)
        self.reserve_path = os.path.join(state_dir, RESERVE_NAME)
        self.reserve_bytes = reserve_bytes
        self.boot_id = boot_id or current_boot_id()
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.previous_boot_id, self._previous_open, whole_end = self._load()
        # Lock order: (_slow_lock,) _sync_lock, then _lock. _lock guards the records and is never held
        # across an append (a thousand operations at once would queue behind it, each handing
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
        # The slow path's state. _healthy is the only thing the hot path reads: False while
        # the file must be rewritten before the next append (_needs_rewrite: a failed or
        # torn write) or the reserve is given back (_reserve_missing). _slow_lock (taken
        # before the two above, and only after a failure) makes the recovery and its log
        # lines happen once, not once per thread that met the full disk.
        self._slow_lock = threading.Lock()
        self._healthy = True
        self._needs_rewrite = False
        self._reserve_missing = False
        self._next_attempt = 0.0  # monotonic time of the next slow-path attempt
        self._last_error: OSError | None = None
        self._outage = False  # "no space" logged; "space is back" not yet
        self._dropping_logged = False  # "teardown proceeds unrecorded" logged in this outage
        self._compact_after = COMPACT_AFTER_RECORDS
        self._ensure_reserve(startup=True)
        # Start a fresh file that carries the previous run's open intents forward until the
        # reconstruction has dealt with them (they are dropped by ``forget_previous``).
        try:
            self._rewrite_or_release(list(self._previous_open.values()))
        except OSError as err:
            # Full even without the reserve: keep the old file, cut its torn tail (nothing
            # else writes to it yet), and rewrite it as soon as the space is there.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.ftruncate(self._fd, whole_end)
            self._failed(err)
        self._update_healthy()

    # --- reading the previous run ---------------------------------------------------------

    def _load(self) -> tuple[str | None, dict[int, dict], int]:
        """The previous run's header boot id, its open intents, and the length of the file's
        whole lines (a torn last line, without its newline, ends after it)."""
        open_: dict[int, dict] = {}
        boot = None
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, open_, 0
        whole_end = data.rfind(b"\n") + 1
        for raw in data[:whole_end].splitlines():
            rec = parse_record(raw.decode("utf-8", errors="replace"))
            if rec is None:
                continue  # a torn record (a crash or ENOSPC mid-write) never counts
            if rec.get("type") == "header":
                boot = rec.get("boot_id")
            elif rec.get("type") == "begin" and "id" in rec:
                open_[rec["id"]] = rec
            elif rec.get("type") == "end":
                open_.pop(rec.get("id"), None)
        return boot, open_, whole_end

    def open_intents(self) -> list[dict]:
        """Steps of the previous run that began and never ended (oldest first)."""
        return sorted(self._previous_open.values(), key=lambda r: r.get("t", 0))

    @property
    def rebooted(self) -> bool:
        return self.previous_boot_id is not None and self.previous_boot_id != self.boot_id

    def forget_previous(self) -> None:
        """The previous run's open intents have been dealt with: drop them from the file
        (now, or with the next rewrite when the filesystem is full)."""
        self._previous_open = {}
        self._try_compact()

    # --- IntentJournal --------------------------------------------------------------------

    def begin(
        self,
        step: str,
        volume_id: str,
        pod_uid: str | None,
        details: Mapping[str, Any],
        durable: bool = True,
        required: bool = True,
    ) -> object:
        return self.begin_many([JournalStep(step, volume_id, pod_uid, details)], durable, required)[0]

    def begin_many(self, steps: Sequence[JournalStep], durable: bool = True, required: bool = True) -> list[object]:
        if not steps:
            return []
        now = time.time()
        prefix = f"{self.boot_id[:8]}-{os.getpid()}-"
        with self._lock:
            tokens: list[int] = []
            recs: list[dict] = []
            for st in steps:
                self._seq += 1
                token = self._seq
                rec = {"type": "begin", "id": f"{prefix}{token}", "t": now, "step": st.step,
                       "volume_id": st.volume_id, "pod_uid": st.pod_uid, "details": dict(st.details)}
                self._open[token] = rec
                tokens.append(token)
                recs.append(rec)
            carried, self._pending = self._pending, []
        text = "".join(carried) + "".join(json.dumps(rec, default=str) + "\n" for rec in recs)
        try:
            self._append(text)
            if durable:
                with self._lock:
                    self._durable_written += 1
                    mine = self._durable_written
                self._sync(mine)
        except OSError as err:
            with self._lock:
                # The end records this append carried go out with the next one (or become
                # moot with the next rewrite, which keeps only open intents).
                self._pending[:0] = carried
                if required:
                    # The steps will not run: close their intents, in case part of the write landed.
                    for token, rec in zip(tokens, recs):
                        self._open.pop(token, None)
                        self._pending.append(json.dumps({"type": "end", "id": rec["id"], "outcome": "transient"})
                                             + "\n")
            if required:
                if len(steps) == 1:
                    raise self._refusal(err, steps[0].step, steps[0].volume_id) from None
                raise IntentsRefused([self._refusal(err, st.step, st.volume_id) for st in steps]) from None
            self._log_dropping(err)
            # Best effort: the steps run unrecorded; their intents stay open in memory, so the
            # rewrite that follows space returning records them if they are still running.
        return list(tokens)

    def end(self, token: object, outcome: str) -> None:
        with self._lock:
            rec = self._open.pop(token, None)  # type: ignore[arg-type]
            if rec is None:
                return
            self._pending.append(json.dumps({"type": "end", "id": rec["id"], "outcome": outcome}) + "\n")
            self._records += 2
            # While the file cannot be written, the next append retries the rewrite (rate-limited).
            compact = self._records >= self._compact_after and not self._needs_rewrite
        if compact:
            self._try_compact()

    def _append(self, text: str) -> None:
        """Append whole records, or raise OSError with nothing appended after a torn tail."""
        if not self._healthy:
            if self._slow_path():
                return  # the rewrite just made holds every open intent: this one too
        data = text.encode()
        try:
            n = os.write(self._fd, data)  # type: ignore[arg-type]
        except OSError as err:
            self._recover(err)  # nothing written: the record still goes in with a rewrite
            return
        if n != len(data):
            # A short write (ENOSPC mid-record): a torn record now ends the file. Writing the
            # rest would glue it to whatever another thread appends meanwhile.
            self._recover(OSError(errno.ENOSPC, f"short write ({n} of {len(data)} bytes)", self.path))

    def _sync(self, upto: int) -> None:
        """Make the first ``upto`` durable begins durable (group commit)."""
        with self._sync_lock:
            if self._synced >= upto:
                return  # another thread's fsync already covered this record
            with self._lock:
                covered = self._durable_written  # every one of these writes has returned
            try:
                os.fsync(self._fd)  # type: ignore[arg-type]
            except OSError as err:
                self._mark_failed(err)  # the page cache may have dropped them: rewrite
                raise
            self._synced = covered

    # --- the slow path: out of space, torn tail, recovery ----------------------------------

    def _recover(self, err: OSError) -> None:
        """An append failed: give the reserve back and rewrite the file (which cuts off any
        torn tail and records every open intent), or raise OSError."""
        with self._slow_lock:
            self._mark_failed(err)
            if _is_no_space(err):
                self._release_reserve(err)
            try:
                self._compact_now()
            except OSError as again:
                self._failed(again)
                raise again from None
            self._log_back()

    def _slow_path(self) -> bool:
        """Before an append while not healthy. True when a rewrite was just made (the caller's
        record is in it); False when the append can go ahead; OSError when it cannot."""
        with self._slow_lock:
            rewritten = False
            if self._needs_rewrite:  # (another thread may have rewritten it meanwhile)
                last = self._last_error
                if time.monotonic() < self._next_attempt and last is not None:
                    raise OSError(last.errno, last.strerror, last.filename)  # no rewrite attempt per record
                try:
                    self._compact_now()
                except OSError as err:
                    self._failed(err)
                    raise
                rewritten = True
                self._log_back()
            if self._reserve_missing and time.monotonic() >= self._next_attempt:
                self._ensure_reserve()
            self._update_healthy()
            return rewritten

    def _mark_failed(self, err: OSError) -> None:
        self._needs_rewrite = True
        self._healthy = False
        self._last_error = err

    def _failed(self, err: OSError) -> None:
        """A rewrite failed too: the journal takes no record until one succeeds."""
        self._mark_failed(err)
        self._next_attempt = time.monotonic() + RETRY_SECONDS
        if not self._outage:
            self._outage = True
            if _is_no_space(err):
                log.warning("no space left on device in %s: the intent journal cannot be written; teardown "
                            "proceeds unrecorded, mounts wait for space", self.state_dir)
            else:
                log.warning("the intent journal in %s cannot be written (%s); teardown proceeds unrecorded, "
                            "mounts wait", self.state_dir, err.strerror or err)

    def _update_healthy(self) -> None:
        self._healthy = not self._needs_rewrite and not self._reserve_missing
        self._compact_after = COMPACT_AFTER_RECORDS_WITHOUT_RESERVE if self._reserve_missing else COMPACT_AFTER_RECORDS

    def _log_back(self) -> None:
        """The journal takes records again: say so once, if the trouble was logged."""
        self._needs_rewrite = False
        self._update_healthy()
        if self._outage and not self._reserve_missing:
            self._outage = False
            self._dropping_logged = False
            log.info("space is back in %s: the intent journal records every step again", self.state_dir)

    def _log_dropping(self, err: OSError) -> None:
        with self._slow_lock:
            if self._dropping_logged:
                return
            self._dropping_logged = True
            log.warning("teardown steps proceed without an intent record until %s has space (%s)",
                        self.state_dir, err.strerror or err)

    def _refusal(self, err: OSError, step: str, volume_id: str) -> TransientError:
        """The typed error of a required step that could not be recorded: it did not start."""
        if _is_no_space(err):
            return WaitingError(
                f"no space left on device in {self.state_dir}: cannot record the intent to {step} {volume_id}",
                waiting_for=f"free space in {self.state_dir}", code=NO_SPACE)
        return TransientError(
            f"cannot write the intent journal in {self.state_dir} ({err.strerror or err}): "
            f"cannot record the intent to {step} {volume_id}", code=JOURNAL_ERROR)

    # --- the reserve ----------------------------------------------------------------------

    def _ensure_reserve(self, startup: bool = False) -> None:
        """Allocate the reserve (keep it when a previous run left it whole). Only when twice
        its size is free, except at start-up: taking the last space a full node has would
        only move the ENOSPC onto someone else."""
        if self.reserve_bytes <= 0:
            self._reserve_missing = False
            return
        try:
            st = os.stat(self.reserve_path)
            if st.st_blocks * 512 >= self.reserve_bytes and st.st_size >= self.reserve_bytes:
                self._reserve_missing = False
                return
        except FileNotFoundError:
            pass
        except OSError:
            pass
        try:
            if not startup:
                vfs = os.statvfs(self.state_dir)
                if vfs.f_bavail * vfs.f_frsize < 2 * self.reserve_bytes:
                    raise OSError(errno.ENOSPC, "not enough free space for the reserve")
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.reserve_bytes)
                except OSError:
                    os.ftruncate(fd, 0)  # a partial allocation would hold space for nothing
                    raise
            finally:
                os.close(fd)
        except OSError as err:
            self._reserve_missing = True
            self._next_attempt = time.monotonic() + RETRY_SECONDS
            if startup:
                log.warning("cannot allocate the intent journal's %d-byte reserve in %s (%s): a full disk may "
                            "delay mounts until it is there", self.reserve_bytes, self.state_dir, err.strerror or err)
                self._outage = True
            return
        self._reserve_missing = False
        if not startup and self._outage and not self._needs_rewrite:
            self._outage = False
            self._dropping_logged = False
            log.info("space is back in %s: the intent journal's reserve is allocated again", self.state_dir)

    def _release_reserve(self, err: OSError) -> None:
        if self._reserve_missing or self.reserve_bytes <= 0:
            return
        try:
            os.truncate(self.reserve_path, 0)
        except OSError:
            pass
        self._reserve_missing = True
        self._update_healthy()
        if not self._outage:
            self._outage = True
            log.warning("no space left on device in %s (%s): gave back the intent journal's %d-byte reserve; "
                        "it is allocated again when space returns", self.state_dir, err.strerror or err,
                        self.reserve_bytes)

    # --- compaction -----------------------------------------------------------------------

    def compact(self) -> None:
        """Rewrite the file with only the open intents. The new file takes over the same fd
        number (dup2), so an append racing with the compaction lands in the old or the new
        file, never in some other file that reused a closed fd; a begin that lands in the
        old one is in the new one too (it was an open intent when the file was rewritten).
        Raises OSError (and leaves the old file in place) when it cannot be written."""
        with self._slow_lock:
            try:
                self._compact_now()
            except OSError as err:
                self._failed(err)
                raise
            self._log_back()

    def _try_compact(self) -> None:
        try:
            self.compact()
        except OSError:
            pass  # logged by _failed; the next append retries the rewrite

    def _compact_now(self) -> None:
        with self._sync_lock, self._lock:
            keep = list(self._previous_open.values()) + list(self._open.values())
            written = self._durable_written
            self._rewrite_or_release(keep)
            self._pending = []
            self._records = 0
            self._synced = written

    def _rewrite_or_release(self, records: list[dict]) -> None:
        try:
            self._rewrite(records)
        except OSError as err:
            if not _is_no_space(err) or self._reserve_missing or self.reserve_bytes <= 0:
                raise
            self._release_reserve(err)
            self._rewrite(records)

    def _rewrite(self, records: list[dict]) -> None:
        """Write header + ``records`` to a new file and swap it in, or raise OSError with the
        current file untouched."""
        tmp = self.path + ".tmp"
        parts = [json.dumps({"type": "header", "boot_id": self.boot_id, "pid": os.getpid(), "t": time.time()}) + "\n"]
        parts += [json.dumps(rec, default=str) + "\n" for rec in records]
        data = "".join(parts).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        # The fd opened on tmp is the file now at self.path: no open() that could fail after
        # the rename.
        if self._fd is None:
            self._fd = fd
        else:
            os.dup2(fd, self._fd, inheritable=False)
            os.close(fd)
        try:
            fsync_dir(self.state_dir)
        except OSError as err:
            log.warning("cannot fsync %s after rewriting the intent journal: %s", self.state_dir, err)

    def close(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
        try:
            if lines:
                self._append("".join(lines))
            os.fsync(self._fd)  # type: ignore[arg-type]
        except OSError as err:
            # Lost end records make finished steps look interrupted at the next start: safe.
            log.warning("could not flush the intent journal in %s at close: %s", self.state_dir, err)
        os.close(self._fd)  # type: ignore[arg-type]
