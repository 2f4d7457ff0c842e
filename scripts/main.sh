#!/usr/bin/env bash
# The main job: set everything up (scripts/setup.sh), then boot the probe guest and the stock
# Linux guest under nitrovm with both I/O models (nitro and xen), and print their comparison
# (bench/nvme, short run). Where /dev/kvm is kvm_pvm (no hardware
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
if [ -e /dev/kvm ]; then
  vols=$(mktemp -d)
  echo "== both I/O models, same probe guest, same volumes: nitro (NVMe, card process) then xen (blkfront, dom0)"
  "$BUILD_DIR/bin/nitrovm" run --io-model nitro --volume "$vols/a.img,size=64M" --volume "$vols/b.img,size=64M" \
      -- nvme-verify
  "$BUILD_DIR/bin/nitrovm" run --io-model xen --volume "$vols/a.img,size=64M" --volume "$vols/b.img,size=64M" \
      -- xen-verify
  rm -rf "$vols"
  echo
  echo "== comparison: 4 KiB random reads, nitro vs xen vs QEMU vs host fio (bench/nvme, short run)"
  /usr/bin/python3 "$ROOT/bench/nvme/run.py" --seconds 3 --runs 1 --qd 1,32 --build "$BUILD_DIR" \
      --out "$BUILD_DIR/bench/main" || echo "bench/nvme failed (status $?)"
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
echo "-- the same kernel in the Xen I/O model, with a disk from dom0:"
/bin/nitrovm run --guest linux --kernel /images/vmlinux --initrd /images/initramfs.cpio.gz \\
    --vcpus 1 --memory 512M --io-model xen --xen-patch-hypercalls --volume /tmp/xen-demo.img,size=64M \\
    -- sh -c 'load-modules xen-blkfront; sleep 1; echo xvda: \$(cat /sys/block/xvda/size) sectors, driver \$(basename \$(readlink /sys/block/xvda/device/driver)); exit 0'
SCRIPT
  mkdir -p "$BUILD_DIR/lane/bin"
  cp -f "$BUILD_DIR/bin/nitrovm" "$BUILD_DIR/lane/bin/nitrovm"
  cp -f "$BUILD_DIR/bin/xen-dom0" "$BUILD_DIR/lane/bin/xen-dom0"
  "$ROOT/tests/lane/run-lane.sh" --image-dir "$BUILD_DIR/images" --bin-dir "$BUILD_DIR/lane/bin" \
      --out "$BUILD_DIR/lane-demo" --smp 2 -- "$work/linux-demo.sh" || true
  echo "-- what the Linux guest printed:"
  grep -v '^\[' "$BUILD_DIR/lane-demo/tests/linux-demo.log" || true
fi
