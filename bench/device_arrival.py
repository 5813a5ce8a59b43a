#!/usr/bin/env python3
"""Device arrival -> mounted: how long after `losetup` attaches a local PV's device the pod's
volume is mounted (the udev/kernel uevent wakes the waiting volume; the slow re-check is only a
fallback). Prints p50/p99 over --trials; never asserts.

    .venv/bin/python bench/device_arrival.py [--trials 30]      (as root)
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mount_utils.mountinfo import MountTable  # noqa: E402
from tests.daemon_harness import DaemonProcess, wait_until  # noqa: E402
from tests.fixtures_mounts import unmount_all_under  # noqa: E402

LOOP_CTL_ADD, LOOP_CTL_REMOVE = 0x4C80, 0x4C81
MANIFEST = """\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv-arrival}}
spec: {{local: {{path: {dev}}}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: bench}}
spec: {{volumeName: pv-arrival}}
---
apiVersion: v1
kind: Pod
metadata: {{name: app, namespace: bench}}
spec:
  volumes:
  - name: vol
    persistentVolumeClaim: {{claimName: data}}
"""


def private_loop(ctl: int) -> int:
    for index in range(600, 700):
        try:
            return fcntl.ioctl(ctl, LOOP_CTL_ADD, index)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
    raise RuntimeError("no free loop index")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vm-bench-arrival-"))
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    index = private_loop(ctl)
    dev = f"/dev/loop{index}"
    backing = base / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(backing)], check=True)  # format once, outside the timing
    d = DaemonProcess(base)
    latencies: list[float] = []
    try:
        d.start()
        for _ in range(args.trials):
            d.write_manifest("pv.yaml", MANIFEST.format(dev=dev))
            wait_until(lambda: any(v["state"] == "waiting" for v in d.status()["volumes"]), 10, what="waiting")
            t0 = time.monotonic()
            subprocess.run(["losetup", dev, str(backing)], check=True)
            root = str(d.root / "pods")
            while not MountTable.read().under(root):
                time.sleep(0.0005)
            latencies.append(time.monotonic() - t0)
            (d.manifests / "pv.yaml").unlink()
            wait_until(lambda: not d.mounts(), 20, what="unmounted")
            subprocess.run(["losetup", "-d", dev], check=True)
    finally:
        d.stop()
        unmount_all_under(base)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        for _ in range(50):
            try:
                fcntl.ioctl(ctl, LOOP_CTL_REMOVE, index)
                break
            except OSError:
                time.sleep(0.1)
        os.close(ctl)
        if not MountTable.read().under(str(base)):
            shutil.rmtree(base, ignore_errors=True)
    q = statistics.quantiles([x * 1000 for x in latencies], n=100)
    print(f"device arrival -> mounted over {len(latencies)} trials: p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms (losetup itself included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
