/*
 * The conformance suite: the public contract of a queue, checked the same
 * way on every backend.  ctest runs this program once per backend URL:
 *
 *   conformance URL
 *
 * Every test uses queue names of its own (with the process id), so runs
 * against a persistent backend never see each other's events.
 */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

static const char *base_url;
static int name_seq;

/* What each backend, or mode, promises.  The suite runs every test on every
 * URL; a test of a promise the URL's backend does not make is skipped with
 * the reason printed, never silently. */
enum {
    PROMISE_REDELIVERY = 1,
    PROMISE_DELAY = 2,
    PROMISE_DEAD_LETTERS = 4,
    PROMISE_NO_LOSS = 8, /* nothing dropped when consumers fall behind */
    PROMISE_BACKLOG = 16, /* kept for a handle that has not read yet */
    PROMISE_ALL = 31
};
#define N_PROMISES 5
static const struct {
    const char *match; /* a substring of the URL; NULL matches any */
    unsigned promises;
    const char *why[N_PROMISES]; /* why each missing promise is missing */
} promise_table[] = {
    {"nats.mode=core",
     0,
     {"core NATS delivers at most once: a nacked event, or one a stopped "
      "worker had not started, is dropped",
      "core NATS has no delayed delivery (evq_enqueue_delayed gives "
      "EVQ_ENOTSUP)",
      "core NATS hands a dead letter only to readers subscribed when it is "
      "published, so a reader opened later misses it",
      "core NATS drops what a slow consumer cannot buffer "
      "(nats.pending_limit)",
      "core NATS delivers only to handles already reading, so the suite "
      "has each fresh handle read once (and find nothing) before it "
      "enqueues"}},
    {NULL, PROMISE_ALL, {NULL, NULL, NULL, NULL, NULL}},
};
static unsigned promises;
static const char *const *why_not;

static bool promised(unsigned p)
{
    if ((promises & p) == p)
        return true;
    for (int i = 0; i < N_PROMISES; i++)
        if ((p & (1u << i)) && !(promises & (1u << i)))
            print_message("[  SKIP    ] not promised on %s: %s\n", base_url,
                          why_not[i]);
    return false;
}

#define REQUIRES(p)                                                            \
    do {                                                                       \
        if (!promised(p))                                                      \
            skip();                                                            \
    } while (0)

/* base_url with extra query parameters appended. */
static void url_with(char *out, size_t cap, const char *params)
{
    const char *sep = strchr(base_url, '?') ? "&" : "?";
    if (params && params[0])
        snprintf(out, cap, "%s%s%s", base_url, sep, params);
    else
        snprintf(out, cap, "%s", base_url);
}

static evq_queue *open_fresh(const char *params, char *name_out)
{
    char url[1024], name[64];
    evq_queue *q;
    snprintf(name, sizeof name, "conf-%d-%d", (int)getpid(), ++name_seq);
    if (name_out)
        strcpy(name_out, name);
    url_with(url, sizeof url, params);
    assert_evq_ok(evq_queue_open(&q, url, name, NULL));
    if (!(promises & PROMISE_BACKLOG)) {
        evq_msg *m;
        assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ETIMEDOUT);
    }
    return q;
}

static evq_event *numbered(json_int_t n)
{
    evq_event *ev = evq_event_new("conf.numbered", json_pack("{s:I}", "n", n));
    assert_non_null(ev);
    return ev;
}

static json_int_t number_of(const evq_event *ev)
{
    return json_integer_value(json_object_get(evq_event_data(ev), "n"));
}

static void assert_empty(evq_queue *q)
{
    evq_msg *m;
    assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ETIMEDOUT);
}

/* ---- the queue contract ------------------------------------------------ */

static void every_attribute_and_payload_survives(void **state)
{
    (void)state;
    const char *formats[] = {"", "format=json", "format=msgpack"};
    for (size_t f = 0; f < 3; f++) {
        evq_queue *q = open_fresh(formats[f], NULL);
        evq_event *ev = evq_event_new(
            "conf.all",
            json_pack("{s:s, s:I, s:I, s:f, s:[b, n, {}], s:s}", "unicode",
                      "\xe2\x82\xac\xf0\x9d\x84\x9e", "max",
                      (json_int_t)INT64_MAX, "min", (json_int_t)INT64_MIN,
                      "real", 1.0e-300, "mixed", 1, "empty", ""));
        evq_event *bin = evq_event_new("conf.bin", NULL);
        evq_msg *m;

        assert_evq_ok(evq_event_set_attr(ev, "source", "/conformance"));
        assert_evq_ok(evq_event_set_attr(ev, "subject", "sub/1"));
        assert_evq_ok(evq_event_set_attr(ev, "dataschema", "urn:schema"));
        assert_evq_ok(
            evq_event_set_attr(ev, "time", "2020-02-29T23:59:59.999999999Z"));
        assert_evq_ok(evq_event_set_attr(ev, "traceparent", "00-ab-01"));
        assert_evq_ok(
            evq_event_set_binary(bin, "\0\xff\x01", 3, "application/x"));
        assert_evq_ok(evq_enqueue(q, ev));
        assert_evq_ok(evq_enqueue(q, bin));

        /* Both come back, in either order: order across two enqueues is
         * not promised (two Kafka partitions, say). */
        evq_msg *m2;
        assert_evq_ok(evq_dequeue(q, &m, 5000));
        assert_evq_ok(evq_dequeue(q, &m2, 5000));
        if (strcmp(evq_event_type(evq_msg_event(m)), "conf.all") != 0) {
            evq_msg *t = m;
            m = m2;
            m2 = t;
        }
        const evq_event *got = evq_msg_event(m);
        assert_string_equal(evq_event_id(got), evq_event_id(ev));
        assert_string_equal(evq_event_type(got), "conf.all");
        assert_string_equal(evq_event_source(got), "/conformance");
        assert_string_equal(evq_event_subject(got), "sub/1");
        assert_string_equal(evq_event_attr(got, "dataschema"), "urn:schema");
        assert_string_equal(evq_event_attr(got, "time"),
                            "2020-02-29T23:59:59.999999999Z");
        assert_string_equal(evq_event_attr(got, "traceparent"), "00-ab-01");
        assert_string_equal(evq_event_datacontenttype(got), "application/json");
        assert_true(json_equal(evq_event_data(got), evq_event_data(ev)));
        assert_int_equal(evq_event_attempt(got), 1);
        assert_evq_ok(evq_ack(m));

        m = m2;
        assert_string_equal(evq_event_type(evq_msg_event(m)), "conf.bin");
        size_t len;
        const void *b = evq_event_binary(evq_msg_event(m), &len);
        assert_int_equal(len, 3);
        assert_memory_equal(b, "\0\xff\x01", 3);
        assert_string_equal(evq_event_datacontenttype(evq_msg_event(m)),
                            "application/x");
        assert_evq_ok(evq_ack(m));
        assert_empty(q);
        evq_event_free(ev);
        evq_event_free(bin);
        evq_queue_close(q);
    }
}

static void ack_removes(void **state)
{
    (void)state;
    evq_queue *q = open_fresh(NULL, NULL);
    evq_event *ev = numbered(1);
    evq_msg *m;
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_evq_ok(evq_ack(m));
    assert_evq_err(evq_dequeue(q, &m, 200), EVQ_ETIMEDOUT);
    struct evq_queue_stats st;
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_true(st.depth <= 0 && st.in_flight <= 0);
    evq_event_free(ev);
    evq_queue_close(q);
}

static void nack_redelivers_after_its_delay(void **state)
{
    (void)state;
    REQUIRES(PROMISE_REDELIVERY);
    evq_queue *q = open_fresh(NULL, NULL);
    evq_event *ev = numbered(2);
    evq_msg *m;
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    int64_t t0 = now_ms();
    assert_evq_ok(evq_nack(m, 300));
    assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ETIMEDOUT);
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_true(now_ms() - t0 >= 300);
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(ev));
    assert_int_equal(evq_event_attempt(evq_msg_event(m)), 2);
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(q);
}

static void delayed_enqueue_is_not_delivered_early(void **state)
{
    (void)state;
    REQUIRES(PROMISE_DELAY);
    evq_queue *q = open_fresh(NULL, NULL);
    evq_event *ev = numbered(3);
    evq_msg *m;
    int64_t t0 = now_ms();
    assert_evq_ok(evq_enqueue_delayed(q, ev, 300));
    assert_evq_err(evq_dequeue(q, &m, 100), EVQ_ETIMEDOUT);
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_true(now_ms() - t0 >= 300);
    assert_int_equal(number_of(evq_msg_event(m)), 3);
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(q);
}

static void batch_enqueue_delivers_all(void **state)
{
    (void)state;
    evq_queue *q = open_fresh(NULL, NULL);
    evq_event *evs[50];
    bool seen[50] = {false};
    for (int i = 0; i < 50; i++)
        evs[i] = numbered(i);
    assert_evq_ok(evq_enqueue_batch(q, (const evq_event *const *)evs, 50));
    for (int i = 0; i < 50; i++) {
        evq_msg *m;
        assert_evq_ok(evq_dequeue(q, &m, 5000));
        json_int_t n = number_of(evq_msg_event(m));
        assert_true(n >= 0 && n < 50 && !seen[n]);
        seen[n] = true;
        assert_evq_ok(evq_ack(m));
    }
    assert_empty(q);
    for (int i = 0; i < 50; i++)
        evq_event_free(evs[i]);
    evq_queue_close(q);
}

static void *blocked_dequeue(void *arg)
{
    evq_msg *m;
    return (void *)(intptr_t)evq_dequeue(arg, &m, -1);
}

static void interrupt_wakes_a_blocked_dequeue(void **state)
{
    (void)state;
    evq_queue *q = open_fresh(NULL, NULL);
    pthread_t t;
    void *rc;
    pthread_create(&t, NULL, blocked_dequeue, q);
    assert_evq_ok(evq_queue_interrupt(q));
    pthread_join(t, &rc);
    assert_int_equal((int)(intptr_t)rc, EVQ_ECLOSED);
    evq_queue_close(q);
}

/* ---- the worker contract --------------------------------------------- */

struct flaky {
    atomic_int calls;
    int fail_first; /* fail this many calls, then succeed */
    int code;
};

static int flaky_handler(const evq_event *ev, void *arg)
{
    struct flaky *f = arg;
    (void)ev;
    int n = atomic_fetch_add(&f->calls, 1) + 1;
    return n <= f->fail_first ? f->code : 0;
}

static evq_worker_opts fast_retries(void)
{
    evq_worker_opts o;
    evq_worker_opts_init(&o);
    o.backoff_initial_ms = 5;
    o.backoff_max_ms = 20;
    return o;
}

struct settled {
    evq_worker *w;
    uint64_t n;
    bool unhandled_acked;
};

/* Every event is done: acked after success, dead-lettered, or (when the
 * worker acks unhandled events) acked without a handler. */
static bool all_settled(void *arg)
{
    struct settled *s = arg;
    struct evq_worker_stats st;
    evq_worker_stats(s->w, &st);
    return st.succeeded + st.dead_lettered +
               (s->unhandled_acked ? st.unhandled : 0) >=
           s->n;
}

static void wait_settled_as(evq_worker *w, uint64_t n, bool unhandled_acked)
{
    struct settled s = {w, n, unhandled_acked};
    if (!eventually(all_settled, &s, 20000))
        fail_msg("worker did not settle %llu events in time",
                 (unsigned long long)n);
}

static void wait_settled(evq_worker *w, uint64_t n)
{
    wait_settled_as(w, n, false);
}

static void failing_twice_then_succeeding_is_processed_three_times(void **state)
{
    (void)state;
    REQUIRES(PROMISE_REDELIVERY);
    evq_queue *q = open_fresh(NULL, NULL);
    evq_events *e = evq_events_new();
    struct flaky f = {.fail_first = 2, .code = EVQ_EIO};
    evq_worker_opts o = fast_retries();
    evq_worker *w;
    evq_event *ev = numbered(4);

    evq_register_handler(e, "conf.numbered", flaky_handler, &f);
    assert_evq_ok(evq_worker_start(&w, q, e, &o));
    assert_evq_ok(evq_enqueue(q, ev));
    wait_settled(w, 1);
    assert_evq_ok(evq_worker_stop(w, 5000));
    struct evq_worker_stats st;
    evq_worker_stats(w, &st);
    assert_int_equal(atomic_load(&f.calls), 3);
    assert_int_equal(st.received, 3);
    assert_int_equal(st.failed, 2);
    assert_int_equal(st.retried, 2);
    assert_int_equal(st.succeeded, 1);
    assert_int_equal(st.dead_lettered, 0);
    assert_empty(q);
    evq_worker_free(w);
    evq_events_free(e);
    evq_event_free(ev);
    evq_queue_close(q);
}

static void take_dead_letter(evq_queue *q, const evq_event *orig,
                             const char *reason_part, const char *attempts)
{
    evq_queue *dead;
    evq_msg *m;
    assert_evq_ok(evq_queue_open_dead(&dead, q));
    assert_evq_ok(evq_dequeue(dead, &m, 5000));
    const evq_event *d = evq_msg_event(m);
    if (orig) {
        assert_string_equal(evq_event_id(d), evq_event_id(orig));
        assert_string_equal(evq_event_type(d), evq_event_type(orig));
        assert_true(json_equal(evq_event_data(d), evq_event_data(orig)));
    }
    const char *why = evq_event_attr(d, "evqerror");
    assert_non_null(why);
    if (!strstr(why, reason_part))
        fail_msg("evqerror \"%s\" lacks \"%s\"", why, reason_part);
    assert_string_equal(evq_event_attr(d, "evqattempts"), attempts);
    assert_string_equal(evq_event_attr(d, "evqqueue"), evq_queue_name(q));
    assert_evq_ok(evq_ack(m));
    assert_empty(dead);
    evq_queue_close(dead);
}

static void exhausted_attempts_go_to_the_dead_letter_queue(void **state)
{
    (void)state;
    REQUIRES(PROMISE_REDELIVERY | PROMISE_DEAD_LETTERS);
    evq_queue *q = open_fresh(NULL, NULL);
    evq_events *e = evq_events_new();
    struct flaky f = {.fail_first = 1000, .code = EVQ_EIO};
    evq_worker_opts o = fast_retries();
    evq_worker *w;
    evq_event *ev = numbered(5);

    o.max_attempts = 3;
    evq_register_handler(e, "conf.numbered", flaky_handler, &f);
    assert_evq_ok(evq_worker_start(&w, q, e, &o));
    assert_evq_ok(evq_enqueue(q, ev));
    wait_settled(w, 1);
    assert_evq_ok(evq_worker_stop(w, 5000));
    assert_int_equal(atomic_load(&f.calls), 3);
    take_dead_letter(q, ev, "failed after 3 attempts", "3");
    assert_empty(q);
    evq_worker_free(w);
    evq_events_free(e);
    evq_event_free(ev);
    evq_queue_close(q);
}

static void permanent_failures_skip_the_retries(void **state)
{
    (void)state;
    REQUIRES(PROMISE_DEAD_LETTERS);
    evq_queue *q = open_fresh(NULL, NULL);
    evq_events *e = evq_events_new();
    struct flaky f = {.fail_first = 1000, .code = EVQ_EPERMANENT};
    evq_worker_opts o = fast_retries();
    evq_worker *w;
    evq_event *ev = numbered(6);

    evq_register_handler(e, "conf.numbered", flaky_handler, &f);
    assert_evq_ok(evq_worker_start(&w, q, e, &o));
    assert_evq_ok(evq_enqueue(q, ev));
    wait_settled(w, 1);
    assert_evq_ok(evq_worker_stop(w, 5000));
    assert_int_equal(atomic_load(&f.calls), 1);
    take_dead_letter(q, ev, "permanent failure", "1");
    evq_worker_free(w);
    evq_events_free(e);
    evq_event_free(ev);
    evq_queue_close(q);
}

static void unhandled_events_are_dead_lettered_or_acked(void **state)
{
    (void)state;
    REQUIRES(PROMISE_DEAD_LETTERS);
    for (int mode = 0; mode < 2; mode++) {
        evq_queue *q = open_fresh(NULL, NULL);
        evq_events *e = evq_events_new();
        struct flaky f = {0};
        evq_worker_opts o = fast_retries();
        evq_worker *w;
        evq_event *ev = evq_event_new("conf.nobody", json_true());

        o.unhandled = mode ? EVQ_UNHANDLED_ACK : EVQ_UNHANDLED_DEAD_LETTER;
        evq_register_handler(e, "conf.numbered", flaky_handler, &f);
        assert_evq_ok(evq_worker_start(&w, q, e, &o));
        assert_evq_ok(evq_enqueue(q, ev));
        wait_settled_as(w, 1, mode == 1);
        assert_evq_ok(evq_worker_stop(w, 5000));
        if (mode == 0) {
            take_dead_letter(q, ev, "no handler", "1");
        } else {
            evq_queue *dead;
            assert_evq_ok(evq_queue_open_dead(&dead, q));
            assert_empty(dead);
            evq_queue_close(dead);
        }
        assert_empty(q);
        evq_worker_free(w);
        evq_events_free(e);
        evq_event_free(ev);
        evq_queue_close(q);
    }
}

static void undecodable_bytes_reach_the_dead_letter_queue(void **state)
{
    (void)state;
    REQUIRES(PROMISE_DEAD_LETTERS);
    evq_queue *q = open_fresh("format=json", NULL);
    evq_events *e = evq_events_new();
    struct flaky f = {0};
    evq_worker_opts o = fast_retries();
    evq_worker *w;
    evq_event *ev = numbered(7);

    evq_register_handler(e, "conf.numbered", flaky_handler, &f);
    assert_evq_ok(evq__enqueue_raw(q, "{\"truncated\":", 13));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_worker_start(&w, q, e, &o));
    wait_settled(w, 1);
    assert_evq_ok(evq_worker_stop(w, 5000));
    assert_int_equal(atomic_load(&f.calls), 1);

    evq_queue *dead;
    evq_msg *m;
    assert_evq_ok(evq_queue_open_dead(&dead, q));
    assert_evq_ok(evq_dequeue(dead, &m, 5000));
    size_t len;
    const void *raw = evq_event_binary(evq_msg_event(m), &len);
    assert_int_equal(len, 13);
    assert_memory_equal(raw, "{\"truncated\":", 13);
    assert_non_null(
        strstr(evq_event_attr(evq_msg_event(m), "evqerror"), "JSON"));
    assert_evq_ok(evq_ack(m));
    evq_queue_close(dead);
    evq_worker_free(w);
    evq_events_free(e);
    evq_event_free(ev);
    evq_queue_close(q);
}

/* 4 producers and a worker of 4 threads: 200 000 events, each handled
 * exactly once. */
#define STRESS_PRODUCERS 4
#define STRESS_EVENTS    200000

struct stress {
    evq_queue *q;
    _Atomic unsigned char seen[STRESS_EVENTS];
    atomic_int errors;
};

struct stress_arg {
    struct stress *s;
    int id;
};

static int stress_handler(const evq_event *ev, void *arg)
{
    struct stress *s = arg;
    json_int_t n = number_of(ev);
    if (n < 0 || n >= STRESS_EVENTS)
        atomic_fetch_add(&s->errors, 1);
    else
        atomic_fetch_add(&s->seen[n], 1);
    return 0;
}

static void *stress_producer(void *arg)
{
    struct stress_arg *a = arg;
    int per = STRESS_EVENTS / STRESS_PRODUCERS;
    for (int i = 0; i < per; i++) {
        evq_event *ev = numbered((json_int_t)a->id * per + i);
        if (evq_enqueue(a->s->q, ev) != 0)
            atomic_fetch_add(&a->s->errors, 1);
        evq_event_free(ev);
    }
    return NULL;
}

static void every_event_is_handled_exactly_once(void **state)
{
    (void)state;
    REQUIRES(PROMISE_NO_LOSS);
    struct stress *s = calloc(1, sizeof *s);
    evq_events *e = evq_events_new();
    evq_worker_opts o = fast_retries();
    evq_worker *w;
    pthread_t t[STRESS_PRODUCERS];
    struct stress_arg a[STRESS_PRODUCERS];

    s->q = open_fresh(NULL, NULL);
    o.concurrency = 4;
    o.prefetch = 16;
    evq_register_handler(e, "conf.numbered", stress_handler, s);
    assert_evq_ok(evq_worker_start(&w, s->q, e, &o));
    for (int i = 0; i < STRESS_PRODUCERS; i++) {
        a[i] = (struct stress_arg){s, i};
        pthread_create(&t[i], NULL, stress_producer, &a[i]);
    }
    for (int i = 0; i < STRESS_PRODUCERS; i++)
        pthread_join(t[i], NULL);
    wait_settled(w, STRESS_EVENTS);
    assert_evq_ok(evq_worker_stop(w, 10000));
    assert_int_equal(atomic_load(&s->errors), 0);
    for (int i = 0; i < STRESS_EVENTS; i++) {
        if (s->seen[i] != 1)
            fail_msg("event %d handled %d times", i, s->seen[i]);
    }
    struct evq_worker_stats st;
    evq_worker_stats(w, &st);
    assert_int_equal(st.received, STRESS_EVENTS);
    assert_int_equal(st.succeeded, STRESS_EVENTS);
    assert_int_equal(st.latency_count, STRESS_EVENTS);
    assert_true(st.latency_ns_p50 <= st.latency_ns_p99);
    assert_true(st.latency_ns_p99 <= st.latency_ns_p999);
    assert_empty(s->q);
    evq_worker_free(w);
    evq_events_free(e);
    evq_queue_close(s->q);
    free(s);
}

/* A handler that holds each event until released. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    atomic_int started;
    _Atomic unsigned char seen[64];
};

static int gated_handler(const evq_event *ev, void *arg)
{
    struct gate *g = arg;
    atomic_fetch_add(&g->started, 1);
    pthread_mutex_lock(&g->mu);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    atomic_fetch_add(&g->seen[number_of(ev)], 1);
    return 0;
}

static bool two_started(void *arg)
{
    return atomic_load(&((struct gate *)arg)->started) >= 2;
}

static void *open_gate_later(void *arg)
{
    struct gate *g = arg;
    struct timespec pause = {0, 200 * 1000000};
    nanosleep(&pause, NULL);
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static void a_stopped_worker_loses_nothing(void **state)
{
    (void)state;
    REQUIRES(PROMISE_REDELIVERY);
    evq_queue *q = open_fresh(NULL, NULL);
    evq_events *e = evq_events_new();
    struct gate g = {.mu = PTHREAD_MUTEX_INITIALIZER,
                     .cv = PTHREAD_COND_INITIALIZER};
    evq_worker_opts o = fast_retries();
    evq_worker *w1, *w2;
    pthread_t opener;

    evq_register_handler(e, "conf.numbered", gated_handler, &g);
    for (int i = 0; i < 40; i++) {
        evq_event *ev = numbered(i);
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
    }
    o.concurrency = 2;
    o.prefetch = 8; /* so some are fetched but not started at the stop */
    assert_evq_ok(evq_worker_start(&w1, q, e, &o));
    assert_true(eventually(two_started, &g, 10000));
    /* Stop while both threads hold an event in their handler; the gate
     * opens during the drain, so those two finish and are acked. */
    pthread_create(&opener, NULL, open_gate_later, &g);
    assert_evq_ok(evq_worker_stop(w1, 10000));
    pthread_join(opener, NULL);
    struct evq_worker_stats st1;
    evq_worker_stats(w1, &st1);
    assert_int_equal(st1.in_flight, 0);
    assert_true(st1.succeeded >= 2);
    assert_true(st1.succeeded < 40);

    assert_evq_ok(evq_worker_start(&w2, q, e, &o));
    wait_settled(w2, 40 - st1.succeeded);
    assert_evq_ok(evq_worker_stop(w2, 10000));
    for (int i = 0; i < 40; i++) {
        if (g.seen[i] != 1)
            fail_msg("event %d handled %d times", i, g.seen[i]);
    }
    assert_empty(q);
    evq_worker_free(w1);
    evq_worker_free(w2);
    evq_events_free(e);
    evq_queue_close(q);
}

static int mixed_handler(const evq_event *ev, void *arg)
{
    (void)arg;
    json_int_t n = number_of(ev);
    if (n % 5 == 0)
        return EVQ_EPERMANENT;
    if (n % 5 == 1 && evq_event_attempt(ev) < 2)
        return EVQ_EIO;
    return 0;
}

static void stats_add_up(void **state)
{
    (void)state;
    REQUIRES(PROMISE_REDELIVERY | PROMISE_DEAD_LETTERS);
    evq_queue *q = open_fresh(NULL, NULL);
    evq_events *e = evq_events_new();
    evq_worker_opts o = fast_retries();
    evq_worker *w;

    o.concurrency = 3;
    evq_register_handler(e, "conf.numbered", mixed_handler, NULL);
    assert_evq_ok(evq_worker_start(&w, q, e, &o));
    for (int i = 0; i < 100; i++) {
        evq_event *ev = numbered(i);
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
    }
    evq_event *stray = evq_event_new("conf.stray", NULL);
    assert_evq_ok(evq_enqueue(q, stray));
    evq_event_free(stray);
    wait_settled(w, 101);
    assert_evq_ok(evq_worker_stop(w, 5000));

    struct evq_worker_stats st;
    evq_worker_stats(w, &st);
    /* 20 permanent failures, 20 retried once, 60 + 20 succeed, 1 stray. */
    assert_int_equal(st.succeeded, 80);
    assert_int_equal(st.retried, 20);
    assert_int_equal(st.failed, 40);
    assert_int_equal(st.unhandled, 1);
    assert_int_equal(st.dead_lettered, 21);
    assert_int_equal(st.received, 121);
    assert_int_equal(st.received, st.succeeded + st.retried + st.dead_lettered);
    assert_int_equal(st.latency_count, st.received);

    struct evq_queue_stats qs;
    assert_evq_ok(evq_queue_stats(q, &qs));
    assert_int_equal(qs.enqueued, 101);
    if (qs.dead >= 0)
        assert_int_equal(qs.dead, 21);
    if (qs.depth >= 0)
        assert_int_equal(qs.depth, 0);

    char *text = evq_stats_prometheus(q, w);
    assert_non_null(text);
    assert_non_null(strstr(text, "evq_worker_succeeded_total{queue=\""));
    assert_non_null(strstr(text, "} 80\n"));
    assert_non_null(strstr(text, "# TYPE evq_queue_enqueued_total counter"));
    assert_non_null(strstr(text, "quantile=\"0.999\""));
    free(text);
    evq_worker_free(w);
    evq_events_free(e);
    evq_queue_close(q);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: conformance URL\n");
        return 2;
    }
    base_url = argv[1];
    for (int i = 0;; i++)
        if (!promise_table[i].match ||
            strstr(base_url, promise_table[i].match)) {
            promises = promise_table[i].promises;
            why_not = promise_table[i].why;
            break;
        }
    printf("conformance suite on %s\n", base_url);
    if (getenv("EVQ_TEST_FILTER")) /* run only the tests matching it */
        cmocka_set_test_filter(getenv("EVQ_TEST_FILTER"));
    if (!(promises & PROMISE_BACKLOG))
        printf("note: %s\n", why_not[4]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_attribute_and_payload_survives),
        cmocka_unit_test(ack_removes),
        cmocka_unit_test(nack_redelivers_after_its_delay),
        cmocka_unit_test(delayed_enqueue_is_not_delivered_early),
        cmocka_unit_test(batch_enqueue_delivers_all),
        cmocka_unit_test(interrupt_wakes_a_blocked_dequeue),
        cmocka_unit_test(
            failing_twice_then_succeeding_is_processed_three_times),
        cmocka_unit_test(exhausted_attempts_go_to_the_dead_letter_queue),
        cmocka_unit_test(permanent_failures_skip_the_retries),
        cmocka_unit_test(unhandled_events_are_dead_lettered_or_acked),
        cmocka_unit_test(undecodable_bytes_reach_the_dead_letter_queue),
        cmocka_unit_test(every_event_is_handled_exactly_once),
        cmocka_unit_test(a_stopped_worker_loses_nothing),
        cmocka_unit_test(stats_add_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
