// nitrohost.v1.HostService over the instance manager and the catalog. This layer only maps
// requests and streams; validation and its status codes live with the state they check.
#pragma once

#include <atomic>

#include "catalog/catalog.hpp"
#include "instances/manager.hpp"
#include "nitrohost/v1/host.grpc.pb.h"

namespace hostd::api {

class HostService final : public nitrohost::v1::HostService::Service {
public:
    HostService(const catalog::Catalog& catalog, instances::InstanceManager& manager, std::string version)
        : catalog_(catalog), manager_(manager), version_(std::move(version)) {}

    // Ends the server-streaming calls (hostd is stopping).
    void shutdown() { stopping_ = true; }

    grpc::Status RunInstances(grpc::ServerContext*, const nitrohost::v1::RunInstancesRequest*,
                              nitrohost::v1::RunInstancesResponse*) override;
    grpc::Status TerminateInstances(grpc::ServerContext*, const nitrohost::v1::TerminateInstancesRequest*,
                                    nitrohost::v1::TerminateInstancesResponse*) override;
    grpc::Status DescribeInstances(grpc::ServerContext*, const nitrohost::v1::DescribeInstancesRequest*,
                                   nitrohost::v1::DescribeInstancesResponse*) override;
    grpc::Status GetConsoleOutput(grpc::ServerContext*, const nitrohost::v1::GetConsoleOutputRequest*,
                                  nitrohost::v1::GetConsoleOutputResponse*) override;
    grpc::Status StreamConsole(grpc::ServerContext*, const nitrohost::v1::StreamConsoleRequest*,
                               grpc::ServerWriter<nitrohost::v1::ConsoleChunk>*) override;
    grpc::Status CreateVolume(grpc::ServerContext*, const nitrohost::v1::CreateVolumeRequest*,
                              nitrohost::v1::Volume*) override;
    grpc::Status DescribeVolumes(grpc::ServerContext*, const nitrohost::v1::DescribeVolumesRequest*,
                                 nitrohost::v1::DescribeVolumesResponse*) override;
    grpc::Status DeleteVolume(grpc::ServerContext*, const nitrohost::v1::DeleteVolumeRequest*,
                              nitrohost::v1::DeleteVolumeResponse*) override;
    grpc::Status DescribeInstanceTypes(grpc::ServerContext*, const nitrohost::v1::DescribeInstanceTypesRequest*,
                                       nitrohost::v1::DescribeInstanceTypesResponse*) override;
    grpc::Status GetMetrics(grpc::ServerContext*, const nitrohost::v1::GetMetricsRequest*,
                            nitrohost::v1::GetMetricsResponse*) override;
    grpc::Status WatchEvents(grpc::ServerContext*, const nitrohost::v1::WatchEventsRequest*,
                             grpc::ServerWriter<nitrohost::v1::Event>*) override;
    grpc::Status DescribeHost(grpc::ServerContext*, const nitrohost::v1::DescribeHostRequest*,
                              nitrohost::v1::DescribeHostResponse*) override;

private:
    const catalog::Catalog& catalog_;
    instances::InstanceManager& manager_;
    std::string version_;
    std::atomic<bool> stopping_{false};
};

}  // namespace hostd::api
