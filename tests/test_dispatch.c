/* Handlers and dispatch: order, fan-out, wildcards, errors, registration
 * from handlers and from other threads while dispatching. */
#include "testutil.h"

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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
