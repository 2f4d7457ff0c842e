#include "api/host_service.hpp"

#include <fmt/format.h>
#include <fstream>
#include <thread>

namespace hostd::api {

namespace v1 = nitrohost::v1;
using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;

Status HostService::RunInstances(ServerContext*, const v1::RunInstancesRequest* req, v1::RunInstancesResponse* resp) {
    return manager_.run(*req, resp);
}

Status HostService::TerminateInstances(ServerContext*, const v1::TerminateInstancesRequest* req,
                                       v1::TerminateInstancesResponse* resp) {
    return manager_.terminate(*req, resp);
}

Status HostService::DescribeInstances(ServerContext*, const v1::DescribeInstancesRequest* req,
                                      v1::DescribeInstancesResponse* resp) {
    return manager_.describe(*req, resp);
}

Status HostService::GetConsoleOutput(ServerContext*, const v1::GetConsoleOutputRequest* req,
                                     v1::GetConsoleOutputResponse* resp) {
    return manager_.console(*req, resp);
}

Status HostService::StreamConsole(ServerContext* ctx, const v1::StreamConsoleRequest* req,
                                  grpc::ServerWriter<v1::ConsoleChunk>* writer) {
    std::filesystem::path path;
    bool ended = false;
    if (auto s = manager_.console_path(req->instance_id(), &path, &ended); !s.ok()) return s;
    std::uint64_t offset = 0;
    if (!req->from_start()) {
        std::error_code ec;
        auto sz = std::filesystem::file_size(path, ec);
        offset = ec ? 0 : sz;
    }
    std::string buf(64 * 1024, '\0');
    while (!ctx->IsCancelled() && !stopping_) {
        // Read `ended` before the file, so the last bytes written before the end are sent.
        if (auto s = manager_.console_path(req->instance_id(), &path, &ended); !s.ok()) return s;
        bool sent = false;
        std::ifstream in(path, std::ios::binary);
        if (in) {
            in.seekg(static_cast<std::streamoff>(offset));
            while (in) {
                in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
                auto n = in.gcount();
                if (n <= 0) break;
                v1::ConsoleChunk c;
                c.set_data(buf.data(), static_cast<std::size_t>(n));
                if (!writer->Write(c)) return Status::CANCELLED;
                offset += static_cast<std::uint64_t>(n);
                sent = true;
            }
        }
        if (ended && !sent) return Status::OK;
        if (!sent) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return stopping_ ? Status(StatusCode::UNAVAILABLE, "hostd is stopping") : Status::CANCELLED;
}

Status HostService::CreateVolume(ServerContext*, const v1::CreateVolumeRequest* req, v1::Volume* resp) {
    return manager_.create_volume(*req, resp);
}

Status HostService::DescribeVolumes(ServerContext*, const v1::DescribeVolumesRequest* req,
                                    v1::DescribeVolumesResponse* resp) {
    return manager_.describe_volumes(*req, resp);
}

Status HostService::DeleteVolume(ServerContext*, const v1::DeleteVolumeRequest* req, v1::DeleteVolumeResponse*) {
    return manager_.delete_volume(*req);
}

Status HostService::DescribeInstanceTypes(ServerContext*, const v1::DescribeInstanceTypesRequest* req,
                                          v1::DescribeInstanceTypesResponse* resp) {
    if (req->max_vcpus() != 0 && req->max_vcpus() < req->min_vcpus())
        return Status(StatusCode::INVALID_ARGUMENT, "max_vcpus: below min_vcpus");
    if (req->min_memory_gib() < 0 || req->max_memory_gib() < 0)
        return Status(StatusCode::INVALID_ARGUMENT, "min_memory_gib: memory filters must not be negative");
    for (int i = 0; i < req->names_size(); ++i)
        if (auto t = catalog_.lookup(req->names(i)); !t)
            return Status(StatusCode::NOT_FOUND, fmt::format("names[{}]: {}", i, t.error().message));
    for (const auto& t : catalog_.filter(*req)) *resp->add_instance_types() = t;
    resp->set_memory_scale(catalog_.memory_scale());
    return Status::OK;
}

Status HostService::GetMetrics(ServerContext*, const v1::GetMetricsRequest* req, v1::GetMetricsResponse* resp) {
    return manager_.metrics(*req, resp);
}

Status HostService::WatchEvents(ServerContext* ctx, const v1::WatchEventsRequest* req,
                                grpc::ServerWriter<v1::Event>* writer) {
    std::size_t next = req->replay() ? 0 : manager_.events().size();
    while (!ctx->IsCancelled() && !stopping_) {
        std::vector<v1::Event> batch;
        next = manager_.events().read(next, batch, std::chrono::milliseconds(200));
        for (const auto& e : batch)
            if (!writer->Write(e)) return Status::CANCELLED;
    }
    return stopping_ ? Status(StatusCode::UNAVAILABLE, "hostd is stopping") : Status::CANCELLED;
}

Status HostService::DescribeHost(ServerContext*, const v1::DescribeHostRequest*, v1::DescribeHostResponse* resp) {
    manager_.describe_host(resp);
    resp->set_version(version_);
    return Status::OK;
}

}  // namespace hostd::api
