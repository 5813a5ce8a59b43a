"""fsGroup walk time: ``set_volume_ownership`` against ``chgrp -R`` on the same tree.

Run as root from the repository root::

    .venv/bin/python bench/fsgroup.py                 # tmpfs and ext4-on-loop, both tree shapes
    .venv/bin/python bench/fsgroup.py --fs tmpfs --shape flat --workers 1 --workers 2

Trees: ``flat`` = 100 dirs x 1,000 files (100,000 files), ``dirs`` = 10,000 dirs x 10 files.
Each timing is the best of ``--trials`` (3) with warm caches; before each timed run the tree is
reset (untimed) to gid 0 and mode 0644/0755, so every tool has the same work to do. Rows:

* ``chgrp -R``: group only (the target: issue 13 asks for <= 1x it);
* ``floor``: ``chgrp -R`` + ``chmod -R g+rwX`` + ``find -type d -exec chmod g+s {} +``, the
  coreutils equivalent of what the kubelet does;
* ``native wN``: ``set_volume_ownership(workers=N)`` with the C walk (``mount_utils._ownership``)
  on a tree that needs everything changed (skipped when the extension is not built);
* ``python wN``: the same with the Python walk (``native=False``), the reference;
* ``rerun``: each walk on a tree already right (``Always`` policy: a full walk, no change);
* ``OnRootMismatch``: the same with that policy (one lstat).

Everything it creates (tmpfs mount, loop device, sparse image, temp dir) is removed in a finally.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mount_utils.ownership import ON_ROOT_MISMATCH, _native, set_volume_ownership  # noqa: E402

GID = 4321
SHAPES = {"flat": (100, 1000), "dirs": (10_000, 10)}


def build(root: str, ndirs: int, nfiles: int) -> None:
    os.mkdir(root)
    for d in range(ndirs):
        dp = f"{root}/d{d}"
        os.mkdir(dp)
        dfd = os.open(dp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for f in range(nfiles):
                os.close(os.open(f"f{f}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd))
        finally:
            os.close(dfd)


def reset(root: str) -> None:
    subprocess.run(["chgrp", "-R", "0", root], check=True)
    subprocess.run(["chmod", "-R", "u=rwX,g=rX,o=rX", root], check=True)
    subprocess.run(["sync"], check=False)


def best_of(trials: int, prepare: Callable[[], None] | None, run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(trials):
        if prepare:
            prepare()
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best


@contextlib.contextmanager
def filesystem(kind: str, base: str) -> Iterator[str]:
    mnt = os.path.join(base, kind)
    os.mkdir(mnt)
    if kind == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=False)
        return
    image = os.path.join(base, "ext4.img")
    with open(image, "xb") as f:
        f.truncate(2 << 30)
    dev = subprocess.run(["losetup", "--find", "--show", image], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-N", "200000", dev], check=True)
        subprocess.run(["mount", dev, mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        os.unlink(image)


def bench_tree(root: str, trials: int, workers: list[int]) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    prep = lambda: reset(root)  # noqa: E731
    rows.append(("chgrp -R", best_of(trials, prep, lambda: subprocess.run(["chgrp", "-R", str(GID), root], check=True))))

    def floor() -> None:
        subprocess.run(["chgrp", "-R", str(GID), root], check=True)
        subprocess.run(["chmod", "-R", "g+rwX", root], check=True)
        subprocess.run(["find", root, "-type", "d", "-exec", "chmod", "g+s", "{}", "+"], check=True)

    rows.append(("floor (chgrp+chmod+find)", best_of(trials, prep, floor)))
    impls = ([True] if _native is not None else []) + [False]
    for native in impls:
        name = "native" if native else "python"
        for n in workers:
            rows.append((f"{name} w{n}", best_of(trials, prep, lambda n=n, native=native: _ours(root, n, native))))
    for native in impls:
        name = "native" if native else "python"
        rows.append((f"{name} rerun (already right)", best_of(
            trials, None, lambda native=native: _ours(root, max(workers), native))))
    rows.append(("OnRootMismatch (right)", best_of(
        trials, None, lambda: _ours(root, workers[0], bool(impls[0]), ON_ROOT_MISMATCH, expect_files=0))))
    return rows


def _ours(root: str, workers: int, native: bool, policy: str = "Always", expect_files: int | None = None) -> None:
    res = set_volume_ownership(root, GID, policy, workers=workers, native=native)
    res.raise_for_failures()
    if expect_files is not None and res.files != expect_files:
        raise SystemExit(f"unexpected walk: {res}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fs", action="append", choices=["tmpfs", "ext4"])
    ap.add_argument("--shape", action="append", choices=sorted(SHAPES))
    ap.add_argument("--workers", action="append", type=int)
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (mount, losetup, chgrp)", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="vm-fsgroup-bench-")
    try:
        for fs in args.fs or ["tmpfs", "ext4"]:
            with filesystem(fs, base) as mnt:
                for shape in args.shape or ["flat", "dirs"]:
                    ndirs, nfiles = SHAPES[shape]
                    root = os.path.join(mnt, shape)
                    build(root, ndirs, nfiles)
                    rows = bench_tree(root, args.trials, args.workers or [1, 2])
                    ref = rows[0][1]
                    print(f"\n{fs}, {shape}: {ndirs} dirs x {nfiles} files, best of {args.trials}")
                    for name, sec in rows:
                        print(f"  {name:30s} {sec:8.3f} s  {sec / ref:5.2f}x chgrp -R")
                    subprocess.run(["rm", "-rf", root], check=True)
    finally:
        for fs in ("tmpfs", "ext4"):
            mnt = os.path.join(base, fs)
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", mnt], check=False)
        out = subprocess.run(["losetup", "-j", os.path.join(base, "ext4.img")], capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            subprocess.run(["losetup", "-d", line.split(":")[0]], check=False)
        subprocess.run(["rm", "-rf", base], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
