"""Shared helpers for the benchmarks: machine description, timed child processes, tables, CSV."""
import csv
import os
import platform
import re
import statistics
import subprocess
import time

# The lines the emulator prints that the benchmarks read: the probe's result line (rw, bs, qd,
# iops, mbps, p50_us, p99_us), its per-device I/O count, and the exit log lines of the card or
# dom0, the vmm and the VM.
RESULT_RE = re.compile(r"result: workload=(?:nvme|xen)-bench rw=(\S+) bs=(\d+) qd=(\d+) iops=(\d+) "
                       r"mbps=([\d.]+) p50_us=(\d+) p99_us=(\d+)")
BENCH_OK_RE = re.compile(r"(?:nvme|xen)-bench: (?:ctrl|disk) \d+ ok ios=(\d+)")
BACKEND_CPU_RE = re.compile(r"(?:card|dom0) cpu time: ([\d.]+) ms user, ([\d.]+) ms system")
VMM_CPU_RE = re.compile(r"vmm cpu time: [\d.]+ ms in all; vCPU threads [\d.]+ ms .*?, of which ([\d.]+) ms "
                        r"handling exits in the vmm; other threads ([\d.]+) ms")
EXITS_RE = re.compile(r"VM ended after (\d+) ms \(.*\), (\d+) vCPU exits, exit status (-?\d+)")

def machine_description():
    """A one-paragraph description of the machine a benchmark ran on."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    kvm = "no /dev/kvm"
    if os.path.exists("/dev/kvm"):
        kvm = "kvm_pvm (software, no VT-x/AMD-V)" if os.path.exists("/sys/module/kvm_pvm") else "hardware KVM"
        for mod in ("kvm_intel", "kvm_amd"):
            if os.path.exists(f"/sys/module/{mod}"):
                kvm = f"hardware KVM ({mod})"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB, Linux {platform.release()}, "
            f"/dev/kvm: {kvm}")


def run_until(argv, marker, timeout, stdin=subprocess.DEVNULL):
    """Starts argv and returns (seconds to the first stdout line containing marker or None,
    total seconds, exit status, stdout, stderr, peak RSS KiB of the child)."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin)
    t_marker = None
    out_lines = []
    os.set_blocking(p.stdout.fileno(), True)
    deadline = t0 + timeout
    try:
        for raw in iter(p.stdout.readline, b""):
            line = raw.decode(errors="replace")
            out_lines.append(line)
            if t_marker is None and marker in line:
                t_marker = time.monotonic() - t0
            if time.monotonic() > deadline:
                p.kill()
                break
        _, status, usage = os.wait4(p.pid, 0)
    finally:
        if p.poll() is None:
            p.kill()
    total = time.monotonic() - t0
    err = p.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    return t_marker, total, code, "".join(out_lines), err, usage.ru_maxrss


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def write_csv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def print_table(header, rows):
    cells = [[str(c) for c in header]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
