"""Benchmark of the volumemanager daemon at N volumes: bring-up, teardown, reaction, idle, restart.

Run as root from the repository root::

    sudo .venv/bin/python bench/run.py [--n 100 --n 1000] [--mix tmpfs --mix full] [--quick]

Each (mix, N) case runs the real daemon (``python -m volumemanager daemon``) as a subprocess
on a private root dir under one temp dir and measures, from the outside only (mountinfo,
/proc, the admin socket, a NOTIFY_SOCKET datagram socket):

* cold bring-up: manifests present at start -> all N mounted, from process start; and its
  floor, the same mkdir + mount(2) calls from a tight loop in a fresh Python process;
* teardown: all manifests removed -> no mount left under the root dir; floor: umount + rmdir;
* reaction latency: one manifest renamed into place -> its mount in mountinfo (p50/p99);
* steady state: daemon CPU seconds over a quiet window, and peak RSS (VmHWM);
* restart: SIGTERM, start again -> READY=1, and mount syscalls issued by the new process.

The full mix adds local PVs on loop devices and CSI volumes through the reference driver
(``tests.csi_loop``, started per case and registered through plugins_registry/), and the
device-arrival latency (a local PV's loop device attached -> the pod's volume mounted, from
``bench/device_arrival.py``).

Numbers are printed (with the targets of issue 7 next to them) and written as JSON to
``bench/results/<timestamp>.json``; nothing is asserted. Whatever happens, the daemon and the
driver are stopped by PID, every mount under the temp dir is unmounted, every loop device backed
by a file in it detached, and the temp dir removed only when nothing is left below it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from device_arrival import (  # noqa: E402
    LoopError, PrivateLoop, attach_loop, detach_loops_under, format_image, loops_backed_under, make_sparse,
    measure_device_arrival,
)
from mount_utils import syscalls as sc  # noqa: E402
from mount_utils.mountinfo import MountInfoWatcher  # noqa: E402
from tests.csi_loop.harness import CSILoopPlugin  # noqa: E402

MOUNTINFO = "/proc/self/mountinfo"
# How long to let a burst of mount events pile up before re-reading mountinfo while counting.
# Reading a 1,000-line mountinfo costs ~2 ms of kernel time and holds the namespace lock that
# every mount(2) of the daemon needs, so counting every 5 ms slowed the thing being measured;
# 20 ms keeps it to a few reads per second of bring-up, at a timing error of at most 20 ms.
COUNT_COALESCE_SECONDS = 0.02
# Upper bounds for one phase; a case that exceeds them is reported as timed out, not hung.
BRINGUP_TIMEOUT_SECONDS = 600.0
READY_TIMEOUT_SECONDS = 120.0
# A trial whose mount has not appeared by then is counted as missed (and as this latency in the
# percentiles) instead of waiting for the daemon's slow full pass.
REACTION_TIMEOUT_SECONDS = 2.0
STOP_TIMEOUT_SECONDS = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# sun_path holds 108 bytes with the terminating NUL: the CSI driver's sockets must fit.
UNIX_PATH_MAX = 107

# Targets (compared, never asserted): issue 16's for the tmpfs and hostPath mixes (1,000 volumes;
# at 10,000 its growth bounds apply, read off the table), issue 7's for the full mix.
TARGETS = {
    "bringup_ratio": 3.0,
    "teardown_ratio": 2.0,
    "reaction_p50_ms": 5.0,
    "reaction_p99_ms": 20.0,
    "idle_cpu_percent": 0.2,
    "rss_mb": 60.0,
    "restart_ready_s": 0.5,
    "restart_mount_syscalls": 0,
    "status_ms": 500.0,  # issue 16: status --json at 10,000 volumes
    "explain_ms": 20.0,  # issue 16: explain POD, a per-pod lookup
}
TARGETS_FULL_MIX = dict(TARGETS, teardown_ratio=1.5, reaction_p50_ms=20.0, reaction_p99_ms=100.0,
                        idle_cpu_percent=0.5, rss_mb=80.0, restart_ready_s=2.0)


def targets_for(mix: str) -> dict[str, float]:
    return TARGETS_FULL_MIX if mix == "full" else TARGETS


MIXES = ("tmpfs", "hostpath", "full")
DEFAULT_MIXES = ["tmpfs", "full"]

# Full mix: this fraction of N are local PVs on loop devices, and the same fraction CSI volumes
# through tests.csi_loop; the rest alternate tmpfs emptyDir / hostPath. mkfs.ext4 of a 32 MiB
# sparse loop device takes ~10 ms here, so the cost is not the format but the CSI reference
# driver, which serialises every call behind one lock and forks 4-5 commands per NodeStage
# (see bench/README.md). 10 % of 1,000 keeps the default run well under 10 minutes.
DEVICE_FRACTION = 0.1
CSI_DRIVER = "csi-loop.bench"
# Pod dir name of each volume kind (kubelet's plugin name with '/' as '~').
PLUGIN_DIRS = {"tmpfs": "kubernetes.io~empty-dir", "hostpath": "kubernetes.io~host-path",
               "local": "kubernetes.io~local-volume", "csi": "kubernetes.io~csi"}
DEVICE_KINDS = ("local", "csi")


class BenchError(RuntimeError):
    """A phase could not complete (timeout, daemon died); the message names the phase."""


# --- mount table -------------------------------------------------------------------------


def read_mountinfo_bytes() -> bytes:
    with open(MOUNTINFO, "rb") as f:
        return f.read()


def mounts_under(prefix: str) -> list[tuple[int, str]]:
    """(mount id, mount point) of every mount whose mount point is below `prefix`."""
    out = []
    p = prefix.rstrip("/") + "/"
    for line in read_mountinfo_bytes().decode(errors="surrogateescape").splitlines():
        parts = line.split(" ", 5)
        if len(parts) > 4 and parts[4].startswith(p):
            out.append((int(parts[0]), parts[4]))
    return out


def wait_counts(targets: dict[str, tuple[bytes | re.Pattern[bytes], int]], timeout: float,
                daemon: "Daemon | None" = None, what: str = "mounts") -> dict[str, float]:
    """Like `wait_count` for several needles at once (a byte string or a regex over mountinfo):
    time.monotonic() at which each first had its wanted count; returns when all have."""
    def count(data: bytes, needle: bytes | re.Pattern[bytes]) -> int:
        return data.count(needle) if isinstance(needle, bytes) else len(needle.findall(data))

    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    with MountInfoWatcher() as w:
        while True:
            data = read_mountinfo_bytes()
            now = time.monotonic()  # after the read: see _wait_mark
            for name, (needle, want) in targets.items():
                if name not in seen and count(data, needle) == want:
                    seen[name] = now
            if len(seen) == len(targets):
                return seen
            if now > deadline:
                have = {k: count(data, nd) for k, (nd, _w) in targets.items()}
                want = {k: wt for k, (_n, wt) in targets.items()}
                raise BenchError(f"timed out after {timeout:g}s waiting for {what}: want {want}, have {have}")
            if daemon is not None and not daemon.alive():
                raise BenchError(f"daemon exited while waiting for {what} (log: {daemon.log_tail()})")
            if w.wait(0.5):
                time.sleep(COUNT_COALESCE_SECONDS)


def check_count(needle: bytes, want: int, when: str) -> None:
    """One read of mountinfo, after a wait by statx: the mounts under the needle are `want`."""
    have = read_mountinfo_bytes().count(needle)
    if have != want:
        raise BenchError(f"{have} mounts {when}, expected {want}")


def wait_paths(paths: list[str], mounted: bool, timeout: float, daemon: "Daemon | None" = None,
               what: str = "mounts") -> float:
    """time.monotonic() when every path in `paths` is (`mounted`) or is no longer a mount point.

    A statx of the first path still pending after each change of the mount table: unlike a read of
    mountinfo (~20 ms at 10,000 mounts, under the namespace lock every mount(2) and umount2
    of the daemon waits for), it costs the daemon nothing. The bench read mountinfo every
    20 ms before, which made its own reads a large part of what it measured at 10,000."""
    # Only the first path not yet done is looked at after a change: while it is pending the
    # others do not matter (all must be done), and once it is, the scan moves on. So the bench
    # makes one statx per wake-up plus one per path over the whole wait, instead of a scan of
    # every pending path at every mount change (at 10,000 that scan kept a core busy and its
    # path lookups raced the daemon's umount2 calls).
    pending = list(paths)
    done = 0
    deadline = time.monotonic() + timeout
    with MountInfoWatcher() as w:
        while True:
            while done < len(pending) and bool(is_mount_root(pending[done])) == mounted:
                done += 1
            now = time.monotonic()  # after the look: see _wait_mark
            if done == len(pending):
                return now
            if now > deadline:
                raise BenchError(f"timed out after {timeout:g}s waiting for {what}: {len(pending) - done} of "
                                 f"{len(paths)} left (first: {pending[done]})")
            if daemon is not None and not daemon.alive():
                raise BenchError(f"daemon exited while waiting for {what} (log: {daemon.log_tail()})")
            w.wait(0.5)


DIR_POLL_SECONDS = 0.005


def wait_dirs_gone(parent: Path, names: set[str], timeout: float, daemon: "Daemon | None" = None,
                   what: str = "pod dirs") -> float:
    """time.monotonic() when none of `names` is left in directory `parent` (a pod's directory
    goes only after all its mounts have, so this is "torn down", skeleton included).

    A listing of `parent` every 5 ms (a removed directory wakes no mount-table watcher): it
    touches no mount, and costs ~0.2 ms at 2,000 entries. A statx of a mount point at the
    moment the daemon unmounts it holds a reference to the mount, and umount2 then fails with
    EBUSY (seen: a 0.4 s retry in a teardown of 1,000)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = names.intersection(os.listdir(parent))
        except FileNotFoundError:
            left = set()
        now = time.monotonic()  # after the look: see _wait_mark
        if not left:
            return now
        if now > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}: {len(left)} of {len(names)} left")
        if daemon is not None and not daemon.alive():
            raise BenchError(f"daemon exited while waiting for {what} (log: {daemon.log_tail()})")
        time.sleep(DIR_POLL_SECONDS)


def unmount_all_under(prefix: str) -> list[str]:
    """Unmount everything below `prefix`, deepest/newest first; lazily if busy. Returns failures."""
    failed = []
    for _ in range(3):
        mounts = sorted(mounts_under(prefix), key=lambda m: m[0], reverse=True)
        if not mounts:
            return []
        failed = []
        for _mid, mp in mounts:
            try:
                sc.sys_umount(mp, sc.UMOUNT_NOFOLLOW)
            except OSError:
                try:
                    sc.sys_umount(mp, sc.MNT_DETACH | sc.UMOUNT_NOFOLLOW)
                except OSError as e:
                    failed.append(f"{mp}: {e.strerror}")
    return failed


# --- /proc accounting --------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def descendants(pid: int) -> list[int]:
    """`pid` and all its live descendants (by walking /proc/*/stat ppid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` and its live descendants, plus the reaped children's (cutime+cstime)."""
    ticks = 0
    for i, p in enumerate(descendants(pid)):
        f = _stat_fields(p)
        if f is None:
            continue
        # stat fields 14..17 (utime stime cutime cstime) are at 11..14 here (we start at field 3).
        ticks += int(f[11]) + int(f[12])
        if i == 0:
            ticks += int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM of `pid`, sum of VmHWM over `pid` and its live descendants), in MiB."""
    values = []
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    values.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return (values[0] if values else 0.0), sum(values)


# --- the workload ------------------------------------------------------------------------


@dataclass
class Volume:
    pod_index: int
    name: str
    kind: str  # "tmpfs" | "hostpath" | "local" | "csi"
    mount_path: str
    pv: str = ""  # local/csi: the PV (and PVC) name
    backing: str = ""  # local/csi: the sparse image file
    device: str = ""  # local: the loop device the PV names (set once attached)


@dataclass
class Layout:
    """Paths of one case; everything below `base` (one temp dir)."""

    base: Path
    root: Path = field(init=False)
    manifests: Path = field(init=False)
    registry: Path = field(init=False)
    socket: Path = field(init=False)
    notify: Path = field(init=False)
    hostpaths: Path = field(init=False)
    floor: Path = field(init=False)
    images: Path = field(init=False)
    csi: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.base / "root"
        self.manifests = self.base / "manifests"
        self.registry = self.base / "plugins_registry"
        self.socket = self.base / "vm.sock"
        self.notify = self.base / "notify.sock"
        self.hostpaths = self.base / "hostpaths"
        self.floor = self.base / "floor"
        self.images = self.base / "images"  # local PVs' sparse files
        self.csi = self.base / "csi"  # the CSI driver's dir (state/volumes/<handle>.img, sockets)
        for d in (self.manifests, self.registry, self.hostpaths, self.floor, self.images):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def pods_needle(self) -> bytes:
        return b" " + os.fsencode(str(self.root / "pods")) + b"/"

    @property
    def root_needle(self) -> bytes:
        return b" " + os.fsencode(str(self.root)) + b"/"

    @property
    def csi_volumes(self) -> Path:
        return self.csi / "state" / "volumes"

    def kind_pattern(self, kind: str) -> re.Pattern[bytes]:
        """Pod mounts of one volume kind under this root (regex over mountinfo bytes)."""
        return re.compile(re.escape(self.pods_needle) + rb"[^/ ]+/volumes/" + re.escape(PLUGIN_DIRS[kind].encode()) + b"/")


def pod_uid(index: int) -> str:
    return f"00000000-0000-4000-8000-{index:012d}"


def device_counts(n: int, mix: str, fraction: float = DEVICE_FRACTION) -> tuple[int, int]:
    """(local PVs, CSI volumes) of a case: `fraction` of N each, at least one each in the full mix."""
    if mix != "full":
        return 0, 0
    each = max(1, round(n * fraction))
    return each, each


def plan_volumes(layout: Layout, n: int, per_pod: int, mix: str,
                 fraction: float = DEVICE_FRACTION) -> dict[int, list[Volume]]:
    """N volumes in pods of `per_pod`; the hostpath mix alternates tmpfs emptyDir / hostPath.

    The full mix has `fraction` of N local PVs and as many CSI volumes (each its own PV and
    PVC, used by exactly one pod), spread over the pods by a fixed shuffle; the rest alternate
    tmpfs / hostPath.
    """
    n_local, n_csi = device_counts(n, mix, fraction)
    rest = n - n_local - n_csi
    kinds = ["local"] * n_local + ["csi"] * n_csi
    kinds += ["hostpath" if mix != "tmpfs" and i % 2 else "tmpfs" for i in range(rest)]
    if mix == "full":
        random.Random(7).shuffle(kinds)  # fixed seed: the same layout every run
    pods: dict[int, list[Volume]] = {}
    counters = {"local": 0, "csi": 0}
    for i, kind in enumerate(kinds):
        p, j = divmod(i, per_pod)
        name = f"v{j}"
        pv = backing = ""
        if kind in DEVICE_KINDS:
            k = counters[kind]
            counters[kind] += 1
            pv = f"pv-{kind}-{k:04d}"
            backing = str(layout.images / f"{pv}.img") if kind == "local" else str(layout.csi_volumes / f"{pv}.img")
        pod_dir = layout.root / "pods" / pod_uid(p) / "volumes" / PLUGIN_DIRS[kind]
        # kubelet names a PV-backed volume's dir after the PV; CSI mounts at .../<pv>/mount.
        mp = pod_dir / (pv or name)
        if kind == "csi":
            mp = mp / "mount"
        pods.setdefault(p, []).append(Volume(p, name, kind, str(mp), pv, backing))
    return pods


def pod_manifest(layout: Layout, index: int, volumes: list[Volume], prefix: str = "p") -> str:
    """The pod, then the PV and PVC of each of its local/CSI volumes (one file per pod)."""
    lines = ["apiVersion: v1", "kind: Pod", "metadata:", f"  name: {prefix}{index:05d}", "  namespace: bench",
             f"  uid: {pod_uid(index)}", "spec:", "  volumes:"]
    for v in volumes:
        lines.append(f"    - name: {v.name}")
        if v.kind == "tmpfs":
            lines += ["      emptyDir:", "        medium: Memory", "        sizeLimit: 1Mi"]
        elif v.kind == "hostpath":
            lines += ["      hostPath:", f"        path: {layout.hostpaths / f'{index}-{v.name}'}",
                      "        type: Directory"]
        else:
            lines += ["      persistentVolumeClaim:", f"        claimName: {v.pv}"]
    for v in volumes:
        if v.kind == "local":
            lines += ["---", "apiVersion: v1", "kind: PersistentVolume", f"metadata: {{name: {v.pv}}}", "spec:",
                      "  accessModes: [ReadWriteOnce]", "  capacity: {storage: 32Mi}",
                      f"  local: {{path: {v.device}, fsType: ext4}}"]
        elif v.kind == "csi":
            lines += ["---", "apiVersion: v1", "kind: PersistentVolume", f"metadata: {{name: {v.pv}}}", "spec:",
                      "  accessModes: [ReadWriteOnce]", "  capacity: {storage: 32Mi}", "  csi:",
                      f"    driver: {CSI_DRIVER}", f"    volumeHandle: {v.pv}", "    fsType: ext4",
                      "    volumeAttributes: {size: 32Mi}"]
        if v.kind in DEVICE_KINDS:
            lines += ["---", "apiVersion: v1", "kind: PersistentVolumeClaim",
                      f"metadata: {{name: {v.pv}, namespace: bench}}", f"spec: {{volumeName: {v.pv}}}"]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- the floor (a tight loop in a fresh interpreter) -------------------------------------

FLOOR_CODE = r"""
import json, os, sys, time
t_imp = time.monotonic()
from mount_utils import syscalls as sc
from mount_utils.mounter import LinuxMounter
imported = time.monotonic() - t_imp
action, listing = sys.argv[1], sys.argv[2]
items = [line.split("\t") for line in open(listing).read().splitlines()]
m = LinuxMounter()
t0 = time.monotonic()
if action == "up":
    for kind, target, source, global_mp in items:
        if kind == "device":  # an already formatted device: global mount, then bind into the pod
            os.makedirs(global_mp)
            sc.sys_mount(source, global_mp, "ext4", 0, None)
            source = global_mp
        os.makedirs(target)
        if kind == "tmpfs":
            m.mount_tmpfs(target, 1 << 20)
        else:
            sc.sys_mount(source, target, None, sc.MS_BIND, None)
else:
    for kind, target, source, global_mp in items:
        sc.sys_umount(target, sc.UMOUNT_NOFOLLOW)
        os.rmdir(target)
        if kind == "device":
            sc.sys_umount(global_mp, sc.UMOUNT_NOFOLLOW)
            os.rmdir(global_mp)
print(json.dumps({"loop_s": time.monotonic() - t0, "import_s": imported}))
"""


def run_floor(layout: Layout, pods: dict[int, list[Volume]], action: str,
              devices: dict[str, str] | None = None) -> dict[str, float]:
    """The same mkdir+mount (or umount+rmdir) calls, in a fresh Python process: wall and loop time.

    Local and CSI volumes (`devices`: backing file -> loop device, already formatted) cost a
    mount(2) of the ext4 device at a global path plus a bind into the pod dir; no mkfs, no
    blkid/fsck, no CSI RPC (those are the daemon's and the driver's overhead over the kernel).
    """
    listing = layout.base / "floor-list.tsv"
    rows = []
    for p, vols in pods.items():
        for v in vols:
            target = str(layout.floor / "pods" / pod_uid(p) / "volumes" / v.kind / v.name)
            if v.kind in DEVICE_KINDS:
                assert devices is not None, "device volumes need their loop devices for the floor"
                rows.append(f"device\t{target}\t{devices[v.backing]}\t{layout.floor / 'global' / v.pv}")
            else:
                rows.append(f"{v.kind}\t{target}\t{layout.hostpaths / f'{p}-{v.name}'}\t-")
    listing.write_text("\n".join(rows) + "\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", FLOOR_CODE, action, str(listing)], cwd=REPO,
                       capture_output=True, text=True, timeout=BRINGUP_TIMEOUT_SECONDS)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise BenchError(f"floor ({action}) failed: {r.stderr.strip()[-2000:]}")
    inner = json.loads(r.stdout.strip().splitlines()[-1])
    return {"process_s": wall, "loop_s": inner["loop_s"], "import_s": inner["import_s"]}


def best_floor(layout: Layout, pods: dict[int, list[Volume]], runs: int,
               devices: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The floor `runs` times (up, then down, each time), the run with the smallest process time
    of each kept: the floor moves 2x between runs on this machine (page cache, the other
    sessions on the same cores), and the kernel's best is what the daemon is compared with."""
    ups, downs = [], []
    for _ in range(runs):
        ups.append(run_floor(layout, pods, "up", devices))
        downs.append(run_floor(layout, pods, "down", devices))
    up = dict(min(ups, key=lambda r: r["process_s"]))
    down = dict(min(downs, key=lambda r: r["process_s"]))
    up["runs_process_s"] = [round(r["process_s"], 4) for r in ups]
    down["runs_process_s"] = [round(r["process_s"], 4) for r in downs]
    return up, down


# --- queries and the profile -----------------------------------------------------------------


def measure_queries(layout: Layout, pod_key: str, pid: int, repeats: int = 5) -> dict[str, Any]:
    """`status` and `explain POD` over the admin socket (what `status --json` and `explain` ask),
    each `repeats` times: wall time from connect to the whole answer parsed, and the daemon's
    CPU time over all repeats divided by them (the wall time on 2 shared cores moves with the
    other load; the CPU time much less). Timed here and not through the CLI so the CLI's
    interpreter start-up (~0.2 s) does not hide the daemon's."""
    from volumemanager.admin_api import call

    out: dict[str, Any] = {"explain_pod": pod_key, "repeats": repeats}
    for name, method, params in (("status", "status", None), ("explain", "explain", {"pod": pod_key})):
        times = []
        cpu = 0.0
        for _ in range(repeats):
            c0 = cpu_seconds(pid)
            t0 = time.monotonic()
            result = call(str(layout.socket), method, params, timeout=60)
            times.append(time.monotonic() - t0)
            cpu += cpu_seconds(pid) - c0
        size = len(json.dumps(result, default=str))
        times.sort()
        out[f"{name}_min_ms"] = times[0] * 1000
        out[f"{name}_median_ms"] = times[len(times) // 2] * 1000
        out[f"{name}_daemon_cpu_ms"] = cpu / repeats * 1000  # clock ticks: 10 ms resolution per read
        out[f"{name}_bytes"] = size
    return out


PYSPY_RATE = int(os.environ.get("VM_BENCH_PYSPY_RATE", "250"))  # samples a second: ~250-2500 samples over a 1-10 s bring-up
PYSPY_MODE = [a for a in os.environ.get("VM_BENCH_PYSPY_MODE", "--gil").split() if a]  # experiments: "--idle --threads"


def pyspy_path() -> str | None:
    """py-spy from the bench extra (``pip install -e .[bench]``), next to this interpreter or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def pyspy_command(out: Path) -> list[str]:
    """The daemon under ``py-spy record``: the daemon is its child (like strace's), nothing in
    the daemon changes. ``--gil`` samples only the thread holding the GIL, i.e. where the
    daemon's Python time goes (a worker blocked in mount(2) has released it and is not counted:
    that time is the kernel's, the floor's); ``--nonblocking`` does not stop the daemon to
    sample, so the bring-up is not slowed by the profiler."""
    spy = pyspy_path()
    if spy is None:
        raise BenchError("--profile needs py-spy: pip install -e '.[bench]'")
    return [spy, "record", "--format", "raw", "--rate", str(PYSPY_RATE), *PYSPY_MODE, "--nonblocking",
            "--output", str(out), "--"]


def own_time_top(raw: str, top: int = 10) -> dict[str, Any]:
    """Top functions by own time (the leaf frame of each sample) from py-spy's raw output
    (``frame;frame;... count`` per line, a frame ``function (file:line)``); lines dropped."""
    own: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.rsplit(";", 1)[-1].strip() or "(no Python frame)"
        name, _, where = leaf.partition(" (")
        file = where.rsplit(":", 1)[0]
        key = f"{name} ({file})" if file else name
        own[key] = own.get(key, 0) + n
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    return {"samples": total, "rate_hz": PYSPY_RATE,
            "top_own": [{"function": k, "samples": c, "percent": round(100 * c / total, 1) if total else 0.0}
                        for k, c in ranked]}


def profile_bringup(layout: Layout, daemon: Daemon, pods: dict[int, list[Volume]], n: int,
                    say: Callable[[str], None]) -> dict[str, Any]:
    """A second cold bring-up of the same N, under py-spy: the daemon stopped, its mounts
    removed, the manifests written again; sampled from exec until all N are mounted (then the
    daemon is stopped, which ends py-spy and writes the samples)."""
    daemon.stop()
    failed = unmount_all_under(str(layout.root))
    if failed:
        raise BenchError(f"profile: could not unmount {failed[:3]}")
    for p, vols in pods.items():
        write_atomically(layout.manifests / f"p{p:05d}.yaml", pod_manifest(layout, p, vols))
    out = layout.base / "profile.raw"
    daemon.start(profile_out=out)
    paths = [v.mount_path for vols in pods.values() for v in vols]
    took = wait_paths(paths, True, BRINGUP_TIMEOUT_SECONDS, daemon, "mounts under py-spy") - daemon.started_at
    time.sleep(0.2)  # the last completions' bookkeeping
    daemon.stop()
    try:
        raw = out.read_text()
    except OSError as e:
        raise BenchError(f"py-spy wrote no profile ({e}); log: {daemon.log_tail()[-600:]}") from None
    res = own_time_top(raw)
    res["raw"] = str(out)  # copied next to the JSON by main() (the case dir is removed)
    res["all_mounted_under_profiler_s"] = took
    res["sampled"] = "py-spy record --gil --nonblocking: the thread holding the GIL, exec -> all mounted + 0.2 s"
    for p in pods:
        (layout.manifests / f"p{p:05d}.yaml").unlink(missing_ok=True)
    say(f"  profile: {res['samples']} samples; top: " +
        ", ".join(f"{t['function']} {t['percent']}%" for t in res["top_own"][:3]))
    return res


# --- the full mix's devices --------------------------------------------------------------


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=BRINGUP_TIMEOUT_SECONDS)
    if r.returncode != 0:
        raise BenchError(f"{what}: {' '.join(cmd[:3])}: exit {r.returncode}: {r.stderr.strip()[-500:]}")


def prepare_devices(pods: dict[int, list[Volume]]) -> tuple[dict[str, str], dict[str, Any]]:
    """Sparse files for every local/CSI volume, attached (losetup) and formatted (mkfs.ext4):
    the floor mounts them. Returns (backing -> loop device, timings). Local volumes learn
    their device (their PV names it); CSI volumes' loops are detached again by `release_devices`
    so that the driver attaches its own, as it would for a new volume."""
    vols = [v for vs in pods.values() for v in vs if v.kind in DEVICE_KINDS]
    devices: dict[str, str] = {}
    t0 = time.monotonic()
    for v in vols:
        Path(v.backing).parent.mkdir(parents=True, exist_ok=True)
        make_sparse(Path(v.backing))
        try:
            devices[v.backing] = attach_loop(Path(v.backing))
        except LoopError as e:
            raise BenchError(str(e)) from None
        if v.kind == "local":
            v.device = devices[v.backing]
    t1 = time.monotonic()
    for v in vols:
        _run(["mkfs.ext4", "-q", "-F", devices[v.backing]], f"formatting {v.pv}")
    t2 = time.monotonic()
    out = {"devices": len(vols), "size_mib": 32, "attach_s": t1 - t0, "mkfs_s": t2 - t1,
           "mkfs_per_device_ms": 1000 * (t2 - t1) / max(1, len(vols)), "by": "losetup -f; mkfs.ext4 -q, one at a time"}
    return devices, out


def wipe_to_blank(device: str, what: str) -> None:
    """Make a device blank the way the README tells an operator to: the daemon formats only a
    device with no signature whose first and last MiB read as zeros, and ext4 leaves metadata
    there that ``wipefs -a`` alone does not remove."""
    _run(["wipefs", "-a", "-q", device], f"wiping {what}")
    size = int(subprocess.run(["blockdev", "--getsize64", device], capture_output=True, text=True,
                              check=True, timeout=30).stdout)
    _run(["blkdiscard", "-z", "-l", str(1 << 20), device], f"zeroing the first MiB of {what}")
    _run(["blkdiscard", "-z", "-o", str(size - (1 << 20)), "-l", str(1 << 20), device],
         f"zeroing the last MiB of {what}")


def release_devices(pods: dict[int, list[Volume]], devices: dict[str, str]) -> float:
    """After the floor: wipe the filesystems (the daemon and the driver format blank devices, as
    on first use) and detach the CSI volumes' loops. Returns the seconds it took."""
    t0 = time.monotonic()
    for v in (v for vs in pods.values() for v in vs if v.kind in DEVICE_KINDS):
        wipe_to_blank(devices[v.backing], v.pv)
        if v.kind == "csi":
            _run(["losetup", "-d", devices[v.backing]], f"detaching {v.pv}")
    return time.monotonic() - t0


def calls_by_method(plugin: CSILoopPlugin) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in plugin.calls():
        counts[c["method"]] = counts.get(c["method"], 0) + 1
    return counts


# --- the daemon --------------------------------------------------------------------------


class Daemon:
    """One daemon process; READY=1 is read from a datagram socket we bind as NOTIFY_SOCKET.

    The socket is drained on a thread for the daemon's whole life, as systemd does: a unix
    datagram socket queues only ``net.unix.max_dgram_qlen`` (10) messages, after which the
    daemon's next STATUS= send blocks.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None  # the daemon's own PID (under strace: strace's child)
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.notifications = 0
        self.socket_waits: list[float] = []  # seconds waited for a previous daemon's socket
        self._ready = threading.Event()
        self._notify: socket.socket | None = None
        self._drainer: threading.Thread | None = None
        self._log = None

    def command(self) -> list[str]:
        L = self.layout
        return [sys.executable, "-m", "volumemanager", "daemon", "--root-dir", str(L.root),
                "--socket", str(L.socket), "--manifest-dir", str(L.manifests),
                "--plugins-registry-dir", str(L.registry), "--metrics-address", "", "--node-name", "bench"]

    def start(self, strace_out: Path | None = None, profile_out: Path | None = None) -> None:
        self._wait_socket_free()
        if self.layout.notify.exists():
            self.layout.notify.unlink()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind(str(self.layout.notify))
        self._notify.settimeout(0.2)
        self._ready.clear()
        self.ready_at = None
        self._drainer = threading.Thread(target=self._drain, args=(self._notify,), daemon=True)
        self._drainer.start()
        env = dict(os.environ, NOTIFY_SOCKET=str(self.layout.notify))
        cmd = self.command()
        if strace_out is not None:
            cmd = ["strace", "-f", "-c", "-e", "trace=mount,umount2", "-o", str(strace_out), *cmd]
        elif profile_out is not None:
            cmd = [*pyspy_command(profile_out), *cmd]
        self._log = open(self.layout.base / "daemon.log", "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        if strace_out is not None or profile_out is not None:
            self.pid = self._traced_child()

    def _wait_socket_free(self, timeout: float = 10.0) -> None:
        """Wait until no previous daemon answers on the admin socket.

        Seen twice at N=100 after a restart under strace: the next daemon found the socket
        still answered and refused to start. Waiting here keeps one slow exit from failing
        the case; the wait is recorded so it is not hidden.
        """
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.layout.socket))
                except OSError:
                    break  # nobody listening (refused, or no socket file)
            if time.monotonic() > deadline:
                raise BenchError(f"a previous daemon still answers on {self.layout.socket} after {timeout:g}s")
            time.sleep(0.05)
        waited = time.monotonic() - t0
        if waited > 0.01:
            self.socket_waits.append(round(waited, 3))

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                msg = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return  # closed by stop()
            now = time.monotonic()
            self.notifications += 1
            if not self._ready.is_set() and b"READY=1" in msg.split(b"\n"):
                self.ready_at = now
                self._ready.set()

    def _traced_child(self) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            time.sleep(0.005)
        raise BenchError("strace (or py-spy) did not start the daemon within 10s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> float:
        """Seconds from start to the READY=1 datagram."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if time.monotonic() > deadline:
                raise BenchError(f"no READY=1 within {timeout:g}s (log: {self.log_tail()})")
            if not self.alive():
                raise BenchError(f"daemon exited before READY=1 (log: {self.log_tail()})")
        assert self.ready_at is not None
        return self.ready_at - self.started_at

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> float | None:
        """SIGTERM the daemon (by PID) and wait; kill if it does not stop. Seconds to exit."""
        if self.proc is None:
            return None
        took = None
        if self.proc.poll() is None:
            t0 = time.monotonic()
            try:
                os.kill(self.pid or self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
                took = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.pid and self.pid != self.proc.pid:
            # strace's tracee can outlive strace for a moment: make sure it is gone (or a
            # zombie, whose sockets are closed) before anyone starts the next daemon.
            if not _gone(self.pid, timeout):
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _gone(self.pid, 10)
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        if self._drainer is not None:
            self._drainer.join(2)
            self._drainer = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return took

    def log_tail(self) -> str:
        try:
            return (self.layout.base / "daemon.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""


def _gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` no longer exists or is a zombie; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = _stat_fields(pid)
        if f is None or f[0] in ("Z", "X"):
            return True
        time.sleep(0.01)
    return False


def parse_strace_counts(path: Path) -> dict[str, int]:
    """Call counts from ``strace -c`` output (the 'calls' column of each syscall row)."""
    counts: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return counts
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in ("mount", "umount2"):
            counts[parts[-1]] = int(parts[3])
    return counts


# --- one case ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def measure_case(base: Path, mix: str, n: int, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    layout = Layout(base)
    pods = plan_volumes(layout, n, args.volumes_per_pod, mix, args.device_fraction)
    kinds: dict[str, int] = {}
    for p, vols in pods.items():
        for v in vols:
            kinds[v.kind] = kinds.get(v.kind, 0) + 1
            if v.kind == "hostpath":
                (layout.hostpaths / f"{p}-{v.name}").mkdir(exist_ok=True)
    needle = layout.pods_needle
    res: dict[str, Any] = {"mix": mix, "n": n, "pods": len(pods), "volumes_per_pod": args.volumes_per_pod,
                           "manifest_layout": "one file per pod", "volumes_by_kind": kinds}
    daemon = Daemon(layout)
    plugin: CSILoopPlugin | None = None
    arrival_loop: PrivateLoop | None = None
    try:
        devices: dict[str, str] = {}
        if kinds.get("local") or kinds.get("csi"):
            say(f"[{mix} N={n}] {kinds.get('local', 0)} + {kinds.get('csi', 0)} loop devices: attach + mkfs.ext4")
            devices, res["format"] = prepare_devices(pods)
        # Floor first, on its own dir, so the daemon's numbers are not skewed by its mounts.
        say(f"[{mix} N={n}] floor bring-up / teardown x{args.floor_runs}")
        res["floor_up"], res["floor_down"] = best_floor(layout, pods, args.floor_runs, devices)
        if devices:
            res["format"]["wipe_and_detach_s"] = release_devices(pods, devices)
        if kinds.get("csi"):
            longest = max(str(layout.registry / f"{CSI_DRIVER}-reg.sock"), str(layout.csi / "csi.sock"), key=len)
            if len(os.fsencode(longest)) > UNIX_PATH_MAX:
                raise BenchError(f"{longest} is longer than a unix socket path may be ({UNIX_PATH_MAX} bytes): "
                                 "use a shorter --tmp-dir")
            plugin = CSILoopPlugin(layout.csi, driver_name=CSI_DRIVER, registration_dir=layout.registry,
                                   node_id="bench")
            plugin.start()  # before the daemon: its registration socket is there at start-up
            res["csi_driver"] = {"name": CSI_DRIVER, "pid": plugin.pid}

        for p, vols in pods.items():
            write_atomically(layout.manifests / f"p{p:05d}.yaml", pod_manifest(layout, p, vols))
        say(f"[{mix} N={n}] cold bring-up")
        mount_paths = [v.mount_path for vols in pods.values() for v in vols]
        daemon.start()
        if mix == "full":
            targets: dict[str, tuple[bytes | re.Pattern[bytes], int]] = {"all": (needle, n)}
            targets.update({k: (layout.kind_pattern(k), c) for k, c in kinds.items()})
            seen = wait_counts(targets, BRINGUP_TIMEOUT_SECONDS, daemon, "mounts at cold start")
        else:
            seen = {"all": wait_paths(mount_paths, True, BRINGUP_TIMEOUT_SECONDS, daemon, "mounts at cold start")}
            check_count(needle, n, "after the cold start")
        bringup = seen["all"] - daemon.started_at
        ready = daemon.wait_ready()
        res["bringup"] = {"all_mounted_s": bringup, "ready_s": ready,
                          "ratio_process": bringup / res["floor_up"]["process_s"],
                          "ratio_loop": bringup / res["floor_up"]["loop_s"]}
        if mix == "full":
            res["bringup"]["last_mounted_by_kind_s"] = {k: seen[k] - daemon.started_at for k in kinds}
            res["bringup"]["ratio_process_plus_mkfs"] = bringup / (res["floor_up"]["process_s"] + res["format"]["mkfs_s"])

        # Steady state: nothing changes; the bench only sleeps.
        time.sleep(1.0)  # let start-up stragglers (stats collectors, GC) settle
        say(f"[{mix} N={n}] steady state {args.steady_seconds:g}s")
        c0, d0, t0 = cpu_seconds(daemon.pid), _cpu_or_zero(plugin), time.monotonic()
        time.sleep(args.steady_seconds)
        c1, d1, t1 = cpu_seconds(daemon.pid), _cpu_or_zero(plugin), time.monotonic()
        res["steady"] = {"window_s": t1 - t0, "cpu_s": c1 - c0, "cpu_percent": 100 * (c1 - c0) / (t1 - t0)}
        if plugin is not None:
            res["steady"]["csi_driver_cpu_percent"] = 100 * (d1 - d0) / (t1 - t0)

        say(f"[{mix} N={n}] status / explain")
        some_pod = sorted(pods)[len(pods) // 2]
        res["queries"] = measure_queries(layout, f"bench/p{some_pod:05d}", daemon.pid)

        say(f"[{mix} N={n}] reaction latency x{args.trials}")
        res["reaction"] = measure_reaction(layout, daemon, args.trials, args.reaction_timeout)

        if mix == "full":
            say(f"[{mix} N={n}] device arrival latency x{args.arrival_trials}")
            backing = layout.base / "arrival.img"
            format_image(backing)
            arrival_loop = PrivateLoop()
            res["arrival"] = measure_device_arrival(
                layout.root, layout.manifests, layout.socket, daemon.alive, arrival_loop, backing,
                args.arrival_trials, args.reaction_timeout, lambda k: pod_uid(800000 + k))

        own, total = peak_rss_mb(daemon.pid)
        res["rss"] = {"daemon_vmhwm_mb": own, "with_children_vmhwm_mb": total}
        if plugin is not None and plugin.pid is not None:
            res["rss"]["csi_driver_vmhwm_mb"] = peak_rss_mb(plugin.pid)[1]

        say(f"[{mix} N={n}] restart")
        calls_before = calls_by_method(plugin) if plugin is not None else {}
        res["restart"] = measure_restart(layout, daemon, n, args)
        if plugin is not None:
            after = calls_by_method(plugin)
            res["restart"]["csi_calls"] = {m: c - calls_before.get(m, 0) for m, c in after.items()
                                           if c != calls_before.get(m, 0)}
            res["restart"]["csi_stage_publish_calls"] = sum(
                res["restart"]["csi_calls"].get(m, 0) for m in ("NodeStageVolume", "NodePublishVolume"))

        say(f"[{mix} N={n}] teardown")
        names = sorted(layout.manifests.glob("*.yaml"))
        t0 = time.monotonic()
        for path in names:
            path.unlink()
        if mix == "full":
            targets = {"all": (layout.root_needle, 0), "pods": (needle, 0)}
            targets.update({k: (layout.kind_pattern(k), 0) for k in kinds})
            gone = wait_counts(targets, BRINGUP_TIMEOUT_SECONDS, daemon, "mounts left after removal")
        else:
            gone = {"all": wait_dirs_gone(layout.root / "pods", {pod_uid(p) for p in pods}, BRINGUP_TIMEOUT_SECONDS,
                                          daemon, "pod dirs left after removal")}
            check_count(layout.root_needle, 0, "after the teardown")
        teardown = gone["all"] - t0
        res["teardown"] = {"all_unmounted_s": teardown,
                           "ratio_process": teardown / res["floor_down"]["process_s"],
                           "ratio_loop": teardown / res["floor_down"]["loop_s"]}
        if mix == "full":
            res["teardown"]["pod_mounts_gone_s"] = gone["pods"] - t0
            res["teardown"]["last_unmounted_by_kind_s"] = {k: gone[k] - t0 for k in kinds}
        if kinds.get("csi"):
            deadline = time.monotonic() + 30
            while loops_backed_under(layout.csi_volumes) and time.monotonic() < deadline:
                time.sleep(0.01)
            res["teardown"]["csi_loops_detached_s"] = time.monotonic() - t0
        if n in args.profile and mix != "full":
            say(f"[{mix} N={n}] profile of a second cold bring-up (py-spy)")
            res["profile"] = profile_bringup(layout, daemon, pods, n, say)
    except Exception as e:  # noqa: BLE001 - any failure of a phase is recorded; the next case runs
        res["error"] = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        say(f"[{mix} N={n}] ERROR: {res['error']}")
        if args.keep_logs_on_error:
            res["logs"] = keep_logs(layout, plugin, args.out, mix, n)
    finally:
        # Processes first (by PID), then mounts, then the loop devices under them.
        daemon.stop()
        if plugin is not None:
            plugin.stop()
        if daemon.socket_waits:
            res["waited_for_previous_daemon_socket_s"] = daemon.socket_waits
        failed = unmount_all_under(str(base))
        failed += detach_loops_under(base)
        if arrival_loop is not None:
            failed += arrival_loop.close()
        if failed:
            res["cleanup_failures"] = failed
        if args.keep_logs and "logs" not in res:
            res["logs"] = keep_logs(layout, plugin, args.out, mix, n)
    return res


def keep_logs(layout: Layout, plugin: CSILoopPlugin | None, out: Path, mix: str, n: int) -> list[str]:
    """Copy the daemon's (and the CSI driver's) log next to the JSON; their new paths."""
    out.mkdir(parents=True, exist_ok=True)
    kept = []
    sources = [("daemon", layout.base / "daemon.log")]
    if plugin is not None:
        sources.append(("csi-driver", plugin.stderr_path))
    for what, src in sources:
        if src.exists():
            dst = out / f"{what}-{mix}-{n}-{os.getpid()}.log"
            shutil.copyfile(src, dst)
            kept.append(str(dst))
    return kept


def _cpu_or_zero(plugin: CSILoopPlugin | None) -> float:
    return cpu_seconds(plugin.pid) if plugin is not None and plugin.pid is not None else 0.0


def measure_reaction(layout: Layout, daemon: Daemon, trials: int, timeout: float) -> dict[str, Any]:
    """One extra pod with one tmpfs volume: rename into place -> mounted; remove -> unmounted.

    A trial not mounted within `timeout` counts as missed (with `timeout` as its latency, so a
    miss shows in p99); its manifest is removed and the next trial starts once nothing is left.
    """
    up, down, missed = [], [], []
    with MountInfoWatcher() as w:
        for k in range(trials):
            index = 900000 + k
            vol = Volume(index, "r", "tmpfs",
                         str(layout.root / "pods" / pod_uid(index) / "volumes" / "kubernetes.io~empty-dir" / "r"))
            path = layout.manifests / f"r{index}.yaml"
            tmp = layout.manifests / f".r{index}.yaml.tmp"
            tmp.write_text(pod_manifest(layout, index, [vol], prefix="r"))
            mark = b" " + os.fsencode(vol.mount_path) + b" "
            w.wait(0)  # re-arm: forget changes made before the trial
            t0 = time.monotonic()
            os.replace(tmp, path)
            seen = _wait_mark(w, mark, True, daemon, timeout, vol.mount_path)
            up.append((seen - t0) if seen is not None else timeout)
            if seen is None:
                missed.append(k)
            t0 = time.monotonic()
            path.unlink()
            gone = _wait_mark(w, mark, False, daemon, max(timeout, 30.0), vol.mount_path)
            if gone is None:
                raise BenchError(f"reaction trial {k}: {vol.mount_path} still mounted 30s after its manifest went")
            if seen is not None:
                down.append(gone - t0)
    ms = lambda xs: [x * 1000 for x in xs]  # noqa: E731
    return {"trials": trials, "missed": len(missed), "missed_trials": missed, "miss_timeout_s": timeout,
            "mount_p50_ms": percentile(ms(up), 50), "mount_p99_ms": percentile(ms(up), 99),
            "mount_max_ms": max(ms(up)),
            "unmount_p50_ms": percentile(ms(down), 50) if down else None,
            "unmount_p99_ms": percentile(ms(down), 99) if down else None,
            "mount_ms": [round(x, 3) for x in ms(up)], "unmount_ms": [round(x, 3) for x in ms(down)]}


def is_mount_root(path: str) -> bool | None:
    """Whether `path` is a mount point, from one statx (None: the kernel cannot say)."""
    try:
        return sc.statx_mount_root(path)
    except OSError:
        return False  # not there (yet, or any more): not mounted


def _wait_mark(w: MountInfoWatcher, mark: bytes, present: bool, daemon: Daemon, timeout: float,
               path: str | None = None) -> float | None:
    """time.monotonic() when `mark` is (or is no longer) in mountinfo; None after `timeout`.

    With `path` (the mount point), one statx answers instead of a read of the whole of
    mountinfo: at 10,000 mounts that read takes ~10-20 ms, holds the namespace lock the
    daemon's mount(2) needs, and would be most of what the trial measures."""
    deadline = time.monotonic() + timeout
    while True:
        # The clock is read after the look, never before: if the bench is preempted between
        # the two (the daemon wakes on the same 2 cores), a clock read first would date a
        # mount made during the preemption to before it existed (seen: 0.05 ms "latencies").
        # Reading after errs the other way, by the duration of one look.
        found = is_mount_root(path) if path is not None else None
        if found is None:
            found = mark in read_mountinfo_bytes()
        now = time.monotonic()
        if found == present:
            return now
        if not daemon.alive():
            raise BenchError(f"reaction: daemon exited (log: {daemon.log_tail()[-600:]})")
        if now > deadline:
            return None
        w.wait(min(0.2, deadline - now + 0.001))


def measure_restart(layout: Layout, daemon: Daemon, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """SIGTERM with N mounted, start again -> READY; mount IDs must not change.

    With strace, one extra restart under ``strace -f -c`` counts mount/umount2 calls; READY
    is timed on a restart without strace (ptrace slows start-up several fold).
    """
    out: dict[str, Any] = {}
    before = sorted(mounts_under(str(layout.root)))
    out["stop_s"] = daemon.stop()
    if shutil.which("strace") and not args.no_strace:
        trace = layout.base / "strace.txt"
        daemon.start(strace_out=trace)
        out["ready_under_strace_s"] = daemon.wait_ready()
        time.sleep(0.5)  # a pass right after READY would still show up
        daemon.stop()
        counts = parse_strace_counts(trace)
        out["mount_syscalls"] = counts.get("mount", 0)
        out["umount_syscalls"] = counts.get("umount2", 0)
        out["syscalls_counted_by"] = "strace -f -c -e trace=mount,umount2"
    else:
        out["syscalls_counted_by"] = "mount IDs before/after (strace not available)"
    daemon.start()
    out["ready_s"] = daemon.wait_ready()
    after = sorted(mounts_under(str(layout.root)))
    out["mounts_before"] = len(before)
    out["mount_ids_unchanged"] = before == after
    if "mount_syscalls" not in out:
        out["mount_syscalls"] = len(set(after) - set(before))
    return out


# --- output ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {"nproc": os.cpu_count(), "mem_total_mb": mem_kb // 1024, "kernel": platform.release(),
            "python": platform.python_version(), "commit": commit, "worktree_dirty": dirty}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3f}{unit}" if value < 10 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def _ok(value: Any, target: float, lower_is_better: bool = True) -> str:
    if value is None:
        return ""
    return "ok" if (value <= target if lower_is_better else value >= target) else "MISSED"


def _floor_rows(g: Callable[..., Any], floor: str, phase: str, target: str, label: str,
                T: dict[str, float]) -> list[tuple[str, ...]]:
    """The table rows comparing one phase (bring-up, teardown) with its floor."""
    return [
        ("", f"  {label}, fastest of {len(g(floor, 'runs_process_s') or [1])}", _fmt(g(floor, "process_s"), " s"),
         "", ""),
        ("", "  floor: loop only", _fmt(g(floor, "loop_s"), " s"), "", ""),
        ("", "  ratio vs floor process", _fmt(g(phase, "ratio_process"), "x"),
         f"<= {T[target]:g}x", _ok(g(phase, "ratio_process"), T[target])),
        ("", "  ratio vs floor loop", _fmt(g(phase, "ratio_loop"), "x"), "", ""),
    ]


def _latency_rows(g: Callable[..., Any], key: str, label: str, removed_label: str,
                  T: dict[str, float]) -> list[tuple[str, ...]]:
    """The table rows of one latency phase (reaction, device arrival): p50, p99, missed, removal."""
    return [
        ("", f"{label} p50 (x{g(key, 'trials')})", _fmt(g(key, "mount_p50_ms"), " ms"),
         f"<= {T['reaction_p50_ms']:g} ms", _ok(g(key, "mount_p50_ms"), T["reaction_p50_ms"])),
        ("", "  p99", _fmt(g(key, "mount_p99_ms"), " ms"), f"<= {T['reaction_p99_ms']:g} ms",
         _ok(g(key, "mount_p99_ms"), T["reaction_p99_ms"])),
        ("", "  missed (not mounted within timeout)", _fmt(g(key, "missed")), "0", _ok(g(key, "missed"), 0)),
        ("", f"  {removed_label} p50 / p99",
         f"{_fmt(g(key, 'unmount_p50_ms'))} / {_fmt(g(key, 'unmount_p99_ms'), ' ms')}", "", ""),
    ]


def table(results: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, str, str, str, str]] = [("case", "metric", "value", "target", "")]
    for r in results:
        case = f"{r['mix']} N={r['n']}"
        g = lambda *ks: _dig(r, ks)  # noqa: E731
        T = targets_for(r["mix"])
        full = r["mix"] == "full"
        kinds = r.get("volumes_by_kind") or {}
        if full:
            rows += [(case, "volumes: " + ", ".join(f"{c} {k}" for k, c in kinds.items()), "", "", ""),
                     ("", f"  format: mkfs.ext4 x{g('format', 'devices')} (serial, by the bench)",
                      _fmt(g("format", "mkfs_s"), " s"), "", ""),
                     ("", "  format: per device", _fmt(g("format", "mkfs_per_device_ms"), " ms"), "", "")]
            case = ""
        rows += [
            (case, "cold bring-up (all mounted)", _fmt(g("bringup", "all_mounted_s"), " s"), "", ""),
        ]
        if full:
            rows += [("", f"  last {k} mounted", _fmt(g("bringup", "last_mounted_by_kind_s", k), " s"), "", "")
                     for k in kinds]
        rows += [
            *_floor_rows(g, "floor_up", "bringup", "bringup_ratio", "floor: process (interp+imports+loop)", T),
        ]
        if full:
            rows.append(("", "  ratio vs floor process + mkfs", _fmt(g("bringup", "ratio_process_plus_mkfs"), "x"),
                         "", ""))
        rows += [
            ("", "  start -> READY", _fmt(g("bringup", "ready_s"), " s"), "", ""),
            ("", "teardown (all unmounted)", _fmt(g("teardown", "all_unmounted_s"), " s"), "", ""),
        ]
        if full:
            rows += [("", "  pod mounts gone", _fmt(g("teardown", "pod_mounts_gone_s"), " s"), "", "")]
            rows += [("", f"  last {k} unmounted", _fmt(g("teardown", "last_unmounted_by_kind_s", k), " s"), "", "")
                     for k in kinds]
            rows += [("", "  CSI loops detached", _fmt(g("teardown", "csi_loops_detached_s"), " s"), "", "")]
        rows += [
            *_floor_rows(g, "floor_down", "teardown", "teardown_ratio", "floor: process", T),
            *_latency_rows(g, "reaction", "reaction: manifest -> mounted", "removed -> unmounted", T),
        ]
        if full:
            rows += _latency_rows(g, "arrival", "device attached -> mounted", "removed -> pod + global unmounted", T)
        rows += [
            ("", "status (admin socket, whole answer)", _fmt(g("queries", "status_min_ms"), " ms"),
             f"<= {T['status_ms']:g} ms", _ok(g("queries", "status_min_ms"), T["status_ms"])),
            ("", "  status: daemon CPU per call", _fmt(g("queries", "status_daemon_cpu_ms"), " ms"), "", ""),
            ("", "explain POD", _fmt(g("queries", "explain_min_ms"), " ms"),
             f"<= {T['explain_ms']:g} ms", _ok(g("queries", "explain_min_ms"), T["explain_ms"])),
        ]
        rows += [
            ("", f"idle CPU over {_fmt(g('steady', 'window_s'), ' s')}", _fmt(g("steady", "cpu_percent"), " %"),
             f"<= {T['idle_cpu_percent']:g} %", _ok(g("steady", "cpu_percent"), T["idle_cpu_percent"])),
        ]
        if full:
            rows.append(("", "  CSI driver process (not counted)", _fmt(g("steady", "csi_driver_cpu_percent"), " %"),
                         "", ""))
        rows += [
            ("", "peak RSS daemon+children (VmHWM)", _fmt(g("rss", "with_children_vmhwm_mb"), " MB"),
             f"<= {T['rss_mb']:g} MB", _ok(g("rss", "with_children_vmhwm_mb"), T["rss_mb"])),
        ]
        if full:
            rows.append(("", "  CSI driver process (not counted)", _fmt(g("rss", "csi_driver_vmhwm_mb"), " MB"), "", ""))
        rows += [
            ("", "restart: SIGTERM -> exit", _fmt(g("restart", "stop_s"), " s"), "", ""),
            ("", "restart: start -> READY", _fmt(g("restart", "ready_s"), " s"),
             f"<= {T['restart_ready_s']:g} s", _ok(g("restart", "ready_s"), T["restart_ready_s"])),
            ("", "restart: mount syscalls", _fmt(g("restart", "mount_syscalls")), "0",
             _ok(g("restart", "mount_syscalls"), 0)),
            ("", "restart: umount2 syscalls", _fmt(g("restart", "umount_syscalls")), "", ""),
            ("", "restart: mount IDs unchanged", _fmt(g("restart", "mount_ids_unchanged")), "yes", ""),
        ]
        if full:
            rows.append(("", "restart: CSI NodeStage+NodePublish calls", _fmt(g("restart", "csi_stage_publish_calls")),
                         "0", _ok(g("restart", "csi_stage_publish_calls"), 0)))
        if r.get("profile"):
            rows.append(("", f"profile of bring-up: {g('profile', 'samples')} samples (GIL holder), top by own time",
                         "", "", ""))
            rows += [("", f"  {t['function'][:90]}", f"{t['percent']} %", "", "") for t in g("profile", "top_own")]
        if r.get("cleanup_failures"):
            rows.append(("", "CLEAN-UP FAILED (see JSON)", "", "", ""))
        if "error" in r:
            rows.append(("", "ERROR (see below)", "", "", ""))
    rows += growth_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in results:
        if "error" in r:
            lines.append(f"\nERROR in {r['mix']} N={r['n']}: {r['error'][:1500]}")
    return "\n".join(lines)


GROWTH_TARGET = 1.2  # issue 16: at 10,000 volumes within 1.2x of the value at 1,000


def growth_rows(results: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """Issue 16's growth bounds, for each mix measured at both 1,000 and 10,000 volumes:
    bring-up per volume, reaction p50 and idle CPU at 10,000 over their values at 1,000."""
    rows: list[tuple[str, str, str, str, str]] = []
    by = {(r["mix"], r["n"]): r for r in results if "error" not in r}
    for mix in MIXES:
        small, big = by.get((mix, 1000)), by.get((mix, 10000))
        if small is None or big is None:
            continue
        pairs = [
            ("bring-up per volume", _dig(big, ("bringup", "all_mounted_s")), _dig(small, ("bringup", "all_mounted_s")),
             10.0),
            ("reaction p50", _dig(big, ("reaction", "mount_p50_ms")), _dig(small, ("reaction", "mount_p50_ms")), 1.0),
            ("idle CPU", _dig(big, ("steady", "cpu_percent")), _dig(small, ("steady", "cpu_percent")), 1.0),
        ]
        case = f"{mix} 10000 vs 1000"
        for label, b, a, scale in pairs:
            ratio = (b / scale) / a if a and b is not None else None
            rows.append((case, f"growth: {label}", _fmt(ratio, "x"), f"<= {GROWTH_TARGET:g}x",
                         _ok(ratio, GROWTH_TARGET) if ratio is not None else ""))
            case = ""
    return rows


def _dig(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, action="append", help="volumes per case (repeatable; default 100 and 1000)")
    ap.add_argument("--mix", choices=MIXES, action="append",
                    help="tmpfs: emptyDir medium=Memory only; hostpath: half tmpfs emptyDir, half hostPath; "
                         "full: local PVs on loop devices + CSI volumes (tests.csi_loop), --device-fraction of N "
                         "each, the rest half tmpfs half hostPath, plus the device-arrival latency. "
                         "Repeatable; default tmpfs and full")
    ap.add_argument("--volumes-per-pod", type=int, default=4)
    ap.add_argument("--floor-runs", type=int, default=3,
                    help="run the floor this many times and compare with the fastest (default %(default)s)")
    ap.add_argument("--profile", type=int, action="append", metavar="N",
                    help="profile a second cold bring-up of the tmpfs/hostpath case with this N under py-spy "
                         "(top 10 functions by own time; repeatable; default 1000 when py-spy is installed)")
    ap.add_argument("--no-profile", action="store_true", help="no py-spy profile")
    ap.add_argument("--quick", action="store_true", help="steady-state window of 10 s instead of 60 s")
    ap.add_argument("--steady-seconds", type=float, help="steady-state window (overrides --quick)")
    ap.add_argument("--trials", type=int, default=100, help="reaction-latency trials (default 100)")
    ap.add_argument("--arrival-trials", type=int, help="device-arrival trials of the full mix (default: --trials)")
    ap.add_argument("--device-fraction", type=float, default=DEVICE_FRACTION,
                    help="full mix: fraction of N that are local PVs, and again CSI volumes (default %(default)s)")
    ap.add_argument("--reaction-timeout", type=float, default=REACTION_TIMEOUT_SECONDS,
                    help="a reaction trial not mounted by then counts as missed (default %(default)s s)")
    ap.add_argument("--keep-logs-on-error", action="store_true",
                    help="copy the daemon (and CSI driver) log of a failed case next to the JSON")
    ap.add_argument("--keep-logs", action="store_true", help="copy the logs of every case next to the JSON")
    ap.add_argument("--no-strace", action="store_true", help="count mount syscalls by mount IDs only")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="directory for the JSON result")
    ap.add_argument("--tmp-dir", type=Path, default=None, help="parent of the bench's temp dir (default /tmp)")
    args = ap.parse_args(argv)
    args.n = args.n or [100, 1000]
    if args.no_profile:
        args.profile = []
    elif args.profile is None:
        args.profile = [1000] if pyspy_path() is not None else []
    elif pyspy_path() is None:
        ap.error("--profile needs py-spy: pip install -e '.[bench]'")
    args.mix = args.mix or list(DEFAULT_MIXES)
    if args.arrival_trials is None:
        args.arrival_trials = args.trials
    if args.steady_seconds is None:
        args.steady_seconds = 10.0 if args.quick else 60.0
    if any(n < 1 for n in args.n) or args.volumes_per_pod < 1 or args.trials < 1 or args.arrival_trials < 1 \
            or args.floor_runs < 1:
        ap.error("--n, --volumes-per-pod, --trials, --arrival-trials and --floor-runs must be >= 1")
    if not 0 < args.device_fraction <= 0.5:
        ap.error("--device-fraction must be in (0, 0.5]")
    if "full" in args.mix and any(sum(device_counts(n, "full", args.device_fraction)) > n for n in args.n):
        ap.error("--mix full needs N >= 2 (at least one local PV and one CSI volume)")
    return args


PACKAGES = ("mount_utils", "operation_executor", "volumemanager", "tests/csi_loop")


# The installed dependencies the daemon may import (pip compiled them when it installed them;
# compileall only checks that their .pyc files are there and current).
DEPENDENCIES = ("yaml", "watchdog", "pyudev", "psutil", "prometheus_client", "rich", "grpc", "google.protobuf",
                "lightkube")


def dependency_dirs() -> list[str]:
    import importlib.util

    out = []
    for name in DEPENDENCIES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for where in (spec.submodule_search_locations or []) if spec is not None else []:
            out.append(where)
    return out


def precompile(top: Path) -> str:
    """Byte-compile our packages where Python looks for them (``__pycache__`` beside the
    sources, git-ignored), for the daemon, the floor and the CSI driver, as an installed
    package is, and let the children read them.

    Without it a daemon started where ``PYTHONDONTWRITEBYTECODE`` is set (as in this
    workspace) compiles every module of its own at every start: ~20 % of the bring-up's
    GIL-held time in a py-spy profile, and none of it the daemon's doing. (An earlier version
    used ``PYTHONPYCACHEPREFIX``, but then Python looks *only* under the prefix, so the
    standard library and the dependencies were compiled at every start instead: 9 % of the
    GIL time at 1,000 volumes.)"""
    os.environ.pop("PYTHONPYCACHEPREFIX", None)
    was_set = os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None
    r = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *PACKAGES, *dependency_dirs()],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise BenchError(f"compileall failed: {(r.stdout + r.stderr)[-1000:]}")
    return f"precompiled in place (__pycache__){'; PYTHONDONTWRITEBYTECODE unset' if was_set else ''}"


def remove_if_unmounted(top: Path, failed: list[str], say: Callable[[str], None]) -> bool:
    """Remove `top` only when nothing is mounted below it and no loop device is backed by a file
    in it (a recursive delete would otherwise go into a mounted volume)."""
    if failed or mounts_under(str(top)) or loops_backed_under(top):
        say(f"clean-up incomplete under {top}: {failed or 'mounts or loop devices left'}; leaving it in place")
        return False
    shutil.rmtree(top, ignore_errors=True)
    return True


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root (it mounts); run it with sudo", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    top = Path(tempfile.mkdtemp(prefix="vm-bench-", dir=args.tmp_dir))
    started = time.time()
    host = machine()  # before the run: the commit being measured, not whatever is checked out later
    results: list[dict[str, Any]] = []
    interrupted = False
    try:
        host["bytecode"] = precompile(top)
        for mix in args.mix:
            for n in args.n:
                case_dir = top / f"{mix}-{n}"
                case_dir.mkdir()
                results.append(measure_case(case_dir, mix, n, args, say))
                raw = _dig(results[-1], ("profile", "raw"))
                if raw and os.path.exists(raw):  # py-spy's collapsed stacks, for a flame graph
                    args.out.mkdir(parents=True, exist_ok=True)
                    kept = args.out / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}-{mix}-{n}-profile.raw"
                    shutil.copyfile(raw, kept)
                    results[-1]["profile"]["raw"] = str(kept)
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted; cleaning up")
    finally:
        # Each case cleans up after itself; this catches a case interrupted inside its own
        # clean-up. Mounts first, then loop devices (a mounted one would only be auto-cleared).
        failed = unmount_all_under(str(top))
        failed += detach_loops_under(top)
        remove_if_unmounted(top, failed, say)
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "machine": host,
              "args": {"n": args.n, "mix": args.mix, "volumes_per_pod": args.volumes_per_pod,
                       "steady_seconds": args.steady_seconds, "trials": args.trials,
                       "arrival_trials": args.arrival_trials, "device_fraction": args.device_fraction,
                       "floor_runs": args.floor_runs, "profile": args.profile},
              "targets": {"tmpfs_and_hostpath": TARGETS, "full": TARGETS_FULL_MIX}, "results": results, "interrupted": interrupted}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    print(f"volumemanager bench  commit {m['commit'][:12]}{' (dirty)' if m['worktree_dirty'] else ''}  "
          f"{m['nproc']} cpus  {m['mem_total_mb']} MB  kernel {m['kernel']}  python {m['python']}")
    print(table(results))
    print(f"\nJSON: {out}")
    if interrupted:
        return 130  # as a shell reports SIGINT; the JSON holds the cases that finished
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
