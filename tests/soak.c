/*
 * soak.c - a long run on one backend (make soak runs it on each):
 *
 *   soak URL [SECONDS] [MAX_EVENTS]
 *
 * Producers enqueue numbered events, some in batches, some delayed; a
 * worker of 4 threads handles them with handlers of random duration that
 * fail at random: 8% once (retried), 1% permanently (EVQ_EPERMANENT) and
 * 1% every time (dead-lettered when the attempts run out).  The backlog is
 * kept under 5000 events, so memory should not grow.  Resident memory is
 * sampled every second, less the soak's own two bytes per event.  It runs
 * SECONDS (default 60) or until MAX_EVENTS were enqueued, then drains and
 * checks:
 *
 * - every event that was not meant to fail for good was handled at least
 *   once;
 * - the dead-letter queue holds exactly the events meant to fail for
 *   good, each once;
 * - resident memory is flat: the mean of the last quarter of the samples
 *   is within max(8 MiB, 20%) of the mean of the second quarter.  The
 *   slope of a least-squares line through the samples after the first
 *   quarter is printed.
 *
 * Exit status 0 when all hold.
 */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PRODUCERS    2
#define WORKERS      4
#define BACKLOG      5000
#define MAX_ATTEMPTS 3

enum fate { OK, FAIL_ONCE, PERMANENT, ALWAYS };

static evq_queue *q;
static long max_events;
static atomic_long next_id, handled_total, settled, errors;
static atomic_bool stop;
static atomic_uchar *seen; /* handlings of each id, capped at 255 */
static int64_t t_end_ns;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The fate of event `id`, the same for the producer and the handler. */
static enum fate fate_of(long id)
{
    unsigned long h = (unsigned long)id * 2654435761u % 100;
    return h < 8 ? FAIL_ONCE : h < 9 ? PERMANENT : h < 10 ? ALWAYS : OK;
}

static long rss_kib(void)
{
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static int handler(const evq_event *ev, void *arg)
{
    (void)arg;
    long id =
        (long)json_integer_value(json_object_get(evq_event_data(ev), "n"));
    if (id < 0 || id >= max_events)
        return EVQ_EPERMANENT;
    static _Thread_local unsigned seed;
    if (!seed)
        seed = (unsigned)(uintptr_t)&seed;
    struct timespec t = {0, (rand_r(&seed) % 200) * 1000};
    nanosleep(&t, NULL);
    switch (fate_of(id)) {
    case FAIL_ONCE:
        if (evq_event_attempt(ev) == 1)
            return EVQ_EIO;
        break;
    case PERMANENT:
        atomic_fetch_add(&settled, 1);
        return EVQ_EPERMANENT;
    case ALWAYS:
        if (evq_event_attempt(ev) >= MAX_ATTEMPTS)
            atomic_fetch_add(&settled, 1);
        return EVQ_EIO;
    case OK:
        break;
    }
    unsigned char c = atomic_load(&seen[id]);
    while (c < 255 && !atomic_compare_exchange_weak(&seen[id], &c, c + 1))
        ;
    atomic_fetch_add(&handled_total, 1);
    atomic_fetch_add(&settled, 1);
    return 0;
}

static void *producer(void *arg)
{
    (void)arg;
    unsigned seed = (unsigned)(uintptr_t)pthread_self();
    while (!atomic_load(&stop) && mono_ns() < t_end_ns) {
        if (atomic_load(&next_id) - atomic_load(&settled) > BACKLOG) {
            struct timespec t = {0, 2000000};
            nanosleep(&t, NULL);
            continue;
        }
        int k = rand_r(&seed) % 4 == 0 ? 1 + rand_r(&seed) % 50 : 1;
        long first = atomic_fetch_add(&next_id, k);
        if (first + k > max_events) {
            atomic_store(&stop, true);
            atomic_store(&next_id, max_events);
            break;
        }
        evq_event *evs[50];
        for (int i = 0; i < k; i++)
            evs[i] = evq_event_new(
                "soak", json_pack("{s:I}", "n", (json_int_t)(first + i)));
        int rc;
        if (k > 1)
            rc = evq_enqueue_batch(q, (const evq_event *const *)evs, (size_t)k);
        else if (rand_r(&seed) % 20 == 0)
            rc = evq_enqueue_delayed(q, evs[0], 100 + rand_r(&seed) % 900);
        else
            rc = evq_enqueue(q, evs[0]);
        if (rc) {
            fprintf(stderr, "soak: enqueue: %s\n", evq_errmsg());
            atomic_fetch_add(&errors, 1);
            atomic_store(&stop, true);
        }
        for (int i = 0; i < k; i++)
            evq_event_free(evs[i]);
    }
    return NULL;
}

/* Reads the dead-letter queue as the run goes (so the memory backend's
 * dead letters do not pile up in memory), noting each id; after `stop`,
 * until it has been empty for 5 s. */
static evq_queue *dq;
static unsigned char *dead_seen;
static atomic_long dead_n, dead_wrong, dead_twice;
static atomic_bool dead_stop;

static void *dead_reader(void *arg)
{
    (void)arg;
    int64_t idle_since = mono_ns();
    for (;;) {
        evq_msg *m;
        int rc = evq_dequeue(dq, &m, 200);
        if (rc == EVQ_ETIMEDOUT) {
            if (atomic_load(&dead_stop) &&
                mono_ns() - idle_since > 5 * 1000000000LL)
                break;
            continue;
        }
        if (rc) {
            fprintf(stderr, "soak: dead letters: %s\n", evq_errmsg());
            atomic_fetch_add(&errors, 1);
            break;
        }
        idle_since = mono_ns();
        const evq_event *ev = evq_msg_event(m);
        long id = ev ? (long)json_integer_value(
                           json_object_get(evq_event_data(ev), "n"))
                     : -1;
        if (id < 0 || id >= max_events ||
            !(fate_of(id) == PERMANENT || fate_of(id) == ALWAYS))
            atomic_fetch_add(&dead_wrong, 1);
        else if (dead_seen[id]++)
            atomic_fetch_add(&dead_twice, 1);
        atomic_fetch_add(&dead_n, 1);
        evq_ack(m);
    }
    return NULL;
}

/* The number of events meant to fail for good among ids [0, n). */
static long doomed(long n)
{
    long d = 0;
    for (long i = 0; i < n; i++)
        d += fate_of(i) == PERMANENT || fate_of(i) == ALWAYS;
    return d;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: soak URL [SECONDS] [MAX_EVENTS]\n");
        return 2;
    }
    long seconds = argc > 2 ? atol(argv[2]) : 60;
    max_events = argc > 3 ? atol(argv[3]) : 100000000;
    if (seconds < 4 || max_events < 1000) {
        fprintf(stderr, "soak: at least 4 seconds and 1000 events\n");
        return 2;
    }
    seen = calloc((size_t)max_events, 1);
    dead_seen = calloc((size_t)max_events, 1);
    long *samples = calloc((size_t)seconds + 1, sizeof *samples);
    if (!seen || !dead_seen || !samples)
        return 1;
    char name[64];
    snprintf(name, sizeof name, "soak-%d", (int)getpid());
    if (evq_queue_open(&q, argv[1], name, NULL)) {
        fprintf(stderr, "soak: %s\n", evq_errmsg());
        return 1;
    }
    if (evq_queue_open_dead(&dq, q)) {
        fprintf(stderr, "soak: dead-letter queue: %s\n", evq_errmsg());
        return 1;
    }
    pthread_t dt;
    pthread_create(&dt, NULL, dead_reader, NULL);
    evq_events *events = evq_events_new();
    evq_register_handler(events, "soak", handler, NULL);
    evq_worker_opts wo;
    evq_worker_opts_init(&wo);
    wo.concurrency = WORKERS;
    wo.max_attempts = MAX_ATTEMPTS;
    wo.backoff_initial_ms = 20;
    wo.backoff_max_ms = 200;
    evq_worker *w;
    if (evq_worker_start(&w, q, events, &wo)) {
        fprintf(stderr, "soak: worker: %s\n", evq_errmsg());
        return 1;
    }
    int64_t t0 = mono_ns();
    t_end_ns = t0 + (int64_t)seconds * 1000000000;
    pthread_t p[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++)
        pthread_create(&p[i], NULL, producer, NULL);
    long n_samples = 0;
    while (!atomic_load(&stop) && mono_ns() < t_end_ns) {
        sleep(1);
        /* less the soak's own bookkeeping: a byte per event in each of
         * seen and dead_seen, resident once touched */
        if (n_samples <= seconds)
            samples[n_samples++] = rss_kib() - 2 * atomic_load(&next_id) / 1024;
    }
    atomic_store(&stop, true);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(p[i], NULL);
    long produced = atomic_load(&next_id);
    if (produced > max_events)
        produced = max_events;

    /* drain: until every event is settled (handled, or failed for good),
     * or nothing moved for 60 s */
    long last = -1;
    int64_t moved = mono_ns();
    while (atomic_load(&settled) < produced) {
        long now = atomic_load(&settled);
        if (now != last) {
            last = now;
            moved = mono_ns();
        } else if (mono_ns() - moved > 60 * 1000000000LL) {
            break;
        }
        sleep(1);
    }
    evq_worker_stop(w, 30000);
    evq_worker_free(w);

    /* what each event came to */
    long missing = 0, twice = 0, wrongly_handled = 0;
    for (long i = 0; i < produced; i++) {
        bool bad = fate_of(i) == PERMANENT || fate_of(i) == ALWAYS;
        unsigned char c = atomic_load(&seen[i]);
        if (bad && c > 0)
            wrongly_handled++;
        else if (!bad && c == 0)
            missing++;
        else if (c > 1)
            twice++;
    }
    /* the dead letters: exactly the doomed ones, once each */
    atomic_store(&dead_stop, true);
    pthread_join(dt, NULL);
    long dead_missing = 0;
    for (long i = 0; i < produced; i++)
        dead_missing +=
            (fate_of(i) == PERMANENT || fate_of(i) == ALWAYS) && !dead_seen[i];
    evq_queue_close(dq);

    /* memory: flat after the first quarter */
    long qn = n_samples / 4;
    double m2 = 0, m4 = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
    long fit = 0;
    for (long i = qn; i < 2 * qn; i++)
        m2 += (double)samples[i];
    for (long i = 3 * qn; i < n_samples; i++)
        m4 += (double)samples[i];
    m2 = qn ? m2 / (double)qn : 0;
    m4 = n_samples - 3 * qn ? m4 / (double)(n_samples - 3 * qn) : 0;
    for (long i = qn; i < n_samples; i++, fit++) {
        sx += (double)i;
        sy += (double)samples[i];
        sxx += (double)i * (double)i;
        sxy += (double)i * (double)samples[i];
    }
    double slope =
        fit > 1 ? ((double)fit * sxy - sx * sy) / ((double)fit * sxx - sx * sx)
                : 0; /* KiB per second */
    double allowed = m2 * 0.2 > 8192 ? m2 * 0.2 : 8192;
    bool flat = qn == 0 || m4 - m2 <= allowed;

    printf("soak %s: %.0f s, %ld events enqueued, %ld handlings "
           "(%ld events more than once), %ld never handled, %ld handled "
           "that should have failed; dead letters %ld (%ld expected, %ld "
           "missing, %ld unexpected, %ld twice); RSS %ld samples, %.0f -> "
           "%.0f KiB (second to last quarter), slope %.1f KiB/min%s\n",
           evq_queue_scheme(q), (double)(mono_ns() - t0) / 1e9, produced,
           atomic_load(&handled_total), twice, missing, wrongly_handled,
           atomic_load(&dead_n), doomed(produced), dead_missing,
           atomic_load(&dead_wrong), atomic_load(&dead_twice), n_samples, m2,
           m4, slope * 60, flat ? "" : " NOT FLAT");
    evq_events_free(events);
    evq_queue_close(q);
    free(dead_seen);
    free(samples);
    free(seen);
    bool ok = atomic_load(&errors) == 0 && missing == 0 &&
              wrongly_handled == 0 && dead_missing == 0 &&
              atomic_load(&dead_wrong) == 0 && atomic_load(&dead_twice) == 0 &&
              flat && produced > 0;
    return ok ? 0 : 1;
}
