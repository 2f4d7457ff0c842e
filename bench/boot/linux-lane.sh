#!/bin/sh
# Lane test (run by bench/boot/linux.py through tests/lane/run-lane.sh): inside the emulated AMD-V
# host, boots this repo's Linux image alternately under nitrovm and under QEMU (microvm, KVM),
# RUNS times each, then (with SAMPLE_MS > 0) once more each with its RSS sampled (run=mem; not
# timed: reading /proc/PID/smaps under emulation slows the boot). One parseable line per boot:
#   BENCH-LINUX run=I|mem vmm=nitrovm|qemu boot_ms=... total_ms=... exit=... maxrss_kib=...
#       sampled_rss_kib=... sampled_beyond_kib=... last_beyond_kib=... last_anon_kib=... samples=...
#       [own_rss_kib=... peak_rss_kib=... marker_ms=...]
# boot_ms is measured by /bin/boottime (bench/boot/boottime.c) from process start to the console
# line "init: reached /init". Settings come from /bench/linux.conf (RUNS, MEM_MIB, CMDLINE,
# TIMEOUT_S, SAMPLE_MS, QEMU_FIRMWARE_DIR). Exit status 0 if every boot reached /init.
conf=/bench/linux.conf
[ -f "$conf" ] && . "$conf"
RUNS=${RUNS:-5}
MEM_MIB=${MEM_MIB:-512}
CMDLINE=${CMDLINE:-console=ttyS0 reboot=k panic=-1 quiet}
TIMEOUT_S=${TIMEOUT_S:-60}
SAMPLE_MS=${SAMPLE_MS:-100}
QEMU_FIRMWARE_DIR=${QEMU_FIRMWARE_DIR:-/usr/share/qemu}
images=${LANE_IMAGES:-/images}
marker='init: reached /init'

echo "BENCH-LINUX-CONFIG runs=$RUNS mem_mib=$MEM_MIB vcpus=1 host_cpus=$(grep -c ^processor /proc/cpuinfo)" \
    "sample_ms=$SAMPLE_MS"
echo "BENCH-LINUX-CMDLINE $CMDLINE"

boot() { # VMM RUN SAMPLE_MS
    sample=$3
    case "$1" in
    nitrovm)
        set -- "$1" "$2" /bin/nitrovm run --guest linux --kernel "$images/vmlinuz" \
            --initrd "$images/initramfs.cpio.gz" --cmdline "$CMDLINE" --vcpus 1 --memory "${MEM_MIB}M" \
            --timeout "$TIMEOUT_S" -- sh -c 'exit 0'
        ;;
    qemu)
        set -- "$1" "$2" /bin/qemu-system-x86_64 -accel kvm -M microvm -cpu host -m "$MEM_MIB" -smp 1 \
            -nographic -no-reboot -L "$QEMU_FIRMWARE_DIR" -device isa-debug-exit,iobase=0xf4,iosize=1 \
            -kernel "$images/vmlinuz" -initrd "$images/initramfs.cpio.gz" \
            -append "$CMDLINE -- sh -c \"exit 0\""
        ;;
    esac
    vmm=$1 run=$2
    shift 2
    result=$(/bin/boottime -m "$marker" -t "$TIMEOUT_S" -s "$sample" -g $((MEM_MIB * 1024)) \
        -o "out-$vmm-$run.txt" -e "err-$vmm-$run.txt" -- "$@")
    ok=$?
    extra=
    if [ "$vmm" = nitrovm ]; then
        own=$(sed -n 's/.*own RSS \([0-9]*\) KiB.*/\1/p' "err-$vmm-$run.txt" | tail -n 1)
        peak=$(sed -n 's/.*peak RSS \([0-9]*\) KiB.*/\1/p' "err-$vmm-$run.txt" | tail -n 1)
        mark=$(sed -n 's/.*guest reached its workload \([0-9.]*\) ms.*/\1/p' "err-$vmm-$run.txt" | tail -n 1)
        extra=" own_rss_kib=${own:-none} peak_rss_kib=${peak:-none} marker_ms=${mark:-none}"
    fi
    echo "BENCH-LINUX run=$run vmm=$vmm $result$extra"
    if [ "$ok" != 0 ]; then
        echo "BENCH-LINUX-FAIL run=$run vmm=$vmm: no '$marker'; last lines of stdout and stderr:"
        tail -n 15 "out-$vmm-$run.txt" "err-$vmm-$run.txt" | tr -d '\r'
        failures=$((failures + 1))
    fi
}

failures=0
i=0
while [ "$i" -lt "$RUNS" ]; do
    boot nitrovm "$i" 0
    boot qemu "$i" 0
    i=$((i + 1))
done
if [ "$SAMPLE_MS" -gt 0 ]; then
    boot nitrovm mem "$SAMPLE_MS"
    boot qemu mem "$SAMPLE_MS"
fi
echo "BENCH-LINUX-DONE failures=$failures"
[ "$failures" = 0 ]
