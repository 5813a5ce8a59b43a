"""Issue 11, item 3: a source that failed at start and comes back *empty* is a real "no pods".

The daemon starts on a missing manifest dir and keeps what it finds on disk. When the dir
appears, empty and readable, the kept volumes are torn down at once (not at the reconciler's
next full pass, a minute later), and the log says how many volumes of how many pods. Before
the fix nothing woke the reconciler: the desired state did not change (no pods before, none
after), so the kept volumes stayed until the next full pass or a SIGHUP.
"""

from __future__ import annotations

import os

import pytest

from tests.daemon_harness import wait_until
from tests.safety.test_sources import UIDS, _source, _start_with_two_pods, _volume

pytestmark = [pytest.mark.timeout(120)]

# Well under the reconciler's 60 s safety-net pass, so only a wake-up can make it.
PROMPT_SECONDS = 15


def test_dir_back_empty_after_a_failed_start_tears_down_at_once_and_counts(daemon_factory, tmp_path):
    d, _ = _start_with_two_pods(daemon_factory)
    assert d.stop() == 0
    away = tmp_path / "manifests.away"
    os.rename(d.manifests, away)
    d.start()
    assert _source(d)["state"] == "failed"
    wait_until(lambda: "kept 4 volumes of 2 pods found on disk" in d.log(), 10, what="the 'kept' log line")
    assert len(d.mounts()) == 2 and all(_volume(d, uid, "disk").exists() for uid in UIDS)
    # The table says why the kept rows are there, not a bare path beside their state.
    kept = [line for line in d.cli("status").stdout.splitlines() if line.startswith("demo/p")]
    assert len(kept) == 4 and all(
        line.endswith(f"waiting for manifest-dir:{d.manifests} to be read whole (nothing is torn down until then)")
        for line in kept), kept

    d.manifests.mkdir()  # back, readable, and empty: no pods
    wait_until(lambda: _source(d)["state"] == "synced", 10, what="the source to be read whole")
    wait_until(lambda: not d.mounts() and not d.status()["volumes"], PROMPT_SECONDS, 0.1,
               what="the kept volumes to be torn down without waiting for the full pass")
    assert "desired state read whole again: 4 volumes of 2 pods on the node are not desired" in d.log()
    assert not any(_volume(d, uid, "disk").exists() for uid in UIDS)
    assert not (d.root / "pods").exists() or not any((d.root / "pods").iterdir()), "pod dirs left behind"


def test_wait_on_an_unknown_pod_while_the_source_is_failed_times_out_and_is_not_no_such_pod(daemon_factory):
    """While the manifest dir cannot be read, whether a pod exists is not known: ``wait`` times
    out (exit 1, with the failed source in its explanation), never "no such pod" (exit 2).
    Once the dir is read whole, the answer is exit 2 at once."""
    d = daemon_factory(start=False)
    d.manifests.rmdir()
    d.start()
    r = d.cli("wait", "demo/nope", "--timeout", "2", check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout.startswith("timed out after 2s waiting for demo/nope:")
    assert f"manifest-dir:{d.manifests} failed since" in r.stdout
    d.manifests.mkdir()
    wait_until(lambda: _source(d)["state"] == "synced", 10, what="the source to be read whole")
    r = d.cli("wait", "demo/nope", "--timeout", "30", check=False)
    assert r.returncode == 2 and "no pod demo/nope in the desired state" in r.stdout, (r.stdout, r.stderr)
