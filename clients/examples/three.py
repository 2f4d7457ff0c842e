#!/usr/bin/python3
"""Launch three instances, watch them, terminate them. PYTHONPATH=build/python; socket as argv[1]."""
import sys, time
from nitrohost import Client, state_name

with Client(sys.argv[1] if len(sys.argv) > 1 else None) as c:
    ids = (c.run("t3.micro", ["spin", "seconds=60"]) + c.run("m5.large", ["exit", "7"], io_model="none")
           + c.run("c6i.large", ["nvme-verify"], volumes_mib=[16]))
    for _ in range(40):  # watch until the two short ones are done
        insts = c.describe(ids)
        print("  ".join(f"{i.instance_type}={state_name(i.state)}" for i in insts))
        if sum(state_name(i.state) == "terminated" for i in insts) >= 2:
            break
        time.sleep(0.25)
    c.terminate(ids)
    for i in c.wait(ids):
        print(f"{i.instance_id} {i.instance_type:9} exit={i.exit_status:<3} {i.state_reason}")
