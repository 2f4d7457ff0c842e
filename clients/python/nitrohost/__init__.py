"""Python client of the host agent (hostd): nitrohost.v1 messages and a small convenience layer.

    from nitrohost import Client
    with Client() as c:                      # /run/nitro-host/hostd.sock or $NITROHOST_SOCKET
        ids = c.run("t3.micro", args=["exit", "7"])
        print(c.wait(ids)[0].exit_status)    # 7

The generated modules are nitrohost.v1.host_pb2 (messages, as `pb`) and host_pb2_grpc (stub).
"""
from nitrohost.client import Client, HostError, io_name, pb, state_name, types_pb  # noqa: F401
