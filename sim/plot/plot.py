#!/usr/bin/env python3
"""Plots hostsim's CSV output (host.csv, groups.csv, instances.csv) in DIR into PNG files.

Usage: plot.py DIR
A sweep gives one line per I/O model against the swept value: p99 of the first group (the tenants
being measured), total IOPS, dom0/card utilisation and the host threads left to guests.
A single run gives per-instance IOPS and p99 bars and host CPU time by owner.
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"nitro": "tab:orange", "xen": "tab:blue"}


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def by_model(rows):
    out = {}
    for r in rows:
        out.setdefault(r["io_model"], []).append(r)
    for rs in out.values():
        rs.sort(key=lambda r: float(r["sweep_value"]))
    return out


def sweep_plots(d, host, groups):
    label = host[0]["sweep_label"]
    scen = host[0]["scenario"]
    first = groups[0]["group"]
    g = by_model([r for r in groups if r["group"] == first])
    h = by_model(host)
    x = lambda rs: [float(r["sweep_value"]) for r in rs]  # noqa: E731

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, rs in g.items():
        ax.plot(x(rs), [float(r["p99_us"]) for r in rs], "o-", color=COLOURS.get(m), label=f"{m} p99")
        ax.plot(x(rs), [float(r["p50_us"]) for r in rs], "s--", color=COLOURS.get(m), alpha=0.6, label=f"{m} p50")
    ax.set_xlabel(label)
    ax.set_ylabel(f"latency of '{first}' I/Os (µs)")
    ax.set_yscale("log")
    ax.set_title(f"{scen}: latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(d, "latency.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, rs in h.items():
        ax.plot(x(rs), [float(r["total_iops"]) / 1e3 for r in rs], "o-", color=COLOURS.get(m), label=m)
    ax.set_xlabel(label)
    ax.set_ylabel("host total kIOPS")
    ax.set_title(f"{scen}: throughput")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(d, "iops.png"), dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for m, rs in h.items():
        util = [float(r["dom0_util"] if m == "xen" else r["card_util"]) * 100 for r in rs]
        a1.plot(x(rs), util, "o-", color=COLOURS.get(m), label="dom0 vCPUs busy" if m == "xen" else "card cores busy")
        a2.plot(x(rs), [float(r["guest_core_share"]) * 100 for r in rs], "o-", color=COLOURS.get(m), label=m)
    a1.set_xlabel(label)
    a1.set_ylabel("%")
    a1.set_ylim(0, 105)
    a1.set_title("I/O processor utilisation")
    a1.grid(True, alpha=0.3)
    a1.legend()
    a2.set_xlabel(label)
    a2.set_ylabel("% of host threads")
    a2.set_title("host threads left to guests")
    a2.grid(True, alpha=0.3)
    a2.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(d, "cpu.png"), dpi=110)
    plt.close(fig)


def single_plots(d, host, instances):
    models = sorted({r["io_model"] for r in host})
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(6.4, 0.18 * len(instances)), 6), sharex=True)
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        rs = [r for r in instances if r["io_model"] == m]
        xs = [i + k * width for i in range(len(rs))]
        a1.bar(xs, [float(r["iops"]) / 1e3 for r in rs], width, color=COLOURS.get(m), label=m)
        a2.bar(xs, [float(r["p99_us"]) for r in rs], width, color=COLOURS.get(m), label=m)
    a1.set_ylabel("kIOPS")
    a2.set_ylabel("p99 µs")
    a2.set_xlabel("instance")
    a1.set_title(f"{host[0]['scenario']}: per instance")
    a1.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(d, "instances.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    owners = [("cpu_guest_s", "guest I/O driver"), ("cpu_hypervisor_s", "hypervisor/vmm"),
              ("cpu_dom0_s", "dom0"), ("cpu_card_s", "card (own cores)")]
    bottom = [0.0] * len(host)
    for key, name in owners:
        vals = [float(r[key]) / float(r["measured_s"]) for r in host]
        ax.bar([r["io_model"] for r in host], vals, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("cores busy")
    ax.set_title(f"{host[0]['scenario']}: CPU by owner")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(d, "cpu.png"), dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: plot.py DIR")
    d = sys.argv[1]
    host = read(os.path.join(d, "host.csv"))
    if not host:
        sys.exit("plot.py: host.csv is empty")
    if host[0]["sweep_label"]:
        sweep_plots(d, host, read(os.path.join(d, "groups.csv")))
    else:
        single_plots(d, host, read(os.path.join(d, "instances.csv")))


if __name__ == "__main__":
    main()
