/* What the worker's latency statistics cost per event: two tick reads
 * and a histogram update, as the worker does around each handler run.
 * It measures the library's internals, so it lives here rather than in
 * `evq bench` (which uses the public API only).  Prints one JSON line:
 * {"stats_overhead_ns": N}. */
#include <stdio.h>
#include <stdlib.h>

#include "hist.h"
#include "internal.h"

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 5000000;
    evq__hist *h = calloc(1, sizeof *h);
    if (!h || iters <= 0) {
        fprintf(stderr, "usage: stats_cost [ITERATIONS]\n");
        return 2;
    }
    evq__ticks_init();
    int64_t t0 = evq__now_mono_ns();
    for (long i = 0; i < iters; i++) {
        uint64_t a = evq__ticks();
        uint64_t b = evq__ticks();
        evq__hist_record(h, b - a);
    }
    double ns = (double)(evq__now_mono_ns() - t0) / (double)iters;
    uint64_t n = 0;
    for (unsigned i = 0; i < EVQ__HIST_BUCKETS; i++)
        n += atomic_load(&h->count[i]);
    free(h);
    printf("{\"stats_overhead_ns\":%.1f,\"recorded\":%llu}\n", ns,
           (unsigned long long)n);
    return n == (uint64_t)iters ? 0 : 1;
}
