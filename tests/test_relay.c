/* The outbox relay's library call: bad options, a drain from a sqlite://
 * outbox to memory:// with ids kept, an interrupt that ends a running
 * relay with nothing left out, and refusals dead-lettered at the source.
 * The relay against servers, killed and with its destination restarted,
 * is tests/tool/test_relay.sh. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char db_url[256];

static evq_queue *open_q(const char *url, const char *name)
{
    evq_queue *q;
    assert_evq_ok(evq_queue_open(&q, url, name, NULL));
    return q;
}

static void fill(evq_queue *q, int n, char ids[][64])
{
    for (int i = 0; i < n; i++) {
        evq_event *ev = evq_event_new("relay.n", json_integer(i));
        assert_non_null(ev);
        snprintf(ids[i], 64, "%s", evq_event_id(ev));
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
    }
}

static void bad_options_are_refused(void **state)
{
    (void)state;
    evq_queue *a = open_q("memory://", "relay-bad-a");
    evq_queue *b = open_q("memory://", "relay-bad-b");
    evq_relay_opts o;
    evq_relay_opts_init(&o);
    assert_int_equal(o.window, 1000);
    assert_int_equal(o.retry_ms, 1000);
    struct evq_relay_stats st;
    assert_evq_err(evq_relay(NULL, b, &o, &st), EVQ_EINVAL);
    assert_evq_err(evq_relay(a, NULL, &o, &st), EVQ_EINVAL);
    assert_evq_err(evq_relay(a, a, &o, &st), EVQ_EINVAL);
    o.window = 0;
    assert_evq_err(evq_relay(a, b, &o, &st), EVQ_EINVAL);
    assert_non_null(strstr(evq_errmsg(), "window 0"));
    o.window = 100001;
    assert_evq_err(evq_relay(a, b, &o, &st), EVQ_EINVAL);
    evq_relay_opts_init(&o);
    o.retry_ms = -1;
    assert_evq_err(evq_relay(a, b, &o, &st), EVQ_EINVAL);
    evq_queue_close(a);
    evq_queue_close(b);
}

#define N 2000

static void a_drain_moves_every_event_with_its_id(void **state)
{
    (void)state;
    static char ids[N][64];
    evq_queue *from = open_q(db_url, "relay-drain");
    evq_queue *to = open_q("memory://?format=json", "relay-drain");
    fill(from, N, ids);
    evq_relay_opts o;
    evq_relay_opts_init(&o);
    o.once = 1;
    o.window = 64;
    struct evq_relay_stats st;
    assert_evq_ok(evq_relay(from, to, &o, &st));
    assert_int_equal(st.taken, N);
    assert_int_equal(st.moved, N);
    assert_int_equal(st.failed, 0);
    for (int i = 0; i < N; i++) {
        evq_msg *m;
        assert_evq_ok(evq_dequeue(to, &m, 0));
        assert_string_equal(evq_event_id(evq_msg_event(m)), ids[i]);
        assert_evq_ok(evq_ack(m));
    }
    evq_msg *m;
    assert_evq_err(evq_dequeue(to, &m, 0), EVQ_ETIMEDOUT);
    struct evq_queue_stats qs;
    assert_evq_ok(evq_queue_stats(from, &qs));
    assert_int_equal(qs.depth, 0);
    assert_int_equal(qs.in_flight, 0);
    evq_queue_close(from);
    evq_queue_close(to);
}

struct running {
    evq_queue *from, *to;
    evq_relay_opts o;
    struct evq_relay_stats st;
    int rc;
};

static void *run_relay(void *arg)
{
    struct running *r = arg;
    r->rc = evq_relay(r->from, r->to, &r->o, &r->st);
    return NULL;
}

static void an_interrupt_ends_it_with_nothing_out(void **state)
{
    (void)state;
    static char ids[N][64];
    struct running r = {.from = open_q(db_url, "relay-int"),
                        .to = open_q("memory://?format=json", "relay-int")};
    evq_relay_opts_init(&r.o);
    r.o.window = 16;
    pthread_t t;
    pthread_create(&t, NULL, run_relay, &r);
    fill(r.from, N, ids);
    /* some moved, then stop it */
    struct evq_queue_stats qs;
    for (int i = 0; i < 2000; i++) {
        assert_evq_ok(evq_queue_stats(r.to, &qs));
        if (qs.depth >= 100)
            break;
        usleep(1000);
    }
    assert_true(qs.depth >= 100);
    assert_evq_ok(evq_queue_interrupt(r.from));
    pthread_join(t, NULL);
    assert_evq_ok(r.rc);
    assert_true(r.st.moved >= 100);
    assert_int_equal(r.st.moved, r.st.taken);
    /* what it took is at the destination; the rest still in the source,
     * none left out */
    assert_evq_ok(evq_queue_stats(r.from, &qs));
    assert_int_equal(qs.in_flight, 0);
    assert_int_equal((uint64_t)qs.depth + r.st.moved, N);
    assert_evq_ok(evq_queue_stats(r.to, &qs));
    assert_int_equal((uint64_t)qs.depth, r.st.moved);
    evq_queue_close(r.from);
    evq_queue_close(r.to);
}

static void refusals_are_dead_lettered_at_the_source(void **state)
{
    (void)state;
    static char ids[10][64];
    evq_queue *from = open_q(db_url, "relay-big");
    evq_queue *to = open_q("memory://?format=json&max_event_bytes=64",
                           "relay-big");
    fill(from, 10, ids);
    evq_relay_opts o;
    evq_relay_opts_init(&o);
    o.once = 1;
    struct evq_relay_stats st;
    assert_evq_ok(evq_relay(from, to, &o, &st));
    assert_int_equal(st.dead_lettered, 10);
    assert_int_equal(st.moved, 0);
    struct evq_queue_stats qs;
    assert_evq_ok(evq_queue_stats(from, &qs));
    assert_int_equal(qs.depth, 0);
    assert_int_equal(qs.dead, 10);
    evq_queue *dead;
    assert_evq_ok(evq_queue_open_dead(&dead, from));
    evq_msg *m;
    assert_evq_ok(evq_dequeue(dead, &m, 0));
    assert_string_equal(evq_event_id(evq_msg_event(m)), ids[0]);
    const char *why = evq_event_attr(evq_msg_event(m), "evqerror");
    assert_non_null(why);
    assert_non_null(strstr(why, "relay: the destination refused it"));
    assert_evq_ok(evq_ack(m));
    evq_queue_close(dead);
    evq_queue_close(from);
    evq_queue_close(to);
}

/* A drain whose destination fails returns (with retry_ms 0 too) with the
 * first failure's code, what failed still in the source. */
static void a_drain_to_a_failing_destination_returns(void **state)
{
    (void)state;
    static char ids[20][64];
    evq_queue *from = open_q(db_url, "relay-fail");
    evq_queue *to = open_q("memory://?format=json&capacity=5&overflow=error",
                           "relay-fail");
    fill(from, 20, ids);
    evq_relay_opts o;
    evq_relay_opts_init(&o);
    o.once = 1;
    o.retry_ms = 0;
    o.window = 4;
    struct evq_relay_stats st;
    assert_evq_err(evq_relay(from, to, &o, &st), EVQ_EFULL);
    assert_non_null(strstr(evq_errmsg(), "stay in the source"));
    assert_true(st.moved >= 1 && st.moved <= 5); /* batches: all or none */
    assert_true(st.failed >= 1);
    struct evq_queue_stats qs;
    assert_evq_ok(evq_queue_stats(from, &qs));
    assert_int_equal(qs.in_flight, 0);
    assert_int_equal((uint64_t)(qs.depth + qs.delayed) + st.moved, 20);
    assert_evq_ok(evq_queue_stats(to, &qs));
    assert_int_equal((uint64_t)qs.depth, st.moved);
    evq_queue_close(from);
    evq_queue_close(to);
}

int main(void)
{
    char dir[] = "/tmp/evq-relay-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    snprintf(db_url, sizeof db_url, "sqlite://%s/outbox.db", dir);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_options_are_refused),
        cmocka_unit_test(a_drain_moves_every_event_with_its_id),
        cmocka_unit_test(an_interrupt_ends_it_with_nothing_out),
        cmocka_unit_test(refusals_are_dead_lettered_at_the_source),
        cmocka_unit_test(a_drain_to_a_failing_destination_returns),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return rc;
}
