#!/usr/bin/python3
"""Run the probe's NVMe benchmark on each I/O model the host offers (nitro; xen once the vmm has
it) with a fresh 64 MiB volume, and print IOPS and latency side by side.

  PYTHONPATH=build/python /usr/bin/python3 clients/examples/compare_io.py [--socket S] [--type m5.large]
"""
import argparse

from nitrohost import Client, io_name, types_pb

ap = argparse.ArgumentParser()
ap.add_argument("--socket")
ap.add_argument("--type", default="m5.large")
ap.add_argument("--seconds", type=int, default=3)
a = ap.parse_args()
with Client(a.socket) as c:
    models = [io_name(m) for m in c.host().io_models if m != types_pb.IO_MODEL_NONE]
    for model in models:
        bench = "xen-bench" if model == "xen" else "nvme-bench"
        iid = c.run(a.type, [bench, "rw=randread", "bs=4096", "qd=1,32", f"seconds={a.seconds}"],
                    io_model=model, volumes_mib=[64])[0]
        inst = c.wait([iid], timeout=a.seconds * 4 + 60)[0]
        results = [ln for ln in c.console(iid).splitlines() if ln.startswith("result:")]
        m = c.metrics([iid]).instances[0]
        print(f"{model}: exit {inst.exit_status}, {m.io_reads} reads, {m.vcpu_exits} VM exits")
        for ln in results:
            print("   ", ln)
