"""A generic gRPC client that knows no service in advance: it learns them from the server's
reflection service (grpc.reflection.v1alpha, the version gRPC 1.51 serves).

  python3 -m nitrohost.reflect TARGET list                        services and their methods
  python3 -m nitrohost.reflect TARGET describe SYMBOL             a service or message, as proto text
  python3 -m nitrohost.reflect TARGET call SERVICE/METHOD [JSON]  a unary call; JSON in and out

TARGET is unix:/path/to/socket or host:port.
"""
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from nitrohost_reflection import reflection_pb2 as rpb
from nitrohost_reflection import reflection_pb2_grpc as rgrpc


class Reflection:
    def __init__(self, target):
        self.channel = grpc.insecure_channel(target)
        self.stub = rgrpc.ServerReflectionStub(self.channel)
        self.pool = descriptor_pool.DescriptorPool()
        self.files = {}

    def ask(self, **kw):
        resp = next(iter(self.stub.ServerReflectionInfo(iter([rpb.ServerReflectionRequest(**kw)]))))
        if resp.HasField("error_response"):
            raise SystemExit(f"reflection: {resp.error_response.error_message} ({kw})")
        return resp

    def services(self):
        return [s.name for s in self.ask(list_services="").list_services_response.service]

    def load(self, symbol):
        """Adds the file defining `symbol`, and what it imports, to the pool."""
        pending = list(self.ask(file_containing_symbol=symbol).file_descriptor_response.file_descriptor_proto)
        while pending:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(pending.pop())
            if fdp.name in self.files:
                continue
            self.files[fdp.name] = fdp
            for dep in fdp.dependency:
                if dep not in self.files:
                    pending.extend(self.ask(file_by_filename=dep).file_descriptor_response.file_descriptor_proto)
        added = set()

        def add(name):
            if name in added:
                return
            added.add(name)
            for dep in self.files[name].dependency:
                add(dep)
            try:
                self.pool.Add(self.files[name])
            except TypeError:  # already there
                pass
        for name in list(self.files):
            add(name)

    def message_class(self, desc):
        factory = message_factory.MessageFactory(self.pool)
        if hasattr(factory, "GetPrototype"):
            return factory.GetPrototype(desc)
        return message_factory.GetMessageClass(desc)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    r = Reflection(argv[0])
    cmd = argv[1]
    if cmd == "list":
        for name in r.services():
            print(name)
            if name.startswith("grpc.reflection"):
                continue
            r.load(name)
            svc = r.pool.FindServiceByName(name)
            streaming = {(f"{f.package}.{s.name}", m.name): m.server_streaming
                         for f in r.files.values() for s in f.service for m in s.method}
            for m in svc.methods:
                out = ("stream " if streaming.get((name, m.name)) else "") + m.output_type.full_name
                print(f"  rpc {m.name}({m.input_type.full_name}) returns ({out})")
        return 0
    if cmd == "describe" and len(argv) == 3:
        r.load(argv[2])
        for f in r.files.values():
            for s in f.service:
                if f"{f.package}.{s.name}" == argv[2]:
                    print(s)
            for m in f.message_type:
                if f"{f.package}.{m.name}" == argv[2]:
                    print(m)
        return 0
    if cmd == "call" and len(argv) in (3, 4):
        service, _, method = argv[2].rpartition("/")
        r.load(service)
        mdesc = r.pool.FindServiceByName(service).FindMethodByName(method)
        req_cls, resp_cls = r.message_class(mdesc.input_type), r.message_class(mdesc.output_type)
        req = json_format.Parse(argv[3] if len(argv) == 4 else "{}", req_cls())
        call = r.channel.unary_unary(f"/{service}/{method}", request_serializer=req_cls.SerializeToString,
                                     response_deserializer=resp_cls.FromString)
        try:
            resp = call(req, timeout=30)
        except grpc.RpcError as e:
            print(f"{e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        print(json_format.MessageToJson(resp, preserving_proto_field_name=True))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
