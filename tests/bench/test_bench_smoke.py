"""The benchmark still runs end to end (tiny N), so `bench/run.py` cannot rot.

Its numbers are only checked for presence and shape, never against a time: timing targets
are read off a real run, not asserted in tests. What is checked hard is the clean-up: no mount,
no loop device, no process and no temp dir left, also after an interrupted run.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
N = 8  # full mix: 1 local PV, 1 CSI volume, 3 tmpfs, 3 hostPath


def _mounts_containing(fragment: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if fragment in line.split(" ")[4]]


def _loops_backed_under(directory: Path) -> list[str]:
    prefix = os.path.realpath(directory) + "/"
    found = []
    for entry in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            backing = Path(entry).read_text().strip()
        except OSError:
            continue
        if backing.startswith(prefix):
            found.append(entry.split("/")[3])
    return found


def _processes_mentioning(fragment: str) -> list[int]:
    """PIDs whose command line mentions `fragment` (our tmp_path): a daemon or driver left behind."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmdline and "pytest" not in cmdline:
                pids.append(int(entry))
    return pids


def _assert_clean(tmp_path: Path) -> None:
    # The driver and the daemon are stopped by PID before the bench exits; give the kernel a
    # moment to reap nothing more than zombies of already-exited processes.
    deadline = time.monotonic() + 5
    while _processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(str(tmp_path)) == []
    assert _mounts_containing(str(tmp_path)) == []
    assert _loops_backed_under(tmp_path) == []
    assert not list(tmp_path.glob("vm-bench-*"))


@pytest.fixture
def bench_tmp():
    """A short temp dir (pytest's tmp_path is too long for the CSI driver's unix sockets, whose
    paths are limited to 107 bytes), with a last-resort clean-up should the bench itself fail to
    clean up (`_assert_clean` is what checks that it did)."""
    path = Path(tempfile.mkdtemp(prefix="vmb-", dir="/tmp"))
    try:
        yield path
    finally:
        for pid in _processes_mentioning(str(path)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for line in reversed(_mounts_containing(str(path))):
            subprocess.run(["umount", "-l", line.split(" ")[4]], capture_output=True)
        for loop in _loops_backed_under(path):
            subprocess.run(["losetup", "-d", f"/dev/{loop}"], capture_output=True)
        if not _mounts_containing(str(path)):
            shutil.rmtree(path, ignore_errors=True)


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("the benchmark mounts tmpfs, bind mounts and loop devices: needs root")
    for tool in ("losetup", "mkfs.ext4", "wipefs", "blkid"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control: loop devices unavailable")


def _bench_cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "bench" / "run.py"), "--n", str(N), "--steady-seconds", "0.5",
            "--trials", "3", "--no-strace", "--out", str(tmp_path / "results"), "--tmp-dir", str(tmp_path), *extra]


def _pyspy() -> bool:
    return (Path(sys.executable).parent / "py-spy").exists() or shutil.which("py-spy") is not None


@pytest.mark.timeout(120)
def test_bench_runs_tmpfs_and_full_mix_at_tiny_n_and_cleans_up(bench_tmp):
    _require()
    # The py-spy profile (the bench extra) of the tmpfs case when py-spy is installed.
    profile = ["--profile", str(N)] if _pyspy() else ["--no-profile"]
    r = subprocess.run(_bench_cmd(bench_tmp, "--mix", "tmpfs", "--mix", "full", *profile),
                       cwd=REPO, capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, f"bench failed: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    for row in ("cold bring-up", "restart: start -> READY", "device attached -> mounted", "last csi mounted"):
        assert row in r.stdout, row

    (result_file,) = list((bench_tmp / "results").glob("*.json"))
    report = json.loads(result_file.read_text())
    assert {"nproc", "mem_total_mb", "kernel", "python", "commit"} <= set(report["machine"])
    assert [(c["mix"], c["n"]) for c in report["results"]] == [("tmpfs", N), ("full", N)]
    for case in report["results"]:
        assert "error" not in case, case["error"]
        assert "cleanup_failures" not in case, case["cleanup_failures"]
        for phase in ("floor_up", "floor_down", "bringup", "teardown", "reaction", "steady", "rss", "restart"):
            assert phase in case, f"{case['mix']}: no {phase} in {sorted(case)}"
        assert case["reaction"]["trials"] == 3
        assert case["restart"]["mount_ids_unchanged"] is True
        assert len(case["floor_up"]["runs_process_s"]) == 3  # the fastest of three is compared with
        assert case["floor_up"]["process_s"] == pytest.approx(min(case["floor_up"]["runs_process_s"]), abs=1e-3)
        assert {"status_min_ms", "explain_min_ms"} <= set(case["queries"])
    tmpfs, full = report["results"]
    if _pyspy():
        assert tmpfs["profile"]["samples"] > 0 and 0 < len(tmpfs["profile"]["top_own"]) <= 10
        assert "profile of bring-up" in r.stdout
    assert "profile" not in full  # profiles are of the tmpfs/hostpath mixes only
    assert tmpfs["restart"]["mounts_before"] == N
    assert full["volumes_by_kind"] == {"local": 1, "csi": 1, "tmpfs": 3, "hostpath": 3}
    # N pod mounts plus the two global mounts (local PV, CSI staging).
    assert full["restart"]["mounts_before"] == N + 2
    assert full["restart"]["csi_stage_publish_calls"] == 0
    assert full["format"]["devices"] == 2
    assert set(full["bringup"]["last_mounted_by_kind_s"]) == {"local", "csi", "tmpfs", "hostpath"}
    assert full["arrival"]["trials"] == 3 and len(full["arrival"]["mount_ms"]) == 3
    assert "csi_loops_detached_s" in full["teardown"]

    _assert_clean(bench_tmp)


@pytest.mark.timeout(120)
def test_interrupted_full_mix_cleans_up(bench_tmp):
    """SIGINT while N volumes are mounted (local PV, CSI driver running): the bench stops the
    daemon and the driver, unmounts, detaches its loop devices, and still writes its JSON."""
    _require()
    proc = subprocess.Popen(_bench_cmd(bench_tmp, "--mix", "full", "--steady-seconds", "30"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "steady state" in line:  # everything is mounted now
                break
        else:
            pytest.fail(f"the bench never reached the steady state: exit {proc.wait()}")
        assert _mounts_containing(str(bench_tmp)), "nothing mounted at the steady state?"
        assert _loops_backed_under(bench_tmp), "no loop device attached at the steady state?"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted" in err, err[-2000:]
    _assert_clean(bench_tmp)
    assert list((bench_tmp / "results").glob("*.json")), "no JSON written after the interrupt"
