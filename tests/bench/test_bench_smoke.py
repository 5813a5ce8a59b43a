"""The benchmark still runs end to end (tiny N), so `bench/run.py` cannot rot.

Its numbers are only checked for presence and shape, never against a time: timing targets
are read off a real run, not asserted in tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _mounts_containing(fragment: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if fragment in line.split(" ")[4]]


@pytest.mark.timeout(90)
def test_bench_runs_at_tiny_n_and_writes_json(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the benchmark mounts tmpfs and bind mounts: needs root")
    out = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--n", "5", "--mix", "tmpfs", "--mix", "hostpath",
         "--steady-seconds", "0.5", "--trials", "3", "--no-strace", "--out", str(out), "--tmp-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=80,
    )
    assert r.returncode == 0, f"bench failed: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    assert "cold bring-up" in r.stdout and "restart: start -> READY" in r.stdout

    (result_file,) = list(out.glob("*.json"))
    report = json.loads(result_file.read_text())
    assert {"nproc", "mem_total_mb", "kernel", "python", "commit"} <= set(report["machine"])
    assert [(c["mix"], c["n"]) for c in report["results"]] == [("tmpfs", 5), ("hostpath", 5)]
    for case in report["results"]:
        assert "error" not in case, case["error"]
        for phase in ("floor_up", "floor_down", "bringup", "teardown", "reaction", "steady", "rss", "restart"):
            assert phase in case, f"{case['mix']}: no {phase} in {sorted(case)}"
        assert case["reaction"]["trials"] == 3
        assert case["restart"]["mounts_before"] == 5
        assert case["restart"]["mount_ids_unchanged"] is True

    # The bench cleans up after itself: no mount and no temp dir left under tmp_path.
    assert _mounts_containing(str(tmp_path)) == []
    assert not list(tmp_path.glob("vm-bench-*"))
