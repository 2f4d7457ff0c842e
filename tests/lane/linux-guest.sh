#!/bin/sh
# Stock Linux under nitrovm on 2 vCPUs: reaches /init, runs a command, the command's exit status
# comes back as nitrovm's, and the guest saw both CPUs. Runs inside the lane (or --direct).
images=${LANE_IMAGES:-/images}
fail() { echo "linux-guest: FAIL: $*"; exit 1; }

run() {
    /bin/nitrovm run --guest linux --kernel "$images/vmlinuz" --initrd "$images/initramfs.cpio.gz" \
        --memory 512M --timeout 240 "$@" >out.txt 2>err.txt
    status=$?
    cat out.txt err.txt
}

# 1. /init reached and a command's exit status round-trips.
t0=$(cut -d' ' -f1 /proc/uptime)
run --vcpus 2 -- sh -c 'exit 7'
t1=$(cut -d' ' -f1 /proc/uptime)
grep -q '^init: reached /init' out.txt || fail "the guest never reached /init"
[ "$status" = 7 ] || fail "nitrovm exited $status, want 7"
echo "linux-guest: exit status 7 came back; run took $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') s"
grep -o 'boot marker: guest reached its workload [0-9.]* ms' err.txt | sed 's/^/linux-guest: /'

# 2. What the guest saw: two online CPUs, reported through the exit status.
run --vcpus 2 -- sh -c 'n=$(grep -c ^processor /proc/cpuinfo); echo guest-cpus=$n; exit $n'
grep -q 'guest-cpus=2' out.txt || fail "the guest did not report 2 CPUs"
[ "$status" = 2 ] || fail "CPU count via exit status: got $status, want 2"
echo "linux-guest: the guest saw 2 CPUs"

# 3. The guest's console output arrives intact (a line written by the guest's userspace), and
#    its wall clock (kvmclock's, there being no CMOS clock) is the host's.
before=$(date +%s)
run --vcpus 1 -- sh -c 'echo hello-from-$(uname -r) guest-epoch=$(date +%s); exit 0'
after=$(date +%s)
[ "$status" = 0 ] || fail "nitrovm exited $status, want 0"
grep -q "hello-from-6.1" out.txt || fail "the guest's output did not arrive"
guest=$(sed -n 's/.*guest-epoch=\([0-9]*\).*/\1/p' out.txt | head -n 1)
[ -n "$guest" ] && [ "$guest" -ge $((before - 5)) ] && [ "$guest" -le $((after + 5)) ] ||
    fail "the guest's clock says ${guest:-nothing}, the host's was $before..$after"
echo "linux-guest: the guest's clock ${guest}, the host's $before..$after"
echo "linux-guest: PASS"
