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
    evq_worker_opts_init(&o);
    o.touch_ms = -5;
    assert_evq_err(evq_worker_start(&w, q, e, &o), EVQ_EINVAL);
    assert_errmsg_has("touch_ms");
    evq_worker_opts_init(&o);
    o.handler_timeout_ms = -1;
    assert_evq_err(evq_worker_start(&w, q, e, &o), EVQ_EINVAL);
    assert_errmsg_has("handler_timeout_ms");
    o.handler_timeout_ms = 2147483647;
    assert_evq_err(evq_worker_start(&w, q, e, &o), EVQ_EINVAL);
    assert_errmsg_has("handler_timeout_ms");
    assert_null(w);
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
    assert_non_null(strstr(text, "evq_queue_depth{queue=\"prom.q\",backend="
                                 "\"memory\",url=\"memory://\"} 0\n"));
    assert_non_null(strstr(text, "# HELP evq_queue_depth "));
    assert_null(strstr(text, "evq_worker"));
    free(text);
    text = evq_stats_prometheus(NULL, NULL);
    assert_string_equal(text, "");
    free(text);
    evq_queue_close(q);
}

/* ---- deadlines and reasons ---------------------------------------------- */

static void touch_needs_a_message_and_is_a_no_op_without_leases(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    evq_event *ev = evq_event_new("t", NULL);
    assert_evq_err(evq_msg_touch(NULL), EVQ_EINVAL);
    assert_errmsg_has("NULL");
    assert_evq_ok(evq_queue_open(&q, "memory://", "w-touch", NULL));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 1000));
    assert_evq_ok(evq_msg_touch(m));
    assert_evq_ok(evq_msg_touch(m));
    assert_evq_ok(evq_ack(m));
    /* Outside a worker's handler there is no deadline. */
    assert_int_equal(evq_handler_deadline_ns(), 0);
    assert_int_equal(evq_handler_expired(), 0);
    evq_event_free(ev);
    evq_queue_close(q);
}

struct reasons {
    atomic_int errors;
    char reason[256];
};

static void keep_reason(const evq_event *ev, int code, const char *reason,
                        int attempt, void *arg)
{
    struct reasons *r = arg;
    (void)attempt;
    (void)code;
    if (ev && atomic_fetch_add(&r->errors, 1) == 0)
        snprintf(r->reason, sizeof r->reason, "%s", reason);
}

static int declines(const evq_event *ev, void *arg)
{
    (void)arg;
    if (strcmp(evq_event_type(ev), "pay.ok") == 0) {
        evq_handler_reason("not used: the handler succeeds");
        return 0;
    }
    return evq_handler_reason("payment declined: %s", "E42");
}

static bool one_error(void *arg)
{
    return atomic_load(&((struct reasons *)arg)->errors) >= 1;
}

static void a_handlers_reason_becomes_the_dead_letters_evqerror(void **state)
{
    (void)state;
    evq_queue *q, *dead;
    evq_events *e = evq_events_new();
    struct reasons r = {0};
    evq_worker_opts o;
    evq_worker *w;
    evq_msg *m;
    evq_event *bad = evq_event_new("pay.bad", NULL);
    evq_event *good = evq_event_new("pay.ok", NULL);

    evq_register_handler(e, "pay.*", declines, NULL);
    /* Straight through evq_dispatch, the reason is the error message. */
    assert_evq_err(evq_dispatch(e, bad), EVQ_EHANDLER);
    assert_string_equal(evq_errmsg(), "payment declined: E42");
    assert_evq_ok(evq_dispatch(e, good));

    evq_worker_opts_init(&o);
    o.max_attempts = 1;
    o.on_error = keep_reason;
    o.on_error_arg = &r;
    assert_evq_ok(evq_queue_open(&q, "memory://", "w-reason", NULL));
    assert_evq_ok(evq_worker_start(&w, q, e, &o));
    assert_evq_ok(evq_enqueue(q, good));
    assert_evq_ok(evq_enqueue(q, bad));
    assert_true(eventually(one_error, &r, 10000));
    assert_evq_ok(evq_queue_open_dead(&dead, q));
    assert_evq_ok(evq_dequeue(dead, &m, 5000));
    const char *why = evq_event_attr(evq_msg_event(m), "evqerror");
    assert_non_null(why);
    if (!strstr(why, "payment declined: E42") || strstr(why, "handler 0"))
        fail_msg("evqerror is \"%s\"", why);
    assert_evq_ok(evq_ack(m));
    assert_evq_ok(evq_worker_stop(w, 5000));
    if (!strstr(r.reason, "payment declined: E42"))
        fail_msg("on_error's reason is \"%s\"", r.reason);
    struct evq_worker_stats st;
    evq_worker_stats(w, &st);
    assert_int_equal(st.succeeded, 1);
    assert_int_equal(st.dead_lettered, 1);
    evq_queue_close(dead);
    evq_worker_free(w);
    evq_events_free(e);
    evq_event_free(bad);
    evq_event_free(good);
    evq_queue_close(q);
}

struct overrun {
    atomic_int calls, finished, late_logs;
};

/* Ignores its deadline: runs 600 ms whatever happens. */
static int overruns(const evq_event *ev, void *arg)
{
    struct overrun *o = arg;
    (void)ev;
    atomic_fetch_add(&o->calls, 1);
    struct timespec pause = {0, 600 * 1000000};
    nanosleep(&pause, NULL);
    atomic_fetch_add(&o->finished, 1);
    return 0;
}

static void log_late(evq_log_level lvl, const char *line, void *arg)
{
    struct overrun *o = arg;
    (void)lvl;
    if (strstr(line, "after its deadline"))
        atomic_fetch_add(&o->late_logs, 1);
}

static bool timed_out_once(void *arg)
{
    struct evq_worker_stats st;
    evq_worker_stats(arg, &st);
    return st.timed_out >= 1;
}

/* The worker cannot kill a handler past its deadline: it settles the event
 * without it, and stop still waits for the handler to return. */
static void stop_waits_for_a_handler_past_its_deadline(void **state)
{
    (void)state;
    evq_queue *q;
    evq_events *e = evq_events_new();
    struct overrun ov = {0};
    evq_worker_opts o;
    evq_worker *w;
    evq_event *ev = evq_event_new("slow", NULL);

    evq_worker_opts_init(&o);
    o.handler_timeout_ms = 100;
    o.max_attempts = 1;
    o.log = log_late;
    o.log_arg = &ov;
    assert_evq_ok(evq_queue_open(&q, "memory://", "w-overrun", NULL));
    evq_register_handler(e, "slow", overruns, &ov);
    assert_evq_ok(evq_worker_start(&w, q, e, &o));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_true(eventually(timed_out_once, w, 10000));
    assert_int_equal(atomic_load(&ov.finished), 0);
    assert_evq_ok(evq_worker_stop(w, 10000));
    assert_int_equal(atomic_load(&ov.finished), 1);
    assert_int_equal(atomic_load(&ov.calls), 1);
    assert_int_equal(atomic_load(&ov.late_logs), 1);
    struct evq_worker_stats st;
    evq_worker_stats(w, &st);
    assert_int_equal(st.timed_out, 1);
    assert_int_equal(st.dead_lettered, 1);
    assert_int_equal(st.succeeded, 0);
    evq_worker_free(w);
    evq_events_free(e);
    evq_event_free(ev);
    evq_queue_close(q);
}

struct quitter {
    atomic_int calls;
};

/* Stops as soon as it is told its time is up, and reports success: the
 * worker must still count the attempt as timed out, not done. */
static int quits_at_deadline(const evq_event *ev, void *arg)
{
    struct quitter *qt = arg;
    (void)ev;
    if (atomic_fetch_add(&qt->calls, 1) == 0)
        while (!evq_handler_expired())
            ;
    return 0;
}

static bool settled_once(void *arg)
{
    struct evq_worker_stats st;
    evq_worker_stats(arg, &st);
    return st.succeeded >= 1;
}

static void a_handler_that_stops_at_its_deadline_is_still_retried(void **state)
{
    (void)state;
    evq_queue *q;
    evq_events *e = evq_events_new();
    struct quitter qt = {0};
    evq_worker_opts o;
    evq_worker *w;
    evq_event *ev = evq_event_new("quits", NULL);

    evq_worker_opts_init(&o);
    o.handler_timeout_ms = 150;
    o.backoff_initial_ms = 1;
    o.backoff_max_ms = 1;
    assert_evq_ok(evq_queue_open(&q, "memory://", "w-quit", NULL));
    evq_register_handler(e, "quits", quits_at_deadline, &qt);
    assert_evq_ok(evq_worker_start(&w, q, e, &o));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_true(eventually(settled_once, w, 10000));
    assert_evq_ok(evq_worker_stop(w, 5000));
    struct evq_worker_stats st;
    evq_worker_stats(w, &st);
    assert_int_equal(atomic_load(&qt.calls), 2);
    assert_int_equal(st.timed_out, 1);
    assert_int_equal(st.retried, 1);
    assert_int_equal(st.succeeded, 1);
    evq_worker_free(w);
    evq_events_free(e);
    evq_event_free(ev);
    evq_queue_close(q);
}

/* Middleware sees each attempt; the worker keeps retrying and counting. */
struct attempts_mw {
    atomic_int before, after, failed_seen;
};

static int fail_first_attempt(const evq_event *ev, void **call, void *arg)
{
    struct attempts_mw *m = arg;
    (void)call;
    atomic_fetch_add(&m->before, 1);
    if (evq_event_attempt(ev) == 1)
        return evq_handler_reason("the middleware refused attempt 1");
    return 0;
}

static int count_after(const evq_event *ev, int rc, int64_t elapsed_ns,
                       void *call, void *arg)
{
    struct attempts_mw *m = arg;
    (void)ev;
    (void)call;
    (void)elapsed_ns;
    atomic_fetch_add(&m->after, 1);
    if (rc)
        atomic_fetch_add(&m->failed_seen, 1);
    return rc;
}

static void middleware_sees_each_attempt_of_a_worker(void **state)
{
    (void)state;
    evq_queue *q;
    evq_events *e = evq_events_new();
    struct attempts_mw m = {0};
    atomic_int calls = 0;
    evq_worker_opts o;
    evq_worker *w;
    evq_worker_opts_init(&o);
    o.max_attempts = 3;
    o.backoff_initial_ms = 1;
    o.backoff_max_ms = 2;
    assert_evq_ok(evq_queue_open(&q, "memory://", "w-mw", NULL));
    assert_evq_ok(evq_register_handler(e, "*", ok_handler, &calls));
    assert_evq_ok(evq_events_use(e, fail_first_attempt, count_after, &m));
    assert_evq_ok(evq_worker_start(&w, q, e, &o));
    evq_event *ev = evq_event_new("mw", NULL);
    assert_evq_ok(evq_enqueue(q, ev));
    assert_true(eventually(settled_once, w, 10000));
    assert_evq_ok(evq_worker_stop(w, 5000));
    struct evq_worker_stats st;
    evq_worker_stats(w, &st);
    assert_int_equal(atomic_load(&m.before), 2);
    assert_int_equal(atomic_load(&m.after), 2);
    assert_int_equal(atomic_load(&m.failed_seen), 1);
    assert_int_equal(atomic_load(&calls), 1); /* not on the refused one */
    assert_int_equal(st.failed, 1);
    assert_int_equal(st.retried, 1);
    assert_int_equal(st.succeeded, 1);
    evq_worker_free(w);
    evq_events_free(e);
    evq_event_free(ev);
    evq_queue_close(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_options_are_refused),
        cmocka_unit_test(middleware_sees_each_attempt_of_a_worker),
        cmocka_unit_test(stopping_twice_is_an_error),
        cmocka_unit_test(stopping_from_a_handler_is_an_error),
        cmocka_unit_test(a_stuck_handler_does_not_hang_stop),
        cmocka_unit_test(handlers_may_register_handlers_while_running),
        cmocka_unit_test(callbacks_see_every_failure),
        cmocka_unit_test(prometheus_labels_are_escaped),
        cmocka_unit_test(touch_needs_a_message_and_is_a_no_op_without_leases),
        cmocka_unit_test(a_handlers_reason_becomes_the_dead_letters_evqerror),
        cmocka_unit_test(stop_waits_for_a_handler_past_its_deadline),
        cmocka_unit_test(a_handler_that_stops_at_its_deadline_is_still_retried),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
