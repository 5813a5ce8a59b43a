"""Bench (issue 15): pods bound through the API server vs the same pods from the manifest dir.

As root, from the repository root::

    .venv/bin/python bench/apiserver.py                 # N = 1000 volumes (250 pods of 4 tmpfs emptyDirs)
    .venv/bin/python bench/apiserver.py --n 100 --trials 20 --idle 5

For each source (``manifests``, ``api``) a fresh daemon (the real one, a subprocess) gets N
volumes, then ``--trials`` single-volume pods one at a time; measured from outside:

* ``all_mounted_s``: from the first pod written/created to the last of the N mounts in mountinfo;
* ``reaction_ms``: one pod created (a file renamed into the dir / a POST to the API server) to its
  mount in ``/proc/self/mountinfo`` (median and p90 over the trials);
* ``idle_cpu_pct``: the daemon's CPU (utime+stime of /proc/PID/stat) over ``--idle`` seconds with
  nothing changing;
* ``rss_mb``: the daemon's VmRSS at the end.

The API server is the fake one (tests/fake_apiserver) in its own process, so its CPU is not
the daemon's. Targets (issue 15): reaction <= 1.5x the manifest source's, idle CPU <= 0.5 %,
RSS <= 80 MB. Nothing is asserted; every run cleans up (daemon and fake stopped by PID, mounts
under the temp dir unmounted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.fixtures_mounts import unmount_all_under  # noqa: E402

NODE = "bench-node"
TICKS = os.sysconf("SC_CLK_TCK")


def pod_doc(name: str, uid: str | None, volumes: int) -> dict:
    meta: dict = {"name": name, "namespace": "bench"}
    if uid:
        meta["uid"] = uid
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}],
                     "volumes": [{"name": f"v{i}", "emptyDir": {"medium": "Memory"}} for i in range(volumes)]},
            "status": {"phase": "Running"}}


def mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def count_under(root: str) -> int:
    needle = f" {root}/pods/"
    return sum(1 for line in mountinfo().splitlines() if needle in line)


def mounts_of(root: str) -> set[str]:
    needle = f" {root}/pods/"
    return {line.split()[4] for line in mountinfo().splitlines() if needle in line}


def wait_new_mount(root: str, before: set[str], timeout: float) -> float | None:
    """When a mount under ``root`` that is not in ``before`` appears: the table is read when
    the kernel says it changed (poll(2) on mountinfo), not every millisecond (a busy read of
    1,000 lines took a core from the daemon and held the lock its mount(2) needs)."""
    from mount_utils.mountinfo import MountInfoWatcher

    deadline = time.monotonic() + timeout
    with MountInfoWatcher() as w:
        while True:
            found = bool(mounts_of(root) - before)
            now = time.monotonic()  # after the read: a clock read first could date the mount early
            if found:
                return now
            if now >= deadline:
                return None
            w.wait(min(0.2, deadline - now))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Case:
    """One daemon with one way of feeding it pods."""

    def __init__(self, base: str, source: str, kubeconfig: str | None) -> None:
        self.base = base
        self.source = source
        self.root = os.path.join(base, "root")
        self.manifests = os.path.join(base, "manifests")
        os.makedirs(self.manifests)
        self.client = None
        self.token = ""
        args = [sys.executable, "-m", "volumemanager", "daemon", "--root-dir", self.root,
                "--socket", os.path.join(base, "vm.sock"), "--manifest-dir", self.manifests,
                "--plugins-registry-dir", os.path.join(base, "reg"), "--metrics-address", "",
                "--node-name", NODE, "--log-level", "warning"]
        if kubeconfig:
            args += ["--kubeconfig", kubeconfig]
            import http.client
            from urllib.parse import urlsplit

            with open(kubeconfig) as f:
                kc = json.load(f)  # the fake writes JSON
            url = urlsplit(kc["clusters"][0]["cluster"]["server"])
            self.token = kc["users"][0]["user"]["token"]
            self.client = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        self.log = open(os.path.join(base, "daemon.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        time.sleep(1.0)

    def add_pod(self, name: str, volumes: int) -> str:
        """Create the pod; its UID."""
        if self.client is None:
            uid = str(uuid.uuid4())
            tmp = os.path.join(self.manifests, f".{name}.tmp")
            with open(tmp, "w") as f:
                json.dump(pod_doc(name, uid, volumes), f)
            os.replace(tmp, os.path.join(self.manifests, f"{name}.yaml"))
            return uid
        # One send for headers and body (http.client joins them for a bytes body): a client that
        # writes them apart waits out the server's delayed ACK (~40 ms, Nagle), which would be
        # counted against the daemon.
        body = json.dumps(pod_doc(name, None, volumes)).encode()
        self.client.request("POST", "/api/v1/namespaces/bench/pods", body=body,
                            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        resp = self.client.getresponse()
        data = json.loads(resp.read())
        if resp.status != 201:
            raise RuntimeError(f"creating pod {name}: HTTP {resp.status}: {data}")
        return data["metadata"]["uid"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        if self.client is not None:
            self.client.close()


def run_case(base: str, source: str, n: int, trials: int, idle: float, kubeconfig: str | None) -> dict:
    case = Case(base, source, kubeconfig)
    try:
        pods = max(1, n // 4)
        t0 = time.monotonic()
        for i in range(pods):
            case.add_pod(f"p{i}", 4)
        deadline = time.monotonic() + 300
        while count_under(case.root) < pods * 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        all_mounted = time.monotonic() - t0
        samples = []
        for t in range(trials):
            # The create runs beside the watch for its mount: the fake API server answers a
            # POST only after a delayed ACK (~40 ms, its headers and body are two writes),
            # which is the fake's time, not the daemon's.
            before = mounts_of(case.root)
            start = time.monotonic()
            creator = threading.Thread(target=case.add_pod, args=(f"trial{t}", 1))
            creator.start()
            done = wait_new_mount(case.root, before, 10)
            creator.join()
            if done is not None:
                samples.append((done - start) * 1000)
        time.sleep(1.0)
        c0, w0 = cpu_seconds(case.proc.pid), time.monotonic()
        time.sleep(idle)
        cpu = (cpu_seconds(case.proc.pid) - c0) / (time.monotonic() - w0) * 100
        samples.sort()
        return {"source": source, "n": n, "all_mounted_s": round(all_mounted, 2),
                "mounted": count_under(case.root),
                "reaction_ms_median": round(statistics.median(samples), 1) if samples else None,
                "reaction_ms_p90": round(samples[int(len(samples) * 0.9) - 1], 1) if samples else None,
                "missed": trials - len(samples), "idle_cpu_pct": round(cpu, 3),
                "rss_mb": round(rss_mb(case.proc.pid), 1)}
    finally:
        case.stop()
        unmount_all_under(base)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--idle", type=float, default=20.0)
    args = ap.parse_args()
    top = tempfile.mkdtemp(prefix="vm-bench-api-")
    fake = None
    try:
        kubeconfig = os.path.join(top, "kubeconfig")
        fake = subprocess.Popen([sys.executable, "-m", "tests.fake_apiserver", kubeconfig],
                                stdout=subprocess.PIPE, text=True)
        fake.stdout.readline()  # its URL: it is serving
        results = [run_case(os.path.join(top, "manifests"), "manifests", args.n, args.trials, args.idle, None),
                   run_case(os.path.join(top, "api"), "api", args.n, args.trials, args.idle, kubeconfig)]
    finally:
        if fake is not None:
            fake.terminate()
            fake.wait(10)
        unmount_all_under(top)
        shutil.rmtree(top, ignore_errors=True)
    m, a = results
    print(f"{'source':<10} {'N':>5} {'all mounted s':>14} {'reaction ms (median/p90)':>25} {'idle CPU %':>11} {'RSS MB':>7}")
    for r in results:
        print(f"{r['source']:<10} {r['n']:>5} {r['all_mounted_s']:>14} "
              f"{str(r['reaction_ms_median']) + ' / ' + str(r['reaction_ms_p90']):>25} {r['idle_cpu_pct']:>11} "
              f"{r['rss_mb']:>7}")
    if m["reaction_ms_median"] and a["reaction_ms_median"]:
        ratio = a["reaction_ms_median"] / m["reaction_ms_median"]
        print(f"api/manifests reaction: {ratio:.2f}x (target <= 1.5x: {'ok' if ratio <= 1.5 else 'MISSED'}); "
              f"idle CPU {a['idle_cpu_pct']} % (target <= 0.5: {'ok' if a['idle_cpu_pct'] <= 0.5 else 'MISSED'}); "
              f"RSS {a['rss_mb']} MB (target <= 80: {'ok' if a['rss_mb'] <= 80 else 'MISSED'})")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
