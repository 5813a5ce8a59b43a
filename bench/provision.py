"""Bench (issue 14): provisioning N claims with one pod each, against a bare gRPC client floor.

As root, from the repository root::

    .venv/bin/python bench/provision.py                  # N = 100
    .venv/bin/python bench/provision.py --n 20 --attach off

One reference plugin (``tests.csi_loop --controller``, its own process, registered through the
daemon's plugins_registry/) serves both halves of one run:

* ``floor``: a bare gRPC client loop makes, per claim and one claim after another, the calls the
  daemon makes: CreateVolume, ControllerPublishVolume (when attach is on), NodeStageVolume,
  NodePublishVolume; the time of each chain, and the total. Then it undoes them (not timed).
* ``daemon``: the real daemon (``python -m volumemanager daemon``, a subprocess) gets N manifest
  files, each a claim (StorageClass with ``volumeBindingMode: Immediate``) and one pod using it,
  written one after another as fast as possible; per claim, from its file renamed into the
  manifest dir to the pod's volume mount (``.../kubernetes.io~csi/pvc-<uid>/mount``) seen in
  ``/proc/self/mountinfo`` (p50/p99), and the total from the first write to the last mount.
  Then everything is removed and the time until the plugin holds no volume is shown too.

The ratio compared with the target (<= 1.5x the floor, issue 14) is total / total: the daemon
gets the claims all at once (as an operator's ``kubectl apply`` would), so its per-claim time
includes waiting behind the other claims and is not comparable with the floor's one-chain time.
Attach is on (``--attach-required``) when the daemon's Controller client has
ControllerPublishVolume (``--attach auto``, the default). Nothing is asserted. Whatever happens,
the daemon and the plugin are stopped by PID, every mount under the temp dir unmounted, every
loop device backed by the plugin's images detached, and the temp dir removed when empty of mounts.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from tests.csi_loop.harness import CSILoopPlugin, detach_loops_backed_by, unmount_all_under  # noqa: E402
from volumemanager._proto.csi.v1 import csi_pb2, csi_pb2_grpc  # noqa: E402

DRIVER = "csi-loop.bench"
NODE = "bench-node"
SIZE = 16 << 20
TARGET_RATIO = 1.5
# Per phase, so a stuck daemon is reported instead of hanging the bench.
PHASE_TIMEOUT_SECONDS = 600.0
RPC_TIMEOUT_SECONDS = 60.0
MOUNT_SUFFIX = "/mount"
CSI_DIR = "/kubernetes.io~csi/"


class BenchError(RuntimeError):
    """A phase could not complete; the message names it."""


def daemon_can_attach() -> bool:
    """Whether the daemon's Controller client has the attach step (ControllerPublishVolume)."""
    path = REPO / "volumemanager" / "csi" / "controller_client.py"
    return "ControllerPublishVolume" in path.read_text()


def percentile(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s))) - 1))]


def summary(samples_s: list[float], total_s: float) -> dict:
    ms = [x * 1000 for x in samples_s]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1),
            "total_s": round(total_s, 3)}


# --- floor: the bare gRPC client loop --------------------------------------------------------


def capability() -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )


def run_floor(plugin: CSILoopPlugin, base: Path, n: int, attach: bool, node_id: str) -> dict:
    """The same calls per claim as the daemon makes, one claim after another, then undone."""
    channel = grpc.insecure_channel(plugin.endpoint)
    ctl, node = csi_pb2_grpc.ControllerStub(channel), csi_pb2_grpc.NodeStub(channel)
    cap = capability()
    made: list[tuple[str, str, str]] = []  # (volume id, staging path, target path)
    samples: list[float] = []
    try:
        t0 = time.monotonic()
        for i in range(n):
            start = time.monotonic()
            vol = ctl.CreateVolume(csi_pb2.CreateVolumeRequest(
                name=f"floor-{i}", capacity_range=csi_pb2.CapacityRange(required_bytes=SIZE),
                volume_capabilities=[cap], parameters={}), timeout=RPC_TIMEOUT_SECONDS).volume
            context: dict[str, str] = {}
            if attach:
                context = dict(ctl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
                    volume_id=vol.volume_id, node_id=node_id, volume_capability=cap,
                    volume_context=vol.volume_context), timeout=RPC_TIMEOUT_SECONDS).publish_context)
            staging = base / "floor" / str(i) / "globalmount"
            target = base / "floor" / str(i) / "pod" / "mount"
            staging.mkdir(parents=True)
            target.parent.mkdir(parents=True)
            made.append((vol.volume_id, str(staging), str(target)))
            node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
                volume_id=vol.volume_id, publish_context=context, staging_target_path=str(staging),
                volume_capability=cap, volume_context=vol.volume_context), timeout=RPC_TIMEOUT_SECONDS)
            node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
                volume_id=vol.volume_id, publish_context=context, staging_target_path=str(staging),
                target_path=str(target), volume_capability=cap, volume_context=vol.volume_context),
                timeout=RPC_TIMEOUT_SECONDS)
            samples.append(time.monotonic() - start)
        total = time.monotonic() - t0
    finally:
        for volume_id, staging, target in reversed(made):
            for call in (lambda: node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
                             volume_id=volume_id, target_path=target), timeout=RPC_TIMEOUT_SECONDS),
                         lambda: node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
                             volume_id=volume_id, staging_target_path=staging), timeout=RPC_TIMEOUT_SECONDS),
                         *([lambda: ctl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
                             volume_id=volume_id, node_id=node_id), timeout=RPC_TIMEOUT_SECONDS)] if attach else []),
                         lambda: ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id),
                                                  timeout=RPC_TIMEOUT_SECONDS)):
                try:
                    call()
                except grpc.RpcError as err:
                    print(f"floor undo of {volume_id}: {err.code().name}: {err.details()}", file=sys.stderr)
        channel.close()
    return summary(samples, total)


# --- the daemon ------------------------------------------------------------------------------


class MountWatcher(threading.Thread):
    """First time each ``.../kubernetes.io~csi/<pv>/mount`` under ``root`` appears in mountinfo.

    mountinfo wakes poll() with POLLPRI on every mount table change, so no change is missed
    and nothing is read while nothing changes."""

    def __init__(self, root: str) -> None:
        super().__init__(daemon=True)
        self.root = root.rstrip("/") + "/"
        self.seen: dict[str, float] = {}
        self.stopping = threading.Event()

    def scan(self, f) -> None:
        now = time.monotonic()
        f.seek(0)
        for line in f.read().splitlines():
            point = line.split(" ", 5)[4]
            if point.startswith(self.root) and CSI_DIR in point and point.endswith(MOUNT_SUFFIX):
                pv = point[: -len(MOUNT_SUFFIX)].rpartition("/")[2]
                self.seen.setdefault(pv, now)

    def run(self) -> None:
        with open("/proc/self/mountinfo") as f:
            poller = select.poll()
            poller.register(f, select.POLLPRI | select.POLLERR)
            self.scan(f)
            while not self.stopping.is_set():
                if poller.poll(100):
                    self.scan(f)


def claim_and_pod(i: int, uid: str) -> str:
    return f"""\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: c{i}, namespace: bench, uid: "{uid}"}}
spec:
  storageClassName: bench
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: {SIZE >> 20}Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: p{i}, namespace: bench}}
spec:
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: c{i}}}
"""


STORAGE_CLASS = f"""\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: bench}}
provisioner: {DRIVER}
parameters:
  csi.storage.k8s.io/fstype: ext4
reclaimPolicy: Delete
volumeBindingMode: Immediate
"""


class Daemon:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.manifests = base / "manifests"
        self.registry = base / "reg"
        self.socket = base / "vm.sock"
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log = None

    def start(self) -> None:
        self.log = open(self.base / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "volumemanager", "daemon", "--root-dir", str(self.root), "--socket", str(self.socket),
             "--manifest-dir", str(self.manifests), "--plugins-registry-dir", str(self.registry),
             "--metrics-address", "", "--node-name", NODE, "--log-level", "warning", "--csi-timeout", "60"],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

    def status(self) -> dict | None:
        r = subprocess.run([sys.executable, "-m", "volumemanager", "status", "--root-dir", str(self.root),
                            "--socket", str(self.socket), "--json"], cwd=REPO, capture_output=True, text=True)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def write(self, name: str, text: str) -> None:
        tmp = self.manifests / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.manifests / name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log is not None:
            self.log.close()

    def tail(self) -> str:
        try:
            return (self.base / "daemon.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def wait_for(predicate, timeout: float, what: str, daemon: Daemon | None = None, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is not None:
            raise BenchError(f"the daemon exited with {daemon.proc.returncode} while waiting for {what}: {daemon.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}" + (f": {daemon.tail()}" if daemon else ""))
        time.sleep(interval)


def plugin_volumes(plugin: CSILoopPlugin) -> dict:
    try:
        return json.loads((plugin.state_dir / "state.json").read_text()).get("controller_volumes", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def run_daemon(plugin: CSILoopPlugin, daemon: Daemon, n: int) -> dict:
    floor_calls = len(plugin.calls())
    daemon.write("sc.yaml", STORAGE_CLASS)
    daemon.start()
    wait_for(lambda: any(d["name"] == DRIVER and d.get("controller_capabilities")
                         for d in (daemon.status() or {}).get("drivers", [])), 60, "driver registration", daemon)
    watcher = MountWatcher(str(daemon.root))
    watcher.start()
    uids = [str(uuid.uuid4()) for _ in range(n)]
    written: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        for i, uid in enumerate(uids):
            daemon.write(f"c{i}.yaml", claim_and_pod(i, uid))
            written[f"pvc-{uid}"] = time.monotonic()
        wait_for(lambda: len(watcher.seen.keys() & written.keys()) == n, PHASE_TIMEOUT_SECONDS,
                 f"{n} pod volumes mounted", daemon, 0.05)
        samples = [watcher.seen[pv] - written[pv] for pv in written]
        total = max(watcher.seen[pv] for pv in written) - t0
    finally:
        watcher.stopping.set()
        watcher.join(1)
    out = summary(samples, total)
    calls = [c["method"] for c in plugin.calls()[floor_calls:]]
    out["calls"] = {m: calls.count(m) for m in ("CreateVolume", "ControllerPublishVolume", "NodeStageVolume",
                                                 "NodePublishVolume") if m in calls}
    # Tear down (shown, not compared): every claim removed -> no volume left in the plugin.
    t1 = time.monotonic()
    for i in range(n):
        (daemon.manifests / f"c{i}.yaml").unlink()
    wait_for(lambda: not plugin_volumes(plugin) and not mounts_under(str(daemon.root)), PHASE_TIMEOUT_SECONDS,
             "every volume deleted and unmounted", daemon, 0.1)
    out["teardown_s"] = round(time.monotonic() - t1, 3)
    return out


def mounts_under(root: str) -> list[str]:
    root = root.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        return [p for p in (line.split(" ", 5)[4] for line in f) if p.startswith(root)]


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="claims, one pod each (default 100)")
    ap.add_argument("--attach", choices=("auto", "on", "off"), default="auto",
                    help="the plugin's --attach-required (auto: on when the daemon has ControllerPublishVolume)")
    ap.add_argument("--tmp-dir", default="/tmp", help="where the run's temp dir goes (unix socket paths must stay short)")
    ap.add_argument("--out", help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/provision.py mounts loop devices: run it as root", file=sys.stderr)
        return 2
    attach = args.attach == "on" or (args.attach == "auto" and daemon_can_attach())
    base = Path(tempfile.mkdtemp(prefix="vm-prov-", dir=args.tmp_dir))
    plugin = CSILoopPlugin(base / "drv", driver_name=DRIVER, registration_dir=base / "reg", node_id=NODE,
                           extra_args=["--controller", "--capacity", f"{2 * args.n * (SIZE >> 20) + 64}Mi"]
                           + (["--attach-required"] if attach else []))
    daemon = Daemon(base)
    result: dict = {"n": args.n, "attach": attach}
    rc = 0
    try:
        (base / "reg").mkdir()
        plugin.start()
        print(f"floor: {args.n} x CreateVolume{'/ControllerPublish' if attach else ''}/NodeStage/NodePublish "
              "from a bare gRPC client ...", file=sys.stderr)
        result["floor"] = run_floor(plugin, base, args.n, attach, NODE)
        print(f"daemon: {args.n} claims with one pod each ...", file=sys.stderr)
        result["daemon"] = run_daemon(plugin, daemon, args.n)
        result["ratio_total"] = round(result["daemon"]["total_s"] / result["floor"]["total_s"], 2)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        result["error"] = "interrupted"
        rc = 130
    except (BenchError, grpc.RpcError, OSError, RuntimeError) as err:
        result["error"] = str(err)
        print(f"bench failed: {err}", file=sys.stderr)
        rc = 1
    finally:
        daemon.stop()
        plugin.stop()
        unmount_all_under([str(base)])
        detach_loops_backed_by(str(plugin.volumes_dir))
        left = mounts_under(str(base))
        if left:
            result["cleanup_failures"] = left
            print(f"left mounted: {left}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return rc


def report(r: dict) -> None:
    print(f"provisioning {r['n']} claims with one pod each (attach {'on' if r['attach'] else 'off'})")
    for key, label in (("floor", "floor (bare gRPC loop, one chain at a time)"),
                       ("daemon", "daemon (claim written -> pod volume mounted)")):
        if key in r:
            x = r[key]
            print(f"  {label}: p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms, total {x['total_s']} s")
    if "daemon" in r:
        print(f"  daemon calls: {r['daemon']['calls']}; teardown (claims removed -> volumes deleted) "
              f"{r['daemon']['teardown_s']} s")
    if "ratio_total" in r:
        verdict = "ok" if r["ratio_total"] <= TARGET_RATIO else "MISSED"
        print(f"  total ratio daemon/floor: {r['ratio_total']}x (target <= {TARGET_RATIO}x: {verdict})")
    if "error" in r:
        print(f"  error: {r['error']}")


if __name__ == "__main__":
    sys.exit(main())
