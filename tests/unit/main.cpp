#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <spdlog/spdlog.h>

int main(int argc, char** argv) {
    // Errors and warnings only: the code under test logs what it refuses, which is expected here.
    spdlog::set_level(spdlog::level::err);
    doctest::Context ctx(argc, argv);
    return ctx.run();
}
