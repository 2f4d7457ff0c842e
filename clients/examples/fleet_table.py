#!/usr/bin/python3
"""Launch a mixed fleet (one instance of each given type, default: a few of the catalog's small
types), let it run a CPU-bound workload, and print a table of what each got.

  PYTHONPATH=build/python /usr/bin/python3 clients/examples/fleet_table.py [--socket S] [TYPE ...]
"""
import argparse

from nitrohost import Client, io_name, state_name

ap = argparse.ArgumentParser()
ap.add_argument("--socket")
ap.add_argument("--seconds", type=int, default=4)
ap.add_argument("types", nargs="*", default=["t3.micro", "t3.large", "m7i-flex.large", "m5.large", "c6i.large"])
a = ap.parse_args()
with Client(a.socket) as c:
    ids = []
    for t in a.types:
        kw = {"credits": "standard", "initial_credits": 0} if t.startswith("t") else {}
        ids += c.run(t, ["spin", f"seconds={a.seconds}"], io_model="none", **kw)
    insts = {i.instance_id: i for i in c.wait(ids, timeout=a.seconds * 10 + 30)}
    mets = {m.instance_id: m for m in c.metrics(ids).instances}
    print(f"{'instance':20} {'type':15} {'io':6} {'vcpus':>5} {'mem MiB':>7} {'state':10} {'exit':>4} "
          f"{'policy':18} {'cap %':>6} {'vCPU s':>7} {'guest share':>11}")
    for iid in ids:
        i, m = insts[iid], mets[iid]
        share = next((ln.split("share=")[1] for ln in c.console(iid).splitlines() if ln.startswith("spin: cpus=")), "-")
        print(f"{iid:20} {i.instance_type:15} {io_name(i.io_model):6} {i.vcpus:>5} {i.memory_mib:>7} "
              f"{state_name(i.state):10} {i.exit_status:>4} {m.cpu.policy:18} {m.cpu.cap_percent:>6.1f} "
              f"{m.vcpu_seconds:>7.2f} {share:>11}")
