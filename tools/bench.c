/* evq bench: throughput, latency and memory of a backend through the
 * public API alone, as a program using evq would see them. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tool.h"

const char bench_help[] =
    "usage: evq bench URL [--events N] [--size BYTES] [--producers P]\n"
    "                     [--workers W] [--batch B] [--warmup K]\n"
    "                     [--async] [--queue NAME] [--keep] [--json]\n"
    "                     [-o KEY=VALUE]\n"
    "\n"
    "Measures, on queue NAME (default bench-<pid>), after K events are\n"
    "enqueued untimed (a warm-up: connections, metadata, a topic made on\n"
    "first use; they join the backlog):\n"
    "  enqueue   P threads create and enqueue N events of about BYTES of\n"
    "            payload (the queue holds them all: memory:// capacity is\n"
    "            raised to N unless given)\n"
    "  drain     a worker of W threads empties that backlog (no-op handler),\n"
    "            timed from the first event handled to the last; the time\n"
    "            before the first (joining a consumer group) is start_ms\n"
    "  e2e       P producers and a worker of W threads at once: create the\n"
    "            event, enqueue, dequeue, dispatch, ack, free; latency is\n"
    "            from the event's creation to its handler\n"
    "  raw       memory:// only: enqueue + dequeue + ack of pre-built events,\n"
    "            one producer thread and one consumer thread (B at a time:\n"
    "            evq_enqueue_batch, evq_dequeue_batch, evq_ack_batch)\n"
    "and the peak resident memory.  Producers enqueue B events at a time\n"
    "(evq_enqueue_batch when B > 1), or with --async one event per\n"
    "evq_enqueue_async call, not waiting (then evq_flush); --threads T is\n"
    "--producers T.  Defaults: N 1000000, BYTES 100, P 1,\n"
    "W 1, B 1, K 0.\n"
    "At the end the queue is deleted (evq_queue_delete), and on sqlite:// the\n"
    "file too when bench made it; a queue named with --queue is the\n"
    "caller's and stays, as does any with --keep.\n"
    "--json prints one object: enqueue_per_s, start_ms, drain_per_s, "
    "e2e_per_s,\n"
    "latency_us {p50, p99, p999}, peak_rss_kib and, on memory://,\n"
    "raw_per_s.  A progress line goes to standard error when it\n"
    "is a terminal.\n";

/* What bench made, removed at its end: the queue it named itself, and on
 * sqlite:// the file when there was none before. */
struct bench_made {
    bool queue;
    char file[PATH_MAX]; /* "" when bench did not make it */
};

/* Notes the sqlite:// file `url` names ("sqlite://FILE" or
 * "sqlite:///PATH", before any '?' or '#') when it does not exist yet. */
static void bench_file_before(const char *url, struct bench_made *made)
{
    struct stat st;
    if (strncmp(url, "sqlite://", 9) != 0)
        return;
    const char *path = url + 9;
    size_t len = strcspn(path, "?#");
    if (len == 0 || len >= sizeof made->file || memchr(path, '%', len))
        return; /* open will say what is wrong; an escaped name is kept */
    memcpy(made->file, path, len);
    made->file[len] = '\0';
    if (stat(made->file, &st) == 0)
        made->file[0] = '\0';
}

/* Deletes what bench made and closes q; a failure is said, not fatal. */
static void bench_clean_up(evq_queue *q, const struct bench_made *made)
{
    if (made->queue && evq_queue_delete(q) != 0)
        fprintf(stderr, "%s bench: queue '%s' left in place: %s\n", prog,
                evq_queue_name(q), evq_errmsg());
    evq_queue_close(q);
    if (!made->file[0])
        return;
    static const char *const tails[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof tails / sizeof *tails; i++) {
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s%s", made->file, tails[i]);
        if (unlink(path) != 0 && errno != ENOENT)
            fprintf(stderr, "%s bench: %s left in place: %s\n", prog, path,
                    strerror(errno));
    }
}

struct bench {
    evq_queue *q;
    long n;
    int producers;
    int batch;
    bool async; /* evq_enqueue_async, one event per call */
    json_t *payload;
    atomic_long produced, handled;
    _Atomic int64_t producers_end_ns;
    atomic_int errors;
    pthread_mutex_t mu;
    struct bench_slot *slots[1100];
    int nslots;
    bool progress;
};

/* Latencies in ns, in buckets of 1/8 of a power of two (within 12.5%):
 * bucket 8 * e + m holds values whose highest set bit is e + 3 and whose
 * next three bits are m; values below 16 have a bucket each. */
#define LAT_BUCKETS (8 * 60 + 16)

static unsigned lat_bucket(uint64_t v)
{
    if (v < 16)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* >= 4 */
    return 16 + 8 * (e - 4) + (unsigned)((v >> (e - 3)) & 7);
}

/* The lowest value of bucket i. */
static uint64_t lat_floor(unsigned i)
{
    if (i < 16)
        return i;
    unsigned e = (i - 16) / 8 + 4, m = (i - 16) % 8;
    return ((uint64_t)(8 + m)) << (e - 3);
}

/* What one handler thread records, apart from the others: latencies, and
 * when it handled its first and last event. */
struct bench_slot {
    _Atomic uint64_t lat[LAT_BUCKETS];
    _Atomic int64_t first_ns, last_ns;
};

static _Thread_local struct bench_slot *bench_mine;

static int bench_handler(const evq_event *ev, void *arg)
{
    struct bench *b = arg;
    if (!bench_mine) {
        struct bench_slot *s = calloc(1, sizeof *s);
        pthread_mutex_lock(&b->mu);
        if (s && b->nslots < 1100)
            b->slots[b->nslots++] = bench_mine = s;
        else
            free(s);
        pthread_mutex_unlock(&b->mu);
    }
    /* read the payload, as a real handler would, so a decoder that puts
     * off its work cannot look faster than it is */
    if (!json_is_string(json_object_get(evq_event_data(ev), "p")))
        atomic_fetch_add(&b->errors, 1);
    struct bench_slot *s = bench_mine;
    if (s) {
        int64_t now = mono_ns(), lat = real_ns() - evq_event_time_ns(ev);
        atomic_fetch_add_explicit(
            &s->lat[lat_bucket((uint64_t)(lat > 0 ? lat : 0))], 1,
            memory_order_relaxed);
        if (!atomic_load_explicit(&s->first_ns, memory_order_relaxed))
            atomic_store_explicit(&s->first_ns, now, memory_order_relaxed);
        atomic_store_explicit(&s->last_ns, now, memory_order_relaxed);
    }
    /* release: the phase that reads handled then sees the histogram */
    atomic_fetch_add_explicit(&b->handled, 1, memory_order_release);
    return 0;
}

/* Enqueues `per` events in batches of b->batch. */
static void bench_enqueued(const char *id, int rc, void *arg)
{
    (void)id;
    struct bench *b = arg;
    if (rc)
        atomic_fetch_add(&b->errors, 1);
    atomic_fetch_add_explicit(&b->produced, 1, memory_order_relaxed);
}

static void produce_events(struct bench *b, long per)
{
    evq_event *evs[1000];
    if (b->async) { /* one event per call, not waiting */
        for (long i = 0; i < per; i++) {
            evq_event *ev =
                evq_event_new("bench.event", json_deep_copy(b->payload));
            if (evq_enqueue_async(b->q, ev, 0, bench_enqueued, b) != 0)
                atomic_fetch_add(&b->errors, 1);
            evq_event_free(ev);
        }
        if (evq_flush(b->q, -1) != 0)
            atomic_fetch_add(&b->errors, 1);
        return;
    }
    for (long i = 0; i < per;) {
        int k = 0;
        for (; k < b->batch && i < per; k++, i++)
            evs[k] = evq_event_new("bench.event", json_deep_copy(b->payload));
        int rc = k == 1 ? evq_enqueue(b->q, evs[0])
                        : evq_enqueue_batch(b->q, (const evq_event *const *)evs,
                                            (size_t)k);
        if (rc)
            atomic_fetch_add(&b->errors, 1);
        for (int j = 0; j < k; j++)
            evq_event_free(evs[j]);
        atomic_fetch_add_explicit(&b->produced, k, memory_order_relaxed);
    }
}

static void *bench_producer(void *arg)
{
    struct bench *b = arg;
    produce_events(b, b->n / b->producers);
    /* the phase ends when the last producer is done, not when the
     * progress loop next looks */
    int64_t end = mono_ns(), cur = atomic_load(&b->producers_end_ns);
    while (cur < end &&
           !atomic_compare_exchange_weak(&b->producers_end_ns, &cur, end))
        ;
    return NULL;
}

static void progress(struct bench *b, const char *phase, atomic_long *count,
                     long total)
{
    if (b->progress)
        fprintf(stderr, "\r%-8s %ld/%ld   ", phase, atomic_load(count), total);
}

/* Runs P producers; returns their wall time in seconds. */
static double run_producers(struct bench *b, bool show)
{
    pthread_t t[256];
    int64_t t0 = mono_ns();
    atomic_store(&b->produced, 0);
    atomic_store(&b->producers_end_ns, t0);
    for (int i = 0; i < b->producers; i++)
        pthread_create(&t[i], NULL, bench_producer, b);
    while (show && atomic_load(&b->produced) < b->n) {
        progress(b, "enqueue", &b->produced, b->n);
        struct timespec p = {0, 100 * 1000000};
        nanosleep(&p, NULL);
        if (atomic_load(&b->errors))
            break;
    }
    for (int i = 0; i < b->producers; i++)
        pthread_join(t[i], NULL);
    return (double)(atomic_load(&b->producers_end_ns) - t0) / 1e9;
}

static bool wait_handled(struct bench *b, long want, const char *phase)
{
    int64_t last_change = mono_ns();
    long last = -1;
    for (;;) {
        long h = atomic_load(&b->handled);
        if (h >= want)
            return true;
        if (h != last) {
            last = h;
            last_change = mono_ns();
        } else if (mono_ns() - last_change > 10 * 1000000000LL) {
            fprintf(stderr,
                    "%s bench: %s stalled at %ld of %ld: no event for 10 s "
                    "(did the broker drop some? the Kafka test broker keeps "
                    "about 5 MiB per partition)\n",
                    prog, phase, h, want);
            return false;
        }
        progress(b, phase, &b->handled, want);
        struct timespec p = {0, 1000000};
        nanosleep(&p, NULL);
    }
}

struct raw_bench {
    evq_queue *q;
    evq_event **evs;
    long n, k, batch;
};

static void *raw_producer(void *arg)
{
    struct raw_bench *r = arg;
    if (r->batch <= 1) {
        for (long i = 0; i < r->n; i++)
            evq_enqueue(r->q, r->evs[i % r->k]);
        return NULL;
    }
    /* k is a multiple of the batch: batches never wrap */
    for (long i = 0; i < r->n; i += r->batch) {
        long b = r->n - i < r->batch ? r->n - i : r->batch;
        evq_enqueue_batch(r->q, (const evq_event *const *)&r->evs[i % r->k],
                          (size_t)b);
    }
    return NULL;
}

/* enqueue + dequeue + ack of pre-built events, one thread each side,
 * `batch` at a time. */
static double bench_raw(const char *url, long n, long batch)
{
    if (batch > 1024)
        batch = 1024;
    struct raw_bench r = {.n = n, .k = n < 65536 ? n : 65536, .batch = batch};
    if (batch > 1)
        r.k = (r.k + batch - 1) / batch * batch;
    char name[64];
    snprintf(name, sizeof name, "bench-raw-%d", (int)getpid());
    if (evq_queue_open(&r.q, url, name, NULL))
        return 0;
    r.evs = malloc((size_t)r.k * sizeof *r.evs);
    for (long i = 0; i < r.k; i++)
        r.evs[i] = evq_event_new("bench.raw", json_integer(i));
    pthread_t t;
    int64_t t0 = mono_ns();
    pthread_create(&t, NULL, raw_producer, &r);
    evq_msg *ms[1024];
    for (long i = 0; i < n;) {
        int got = batch > 1 ? evq_dequeue_batch(r.q, ms, (size_t)batch, 10000)
                  : evq_dequeue(r.q, &ms[0], 10000) == 0 ? 1
                                                         : -1;
        if (got <= 0)
            break;
        if (batch > 1)
            evq_ack_batch(ms, (size_t)got);
        else
            evq_ack(ms[0]);
        i += got;
    }
    pthread_join(t, NULL);
    double s = (double)(mono_ns() - t0) / 1e9;
    for (long i = 0; i < r.k; i++)
        evq_event_free(r.evs[i]);
    free(r.evs);
    evq_queue_close(r.q);
    return (double)n / s;
}

/* The q-quantile of every slot's latencies: the middle of its bucket. */
static uint64_t merged_quantile(struct bench *b, double q)
{
    uint64_t counts[LAT_BUCKETS] = {0}, total = 0, seen = 0;
    for (int i = 0; i < b->nslots; i++)
        for (unsigned k = 0; k < LAT_BUCKETS; k++)
            counts[k] += atomic_load(&b->slots[i]->lat[k]);
    for (unsigned k = 0; k < LAT_BUCKETS; k++)
        total += counts[k];
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)total);
    for (unsigned k = 0; k < LAT_BUCKETS; k++) {
        seen += counts[k];
        if (seen > rank)
            return k + 1 < LAT_BUCKETS ? (lat_floor(k) + lat_floor(k + 1)) / 2
                                       : lat_floor(k);
    }
    return lat_floor(LAT_BUCKETS - 1);
}

int cmd_bench(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"events", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, 's'},
        {"producers", required_argument, NULL, 'p'},
        {"workers", required_argument, NULL, 'w'},
        {"batch", required_argument, NULL, 'b'},
        {"warmup", required_argument, NULL, 'k'},
        {"queue", required_argument, NULL, 'q'},
        {"json", no_argument, NULL, 'j'},
        {"keep", no_argument, NULL, 'K'},
        {"async", no_argument, NULL, 'A'},
        {"threads", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long n = 1000000, size = 100, producers = 1, workers = 1, batch = 1,
         warmup = 0;
    const char *qname = NULL;
    bool json = false, keep = false, async = false;
    evq_opts *opts = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (!parse_long(optarg, 1, 100000000, &n))
                return usage_error("bench", "bad --events '%s'", optarg);
            break;
        case 's':
            if (!parse_long(optarg, 0, 1 << 20, &size))
                return usage_error("bench", "bad --size '%s'", optarg);
            break;
        case 'p':
            if (!parse_long(optarg, 1, 256, &producers))
                return usage_error("bench", "bad --producers '%s'", optarg);
            break;
        case 'w':
            if (!parse_long(optarg, 1, 1024, &workers))
                return usage_error("bench", "bad --workers '%s'", optarg);
            break;
        case 'b':
            if (!parse_long(optarg, 1, 1000, &batch))
                return usage_error("bench", "bad --batch '%s'", optarg);
            break;
        case 'k':
            if (!parse_long(optarg, 0, 1000000, &warmup))
                return usage_error("bench", "bad --warmup '%s'", optarg);
            break;
        case 'q':
            qname = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'K':
            keep = true;
            break;
        case 'A':
            async = true;
            break;
            COMMON_FLAGS("bench", bench_help)
        }
    }
    if (argc - optind != 1) {
        evq_opts_free(opts);
        return usage_error("bench", "%s", "needs URL");
    }
    const char *url = argv[optind];
    bool memory = strncmp(url, "memory://", 9) == 0;
    n -= n % producers; /* every producer makes the same number */
    if (n == 0)
        n = producers;
    if (memory && !strstr(url, "capacity=") &&
        !evq_opts_get(opts, "capacity")) {
        char cap[32];
        snprintf(cap, sizeof cap, "%ld",
                 n < 65536      ? 65536
                 : n > 16777216 ? 16777216
                                : n);
        if ((rc = add_opt(&opts, "bench", "capacity=1")) ||
            (rc = evq_opts_set(opts, "capacity", cap))) {
            evq_opts_free(opts);
            return rc > 0 ? rc : fail("bench", rc);
        }
    }

    struct bench b = {.n = n,
                      .producers = (int)producers,
                      .batch = (int)batch,
                      .async = async,
                      .mu = PTHREAD_MUTEX_INITIALIZER,
                      .progress = isatty(STDERR_FILENO) != 0};
    char name[64], *pad = malloc((size_t)size + 1);
    memset(pad, 'x', (size_t)size);
    pad[size] = '\0';
    b.payload = json_pack("{s:s}", "p", pad);
    free(pad);
    if (qname)
        snprintf(name, sizeof name, "%s", qname);
    else
        snprintf(name, sizeof name, "bench-%d", (int)getpid());
    const char *mode = opts ? evq_opts_get(opts, "nats.mode") : NULL;
    bool core_nats =
        strstr(url, "nats.mode=core") || (mode && strcmp(mode, "core") == 0);
    struct bench_made made = {.queue = !qname && !keep};
    if (!keep)
        bench_file_before(url, &made);
    if ((rc = open_queue(url, name, opts, &b.q))) { /* frees opts */
        json_decref(b.payload);
        return rc;
    }

    /* warm up, enqueue, then drain the backlog through a worker */
    produce_events(&b, warmup);
    double enq_s = run_producers(&b, true);
    if (core_nats) {
        /* Core NATS keeps nothing for readers that were not there: there
         * is no backlog to drain, so only publishing is measured. */
        if (b.progress)
            fprintf(stderr, "\r%-40s\r", "");
        if (json)
            printf("{\"backend\":\"nats\",\"mode\":\"core\",\"events\":%ld,"
                   "\"size\":%ld,\"producers\":%ld,\"batch\":%ld,"
                   "\"enqueue_per_s\":%.0f,\"ok\":%s}\n",
                   n, size, producers, batch, n / enq_s,
                   atomic_load(&b.errors) ? "false" : "true");
        else
            printf("enqueue      %12.0f events/s (core NATS: nothing is kept "
                   "to drain)\n",
                   n / enq_s);
        bench_clean_up(b.q, &made);
        json_decref(b.payload);
        return atomic_load(&b.errors) ? EXIT_FAILURE : 0;
    }
    evq_events *events = evq_events_new();
    evq_register_handler(events, "*", bench_handler, &b);
    evq_worker_opts wo;
    evq_worker_opts_init(&wo);
    wo.concurrency = (int)workers;
    wo.prefetch = 16;
    evq_worker *w;
    int64_t t0 = mono_ns();
    if ((rc = evq_worker_start(&w, b.q, events, &wo))) {
        rc = fail("worker", rc);
        bench_clean_up(b.q, &made);
        evq_events_free(events);
        json_decref(b.payload);
        return rc;
    }
    bool ok = wait_handled(&b, n + warmup, "drain");
    /* the backlog's rate from its first event to its last: what came
     * before the first (a consumer group's join) is reported apart */
    int64_t first = INT64_MAX, last = 0;
    pthread_mutex_lock(&b.mu);
    for (int i = 0; i < b.nslots; i++) {
        int64_t f = atomic_load(&b.slots[i]->first_ns);
        int64_t l = atomic_load(&b.slots[i]->last_ns);
        first = f && f < first ? f : first;
        last = l > last ? l : last;
    }
    pthread_mutex_unlock(&b.mu);
    if (first == INT64_MAX)
        first = last = t0;
    double start_ms = (double)(first - t0) / 1e6;
    double drain_s = (double)(last - first) / 1e9;
    long drained = n + warmup - 1;
    if (drain_s <= 0 || drained < 1) {
        drain_s = (double)(mono_ns() - t0) / 1e9;
        drained = n + warmup;
    }

    /* end to end: producers and the worker at once; latency from here on */
    pthread_mutex_lock(&b.mu);
    for (int i = 0; i < b.nslots; i++)
        for (unsigned k = 0; k < LAT_BUCKETS; k++)
            atomic_store(&b.slots[i]->lat[k], 0);
    pthread_mutex_unlock(&b.mu);
    atomic_store(&b.handled, 0);
    t0 = mono_ns();
    if (ok) {
        run_producers(&b, false);
        ok = wait_handled(&b, n, "e2e");
    }
    double e2e_s = (double)(mono_ns() - t0) / 1e9;
    evq_worker_stop(w, 10000);
    evq_worker_free(w);
    if (b.progress)
        fprintf(stderr, "\r%-40s\r", "");

    double raw = memory && ok ? bench_raw(url, n, batch) : 0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double p50 = (double)merged_quantile(&b, 0.5) / 1000.0,
           p99 = (double)merged_quantile(&b, 0.99) / 1000.0,
           p999 = (double)merged_quantile(&b, 0.999) / 1000.0;

    if (json) {
        printf(
            "{\"backend\":\"%s\",\"events\":%ld,\"size\":%ld,\"producers\":%ld,"
            "\"batch\":%ld,\"workers\":%ld,\"enqueue_per_s\":%.0f,"
            "\"start_ms\":%.1f,\"drain_per_s\":%.0f,"
            "\"e2e_per_s\":%.0f,\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,"
            "\"p999\":%.1f},\"peak_rss_kib\":%ld",
            evq_queue_scheme(b.q), n, size, producers, batch, workers,
            n / enq_s, start_ms, drained / drain_s, n / e2e_s, p50, p99, p999,
            ru.ru_maxrss);
        if (memory)
            printf(",\"raw_per_s\":%.0f", raw);
        printf(",\"ok\":%s}\n",
               ok && !atomic_load(&b.errors) ? "true" : "false");
    } else {
        printf(
            "events %ld of %ld bytes, %ld producer(s), %ld worker thread(s)\n",
            n, size, producers, workers);
        printf("enqueue      %12.0f events/s\n", n / enq_s);
        printf("drain        %12.0f events/s (first event after %.1f ms)\n",
               drained / drain_s, start_ms);
        printf("end to end   %12.0f events/s\n", n / e2e_s);
        printf("latency      p50 %.1f us  p99 %.1f us  p99.9 %.1f us\n", p50,
               p99, p999);
        if (memory)
            printf("raw queue    %12.0f events/s\n", raw);
        printf("peak RSS     %12ld KiB\n", ru.ru_maxrss);
    }
    for (int i = 0; i < b.nslots; i++)
        free(b.slots[i]);
    evq_events_free(events);
    bench_clean_up(b.q, &made);
    json_decref(b.payload);
    if (!ok || atomic_load(&b.errors)) {
        fprintf(stderr, "%s bench: %d enqueue errors%s\n", prog,
                atomic_load(&b.errors), ok ? "" : ", incomplete");
        return EXIT_FAILURE;
    }
    return 0;
}
