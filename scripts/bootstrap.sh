#!/usr/bin/env bash
# Installs everything volumemanager and its tests need on a fresh Debian machine, as root:
# the system tools it drives (mkfs, blkid, losetup, udev, systemd-analyze) and a venv in .venv
# with the package (editable) and its test extras. Safe to run again; quiet unless it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(util-linux e2fsprogs xfsprogs udev systemd iproute2 procps jq strace gcc)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # A policy-rc.d that exits 101 keeps the packages' postinst scripts (udev's above all) from
  # starting services; tests start udevd themselves. One that already exists is left alone.
  POLICY=/usr/sbin/policy-rc.d
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
# setuptools announces every editable install of a flat layout with an "Editable installation"
# warning banner (a reminder that folders named like the package take precedence); it is
# information only, so that one warning is filtered by its message and nothing else is.
PYTHONWARNINGS="ignore:Editable installation" \
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
