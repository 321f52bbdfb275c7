/*
 * bucket.c - token buckets kept in process memory: the rate limits of
 * workers (evq_worker_limit) where the backend holds no shared state, one
 * bucket per key for the whole process.
 *
 * A chained hash table under one lock.  When it holds many buckets, the
 * ones idle long enough to be full again are dropped (a full bucket is
 * the same as none).
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 1024
#define PRUNE_AT 16384

typedef struct bucket {
    struct bucket *next;
    double tokens;
    int64_t at_ns; /* when tokens was counted (monotonic) */
    int64_t full_ns; /* when it is full again */
    char key[];
} bucket;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static bucket *slots[SLOTS];
static size_t count;

static uint64_t hash_key(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void prune(int64_t now)
{
    for (size_t i = 0; i < SLOTS; i++)
        for (bucket **pp = &slots[i]; *pp;) {
            bucket *b = *pp;
            if (b->full_ns <= now) {
                *pp = b->next;
                free(b);
                count--;
            } else {
                pp = &b->next;
            }
        }
}

int64_t evq__bucket_wait_ms(double tokens, double rate)
{
    return (int64_t)ceil((1.0 - tokens) * 1000.0 / rate);
}

int evq__bucket_take(const char *key, double rate, int burst, int64_t *wait_ms)
{
    int64_t now = evq__now_mono_ns();
    uint64_t h = hash_key(key) % SLOTS;
    int rc = 0;
    *wait_ms = 0;
    pthread_mutex_lock(&mu);
    bucket *b = slots[h];
    while (b && strcmp(b->key, key) != 0)
        b = b->next;
    if (!b) {
        if (count >= PRUNE_AT)
            prune(now);
        size_t len = strlen(key) + 1;
        if (!(b = malloc(sizeof *b + len))) {
            rc = evq__err(EVQ_ENOMEM, "out of memory");
            goto out;
        }
        memcpy(b->key, key, len);
        b->tokens = burst;
        b->at_ns = now;
        b->next = slots[h];
        slots[h] = b;
        count++;
    }
    double t = b->tokens + (double)(now - b->at_ns) * rate / 1e9;
    if (t > burst)
        t = burst;
    if (t >= 1.0)
        t -= 1.0;
    else
        *wait_ms = evq__bucket_wait_ms(t, rate);
    b->tokens = t;
    b->at_ns = now;
    b->full_ns = now + (int64_t)((burst - t) / rate * 1e9);
out:
    pthread_mutex_unlock(&mu);
    return rc;
}

/* Frees the buckets at exit, so leak checkers see a clean heap. */
__attribute__((destructor)) static void buckets_free(void)
{
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < SLOTS; i++)
        while (slots[i]) {
            bucket *b = slots[i];
            slots[i] = b->next;
            free(b);
        }
    count = 0;
    pthread_mutex_unlock(&mu);
}
