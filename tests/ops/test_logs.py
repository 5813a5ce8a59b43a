"""Logging: text/JSON formats, journald prefixes, one event a line, secret masking."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
from collections.abc import Iterator

import pytest

from volumemanager import logs
from volumemanager.logs import (
    LoggingSetupError,
    SecretMaskingFilter,
    register_secret,
    setup_logging,
    stream_is_journal,
)


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.clear_secrets()
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
        logs.clear_secrets()


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_format_one_line_with_fields() -> None:
    out = io.StringIO()
    setup_logging("text", "info", stream=out, journal=False)
    log = logging.getLogger("volumemanager.reconciler")
    log.debug("not shown")
    log.info("mounted %s", "data", extra={"pod": "default/web", "volume": "data",
                                          "operation": "MountVolume", "duration_ms": 12,
                                          "result": "success", "plugin": "kubernetes.io/empty-dir"})
    lines = _lines(out)
    assert len(lines) == 1
    line = lines[0]
    ts, rest = line.split(" ", 1)
    assert ts.endswith("Z") and "T" in ts
    assert rest == ("info volumemanager.reconciler: mounted data pod=default/web volume=data "
                    "operation=MountVolume plugin=kubernetes.io/empty-dir result=success duration_ms=12")


def test_text_escapes_newlines_and_quotes_values() -> None:
    out = io.StringIO()
    setup_logging("text", "debug", stream=out, journal=False)
    log = logging.getLogger("t")
    log.warning("first\nsecond\r\nthird", extra={"error": "rpc error: code = Internal\ndesc = boom"})
    try:
        raise RuntimeError("bad\nthing")
    except RuntimeError:
        log.exception("failed")
    lines = _lines(out)
    assert len(lines) == 2
    assert "first\\nsecond\\r\\nthird" in lines[0]
    assert 'error="rpc error: code = Internal\\ndesc = boom"' in lines[0]
    assert lines[1].split(" ", 1)[1].startswith("error t: failed exception=\"Traceback")
    assert "RuntimeError: bad\\nthing" in lines[1]


def test_json_format() -> None:
    out = io.StringIO()
    setup_logging("json", "INFO", stream=out, journal=False)
    log = logging.getLogger("volumemanager.csi")
    log.error("NodeStageVolume failed\nretrying", extra={"pod": "ns/p", "volume": "v", "operation": "stage",
                                                          "duration_ms": 3.5, "result": "error",
                                                          "error": "DEADLINE_EXCEEDED", "plugin": "csi"})
    lines = _lines(out)
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["level"] == "error"
    assert obj["logger"] == "volumemanager.csi"
    assert obj["msg"] == "NodeStageVolume failed\nretrying"
    assert obj["ts"].endswith("Z")
    for key, value in {"pod": "ns/p", "volume": "v", "operation": "stage", "duration_ms": 3.5,
                       "result": "error", "error": "DEADLINE_EXCEEDED", "plugin": "csi"}.items():
        assert obj[key] == value


def test_json_exception_stays_one_line() -> None:
    out = io.StringIO()
    setup_logging("json", "info", stream=out, journal=False)
    try:
        raise ValueError("x")
    except ValueError:
        logging.getLogger("t").exception("boom")
    lines = _lines(out)
    assert len(lines) == 1
    assert "ValueError: x" in json.loads(lines[0])["exception"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_journal_prefixes(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    out = io.StringIO()  # no fd: the variable alone decides
    setup_logging(fmt, "debug", stream=out)
    log = logging.getLogger("j")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    lines = _lines(out)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    if fmt == "text":
        assert lines[1] == "<6>info j: i"  # no timestamp: journald adds its own
    else:
        assert json.loads(lines[1][3:])["msg"] == "i"


def test_journal_stream_must_match_the_fd(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    try:
        st = os.fstat(a.fileno())
        stream = os.fdopen(os.dup(a.fileno()), "w")
        try:
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
            assert stream_is_journal(stream)
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
            assert not stream_is_journal(stream)  # inherited variable, redirected stderr
            monkeypatch.delenv("JOURNAL_STREAM")
            assert not stream_is_journal(stream)
        finally:
            stream.close()
    finally:
        a.close()
        b.close()


def test_setup_replaces_previous_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("text", "info", stream=first, journal=False)
    setup_logging("json", "info", stream=second, journal=False)
    logging.getLogger("t").info("once")
    assert first.getvalue() == ""
    assert len(_lines(second)) == 1


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("text", "loud")])
def test_bad_format_or_level(fmt: str, level: str) -> None:
    with pytest.raises(LoggingSetupError, match=fmt if fmt == "xml" else level):
        setup_logging(fmt, level, stream=io.StringIO())


def test_level_names() -> None:
    assert logs.parse_level("warn") == logging.WARNING
    assert logs.parse_level("Debug") == logging.DEBUG
    assert logs.parse_level("30") == 30


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_registered_secrets_are_masked_everywhere(fmt: str) -> None:
    out = io.StringIO()
    setup_logging(fmt, "info", stream=out, journal=False)
    register_secret(b"hunter2-very-secret")
    register_secret("s3cr3t-token-value\n")  # trailing newline from a Secret's data
    log = logging.getLogger("t")
    log.info("stage with %s", "hunter2-very-secret", extra={"error": "auth failed for s3cr3t-token-value"})
    try:
        raise PermissionError("login with hunter2-very-secret refused")
    except PermissionError:
        log.exception("oops")
    text = out.getvalue()
    assert "hunter2" not in text and "s3cr3t" not in text
    assert text.count("***") >= 3


def test_short_secrets_are_not_masked_by_value() -> None:
    out = io.StringIO()
    setup_logging("text", "info", stream=out, journal=False)
    register_secret("ab")
    logging.getLogger("t").info("about tabs")
    assert "about tabs" in out.getvalue()


@pytest.mark.parametrize(
    ("message", "leak"),
    [
        ("mount -o username=bob,password=pa55word //srv/share", "pa55word"),
        ("nodeStageSecret token=abc.def.ghi used", "abc.def.ghi"),
        ('options {"secretKey": "AKIAXYZ", "region": "eu"}', "AKIAXYZ"),
        ("api_key='quoted value' next", "quoted value"),
        ("PASSWORD=Upper", "Upper"),
    ],
)
def test_sensitive_key_values_are_masked(message: str, leak: str) -> None:
    out = io.StringIO()
    setup_logging("text", "info", stream=out, journal=False)
    logging.getLogger("t").info(message)
    assert leak not in out.getvalue()
    assert "***" in out.getvalue()


def test_sensitive_extra_field_is_masked_and_others_kept() -> None:
    out = io.StringIO()
    setup_logging("json", "info", stream=out, journal=False)
    logging.getLogger("t").info("x", extra={"token": "tok-123456", "volume": "data"})
    obj = json.loads(out.getvalue())
    assert obj["token"] == "***"
    assert obj["volume"] == "data"


def test_filter_alone_masks_args_of_other_handlers() -> None:
    """The filter rewrites the record itself (msg rendered, args dropped)."""
    register_secret("topsecretvalue")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "pw %s and %d", ("topsecretvalue", 3), None)
    assert SecretMaskingFilter().filter(record) is True
    assert record.getMessage() == "pw *** and 3"
    logs.forget_secret("topsecretvalue")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "topsecretvalue", None, None)
    SecretMaskingFilter().filter(record)
    assert record.getMessage() == "topsecretvalue"
