/*
 * hist.h - a fixed-size log-linear latency histogram.
 *
 * Values below 16 get a bucket each; above, every power of two is split into
 * 16 buckets, so a bucket's width is at most 1/16 of its values and the
 * whole range of uint64 fits in 976 counters.  One writer per histogram
 * (relaxed loads and stores, no read-modify-write), any number of readers;
 * recording is a few instructions and never allocates.
 */
#ifndef EVQ_HIST_H
#define EVQ_HIST_H

#include <stdatomic.h>
#include <stdint.h>

#define EVQ__HIST_SUB     16
#define EVQ__HIST_BUCKETS (EVQ__HIST_SUB + (64 - 4) * EVQ__HIST_SUB)

typedef struct evq__hist {
    _Atomic uint64_t count[EVQ__HIST_BUCKETS];
} evq__hist;

static inline unsigned evq__hist_bucket(uint64_t v)
{
    if (v < EVQ__HIST_SUB)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* >= 4 */
    unsigned sub = (unsigned)(v >> (e - 4)) & (EVQ__HIST_SUB - 1);
    return EVQ__HIST_SUB + (e - 4) * EVQ__HIST_SUB + sub;
}

/* The largest value that lands in bucket b. */
static inline uint64_t evq__hist_upper(unsigned b)
{
    if (b < EVQ__HIST_SUB)
        return b;
    unsigned e = (b - EVQ__HIST_SUB) / EVQ__HIST_SUB + 4;
    uint64_t sub = (b - EVQ__HIST_SUB) % EVQ__HIST_SUB;
    uint64_t lo = ((uint64_t)EVQ__HIST_SUB + sub) << (e - 4);
    return lo + ((uint64_t)1 << (e - 4)) - 1;
}

static inline void evq__hist_record(evq__hist *h, uint64_t v)
{
    _Atomic uint64_t *c = &h->count[evq__hist_bucket(v)];
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* Adds src's counts into dst (a private copy being summed). */
static inline void evq__hist_merge(uint64_t *dst, const evq__hist *src)
{
    for (unsigned i = 0; i < EVQ__HIST_BUCKETS; i++)
        dst[i] += atomic_load_explicit(&src->count[i], memory_order_relaxed);
}

/* The value at quantile q (0..1) of merged counts, as its bucket's upper
 * bound; 0 when empty. */
static inline uint64_t evq__hist_quantile(const uint64_t *counts,
                                          uint64_t total, double q)
{
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)total);
    if (rank >= total)
        rank = total - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < EVQ__HIST_BUCKETS; i++) {
        seen += counts[i];
        if (seen > rank)
            return evq__hist_upper(i);
    }
    return evq__hist_upper(EVQ__HIST_BUCKETS - 1);
}

#endif
