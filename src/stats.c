/*
 * stats.c - queue and worker stats in the Prometheus text exposition format
 * (https://prometheus.io/docs/instrumenting/exposition_formats/), each
 * metric family once with a sample per queue or worker.
 */
#include "hist.h"
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends a label value escaped: backslash, double quote and newline. */
static int label(evq__buf *b, const char *v, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const char *esc = v[i] == '\\' ? "\\\\"
                          : v[i] == '"' ? "\\\""
                          : v[i] == '\n' ? "\\n"
                                         : NULL;
        rc = esc ? evq__buf_append(b, esc, 2) : evq__buf_append(b, v + i, 1);
    }
    return rc;
}

static int put(evq__buf *b, const char *s)
{
    return evq__buf_append(b, s, strlen(s));
}

static int family(evq__buf *b, const char *name, const char *type,
                  const char *help)
{
    char line[512];
    int n = snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n", name,
                     help, name, type);
    return evq__buf_append(b, line, (size_t)n);
}

/* name{labels[,extra]} value */
static int sample(evq__buf *b, const char *name, const char *suffix,
                  const char *labels, const char *extra, double v)
{
    char num[64];
    snprintf(num, sizeof num, "} %.17g\n", v);
    int rc = put(b, name);
    rc = rc ? rc : put(b, suffix);
    rc = rc ? rc : put(b, "{");
    rc = rc ? rc : put(b, labels);
    if (extra && !rc) {
        rc = put(b, ",");
        rc = rc ? rc : put(b, extra);
    }
    return rc ? rc : put(b, num);
}

/* The label set of a queue: queue, backend, url (options left out: they
 * are not part of where the queue is, and may be long). */
static int queue_labels(evq__buf *b, evq_queue *q)
{
    const char *url = evq_queue_url(q), *name = evq_queue_name(q);
    int rc = put(b, "queue=\"");
    rc = rc ? rc : label(b, name, strlen(name));
    rc = rc ? rc : put(b, "\",backend=\"");
    rc = rc ? rc : put(b, evq_queue_scheme(q));
    rc = rc ? rc : put(b, "\",url=\"");
    rc = rc ? rc : label(b, url, strcspn(url, "?"));
    rc = rc ? rc : evq__buf_append(b, "\"", 2);
    return rc;
}

static int worker_labels(evq__buf *b, const evq_worker *w, const char *name,
                         size_t i)
{
    char dflt[32];
    if (!name) {
        snprintf(dflt, sizeof dflt, "worker%zu", i);
        name = dflt;
    }
    const char *qn = evq__worker_queue_name(w);
    int rc = put(b, "worker=\"");
    rc = rc ? rc : label(b, name, strlen(name));
    rc = rc ? rc : put(b, "\",queue=\"");
    rc = rc ? rc : label(b, qn, strlen(qn));
    rc = rc ? rc : evq__buf_append(b, "\"", 2);
    return rc;
}

/* The handler latency buckets, in seconds. */
static const double le_s[] = {0.0001, 0.0005, 0.001, 0.005, 0.01,
                              0.025,  0.05,   0.1,   0.25,  0.5,
                              1,      2.5,    5,     10,    30,
                              60};
#define N_LE (sizeof le_s / sizeof le_s[0])

/* The per-worker figures a rendering needs, read once. */
typedef struct wfig {
    struct evq_worker_stats s;
    uint64_t le[N_LE]; /* cumulative */
    uint64_t count;
    double sum_s;
} wfig;

static int read_worker(const evq_worker *w, wfig *f, uint64_t *counts)
{
    int rc = evq_worker_stats(w, &f->s);
    if (rc)
        return rc;
    evq__worker_latency(w, counts, &f->sum_s);
    double s_per_tick = evq__ns_per_tick() / 1e9;
    unsigned b = 0;
    uint64_t below = 0;
    for (size_t i = 0; i < N_LE; i++) {
        /* a bucket is counted under the first bound its largest value
         * fits (within 1/16: hist.h) */
        while (b < EVQ__HIST_BUCKETS &&
               (double)evq__hist_upper(b) * s_per_tick <= le_s[i])
            below += counts[b++];
        f->le[i] = below;
    }
    for (; b < EVQ__HIST_BUCKETS; b++)
        below += counts[b];
    f->count = below;
    return 0;
}

char *evq_prometheus(evq_queue *const *queues, size_t nq,
                     const evq_worker *const *workers,
                     const char *const *worker_names, size_t nw)
{
    evq__buf b = {0}, *lq = NULL, *lw = NULL;
    struct evq_queue_stats *qs = NULL;
    bool *up = NULL;
    wfig *wf = NULL;
    uint64_t *counts = NULL;
    int rc = 0;

    if ((nq && !(qs = calloc(nq, sizeof *qs))) ||
        (nq && !(up = calloc(nq, sizeof *up))) ||
        (nq && !(lq = calloc(nq, sizeof *lq))) ||
        (nw && !(wf = calloc(nw, sizeof *wf))) ||
        (nw && !(lw = calloc(nw, sizeof *lw))) ||
        (nw && !(counts = calloc(EVQ__HIST_BUCKETS, sizeof *counts))))
        rc = EVQ_ENOMEM;
    for (size_t i = 0; i < nq && !rc; i++) {
        up[i] = evq_queue_stats(queues[i], &qs[i]) == 0;
        rc = queue_labels(&lq[i], queues[i]);
    }
    for (size_t i = 0; i < nw && !rc; i++) {
        rc = read_worker(workers[i], &wf[i], counts);
        rc = rc ? rc
                : worker_labels(&lw[i], workers[i],
                                worker_names ? worker_names[i] : NULL, i);
    }

    if (nq && !rc) {
        rc = family(&b, "evq_queue_up", "gauge",
                    "1 when the queue's figures could be read, else 0.");
        for (size_t i = 0; i < nq && !rc; i++)
            rc = sample(&b, "evq_queue_up", "", (char *)lq[i].p, NULL,
                        up[i] ? 1 : 0);
    }
#define QFIELD(f) offsetof(struct evq_queue_stats, f)
    static const struct {
        const char *name, *type, *help;
        size_t off;
        bool is_signed;
    } qm[] = {
        {"evq_queue_depth", "gauge", "Events ready to be dequeued.",
         QFIELD(depth), true},
        {"evq_queue_in_flight", "gauge", "Events dequeued and not yet settled.",
         QFIELD(in_flight), true},
        {"evq_queue_delayed", "gauge", "Events waiting for their due time.",
         QFIELD(delayed), true},
        {"evq_queue_dead", "gauge", "Events in the dead-letter queue.",
         QFIELD(dead), true},
        {"evq_queue_enqueued_total", "counter",
         "Events enqueued through this handle.", QFIELD(enqueued), false},
        {"evq_queue_dequeued_total", "counter",
         "Events dequeued through this handle.", QFIELD(dequeued), false},
        {"evq_queue_acked_total", "counter",
         "Events acknowledged through this handle.", QFIELD(acked), false},
        {"evq_queue_nacked_total", "counter",
         "Events nacked through this handle.", QFIELD(nacked), false},
        {"evq_queue_dead_lettered_total", "counter",
         "Events moved to the dead-letter queue through this handle.",
         QFIELD(dead_lettered), false},
    };
#undef QFIELD
    for (size_t m = 0; m < sizeof qm / sizeof qm[0] && !rc; m++) {
        bool head = false;
        for (size_t i = 0; i < nq && !rc; i++) {
            const char *p = (const char *)&qs[i] + qm[m].off;
            double v;
            if (qm[m].is_signed) {
                int64_t x;
                memcpy(&x, p, sizeof x);
                if (x < 0) /* the backend cannot tell */
                    continue;
                v = (double)x;
            } else {
                uint64_t x;
                memcpy(&x, p, sizeof x);
                v = (double)x;
            }
            if (!up[i])
                continue;
            if (!head && (rc = family(&b, qm[m].name, qm[m].type, qm[m].help)))
                break;
            head = true;
            rc = sample(&b, qm[m].name, "", (char *)lq[i].p, NULL, v);
        }
    }

#define WFIELD(f) offsetof(struct evq_worker_stats, f)
    static const struct {
        const char *name, *type, *help;
        size_t off;
    } wm[] = {
        {"evq_worker_received_total", "counter", "Events dequeued.",
         WFIELD(received)},
        {"evq_worker_succeeded_total", "counter",
         "Events whose handlers succeeded.", WFIELD(succeeded)},
        {"evq_worker_failed_total", "counter",
         "Handler failures, one per attempt.", WFIELD(failed)},
        {"evq_worker_retried_total", "counter",
         "Events handed back for a retry.", WFIELD(retried)},
        {"evq_worker_dead_lettered_total", "counter",
         "Events moved to the dead-letter queue.", WFIELD(dead_lettered)},
        {"evq_worker_unhandled_total", "counter", "Events no handler matched.",
         WFIELD(unhandled)},
        {"evq_worker_timed_out_total", "counter",
         "Handler runs past handler_timeout_ms.", WFIELD(timed_out)},
        {"evq_worker_lease_lost_total", "counter",
         "Events whose lease passed to another consumer first.",
         WFIELD(lease_lost)},
        {"evq_worker_deduplicated_total", "counter",
         "Events acked without running: done within dedup_window_ms.",
         WFIELD(deduplicated)},
        {"evq_worker_throttled_total", "counter",
         "Handler runs that waited for a rate limit or a cap.",
         WFIELD(throttled)},
        {"evq_worker_in_flight", "gauge", "Events being handled or prefetched.",
         WFIELD(in_flight)},
    };
#undef WFIELD
    for (size_t m = 0; nw && m < sizeof wm / sizeof wm[0] && !rc; m++) {
        rc = family(&b, wm[m].name, wm[m].type, wm[m].help);
        for (size_t i = 0; i < nw && !rc; i++) {
            uint64_t x;
            memcpy(&x, (const char *)&wf[i].s + wm[m].off, sizeof x);
            double v = wm[m].off == offsetof(struct evq_worker_stats, in_flight)
                           ? (double)(int64_t)x
                           : (double)x;
            rc = sample(&b, wm[m].name, "", (char *)lw[i].p, NULL, v);
        }
    }
    if (nw && !rc)
        rc = family(&b, "evq_worker_handler_seconds", "histogram",
                    "Handler run time (a batch's time counts for each of its "
                    "events).");
    for (size_t i = 0; i < nw && !rc; i++) {
        const char *hn = "evq_worker_handler_seconds", *l = (char *)lw[i].p;
        char le[48];
        for (size_t k = 0; k < N_LE && !rc; k++) {
            snprintf(le, sizeof le, "le=\"%g\"", le_s[k]);
            rc = sample(&b, hn, "_bucket", l, le, (double)wf[i].le[k]);
        }
        rc = rc ? rc
                : sample(&b, hn, "_bucket", l, "le=\"+Inf\"",
                         (double)wf[i].count);
        rc = rc ? rc : sample(&b, hn, "_sum", l, NULL, wf[i].sum_s);
        rc = rc ? rc : sample(&b, hn, "_count", l, NULL, (double)wf[i].count);
    }

    if (!rc)
        rc = evq__buf_append(&b, "", 1);
    for (size_t i = 0; lq && i < nq; i++)
        free(lq[i].p);
    for (size_t i = 0; lw && i < nw; i++)
        free(lw[i].p);
    free(lq);
    free(lw);
    free(qs);
    free(up);
    free(wf);
    free(counts);
    if (rc) {
        free(b.p);
        return NULL;
    }
    return (char *)b.p;
}

char *evq_stats_prometheus(evq_queue *q, const evq_worker *w)
{
    return evq_prometheus(q ? &q : NULL, q ? 1 : 0, w ? &w : NULL, NULL,
                          w ? 1 : 0);
}
