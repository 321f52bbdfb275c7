/* Handlers and dispatch: order, fan-out, wildcards, errors, registration
 * from handlers and from other threads while dispatching. */
#include "testutil.h"

#include "internal.h" /* evq__dispatch_batch, as a worker calls it */

#include <pthread.h>
#include <stdatomic.h>

struct log {
    char entries[64][32];
    int n;
};

struct tagged {
    struct log *log;
    const char *tag;
    int rc;
};

static int record(const evq_event *ev, void *arg)
{
    struct tagged *t = arg;
    (void)ev;
    if (t->log->n < 64)
        snprintf(t->log->entries[t->log->n++], 32, "%s", t->tag);
    return t->rc;
}

static evq_event *typed(const char *type)
{
    evq_event *ev = evq_event_new(type, NULL);
    assert_non_null(ev);
    return ev;
}

static void assert_log(const struct log *log, const char *expected)
{
    char got[512] = "";
    for (int i = 0; i < log->n; i++) {
        if (i)
            strcat(got, ",");
        strcat(got, log->entries[i]);
    }
    assert_string_equal(got, expected);
}

static void handlers_run_in_registration_order(void **state)
{
    (void)state;
    struct log log = {0};
    struct tagged a = {&log, "a", 0}, b = {&log, "b", 0},
                  all = {&log, "all", 0}, user = {&log, "user.*", 0},
                  other = {&log, "other", 0};
    evq_events *e = evq_events_new();

    assert_evq_ok(evq_register_handler(e, "user.created", record, &a));
    assert_evq_ok(evq_register_handler(e, "*", record, &all));
    assert_evq_ok(evq_register_handler(e, "user.*", record, &user));
    assert_evq_ok(evq_register_handler(e, "user.created", record, &b));
    assert_evq_ok(evq_register_handler(e, "order.created", record, &other));
    assert_int_equal(evq_events_count(e), 5);

    evq_event *ev = typed("user.created");
    assert_evq_ok(evq_dispatch(e, ev));
    assert_log(&log, "a,all,user.*,b");
    evq_event_free(ev);

    log.n = 0;
    ev = typed("user.deleted.soft");
    assert_evq_ok(evq_dispatch(e, ev));
    assert_log(&log, "all,user.*");
    evq_event_free(ev);

    log.n = 0;
    ev = typed("user"); /* "user.*" needs something after the dot */
    assert_evq_ok(evq_dispatch(e, ev));
    assert_log(&log, "all");
    evq_event_free(ev);

    log.n = 0;
    ev = typed("user.created.v2"); /* exact patterns match exactly */
    assert_evq_ok(evq_dispatch(e, ev));
    assert_log(&log, "all,user.*");
    evq_event_free(ev);
    evq_events_free(e);
}

static void nothing_matched_is_enohandler(void **state)
{
    (void)state;
    struct log log = {0};
    struct tagged a = {&log, "a", 0};
    evq_events *e = evq_events_new();
    evq_event *ev = typed("billing.failed");

    assert_evq_err(evq_dispatch(e, ev), EVQ_ENOHANDLER);
    assert_evq_ok(evq_register_handler(e, "user.*", record, &a));
    assert_evq_err(evq_dispatch(e, ev), EVQ_ENOHANDLER);
    assert_errmsg_has("billing.failed");
    assert_int_equal(log.n, 0);
    evq_event_free(ev);
    evq_events_free(e);
}

static void first_failure_stops_and_is_returned(void **state)
{
    (void)state;
    struct log log = {0};
    struct tagged a = {&log, "a", 0}, bad = {&log, "bad", EVQ_EIO},
                  c = {&log, "c", 0}, pos = {&log, "pos", 7};
    evq_events *e = evq_events_new();
    evq_event *ev = typed("x");

    evq_register_handler(e, "x", record, &a);
    evq_register_handler(e, "x", record, &bad);
    evq_register_handler(e, "x", record, &c);
    assert_evq_err(evq_dispatch(e, ev), EVQ_EIO);
    assert_log(&log, "a,bad");
    bad.rc = EVQ_EPERMANENT;
    log.n = 0;
    assert_evq_err(evq_dispatch(e, ev), EVQ_EPERMANENT);
    bad.rc = 0;
    evq_register_handler(e, "x", record, &pos);
    log.n = 0;
    assert_evq_err(evq_dispatch(e, ev), EVQ_EHANDLER);
    assert_log(&log, "a,bad,c,pos");
    evq_event_free(ev);
    evq_events_free(e);
}

static void bad_patterns_and_arguments_are_refused(void **state)
{
    (void)state;
    struct log log = {0};
    struct tagged a = {&log, "a", 0};
    evq_events *e = evq_events_new();
    static const char *bad[] = {"",   "user*", "*.created", "user.*.x",
                                "**", ".*",    "us*er",     "a.*b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (evq_register_handler(e, bad[i], record, &a) != EVQ_EINVAL)
            fail_msg("pattern '%s' accepted", bad[i]);
    }
    assert_evq_err(evq_register_handler(e, NULL, record, &a), EVQ_EINVAL);
    assert_evq_err(evq_register_handler(e, "x", NULL, &a), EVQ_EINVAL);
    assert_evq_err(evq_register_handler(NULL, "x", record, &a), EVQ_EINVAL);
    assert_evq_err(evq_dispatch(NULL, NULL), EVQ_EINVAL);
    assert_evq_err(evq_dispatch(e, NULL), EVQ_EINVAL);
    assert_int_equal(evq_events_count(e), 0);
    evq_events_free(e);
    evq_events_free(NULL);
}

struct self_reg {
    evq_events *e;
    struct tagged t;
    int calls;
};

static int registers_another(const evq_event *ev, void *arg)
{
    struct self_reg *s = arg;
    (void)ev;
    s->calls++;
    return evq_register_handler(s->e, "grow", record, &s->t);
}

static void a_handler_may_register_handlers(void **state)
{
    (void)state;
    struct log log = {0};
    evq_events *e = evq_events_new();
    struct self_reg s = {e, {&log, "added", 0}, 0};
    evq_event *ev = typed("grow");

    assert_evq_ok(evq_register_handler(e, "grow", registers_another, &s));
    assert_evq_ok(evq_dispatch(e, ev));
    /* Takes effect for the next dispatch, which adds one more each time;
     * growth past the first table's room moves the table. */
    for (int i = 0; i < 20; i++)
        assert_evq_ok(evq_dispatch(e, ev));
    assert_int_equal(s.calls, 21);
    assert_int_equal(evq_events_count(e), 22);
    evq_event_free(ev);
    evq_events_free(e);
}

struct race {
    evq_events *e;
    atomic_int stop;
    atomic_long hits;
};

static int count_hit(const evq_event *ev, void *arg)
{
    (void)ev;
    atomic_fetch_add(&((struct race *)arg)->hits, 1);
    return 0;
}

static void *dispatch_loop(void *arg)
{
    struct race *r = arg;
    evq_event *ev = evq_event_new("race.t", NULL);
    while (!atomic_load(&r->stop)) {
        int rc = evq_dispatch(r->e, ev);
        if (rc != 0 && rc != EVQ_ENOHANDLER)
            abort();
    }
    evq_event_free(ev);
    return NULL;
}

static void registration_is_safe_while_dispatching(void **state)
{
    (void)state;
    struct race r = {.e = evq_events_new()};
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, dispatch_loop, &r);
    for (int i = 0; i < 500; i++)
        assert_evq_ok(evq_register_handler(r.e, i % 2 ? "race.*" : "race.t",
                                           count_hit, &r));
    atomic_store(&r.stop, 1);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(evq_events_count(r.e), 500);
    long before = atomic_load(&r.hits);
    evq_event *ev = evq_event_new("race.t", NULL);
    assert_evq_ok(evq_dispatch(r.e, ev));
    assert_int_equal(atomic_load(&r.hits) - before, 500);
    evq_event_free(ev);
    evq_events_free(r.e);
}

/* A batch handler, recording the size of each batch and failing with its
 * tag's code (through rcs, or its return when rc is set). */
struct batched {
    struct log *log;
    int rc_each, rc_all;
};

static int record_batch(const evq_event *const *evs, size_t n, int *rcs,
                        void *arg)
{
    struct batched *b = arg;
    (void)evs;
    if (b->log->n < 64)
        snprintf(b->log->entries[b->log->n++], 32, "batch%zu", n);
    for (size_t i = 0; i < n; i++)
        rcs[i] = b->rc_each;
    if (b->rc_each)
        evq_handler_reason("refused %zu", n);
    return b->rc_all;
}

static void dispatch_gives_a_batch_handler_a_batch_of_one(void **state)
{
    (void)state;
    struct log log = {0};
    struct batched b = {&log, 0, 0};
    struct tagged per = {&log, "per", 0};
    evq_events *e = evq_events_new();
    evq_event *ev = typed("row.added");

    assert_evq_ok(evq_register_handler(e, "row.*", record, &per));
    assert_evq_ok(evq_register_batch_handler(e, "row.added", record_batch, &b,
                                             10, 50));
    /* a second batch handler of the same type never gets it */
    assert_evq_ok(evq_register_batch_handler(e, "*", record_batch, &b, 10, 50));
    assert_evq_ok(evq_dispatch(e, ev));
    assert_log(&log, "per,batch1");

    log.n = 0;
    b.rc_each = EVQ_EIO;
    assert_evq_err(evq_dispatch(e, ev), EVQ_EIO);
    assert_errmsg_has("refused 1");
    assert_log(&log, "per,batch1");

    log.n = 0;
    b.rc_each = 0;
    b.rc_all = 7; /* positive: a handler failure */
    assert_evq_err(evq_dispatch(e, ev), EVQ_EHANDLER);
    assert_errmsg_has("batch handler 1 for 'row.added' returned 7");
    evq_events_free(e);
    evq_event_free(ev);
}


/* ---- middleware ------------------------------------------------------------ */

struct mw {
    struct log *log;
    const char *tag;
    int before_rc;      /* what before returns */
    int after_rc;       /* -1: pass rc on; else this */
    int seen_rc;        /* the rc after got */
    int64_t elapsed_ns; /* what after got */
    char trace[64];     /* evq_trace_current() in before */
    bool call_ok;       /* after got before's call pointer */
};

static int mw_before(const evq_event *ev, void **call, void *arg)
{
    struct mw *m = arg;
    (void)ev;
    if (m->log->n < 64)
        snprintf(m->log->entries[m->log->n++], 32, "%.8s.before", m->tag);
    const char *tp = evq_trace_current();
    snprintf(m->trace, sizeof m->trace, "%s", tp ? tp : "");
    *call = m;
    if (m->before_rc)
        evq_handler_reason("%s refused it", m->tag);
    return m->before_rc;
}

static int mw_after(const evq_event *ev, int rc, int64_t elapsed_ns,
                    void *call, void *arg)
{
    struct mw *m = arg;
    (void)ev;
    if (m->log->n < 64)
        snprintf(m->log->entries[m->log->n++], 32, "%.8s.after", m->tag);
    m->seen_rc = rc;
    m->elapsed_ns = elapsed_ns;
    m->call_ok = call == m;
    return m->after_rc == -1 ? rc : m->after_rc;
}

static int slow_record(const evq_event *ev, void *arg)
{
    struct timespec ts = {0, 20 * 1000000};
    nanosleep(&ts, NULL);
    return record(ev, arg);
}

static void middleware_nests_around_the_handlers(void **state)
{
    (void)state;
    struct log log = {0};
    struct tagged h = {&log, "handler", 0};
    struct mw a = {&log, "a", 0, -1, 0, 0, "", false},
              b = {&log, "b", 0, -1, 0, 0, "", false};
    evq_events *e = evq_events_new();
    evq_event *ev = typed("order.paid");
    assert_evq_ok(evq_register_handler(e, "*", slow_record, &h));
    assert_evq_ok(evq_events_use(e, mw_before, mw_after, &a));
    assert_evq_ok(evq_events_use(e, mw_before, mw_after, &b));
    assert_evq_ok(evq_dispatch(e, ev));
    assert_log(&log, "a.before,b.before,handler,b.after,a.after");
    assert_true(a.call_ok && b.call_ok);
    assert_int_equal(a.seen_rc, 0);
    /* the time taken: the handler's 20 ms, within the outer hook's */
    assert_true(b.elapsed_ns >= 20000000);
    assert_true(a.elapsed_ns >= b.elapsed_ns);

    /* a before that fails: no handler, its own and outer afters run */
    log.n = 0;
    b.before_rc = EVQ_EIO;
    assert_evq_err(evq_dispatch(e, ev), EVQ_EIO);
    assert_errmsg_has("b refused it");
    assert_log(&log, "a.before,b.before,b.after,a.after");
    assert_int_equal(a.seen_rc, EVQ_EIO);

    /* an after that fails a success, and one that forgives a failure */
    log.n = 0;
    b.before_rc = 0;
    b.after_rc = 9;
    assert_evq_err(evq_dispatch(e, ev), EVQ_EHANDLER);
    assert_errmsg_has("middleware 1 for 'order.paid' returned 9");
    assert_int_equal(a.seen_rc, EVQ_EHANDLER);
    h.rc = EVQ_EIO;
    b.after_rc = -1;
    a.after_rc = 0;
    assert_evq_ok(evq_dispatch(e, ev));
    assert_int_equal(a.seen_rc, EVQ_EIO);

    /* no handler: the hooks see EVQ_ENOHANDLER */
    a.after_rc = -1;
    evq_event *other = typed("x");
    evq_events *e2 = evq_events_new();
    assert_evq_ok(evq_events_use(e2, NULL, mw_after, &a));
    assert_evq_err(evq_dispatch(e2, other), EVQ_ENOHANDLER);
    assert_int_equal(a.seen_rc, EVQ_ENOHANDLER);

    /* bad arguments, and a bound */
    assert_evq_err(evq_events_use(NULL, mw_before, NULL, NULL), EVQ_EINVAL);
    assert_evq_err(evq_events_use(e2, NULL, NULL, NULL), EVQ_EINVAL);
    for (int i = 1; i < 16; i++)
        assert_evq_ok(evq_events_use(e2, mw_before, NULL, &a));
    assert_evq_err(evq_events_use(e2, mw_before, NULL, &a), EVQ_EFULL);
    evq_events_free(e2);
    evq_event_free(other);
    evq_events_free(e);
    evq_event_free(ev);
}

static int fails_with_reason(const evq_event *ev, void *arg)
{
    (void)ev;
    (void)arg;
    return evq_handler_reason("the card was declined");
}

static int after_that_calls_evq(const evq_event *ev, int rc,
                                int64_t elapsed_ns, void *call, void *arg)
{
    (void)ev;
    (void)elapsed_ns;
    (void)call;
    (void)arg;
    /* an evq call that fails leaves a message of its own */
    evq_event_set_attr(NULL, "x", "y");
    return rc;
}

/* The failure's message outlives an after that keeps the result. */
static void an_after_keeps_the_failure_message(void **state)
{
    (void)state;
    evq_events *e = evq_events_new();
    evq_event *ev = typed("order.paid");
    assert_evq_ok(evq_register_handler(e, "*", fails_with_reason, NULL));
    assert_evq_ok(evq_events_use(e, NULL, after_that_calls_evq, NULL));
    assert_evq_err(evq_dispatch(e, ev), EVQ_EHANDLER);
    assert_errmsg_has("the card was declined");
    evq_events_free(e);
    evq_event_free(ev);
}

static const char TP1[] =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
static const char TP2[] =
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

static void middleware_sees_each_event_of_a_batch(void **state)
{
    (void)state;
    struct log log = {0};
    struct batched b = {&log, 0, 0};
    struct mw a = {&log, "a", 0, -1, 0, 0, "", false};
    evq_events *e = evq_events_new();
    assert_evq_ok(evq_register_batch_handler(e, "row.*", record_batch, &b,
                                             10, 0));
    assert_evq_ok(evq_events_use(e, mw_before, mw_after, &a));
    evq_event *evs[3] = {typed("row.a"), typed("row.refused"), typed("row.c")};
    assert_evq_ok(evq_event_set_trace(evs[2], TP2, "k=v"));
    int rcs[3];
    char reason[256] = "";
    size_t max;
    int64_t wait;
    const void *bh = evq__batch_handler(e, evs[0], &max, &wait);
    assert_non_null(bh);
    evq__dispatch_batch(e, bh, (const evq_event *const *)evs, 3, rcs, reason,
                        sizeof reason);
    assert_int_equal(rcs[0], 0);
    assert_int_equal(rcs[1], 0);
    assert_int_equal(rcs[2], 0);
    assert_log(&log, "a.before,a.before,a.before,batch3,a.after,a.after,"
                     "a.after");
    /* the last before ran in event 2's trace context */
    assert_string_equal(a.trace, TP2);

    /* a before refusing one event leaves it out of the batch */
    log.n = 0;
    a.before_rc = EVQ_EIO;
    evq__dispatch_batch(e, bh, (const evq_event *const *)evs, 1, rcs, reason,
                        sizeof reason);
    assert_int_equal(rcs[0], EVQ_EIO);
    assert_log(&log, "a.before,a.after");
    assert_non_null(strstr(reason, "a refused it"));
    for (int i = 0; i < 3; i++)
        evq_event_free(evs[i]);
    evq_events_free(e);
}

/* ---- trace context --------------------------------------------------------- */

static int trace_handler(const evq_event *ev, void *arg)
{
    char *seen = arg;
    const char *tp = evq_trace_current();
    snprintf(seen, 64, "%s", tp ? tp : "");
    /* an event made here continues the handler's trace */
    evq_event *child = evq_event_new("child", NULL);
    int rc = evq_event_set_trace(child, NULL, NULL);
    if (!rc && strcmp(evq_event_traceparent(child), evq_event_traceparent(ev)))
        rc = EVQ_EIO;
    if (!rc && evq_event_tracestate(ev) &&
        strcmp(evq_event_tracestate(child), evq_event_tracestate(ev)))
        rc = EVQ_EIO;
    evq_event_free(child);
    return rc;
}

static void trace_context_follows_the_event(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    };
    evq_event *ev = typed("order.paid");
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (evq_trace_set(bad[i], NULL) != EVQ_EINVAL ||
            evq_event_set_trace(ev, bad[i], NULL) != EVQ_EINVAL)
            fail_msg("traceparent '%s' was taken", bad[i]);
    }
    /* a later version may add fields */
    assert_evq_ok(evq_trace_set(
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later", NULL));
    char big[600];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_evq_err(evq_trace_set(TP1, big), EVQ_EINVAL);
    assert_evq_err(evq_trace_set(TP1, "a=1\nb=2"), EVQ_EINVAL);
    /* an attribute set by hand that is no traceparent is not one */
    assert_evq_ok(evq_event_set_attr(ev, "traceparent", "junk"));
    assert_null(evq_event_traceparent(ev));

    /* no context: nothing to copy */
    assert_evq_ok(evq_trace_set(NULL, NULL));
    assert_null(evq_trace_current());
    assert_evq_err(evq_event_set_trace(ev, NULL, NULL), EVQ_ENOENT);

    /* the producer's context, onto the event in one call */
    assert_evq_ok(evq_trace_set(TP1, "vendor=abc"));
    assert_evq_ok(evq_event_set_trace(ev, NULL, NULL));
    assert_string_equal(evq_event_traceparent(ev), TP1);
    assert_string_equal(evq_event_tracestate(ev), "vendor=abc");

    /* the handler runs in the event's context, then the thread's own is
     * back */
    evq_events *e = evq_events_new();
    char seen[64] = "";
    assert_evq_ok(evq_register_handler(e, "*", trace_handler, seen));
    assert_evq_ok(evq_trace_set(TP2, NULL));
    assert_evq_ok(evq_dispatch(e, ev));
    assert_string_equal(seen, TP1);
    assert_string_equal(evq_trace_current(), TP2);
    assert_null(evq_trace_current_state());
    /* an event without one: the handler sees none, so it has none to
     * continue */
    evq_event *plain = typed("plain");
    assert_evq_err(evq_dispatch(e, plain), EVQ_ENOENT);
    assert_string_equal(seen, "");
    assert_string_equal(evq_trace_current(), TP2);
    evq_trace_set(NULL, NULL);
    evq_event_free(plain);
    evq_events_free(e);
    evq_event_free(ev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(handlers_run_in_registration_order),
        cmocka_unit_test(nothing_matched_is_enohandler),
        cmocka_unit_test(first_failure_stops_and_is_returned),
        cmocka_unit_test(bad_patterns_and_arguments_are_refused),
        cmocka_unit_test(a_handler_may_register_handlers),
        cmocka_unit_test(registration_is_safe_while_dispatching),
        cmocka_unit_test(dispatch_gives_a_batch_handler_a_batch_of_one),
        cmocka_unit_test(middleware_nests_around_the_handlers),
        cmocka_unit_test(middleware_sees_each_event_of_a_batch),
        cmocka_unit_test(an_after_keeps_the_failure_message),
        cmocka_unit_test(trace_context_follows_the_event),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
