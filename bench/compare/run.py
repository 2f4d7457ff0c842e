#!/usr/bin/python3
"""bench/compare: measures the emulator's per-I/O service costs on both I/O models and writes the
calibration file hostsim reads, plus held-out points the model must predict.

For every point of a grid (I/O model, queue depth, block size, instances run side by side) it
boots N probe guests under nitrovm at once, each with its own RAM-backed volume, running
nvme-bench (nitro: the card process serves the NVMe controller) or xen-bench (xen: blkback in
the dom0 process, event channels through the vmm) at one queue depth. Per guest it records
IOPS and p50/p99 from the `result:` line, the I/Os, the vCPU exits and the vmm's time handling
them, and the card's or dom0's CPU time (its exit log line; if a binary does not log it, the
threads' utime+stime from /proc/<pid>/task/*/stat sampled while it runs).

The training part of the grid gives the calibration (bench/compare/calibration.json):
  card_us_per_io     card CPU per I/O at the training point with the deepest queue (the card
                     thread is busy there, so CPU / I/Os is its service time, not polling);
  host_cpu_share     card CPU per I/O x IOPS at that point: the share of a CPU the emulator's
                     threads got on this shared machine;
  host_stall_us      how long they lose it at a time (exponential), from that point's p99 over
                     its p50; the model runs the emulator's guest vCPUs, card worker and dom0
                     on processors that stall that way;
  card_us_per_kib    from a large-block training point over the 4 KiB one;
  exits_per_io, exit_us   vmm exits per I/O and the vmm's time per exit;
  nitro_notify_us, nitro_notify_p99_us   the card's wake-up for an idle queue: a log-normal
                     with the QD1 median and mean latency (1 / IOPS) once the modelled guest, card
                     and backend (io_uring on tmpfs, 1 us) costs are taken out;
  the Xen half the same way from dom0's CPU and xen-bench's QD1 latency (when nitrovm has the
  xen I/O model; otherwise the published defaults stay and the file says so).
The held-out part (bench/compare/heldout.json) lists the other points with what was measured;
`build/bin/hostsim --validate bench/compare/heldout.json` compares the model against them.

Usage: bench/compare/run.py [--build DIR] [--xen-build DIR] [--seconds S] [--runs N] [--out DIR] [--no-xen] [--nice N]
Runs are short (default 1 s per boot); this machine has 2 shared CPUs. The emulator runs at nice
-15 by default so that other people's builds do not dominate what is measured.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import common  # noqa: E402

RESULT_RE = re.compile(r"result: workload=(nvme|xen)-bench rw=(\S+) bs=(\d+) qd=(\d+) iops=(\d+) mbps=([\d.]+) "
                       r"p50_us=(\d+) p99_us=(\d+)")
OK_RE = re.compile(r"(?:nvme|xen)-bench: (?:ctrl|disk) \d+ ok ios=(\d+)")
BACKEND_CPU_RE = re.compile(r"(?:card|dom0) cpu time: ([\d.]+) ms user, ([\d.]+) ms system")
VMM_CPU_RE = re.compile(r"vmm cpu time: [\d.]+ ms in all; vCPU threads [\d.]+ ms .*?, of which ([\d.]+) ms "
                        r"handling exits in the vmm; other threads ([\d.]+) ms")
EXITS_RE = re.compile(r"VM ended after (\d+) ms \(.*\), (\d+) vCPU exits, exit status (-?\d+)")

# (io_model, instances, rw, bs, qd, role). Training points fix the costs; held-out ones test them.
GRID = [
    ("nitro", 1, "randread", 4096, 1, "train"),
    ("nitro", 1, "randread", 4096, 32, "train"),
    ("nitro", 1, "randread", 65536, 8, "train"),
    ("nitro", 1, "randread", 4096, 4, "heldout"),
    ("nitro", 1, "randread", 4096, 16, "heldout"),
    ("nitro", 1, "randread", 16384, 8, "heldout"),
    ("nitro", 1, "randwrite", 4096, 8, "heldout"),
    ("nitro", 2, "randread", 4096, 8, "heldout"),
    ("xen", 1, "randread", 4096, 1, "train"),
    ("xen", 1, "randread", 4096, 32, "train"),
    ("xen", 1, "randread", 4096, 8, "heldout"),
    ("xen", 1, "randread", 16384, 8, "heldout"),
    ("xen", 2, "randread", 4096, 8, "heldout"),
]

# What the model charges besides the fitted parameters (the probe's CPL3 driver is a few hundred
# ns per command; there is no PCIe in the emulator: the card reads guest RAM directly).
FIXED = {"guest_submit_us": 0.3, "guest_complete_us": 0.2, "pcie_us": 0.0, "dma_gbps": 8.0, "irq_us": 0.0,
         "ram_latency_us": 1.0}


def proc_cpu_ms(pid):
    """utime+stime of all threads of pid in ms (0 if gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total * 1000.0 / tick


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def run_point(args, model, n, rw, bs, qd):
    """Boots n guests at once; returns a list of per-guest dicts (or raises RuntimeError)."""
    workload = "nvme-bench" if model == "nitro" else "xen-bench"
    procs = []
    for i in range(n):
        img = f"/dev/shm/nh-compare-{i}.img"
        vmm = args.nitrovm if model == "nitro" else args.xen_nitrovm
        argv = (["nice", "-n", str(args.nice)] if args.nice else []) + [vmm, "run", "--guest", "probe", "--vcpus", "1", "--memory", "256M",
                "--timeout", str(int(30 + 4 * args.seconds))]
        if model == "xen":
            argv += ["--io-model", "xen"]
        argv += ["--volume", f"{img},size=64M,iops=unlimited,mbps=unlimited", "--",
                 workload, f"rw={rw}", f"bs={bs}", f"qd={qd}", f"seconds={args.seconds:g}"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    # Sample the backend processes' CPU while they run, in case they do not log it.
    sampled = {}
    while any(p.poll() is None for p in procs):
        for k, p in enumerate(procs):
            for c in children_of(p.pid):
                v = proc_cpu_ms(c)
                if v > 0:
                    sampled[k] = max(sampled.get(k, 0.0), v)
        time.sleep(0.05)
    out = []
    for k, p in enumerate(procs):
        stdout, stderr = p.communicate()
        m = RESULT_RE.search(stdout)
        if p.returncode != 0 or not m:
            last = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{model} n={n} qd={qd} bs={bs}: exit {p.returncode}: {last}")
        ios = int(OK_RE.search(stdout).group(1)) if OK_RE.search(stdout) else None
        b = BACKEND_CPU_RE.search(stderr)
        backend_ms = float(b.group(1)) + float(b.group(2)) if b else sampled.get(k)
        v = VMM_CPU_RE.search(stderr)
        e = EXITS_RE.search(stderr)
        out.append({"iops": int(m.group(5)), "p50_us": int(m.group(7)), "p99_us": int(m.group(8)), "ios": ios,
                    "backend_cpu_ms": backend_ms, "vmm_exit_ms": float(v.group(1)) if v else None,
                    "exits": int(e.group(2)) if e else None})
    return out


def fit(points):
    """Calibration parameters from the training points (see the module docstring)."""
    params = dict(FIXED)
    notes = []

    def get(model, bs, qd):
        for p in points:
            if p["io_model"] == model and p["instances"] == 1 and p["bs"] == bs and p["qd"] == qd \
                    and p["role"] == "train" and p["rw"] == "randread":
                return p
        return None

    n1, n32, n64k = get("nitro", 4096, 1), get("nitro", 4096, 32), get("nitro", 65536, 8)
    if n32 and n32["backend_cpu_ms"] and n32["ios"]:
        params["card_us_per_io"] = n32["backend_cpu_ms"] * 1e3 / n32["ios"]
        # At QD32 the card works without pause; its CPU time per I/O against the wall time per
        # I/O is the share of a CPU it got on this (shared) machine.
        params["host_cpu_share"] = min(1.0, params["card_us_per_io"] * n32["iops"] / 1e6)
        # The threads lose their CPU for a while now and then: the QD32 tail over its median, for
        # exponential stalls that hit a share (1 - cpu share) of the time.
        lost = 1.0 - params["host_cpu_share"]
        if lost > 0.01 and n32["p99_us"] > n32["p50_us"]:
            params["host_stall_us"] = (n32["p99_us"] - n32["p50_us"]) / math.log(100 * lost)
        if n64k and n64k["backend_cpu_ms"] and n64k["ios"]:
            per_io = n64k["backend_cpu_ms"] * 1e3 / n64k["ios"]
            params["card_us_per_kib"] = max(0.0, (per_io - params["card_us_per_io"]) / (64 - 4))
        if n32["exits"] is not None and n32["vmm_exit_ms"] is not None:
            params["exits_per_io"] = n32["exits"] / n32["ios"]
            if n32["exits"]:
                params["exit_us"] = n32["vmm_exit_ms"] * 1e3 / n32["exits"]
    if n1:
        # QD1 on an idle card: the command and its backend completion each wait for the worker to
        # wake (on a loaded host it has given up polling). The QD1 median and mean (1 / IOPS),
        # less the modelled costs, halved, give a log-normal for one wake-up.
        fixed = ((params["guest_submit_us"] + params["guest_complete_us"] + params.get("card_us_per_io", 1.5)) /
                 params.get("host_cpu_share", 1.0) + 4096 / (params["dma_gbps"] * 1e3) + params.get("ram_latency_us", 1.0))
        params["card_poll_us"] = 0.0
        mean_us = 1e6 / n1["iops"]
        med = max(0.1, (n1["p50_us"] - fixed) / 2)
        mean = max(med, (mean_us - fixed) / 2)
        sigma = math.sqrt(2 * math.log(mean / med)) if mean > med else 0.0
        params["nitro_notify_us"] = med
        params["nitro_notify_p99_us"] = med * math.exp(2.3263 * sigma)
        notes.append(f"nitro QD1: mean latency {mean_us:.2f} us, p50 {n1['p50_us']} us; card wake-up median "
                     f"{med:.2f} us, p99 {params['nitro_notify_p99_us']:.1f} us (log-normal)")

    x1, x32 = get("xen", 4096, 1), get("xen", 4096, 32)
    if x32 and x32["backend_cpu_ms"] and x32["ios"]:
        dom0_us = x32["backend_cpu_ms"] * 1e3 / x32["ios"]
        # Split dom0's measured time per I/O over blkback's steps in the published proportions.
        parts = {"blkback_req_us": 1.2, "blkback_complete_us": 1.0, "grant_map_us": 1.0, "grant_unmap_us": 1.0,
                 "hypercall_us": 0.7, "grant_lock_us": 2 * 0.30}
        scale = dom0_us / sum(parts.values())
        for k, v in parts.items():
            params[k] = v * scale if k != "grant_lock_us" else 0.30 * scale
        if x32["exits"] is not None and x32["vmm_exit_ms"] is not None and x32["exits"]:
            params["evtchn_hop_us"] = x32["vmm_exit_ms"] * 1e3 / x32["exits"]
        notes.append(f"xen dom0 CPU per I/O at QD32 {dom0_us:.2f} us")
        if x1:
            mean_us = 1e6 / x1["iops"]
            notes.append(f"xen QD1 mean latency {mean_us:.2f} us")
    else:
        notes.append("xen: no emulator measurements (nitrovm without the xen I/O model); published defaults")
    return params, notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="build dir with bin/nitrovm, bin/nitro-card")
    ap.add_argument("--xen-build", help="build dir for the xen points (bin/nitrovm with --io-model xen, "
                                        "bin/xen-dom0); default: --build")
    ap.add_argument("--seconds", type=int, default=1)
    ap.add_argument("--out", default=HERE, help="where calibration.json and heldout.json go")
    ap.add_argument("--no-xen", action="store_true")
    ap.add_argument("--runs", type=int, default=1, help="boots per point (median taken)")
    ap.add_argument("--nice", type=int, default=-15,
                    help="niceness of the emulator processes (default -15: on a shared, loaded machine the "
                         "measurement is of the I/O path, not of waiting for a CPU; 0 to run as is)")
    args = ap.parse_args()
    args.nitrovm = os.path.join(args.build, "bin", "nitrovm")
    args.xen_nitrovm = os.path.join(args.xen_build or args.build, "bin", "nitrovm")
    if not os.path.exists(args.nitrovm):
        sys.exit(f"compare: {args.nitrovm} missing; build it first (scripts/setup.sh) or pass --build")
    def remove_images():
        for i in range(max(g[1] for g in GRID)):
            for path in (f"/dev/shm/nh-compare-{i}.img",):
                if os.path.exists(path):
                    os.remove(path)
    import atexit
    atexit.register(remove_images)
    print("machine:", common.machine_description())
    print(f"nitrovm: {args.nitrovm}; {args.seconds} s per boot, {args.runs} run(s) per point")

    points, skipped = [], []
    for model, n, rw, bs, qd, role in GRID:
        if model == "xen" and args.no_xen:
            continue
        runs = []
        try:
            for _ in range(args.runs):
                runs.append(run_point(args, model, n, rw, bs, qd))
        except RuntimeError as e:
            skipped.append(str(e))
            print(f"  skipped: {e}")
            continue
        # Per guest: medians over runs; then the mean over the guests of one run (what the model's
        # group mean predicts).
        per_run = []
        for guests in runs:
            k = len(guests)
            per_run.append({key: (sum(g[key] for g in guests) / k if all(g[key] is not None for g in guests) else None)
                            for key in guests[0]})
        med = {key: common.median([r[key] for r in per_run]) for key in per_run[0]}
        p = {"io_model": model, "instances": n, "rw": rw, "bs": bs, "qd": qd, "role": role, **med}
        points.append(p)
        cpu = p["backend_cpu_ms"] * 1e3 / p["ios"] if p["backend_cpu_ms"] and p["ios"] else None
        print(f"  {role:8} {model:5} n={n} {rw:9} bs={bs:6} qd={qd:3}: {p['iops']:9.0f} IOPS/guest  p50 {p['p50_us']:6.1f} us"
              f"  p99 {p['p99_us']:6.1f} us  backend CPU/IO {'-' if cpu is None else f'{cpu:.2f} us'}")

    params, notes = fit(points)
    for n in notes:
        print("  " + n)
    for s in skipped:
        notes.append("skipped: " + s)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cal = {"source": f"bench/compare on {stamp}: {common.machine_description()}",
           "notes": notes, "params": {k: round(v, 4) for k, v in params.items()},
           "training": [p for p in points if p["role"] == "train"]}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "calibration.json"), "w") as f:
        json.dump(cal, f, indent=2)
        f.write("\n")
    held = {"scenario": os.path.relpath(os.path.join(ROOT, "configs", "scenarios", "emulator.json"), args.out),
            "calibration_note": "hostsim --validate uses the scenario's calibration (calibration.json here)",
            "points": []}
    for p in points:
        if p["role"] != "heldout":
            continue
        held["points"].append({
            "label": f"n={p['instances']} {p['rw']} bs={p['bs'] // 1024}k qd={p['qd']}",
            "io_model": p["io_model"],
            "set": {"/instances/0/count": p["instances"], "/instances/0/workload/qd": p["qd"],
                    "/instances/0/workload/bs": p["bs"], "/instances/0/workload/rw": p["rw"]},
            "measured": {"iops": p["iops"], "p50_us": p["p50_us"], "p99_us": p["p99_us"]}})
    with open(os.path.join(args.out, "heldout.json"), "w") as f:
        json.dump(held, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}/calibration.json and heldout.json ({len(held['points'])} held-out points)")


if __name__ == "__main__":
    main()
