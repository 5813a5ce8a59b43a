"""Two small FlexVolume drivers written as shell scripts, for tests (here and end-to-end).

* ``test/loopdisk`` (attachable, ``init`` -> ``{"attach": true}``): ``attach`` attaches the file
  named by the volume option ``backingFile`` to a loop device (``losetup``) and replies with the
  device; ``waitforattach`` checks the device node; ``isattached`` asks ``losetup -j``;
  ``mountdevice`` makes an ext4 (or the ``fsType``) only on a blank device and mounts it;
  ``mount`` bind-mounts the device mount path recorded by ``mountdevice``; ``unmount`` and
  ``unmountdevice`` unmount; ``detach`` detaches the loop device.
* ``test/tmpfs`` (not attachable, ``init`` -> ``{"attach": false}``): ``mount`` mounts a tmpfs
  (size from the option ``size``, default 16m); ``unmount`` unmounts it; every other verb replies
  ``Not supported``.

Both append their argv as one JSON array per line to a call log (:func:`read_call_log`) and keep
their state in a ``state_dir`` outside the plugin dir (writes inside a driver's dir make the
prober re-``init`` it, as in the kubelet). A test steers a verb through files in ``state_dir``
(:func:`set_behaviour`): ``fail.<verb>`` (reply Failure with the file's text), ``notsupported.<verb>``,
``garbage.<verb>`` (print the file's text, exit 0), ``hang.<verb>`` (sleep with a child, recording
both pids in ``hang.<verb>.pids``).

Drivers are installed atomically (written under a dot name, then renamed), so a prober never
runs a half-written script. Needs bash, jq, losetup, blkid, mkfs.* and mount.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

_COMMON = r"""#!/bin/bash
# FlexVolume test driver @NAME@ (written by tests/plugins_flex/drivers.py)
STATE=@STATE@
LOG=@LOG@
verb="$1"
jq -cn '$ARGS.positional' --args "$@" >> "$LOG"

reply() { printf '%s\n' "$1"; exit 0; }
fail() { jq -cn --arg m "$1" '{status: "Failure", message: $m}'; exit 1; }
notsupported() { echo '{"status": "Not supported"}'; exit 1; }
opt() { jq -r --arg k "$2" '.[$k] // ""' <<<"$1"; }

if [ -n "$verb" ]; then
  [ -f "$STATE/fail.$verb" ] && fail "$(cat "$STATE/fail.$verb")"
  [ -f "$STATE/notsupported.$verb" ] && notsupported
  [ -f "$STATE/garbage.$verb" ] && { cat "$STATE/garbage.$verb"; exit 0; }
  if [ -f "$STATE/hang.$verb" ]; then
    sleep 1000 &
    echo "$$ $!" > "$STATE/hang.$verb.pids"
    wait
    exit 0
  fi
fi
"""

_LOOPDISK = _COMMON + r"""
vol_state() { echo "$STATE/vol.$(printf '%s' "$1" | tr '/' '_')"; }

case "$verb" in
init)
  reply '{"status": "Success", "capabilities": {"attach": true}}' ;;
attach)
  opts="$2"
  file=$(opt "$opts" backingFile)
  vol=$(opt "$opts" kubernetes.io/pvOrVolumeName)
  [ -f "$file" ] || fail "backing file '$file' does not exist"
  dev=$(losetup -j "$file" | head -n1 | cut -d: -f1)
  if [ -z "$dev" ]; then
    dev=$(losetup --find --show "$file" 2>&1) || fail "losetup: $dev"
  fi
  echo "$file" > "$(vol_state "$vol").file"
  jq -cn --arg d "$dev" '{status: "Success", device: $d}'; exit 0 ;;
waitforattach)
  [ -b "$2" ] || fail "$2 is not a block device"
  jq -cn --arg d "$2" '{status: "Success", device: $d}'; exit 0 ;;
isattached)
  vol=$(opt "$2" kubernetes.io/pvOrVolumeName)
  file=$(opt "$2" backingFile)
  if [ -n "$file" ] && [ -n "$(losetup -j "$file")" ]; then
    reply '{"status": "Success", "attached": true}'
  fi
  reply '{"status": "Success", "attached": false}' ;;
mountdevice)
  dmp="$2"; dev="$3"; opts="$4"
  vol=$(opt "$opts" kubernetes.io/pvOrVolumeName)
  fstype=$(opt "$opts" kubernetes.io/fsType); fstype=${fstype:-ext4}
  mode=$(opt "$opts" kubernetes.io/readwrite)
  mkdir -p "$dmp"
  echo "$dmp" > "$(vol_state "$vol").dmp"
  mountpoint -q "$dmp" && reply '{"status": "Success"}'
  if [ -z "$(blkid -p -o value -s TYPE "$dev" 2>/dev/null)" ]; then
    out=$(mkfs -t "$fstype" -q "$dev" 2>&1 </dev/null) || fail "mkfs $fstype $dev: $out"
  fi
  out=$(mount -t "$fstype" -o "${mode:-rw}" "$dev" "$dmp" 2>&1) || fail "mount $dev: $out"
  reply '{"status": "Success"}' ;;
mount)
  dir="$2"; opts="$3"
  vol=$(opt "$opts" kubernetes.io/pvOrVolumeName)
  dmp=$(cat "$(vol_state "$vol").dmp" 2>/dev/null) || fail "volume $vol has no device mount"
  mkdir -p "$dir"
  mountpoint -q "$dir" && reply '{"status": "Success"}'
  out=$(mount --bind "$dmp" "$dir" 2>&1) || fail "bind mount: $out"
  reply '{"status": "Success"}' ;;
unmount|unmountdevice)
  if mountpoint -q "$2"; then
    out=$(umount "$2" 2>&1) || fail "umount $2: $out"
  fi
  reply '{"status": "Success"}' ;;
detach)
  vol="$2"
  file=$(cat "$(vol_state "$vol").file" 2>/dev/null)
  if [ -n "$file" ]; then
    for dev in $(losetup -j "$file" | cut -d: -f1); do
      out=$(losetup -d "$dev" 2>&1) || fail "losetup -d $dev: $out"
    done
  fi
  reply '{"status": "Success"}' ;;
*)
  notsupported ;;
esac
"""

_TMPFS = _COMMON + r"""
case "$verb" in
init)
  reply '{"status": "Success", "capabilities": {"attach": false}}' ;;
mount)
  dir="$2"; opts="$3"
  size=$(opt "$opts" size); size=${size:-16m}
  mode=$(opt "$opts" kubernetes.io/readwrite)
  mkdir -p "$dir"
  mountpoint -q "$dir" && reply '{"status": "Success"}'
  out=$(mount -t tmpfs -o "size=$size,${mode:-rw}" flextmpfs "$dir" 2>&1) || fail "mount tmpfs: $out"
  reply '{"status": "Success"}' ;;
unmount)
  if mountpoint -q "$2"; then
    out=$(umount "$2" 2>&1) || fail "umount $2: $out"
  fi
  reply '{"status": "Success"}' ;;
*)
  notsupported ;;
esac
"""

LOOPDISK = "test/loopdisk"
TMPFS = "test/tmpfs"
_SCRIPTS = {LOOPDISK: _LOOPDISK, TMPFS: _TMPFS}
REQUIRED_TOOLS = ("bash", "jq", "losetup", "blkid", "mkfs.ext4", "mount", "umount", "mountpoint")


@dataclass(frozen=True)
class InstalledDriver:
    """Where a test driver was written."""

    name: str  # "test/loopdisk"
    dir: Path  # <plugin dir>/test~loopdisk
    executable: Path  # <plugin dir>/test~loopdisk/loopdisk
    state_dir: Path
    call_log: Path


def script_text(name: str, state_dir: str | os.PathLike[str], call_log: str | os.PathLike[str]) -> str:
    """The script of driver ``name`` (:data:`LOOPDISK` or :data:`TMPFS`)."""
    return (_SCRIPTS[name].replace("@NAME@", name)
            .replace("@STATE@", _sh_quote(os.fspath(state_dir)))
            .replace("@LOG@", _sh_quote(os.fspath(call_log))))


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def install_driver(plugin_dir: str | os.PathLike[str], name: str, work_dir: str | os.PathLike[str],
                   *, atomic_dir: bool = False) -> InstalledDriver:
    """Write driver ``name`` as ``<plugin_dir>/<vendor>~<driver>/<driver>``; its state dir and
    call log go under ``work_dir`` (which must not be inside ``plugin_dir``).

    ``atomic_dir``: build the whole driver dir elsewhere and rename it into place, so its
    directory appears complete at once (how a test shows the prober a new driver dir)."""
    plugin_dir = Path(plugin_dir)
    dir_name = name.replace("/", "~")
    exe_name = dir_name.split("~")[-1]
    work = Path(work_dir) / dir_name
    state_dir = work / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    call_log = work / "calls.log"
    call_log.touch()
    text = script_text(name, state_dir, call_log)
    final_dir = plugin_dir / dir_name
    if atomic_dir:
        staging = Path(work_dir) / f".staging-{dir_name}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _write_exe(staging / exe_name, text)
        plugin_dir.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final_dir)
    else:
        final_dir.mkdir(parents=True, exist_ok=True)
        tmp = final_dir / f".{exe_name}.tmp"
        _write_exe(tmp, text)
        os.rename(tmp, final_dir / exe_name)
    return InstalledDriver(name, final_dir, final_dir / exe_name, state_dir, call_log)


def _write_exe(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o755)


def read_call_log(driver: InstalledDriver) -> list[list[str]]:
    """The argv (after the executable) of every call so far, oldest first."""
    return [json.loads(line) for line in driver.call_log.read_text().splitlines() if line.strip()]


def verbs(driver: InstalledDriver) -> list[str]:
    """The verbs called so far, in order."""
    return [argv[0] if argv else "" for argv in read_call_log(driver)]


def set_behaviour(driver: InstalledDriver, kind: str, verb: str, text: str = "") -> Path:
    """Make ``verb`` misbehave: ``kind`` is ``fail``, ``notsupported``, ``garbage`` or ``hang``."""
    assert kind in ("fail", "notsupported", "garbage", "hang"), kind
    path = driver.state_dir / f"{kind}.{verb}"
    path.write_text(text)
    return path


def clear_behaviour(driver: InstalledDriver) -> None:
    for kind in ("fail", "notsupported", "garbage", "hang"):
        for p in driver.state_dir.glob(f"{kind}.*"):
            p.unlink()
