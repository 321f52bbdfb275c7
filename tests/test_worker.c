/* The worker pool's own rules: option checks, stopping (twice, from a
 * handler, past a deadline), callbacks, handlers that register handlers. */
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static int ok_handler(const evq_event *ev, void *arg)
{
    (void)ev;
    if (arg)
        atomic_fetch_add((atomic_int *)arg, 1);
    return 0;
}

static void bad_options_are_refused(void **state)
{
    (void)state;
    evq_queue *q;
    evq_events *e = evq_events_new();
    evq_worker *w = (evq_worker *)1;
    evq_worker_opts o;
    assert_evq_ok(evq_queue_open(&q, "memory://", "w-bad", NULL));

    evq_worker_opts_init(&o);
    o.concurrency = 0;
    assert_evq_err(evq_worker_start(&w, q, e, &o), EVQ_EINVAL);
    assert_errmsg_has("concurrency");
    assert_null(w);
    o.concurrency = 100000;
    assert_evq_err(evq_worker_start(&w, q, e, &o), EVQ_EINVAL);
    assert_errmsg_has("concurrency");
    evq_worker_opts_init(&o);
    o.max_attempts = 0;
    assert_evq_err(evq_worker_start(&w, q, e, &o), EVQ_EINVAL);
    assert_errmsg_has("max_attempts");
    evq_worker_opts_init(&o);
    o.backoff_multiplier = 0.5;
    assert_evq_err(evq_worker_start(&w, q, e, &o), EVQ_EINVAL);
    assert_errmsg_has("backoff_multiplier");
    evq_worker_opts_init(&o);
    o.backoff_max_ms = 1;
    assert_evq_err(evq_worker_start(&w, q, e, &o), EVQ_EINVAL);
    evq_worker_opts_init(&o);
    o.prefetch = 0;
    assert_evq_err(evq_worker_start(&w, q, e, &o), EVQ_EINVAL);
    assert_evq_err(evq_worker_start(NULL, q, e, NULL), EVQ_EINVAL);
    assert_evq_err(evq_worker_start(&w, NULL, e, NULL), EVQ_EINVAL);
    assert_evq_err(evq_worker_start(&w, q, NULL, NULL), EVQ_EINVAL);
    assert_evq_err(evq_worker_stop(NULL, 0), EVQ_EINVAL);
    struct evq_worker_stats st;
    assert_evq_err(evq_worker_stats(NULL, &st), EVQ_EINVAL);
    evq_worker_free(NULL);
    evq_events_free(e);
    evq_queue_close(q);
}

static void stopping_twice_is_an_error(void **state)
{
    (void)state;
    evq_queue *q;
    evq_events *e = evq_events_new();
    evq_worker *w;
    assert_evq_ok(evq_queue_open(&q, "memory://", "w-twice", NULL));
    evq_register_handler(e, "*", ok_handler, NULL);
    assert_evq_ok(evq_worker_start(&w, q, e, NULL));
    assert_evq_ok(evq_worker_stop(w, 1000));
    assert_evq_err(evq_worker_stop(w, 1000), EVQ_ESTATE);
    assert_errmsg_has("already stopped");
    evq_worker_free(w);
    /* The user's handle was not interrupted by the worker's stop. */
    evq_msg *m;
    assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ETIMEDOUT);
    evq_events_free(e);
    evq_queue_close(q);
}

struct self_stop {
    _Atomic(evq_worker *) w;
    atomic_int rc;
    atomic_int done;
};

static int stops_itself(const evq_event *ev, void *arg)
{
    struct self_stop *s = arg;
    (void)ev;
    evq_worker *w;
    while (!(w = atomic_load(&s->w)))
        ;
    atomic_store(&s->rc, evq_worker_stop(w, 0));
    evq_worker_free(w); /* a no-op from a handler */
    atomic_store(&s->done, 1);
    return 0;
}

static bool self_stop_done(void *arg)
{
    return atomic_load(&((struct self_stop *)arg)->done) != 0;
}

static void stopping_from_a_handler_is_an_error(void **state)
{
    (void)state;
    evq_queue *q;
    evq_events *e = evq_events_new();
    evq_worker *w;
    struct self_stop s = {.rc = 0};
    evq_event *ev = evq_event_new("x", NULL);

    assert_evq_ok(evq_queue_open(&q, "memory://", "w-self", NULL));
    evq_register_handler(e, "x", stops_itself, &s);
    assert_evq_ok(evq_worker_start(&w, q, e, NULL));
    atomic_store(&s.w, w);
    assert_evq_ok(evq_enqueue(q, ev));
    assert_true(eventually(self_stop_done, &s, 10000));
    assert_int_equal(atomic_load(&s.rc), EVQ_ESTATE);
    assert_evq_ok(evq_worker_stop(w, 5000));
    evq_worker_free(w);
    evq_events_free(e);
    evq_event_free(ev);
    evq_queue_close(q);
}

struct stuck {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool release;
    atomic_int entered;
};

static int blocks(const evq_event *ev, void *arg)
{
    struct stuck *s = arg;
    (void)ev;
    atomic_store(&s->entered, 1);
    pthread_mutex_lock(&s->mu);
    while (!s->release)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static bool entered(void *arg)
{
    return atomic_load(&((struct stuck *)arg)->entered) != 0;
}

static void a_stuck_handler_does_not_hang_stop(void **state)
{
    (void)state;
    static struct stuck s = {.mu = PTHREAD_MUTEX_INITIALIZER,
                             .cv = PTHREAD_COND_INITIALIZER};
    evq_queue *q;
    evq_events *e = evq_events_new();
    evq_worker *w;
    evq_event *ev = evq_event_new("stuck.forever", NULL);

    assert_evq_ok(evq_queue_open(&q, "memory://", "w-stuck", NULL));
    evq_register_handler(e, "stuck.*", blocks, &s);
    assert_evq_ok(evq_worker_start(&w, q, e, NULL));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_true(eventually(entered, &s, 10000));
    int64_t t0 = now_ms();
    assert_evq_err(evq_worker_stop(w, 200), EVQ_ETIMEDOUT);
    assert_true(now_ms() - t0 < 5000);
    assert_errmsg_has("stuck.forever");
    assert_errmsg_has(evq_event_id(ev));
    evq_worker_free(w);
    /* Once released, the handler's thread settles its event and exits. */
    pthread_mutex_lock(&s.mu);
    s.release = true;
    pthread_cond_broadcast(&s.cv);
    pthread_mutex_unlock(&s.mu);
    struct evq_queue_stats st;
    for (int i = 0; i < 10000; i++) {
        evq_queue_stats(q, &st);
        if (st.in_flight == 0)
            break;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.depth, 0);
    evq_event_free(ev);
    evq_queue_close(q);
    /* e is freed last: the released handler's dispatch used it. */
    struct timespec pause = {0, 50 * 1000000};
    nanosleep(&pause, NULL);
    evq_events_free(e);
}

struct grower {
    evq_events *e;
    atomic_int calls, added;
};

static int registers_more(const evq_event *ev, void *arg)
{
    struct grower *g = arg;
    (void)ev;
    atomic_fetch_add(&g->calls, 1);
    if (evq_register_handler(g->e, "grow.*", ok_handler, &g->added) != 0)
        return EVQ_EIO;
    return 0;
}

struct count_wait {
    atomic_int *n;
    int want;
};

static bool reached(void *arg)
{
    struct count_wait *c = arg;
    return atomic_load(c->n) >= c->want;
}

static void handlers_may_register_handlers_while_running(void **state)
{
    (void)state;
    evq_queue *q;
    struct grower g = {.e = evq_events_new()};
    evq_worker_opts o;
    evq_worker *w;

    evq_worker_opts_init(&o);
    o.concurrency = 4;
    assert_evq_ok(evq_queue_open(&q, "memory://", "w-grow", NULL));
    evq_register_handler(g.e, "grow.x", registers_more, &g);
    assert_evq_ok(evq_worker_start(&w, q, g.e, &o));
    for (int i = 0; i < 100; i++) {
        evq_event *ev = evq_event_new("grow.x", NULL);
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
    }
    struct count_wait c = {&g.calls, 100};
    assert_true(eventually(reached, &c, 10000));
    assert_evq_ok(evq_worker_stop(w, 5000));
    assert_int_equal(evq_events_count(g.e), 101);
    assert_true(atomic_load(&g.added) > 0);
    evq_worker_free(w);
    evq_events_free(g.e);
    evq_queue_close(q);
}

struct seen_failures {
    atomic_int errors, logs, warn;
};

static void on_error(const evq_event *ev, int code, const char *reason,
                     int attempt, void *arg)
{
    struct seen_failures *s = arg;
    (void)ev;
    (void)attempt;
    if (code < 0 && reason && reason[0])
        atomic_fetch_add(&s->errors, 1);
}

static void on_log(evq_log_level lvl, const char *line, void *arg)
{
    struct seen_failures *s = arg;
    if (line && line[0])
        atomic_fetch_add(&s->logs, 1);
    if (lvl == EVQ_LOG_WARN)
        atomic_fetch_add(&s->warn, 1);
}

static int always_fails(const evq_event *ev, void *arg)
{
    (void)ev;
    (void)arg;
    return EVQ_EIO;
}

static bool dead_once(void *arg)
{
    return atomic_load(&((struct seen_failures *)arg)->warn) >= 1;
}

static void callbacks_see_every_failure(void **state)
{
    (void)state;
    evq_queue *q;
    evq_events *e = evq_events_new();
    struct seen_failures s = {0};
    evq_worker_opts o;
    evq_worker *w;
    evq_event *ev = evq_event_new("fails", NULL);

    evq_worker_opts_init(&o);
    o.max_attempts = 3;
    o.backoff_initial_ms = 1;
    o.backoff_max_ms = 2;
    o.on_error = on_error;
    o.on_error_arg = &s;
    o.log = on_log;
    o.log_arg = &s;
    assert_evq_ok(evq_queue_open(&q, "memory://", "w-cb", NULL));
    evq_register_handler(e, "fails", always_fails, NULL);
    assert_evq_ok(evq_worker_start(&w, q, e, &o));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_true(eventually(dead_once, &s, 10000));
    assert_evq_ok(evq_worker_stop(w, 5000));
    /* Two retried failures and the dead-lettering. */
    assert_int_equal(atomic_load(&s.errors), 3);
    assert_true(atomic_load(&s.logs) >=
                3); /* started, dead-lettered, stopped */
    evq_worker_free(w);
    evq_events_free(e);
    evq_event_free(ev);
    evq_queue_close(q);
}

static void prometheus_labels_are_escaped(void **state)
{
    (void)state;
    evq_queue *q;
    assert_evq_ok(evq_queue_open(&q, "memory://", "prom.q", NULL));
    char *text = evq_stats_prometheus(q, NULL);
    assert_non_null(text);
    assert_non_null(strstr(
        text, "evq_queue_depth{queue=\"prom.q\",backend=\"memory\"} 0\n"));
    assert_non_null(strstr(text, "# HELP evq_queue_depth "));
    assert_null(strstr(text, "evq_worker"));
    free(text);
    text = evq_stats_prometheus(NULL, NULL);
    assert_string_equal(text, "");
    free(text);
    evq_queue_close(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_options_are_refused),
        cmocka_unit_test(stopping_twice_is_an_error),
        cmocka_unit_test(stopping_from_a_handler_is_an_error),
        cmocka_unit_test(a_stuck_handler_does_not_hang_stop),
        cmocka_unit_test(handlers_may_register_handlers_while_running),
        cmocka_unit_test(callbacks_see_every_failure),
        cmocka_unit_test(prometheus_labels_are_escaped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
