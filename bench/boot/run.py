#!/usr/bin/python3
"""bench/boot: probe-guest boot time of nitrovm against QEMU on the same image.

Boot time is measured the same way for both: from process start to the moment the guest's
banner line ("probe: banner") appears on the serial console (stdout). Runs alternate between
the two so that drift on this shared machine hits both alike; medians and their ratio are
reported. Also reported: nitrovm's own memory (RSS beyond guest RAM, from its exit log) and
QEMU's peak RSS.

With --linux, the same for this repo's Linux image (build/images), which boots only inside the
KVM-in-TCG lane here: see bench/boot/linux.py.

Usage: bench/boot/run.py [--runs N] [--out DIR] [--build DIR] [--linux [--linux-runs N]]
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402
import linux  # noqa: E402  (bench/boot/linux.py)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "boot"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--memory-mib", type=int, default=256)
    ap.add_argument("--linux", action="store_true", help="also the Linux guest, inside the KVM lane")
    ap.add_argument("--linux-runs", type=int, default=5, help="timed Linux boots of each vmm (default 5)")
    args = ap.parse_args()

    nitrovm = os.path.join(args.build, "bin", "nitrovm")
    probe = os.path.join(args.build, "guest", "probe.elf")
    for f in (nitrovm, probe):
        if not os.path.exists(f):
            sys.exit(f"bench/boot: {f} is missing; run scripts/setup.sh first")
    if not os.path.exists("/dev/kvm"):
        sys.exit("bench/boot: /dev/kvm is missing; nothing to measure")

    # QEMU: q35 (microvm hangs on this host's /dev/kvm); -cpu host without arch-capabilities
    # (kvm_pvm refuses that MSR); the debug-exit device on the same port as nitrovm's.
    qemu = ["qemu-system-x86_64", "-M", "q35", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
            "-m", str(args.memory_mib), "-smp", "1", "-nographic", "-no-reboot", "-nodefaults",
            "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
            "-kernel", probe, "-append", "exit 0"]
    ours = [nitrovm, "run", "--guest", "probe", "--memory", f"{args.memory_mib}M", "--vcpus", "1",
            "--", "exit", "0"]

    rows = []
    for i in range(args.runs):
        for name, argv in (("nitrovm", ours), ("qemu", qemu)):
            t_banner, total, code, out, err, maxrss = common.run_until(argv, "probe: banner", 120)
            own_kib = None
            m = re.search(r"own RSS (\d+) KiB", err)
            if m:
                own_kib = int(m.group(1))
            # ru_maxrss also counts the forked launcher before exec; nitrovm reports its own peak.
            m = re.search(r"peak RSS (\d+) KiB", err)
            if m:
                maxrss = int(m.group(1))
            ok = t_banner is not None
            rows.append([i, name, f"{t_banner * 1000:.2f}" if ok else None, f"{total * 1000:.1f}", code,
                         maxrss, own_kib])
            if not ok:
                print(f"run {i} {name}: no banner (exit {code})\n{out[-500:]}\n{err[-500:]}", file=sys.stderr)

    header = ["run", "vmm", "boot_ms", "total_ms", "exit", "peak_rss_kib", "own_rss_kib"]
    common.write_csv(os.path.join(args.out, "boot.csv"), header, rows)

    def med(name, col):
        return common.median([float(r[col]) for r in rows if r[1] == name and r[col] is not None])

    ours_boot, qemu_boot = med("nitrovm", 2), med("qemu", 2)
    ours_rss, qemu_rss = med("nitrovm", 6), med("qemu", 5)
    ours_peak = med("nitrovm", 5)
    print(f"bench/boot: probe guest, {args.runs} alternating runs each, {args.memory_mib} MiB, 1 vCPU")
    print(f"machine: {common.machine_description()}")
    print("boot = process start -> guest banner on the serial console\n")
    summary = [
        ["nitrovm", f"{ours_boot:.2f}" if ours_boot else None, f"{ours_peak / 1024:.1f}" if ours_peak else None,
         f"{ours_rss / 1024:.2f}" if ours_rss else None],
        ["qemu q35", f"{qemu_boot:.2f}" if qemu_boot else None, f"{qemu_rss / 1024:.1f}" if qemu_rss else None, "n/a"],
    ]
    common.print_table(["vmm", "median boot ms", "peak RSS MiB", "RSS beyond guest RAM MiB"], summary)
    if ours_boot and qemu_boot:
        print(f"\nratio nitrovm/QEMU boot time: {ours_boot / qemu_boot:.4f} (goal <= 0.5)")
    if ours_rss:
        print(f"nitrovm RSS beyond guest RAM: {ours_rss / 1024:.2f} MiB (goal <= 5 MiB)")
    print(f"CSV: {os.path.join(args.out, 'boot.csv')}")

    if args.linux:
        print(flush=True)
        if not linux.run(args.linux_runs, args.out, args.build):
            sys.exit(1)


if __name__ == "__main__":
    main()
