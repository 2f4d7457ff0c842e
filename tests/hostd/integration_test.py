#!/usr/bin/python3
"""hostd driven through the Python client: a fleet of probe guests, bad requests, concurrent
launches, CPU credits, and restarts with live state. Needs /dev/kvm (exit 77 = skipped).

  PYTHONPATH=build/python /usr/bin/python3 tests/hostd/integration_test.py --build build [-k NAME]
"""
import argparse
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

from nitrohost import Client, HostError, pb, state_name, types_pb

FAILURES = []


def check(cond, what):
    print(("  ok    " if cond else "  FAIL  ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


def vmm_processes(ids=None):
    """Processes (vmm and card) started for instances: they carry NITROHOST_INSTANCE_ID."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for e in env:
            if e.startswith(b"NITROHOST_INSTANCE_ID="):
                iid = e.split(b"=", 1)[1].decode()
                if ids is None or iid in ids:
                    found[int(pid)] = iid
    return found


class Hostd:
    def __init__(self, build, tmp, name="hostd"):
        self.build, self.tmp = build, tmp
        os.makedirs(tmp, exist_ok=True)
        self.socket = os.path.join(tmp, "hostd.sock")
        self.state = os.path.join(tmp, "state")
        self.log = os.path.join(tmp, f"{name}.log")
        self.proc = None

    def start(self):
        logf = open(self.log, "a")
        self.proc = subprocess.Popen(
            [os.path.join(self.build, "bin", "hostd"), "--socket", self.socket, "--state-dir", self.state,
             "--host-vcpus", "16", "--host-memory-mib", "2048", "--stop-grace", "3"],
            stdout=logf, stderr=logf, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hostd exited with {self.proc.returncode}; see {self.log}")
            if os.path.exists(self.socket):
                try:
                    with Client(self.socket, timeout=2) as c:
                        c.host()
                    return self
                except HostError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("hostd did not come up")

    def stop(self, sig=signal.SIGTERM, timeout=20):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def client(self):
        return Client(self.socket)


def expect_error(fn, code, prefix, what):
    try:
        fn()
    except HostError as e:
        check(e.code == code and e.message.startswith(prefix), f"{what}: {e.code}: {e.message}")
        return
    check(False, f"{what}: no error")


def spin_share(console):
    m = re.search(r"spin: cpus=(\d+) seconds=(\d+) share=([\d.]+)%", console)
    return float(m.group(3)) if m else None


def test_fleet(h):
    print("fleet: three types, different I/O models; states, consoles, exit statuses, metrics, terminate")
    with h.client() as c:
        host = c.host()
        models = [types_pb.IoModel.Name(m) for m in host.io_models]
        print(f"  host: {host.version}; I/O models {models}; CPU caps: {host.cpu_enforcement}")
        st = os.stat(h.socket)
        check(stat.S_IMODE(st.st_mode) == 0o600, f"socket mode {oct(stat.S_IMODE(st.st_mode))}")
        refl = subprocess.run([sys.executable, "-m", "nitrohost.reflect", "unix:" + h.socket, "list"],
                              capture_output=True, text=True, timeout=30)
        check("nitrohost.v1.HostService" in refl.stdout and "rpc StreamConsole(nitrohost.v1.StreamConsoleRequest) "
              "returns (stream nitrohost.v1.ConsoleChunk)" in refl.stdout, "reflection lists the service")
        t3 = c.instance_types(families=["t3"])
        check([t.name for t in t3] == ["t3.micro", "t3.medium", "t3.large", "t3.2xlarge"], "DescribeInstanceTypes t3")
        check(len(c.instance_types()) == 40, "DescribeInstanceTypes returns the whole catalog (40)")
        events = []
        watcher = c.events(replay=False)
        t = threading.Thread(target=lambda: [events.append(e) for e in watcher], daemon=True)
        t.start()
        time.sleep(0.3)
        a = c.run("t3.micro", ["nvme-verify"], io_model="nitro", volumes_mib=[16])[0]
        b = c.run("m5.large", ["exit", "7"], io_model="none")[0]
        xen = "IO_MODEL_XEN" in models
        if xen:  # i3.large is a Xen-era type: xen is its default I/O model
            third = c.run("i3.large", ["xen-verify"], volumes_mib=[16])[0]
        else:
            third = c.run("c6i.large", ["smp"], io_model="none")[0]
        ids = [a, b, third]
        insts = c.wait(ids, timeout=90)
        by = {i.instance_id: i for i in insts}
        for i in insts:
            print(f"  {i.instance_id} {i.instance_type:10} io={types_pb.IoModel.Name(i.io_model):16} vcpus={i.vcpus} "
                  f"mem={i.memory_mib}M exit={i.exit_status} reason={i.state_reason!r}")
        check(by[a].exit_status == 0 and by[a].io_model == types_pb.IO_MODEL_NITRO, "t3.micro nvme-verify on the nitro card: 0")
        check(by[a].vcpus == 2, "t3.micro has 2 vCPUs")
        check(by[b].exit_status == 7 and by[b].state_reason == "the guest exited with status 7", "m5.large exit 7")
        check(by[third].exit_status == 0, f"{by[third].instance_type} {by[third].guest_args[0]}: 0")
        if xen:
            check(by[third].io_model == types_pb.IO_MODEL_XEN, "i3.large ran on its default I/O model, xen")
            mx = c.metrics([third]).instances[0]
            check(mx.io_reads > 0 and mx.io_writes > 0, f"xen I/O in the metrics: {mx.io_reads} reads, "
                  f"{mx.io_writes} writes, {mx.vcpu_exits} VM exits")
        check(len(c.volumes()) == 0, "the launch volume went with its instance (delete_on_termination)")
        ca = c.console(a)
        check("banner cpus=2" in ca and "probe: exit status 0" in ca, "console of the t3.micro has the banner and status")
        check("cpus=2 mem_mib=256" in c.console(b), "m5.large guest: 2 vCPUs, 256 MiB (8 GiB / 32)")
        m = {x.instance_id: x for x in c.metrics(ids).instances}
        check(all(m[i].vcpu_threads == 2 or m[i].vcpu_seconds >= 0 for i in ids), "metrics for all three")
        check(m[a].cpu.policy == "credits-unlimited", f"t3.micro policy {m[a].cpu.policy}")
        # A long one to terminate while it runs.
        d = c.run("t3.micro", ["spin", "seconds=600"], io_model="nitro")[0]
        c.wait([d], states=("running",), timeout=30)
        chunks = []
        for text in c.stream_console(d):
            chunks.append(text)
            if "banner" in "".join(chunks):
                break
        check("banner cpus=2" in "".join(chunks), "StreamConsole delivers the banner")
        check(len(vmm_processes([d])) >= 1, "the running instance has its vmm")
        time.sleep(1.2)
        md = c.metrics([d]).instances[0]
        check(md.vcpu_threads == 2 and md.vcpu_seconds > 0.1, f"running vmm: {md.vcpu_threads} vCPU threads, "
              f"{md.vcpu_seconds:.2f} s vCPU time, {md.vmm_seconds:.2f} s vmm")
        c.terminate([d])
        di = c.wait([d], timeout=15)[0]
        check(di.state_reason.startswith("terminated on request"), f"terminated: {di.state_reason!r}")
        time.sleep(0.2)
        watcher.cancel()
        seq = {}
        for e in events:
            seq.setdefault(e.instance_id, []).append(state_name(e.state))
        check(seq.get(b, [])[:1] == ["pending"] and seq.get(b, [])[-1:] == ["terminated"], f"events for m5.large: {seq.get(b)}")
        check(seq.get(d) == ["pending", "running", "stopping", "terminated"], f"events for the terminated one: {seq.get(d)}")
        check(not vmm_processes(ids + [d]), "no vmm or card left")
        return ids + [d]


def test_bad_requests(h):
    print("bad requests: the right code, the field named, nothing left running")
    with h.client() as c:
        before = len(c.describe())
        procs = vmm_processes()
        expect_error(lambda: c.run("m9q.large", ["exit", "0"]), "INVALID_ARGUMENT",
                     "instance_type: m9q.large: unknown family 'm9q'", "unknown instance type")
        image = pb.Image(kind=pb.IMAGE_KIND_CUSTOM, kernel="/nonexistent/vmlinuz")
        expect_error(lambda: c.run("m5.large", image=image, io_model="none"), "NOT_FOUND", "image.kernel:",
                     "missing kernel file")
        expect_error(lambda: c.run("m5.large", volumes_mib=[17 << 20]), "INVALID_ARGUMENT", "volumes[0].size_mib:",
                     "volume too large")
        expect_error(lambda: c.run("m5.large", count=-1), "INVALID_ARGUMENT", "count:", "negative count")
        expect_error(lambda: c.terminate(["i-00000000000000000"]), "NOT_FOUND", "instance_ids[0]:",
                     "terminate of an unknown id")
        expect_error(lambda: c.run("m5.24xlarge", ["exit", "0"], io_model="none"), "RESOURCE_EXHAUSTED",
                     "instance_type: 1 x m5.24xlarge need 96 vCPUs", "admission: more vCPUs than the host has")
        expect_error(lambda: c.run("m5.large", count=9, io_model="none"), "RESOURCE_EXHAUSTED", "instance_type:",
                     "admission: 9 x m5.large exceed the host's 16 vCPUs")
        expect_error(lambda: c.run("m5.large", credits="standard"), "INVALID_ARGUMENT", "credit_mode:",
                     "credit mode on a non-burstable type")
        expect_error(lambda: c.instance_types(names=["m5.nano"]), "NOT_FOUND", "names[0]: m5.nano: family m5 has no size",
                     "DescribeInstanceTypes of an unknown size")
        check(len(c.describe()) == before, "no instance record was made")
        check(vmm_processes() == procs, "no process was started")


def test_volumes(h):
    print("volumes: create, attach at launch, detach at the end, delete")
    with h.client() as c:
        v = c.create_volume(16, iops=1000)
        check(v.volume_id.startswith("vol-") and len(v.volume_id) == 21, f"created {v.volume_id}")
        i = c.run("t3.micro", ["nvme-verify"], io_model="nitro", volume_ids=[v.volume_id])[0]
        expect_error(lambda: c.delete_volume(v.volume_id), "FAILED_PRECONDITION", "volume_id:",
                     "deleting an attached volume")
        expect_error(lambda: c.run("m5.large", ["exit", "0"], io_model="nitro", volume_ids=[v.volume_id]),
                     "FAILED_PRECONDITION", "volume_ids[0]:", "attaching it twice")
        inst = c.wait([i], timeout=60)[0]
        check(inst.exit_status == 0 and list(inst.volume_ids) == [v.volume_id], "nvme-verify on the attached volume")
        serial = "vol" + v.volume_id[4:]
        check(f"serial='{serial}'" in c.console(i), f"the guest sees serial {serial}")
        check(c.volumes([v.volume_id])[0].attached_to == "", "detached when the instance ended")
        check(os.path.getsize(v.path) == 16 << 20, "its file has the volume's size")
        m = c.metrics([i]).instances[0]
        check(m.io_reads > 0 and m.io_writes > 0, f"I/O in the metrics: {m.io_reads} reads, {m.io_writes} writes, "
              f"{m.vcpu_exits} VM exits")
        c.delete_volume(v.volume_id)
        check(not os.path.exists(v.path), "deleted with its file")
        expect_error(lambda: c.delete_volume(v.volume_id), "NOT_FOUND", "volume_id:", "deleting it again")


def test_concurrent(h):
    print("concurrent RunInstances from several clients; client tokens")
    results, errors = {}, []

    def launch(n):
        try:
            with h.client() as c:
                results[n] = c.run("t3.micro", ["exit", str(n)], io_model="none", client_token=f"tok-{n % 4}")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    threads = [threading.Thread(target=launch, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not errors, f"no errors {errors}")
    ids = sorted({i for v in results.values() for i in v})
    check(len(ids) == 4, f"8 calls with 4 client tokens made 4 instances ({len(ids)})")
    for n in range(4):
        check(results[n] == results[n + 4], f"token tok-{n}: the same instance for both calls")
    with h.client() as c:
        insts = c.wait(ids, timeout=60)
        check(all(i.exit_status == int(i.guest_args[1]) for i in insts), "each exited with its own status")
    check(not vmm_processes(ids), "no vmm left")


def test_cpu_credits(h):
    print("CPU credits: a standard t3.micro with an empty balance is held at its 10 % baseline")
    with h.client() as c:
        if c.host().cpu_enforcement.startswith("none"):
            print(f"  skipped: no CPU caps on this host ({c.host().cpu_enforcement})")
            return None
        secs = 8
        i = c.run("t3.micro", ["spin", f"seconds={secs}"], io_model="none", credits="standard", initial_credits=0)[0]
        c.wait([i], states=("running",), timeout=30)
        time.sleep(1.5)
        # The host's view in steady state: vCPU time between two samples while the guest spins.
        m1, t1 = c.metrics([i]).instances[0], time.monotonic()
        time.sleep(4)
        mid, t2 = c.metrics([i]).instances[0], time.monotonic()
        host_share = 100 * (mid.vcpu_seconds - m1.vcpu_seconds) / (2 * (t2 - t1))
        inst = c.wait([i], timeout=60)[0]
        m = c.metrics([i]).instances[0]
        share = spin_share(c.console(i))
        print(f"  guest view: {share} % of each vCPU; host view: {mid.vcpu_seconds - m1.vcpu_seconds:.3f} s vCPU time "
              f"in {t2 - t1:.2f} s x 2 vCPUs = {host_share:.1f} % (whole run: {m.vcpu_seconds:.2f} s, boot included); "
              f"throttled {m.throttled_seconds:.2f} s in {m.throttled_periods} periods; "
              f"cap {mid.cpu.cap_percent} % of a host CPU; balance {m.cpu.credit_balance:.4f}, "
              f"earned {m.cpu.credits_earned:.4f}, spent {m.cpu.credits_spent:.4f}; {m.cpu.enforcement}")
        check(inst.exit_status == 0, "spin finished")
        check(mid.cpu.policy == "credits-standard" and abs(mid.cpu.cap_percent - 20) < 1e-6,
              "capped at 20 % of one host CPU (10 % x 2 vCPUs)")
        check(share is not None and share <= 12.5, f"the guest got {share} % per vCPU (baseline 10 %)")
        check(host_share <= 12.5, f"host-measured {host_share:.1f} % per vCPU")
        check(m.throttled_periods > 0, "the kernel throttled it")
        u = c.run("t3.micro", ["spin", "seconds=3"], io_model="none", credits="unlimited", initial_credits=0)[0]
        c.wait([u], timeout=60)
        mu = c.metrics([u]).instances[0]
        su = spin_share(c.console(u))
        print(f"  unlimited: guest view {su} % per vCPU, surplus {mu.cpu.surplus_credits:.4f} credits, "
              f"cap {mu.cpu.cap_percent}")
        check(mu.cpu.policy == "credits-unlimited" and mu.cpu.surplus_credits > 0, "unlimited mode counts surplus")
        return share, host_share


def test_restart(build, tmp):
    print("restart: a crashed hostd's successor adopts live instances; SIGTERM stops them cleanly")
    h = Hostd(build, tmp, "restart").start()
    with h.client() as c:
        short = c.run("m5.large", ["exit", "5"], io_model="none")[0]
        long = c.run("t3.micro", ["spin", "seconds=600"], io_model="none")[0]
        c.wait([short], timeout=30)
        c.wait([long], states=("running",), timeout=30)
        time.sleep(2.5)  # the account is saved once a second
        before = c.metrics([long]).instances[0].cpu
    h.stop(signal.SIGKILL)
    check(len(vmm_processes([long])) >= 1, "the vmm outlives a killed hostd")
    h = Hostd(build, tmp, "restart").start()
    with h.client() as c:
        s, lg = c.describe([short, long])
        check(state_name(s.state) == "terminated" and s.exit_status == 5, "the finished instance is remembered (exit 5)")
        check(state_name(lg.state) == "running", f"the live one is running again: {state_name(lg.state)}")
        after = c.metrics([long]).instances[0].cpu
        check(before.credits_spent * 0.5 <= after.credits_spent < before.credits_spent + 0.5,
              f"its credit account goes on ({before.credits_spent:.4f} spent before, {after.credits_spent:.4f} after)")
        c.terminate([long])
        lg = c.wait([long], timeout=15)[0]
        check(lg.state_reason.startswith("terminated on request"), f"and terminates: {lg.state_reason!r}")
        check(not vmm_processes([long]), "its vmm is gone")
        third = c.run("t3.micro", ["spin", "seconds=600"], io_model="none")[0]
        c.wait([third], states=("running",), timeout=30)
    rc = h.stop(signal.SIGTERM)
    check(rc == 0, f"hostd exits 0 on SIGTERM ({rc})")
    check(not vmm_processes([third]), "SIGTERM stopped the instance")
    h = Hostd(build, tmp, "restart").start()
    with h.client() as c:
        t = c.describe([third])[0]
        check(state_name(t.state) == "terminated" and t.state_reason.startswith("hostd stopped (SIGTERM)"),
              f"after SIGTERM: {t.state_reason!r}")
        check(len(c.describe()) == 3, "three records survive two restarts")
    h.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("-k", default="", help="run only tests whose name holds this")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("skipped: no /dev/kvm")
        return 77
    build = os.path.abspath(a.build)
    tmp = tempfile.mkdtemp(prefix="hostd-test-")
    h = Hostd(build, tmp).start()
    try:
        for name, fn in [("fleet", test_fleet), ("bad", test_bad_requests), ("volumes", test_volumes), ("concurrent", test_concurrent),
                         ("credits", test_cpu_credits)]:
            if a.k in name:
                fn(h)
    finally:
        rc = h.stop()
        check(rc == 0, f"hostd stopped cleanly ({rc})")
    if a.k in "restart":
        test_restart(build, os.path.join(tmp, "r"))
    check(not vmm_processes(), "no vmm or card process left at the end")
    print(f"{'FAILED: ' + str(len(FAILURES)) if FAILURES else 'all passed'} (logs in {tmp})")
    if not FAILURES and not a.keep:
        subprocess.run(["rm", "-rf", tmp])
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
