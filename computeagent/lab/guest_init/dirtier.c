/* computeagent lab guest: dirty RAM at a chosen rate (issue 11).
 *
 *   dirtier <MiB/s> <working set MiB>
 *
 * Every 10 ms tick writes rate/100 MiB of pages, round-robin over the working set,
 * then sleeps 10 ms: no catching up after a pause, so a vCPU throttle (auto-converge)
 * lowers the dirty rate as it would for a real workload. Each page holds its index
 * and the generation written last; before a page is rewritten its old content is
 * checked, so memory that a migration lost or mixed up shows. Once a second:
 *   GUESTDIRTY <n> OK <MiB dirtied in that second>
 *   GUESTDIRTY <n> FAIL <pages with wrong content so far>
 * Static, libc only: built into the lab guest's root disk at /usr/libexec/dirtier.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: dirtier <MiB/s> <working set MiB>\n");
        return 2;
    }
    double rate = atof(argv[1]);
    long ws_mib = atol(argv[2]);
    long pages = ws_mib * 256;
    if (pages <= 0) return 2;
    uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (mem == MAP_FAILED) {
        printf("GUESTDIRTY 0 FAIL mmap\n");
        return 1;
    }
    mlock(mem, pages * PAGE);
    long per_tick = (long)(rate * 256 / 100.0 + 0.5);   /* pages per 10 ms */
    long pos = 0, bad = 0, done = 0, n = 0;
    uint64_t gen = 1;
    for (long i = 0; i < pages; i++) {                  /* generation 0 everywhere */
        uint64_t *p = mem + i * (PAGE / 8);
        p[0] = i; p[1] = 0;
    }
    double next_report = now() + 1.0;
    struct timespec tick = {0, 10 * 1000 * 1000};
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        for (long k = 0; k < per_tick; k++) {
            uint64_t *p = mem + pos * (PAGE / 8);
            uint64_t want = gen - 1;
            if (p[0] != (uint64_t)pos || p[1] != want) bad++;
            p[0] = pos; p[1] = gen;
            p[(pos * 7) % (PAGE / 8 - 2) + 2] = gen;       /* one more word: a real write */
            if (++pos == pages) { pos = 0; gen++; }
            done++;
        }
        nanosleep(&tick, NULL);
        double t = now();
        if (t >= next_report) {
            n++;
            if (bad) printf("GUESTDIRTY %ld FAIL %ld\n", n, bad);
            else printf("GUESTDIRTY %ld OK %ld\n", n, done / 256);
            done = 0;
            next_report = t + 1.0;
        }
    }
}
