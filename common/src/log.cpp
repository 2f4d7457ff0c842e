#include "common/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <fmt/format.h>
#include <string>

namespace common {

Status setup_logging(std::string_view process_name, std::string_view level) {
    auto lvl = spdlog::level::from_str(std::string(level));
    if (lvl == spdlog::level::off && level != "off")
        return fail(Error::invalid(fmt::format("unknown log level '{}'", level)));
    auto logger = spdlog::stderr_color_mt(std::string(process_name));
    logger->set_pattern("%^[%H:%M:%S.%e %n %l]%$ %v");
    logger->set_level(lvl);
    spdlog::set_default_logger(logger);
    return {};
}

}  // namespace common
