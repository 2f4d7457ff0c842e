#!/usr/bin/env bash
# The main job: set everything up (scripts/setup.sh), then boot the probe guest and the stock
# Linux guest under nitrovm and show what they report. Where /dev/kvm is kvm_pvm (no hardware
# virtualization) the Linux guest runs in the KVM-in-TCG lane; with hardware KVM, directly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"

echo
echo "== probe guest: nitrovm run --guest probe --vcpus 2 -- smp"
if [ -e /dev/kvm ]; then
  "$BUILD_DIR/bin/nitrovm" run --guest probe --vcpus 2 -- smp
  echo "== probe guest: nitrovm run --guest probe -- msi 100"
  "$BUILD_DIR/bin/nitrovm" run --guest probe -- msi 100
else
  echo "skipped: /dev/kvm is missing on this machine"
fi

echo
demo='echo Linux $(uname -r) on $(grep -c ^processor /proc/cpuinfo) vCPUs; exit 0'
if [ -e /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then
  echo "== Linux guest (hardware KVM): nitrovm run --guest linux --vcpus 2"
  "$BUILD_DIR/bin/nitrovm" run --guest linux --vcpus 2 --memory 512M -- sh -c "$demo"
else
  echo "== Linux guest in the KVM-in-TCG lane (this /dev/kvm cannot run a stock kernel)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cat >"$work/linux-demo.sh" <<SCRIPT
#!/bin/sh
/bin/nitrovm run --guest linux --kernel /images/vmlinuz --initrd /images/initramfs.cpio.gz \\
    --vcpus 2 --memory 512M -- sh -c '$demo'
SCRIPT
  mkdir -p "$BUILD_DIR/lane/bin"
  cp -f "$BUILD_DIR/bin/nitrovm" "$BUILD_DIR/lane/bin/nitrovm"
  "$ROOT/tests/lane/run-lane.sh" --image-dir "$BUILD_DIR/images" --bin-dir "$BUILD_DIR/lane/bin" \
      --out "$BUILD_DIR/lane-demo" --smp 2 -- "$work/linux-demo.sh" || true
  echo "-- what the Linux guest printed:"
  grep -v '^\[' "$BUILD_DIR/lane-demo/tests/linux-demo.log" || true
fi
