#!/bin/sh
# Stock Linux under nitrovm with an EBS volume served by the card (the nitro I/O model): the
# stock nvme driver binds, nvme0n1 has model "Amazon Elastic Block Store" and the volume id as
# its serial, and data written from the guest is read back by the guest and found in the
# backing file afterwards.
images=${LANE_IMAGES:-/images}
fail() { echo "linux-nvme: FAIL: $*"; exit 1; }
vol=/tmp/linux-nvme-vol.img
rm -f "$vol"

guest='i=0; while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done;
echo model=$(cat /sys/block/nvme0n1/device/model);
echo serial=$(cat /sys/block/nvme0n1/device/serial);
echo size=$(cat /sys/block/nvme0n1/size);
yes nitro-lane-data | head -c 1048576 > /tmp/w;
dd if=/tmp/w of=/dev/nvme0n1 bs=65536 seek=16 conv=fsync 2>/dev/null || exit 3;
echo 3 > /proc/sys/vm/drop_caches;
dd if=/dev/nvme0n1 of=/tmp/r bs=65536 skip=16 count=16 iflag=direct 2>/dev/null || exit 4;
cmp /tmp/w /tmp/r && echo roundtrip=ok || exit 5;
exit 0'
guest=$(echo "$guest" | tr '\n' ' ')
/bin/nitrovm run --guest linux --kernel "$images/vmlinuz" --initrd "$images/initramfs.cpio.gz" \
    --memory 512M --vcpus 2 --timeout 240 --volume "$vol,size=64M" -- sh -c "$guest" >out.txt 2>err.txt
status=$?
cat out.txt err.txt
tr -d '\r' <out.txt >clean.txt && mv clean.txt out.txt  # the guest's tty ends lines with CR LF
[ "$status" = 0 ] || fail "nitrovm exited $status"
grep -q '^model=Amazon Elastic Block Store' out.txt || fail "nvme0n1 does not have the EBS model"
grep -qE '^serial=vol[0-9a-f]{17} *$' out.txt || fail "the serial is not a volume id"
grep -q '^size=131072$' out.txt || fail "nvme0n1 is not 64 MiB"
grep -q '^roundtrip=ok' out.txt || fail "the guest's read-back differed"
# The data is in the backing file: 1 MiB of the pattern at 1 MiB.
dd if="$vol" bs=65536 skip=16 count=16 2>/dev/null | head -c 16 | grep -q '^nitro-lane-data' ||
    fail "the backing file does not hold what the guest wrote"
echo "linux-nvme: PASS"
