// boottime: runs a command and reports how long after its start a marker appeared on its stdout.
// Static, so it runs unchanged inside the lane's emulated host (cc -static -O2).
//
//   boottime -m MARKER [-t TIMEOUT_S] [-o OUT] [-e ERR] [-s SAMPLE_MS] [-g GUEST_KIB] -- CMD [ARG]...
//
// Prints one line on stdout:
//   boot_ms=B total_ms=T exit=N maxrss_kib=M sampled_rss_kib=R sampled_beyond_kib=X last_beyond_kib=L
//   last_anon_kib=A samples=K
// boot_ms: CLOCK_MONOTONIC from just before fork() to the read() that delivered the first stdout
// line containing MARKER ("none" if it never came); total_ms: to the command's end; exit: its
// status (128+signal if killed); maxrss_kib: its peak RSS from wait4() (includes the few hundred
// KiB of this program forked before exec). With -s, /proc/PID/smaps is read every SAMPLE_MS:
// sampled_rss_kib is the largest total Rss seen, sampled_beyond_kib the largest Rss outside the
// guest RAM, taken to be every mapping of at least 15/16 of GUEST_KIB, last_beyond_kib that of the
// last sample before the command ended, last_anon_kib the anonymous (private, not file-backed)
// part of that ("none" without samples). Reading smaps costs time: do not
// sample in runs whose boot time counts.
// The command's stdout is copied to OUT, its stderr goes to ERR (default /dev/null for both).
// Exit status: 0 if the marker was seen, 1 if not, 2 on a usage or setup error.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void usage(void) {
    fprintf(stderr, "usage: boottime -m MARKER [-t TIMEOUT_S] [-o OUT] [-e ERR] [-s SAMPLE_MS] "
                    "[-g GUEST_KIB] -- CMD [ARG]...\n");
    exit(2);
}

// Total Rss of the process, Rss of the mappings at least min_size_kib large, and the anonymous
// memory of the smaller ones. 0 on success.
static int sample_smaps(pid_t pid, long min_size_kib, long* total, long* big, long* anon_small) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/smaps", (int)pid);
    FILE* f = fopen(path, "re");
    if (!f) return -1;
    char line[512];
    long size = 0, rss, sum = 0, sum_big = 0, sum_anon = 0;
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        lines++;
        if (sscanf(line, "Size: %ld kB", &rss) == 1) {
            size = rss;
        } else if (sscanf(line, "Rss: %ld kB", &rss) == 1) {
            sum += rss;
            if (min_size_kib > 0 && size >= min_size_kib) sum_big += rss;
        } else if (sscanf(line, "Anonymous: %ld kB", &rss) == 1) {
            if (min_size_kib <= 0 || size < min_size_kib) sum_anon += rss;
        }
    }
    fclose(f);
    if (lines == 0) return -1;  // the process is gone (or a zombie)
    *total = sum;
    *big = sum_big;
    *anon_small = sum_anon;
    return 0;
}

int main(int argc, char** argv) {
    const char *marker = NULL, *out_path = "/dev/null", *err_path = "/dev/null";
    double timeout_s = 300;
    long sample_ms = 0, guest_kib = 0;
    int opt;
    while ((opt = getopt(argc, argv, "+m:t:o:e:s:g:")) != -1) {
        switch (opt) {
        case 'm': marker = optarg; break;
        case 't': timeout_s = atof(optarg); break;
        case 'o': out_path = optarg; break;
        case 'e': err_path = optarg; break;
        case 's': sample_ms = atol(optarg); break;
        case 'g': guest_kib = atol(optarg); break;
        default: usage();
        }
    }
    if (!marker || !*marker || optind >= argc) usage();
    char** cmd = argv + optind;

    int out_fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int err_fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int pipe_fd[2];
    if (out_fd < 0 || err_fd < 0 || pipe2(pipe_fd, O_CLOEXEC) != 0) {
        perror("boottime");
        return 2;
    }

    double t0 = now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        perror("boottime: fork");
        return 2;
    }
    if (pid == 0) {
        dup2(pipe_fd[1], STDOUT_FILENO);
        dup2(err_fd, STDERR_FILENO);
        execvp(cmd[0], cmd);
        dprintf(err_fd, "boottime: exec %s: %s\n", cmd[0], strerror(errno));
        _exit(127);
    }
    close(pipe_fd[1]);

    // The current line (enough of it to hold the marker), to find the marker across reads.
    size_t mlen = strlen(marker), cap = mlen * 2 + 4096, len = 0;
    char* cur = malloc(cap + 1);
    double t_marker = -1, deadline = t0 + timeout_s * 1e3, next_sample = t0 + sample_ms;
    long min_big = guest_kib > 0 ? guest_kib - guest_kib / 16 : 0;
    long max_total = -1, max_beyond = -1, last_beyond = -1, last_anon = -1, samples = 0;
    int killed = 0;
    char buf[8192];
    for (;;) {
        double t = now_ms();
        if (!killed && t >= deadline) {
            kill(pid, SIGKILL);
            killed = 1;
        }
        if (sample_ms > 0 && t >= next_sample) {
            long total, big, anon;
            if (sample_smaps(pid, min_big, &total, &big, &anon) == 0) {
                samples++;
                if (total > max_total) max_total = total;
                if (total - big > max_beyond) max_beyond = total - big;
                last_beyond = total - big;
                last_anon = anon;
            }
            next_sample = t + sample_ms;
            t = now_ms();
        }
        double wait = (killed ? 1000 : deadline - t);
        if (sample_ms > 0 && next_sample - t < wait) wait = next_sample - t;
        struct pollfd p = {.fd = pipe_fd[0], .events = POLLIN};
        int r = poll(&p, 1, wait < 0 ? 0 : (int)wait + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) continue;
        ssize_t n = read(pipe_fd[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;  // EOF: the command (and anything holding its stdout) ended
        if (write(out_fd, buf, n) != n) { /* keep measuring even if the copy fails */ }
        if (t_marker >= 0) continue;
        for (ssize_t i = 0; i < n && t_marker < 0; i++) {
            if (buf[i] == '\n') {
                len = 0;
                continue;
            }
            if (len == cap) {  // a long line: keep only its tail, which may still hold the marker
                memmove(cur, cur + cap - mlen, mlen);
                len = mlen;
            }
            cur[len++] = buf[i];
            cur[len] = 0;
            if (len >= mlen && memcmp(cur + len - mlen, marker, mlen) == 0) t_marker = now_ms() - t0;
        }
    }

    int status = 0;
    struct rusage ru = {0};
    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
    }
    double total_ms = now_ms() - t0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);

    char boot[32] = "none", rss[32] = "none", beyond[32] = "none", last[32] = "none", lanon[32] = "none";
    if (t_marker >= 0) snprintf(boot, sizeof boot, "%.1f", t_marker);
    if (samples > 0) {
        snprintf(rss, sizeof rss, "%ld", max_total);
        snprintf(beyond, sizeof beyond, "%ld", max_beyond);
        snprintf(last, sizeof last, "%ld", last_beyond);
        snprintf(lanon, sizeof lanon, "%ld", last_anon);
    }
    printf("boot_ms=%s total_ms=%.1f exit=%d maxrss_kib=%ld sampled_rss_kib=%s sampled_beyond_kib=%s "
           "last_beyond_kib=%s last_anon_kib=%s samples=%ld%s\n",
           boot, total_ms, code, ru.ru_maxrss, rss, beyond, last, lanon, samples, killed ? " timeout=1" : "");
    return t_marker >= 0 ? 0 : 1;
}
