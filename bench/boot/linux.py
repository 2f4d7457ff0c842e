#!/usr/bin/python3
"""bench/boot, Linux guest: boot time of nitrovm against QEMU on the same Linux image.

This machine's /dev/kvm (kvm_pvm) cannot run a stock Linux guest, so the runs happen inside the
KVM-in-TCG lane (tests/lane/run-lane.sh): QEMU software emulation with AMD-V boots an emulated host
with a real KVM, and bench/boot/linux-lane.sh runs there. It boots build/images (vmlinuz,
initramfs.cpio.gz; /init runs `sh -c "exit 0"`) alternately under nitrovm and under QEMU
(-M microvm -accel kvm -cpu host), 1 vCPU and 512 MiB each, the same kernel command line for both.

Boot time is measured the same way for both, by bench/boot/boottime.c inside the emulated host:
from process start to the read that delivers the console line "init: reached /init". Medians and
their ratio are reported; absolute times are those of the nested setup, only the ratio means
something. Memory: nitrovm's own RSS beyond guest RAM (from its exit log) and peak RSS; QEMU's peak
RSS (wait4); for both, the RSS outside the guest-RAM mapping, sampled from /proc/PID/smaps in one
extra boot each that is not timed (sampling under emulation slows the boot down).
Per-boot results: OUT/linux.csv; the lane's logs: BUILD/lane-bench (tests/linux-lane.log).
On a machine with hardware KVM the lane runs --direct (no emulated host; needs root).

Usage: bench/boot/linux.py [--runs N] [--out DIR] [--build DIR] [--lane-smp N] [--sample-ms MS]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

# nitrovm's default command line for --guest linux (hypervisor/src/main.cpp); both vmms get it.
CMDLINE = ("console=ttyS0 reboot=k panic=-1 quiet pci=lastbus=1 "
           "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd")
MEM_MIB = 512
BOOT_TIMEOUT_S = 60
QEMU_FIRMWARE = ["bios-microvm.bin"]  # microvm's default firmware (qboot)
QEMU_FIRMWARE_DIR = "/usr/share/qemu"

FIELDS = ["boot_ms", "total_ms", "exit", "maxrss_kib", "sampled_rss_kib", "sampled_beyond_kib", "last_beyond_kib",
          "last_anon_kib", "samples", "own_rss_kib", "peak_rss_kib", "marker_ms"]


def hardware_kvm():
    return (os.path.exists("/dev/kvm") and not os.path.exists("/sys/module/kvm_pvm")
            and any(os.path.exists(f"/sys/module/{m}") for m in ("kvm_intel", "kvm_amd")))


def prepare(build, lane_dir, runs, sample_ms):
    """The --bin-dir (nitrovm, qemu-system-x86_64, boottime) and the settings file for the lane."""
    nitrovm = os.path.join(build, "bin", "nitrovm")
    qemu = shutil.which("qemu-system-x86_64")
    if not os.path.exists(nitrovm):
        sys.exit(f"bench/boot: {nitrovm} is missing; run scripts/setup.sh first")
    if not qemu:
        sys.exit("bench/boot: no qemu-system-x86_64 (apt-get install qemu-system-x86)")
    bin_dir = os.path.join(lane_dir, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    for name, src in (("nitrovm", nitrovm), ("qemu-system-x86_64", qemu)):
        link = os.path.join(bin_dir, name)  # run-lane.sh copies the target and its libraries
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.abspath(src), link)
    boottime, src = os.path.join(bin_dir, "boottime"), os.path.join(HERE, "boottime.c")
    if not os.path.exists(boottime) or os.path.getmtime(src) > os.path.getmtime(boottime):
        subprocess.run(["cc", "-static", "-O2", "-Wall", "-Wextra", "-o", boottime, src], check=True)
    conf = os.path.join(lane_dir, "linux.conf")
    with open(conf, "w") as f:
        f.write(f"RUNS={runs}\nMEM_MIB={MEM_MIB}\nCMDLINE='{CMDLINE}'\nTIMEOUT_S={BOOT_TIMEOUT_S}\n"
                f"SAMPLE_MS={sample_ms}\nQEMU_FIRMWARE_DIR={QEMU_FIRMWARE_DIR}\n")
    files = [f"{conf}:/bench/linux.conf"]
    for fw in QEMU_FIRMWARE:
        path = os.path.join(QEMU_FIRMWARE_DIR, fw)
        if not os.path.exists(path):
            sys.exit(f"bench/boot: {path} is missing (QEMU's microvm firmware)")
        files.append(f"{path}:{path}")
    return bin_dir, files


def parse(log_path):
    """The BENCH-LINUX lines of the lane test's log: per-boot dicts, the config line, failures."""
    rows, config, failures = [], "", []
    with open(log_path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.startswith("BENCH-LINUX-CONFIG "):
                config = line.split(" ", 1)[1]
            elif line.startswith("BENCH-LINUX-FAIL"):
                failures.append(line)
            elif line.startswith("BENCH-LINUX "):
                kv = dict(re.findall(r"(\w+)=(\S+)", line))
                rows.append({k: (None if v == "none" else v) for k, v in kv.items()})
    return rows, config, failures


def version(argv, pattern):
    try:
        out = subprocess.run(argv, capture_output=True, text=True).stdout
    except OSError:
        return "?"
    m = re.search(pattern, out)
    return m.group(1) if m else "?"


def run(runs, out, build, smp=1, sample_ms=100):
    """Runs the Linux-guest benchmark in the lane, prints the table, writes OUT/linux.csv.
    Returns True if every boot reached /init."""
    lane_dir = os.path.join(build, "lane-bench")
    bin_dir, files = prepare(build, lane_dir, runs, sample_ms)
    test_timeout = (2 * runs + 2) * BOOT_TIMEOUT_S + 60
    direct = hardware_kvm()
    cmd = [os.path.join(ROOT, "tests", "lane", "run-lane.sh"), "--image-dir", os.path.join(build, "images"),
           "--bin-dir", bin_dir, "--out", lane_dir, "--smp", str(smp), "--test-timeout", str(test_timeout),
           "--timeout", str(test_timeout + 120)]
    for f in files:
        cmd += ["--file", f]
    if direct:
        cmd.append("--direct")
    cmd += ["--", os.path.join(HERE, "linux-lane.sh")]
    print(f"bench/boot: Linux guest in the KVM lane: {' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd)}",
          flush=True)
    lane = subprocess.run(cmd)
    log_path = os.path.join(lane_dir, "tests", "linux-lane.log")
    if not os.path.exists(log_path):
        print(f"bench/boot: the lane run produced no {log_path} (run-lane.sh exit {lane.returncode}; "
              f"console: {os.path.join(lane_dir, 'lane.log')})", file=sys.stderr)
        return False
    rows, config, failures = parse(log_path)
    for line in failures:
        print(line, file=sys.stderr)

    csv_path = os.path.join(out, "linux.csv")
    common.write_csv(csv_path, ["run", "vmm"] + FIELDS,
                     [[r.get("run"), r.get("vmm")] + [r.get(k) for k in FIELDS] for r in rows])

    timed = [r for r in rows if r.get("run") != "mem"]
    mem = [r for r in rows if r.get("run") == "mem"]

    def values(rs, vmm, key):
        return [float(r[key]) for r in rs if r.get("vmm") == vmm and r.get(key) is not None]

    def med(rs, vmm, key):
        return common.median(values(rs, vmm, key))

    def mib(kib, digits=1):
        return None if kib is None else f"{kib / 1024:.{digits}f}"

    def spread(vmm):
        xs = values(timed, vmm, "boot_ms")
        return f"{min(xs):.0f}-{max(xs):.0f}" if xs else None

    kernel = open(os.path.join(build, "images", "kernel-version")).read().strip()
    print(f"\nbench/boot: Linux guest ({kernel}, build/images), {runs} alternating runs each, "
          f"{MEM_MIB} MiB, 1 vCPU, the same kernel command line for both")
    print(f"machine: {common.machine_description()}")
    if direct:
        print("setting: directly on this machine's hardware KVM (tests/lane/run-lane.sh --direct)")
    else:
        qemu_ver = version(["qemu-system-x86_64", "--version"], r"version (\S+)")
        print(f"setting: nested. Both vmms run on kvm-amd inside an emulated AMD-V host (QEMU {qemu_ver} TCG "
              f"-cpu max -M microvm,\n  {smp} vCPU, 2048 MiB, {kernel}) on this machine. Absolute times are "
              "those of this nested setup;\n  only the ratio means something.")
    if config:
        print(f"lane: {config}")
    print(f"qemu: -accel kvm -M microvm -cpu host -m {MEM_MIB} -smp 1 -nographic -no-reboot "
          "-device isa-debug-exit,iobase=0xf4,iosize=1")
    print(f"cmdline: {CMDLINE} -- sh -c \"exit 0\"")
    print('boot = process start -> "init: reached /init" on the guest console, timed inside the emulated host\n')

    ours_boot, qemu_boot = med(timed, "nitrovm", "boot_ms"), med(timed, "qemu", "boot_ms")
    booted = {v: len(values(timed, v, "boot_ms")) for v in ("nitrovm", "qemu")}
    summary = [
        ["nitrovm", f"{booted['nitrovm']}/{runs}", f"{ours_boot:.0f}" if ours_boot else None, spread("nitrovm"),
         mib(med(timed, "nitrovm", "peak_rss_kib")), mib(med(timed, "nitrovm", "own_rss_kib"), 2),
         mib(med(mem, "nitrovm", "last_beyond_kib"), 2), mib(med(mem, "nitrovm", "last_anon_kib"), 2),
         mib(med(mem, "nitrovm", "sampled_beyond_kib"), 2)],
        ["qemu microvm", f"{booted['qemu']}/{runs}", f"{qemu_boot:.0f}" if qemu_boot else None, spread("qemu"),
         mib(med(timed, "qemu", "maxrss_kib")), "n/a",
         mib(med(mem, "qemu", "last_beyond_kib"), 2), mib(med(mem, "qemu", "last_anon_kib"), 2),
         mib(med(mem, "qemu", "sampled_beyond_kib"), 2)],
    ]
    common.print_table(["vmm", "booted", "median boot ms", "min-max ms", "peak RSS MiB",
                        "beyond guest RAM MiB: at exit", "sampled end", "of it anon", "sampled max"],
                       summary)
    if ours_boot and qemu_boot:
        print(f"\nratio nitrovm/QEMU boot time (Linux, nested): {ours_boot / qemu_boot:.3f} (goal <= 0.5)")
    own = med(timed, "nitrovm", "own_rss_kib")
    if own:
        print(f"nitrovm RSS beyond guest RAM (Linux guest, at exit): {own / 1024:.2f} MiB (goal <= 5 MiB)")
    print("peak RSS: nitrovm's own report, QEMU's from wait4; both include the guest RAM the guest touched.")
    print("at exit: nitrovm's own report (RssAnon + RssFile; in the lane its libraries sit on a tmpfs and count as")
    print("  shmem, so they are left out). sampled: RSS outside the guest-RAM mapping in /proc/PID/smaps, shared")
    print(f"  libraries included, every {sample_ms} ms in one extra untimed boot each: the last sample before exit,")
    print("  its anonymous (private) part, and the largest sample." if sample_ms else
          "  (not sampled: --sample-ms 0)")
    print(f"CSV: {os.path.relpath(csv_path, ROOT)}; lane logs: {os.path.relpath(lane_dir, ROOT)}")
    ok = booted["nitrovm"] == runs and booted["qemu"] == runs
    if not ok:
        print(f"bench/boot: not every boot reached /init (see {log_path})", file=sys.stderr)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed boots of each vmm (default 5)")
    ap.add_argument("--lane-smp", type=int, default=1, help="vCPUs of the emulated host (default 1)")
    ap.add_argument("--sample-ms", type=int, default=100,
                    help="RSS sampling interval of the extra memory boot, 0 for none (default 100)")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench", "boot"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    args = ap.parse_args()
    sys.exit(0 if run(args.runs, args.out, args.build, args.lane_smp, args.sample_ms) else 1)


if __name__ == "__main__":
    main()
