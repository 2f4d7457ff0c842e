#!/usr/bin/env bash
# run-lane.sh: run test scripts on a real KVM. By default inside an emulated
# AMD-V host (QEMU software emulation booting the Debian cloud kernel, which
# loads kvm-amd); with --direct on this machine's /dev/kvm. See README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

usage() {
    cat <<'EOF'
usage: run-lane.sh --image-dir DIR --bin-dir BIN --out LOGDIR [options] [-- TEST...]
  --image-dir DIR     guest image directory; guest/linux/build-image.sh DIR runs first
                      (no-op when up to date); its kernel is also the emulated host's
  --bin-dir BIN       every executable at the top of BIN goes to /bin (with its libraries)
  --out LOGDIR        lane.log (console), summary.txt, tests/NAME.log, the host image
  --smp N             vCPUs of the emulated host (default 1; 2+ uses multi-threaded TCG)
  --mem MIB           memory of the emulated host (default 2048)
  --timeout S         wall-clock limit for the whole run (default 600)
  --boot-timeout S    limit for the emulated host to reach /init (default 60)
  --test-timeout S    limit for each test (default 300)
  --file SRC[:DEST]   also put SRC in the image at DEST (default /images/NAME); repeatable
  --no-strip          keep debug info in the copied binaries
  --direct            no QEMU: run the tests chrooted on this machine's /dev/kvm (root)
  --verbose           show the whole console instead of the markers only
  TEST...             test scripts, run in order (default: tests/lane/selftest.sh)
Exit status: 0 all tests passed, 1 a test failed or did not finish, 2 usage,
3 the lane itself failed (QEMU, the emulated host's kernel, a timeout).
EOF
}

die() { echo "lane: $*" >&2; exit 3; }
usage_error() { echo "lane: $*" >&2; usage >&2; exit 2; }

img_dir='' bin_dir='' out='' smp=1 mem=2048 timeout=600 boot_timeout=60 test_timeout=300
strip=1 direct=0 verbose=0
extra_files=() tests=()
while [ $# -gt 0 ]; do
    case "$1" in
    --image-dir) img_dir=${2:?}; shift 2 ;;
    --bin-dir) bin_dir=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    --smp) smp=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --boot-timeout) boot_timeout=${2:?}; shift 2 ;;
    --test-timeout) test_timeout=${2:?}; shift 2 ;;
    --file) extra_files+=("${2:?}"); shift 2 ;;
    --no-strip) strip=0; shift ;;
    --direct) direct=1; shift ;;
    --verbose) verbose=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; tests+=("$@"); break ;;
    -*) usage_error "unknown option $1" ;;
    *) tests+=("$1"); shift ;;
    esac
done
[ -n "$img_dir" ] && [ -n "$bin_dir" ] && [ -n "$out" ] ||
    usage_error "--image-dir, --bin-dir and --out are required"
[ -d "$bin_dir" ] || usage_error "no directory $bin_dir"
for n in "$smp" "$mem" "$timeout" "$boot_timeout" "$test_timeout"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || usage_error "not a positive number: $n"
done
[ ${#tests[@]} -gt 0 ] || tests=("$here/selftest.sh")
for t in "${tests[@]}"; do [ -f "$t" ] || usage_error "no test script $t"; done

mkdir -p "$out"
out=$(cd "$out" && pwd)
bin_dir=$(cd "$bin_dir" && pwd)
log=$out/lane.log
root=$out/root
mode=qemu
[ "$direct" = 1 ] && mode=direct

t_start=$(date +%s.%N)
secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --- the guest image (and the kernel the emulated host boots) -------------------
if ! "$repo/guest/linux/build-image.sh" "$img_dir" >"$out/build-image.log" 2>&1; then
    cat "$out/build-image.log" >&2
    die "guest/linux/build-image.sh $img_dir failed"
fi
img_dir=$(cd "$img_dir" && pwd)
kver=$(cat "$img_dir/kernel-version")
moddir=$img_dir/kernel/lib/modules/$kver

# --- the host image tree ------------------------------------------------------------
# A --direct run that died may have left processes and mounts in the tree:
# end those processes, and never rm across the mounts.
kill_chrooted() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -KILL "${p#/proc/}" 2>/dev/null
    done
    return 0
}
unmount_tree() {
    local m
    kill_chrooted
    for m in $(awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount -R "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    ! awk -v r="$root/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/self/mounts
}
[ -d "$root" ] && { unmount_tree || die "cannot unmount what is mounted under $root"; }
rm -rf --one-file-system "$root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,images,lane/tests}
mkdir -p "$root"/lib/modules/kvm "$root"/lib64

[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 ||
    die "/bin/busybox must be the static one (apt-get install busybox-static)"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
mknod -m 600 "$root/dev/console" c 5 1
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

install -m 755 "$here/lane-init.sh" "$root/init"
cat >"$root/lane/config" <<EOF
LANE_MODE=$mode
LANE_TEST_TIMEOUT=$test_timeout
export LANE_VCPUS=$smp LANE_MODE=$mode
EOF
# Test names: the script's name without .sh, made unique by a -N suffix.
names=()
for t in "${tests[@]}"; do
    name=$(basename "$t")
    name=${name%.sh}
    n=1 base=$name
    while printf '%s\n' "${names[@]}" | grep -qxF -- "$name"; do
        n=$((n + 1))
        name=$base-$n
    done
    names+=("$name")
    install -m 755 "$t" "$root/lane/tests/$(printf %03d ${#names[@]})-$name"
done

for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd; do
    cp "$moddir/kernel/$m.ko" "$root/lib/modules/kvm/"
done

# Copies an executable and the shared libraries ldd finds for it. System
# libraries keep the path ldd prints; others (a build tree's, found through a
# RUNPATH such as $ORIGIN/../lib that means something else in the image) go to
# /usr/local/lib, which the loader cache built below covers.
copy_exe() { # SRC DEST
    cp -L "$1" "$2"
    if [ "$strip" = 1 ] && ! strip --strip-debug "$2" 2>/dev/null; then
        cp -L "$1" "$2" # not an ELF object strip knows: keep it as it is
    fi
    local deps name lib dest
    deps=$(ldd "$1" 2>/dev/null) || return 0 # static, or a script
    if grep -q 'not found' <<<"$deps"; then
        die "$1: $(grep 'not found' <<<"$deps" | tr -s ' \t' ' ')"
    fi
    while read -r name lib; do
        case "$lib" in
        /lib/* | /lib64/* | /usr/lib/* | /usr/lib64/*) dest=$lib ;;
        *) dest=/usr/local/lib/$name ;;
        esac
        [ -e "$root$dest" ] && continue
        mkdir -p "$root$(dirname "$dest")"
        cp -L "$lib" "$root$dest"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 } $1 ~ /^\// { print $1, $1 }' <<<"$deps")
}

for f in "$bin_dir"/*; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    copy_exe "$f" "$root/bin/$(basename "$f")"
done
mkdir -p "$root/usr/local/lib"
echo /usr/local/lib >"$root/etc/ld.so.conf"
ldconfig -r "$root" 2>/dev/null || echo "lane: warning: ldconfig -r $root failed" >&2
[ -x "$root/bin/nitrovm" ] || echo "lane: warning: no nitrovm in $bin_dir" >&2

smoke=$out/kvm-smoke
if [ ! -x "$smoke" ] || [ "$here/kvm-smoke.c" -nt "$smoke" ]; then
    cc -static -O2 -Wall -Wextra -o "$smoke" "$here/kvm-smoke.c" || die "cannot build kvm-smoke"
fi
cp "$smoke" "$root/bin/kvm-smoke"

cp "$img_dir/vmlinuz" "$img_dir/initramfs.cpio.gz" "$root/images/"
[ -f "$img_dir/vmlinux" ] && cp "$img_dir/vmlinux" "$root/images/"  # Xen mode boots it as a PVH ELF
probe=$bin_dir/../guest/probe.elf
[ -f "$probe" ] && cp "$probe" "$root/images/probe.elf"
for spec in "${extra_files[@]}"; do
    src=${spec%%:*}
    dest=/images/$(basename "$src")
    [ "$src" != "$spec" ] && dest=${spec#*:}
    [ -e "$src" ] || usage_error "no file $src"
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$src" "$root$dest"
done

# --- the TSC frequency the emulated host is told ----------------------------------
# Under microvm the emulated host has no PIT/HPET to calibrate its TSC against and
# may hang; TCG's TSC counts at the host's rate, so pass the host's frequency.
tsc_khz() {
    local mhz="" src=""
    if [ -n "${NH_TSC_KHZ:-}" ]; then
        echo "$NH_TSC_KHZ NH_TSC_KHZ"
        return
    fi
    local kmsg
    kmsg=$(dmesg 2>/dev/null || journalctl -k -b 0 -q --no-pager 2>/dev/null || true)
    mhz=$(sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' <<<"$kmsg" | tail -n 1)
    src="kernel log (refined calibration)"
    if [ -z "$mhz" ]; then
        mhz=$(sed -n 's/.*tsc: Detected \([0-9.]*\) MHz processor.*/\1/p' <<<"$kmsg" | tail -n 1)
        src="kernel log (detected)"
    fi
    if [ -z "$mhz" ]; then
        mhz=$(awk -F: '/^cpu MHz/ { gsub(/[ \t]/, "", $2); print $2; exit }' /proc/cpuinfo)
        src="/proc/cpuinfo"
    fi
    if [ -z "$mhz" ]; then
        mhz=2000
        src="a guess (set NH_TSC_KHZ)"
    fi
    awk -v m="$mhz" -v s="$src" 'BEGIN { printf "%d %s\n", m * 1000 + 0.5, s }'
}

# --- run --------------------------------------------------------------------------------
pid=
follow_pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    [ -n "$follow_pid" ] && kill "$follow_pid" 2>/dev/null
    [ "$mode" = direct ] && unmount_tree
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$mode" = qemu ]; then
    command -v qemu-system-x86_64 >/dev/null ||
        die "no qemu-system-x86_64 (apt-get install qemu-system-x86)"
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out/host.cpio"
    read -r khz khz_src <<<"$(tsc_khz)"
    accel=tcg
    [ "$smp" -gt 1 ] && accel=tcg,thread=multi
    cmd=(qemu-system-x86_64 -accel "$accel" -cpu max -M microvm -m "$mem" -smp "$smp"
        -nographic -no-reboot -kernel "$img_dir/vmlinuz" -initrd "$out/host.cpio"
        -append "console=ttyS0 panic=-1 reboot=t quiet tsc_early_khz=$khz")
    echo "lane: host image $(du -m "$out/host.cpio" | cut -f1) MiB, tsc_early_khz=$khz from $khz_src"
else
    [ "$(id -u)" = 0 ] || die "--direct needs root: it chroots into $root"
    [ -c /dev/kvm ] || die "--direct: no /dev/kvm here"
    [ -d /sys/module/kvm_pvm ] &&
        echo "lane: warning: this /dev/kvm is kvm_pvm; stock Linux guests do not run on it" >&2
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    mount --make-rslave "$root/dev"
    mount -t tmpfs tmpfs "$root/tmp"
    mount -t tmpfs tmpfs "$root/run"
    cmd=(chroot "$root" /bin/sh /init)
fi
echo "lane: $mode run of ${#tests[@]} test(s): $(printf '%s ' "${tests[@]##*/}")"
echo "lane: ${cmd[*]}" >"$out/command.txt"

: >"$log"
t_run=$(date +%s.%N)
"${cmd[@]}" </dev/null >"$log" 2>&1 &
pid=$!
if [ "$verbose" = 1 ]; then
    tail -s 0.2 -n +1 -f --pid="$pid" "$log" | sed -u 's/\r$//' &
else
    tail -s 0.2 -n +1 -f --pid="$pid" "$log" | grep -a --line-buffered 'LANE-' | sed -u 's/\r$//; s/^/  /' &
fi
follow_pid=$!

failure=
while kill -0 "$pid" 2>/dev/null; do
    run_s=$(secs_since "$t_run")
    if awk -v a="$run_s" -v b="$timeout" 'BEGIN { exit !(a >= b) }'; then
        failure="timed out after ${timeout}s"
    elif [ "$mode" = qemu ] && ! grep -aq 'LANE-BOOT' "$log" &&
        awk -v a="$run_s" -v b="$boot_timeout" 'BEGIN { exit !(a >= b) }'; then
        failure="the emulated host did not reach its /init in ${boot_timeout}s"
    fi
    if [ -n "$failure" ]; then
        kill "$pid" 2>/dev/null || true
        sleep 2
        kill -KILL "$pid" 2>/dev/null || true
        break
    fi
    sleep 0.5
done
rc=0
wait "$pid" || rc=$?
pid=
wait "$follow_pid" 2>/dev/null || true
follow_pid=
wall=$(secs_since "$t_run")

# --- results ----------------------------------------------------------------------------
clean=$(tr -d '\r' <"$log")
mkdir -p "$out/tests"
rm -f "$out"/tests/*.log
awk -v dir="$out/tests" '
    /LANE-TEST [^ ]+ START/ { name = $2; for (i = 1; i <= NF; i++) if ($i == "LANE-TEST") name = $(i + 1); next }
    /LANE-TEST [^ ]+ (PASS|FAIL) / { name = ""; next }
    name != "" { print > (dir "/" name ".log") }' <<<"$clean"

marker() { grep -ao "$1" <<<"$clean" | tail -n 1 || true; }
boot=$(marker 'LANE-BOOT uptime=[0-9.]*' | sed 's/.*=//')
kvm=$(marker 'LANE-KVM loaded seconds=[0-9.]*' | sed 's/.*=//')
done_line=$(marker 'LANE-DONE passed=[0-9]* failed=[0-9]*')

passed=0 failed=0
report=()
for name in "${names[@]}"; do
    result=$(marker "LANE-TEST $name \(PASS\|FAIL\) status=[0-9]* seconds=[0-9.]*")
    if [ -n "$result" ]; then
        read -r _ _ verdict status seconds <<<"$result"
        line=$(printf '%-4s  %-28s %8ss  %s' "$verdict" "$name" "${seconds#seconds=}" "$status")
        grep -aq "LANE-TEST $name TIMEOUT" <<<"$clean" && line="$line (test timeout ${test_timeout}s)"
        if [ "$verdict" = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    elif grep -aq "LANE-TEST $name START" <<<"$clean"; then
        line=$(printf 'FAIL  %-28s %9s  did not finish' "$name" -)
        failed=$((failed + 1))
    else
        line=$(printf 'FAIL  %-28s %9s  not run' "$name" -)
        failed=$((failed + 1))
    fi
    report+=("$line")
done

if [ -z "$failure" ] && [ -z "$done_line" ]; then
    if grep -aq 'Kernel panic' <<<"$clean"; then
        failure="the emulated host's kernel panicked: $(grep -a 'Kernel panic' <<<"$clean" | head -n 1)"
    elif [ "$mode" = qemu ] && [ -z "$boot" ]; then
        failure="QEMU exited with status $rc before the emulated host reached /init"
    else
        failure="the run ended (status $rc) before the tests finished"
    fi
fi
if [ "$mode" = qemu ] && [ -z "$failure" ] && [ -n "$boot" ] && [ -z "$kvm" ]; then
    failure="the emulated host has no /dev/kvm (insmod of the kvm modules failed?)"
fi

{
    echo "lane: $mode, smp=$smp, wall ${wall}s for the run, $(secs_since "$t_start")s in all"
    [ -n "$boot" ] && echo "lane: emulated host reached /init at ${boot}s uptime, kvm modules loaded in ${kvm:-?}s"
    for line in "${report[@]}"; do echo "  $line"; done
    [ -n "$failure" ] && echo "lane: LANE FAILURE: $failure (console: $log)"
    echo "lane: $passed passed, $failed failed"
} | tee "$out/summary.txt"

[ -n "$failure" ] && exit 3
[ "$failed" = 0 ] || exit 1
exit 0
