/*
 * outage.h - the server-restart test every networked backend runs: a
 * producer thread enqueues OUTAGE_EVENTS numbered events (retrying, as an
 * application would, each call that fails) while a worker consumes them,
 * and the server is killed and restarted meanwhile.  At the end every event
 * whose enqueue returned 0 was processed at least once, and the outage hit
 * while events were being produced (and, where the client cannot hide it,
 * was seen by at least one failed call).
 */
#ifndef EVQ_OUTAGE_H
#define EVQ_OUTAGE_H

#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>

#define OUTAGE_EVENTS 20000

static _Atomic unsigned char outage_seen[OUTAGE_EVENTS];
static _Atomic unsigned char outage_acked[OUTAGE_EVENTS];

static int outage_handler(const evq_event *ev, void *arg)
{
    (void)arg;
    json_int_t n = json_integer_value(evq_event_data(ev));
    if (n >= 0 && n < OUTAGE_EVENTS)
        atomic_store(&outage_seen[n], 1);
    return 0;
}

struct outage_producer {
    evq_queue *q;
    atomic_int done, errors, gave_up;
};

static void *outage_produce(void *arg)
{
    struct outage_producer *p = arg;
    for (int i = 0; i < OUTAGE_EVENTS; i++) {
        evq_event *ev = evq_event_new("outage", json_integer(i));
        int rc = evq_enqueue(p->q, ev);
        /* An application retries while the server is away; each failed
         * call must have said so with a code it can act on. */
        /* for up to a minute: a cluster's election under a sanitizer can
         * outlast a count of quick retries */
        int64_t give_up = now_ms() + 60000;
        while ((rc == EVQ_ECONN || rc == EVQ_EIO || rc == EVQ_ETIMEDOUT) &&
               now_ms() < give_up) {
            atomic_fetch_add(&p->errors, 1);
            struct timespec pause = {0, 10 * 1000000};
            nanosleep(&pause, NULL);
            rc = evq_enqueue(p->q, ev);
        }
        evq_event_free(ev);
        if (rc == 0)
            atomic_store(&outage_acked[i], 1);
        else if (atomic_fetch_add(&p->gave_up, 1) == 0)
            printf("outage: event %d not accepted: %s: %s\n", i,
                   evq_errname(rc), evq_errmsg());
    }
    atomic_store(&p->done, 1);
    return NULL;
}

static bool outage_all_acked_seen(void *arg)
{
    (void)arg;
    for (int i = 0; i < OUTAGE_EVENTS; i++) {
        if (atomic_load(&outage_acked[i]) && !atomic_load(&outage_seen[i]))
            return false;
    }
    return true;
}

static bool outage_producer_done(void *arg)
{
    return atomic_load(&((struct outage_producer *)arg)->done) != 0;
}

/* Runs the test on queue `name` of `url`; restart(arg) kills the server
 * (SIGKILL) and starts it again, returning once it answers, or takes one
 * node of a cluster down.  `calls_fail`: whether the producer must have
 * seen the outage (a cluster may hide it). */
static inline void run_outage(const char *url, const char *name,
                       void (*restart)(void *), void *arg, bool calls_fail)
{
    struct outage_producer p = {0};
    evq_events *e = evq_events_new();
    evq_worker_opts o;
    evq_worker *w;
    pthread_t t;

    assert_evq_ok(evq_queue_open(&p.q, url, name, NULL));
    evq_worker_opts_init(&o);
    o.concurrency = 2;
    evq_register_handler(e, "outage", outage_handler, NULL);
    assert_evq_ok(evq_worker_start(&w, p.q, e, &o));
    pthread_create(&t, NULL, outage_produce, &p);
    struct timespec pause = {0, 300 * 1000000};
    nanosleep(&pause, NULL);
    int before = 0;
    for (int i = 0; i < OUTAGE_EVENTS; i++)
        before += atomic_load(&outage_acked[i]);
    restart(arg);
    /* the outage hit while events were still being produced */
    assert_true(before < OUTAGE_EVENTS);
    assert_false(atomic_load(&p.done));
    assert_true(eventually(outage_producer_done, &p, 120000));
    pthread_join(t, NULL);
    bool ok = eventually(outage_all_acked_seen, NULL, 60000);
    assert_evq_ok(evq_worker_stop(w, 10000));
    int accepted = 0, seen = 0;
    for (int i = 0; i < OUTAGE_EVENTS; i++) {
        accepted += atomic_load(&outage_acked[i]);
        seen += atomic_load(&outage_seen[i]);
    }
    printf("outage: %d of %d events accepted (%d calls failed during the "
           "outage), %d processed\n",
           accepted, OUTAGE_EVENTS, atomic_load(&p.errors), seen);
    assert_true(ok);
    assert_int_equal(accepted, OUTAGE_EVENTS);
    if (calls_fail)
        assert_true(atomic_load(&p.errors) > 0); /* the outage was seen */
    evq_worker_free(w);
    evq_events_free(e);
    evq_queue_close(p.q);
}

/* ---- the same with an asynchronous producer -------------------------- */

/* Reports per event: how many times its `done` ran, and whether with 0. */
static atomic_int outage_reports[OUTAGE_EVENTS];
static atomic_int outage_failed;

static void outage_enqueued(const char *id, int rc, void *arg)
{
    (void)id;
    intptr_t i = (intptr_t)arg;
    atomic_fetch_add(&outage_reports[i], 1);
    if (rc == 0)
        atomic_store(&outage_acked[i], 1);
    else
        atomic_fetch_add(&outage_failed, 1);
}

/* Enqueues the events with evq_enqueue_async, paced (about 10 k/s) so the
 * outage falls mid-stream; a refused call is retried (that event has no
 * report yet), then the producer flushes. */
static void *outage_produce_async(void *arg)
{
    struct outage_producer *p = arg;
    for (intptr_t i = 0; i < OUTAGE_EVENTS; i++) {
        evq_event *ev = evq_event_new("outage", json_integer((json_int_t)i));
        int rc;
        while ((rc = evq_enqueue_async(p->q, ev, 0, outage_enqueued,
                                       (void *)i)) != 0) {
            atomic_fetch_add(&p->errors, 1);
            struct timespec pause = {0, 10 * 1000000};
            nanosleep(&pause, NULL);
        }
        evq_event_free(ev);
        struct timespec pace = {0, 100 * 1000};
        nanosleep(&pace, NULL);
    }
    evq_flush(p->q, -1);
    atomic_store(&p->done, 1);
    return NULL;
}

/* What the library said of the broker during the outage (the worker's
 * log and the process's). */
static atomic_int outage_lines, outage_lost, outage_back;

static void outage_log(evq_log_level level, const char *line, void *arg)
{
    (void)level;
    (void)arg;
    if (strstr(line, "worker st")) /* the worker's own "started", "stopped" */
        return;
    atomic_fetch_add(&outage_lines, 1);
    if (strstr(line, "lost the connection"))
        atomic_fetch_add(&outage_lost, 1);
    if (strstr(line, "again"))
        atomic_fetch_add(&outage_back, 1);
    if (atomic_load(&outage_lines) <= 12)
        printf("outage log: %s\n", line);
}

static void outage_log_reset(void)
{
    atomic_store(&outage_lines, 0);
    atomic_store(&outage_lost, 0);
    atomic_store(&outage_back, 0);
}

/* run_outage with an asynchronous producer: every event is reported
 * exactly once, and every event reported 0 is processed; the log got a few
 * lines, not one per event, and (must_tell: a client that cannot ride the
 * outage out silently) they told of the outage and its end. */
static inline void run_outage_async(const char *url, const char *name,
                             void (*restart)(void *), void *arg,
                             bool must_tell)
{
    struct outage_producer p = {0};
    evq_events *e = evq_events_new();
    evq_worker_opts o;
    evq_worker *w;
    pthread_t t;

    memset(outage_seen, 0, sizeof outage_seen);
    memset(outage_acked, 0, sizeof outage_acked);
    memset(outage_reports, 0, sizeof outage_reports);
    atomic_store(&outage_failed, 0);
    outage_log_reset();
    evq_set_log(outage_log, NULL);
    assert_evq_ok(evq_queue_open(&p.q, url, name, NULL));
    evq_worker_opts_init(&o);
    o.concurrency = 2;
    o.log = outage_log;
    evq_register_handler(e, "outage", outage_handler, NULL);
    assert_evq_ok(evq_worker_start(&w, p.q, e, &o));
    pthread_create(&t, NULL, outage_produce_async, &p);
    struct timespec pause = {0, 300 * 1000000};
    nanosleep(&pause, NULL);
    restart(arg);
    assert_false(atomic_load(&p.done)); /* the outage hit mid-stream */
    assert_true(eventually(outage_producer_done, &p, 180000));
    pthread_join(t, NULL);
    bool ok = eventually(outage_all_acked_seen, NULL, 60000);
    assert_evq_ok(evq_worker_stop(w, 10000));
    int accepted = 0, seen = 0, once = 0;
    for (int i = 0; i < OUTAGE_EVENTS; i++) {
        accepted += atomic_load(&outage_acked[i]);
        seen += atomic_load(&outage_seen[i]);
        once += atomic_load(&outage_reports[i]) == 1;
    }
    printf("outage, async: %d of %d events reported stored, %d failed, "
           "%d refused calls, %d processed\n",
           accepted, OUTAGE_EVENTS, atomic_load(&outage_failed),
           atomic_load(&p.errors), seen);
    assert_int_equal(once, OUTAGE_EVENTS); /* one report each */
    assert_true(ok); /* none reported stored was lost */
    printf("outage, async: %d log lines (%d of a lost connection, %d of "
           "one back)\n",
           atomic_load(&outage_lines), atomic_load(&outage_lost),
           atomic_load(&outage_back));
    if (must_tell) {
        assert_true(atomic_load(&outage_lost) >= 1);
        assert_true(atomic_load(&outage_back) >= 1);
    }
    assert_true(atomic_load(&outage_lines) <= 200);
    evq_set_log(NULL, NULL);
    evq_worker_free(w);
    evq_events_free(e);
    evq_queue_close(p.q);
}

#endif
