#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <cstdlib>

int main(int argc, char** argv) {
    setenv("SYSTEMC_DISABLE_COPYRIGHT_MESSAGE", "1", 1);  // before the first SystemC object
    doctest::Context ctx(argc, argv);
    return ctx.run();
}

// libsystemc's own main() calls sc_main; this binary has doctest's main instead, but the library
// still needs the symbol to link.
extern "C" int sc_main(int, char**) { return 0; }
