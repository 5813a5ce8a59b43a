"""Logging set-up: one event a line on stderr, text or JSON, secrets masked.

Why this shape:
* Under systemd, stderr goes to journald, which splits on newlines. A
  multi-line message (a traceback, a CSI error string) would become several
  unrelated journal entries, so newlines are escaped and one event stays one
  line.
* When stderr *is* the journal (`$JOURNAL_STREAM`), lines start with a syslog
  priority prefix `<N>` (journald's `SyslogLevelPrefix=yes` turns it into
  PRIORITY and strips it) and carry no timestamp (journald adds its own).
* Secrets (CSI secrets from Secret manifests, sensitive mount options) must
  never reach a log. `SecretMaskingFilter` masks every registered secret
  value and the value of every `key=value` pair whose key looks sensitive,
  wherever it appears in a record: message, arguments, extra fields, traceback.

Structured fields travel through `extra=`:
    log.info("mounted", extra={"pod": "ns/p", "volume": "data", "duration_ms": 12})
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import select
import sys
import threading
import traceback
from collections.abc import Iterable
from typing import IO, Any

# The structured fields callers pass through `extra=`, in output order.
STRUCTURED_FIELDS: tuple[str, ...] = (
    "pod",
    "volume",
    "operation",
    "plugin",
    "result",
    "duration_ms",
    "error",
)

MASK = "***"

# Registered secrets shorter than this are not masked by value: masking a
# 1-3 character string would shred every log line that happens to contain
# it. They are still masked when they appear as a sensitive key's value.
MIN_SECRET_LENGTH = 4

# A key "looks sensitive" when it contains one of these words.
_SENSITIVE_WORDS = ("password", "passwd", "secret", "token", "key", "credential")
_SENSITIVE_KEY = r"[\w.-]*(?:" + "|".join(_SENSITIVE_WORDS) + r")[\w.-]*"
# key=value, key="value with spaces", key='v' (mount options, CLI-like text)
_KV_RE = re.compile(
    r"(?i)(?<![\w.-])(" + _SENSITIVE_KEY + r")(\s*=\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&)\]}]+)"
)
# "key": "value" (JSON / dict reprs inside a message)
_JSON_KV_RE = re.compile(
    r"(?i)([\"'])(" + _SENSITIVE_KEY + r")\1(\s*:\s*)(\"[^\"]*\"|'[^']*'|[^\s,}\]]+)"
)

# Syslog priorities (sd-daemon(3) SD_ERR..SD_DEBUG) for the journal prefix.
_SYSLOG_PRIORITY = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
    (logging.DEBUG, 7),
)

# Attributes every LogRecord has; anything else on a record came via extra=.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)).keys()
) | {"message", "asctime", "taskName"}


class LoggingSetupError(ValueError):
    """A bad --log-format or --log-level value (the message names it)."""


# --------------------------------------------------------------------------
# secrets

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None


def _to_text(value: str | bytes) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None  # binary secrets cannot appear in a text log line as-is
    return value


def register_secret(value: str | bytes) -> None:
    """Mask `value` in every log record from now on (e.g. a Secret's data)."""
    text = _to_text(value)
    if text is None:
        return
    global _secret_re
    with _secrets_lock:
        for candidate in {text, text.strip()}:
            if len(candidate) >= MIN_SECRET_LENGTH:
                _secrets.add(candidate)
        _secret_re = _compile(_secrets)


def forget_secret(value: str | bytes) -> None:
    """Stop masking `value` (its Secret was removed)."""
    text = _to_text(value)
    if text is None:
        return
    global _secret_re
    with _secrets_lock:
        _secrets.discard(text)
        _secrets.discard(text.strip())
        _secret_re = _compile(_secrets)


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _secret_re
    with _secrets_lock:
        _secrets.clear()
        _secret_re = None


def _compile(values: Iterable[str]) -> re.Pattern[str] | None:
    # Longest first, so a secret containing another is masked as a whole.
    ordered = sorted(values, key=len, reverse=True)
    if not ordered:
        return None
    return re.compile("|".join(re.escape(v) for v in ordered))


def mask_secrets(text: str) -> str:
    """`text` with registered secrets and sensitive key=value values masked."""
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub(MASK, text)
    # Both key=value patterns need a sensitive word; most lines (one per operation) have
    # none, and a substring test is ~20x cheaper than running the regexes.
    if not _is_sensitive_key(text):
        return text
    text = _KV_RE.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _JSON_KV_RE.sub(lambda m: m.group(1) + m.group(2) + m.group(1) + m.group(3) + '"' + MASK + '"', text)
    return text


_SENSITIVE_WORD_RE = re.compile("|".join(_SENSITIVE_WORDS))  # on lower-cased text: faster than (?i)


def _is_sensitive_key(name: str) -> bool:
    return _SENSITIVE_WORD_RE.search(name.lower()) is not None


class SecretMaskingFilter(logging.Filter):
    """Masks secrets in a record before any handler formats it.

    Attached to our handler, it sees records from every logger. The message
    is rendered once (msg % args) and the args dropped, so a secret passed as
    an argument is masked too; string extras are masked, and an extra whose
    *name* is sensitive is replaced entirely; the traceback is pre-rendered
    and masked.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the event
            message = f"{record.msg!r} {record.args!r}"
        record.msg = mask_secrets(message)
        record.args = None
        for name, value in list(vars(record).items()):
            if name in _RECORD_ATTRS:
                continue
            if _is_sensitive_key(name):
                setattr(record, name, MASK)
            elif isinstance(value, str):
                setattr(record, name, mask_secrets(value))
            elif isinstance(value, bytes):
                setattr(record, name, mask_secrets(value.decode("utf-8", "replace")))
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


# --------------------------------------------------------------------------
# formatting


def escape_newlines(text: str) -> str:
    """One event, one line: make CR/LF visible instead of line breaks."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def syslog_priority(levelno: int) -> int:
    """The syslog priority (2..7) journald should record for `levelno`."""
    for threshold, priority in _SYSLOG_PRIORITY:
        if levelno >= threshold:
            return priority
    return 7


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """Structured fields (known ones first, then any other extra=, sorted)."""
    out: dict[str, Any] = {}
    for name in STRUCTURED_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            out[name] = value
    for name in sorted(vars(record)):
        if name in _RECORD_ATTRS or name in out or name.startswith("_"):
            continue
        value = getattr(record, name)
        if value is not None:
            out[name] = value
    return out


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_text:
        return record.exc_text
    if record.exc_info:
        return "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    return None


def _timestamp(created: float) -> str:
    ts = _dt.datetime.fromtimestamp(created, tz=_dt.timezone.utc)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_BARE_VALUE = re.compile(r"^[^\s\"'=\\]+$")


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and _BARE_VALUE.match(text):
        return text
    return json.dumps(text, ensure_ascii=False)  # quotes, escapes newlines


class TextFormatter(logging.Formatter):
    """`[<N>|timestamp] level logger: message key=value ...`, one line."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        parts = []
        if self.journal:
            parts.append(f"<{syslog_priority(record.levelno)}>{record.levelname.lower()}")
        else:
            parts.append(f"{_timestamp(record.created)} {record.levelname.lower()}")
        parts.append(f"{record.name}: {escape_newlines(message)}")
        line = " ".join(parts)
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in _extras(record).items())
        if fields:
            line += " " + fields
        exc = _exception_text(record)
        if exc:
            line += " exception=" + json.dumps(exc, ensure_ascii=False)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, structured fields."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            obj[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        exc = _exception_text(record)
        if exc:
            obj["exception"] = exc
        # json.dumps escapes newlines inside strings: always one line.
        line = json.dumps(obj, ensure_ascii=False, default=str)
        if self.journal:
            # journald strips the prefix, so MESSAGE is still pure JSON.
            line = f"<{syslog_priority(record.levelno)}>{line}"
        return line


# --------------------------------------------------------------------------
# set-up


def stream_is_journal(stream: IO[str], environ: dict[str, str] | None = None) -> bool:
    """True when `stream` is connected to journald.

    `$JOURNAL_STREAM` is `DEV:INODE` of the journal socket systemd gave us as
    stderr; a child that inherited the variable but has its stderr redirected
    does not match and gets plain lines. A stream without a file descriptor
    (tests, wrappers) trusts the variable alone.
    """
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return True
    try:
        dev_s, ino_s = value.split(":", 1)
        st = os.fstat(fd)
        return st.st_dev == int(dev_s) and st.st_ino == int(ino_s)
    except (ValueError, OSError):
        return False


def parse_level(level: str | int) -> int:
    """`info`, `INFO`, `warn`, `20` -> a logging level number."""
    if isinstance(level, int):
        return level
    text = str(level).strip()
    if text.isdigit():
        return int(text)
    aliases = {"warn": "WARNING", "fatal": "CRITICAL"}
    name = aliases.get(text.lower(), text.upper())
    value = logging.getLevelName(name)
    if not isinstance(value, int):
        raise LoggingSetupError(
            f"--log-level: unknown level {level!r} (use debug, info, warning, error or critical)"
        )
    return value


class _VolumeManagerHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The daemon's handler (its class lets a second setup_logging() replace the first).

    Each line goes out in one write(2) on the stream's fd, without the handler lock: with a
    thousand operations finishing at once, a lock held across a write that releases the GIL
    made every log line a convoy of thread switches. One write of up to PIPE_BUF bytes is
    never interleaved with another on a pipe, on journald's stream socket or on an O_APPEND
    file; longer lines, and streams without an fd (tests), take the lock as before.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        try:
            stream.flush()
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if not self.filter(record):  # the masking filter only touches this record
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
            data = text.encode("utf-8", "backslashreplace")
            if self._fd is None or len(data) > select.PIPE_BUF:
                with self.lock:
                    self.stream.write(text)
                    self.flush()
                return
            while data:
                data = data[os.write(self._fd, data):]
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def setup_logging(
    fmt: str = "text",
    level: str | int = "info",
    stream: IO[str] | None = None,
    *,
    journal: bool | None = None,
) -> logging.Handler:
    """Configure the root logger: one handler on `stream` (default stderr).

    `journal=None` detects journald from `$JOURNAL_STREAM`. Returns the
    handler (tests detach it with `logging.getLogger().removeHandler`).
    Calling it again replaces the handler installed by the previous call.
    """
    if stream is None:
        stream = sys.stderr
    fmt = (fmt or "text").strip().lower()
    if journal is None:
        journal = stream_is_journal(stream)
    if fmt == "text":
        formatter: logging.Formatter = TextFormatter(journal=journal)
    elif fmt == "json":
        formatter = JsonFormatter(journal=journal)
    else:
        raise LoggingSetupError(f"--log-format: unknown format {fmt!r} (use text or json)")
    levelno = parse_level(level)

    handler = _VolumeManagerHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(SecretMaskingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _VolumeManagerHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    return handler
