/*
 * stats.c - queue and worker stats in the Prometheus text exposition format
 * (https://prometheus.io/docs/instrumenting/exposition_formats/).
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Escapes a label value: backslash, double quote and newline. */
static void label(char *out, size_t cap, const char *v)
{
    size_t o = 0;
    for (; v && *v && o + 3 < cap; v++) {
        if (*v == '\\' || *v == '"') {
            out[o++] = '\\';
            out[o++] = *v;
        } else if (*v == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *v;
        }
    }
    out[o] = '\0';
}

static int metric(evq__buf *b, const char *name, const char *type,
                  const char *help, const char *labels, double value)
{
    char line[2048];
    int n = snprintf(line, sizeof line,
                     "# HELP %s %s\n# TYPE %s %s\n%s{%s} %.17g\n", name, help,
                     name, type, name, labels, value);
    return evq__buf_append(
        b, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

char *evq_stats_prometheus(evq_queue *q, const evq_worker *w)
{
    evq__buf b = {0};
    char name[512], labels[1200];
    int rc = 0;

    if (q) {
        struct evq_queue_stats s;
        if (evq_queue_stats(q, &s) != 0)
            return NULL;
        label(name, sizeof name, evq_queue_name(q));
        snprintf(labels, sizeof labels, "queue=\"%s\",backend=\"%s\"", name,
                 evq_queue_scheme(q));
        struct {
            const char *name, *type, *help;
            double v;
            bool known;
        } m[] = {
            {"evq_queue_depth", "gauge", "Events ready to be dequeued.",
             (double)s.depth, s.depth >= 0},
            {"evq_queue_in_flight", "gauge",
             "Events dequeued and not yet settled.", (double)s.in_flight,
             s.in_flight >= 0},
            {"evq_queue_delayed", "gauge", "Events waiting for their due time.",
             (double)s.delayed, s.delayed >= 0},
            {"evq_queue_dead", "gauge", "Events in the dead-letter queue.",
             (double)s.dead, s.dead >= 0},
            {"evq_queue_enqueued_total", "counter",
             "Events enqueued through this handle.", (double)s.enqueued, true},
            {"evq_queue_dequeued_total", "counter",
             "Events dequeued through this handle.", (double)s.dequeued, true},
            {"evq_queue_acked_total", "counter",
             "Events acknowledged through this handle.", (double)s.acked, true},
            {"evq_queue_nacked_total", "counter",
             "Events nacked through this handle.", (double)s.nacked, true},
            {"evq_queue_dead_lettered_total", "counter",
             "Events moved to the dead-letter queue through this handle.",
             (double)s.dead_lettered, true},
        };
        for (size_t i = 0; i < sizeof m / sizeof m[0] && !rc; i++) {
            if (m[i].known)
                rc =
                    metric(&b, m[i].name, m[i].type, m[i].help, labels, m[i].v);
        }
    }
    if (w && !rc) {
        struct evq_worker_stats s;
        if (evq_worker_stats(w, &s) != 0) {
            free(b.p);
            return NULL;
        }
        label(name, sizeof name, evq__worker_queue_name(w));
        snprintf(labels, sizeof labels, "queue=\"%s\"", name);
        struct {
            const char *name, *type, *help;
            double v;
        } m[] = {
            {"evq_worker_received_total", "counter", "Events dequeued.",
             (double)s.received},
            {"evq_worker_succeeded_total", "counter",
             "Events whose handlers succeeded.", (double)s.succeeded},
            {"evq_worker_failed_total", "counter",
             "Handler failures, one per attempt.", (double)s.failed},
            {"evq_worker_retried_total", "counter",
             "Events handed back for a retry.", (double)s.retried},
            {"evq_worker_dead_lettered_total", "counter",
             "Events moved to the dead-letter queue.", (double)s.dead_lettered},
            {"evq_worker_unhandled_total", "counter",
             "Events no handler matched.", (double)s.unhandled},
            {"evq_worker_timed_out_total", "counter",
             "Handler runs past handler_timeout_ms.", (double)s.timed_out},
            {"evq_worker_lease_lost_total", "counter",
             "Events whose lease passed to another consumer first.",
             (double)s.lease_lost},
            {"evq_worker_deduplicated_total", "counter",
             "Events acked without running: done within dedup_window_ms.",
             (double)s.deduplicated},
            {"evq_worker_throttled_total", "counter",
             "Handler runs that waited for a rate limit or a cap.",
             (double)s.throttled},
            {"evq_worker_in_flight", "gauge",
             "Events being handled or prefetched.", (double)s.in_flight},
        };
        for (size_t i = 0; i < sizeof m / sizeof m[0] && !rc; i++)
            rc = metric(&b, m[i].name, m[i].type, m[i].help, labels, m[i].v);
        const char *qn[] = {"0.5", "0.9", "0.99", "0.999"};
        uint64_t qv[] = {s.latency_ns_p50, s.latency_ns_p90, s.latency_ns_p99,
                         s.latency_ns_p999};
        char line[2048];
        int n = snprintf(line, sizeof line,
                         "# HELP evq_worker_handler_seconds Handler "
                         "latency.\n# TYPE evq_worker_handler_seconds "
                         "summary\n");
        rc = rc ? rc : evq__buf_append(&b, line, (size_t)n);
        for (int i = 0; i < 4 && !rc; i++) {
            n = snprintf(line, sizeof line,
                         "evq_worker_handler_seconds{%s,quantile=\"%s\"} "
                         "%.9f\n",
                         labels, qn[i], (double)qv[i] / 1e9);
            rc = evq__buf_append(&b, line, (size_t)n);
        }
        n = snprintf(line, sizeof line,
                     "evq_worker_handler_seconds_count{%s} %" PRIu64 "\n",
                     labels, s.latency_count);
        rc = rc ? rc : evq__buf_append(&b, line, (size_t)n);
    }
    if (rc || evq__buf_append(&b, "", 1)) {
        free(b.p);
        return NULL;
    }
    return (char *)b.p;
}
