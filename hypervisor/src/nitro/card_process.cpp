#include "nitro/card_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <filesystem>
#include <thread>

#include "common/fd.hpp"

extern char** environ;

namespace hypervisor::nitro {

using common::Error;
using common::fail;

namespace {

void stop_child(pid_t pid) {
    if (pid <= 0) return;
    int st;
    if (::waitpid(pid, &st, WNOHANG) == pid) return;
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 100; ++i) {  // up to 2 s for a clean exit
        if (::waitpid(pid, &st, WNOHANG) == pid) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    spdlog::warn("the card (pid {}) did not stop; killing it", pid);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &st, 0);
}

}  // namespace

common::Result<CardProcess> CardProcess::start(const std::string& binary, const std::vector<std::string>& volumes,
                                               const std::string& log_level, unsigned io_queues,
                                               std::chrono::milliseconds timeout,
                                               const std::vector<std::string>& extra_args) {
    if (::access(binary.c_str(), X_OK) != 0)
        return fail(Error::from_errno(fmt::format("the card binary {}", binary)));
    char tmpl[] = "/tmp/nitrovm-card-XXXXXX";
    if (!::mkdtemp(tmpl)) return fail(Error::from_errno("creating the card's socket directory"));
    std::string dir = tmpl;
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return fail(Error::from_errno("pipe"));
    common::UniqueFd rd(p[0]), wr(p[1]);

    std::vector<std::string> args = {binary, "--socket-dir", dir, "--ready-fd", "3", "--exit-when-idle",
                                     "--log-level", log_level, "--queues", std::to_string(io_queues)};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    for (const auto& v : volumes) {
        args.push_back("--volume");
        args.push_back(v);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, wr.get(), 3);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, 2, 1);  // the card's output joins our log
    pid_t pid;
    int rc = ::posix_spawn(&pid, binary.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    wr.reset();
    if (rc != 0) {
        std::filesystem::remove_all(dir);
        errno = rc;
        return fail(Error::from_errno(fmt::format("starting the card {}", binary)));
    }
    CardProcess card(pid, dir);
    // The card writes one byte once every device listens; EOF first means it failed.
    pollfd pf{rd.get(), POLLIN, 0};
    int n = ::poll(&pf, 1, static_cast<int>(timeout.count()));
    char b = 0;
    if (n <= 0 || ::read(rd.get(), &b, 1) != 1) {
        int st = 0;
        std::string why = n <= 0 ? fmt::format("not ready after {} ms", timeout.count()) : "it exited at start-up";
        if (::waitpid(pid, &st, WNOHANG) == pid && WIFEXITED(st))
            why = fmt::format("it exited with status {} (its log is above)", WEXITSTATUS(st));
        return fail(Error::invalid(fmt::format("the card {} did not start: {}", binary, why)));
    }
    spdlog::debug("card started (pid {}), sockets in {}", pid, dir);
    return card;
}

CardProcess::CardProcess(CardProcess&& o) noexcept : pid_(std::exchange(o.pid_, -1)), dir_(std::move(o.dir_)) {
    o.dir_.clear();
}

CardProcess::~CardProcess() {
    stop_child(pid_);
    if (!dir_.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
}

std::string CardProcess::socket_path(std::size_t i) const { return fmt::format("{}/nvme{}.sock", dir_, i); }

}  // namespace hypervisor::nitro
