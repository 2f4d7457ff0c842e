"""A thin layer over the generated nitrohost.v1 stub: enum names as strings, waiting helpers,
and grpc errors raised as HostError (with .code, the canonical code name, and .message)."""
import os
import time

import grpc

from nitrohost.v1 import host_pb2 as pb
from nitrohost.v1 import host_pb2_grpc
from nitrohost.v1 import instance_types_pb2 as types_pb

DEFAULT_SOCKET = "/run/nitro-host/hostd.sock"
IO_MODELS = {"default": types_pb.IO_MODEL_UNSPECIFIED, "none": types_pb.IO_MODEL_NONE,
             "nitro": types_pb.IO_MODEL_NITRO, "xen": types_pb.IO_MODEL_XEN}
CREDITS = {"default": types_pb.CREDIT_MODE_UNSPECIFIED, "standard": types_pb.CREDIT_MODE_STANDARD,
           "unlimited": types_pb.CREDIT_MODE_UNLIMITED}


def state_name(state):
    """'running' for INSTANCE_STATE_RUNNING."""
    return pb.InstanceState.Name(state).removeprefix("INSTANCE_STATE_").lower()


def io_name(model):
    return types_pb.IoModel.Name(model).removeprefix("IO_MODEL_").lower()


class HostError(Exception):
    def __init__(self, err):
        self.code = err.code().name
        self.message = err.details()
        super().__init__(f"{self.code}: {self.message}")


class _EventStream:
    def __init__(self, call):
        self.call = call

    def __iter__(self):
        try:
            yield from self.call
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise HostError(e) from None

    def cancel(self):
        self.call.cancel()


class Client:
    """One channel to hostd. `target` is a socket path or a gRPC target (127.0.0.1:PORT)."""

    def __init__(self, target=None, timeout=30):
        target = target or os.environ.get("NITROHOST_SOCKET", DEFAULT_SOCKET)
        if target.startswith("/"):
            target = "unix:" + target
        self.channel = grpc.insecure_channel(target)
        self.stub = host_pb2_grpc.HostServiceStub(self.channel)
        self.timeout = timeout

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.channel.close()

    def call(self, method, request):
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise HostError(e) from None

    # ---- instances ----
    def run(self, instance_type, args=(), count=1, io_model="default", volumes_mib=(), credits="default",
            initial_credits=None, timeout_seconds=0, client_token="", image=None, volume_ids=()):
        """Launches instances; returns their ids."""
        req = pb.RunInstancesRequest(instance_type=instance_type, guest_args=list(args), count=count,
                                     io_model=IO_MODELS[io_model], credit_mode=CREDITS[credits],
                                     timeout_seconds=timeout_seconds, client_token=client_token,
                                     volume_ids=list(volume_ids))
        for mib in volumes_mib:
            req.volumes.add(size_mib=mib, delete_on_termination=True)
        if initial_credits is not None:
            req.initial_credits = initial_credits
        if image is not None:
            req.image.CopyFrom(image)
        return [i.instance_id for i in self.call("RunInstances", req).instances]

    def describe(self, ids=()):
        return list(self.call("DescribeInstances", pb.DescribeInstancesRequest(instance_ids=list(ids))).instances)

    def terminate(self, ids):
        return list(self.call("TerminateInstances", pb.TerminateInstancesRequest(instance_ids=list(ids))).instances)

    def wait(self, ids, states=("terminated",), timeout=60, poll=0.1):
        """Waits until every instance is in one of `states`; returns their records."""
        deadline = time.monotonic() + timeout
        while True:
            insts = self.describe(ids)
            if all(state_name(i.state) in states for i in insts):
                return insts
            if time.monotonic() > deadline:
                raise TimeoutError(", ".join(f"{i.instance_id}={state_name(i.state)}" for i in insts))
            time.sleep(poll)

    def console(self, instance_id, max_bytes=0):
        r = self.call("GetConsoleOutput", pb.GetConsoleOutputRequest(instance_id=instance_id, max_bytes=max_bytes))
        return r.output.decode(errors="replace")

    def stream_console(self, instance_id, from_start=True):
        """Yields console text as it is written, until the instance ends."""
        try:
            for chunk in self.stub.StreamConsole(pb.StreamConsoleRequest(instance_id=instance_id, from_start=from_start)):
                yield chunk.data.decode(errors="replace")
        except grpc.RpcError as e:
            raise HostError(e) from None

    def events(self, replay=False):
        """nitrohost.v1.Event messages as they happen: iterate over the result; .cancel() ends it
        (from any thread)."""
        return _EventStream(self.stub.WatchEvents(pb.WatchEventsRequest(replay=replay)))

    def metrics(self, ids=()):
        return self.call("GetMetrics", pb.GetMetricsRequest(instance_ids=list(ids)))

    # ---- catalog, volumes, host ----
    def instance_types(self, **filters):
        """Filters as in DescribeInstanceTypesRequest: names, families, min_vcpus, max_vcpus, ..."""
        return list(self.call("DescribeInstanceTypes", pb.DescribeInstanceTypesRequest(**filters)).instance_types)

    def create_volume(self, size_mib, iops=0, mbps=0, ram=False):
        spec = pb.VolumeSpec(size_mib=size_mib, iops=iops, mbps=mbps, ram=ram)
        return self.call("CreateVolume", pb.CreateVolumeRequest(spec=spec))

    def volumes(self, ids=()):
        return list(self.call("DescribeVolumes", pb.DescribeVolumesRequest(volume_ids=list(ids))).volumes)

    def delete_volume(self, volume_id):
        self.call("DeleteVolume", pb.DeleteVolumeRequest(volume_id=volume_id))

    def host(self):
        return self.call("DescribeHost", pb.DescribeHostRequest())
