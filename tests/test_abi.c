/* The sized structs of the ABI (evq.h, "The ABI"): a program built against
 * an older evq.h (smaller options and stats structs) keeps working with
 * this library, which neither reads nor writes past the program's size;
 * options not filled by their _init, or from a newer evq.h, are refused. */
#include "testutil.h"

#include <limits.h>
#include <pthread.h>
#include <stddef.h>

#define GUARD 0xA5
#define BUF   1024

static unsigned char buf[BUF];

/* buf filled with GUARD; true when buf[from..BUF) still is. */
static void guard_all(void)
{
    memset(buf, GUARD, sizeof buf);
}

static bool guarded_from(size_t from)
{
    for (size_t i = from; i < BUF; i++)
        if (buf[i] != GUARD)
            return false;
    return true;
}

static size_t size_field(void)
{
    size_t n;
    memcpy(&n, buf, sizeof n);
    return n;
}

static void inits_write_only_the_programs_size(void **state)
{
    (void)state;
    /* an older program's options: the fields before the last ones added */
    size_t old = offsetof(evq_worker_opts, dedup_window_ms);
    guard_all();
    evq_worker_opts_init_sized((evq_worker_opts *)buf, old);
    assert_true(guarded_from(old));
    assert_int_equal(size_field(), old);
    assert_int_equal(((evq_worker_opts *)buf)->concurrency, 1);
    assert_int_equal(((evq_worker_opts *)buf)->backoff_max_ms, 60000);

    old = offsetof(evq_relay_opts, log);
    guard_all();
    evq_relay_opts_init_sized((evq_relay_opts *)buf, old);
    assert_true(guarded_from(old));
    assert_int_equal(((evq_relay_opts *)buf)->window, 1000);

    old = offsetof(evq_serve_opts, max_dead_scan);
    guard_all();
    evq_serve_opts_init_sized((evq_serve_opts *)buf, old);
    assert_true(guarded_from(old));
    assert_int_equal(((evq_serve_opts *)buf)->sample_ms, 2000);

    old = sizeof(evq_scheduler_opts);
    guard_all();
    evq_scheduler_opts_init_sized((evq_scheduler_opts *)buf, old);
    assert_true(guarded_from(old));
    assert_int_equal(size_field(), old);

    /* a newer program's: the tail the library does not know is zeroed */
    guard_all();
    evq_worker_opts_init_sized((evq_worker_opts *)buf,
                               sizeof(evq_worker_opts) + 16);
    assert_true(guarded_from(sizeof(evq_worker_opts) + 16));
    for (size_t i = sizeof(evq_worker_opts); i < sizeof(evq_worker_opts) + 16;
         i++)
        assert_int_equal(buf[i], 0);

    /* the macro passes the program's own size */
    evq_worker_opts o;
    evq_worker_opts_init(&o);
    assert_int_equal(o.size, sizeof o);
}

static int count_handled(const evq_event *ev, void *arg)
{
    (void)ev;
    atomic_fetch_add((atomic_int *)arg, 1);
    return 0;
}

static void
an_older_programs_worker_options_take_the_defaults_after(void **state)
{
    (void)state;
    evq_queue *q;
    evq_events *e;
    evq_worker *w;
    atomic_int handled = 0;
    assert_evq_ok(evq_queue_open(&q, "memory://", "abi-old", NULL));
    assert_non_null(e = evq_events_new());
    assert_evq_ok(evq_register_handler(e, "*", count_handled, &handled));

    /* Garbage past the older size: n_limits and limits read from there
     * would be refused (or followed). */
    size_t old = offsetof(evq_worker_opts, dedup_window_ms);
    guard_all();
    evq_worker_opts_init_sized((evq_worker_opts *)buf, old);
    ((evq_worker_opts *)buf)->concurrency = 2;
    assert_evq_ok(evq_worker_start(&w, q, e, (evq_worker_opts *)buf));
    evq_event *ev = evq_event_new("abi.old", NULL);
    assert_evq_ok(evq_enqueue(q, ev));
    evq_event_free(ev);
    for (int i = 0; i < 500 && atomic_load(&handled) < 1; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&handled), 1);

    /* stats into an older program's smaller struct */
    size_t small = offsetof(struct evq_worker_stats, timed_out);
    guard_all();
    assert_evq_ok(
        evq_worker_stats_sized(w, (struct evq_worker_stats *)buf, small));
    assert_true(guarded_from(small));
    assert_int_equal(((struct evq_worker_stats *)buf)->received, 1);
    assert_int_equal(((struct evq_worker_stats *)buf)->succeeded, 1);
    /* and into a newer one's: the tail is zeroed */
    size_t big = sizeof(struct evq_worker_stats) + 24;
    guard_all();
    assert_evq_ok(
        evq_worker_stats_sized(w, (struct evq_worker_stats *)buf, big));
    assert_true(guarded_from(big));
    for (size_t i = sizeof(struct evq_worker_stats); i < big; i++)
        assert_int_equal(buf[i], 0);

    assert_evq_ok(evq_worker_stop(w, 5000));
    evq_worker_free(w);

    small = offsetof(struct evq_queue_stats, dead_lettered);
    guard_all();
    assert_evq_ok(
        evq_queue_stats_sized(q, (struct evq_queue_stats *)buf, small));
    assert_true(guarded_from(small));
    assert_int_equal(((struct evq_queue_stats *)buf)->enqueued, 1);

    evq_events_free(e);
    evq_queue_close(q);
}

static void options_not_from_their_init_are_refused(void **state)
{
    (void)state;
    evq_queue *q, *to;
    evq_events *e;
    evq_worker *w = NULL;
    assert_evq_ok(evq_queue_open(&q, "memory://", "abi-noinit", NULL));
    assert_evq_ok(evq_queue_open(&to, "memory://", "abi-noinit-to", NULL));
    assert_non_null(e = evq_events_new());

    evq_worker_opts wo;
    memset(&wo, 0, sizeof wo);
    wo.concurrency = 2;
    assert_evq_err(evq_worker_start(&w, q, e, &wo), EVQ_EINVAL);
    assert_null(w);
    assert_non_null(strstr(evq_errmsg(), "evq_worker_opts.size is 0"));

    /* a program built against a newer evq.h */
    evq_worker_opts_init(&wo);
    wo.size = sizeof wo + 8;
    assert_evq_err(evq_worker_start(&w, q, e, &wo), EVQ_EINVAL);
    assert_non_null(strstr(evq_errmsg(), "newer evq.h"));

    evq_relay_opts ro;
    memset(&ro, 0, sizeof ro);
    ro.once = 1;
    struct evq_relay_stats rs;
    assert_evq_err(evq_relay(q, to, &ro, &rs), EVQ_EINVAL);
    assert_non_null(strstr(evq_errmsg(), "evq_relay_opts.size"));

    evq_scheduler_opts so = {0};
    evq_scheduler *s = NULL;
    assert_evq_err(evq_scheduler_new(&s, q, &so), EVQ_EINVAL);
    assert_null(s);
    assert_non_null(strstr(evq_errmsg(), "evq_scheduler_opts.size"));

    evq_serve_opts vo = {0};
    evq_server *srv = NULL;
    assert_evq_err(evq_serve_new(&srv, &vo), EVQ_EINVAL);
    assert_null(srv);
    assert_non_null(strstr(evq_errmsg(), "evq_serve_opts.size"));

    evq_events_free(e);
    evq_queue_close(to);
    evq_queue_close(q);
}

static void relay_stats_fill_the_programs_size(void **state)
{
    (void)state;
    evq_queue *from, *to;
    assert_evq_ok(evq_queue_open(&from, "memory://", "abi-relay", NULL));
    assert_evq_ok(evq_queue_open(&to, "memory://", "abi-relay-to", NULL));
    for (int i = 0; i < 3; i++) {
        evq_event *ev = evq_event_new("abi.relay", NULL);
        assert_evq_ok(evq_enqueue(from, ev));
        evq_event_free(ev);
    }
    evq_relay_opts o;
    evq_relay_opts_init(&o);
    o.once = 1;
    size_t small = offsetof(struct evq_relay_stats, dead_lettered);
    guard_all();
    assert_evq_ok(
        evq_relay_sized(from, to, &o, (struct evq_relay_stats *)buf, small));
    assert_true(guarded_from(small));
    assert_int_equal(((struct evq_relay_stats *)buf)->moved, 3);
    evq_queue_close(to);
    evq_queue_close(from);
}

static void *enqueue_later(void *arg)
{
    usleep(200 * 1000);
    evq_event *ev = evq_event_new("abi.later", NULL);
    evq_enqueue(arg, ev);
    evq_event_free(ev);
    return NULL;
}

/* Milliseconds are int64_t: any negative wait is forever (INT64_MIN too,
 * which an int would have cut to 0), a wait past INT_MAX ms waits. */
static void waits_take_every_int64(void **state)
{
    (void)state;
    static const int64_t waits[] = {INT64_MIN, -4294967000LL, -1,
                                    (int64_t)INT_MAX + 1, INT64_MAX};
    evq_queue *q;
    assert_evq_ok(evq_queue_open(&q, "memory://", "abi-waits", NULL));
    for (size_t i = 0; i < sizeof waits / sizeof *waits; i++) {
        pthread_t t;
        evq_msg *m = NULL;
        pthread_create(&t, NULL, enqueue_later, q);
        assert_evq_ok(evq_dequeue(q, &m, waits[i]));
        assert_evq_ok(evq_ack(m));
        pthread_join(t, NULL);
    }
    assert_evq_ok(evq_flush(q, INT64_MAX));
    evq_queue_close(q);
}

static void the_version_is_the_headers(void **state)
{
    (void)state;
    assert_string_equal(evq_version(), EVQ_VERSION_STRING);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(inits_write_only_the_programs_size),
        cmocka_unit_test(
            an_older_programs_worker_options_take_the_defaults_after),
        cmocka_unit_test(options_not_from_their_init_are_refused),
        cmocka_unit_test(relay_stats_fill_the_programs_size),
        cmocka_unit_test(waits_take_every_int64),
        cmocka_unit_test(the_version_is_the_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
