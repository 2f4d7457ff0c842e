/*
 * The few C library pieces the probe needs: memory and string helpers (the compiler may emit
 * calls to memset/memcpy itself), number parsing, a small vsnprintf and an in-place sort.
 */
#include "probe.h"

void* memset(void* dst, int c, size_t n) {
    void* d = dst;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return dst;
}

void* memcpy(void* dst, const void* src, size_t n) {
    void* d = dst;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
    return dst;
}

int memcmp(const void* a, const void* b, size_t n) {
    const uint8_t* x = a;
    const uint8_t* y = b;
    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i]) {
            return x[i] < y[i] ? -1 : 1;
        }
    }
    return 0;
}

size_t strlen(const char* s) {
    size_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    return n;
}

int strcmp(const char* a, const char* b) {
    while (*a != '\0' && *a == *b) {
        a++;
        b++;
    }
    return (int)(uint8_t)*a - (int)(uint8_t)*b;
}

/* Decimal, or hex with a 0x prefix; the whole string must be a number that fits 64 bits. */
bool parse_u64(const char* s, uint64_t* out) {
    unsigned base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    if (*s == '\0') {
        return false;
    }
    uint64_t v = 0;
    for (; *s != '\0'; s++) {
        unsigned d;
        if (*s >= '0' && *s <= '9') {
            d = (unsigned)(*s - '0');
        } else if (base == 16 && *s >= 'a' && *s <= 'f') {
            d = (unsigned)(*s - 'a' + 10);
        } else if (base == 16 && *s >= 'A' && *s <= 'F') {
            d = (unsigned)(*s - 'A' + 10);
        } else {
            return false;
        }
        if (d >= base || v > (UINT64_MAX - d) / base) {
            return false;
        }
        v = v * base + d;
    }
    *out = v;
    return true;
}

struct outbuf {
    char* buf;
    size_t size;
    size_t len; /* characters produced, possibly more than fit */
};

static void out_char(struct outbuf* o, char c) {
    if (o->len + 1 < o->size) {
        o->buf[o->len] = c;
    }
    o->len++;
}

static void out_number(struct outbuf* o, uint64_t v, unsigned base, bool upper, bool negative,
                       unsigned width, char pad) {
    const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    unsigned n = 0;
    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v != 0);
    unsigned total = n + (negative ? 1u : 0u);
    if (negative && pad == '0') {
        out_char(o, '-');
    }
    for (; total < width; total++) {
        out_char(o, pad);
    }
    if (negative && pad != '0') {
        out_char(o, '-');
    }
    while (n > 0) {
        out_char(o, tmp[--n]);
    }
}

/*
 * Supports %d %i %u %x %X %p %s %c %% with an optional 0 flag, a width and the l, ll and z
 * length modifiers; enough for the probe's own messages.
 */
int vsnprintf(char* buf, size_t size, const char* fmt, va_list ap) {
    struct outbuf o = {buf, size, 0};
    for (; *fmt != '\0'; fmt++) {
        if (*fmt != '%') {
            out_char(&o, *fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        unsigned width = 0;
        while (*fmt >= '0' && *fmt <= '9') {
            width = width * 10 + (unsigned)(*fmt - '0');
            fmt++;
        }
        unsigned longs = 0;
        while (*fmt == 'l' || *fmt == 'z') {
            longs += *fmt == 'z' ? 2 : 1;
            fmt++;
        }
        switch (*fmt) {
            case 'd':
            case 'i': {
                int64_t v = longs > 0 ? va_arg(ap, int64_t) : va_arg(ap, int);
                uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
                out_number(&o, mag, 10, false, v < 0, width, pad);
                break;
            }
            case 'u':
            case 'x':
            case 'X': {
                uint64_t v = longs > 0 ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
                out_number(&o, v, *fmt == 'u' ? 10 : 16, *fmt == 'X', false, width, pad);
                break;
            }
            case 'p':
                out_char(&o, '0');
                out_char(&o, 'x');
                out_number(&o, (uint64_t)va_arg(ap, void*), 16, false, false, width, pad);
                break;
            case 's': {
                const char* s = va_arg(ap, const char*);
                if (s == NULL) {
                    s = "(null)";
                }
                size_t n = strlen(s);
                for (; n < width; width--) {
                    out_char(&o, ' ');
                }
                while (*s != '\0') {
                    out_char(&o, *s++);
                }
                break;
            }
            case 'c':
                out_char(&o, (char)va_arg(ap, int));
                break;
            case '%':
                out_char(&o, '%');
                break;
            case '\0':
                fmt--; /* a lone '%' at the end */
                break;
            default:
                out_char(&o, '%');
                out_char(&o, *fmt);
                break;
        }
    }
    if (size > 0) {
        o.buf[o.len < size ? o.len : size - 1] = '\0';
    }
    return o.len > (size_t)INT32_MAX ? INT32_MAX : (int)o.len;
}

int snprintf(char* buf, size_t size, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

/* Heapsort: O(n log n) without recursion or extra memory. */
static void sift_down(uint64_t* v, size_t root, size_t n) {
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n) {
            return;
        }
        if (child + 1 < n && v[child + 1] > v[child]) {
            child++;
        }
        if (v[root] >= v[child]) {
            return;
        }
        uint64_t t = v[root];
        v[root] = v[child];
        v[child] = t;
        root = child;
    }
}

void sort_u64(uint64_t* v, size_t n) {
    for (size_t i = n / 2; i > 0; i--) {
        sift_down(v, i - 1, n);
    }
    for (size_t end = n; end > 1; end--) {
        uint64_t t = v[0];
        v[0] = v[end - 1];
        v[end - 1] = t;
        sift_down(v, 0, end - 1);
    }
}
