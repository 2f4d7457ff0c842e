/*
 * COM1 output and the exit path. Works at CPL3 (IOPL 3) and at CPL0 (fatal exceptions).
 *
 * The UART is not programmed: both QEMU and nitrovm accept bytes at reset settings, and a
 * divisor-latch write could reach a minimal UART model as a stray output byte.
 */
#include "probe.h"
#include "x86.h"

#define COM1 0x3F8
#define UART_THR 0
#define UART_LSR 5
#define LSR_THRE 0x20

#define PORT_DEBUG_EXIT 0xF4
#define PORT_I8042_CMD 0x64
#define I8042_RESET 0xFE

#define LINE_MAX 256

static volatile uint32_t serial_lock_word;

static void uart_putc(char c) {
    /* Bounded: a missing UART reads 0xFF (THRE set); a stuck one must not hang the probe. */
    for (unsigned i = 0; i < 100000; i++) {
        if (inb(COM1 + UART_LSR) & LSR_THRE) {
            break;
        }
    }
    outb(COM1 + UART_THR, (uint8_t)c);
}

/*
 * Lines from several CPUs must not interleave; the wait is bounded so that a CPU that died
 * holding the lock (fatal exception) cannot silence the others.
 */
static bool serial_lock(void) {
    uint64_t deadline = rdtsc() + tsc_cycles_from_us(100000);
    while (__atomic_exchange_n(&serial_lock_word, 1, __ATOMIC_ACQUIRE) != 0) {
        if (rdtsc() > deadline) {
            return false;
        }
        cpu_relax();
    }
    return true;
}

static void serial_unlock(void) {
    __atomic_store_n(&serial_lock_word, 0, __ATOMIC_RELEASE);
}

static void vprintk(const char* fmt, va_list ap) {
    char line[LINE_MAX];
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    size_t len = n < 0 ? 0 : (size_t)n;
    if (len >= sizeof(line)) {
        len = sizeof(line) - 1;
    }
    bool locked = serial_lock();
    for (size_t i = 0; i < len; i++) {
        uart_putc(line[i]);
    }
    if (locked) {
        serial_unlock();
    }
}

void printk(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintk(fmt, ap);
    va_end(ap);
}

/*
 * nitrovm stops at the debug-exit port with the status; QEMU ignores that port (unless it has an
 * isa-debug-exit device) and stops at the i8042 reset when run with -no-reboot.
 */
void probe_exit(int status) {
    printk("probe: exit status %d\n", status);
    outb(PORT_DEBUG_EXIT, (uint8_t)status);
    outb(PORT_I8042_CMD, I8042_RESET);
    if (current_cpl() == 0) {
        for (;;) {
            __asm__ volatile("cli; hlt");
        }
    }
    for (;;) {
        cpu_relax();
    }
}
