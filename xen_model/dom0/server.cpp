#include "xen_model/dom0/server.hpp"

#include <chrono>

#include <spdlog/spdlog.h>

namespace xen_model::dom0 {

using common::fail;

namespace {
constexpr int kAcceptPollMs = 100;
}

common::Result<std::unique_ptr<Server>> Server::start(const std::string& socket_path, DomainOptions options) {
    auto l = common::card::UnixSocket::listen(socket_path, 16);
    if (!l) return fail(std::move(l.error()));
    std::unique_ptr<Server> s(new Server(std::move(*l), options));
    s->thread_ = std::thread([p = s.get()] { p->accept_loop(); });
    return s;
}

Server::Server(common::card::UnixSocket listener, DomainOptions options)
    : listener_(std::move(listener)), options_(options) {}

Server::~Server() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    std::vector<std::unique_ptr<Domain>> doomed;
    {
        std::lock_guard lk(mu_);
        doomed = std::move(domains_);
    }
    doomed.clear();  // each destructor stops and joins its domain
}

std::size_t Server::active_domains() const {
    std::lock_guard lk(mu_);
    std::size_t n = 0;
    for (const auto& d : domains_) n += d->attached() && !d->finished() ? 1 : 0;
    return n;
}

void Server::reap(bool all) {
    std::vector<std::unique_ptr<Domain>> done;
    {
        std::lock_guard lk(mu_);
        for (std::size_t i = 0; i < domains_.size();) {
            if (domains_[i]->attached() && !counted_[i]) {
                counted_[i] = true;
                attached_total_.fetch_add(1);
            }
            if (all || domains_[i]->finished()) {
                if (domains_[i]->attached() && !counted_[i]) attached_total_.fetch_add(1);
                done.push_back(std::move(domains_[i]));
                domains_.erase(domains_.begin() + static_cast<std::ptrdiff_t>(i));
                counted_.erase(counted_.begin() + static_cast<std::ptrdiff_t>(i));
            } else {
                ++i;
            }
        }
    }
    done.clear();
}

void Server::accept_loop() {
    while (!stop_.load()) {
        reap(false);
        auto c = listener_.accept(kAcceptPollMs);
        if (!c) {
            if (!common::card::is_timeout(c.error())) {
                spdlog::warn("dom0: accept: {}", c.error().message);
                std::this_thread::sleep_for(std::chrono::milliseconds(kAcceptPollMs));
            }
            continue;
        }
        auto d = Domain::start(store_, std::move(*c), [this] { return next_domid_.fetch_add(1); }, options_);
        if (!d) {
            spdlog::error("dom0: starting a domain: {}", d.error().message);
            continue;
        }
        std::lock_guard lk(mu_);
        domains_.push_back(std::move(*d));
        counted_.push_back(false);
    }
}

}  // namespace xen_model::dom0
