#!/usr/bin/env python3
"""Device arrival -> mounted: how long after a local PV's loop device is attached the pod's
volume is mounted (the kernel uevent wakes the waiting volume; the slow re-check is only a
fallback). Prints p50/p99 over --trials; never asserts.

    .venv/bin/python bench/device_arrival.py [--trials 100]      (as root)

The same measurement is a phase of ``bench/run.py --mix full`` (with N volumes mounted); this
script runs it alone against a daemon with nothing else to do. The loop-device helpers used by
``run.py`` live here too: attaching with ``losetup``, a private loop index for the arrival
trials (``LOOP_CTL_ADD``), and detaching every loop device backed by a file below a directory.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from mount_utils.mountinfo import MountInfoWatcher  # noqa: E402
from volumemanager import admin_api  # noqa: E402

LOOP_SET_FD, LOOP_CLR_FD = 0x4C00, 0x4C01
LOOP_CTL_ADD, LOOP_CTL_REMOVE = 0x4C80, 0x4C81
# Private loop indexes for the arrival trials: far above what `losetup -f` hands out here, so
# no other user attaches "our" device between two trials.
PRIVATE_LOOP_INDEXES = range(600, 700)
# A removed loop device can stay busy for a moment after its last unmount (the kernel's
# release is asynchronous); LOOP_CTL_REMOVE / LOOP_CLR_FD are retried this long.
LOOP_BUSY_RETRY_SECONDS = 5.0
# After the manifest is written the daemon parses it and reports the volume "waiting" for the
# device within a pass; at N=1,000 that takes well under a second.
WAITING_TIMEOUT_SECONDS = 20.0
# How often `status` is asked while waiting for "waiting" (each ask costs the daemon a status
# build of every row, so not in a tight loop).
STATUS_POLL_SECONDS = 0.02
# Unmount after the manifest goes; generous, a miss here is an error, not a latency.
UNMOUNT_TIMEOUT_SECONDS = 30.0
DEVICE_SIZE_BYTES = 32 << 20
COMMAND_TIMEOUT_SECONDS = 60


class LoopError(RuntimeError):
    """A loop device could not be attached, detached or removed; the message names it."""


# --- loop devices ------------------------------------------------------------------------


def make_sparse(path: Path, size: int = DEVICE_SIZE_BYTES) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def attach_loop(backing: Path) -> str:
    """``losetup -f --show``: attach `backing` to the first free loop device; its path."""
    r = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                       timeout=COMMAND_TIMEOUT_SECONDS)
    if r.returncode != 0:
        raise LoopError(f"losetup -f {backing}: {r.stderr.strip()}")
    return r.stdout.strip()


def loops_backed_under(directory: str | Path) -> list[str]:
    """Loop devices (``/dev/loopN``) whose backing file is below `directory` (from sysfs)."""
    prefix = os.path.realpath(directory).rstrip("/") + "/"
    found = []
    for entry in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(entry) as f:
                backing = f.read().strip().removesuffix(" (deleted)")
        except OSError:
            continue  # detached meanwhile
        if backing.startswith(prefix):
            found.append("/dev/" + entry.split("/")[3])
    return sorted(found)


def detach_loops_under(directory: str | Path) -> list[str]:
    """``losetup -d`` every loop device backed by a file below `directory`; returns failures.

    Call it after unmounting: a mounted loop device is only marked auto-clear by the kernel.
    """
    failed = []
    for dev in loops_backed_under(directory):
        r = subprocess.run(["losetup", "-d", dev], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS)
        if r.returncode != 0:
            failed.append(f"{dev}: {r.stderr.strip()}")
    deadline = time.monotonic() + LOOP_BUSY_RETRY_SECONDS
    while loops_backed_under(directory) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = loops_backed_under(directory)
    return failed + [f"{dev}: still attached" for dev in left if not any(f.startswith(dev + ":") for f in failed)]


class PrivateLoop:
    """One loop device node of our own (``LOOP_CTL_ADD`` of an unused index), attached and
    detached with ioctls so that the timed section holds no fork/exec of ``losetup``."""

    def __init__(self) -> None:
        self.index: int | None = None
        self._ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for index in PRIVATE_LOOP_INDEXES:
                try:
                    self.index = fcntl.ioctl(self._ctl, LOOP_CTL_ADD, index)
                    break
                except OSError as e:
                    if e.errno != errno.EEXIST:
                        raise
            if self.index is None:
                raise LoopError(f"no free private loop index in {PRIVATE_LOOP_INDEXES}")
        except BaseException:
            os.close(self._ctl)
            raise

    @property
    def device(self) -> str:
        return f"/dev/loop{self.index}"

    def attach(self, backing: Path) -> None:
        bfd = os.open(backing, os.O_RDWR | os.O_CLOEXEC)
        try:
            dfd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(dfd, LOOP_SET_FD, bfd)
            finally:
                os.close(dfd)
        finally:
            os.close(bfd)

    def attached(self) -> bool:
        return os.path.exists(f"/sys/block/loop{self.index}/loop/backing_file")

    def detach(self) -> None:
        """LOOP_CLR_FD; ENXIO (not attached) is fine. Waits until the kernel has let go."""
        deadline = time.monotonic() + LOOP_BUSY_RETRY_SECONDS
        while self.attached():
            try:
                fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return
            try:
                fcntl.ioctl(fd, LOOP_CLR_FD, 0)
            except OSError as e:
                if e.errno not in (errno.ENXIO, errno.EBUSY):
                    raise LoopError(f"LOOP_CLR_FD {self.device}: {e.strerror}") from None
            finally:
                os.close(fd)
            if time.monotonic() > deadline:
                raise LoopError(f"{self.device} still attached {LOOP_BUSY_RETRY_SECONDS:g}s after LOOP_CLR_FD")
            time.sleep(0.01)

    def close(self) -> list[str]:
        """Detach and remove the device node; returns failures (for the clean-up report)."""
        failed = []
        if self.index is None:
            return failed
        try:
            self.detach()
        except (OSError, LoopError) as e:
            failed.append(str(e))
        deadline = time.monotonic() + LOOP_BUSY_RETRY_SECONDS
        while True:
            try:
                fcntl.ioctl(self._ctl, LOOP_CTL_REMOVE, self.index)
                break
            except OSError as e:
                if e.errno == errno.ENODEV:
                    break
                if time.monotonic() > deadline:
                    failed.append(f"LOOP_CTL_REMOVE {self.device}: {e.strerror}")
                    break
                time.sleep(0.05)
        os.close(self._ctl)
        self.index = None
        return failed


# --- the trials --------------------------------------------------------------------------


def arrival_manifest(name: str, uid: str, pv: str, device: str) -> str:
    return f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}}}
spec:
  accessModes: [ReadWriteOnce]
  local: {{path: {device}, fsType: ext4}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {pv}, namespace: bench}}
spec: {{volumeName: {pv}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: bench, uid: {uid}}}
spec:
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {pv}}}
"""


def _mounted(mark: bytes) -> bool:
    with open("/proc/self/mountinfo", "rb") as f:
        return mark in f.read()


def _wait(w: MountInfoWatcher, mark: bytes, present: bool, alive: Callable[[], bool], timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while True:
        found = _mounted(mark)
        now = time.monotonic()  # after the read, never before (see run._wait_mark)
        if found == present:
            return now
        if not alive():
            raise RuntimeError("device arrival: the daemon exited")
        if now > deadline:
            return None
        w.wait(min(0.2, deadline - now + 0.001))


def _volume_rows(socket_path: str, pod: str) -> list[dict[str, Any]]:
    status = admin_api.call(socket_path, "status", timeout=30)
    return [v for v in status.get("volumes", []) if v.get("pod") == pod]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def measure_device_arrival(root: Path, manifests: Path, socket_path: Path, alive: Callable[[], bool],
                           loop: PrivateLoop, backing: Path, trials: int, timeout: float,
                           uid_of: Callable[[int], str]) -> dict[str, Any]:
    """`trials` times: a pod on a local PV whose device (`loop`) has nothing attached is written,
    the daemon reports it "waiting"; then LOOP_SET_FD attaches `backing` (an ext4 image) and the
    time until the pod's mount is in mountinfo is one sample. The manifest is then removed and
    the time until both the pod mount and the PV's global mount are gone is the unmount sample.

    A trial not mounted within `timeout` counts as missed (with `timeout` as its latency).
    """
    up: list[float] = []
    down: list[float] = []
    missed: list[int] = []
    with MountInfoWatcher() as w:
        for k in range(trials):
            name, pv, uid = f"a{k:05d}", f"pv-arrival-{k}", uid_of(k)
            pod_mp = root / "pods" / uid / "volumes" / "kubernetes.io~local-volume" / pv
            global_mp = root / "plugins" / "kubernetes.io" / "local-volume" / "mounts" / pv
            pod_mark = b" " + os.fsencode(str(pod_mp)) + b" "
            global_mark = b" " + os.fsencode(str(global_mp)) + b" "
            path = manifests / f"{name}.yaml"
            tmp = manifests / f".{name}.yaml.tmp"
            tmp.write_text(arrival_manifest(name, uid, pv, loop.device))
            os.replace(tmp, path)
            deadline = time.monotonic() + WAITING_TIMEOUT_SECONDS
            while not any(r.get("state") == "waiting" for r in _volume_rows(str(socket_path), f"bench/{name}")):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"device arrival trial {k}: bench/{name} not 'waiting' for {loop.device} "
                                       f"within {WAITING_TIMEOUT_SECONDS:g}s")
                if not alive():
                    raise RuntimeError("device arrival: the daemon exited")
                time.sleep(STATUS_POLL_SECONDS)
            w.wait(0)  # re-arm: forget changes made before the trial
            t0 = time.monotonic()
            loop.attach(backing)
            seen = _wait(w, pod_mark, True, alive, timeout)
            up.append((seen - t0) if seen is not None else timeout)
            if seen is None:
                missed.append(k)
            t0 = time.monotonic()
            path.unlink()
            if seen is None:
                # The mount may still come after the manifest went: wait for the daemon to
                # forget the pod before judging "unmounted".
                deadline = time.monotonic() + UNMOUNT_TIMEOUT_SECONDS
                while _volume_rows(str(socket_path), f"bench/{name}") and time.monotonic() < deadline:
                    time.sleep(0.05)
            gone_pod = _wait(w, pod_mark, False, alive, UNMOUNT_TIMEOUT_SECONDS)
            gone = _wait(w, global_mark, False, alive, UNMOUNT_TIMEOUT_SECONDS)
            if gone_pod is None or gone is None:
                raise RuntimeError(f"device arrival trial {k}: {pod_mp if gone_pod is None else global_mp} "
                                   f"still mounted {UNMOUNT_TIMEOUT_SECONDS:g}s after its manifest went")
            if seen is not None:
                down.append(gone - t0)
            loop.detach()
    ms = [x * 1000 for x in up]
    ms_down = [x * 1000 for x in down]
    return {"trials": trials, "missed": len(missed), "missed_trials": missed, "miss_timeout_s": timeout,
            "attach_by": "ioctl(LOOP_SET_FD) on a private loop index",
            "mount_p50_ms": _percentile(ms, 50), "mount_p99_ms": _percentile(ms, 99), "mount_max_ms": max(ms),
            "unmount_p50_ms": _percentile(ms_down, 50), "unmount_p99_ms": _percentile(ms_down, 99),
            "mount_ms": [round(x, 3) for x in ms], "unmount_ms": [round(x, 3) for x in ms_down]}


def format_image(path: Path) -> None:
    """A sparse ext4 image (formatted once, outside any timing)."""
    make_sparse(path)
    r = subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], capture_output=True, text=True,
                       timeout=COMMAND_TIMEOUT_SECONDS)
    if r.returncode != 0:
        raise LoopError(f"mkfs.ext4 {path}: {r.stderr.strip()}")


# --- standalone --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import run  # bench/run.py: the daemon wrapper and the clean-up helpers (imported late: it imports us)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=run.REACTION_TIMEOUT_SECONDS,
                    help="a trial not mounted by then counts as missed (default %(default)s s)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/device_arrival.py needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="vm-bench-arrival-"))
    layout = run.Layout(base)
    daemon = run.Daemon(layout)
    loop: PrivateLoop | None = None
    result: dict[str, Any] | None = None
    try:
        backing = base / "arrival.img"
        format_image(backing)
        loop = PrivateLoop()
        daemon.start()
        daemon.wait_ready()
        result = measure_device_arrival(layout.root, layout.manifests, layout.socket, daemon.alive, loop, backing,
                                        args.trials, args.timeout, lambda k: run.pod_uid(800000 + k))
    finally:
        daemon.stop()
        failed = run.unmount_all_under(str(base))
        failed += detach_loops_under(base)
        if loop is not None:
            failed += loop.close()
        run.remove_if_unmounted(base, failed, lambda msg: print(msg, file=sys.stderr))
    print(f"device arrival -> mounted over {result['trials']} trials ({result['attach_by']}): "
          f"p50 {result['mount_p50_ms']:.1f} ms, p99 {result['mount_p99_ms']:.1f} ms, "
          f"max {result['mount_max_ms']:.1f} ms, missed {result['missed']}; "
          f"removed -> unmounted p50 {result['unmount_p50_ms']:.1f} ms, p99 {result['unmount_p99_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
