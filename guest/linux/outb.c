/*
 * outb PORT VALUE: write one byte to an x86 I/O port from Linux user space.
 *
 * The guest uses it to end the VM through the debug exit port (0xF4) and to
 * post the boot marker (0x3F0). The Debian cloud kernel is built without
 * CONFIG_DEVPORT, so /dev/port does not exist there; ioperm(2) does
 * (CONFIG_X86_IOPL_IOPERM=y). PORT and VALUE are decimal or 0x-prefixed hex.
 *
 * Freestanding on purpose (no libc): a few hundred bytes in the initramfs,
 * built with any C compiler, no static libc needed.
 *   cc -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -Os
 */

enum { SYS_write = 1, SYS_ioperm = 173, SYS_exit_group = 231 };

static long sys3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return ret;
}

static void put(const char *s)
{
    long n = 0;
    while (s[n])
        n++;
    sys3(SYS_write, 2, (long)s, n);
}

static __attribute__((noreturn)) void quit(int status)
{
    for (;;)
        sys3(SYS_exit_group, status, 0, 0);
}

/* Returns -1 on a malformed number or one above `max`. */
static long parse(const char *s, long max)
{
    long v = 0, base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    if (!*s)
        return -1;
    for (; *s; s++) {
        long d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            return -1;
        v = v * base + d;
        if (v > max)
            return -1;
    }
    return v;
}

__attribute__((used, noreturn)) void outb_main(long *sp)
{
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    if (argc != 3) {
        put("usage: outb PORT VALUE\n");
        quit(2);
    }
    long port = parse(argv[1], 0xffff);
    long value = parse(argv[2], 0xff);
    if (port < 0 || value < 0) {
        put("outb: bad number\n");
        quit(2);
    }
    if (sys3(SYS_ioperm, port, 1, 1) != 0) {
        put("outb: ioperm failed\n");
        quit(1);
    }
    unsigned char v = (unsigned char)value;
    unsigned short p = (unsigned short)port;
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(p) : "memory");
    quit(0);
}

__asm__(".text\n"
        ".globl _start\n"
        "_start:\n"
        "  xor %ebp, %ebp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call outb_main\n"
        "  hlt\n");
