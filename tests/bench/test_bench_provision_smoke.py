"""bench/provision.py still runs end to end at tiny N (issue 14), and cleans up after itself.

Its numbers are checked for presence and shape only, never against a time (timing targets are
read off a real run); what is checked hard is that nothing is left: no mount, no loop device,
no process, no temp dir.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bench.test_bench_smoke import (  # noqa: F401 - bench_tmp is a fixture
    _loops_backed_under, _mounts_containing, _processes_mentioning, _require, bench_tmp,
)

REPO = Path(__file__).resolve().parents[2]
N = 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attach", ["off", "auto"])
def test_provision_bench_runs_at_tiny_n_and_cleans_up(bench_tmp, attach):
    _require()
    out = bench_tmp / "result.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "provision.py"), "--n", str(N), "--attach", attach,
                        "--tmp-dir", str(bench_tmp), "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, f"bench failed: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    for row in ("floor (bare gRPC loop", "daemon (claim written -> pod volume mounted)", "total ratio daemon/floor"):
        assert row in r.stdout, r.stdout
    result = json.loads(out.read_text())
    assert "error" not in result and "cleanup_failures" not in result, result
    for side in ("floor", "daemon"):
        assert result[side]["n"] == N and result[side]["p50_ms"] <= result[side]["p99_ms"], result[side]
    assert result["ratio_total"] > 0
    # The daemon made the same calls as the floor (a retry may add some, never fewer).
    wanted = ["CreateVolume", "NodeStageVolume", "NodePublishVolume"]
    wanted += ["ControllerPublishVolume"] if result["attach"] else []
    assert all(result["daemon"]["calls"].get(m, 0) >= N for m in wanted), result["daemon"]["calls"]
    if attach == "off":
        assert "ControllerPublishVolume" not in result["daemon"]["calls"]

    deadline = time.monotonic() + 5
    while _processes_mentioning(str(bench_tmp)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(str(bench_tmp)) == []
    assert _mounts_containing(str(bench_tmp)) == []
    assert _loops_backed_under(bench_tmp) == []
    assert not list(bench_tmp.glob("vm-prov-*")), "the bench's temp dir was left behind"
