#include "support/card_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "common/fd.hpp"

namespace testsupport {

using common::Error;
using common::fail;
using common::UniqueFd;

namespace {

int exit_code(int wstatus) {
    return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
}

}  // namespace

common::Result<CardProcess> CardProcess::start(const std::string& binary,
                                               std::vector<std::string> args,
                                               const std::string& log_path,
                                               std::chrono::milliseconds ready_timeout) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return fail(Error::from_errno("pipe2"));
    UniqueFd ready_r(p[0]), ready_w(p[1]);
    auto log = UniqueFd::open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (!log) return fail(std::move(log.error()));
    auto devnull = UniqueFd::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (!devnull) return fail(std::move(devnull.error()));

    // Everything the child needs is built before fork: after it only async-signal-safe calls.
    args.insert(args.begin(), binary);
    args.push_back("--ready-fd");
    args.push_back(std::to_string(ready_w.get()));
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    const pid_t pid = ::fork();
    if (pid < 0) return fail(Error::from_errno("fork"));
    if (pid == 0) {
        if (::dup2(devnull->get(), 0) < 0 || ::dup2(log->get(), 1) < 0 ||
            ::dup2(log->get(), 2) < 0 || ::fcntl(ready_w.get(), F_SETFD, 0) != 0)
            ::_exit(126);
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    ready_w.reset();
    CardProcess proc(pid, log_path);

    // One byte on the pipe: every socket listens. EOF: the card ended before it was ready.
    pollfd pfd{ready_r.get(), POLLIN, 0};
    const int n = ::poll(&pfd, 1, static_cast<int>(ready_timeout.count()));
    char b = 0;
    if (n == 1 && ::read(ready_r.get(), &b, 1) == 1) return proc;
    auto status = proc.wait(std::chrono::milliseconds(n == 1 ? 1000 : 0));
    return fail(Error::invalid(fmt::format(
        "{} did not become ready ({}); its log:\n{}", binary,
        status ? fmt::format("exit status {}", *status) : std::string("timed out"), proc.log())));
}

CardProcess::CardProcess(CardProcess&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)),
      log_path_(std::move(o.log_path_)),
      status_(std::exchange(o.status_, std::nullopt)) {}

CardProcess::~CardProcess() {
    if (pid_ < 0 || status_) return;
    ::kill(pid_, SIGKILL);
    (void)reap(true);
}

bool CardProcess::signal(int sig) const {
    return pid_ >= 0 && !status_ && ::kill(pid_, sig) == 0;
}

std::optional<int> CardProcess::reap(bool block) {
    if (status_ || pid_ < 0) return status_;
    int st = 0;
    const pid_t r = ::waitpid(pid_, &st, block ? 0 : WNOHANG);
    if (r == pid_) status_ = exit_code(st);
    return status_;
}

std::optional<int> CardProcess::wait(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        if (auto s = reap(false)) return s;
        if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

bool CardProcess::running() {
    return pid_ >= 0 && !reap(false);
}

std::string CardProcess::log() const {
    std::ifstream in(log_path_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

}  // namespace testsupport
