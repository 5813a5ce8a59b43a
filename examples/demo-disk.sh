#!/usr/bin/env bash
# examples/demo-disk.sh up|down: the disk of the README tour, a local PersistentVolume on a
# loop device that this script sets up and takes away again. Run as root.
#
#   up    makes a sparse file, attaches it to a free loop device, unlinks the file (the loop
#         device keeps it open; its blocks are freed when the device is detached), and writes
#         demo-disk.yaml (PersistentVolume demo-disk, spec.local.path: /dev/loopN) into the
#         manifest dir, where examples/manifests/db.yaml's claim is waiting for it. Once the
#         daemon has formatted and mounted the device, it sets LO_FLAGS_AUTOCLEAR on it, so the
#         kernel detaches it by itself when its last mount goes (`volumemanager drain`, or the
#         PV's removal). Before that, the flag would detach the device at the first close.
#   down  removes demo-disk.yaml (the daemon unmounts the volume), waits for the device to be
#         unmounted, and detaches it if it is still attached. Safe to run again.
#
# Environment: MANIFEST_DIR (default: the manifests/ dir beside this script), DEMO_DISK_SIZE
# (default 256M), DEMO_DISK_TIMEOUT seconds to wait for the daemon (default 60).
set -euo pipefail

MANIFEST_DIR=${MANIFEST_DIR:-$(dirname "$0")/manifests}
SIZE=${DEMO_DISK_SIZE:-256M}
TIMEOUT=${DEMO_DISK_TIMEOUT:-60}
PV_NAME=demo-disk
MANIFEST=$MANIFEST_DIR/$PV_NAME.yaml
# Backing files are named after the manifest dir, so that `down` finds this demo's devices
# (even without the manifest) and never those of another checkout.
IMAGE_PREFIX=/var/tmp/volumemanager-demo-disk-$(realpath -m "$MANIFEST_DIR" | cksum | cut -d' ' -f1).

die() { echo "demo-disk: $*" >&2; exit 1; }

# "MAJ:MIN" of a block device node.
devnum() { printf '%d:%d' "0x$(stat -c %t "$1")" "0x$(stat -c %T "$1")"; }

# Whether the device with this MAJ:MIN is mounted anywhere (field 3 of mountinfo).
is_mounted() { awk -v d="$1" '$3 == d { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# The demo's attached loop devices: those whose backing file has our prefix.
demo_devices() {
  local f
  for f in /sys/block/loop*/loop/backing_file; do
    [ -r "$f" ] || continue
    case "$(cat "$f" 2>/dev/null)" in
      "$IMAGE_PREFIX"*) f=${f#/sys/block/}; echo "/dev/${f%%/*}" ;;
    esac
  done
}

# Set LO_FLAGS_AUTOCLEAR with LOOP_GET_STATUS64/LOOP_SET_STATUS64 (losetup has no flag for it
# on an attached device). lo_flags is the u32 at offset 52 of struct loop_info64 (232 bytes).
set_autoclear() {
  python3 - "$1" <<'PY'
import fcntl, os, struct, sys
LOOP_SET_STATUS64, LOOP_GET_STATUS64, LO_FLAGS_AUTOCLEAR, FLAGS_AT = 0x4C04, 0x4C05, 4, 52
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CLOEXEC)
try:
    info = bytearray(232)
    fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
    flags = struct.unpack_from("<I", info, FLAGS_AT)[0]
    struct.pack_into("<I", info, FLAGS_AT, flags | LO_FLAGS_AUTOCLEAR)
    fcntl.ioctl(fd, LOOP_SET_STATUS64, bytes(info))
finally:
    os.close(fd)
PY
}

up() {
  [ "$(id -u)" -eq 0 ] || die "run as root (it attaches a loop device)"
  [ -d "$MANIFEST_DIR" ] || die "no manifest dir $MANIFEST_DIR"
  if [ -e "$MANIFEST" ]; then
    die "$MANIFEST exists: the demo disk is up already (examples/demo-disk.sh down removes it)"
  fi
  local image dev num waited=0
  image=$(mktemp "${IMAGE_PREFIX}XXXXXX")
  truncate -s "$SIZE" "$image"
  dev=$(losetup --find --show "$image") || { rm -f "$image"; die "cannot attach a loop device"; }
  rm -f "$image"
  echo "attached $dev ($SIZE, sparse, blank)"
  cat >"$MANIFEST_DIR/.$PV_NAME.yaml.tmp" <<EOF
# Written by examples/demo-disk.sh up; removed by examples/demo-disk.sh down.
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $PV_NAME
spec:
  capacity:
    storage: $SIZE
  volumeMode: Filesystem
  accessModes: [ReadWriteOnce]
  local:
    path: $dev
    fsType: ext4
  claimRef:
    namespace: demo
    name: data
EOF
  mv "$MANIFEST_DIR/.$PV_NAME.yaml.tmp" "$MANIFEST"
  echo "wrote $MANIFEST (PersistentVolume $PV_NAME, local.path $dev)"
  num=$(devnum "$dev")
  until is_mounted "$num"; do
    if [ "$waited" -ge "$((TIMEOUT * 10))" ]; then
      die "$dev is not mounted after ${TIMEOUT}s (is the daemon running on $MANIFEST_DIR?); it stays attached until examples/demo-disk.sh down"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  set_autoclear "$dev"
  echo "mounted; $dev detaches itself when its last mount goes"
}

down() {
  [ "$(id -u)" -eq 0 ] || die "run as root (it detaches a loop device)"
  if [ -e "$MANIFEST" ]; then
    rm -f "$MANIFEST"
    echo "removed $MANIFEST"
  fi
  local dev num waited
  for dev in $(demo_devices); do
    num=$(devnum "$dev")
    waited=0
    while is_mounted "$num"; do
      if [ "$waited" -ge "$((TIMEOUT * 10))" ]; then
        die "$dev is still mounted after ${TIMEOUT}s (is the daemon running? volumemanager drain unmounts it)"
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
    # Autoclear may be detaching it right now: only a device still bound to our file is ours.
    if demo_devices | grep -qx "$dev"; then
      if ! losetup -d "$dev" 2>/dev/null && demo_devices | grep -qx "$dev"; then
        die "cannot detach $dev"
      fi
      echo "detached $dev"
    fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
