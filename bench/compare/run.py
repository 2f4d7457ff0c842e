#!/usr/bin/python3
"""bench/compare: measures the emulator's per-I/O service costs on both I/O models and writes the
calibration file hostsim reads, plus held-out points the model must predict.

For every point of a grid (I/O model, queue depth, block size, instances run side by side) it
boots N probe guests under nitrovm at once, each with its own RAM-backed volume (and, as nitrovm
starts one per guest, its own card or dom0 process) and, when N > 1, pinned with its card or dom0
to its own share of the CPUs (taskset; hostsim's host.pin_instances), running nvme-bench (nitro) or xen-bench
(xen: blkback in dom0, event channels through the vmm). Each boot measures 1 + --segments
back-to-back segments of --seconds at one queue depth; the first is the warm-up and is dropped
(the card's polling, the first doorbells). A point is booted --runs times: per boot the mean over
its guests of their medians over the segments, per point the median over the boots, and its
spread (half the range of the boots against their median) goes into heldout.json as the noise
the comparison cannot beat. Per guest it also records the I/Os, the vCPU exits and the vmm's
time handling them, the card's or dom0's CPU time (its exit log line) with the part of it spent
on io_uring's kernel worker threads (iou-wrk-*, from /proc/<pid>/task/*/stat), and the card's
doorbell wake-ups.

The training part of the grid gives the calibration (bench/compare/calibration.json), read off
the measurements:
  card_us_per_io, card_us_per_kib   the card's CPU per I/O and per KiB (4 KiB QD32 and 64 KiB QD8,
                     one guest), less its sleeps and wake-ups (their CPU per wake-up from QD1
                     against QD32, by the doorbell wake-ups per I/O; it is part of the wake-up
                     latency fitted below);
  backend_thread, ram_latency_us    whether io_uring's kernel workers serve the backend (then
                     they are threads of their own on the host's CPUs) and their CPU per I/O;
  exits_per_io, exit_us   vmm exits per I/O and the vmm's time per exit (nitro);
  blkback_*, grant_*, hypercall_us   dom0's CPU per I/O (4 KiB QD32, one guest), split over
                     blkback's steps; xen_exit_us the vmm's time per exit at QD1 (the guest's
                     event-channel sends); dom0_wake_us what a sleep and a wake-up cost blkback's
                     thread (dom0's CPU per I/O at QD1 beyond that at QD32);
  host_slice_us      the kernel's tick (CONFIG_HZ);
and, by simulating the training points with hostsim (the 2 CPUs' scheduler is
sim/src/model/host_cpus.hpp), the values whose runs come closest to them (least squares of the
log errors of IOPS and p50):
  host_wake_us, host_preempt_us   a woken thread's latency to an idle CPU, and its delay before it
                     preempts a busy-polling vCPU thread;
  host_switch_us     how long a vCPU thread given its CPU back takes to run its guest again;
  host_wake_shape, host_preempt_shape   how tightly the wake-up and the way back, and the
                     preemption, gather round their means (Erlang shape: 1 exponential, 16
                     nearly constant);
  card_lost_cpu_per_s   how often the polling card worker loses its CPU to the rest of the
                     machine (it then stops polling for its 100 ms back-off);
  guest_submit_us, guest_complete_us, grant_setup_us   the guest driver's cost per I/O (3:2) and
                     blkfront's extra, starting from what QD32 suggests when the card or dom0 was
                     busy only part of the time there.
The held-out part (bench/compare/heldout.json) lists the other points with what was measured;
`build/bin/hostsim --validate bench/compare/heldout.json` compares the model against them. The
held-out points never enter the fit.

Usage: bench/compare/run.py [--build DIR] [--xen-build DIR] [--hostsim BIN] [--seconds S]
       [--segments K] [--runs N] [--out DIR] [--no-xen] [--nice N] [--measure-only | --refit MEASUREMENTS]
Defaults: 5 boots per point of 1 + 3 one-second segments, about 6 minutes for the grid and
2 for the fit on this machine. The emulator runs at nice -15 by default so that other people's
builds do not dominate what is measured. measurements.json keeps the raw figures; --refit fits
again from them without booting anything (so only --measure-only needs the machine quiet).
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

from common import BACKEND_CPU_RE, BENCH_OK_RE, EXITS_RE, RESULT_RE, VMM_CPU_RE  # noqa: E402
WAKEUPS_RE = re.compile(r"(\d+) doorbell wake-ups")

# (io_model, instances, rw, bs, qd, role). Training points fix the costs; held-out ones test them.
# The n=2 training points show how the host's scheduler shares the 2 CPUs when the guests' vCPU
# threads (busy-polling) hold both; the held-out n=2 points are at another queue depth.
GRID = [
    ("nitro", 1, "randread", 4096, 1, "train"),
    ("nitro", 1, "randread", 4096, 32, "train"),
    ("nitro", 1, "randread", 65536, 8, "train"),
    ("nitro", 2, "randread", 4096, 1, "train"),
    ("nitro", 1, "randread", 4096, 4, "heldout"),
    ("nitro", 1, "randread", 4096, 16, "heldout"),
    ("nitro", 1, "randread", 16384, 8, "heldout"),
    ("nitro", 1, "randwrite", 4096, 8, "heldout"),
    ("nitro", 2, "randread", 4096, 8, "heldout"),
    ("xen", 1, "randread", 4096, 1, "train"),
    ("xen", 1, "randread", 4096, 32, "train"),
    ("xen", 2, "randread", 4096, 1, "train"),
    ("xen", 1, "randread", 4096, 8, "heldout"),
    ("xen", 1, "randread", 16384, 8, "heldout"),
    ("xen", 2, "randread", 4096, 8, "heldout"),
]

# What the model charges besides the fitted parameters: the probe's CPL3 driver is a few hundred
# ns per command unless QD32 says otherwise; there is no PCIe in the emulator (the card reads
# guest RAM directly); the card worker's polling window and back-off are its own defaults
# (nitro_card/nvme/io.hpp: kDefaultPollUs, IoThreadConfig::poll_backoff).
FIXED = {"guest_submit_us": 0.3, "guest_complete_us": 0.2, "pcie_us": 0.0, "dma_gbps": 8.0, "irq_us": 0.0,
         "card_poll_us": 200.0, "card_poll_backoff_us": 100000.0}


def kernel_tick_us():
    """The scheduler tick of this kernel (CONFIG_HZ): how late a thread past its slice is preempted."""
    try:
        out = subprocess.run(["zcat", "/proc/config.gz"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^CONFIG_HZ=(\d+)$", out, re.M)
        if m:
            return 1e6 / int(m.group(1))
    except (OSError, subprocess.SubprocessError):
        pass
    return 4000.0


def thread_cpu_ms(pid):
    """(tid, name, utime+stime in ms) of each thread of pid."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            fields = rest.split()
            out.append((int(tid), head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) * 1000.0 / tick))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def instance_cpus(i, n, cpus):
    """The CPUs instance i of n runs on: an even share when there are enough (hostsim's
    HostCpus::instance_cpus divides them the same way), else one, in turn."""
    if n <= len(cpus):
        return cpus[i * len(cpus) // n:(i + 1) * len(cpus) // n]
    return [cpus[i % len(cpus)]]


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def run_point(args, model, n, rw, bs, qd):
    """Boots n guests at once, each running 1 + args.segments back-to-back measurements of
    args.seconds at queue depth qd (the first is the warm-up: the card's polling and the first
    doorbells settle, and it is dropped). Returns a list of per-guest dicts (or raises RuntimeError)."""
    workload = "nvme-bench" if model == "nitro" else "xen-bench"
    cpus = sorted(os.sched_getaffinity(0))
    qds = ",".join([str(qd)] * (1 + args.segments))
    procs = []
    for i in range(n):
        img = f"/dev/shm/nh-compare-{i}.img"
        vmm = args.nitrovm if model == "nitro" else args.xen_nitrovm
        # Each guest with its card or dom0 is pinned to its own share of the CPUs (one each for two
        # guests on two CPUs), as the scenario's host.pin_instances has it: left to the scheduler,
        # two guests' threads settle in one of two placements, a boot apart, whose IOPS differ 2x.
        mine = instance_cpus(i, n, cpus)
        argv = (["taskset", "-c", ",".join(map(str, mine))] if len(mine) < len(cpus) else [])
        argv += (["nice", "-n", str(args.nice)] if args.nice else []) + [vmm, "run", "--guest", "probe", "--vcpus", "1", "--memory", "256M",
                "--timeout", str(int(30 + 4 * args.seconds * (1 + args.segments)))]
        if model == "xen":
            argv += ["--io-model", "xen"]
        argv += ["--volume", f"{img},size=64M,iops=unlimited,mbps=unlimited", "--",
                 workload, f"rw={rw}", f"bs={bs}", f"qd={qds}", f"seconds={args.seconds:g}"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    # Sample the backend processes' threads while they run: the CPU of io_uring's kernel workers
    # (iou-wrk-*) apart from the rest, and the total in case a binary does not log it.
    threads = [dict() for _ in procs]  # per guest: tid -> (is io_uring worker, max cpu ms)
    while any(p.poll() is None for p in procs):
        for k, p in enumerate(procs):
            for c in children_of(p.pid):
                for tid, comm, ms in thread_cpu_ms(c):
                    prev = threads[k].get(tid, (False, 0.0))[1]
                    threads[k][tid] = (comm.startswith("iou-wrk"), max(prev, ms))
        time.sleep(0.05)
    out = []
    for k, p in enumerate(procs):
        stdout, stderr = p.communicate()
        results = RESULT_RE.findall(stdout)
        if p.returncode != 0 or len(results) != 1 + args.segments:
            last = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{model} n={n} qd={qd} bs={bs}: exit {p.returncode}: {last}")
        segs = [{"iops": int(m[3]), "p50_us": int(m[5]), "p99_us": int(m[6])} for m in results[1:]]
        ios = sum(int(x) for x in BENCH_OK_RE.findall(stdout)) or None
        b = BACKEND_CPU_RE.search(stderr)
        sampled_total = sum(ms for _, ms in threads[k].values())
        iou_ms = sum(ms for is_iou, ms in threads[k].values() if is_iou)
        backend_ms = float(b.group(1)) + float(b.group(2)) if b else (sampled_total or None)
        v = VMM_CPU_RE.search(stderr)
        e = EXITS_RE.search(stderr)
        w = WAKEUPS_RE.search(stderr)
        out.append({"iops": common.median([s_["iops"] for s_ in segs]),
                    "p50_us": common.median([s_["p50_us"] for s_ in segs]),
                    "p99_us": common.median([s_["p99_us"] for s_ in segs]),
                    "segments": segs, "ios": ios,
                    "backend_cpu_ms": backend_ms, "iou_worker_ms": iou_ms,
                    "vmm_exit_ms": float(v.group(1)) if v else None,
                    "exits": int(e.group(2)) if e else None,
                    "wakeups": int(w.group(1)) if w else None})
    return out


def get_point(points, model, n, bs, qd, role="train"):
    for p in points:
        if p["io_model"] == model and p["instances"] == n and p["bs"] == bs and p["qd"] == qd \
                and p["role"] == role and p["rw"] == "randread":
            return p
    return None


def per_io_wakeups(p):
    return p["wakeups"] / p["ios"] if p and p.get("wakeups") is not None and p.get("ios") else None


def per_io_us(p, key):
    return p[key] * 1e3 / p["ios"] if p and p.get(key) is not None and p.get("ios") else None


def fit_direct(points):
    """The parameters read straight off the training points (see the module docstring)."""
    params = dict(FIXED)
    params["host_slice_us"] = kernel_tick_us()
    notes = []
    n1 = get_point(points, "nitro", 1, 4096, 1)
    n32, n64k = get_point(points, "nitro", 1, 4096, 32), get_point(points, "nitro", 1, 65536, 8)
    if n32 and n32["backend_cpu_ms"] and n32["ios"]:
        # The card's CPU per I/O is its work plus its sleeps and wake-ups (one per doorbell that
        # found it asleep): QD1 (a wake-up for nearly every I/O) against QD32 (one per batch)
        # separates the two. The wake-up's part is inside the wake-up latency the fit finds (from
        # the doorbell to the worker's pass), so only the work is charged per I/O.
        wake = 0.0
        w1, w32 = per_io_wakeups(n1), per_io_wakeups(n32)
        if n1 and per_io_us(n1, "backend_cpu_ms") and w1 is not None and w32 is not None and w1 > w32 + 0.1:
            wake = max(0.0, (per_io_us(n1, "backend_cpu_ms") - per_io_us(n32, "backend_cpu_ms")) / (w1 - w32))
        total4 = per_io_us(n32, "backend_cpu_ms") - wake * (w32 or 0.0)
        iou4 = per_io_us(n32, "iou_worker_ms") or 0.0
        # io_uring hands requests on files it cannot serve without blocking (tmpfs) to kernel
        # worker threads: then the backend is a thread of its own on the host's CPUs.
        params["backend_thread"] = 1.0 if iou4 > 0.05 * total4 else 0.0
        per_kib = 0.0
        if n64k and n64k["backend_cpu_ms"] and n64k["ios"]:
            total64 = per_io_us(n64k, "backend_cpu_ms") - wake * (per_io_wakeups(n64k) or 0.0)
            per_kib = max(0.0, (total64 - total4) / (64 - 4))
        params["card_us_per_kib"] = per_kib
        if params["backend_thread"]:
            params["card_us_per_io"] = total4 - iou4
            params["ram_latency_us"] = max(0.0, iou4 - 4 * per_kib)
        else:
            params["card_us_per_io"] = max(0.05, total4 - 4 * per_kib)
            params["ram_latency_us"] = 0.0
        notes.append(f"nitro: card CPU {wake:.2f} us per sleep and wake-up (QD1 against QD32, by doorbell wake-ups per I/O); "
                     f"QD32: {total4:.2f} us per I/O besides ({iou4:.2f} us of it on io_uring workers); "
                     f"{per_kib:.3f} us per KiB from the 64 KiB point; backend on a thread of its own: "
                     f"{'yes' if params['backend_thread'] else 'no'}")
        if n32["exits"] is not None and n32["vmm_exit_ms"] is not None:
            params["exits_per_io"] = n32["exits"] / n32["ios"]
            if n32["exits"]:
                params["exit_us"] = n32["vmm_exit_ms"] * 1e3 / n32["exits"]
        # The card was busy only part of the time at QD32: the guest's vCPU, which submits and
        # reaps every command, set the pace. Its time per I/O (less its exits) is the guest's
        # driver cost, split 3:2 between submission and completion.
        card_busy = params["card_us_per_io"] * n32["iops"] / 1e6
        if card_busy < 0.9:
            guest = 1e6 / n32["iops"] - params.get("exits_per_io", 0.0) * params.get("exit_us", 0.0)
            params["guest_submit_us"], params["guest_complete_us"] = 0.6 * guest, 0.4 * guest
            notes.append(f"nitro QD32: card busy {100 * card_busy:.0f} % of the time: the guest sets the pace (the start of the search below), "
                         f"{guest:.2f} us per I/O on its vCPU")
    x1, x32 = get_point(points, "xen", 1, 4096, 1), get_point(points, "xen", 1, 4096, 32)
    if x32 and x32["backend_cpu_ms"] and x32["ios"]:
        dom0_us = per_io_us(x32, "backend_cpu_ms") - (per_io_us(x32, "iou_worker_ms") or 0.0)
        if not params.get("backend_thread"):
            dom0_us -= 4 * params.get("card_us_per_kib", 0.0)
        dom0_us = max(0.1, dom0_us)
        # Split dom0's measured time per I/O over blkback's steps in the published proportions.
        parts = {"blkback_req_us": 1.2, "blkback_complete_us": 1.0, "grant_map_us": 1.0, "grant_unmap_us": 1.0,
                 "hypercall_us": 0.7, "grant_lock_us": 2 * 0.30}
        scale = dom0_us / sum(parts.values())
        for k, v in parts.items():
            params[k] = v * scale if k != "grant_lock_us" else 0.30 * scale
        notes.append(f"xen dom0 CPU per I/O at QD32 {dom0_us:.2f} us (blkback's own, backend copy apart)")
    if x1 and x32 and x1["backend_cpu_ms"] and x1["ios"] and x32["backend_cpu_ms"] and x32["ios"]:
        # At QD1 blkback sleeps after every request (dom0 does not poll): its CPU per I/O beyond
        # the QD32 figure is what a sleep and a wake-up cost the thread.
        params["dom0_wake_us"] = max(0.0, per_io_us(x1, "backend_cpu_ms") - per_io_us(x32, "backend_cpu_ms"))
        notes.append(f"xen QD1: dom0 CPU {per_io_us(x1, 'backend_cpu_ms'):.2f} us per I/O: "
                     f"{params['dom0_wake_us']:.2f} us per sleep and wake-up")
    if x1 and x1["exits"] and x1["vmm_exit_ms"] is not None:
        # At QD1 nearly every exit is the guest's event-channel send (blkback asleep).
        params["xen_exit_us"] = x1["vmm_exit_ms"] * 1e3 / x1["exits"]
        notes.append(f"xen QD1: {x1['exits'] / x1['ios']:.2f} exits per I/O, {params['xen_exit_us']:.1f} us each in the vmm")
    if x32 and x32["ios"] and x32["exits"] is not None and "blkback_req_us" in params:
        # As for the card: dom0 was busy only part of the time at QD32, the guest set the pace. Its
        # time per I/O beyond the NVMe driver's (the same probe) and its event-channel sends is
        # blkfront's own work: the grant entries, per page.
        dom0_busy = per_io_us(x32, "backend_cpu_ms") * x32["iops"] / 1e6
        if dom0_busy < 0.9:
            sends = x32["exits"] / x32["ios"] * params.get("xen_exit_us", 0.0)
            extra = 1e6 / x32["iops"] - params["guest_submit_us"] - params["guest_complete_us"] - sends
            params["grant_setup_us"] = max(0.0, extra)
            notes.append(f"xen QD32: dom0 busy {100 * dom0_busy:.0f} % of the time; blkfront {params['grant_setup_us']:.2f} us "
                         f"per I/O beyond the NVMe driver's (event-channel sends {sends:.2f} us per I/O; the start of the search below)")
    if not x32:
        notes.append("xen: no emulator measurements (nitrovm without the xen I/O model); published defaults")
    return params, notes


def simulate(args, params, pts, workdir):
    """The model's IOPS and p50 for the points (hostsim --validate on emulator.json), in order."""
    cal_path = os.path.join(workdir, "trial-calibration.json")
    with open(cal_path, "w") as f:
        json.dump({"source": "bench/compare fit (trial)", "params": params}, f)
    held = heldout_doc(pts, workdir)
    held_path = os.path.join(workdir, "trial-points.json")
    with open(held_path, "w") as f:
        json.dump(held, f)
    r = subprocess.run([args.hostsim, "--validate", held_path, "--calibration", cal_path, "--out", workdir,
                        "--jobs", "2", "--seed", "7"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"hostsim --validate failed: {r.stderr.strip() or r.stdout.strip()}")
    rows = []
    with open(os.path.join(workdir, "validation.csv")) as f:
        next(f)
        for line in f:
            c = line.strip().split(",")
            rows.append((float(c[3]), float(c[6])))
    return rows


def fit_scheduler(args, params, points, notes):
    """host_wake_us, host_preempt_us, card_lost_cpu_per_s (how often the polling card worker loses
    its CPU to the rest of this shared machine, and so stops polling for a while), the guest
    driver's cost per I/O and blkfront's extra (grant_setup_us): the values whose simulation of the training points comes closest
    to what was measured (least squares of the log errors of IOPS and p50 over all of them). A log
    grid over the first two, then over each other one in turn; then the same around the best."""
    train = [p for p in points if p["role"] == "train"]
    if not os.path.exists(args.hostsim) or not train:
        notes.append(f"scheduler: not fitted ({args.hostsim} missing); defaults")
        return
    import tempfile
    workdir = tempfile.mkdtemp(prefix="nh-compare-fit-")
    keys = ("host_wake_us", "host_preempt_us", "card_lost_cpu_per_s", "guest_us", "grant_setup_us", "host_wake_shape",
            "host_switch_us", "host_preempt_shape")
    memo = {}

    def trial_params(x):
        trial = dict(params, **dict(zip(keys[:3], x[:3])))
        trial["guest_submit_us"], trial["guest_complete_us"] = 0.6 * x[3], 0.4 * x[3]
        trial["grant_setup_us"] = x[4]
        trial["host_wake_shape"] = x[5]
        trial["host_switch_us"] = x[6]
        trial["host_preempt_shape"] = x[7]
        return trial

    def cost(x):
        key = tuple(round(v, 3) for v in x)
        if key not in memo:
            err = 0.0
            for p, (iops, p50) in zip(train, simulate(args, trial_params(x), train, workdir)):
                err += math.log(max(iops, 1.0) / p["iops"]) ** 2 + math.log(max(p50, 0.1) / max(p["p50_us"], 1.0)) ** 2
            memo[key] = err
        return memo[key]

    def best_of(i, values, x):
        return min(values, key=lambda v: cost(x[:i] + [v] + x[i + 1:]))

    coarse = [2.0 ** k for k in range(10)]                  # 1 us .. 512 us
    # 0, 1 .. 65536 per second: the card found work while polling for 1-2 % of the I/Os here
    # (its "polls found work"), so the rate may have to be high enough that it hardly polls.
    rates = [0.0] + [2.0 ** k for k in range(0, 17, 2)]
    # The guest's driver cost per I/O and blkfront's extra start from what QD32 suggests (the
    # guest setting the pace); the search moves blkfront's by up to 4x either way.
    guest0 = params["guest_submit_us"] + params["guest_complete_us"]
    grant0 = params.get("grant_setup_us", 0.2)
    scales = [2 ** (k / 2) for k in range(-4, 5)]
    # QD32's round per I/O is an upper bound of the guest's cost (the card's wake-ups are in it
    # too): the search goes down to 1/16 of it.
    guest_scales = [2 ** (k / 2) for k in range(-8, 5)]
    shapes = [1, 2, 4, 8, 16]                                # Erlang shapes
    x = [8.0, 32.0, 10.0, guest0, grant0, 1, 0.0, 1]
    for first in (True, False):
        x[0], x[1] = min(((w, p) for w in coarse for p in coarse), key=lambda wp: cost([wp[0], wp[1]] + x[2:])) \
            if first else min(((x[0] * a, x[1] * b) for a in scales[2:7] for b in scales[2:7]),
                              key=lambda wp: cost([wp[0], wp[1]] + x[2:]))
        x[5] = best_of(5, shapes, x)
        x[7] = best_of(7, shapes, x)
        x[6] = best_of(6, [0.0] + (coarse[:8] if first else [max(x[6], 1.0) * a for a in scales]), x)
        x[2] = best_of(2, rates + [x[2] * a for a in scales[3:6]], x)
        x[3] = best_of(3, [guest0 * a for a in guest_scales], x)
        x[4] = best_of(4, [0.0] + [max(grant0, 0.1) * a for a in scales], x)
    params.update(trial_params(x))
    params.pop("guest_us", None)
    rms = math.sqrt(cost(x) / (2 * len(train)))
    notes.append(f"fitted by simulating the {len(train)} training points ({len(memo)} runs): wake-up on an idle "
                 f"CPU {x[0]:.1f} us, preemption of a busy-polling vCPU thread {x[1]:.1f} us (means; Erlang "
                 f"shapes {x[5]} and {x[7]}), a vCPU thread's way back into its guest {x[6]:.1f} us, polling card "
                 f"worker loses its CPU {x[2]:.1f} times a second, guest driver {x[3]:.2f} us per I/O, blkfront "
                 f"{x[4]:.2f} us more; rms log error of IOPS and p50 {rms:.2f}")


def fit(args, points):
    """Calibration parameters from the training points (see the module docstring)."""
    params, notes = fit_direct(points)
    fit_scheduler(args, params, points, notes)
    return params, notes


def spread_pct(values):
    """Half the range of the repeats against their median, in %: the noise a point carries."""
    vals = [v for v in values if v is not None]
    med = common.median(vals)
    return 100.0 * (max(vals) - min(vals)) / (2 * med) if vals and med else None


def heldout_doc(pts, out_dir):
    held = {"scenario": os.path.relpath(os.path.join(ROOT, "configs", "scenarios", "emulator.json"), out_dir),
            "calibration_note": "hostsim --validate uses the scenario's calibration (calibration.json here)",
            "points": []}
    for p in pts:
        point = {"label": f"n={p['instances']} {p['rw']} bs={p['bs'] // 1024}k qd={p['qd']}",
                 "io_model": p["io_model"],
                 "set": {"/instances/0/count": p["instances"], "/instances/0/workload/qd": p["qd"],
                         "/instances/0/workload/bs": p["bs"], "/instances/0/workload/rw": p["rw"]},
                 "measured": {"iops": p["iops"], "p50_us": p["p50_us"], "p99_us": p["p99_us"]}}
        if p.get("spread"):
            point["spread"] = p["spread"]
        held["points"].append(point)
    return held


def measure(args):
    """Boots every grid point args.runs times; returns (points, skipped)."""
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
        # Per boot: the mean over its guests of their medians over the measured segments (what the
        # model's group mean predicts); per point: the median over the boots.
        keys = ["iops", "p50_us", "p99_us", "ios", "backend_cpu_ms", "iou_worker_ms", "vmm_exit_ms", "exits", "wakeups"]
        per_run = []
        for guests in runs:
            k = len(guests)
            per_run.append({key: (sum(g[key] for g in guests) / k if all(g[key] is not None for g in guests) else None)
                            for key in keys})
        med = {key: common.median([r[key] for r in per_run]) for key in keys}
        p = {"io_model": model, "instances": n, "rw": rw, "bs": bs, "qd": qd, "role": role, **med,
             "spread": {"runs": len(runs), "iops_pct": round(spread_pct([r["iops"] for r in per_run]), 1),
                        "p50_pct": round(spread_pct([r["p50_us"] for r in per_run]), 1)},
             "repeats": {"iops": [r["iops"] for r in per_run], "p50_us": [r["p50_us"] for r in per_run],
                         "segments": [[s_["iops"] for g in guests for s_ in g["segments"]] for guests in runs]}}
        points.append(p)
        cpu = p["backend_cpu_ms"] * 1e3 / p["ios"] if p["backend_cpu_ms"] and p["ios"] else None
        print(f"  {role:8} {model:5} n={n} {rw:9} bs={bs:6} qd={qd:3}: {p['iops']:9.0f} IOPS/guest "
              f"(±{p['spread']['iops_pct']:5.1f} %)  p50 {p['p50_us']:6.1f} us (±{p['spread']['p50_pct']:5.1f} %)"
              f"  p99 {p['p99_us']:7.1f} us  backend CPU/IO {'-' if cpu is None else f'{cpu:.2f} us'}", flush=True)
    return points, skipped


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="build dir with bin/nitrovm, bin/nitro-card")
    ap.add_argument("--xen-build", help="build dir for the xen points (bin/nitrovm with --io-model xen, "
                                        "bin/xen-dom0); default: --build")
    ap.add_argument("--hostsim", help="the hostsim binary that fits the scheduler (default: --build's)")
    ap.add_argument("--seconds", type=int, default=1, help="seconds per measured segment (default 1)")
    ap.add_argument("--segments", type=int, default=3,
                    help="measured segments per boot, after one warm-up segment that is dropped (default 3)")
    ap.add_argument("--runs", type=int, default=5, help="boots per point (median taken; default 5)")
    ap.add_argument("--out", default=HERE, help="where calibration.json, heldout.json and measurements.json go")
    ap.add_argument("--no-xen", action="store_true")
    ap.add_argument("--measure-only", action="store_true",
                    help="write measurements.json and stop (fit later with --refit, without holding the bench lock)")
    ap.add_argument("--refit", metavar="MEASUREMENTS",
                    help="fit again from a measurements.json of an earlier run instead of measuring")
    ap.add_argument("--nice", type=int, default=-15,
                    help="niceness of the emulator processes (default -15: on a shared, loaded machine the "
                         "measurement is of the I/O path, not of waiting for a CPU; 0 to run as is)")
    args = ap.parse_args()
    args.nitrovm = os.path.join(args.build, "bin", "nitrovm")
    args.xen_nitrovm = os.path.join(args.xen_build or args.build, "bin", "nitrovm")
    args.hostsim = args.hostsim or os.path.join(args.build, "bin", "hostsim")
    if args.seconds < 1 or args.segments < 1 or args.runs < 1:
        sys.exit("compare: --seconds, --segments and --runs must be at least 1")

    if args.refit:
        with open(args.refit) as f:
            saved = json.load(f)
        points, skipped, source = saved["points"], saved.get("skipped", []), saved["source"]
    else:
        if not os.path.exists(args.nitrovm):
            sys.exit(f"compare: {args.nitrovm} missing; build it first (scripts/setup.sh) or pass --build")

        def remove_images():
            for i in range(max(g[1] for g in GRID)):
                path = f"/dev/shm/nh-compare-{i}.img"
                if os.path.exists(path):
                    os.remove(path)
        import atexit
        atexit.register(remove_images)
        print("machine:", common.machine_description())
        print(f"nitrovm: {args.nitrovm}; {args.runs} boot(s) per point, each {args.segments} measured segment(s) of "
              f"{args.seconds} s after a {args.seconds} s warm-up; ± is half the range of the boots against their median")
        started = time.monotonic()
        points, skipped = measure(args)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        source = (f"bench/compare on {stamp} ({args.runs} boots x {args.segments} x {args.seconds} s per point, "
                  f"several guests pinned to their share of the CPUs, {time.monotonic() - started:.0f} s): "
                  f"{common.machine_description()}")
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "measurements.json"), "w") as f:
            json.dump({"source": source, "points": points, "skipped": skipped}, f, indent=1)
            f.write("\n")
        if args.measure_only:
            print(f"wrote {args.out}/measurements.json")
            return

    params, notes = fit(args, points)
    for n in notes:
        print("  " + n)
    for s_ in skipped:
        notes.append("skipped: " + s_)
    held = [p for p in points if p["role"] == "heldout"]
    noise = [p["spread"]["iops_pct"] for p in held if p.get("spread")]
    noise50 = [p["spread"]["p50_pct"] for p in held if p.get("spread")]
    if noise:
        notes.append(f"repeat spread of the held-out points (half the range of the boots over their median): "
                     f"IOPS mean {sum(noise) / len(noise):.1f} % (max {max(noise):.1f} %), "
                     f"p50 mean {sum(noise50) / len(noise50):.1f} % (max {max(noise50):.1f} %)")
        print("  " + notes[-1])
    cal = {"source": source, "notes": notes, "params": {k: round(v, 4) for k, v in params.items()},
           "training": [{k: v for k, v in p.items() if k != "repeats"} for p in points if p["role"] == "train"]}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "calibration.json"), "w") as f:
        json.dump(cal, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "heldout.json"), "w") as f:
        json.dump(heldout_doc(held, args.out), f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}/calibration.json and heldout.json ({len(held)} held-out points)")


if __name__ == "__main__":
    main()
