#!/bin/sh
# /init of the lane's host image (busybox). Runs every test in /lane/tests in
# order and prints the markers run-lane.sh reads:
#   LANE-BOOT uptime=S
#   LANE-KVM loaded seconds=S | LANE-KVM missing /dev/kvm
#   LANE-TEST NAME START
#   LANE-TEST NAME PASS|FAIL status=N seconds=S
#   LANE-DONE passed=P failed=F
# In the emulated host (LANE_MODE=qemu) it sets the machine up, loads the KVM
# modules and powers off at the end. With --direct (LANE_MODE=direct) it runs
# chrooted on a host that already has /dev/kvm and just exits.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
. /lane/config

uptime_s() { read -r up _ </proc/uptime; echo "$up"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

if [ "$LANE_MODE" = qemu ]; then
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /dev/shm
    mount -t devpts devpts /dev/pts
    mount -t tmpfs tmpfs /dev/shm
    mount -t tmpfs tmpfs /tmp
    mount -t tmpfs tmpfs /run
    echo "LANE-BOOT uptime=$(uptime_s) cpus=$(grep -c ^processor /proc/cpuinfo)"
    t0=$(uptime_s)
    for m in irqbypass kvm kvm-amd; do
        insmod "/lib/modules/kvm/$m.ko" || echo "LANE-ERROR insmod $m.ko failed"
    done
    if [ -c /dev/kvm ]; then
        echo "LANE-KVM loaded seconds=$(elapsed "$t0" "$(uptime_s)")"
    fi
fi
[ -c /dev/kvm ] || echo "LANE-KVM missing /dev/kvm"

export LANE_IMAGES=/images LANE_BIN=/bin
passed=0
failed=0
for t in /lane/tests/*; do
    [ -f "$t" ] || continue
    name=${t##*/}
    name=${name#[0-9][0-9][0-9]-}
    name=${name%.sh}
    export LANE_WORK="/tmp/lane-work/$name"
    mkdir -p "$LANE_WORK"
    echo "LANE-TEST $name START"
    start=$(uptime_s)
    # Each test in its own session, so a timeout or the test's end can kill
    # whatever it left behind (a hung vmm) along with it.
    (cd "$LANE_WORK" && exec setsid sh "$t" </dev/null) &
    pid=$!
    setsid sh -c "sleep $LANE_TEST_TIMEOUT; echo 'LANE-TEST $name TIMEOUT after ${LANE_TEST_TIMEOUT}s'; kill -KILL -$pid" &
    watchdog=$!
    wait "$pid"
    status=$?
    kill -KILL -"$watchdog" 2>/dev/null
    kill -KILL -"$pid" 2>/dev/null
    wait "$watchdog" 2>/dev/null
    seconds=$(elapsed "$start" "$(uptime_s)")
    if [ "$status" = 0 ]; then
        passed=$((passed + 1))
        echo "LANE-TEST $name PASS status=0 seconds=$seconds"
    else
        failed=$((failed + 1))
        echo "LANE-TEST $name FAIL status=$status seconds=$seconds"
    fi
done
echo "LANE-DONE passed=$passed failed=$failed uptime=$(uptime_s)"

if [ "$LANE_MODE" = qemu ]; then
    sync
    poweroff -f
    reboot -f
    while :; do sleep 3600; done
fi
[ "$failed" = 0 ]
