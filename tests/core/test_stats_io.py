"""The stats collector's bounded calls run on one reused thread (issue 16: a thread per statvfs
cost ~0.2 ms, 2 s of CPU a minute at 10,000 volumes), and a call that hangs still delays only
itself: it times out, its thread is left behind and ends once the call returns, and the next
call runs on a new thread."""

from __future__ import annotations

import os
import threading

import pytest

from volumemanager.bounded_io import BoundedIOTimeout
from volumemanager.stats_collector import _BoundedCaller

pytestmark = pytest.mark.timeout(30)


def _io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vm-stats-io"]


def test_calls_share_one_thread_and_return_results_and_errors(tmp_path):
    before = len(_io_threads())
    c = _BoundedCaller()
    try:
        for _ in range(50):
            assert c.call(lambda: os.statvfs(tmp_path), 2.0, "statvfs").f_bsize > 0
        with pytest.raises(FileNotFoundError):
            c.call(lambda: os.statvfs(tmp_path / "missing"), 2.0, "statvfs")
        assert c.call(lambda: 7, 2.0, "seven") == 7
        assert len(_io_threads()) == before + 1
    finally:
        c.close()


def test_a_hung_call_times_out_alone_and_its_thread_ends_when_it_returns():
    c = _BoundedCaller()
    release = threading.Event()
    try:
        with pytest.raises(BoundedIOTimeout, match="statvfs /hung did not finish within 0.2s"):
            c.call(release.wait, 0.2, "statvfs /hung")
        hung = set(_io_threads())
        # The next call does not queue behind the hung one: it runs on a new thread.
        assert c.call(lambda: "fresh", 2.0, "next") == "fresh"
        assert set(_io_threads()) - hung
    finally:
        release.set()
        c.close()
    for t in hung:
        t.join(5)
        assert not t.is_alive()
