/* The memory:// backend: ordering, ack/nack, delays, bounds, interrupt,
 * sharing by name, encoded mode, dead letters, and many threads at once. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static evq_event *numbered(json_int_t n)
{
    evq_event *ev = evq_event_new("test.numbered", json_integer(n));
    assert_non_null(ev);
    return ev;
}

static json_int_t number_of(const evq_msg *m)
{
    return json_integer_value(evq_event_data(evq_msg_event(m)));
}

static evq_queue *open_q(const char *url, const char *name)
{
    evq_queue *q;
    assert_evq_ok(evq_queue_open(&q, url, name, NULL));
    return q;
}

static void one_producer_is_fifo(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://", "fifo");
    for (int i = 0; i < 1000; i++) {
        evq_event *ev = numbered(i);
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
    }
    for (int i = 0; i < 1000; i++) {
        evq_msg *m;
        assert_evq_ok(evq_dequeue(q, &m, 0));
        assert_int_equal(number_of(m), i);
        assert_int_equal(evq_event_attempt(evq_msg_event(m)), 1);
        assert_evq_ok(evq_ack(m));
    }
    evq_msg *m;
    assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ETIMEDOUT);
    assert_null(m);
    evq_queue_close(q);
}

static void ack_removes(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://", "ack-removes");
    struct evq_queue_stats st;
    evq_event *ev = numbered(1);
    evq_msg *m;

    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.depth, 1);
    assert_evq_ok(evq_dequeue(q, &m, 0));
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.in_flight, 1);
    assert_evq_ok(evq_ack(m));
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.delayed, 0);
    assert_int_equal(st.enqueued, 1);
    assert_int_equal(st.dequeued, 1);
    assert_int_equal(st.acked, 1);
    assert_evq_err(evq_dequeue(q, &m, 50), EVQ_ETIMEDOUT);
    evq_event_free(ev);
    evq_queue_close(q);
}

static void nack_redelivers_after_its_delay(void **state)
{
    (void)state;
    const char *urls[] = {"memory://", "memory://?format=msgpack"};
    for (int u = 0; u < 2; u++) {
        char name[32];
        snprintf(name, sizeof name, "nack-%d", u);
        evq_queue *q = open_q(urls[u], name);
        evq_event *ev = numbered(7);
        evq_msg *m;
        struct evq_queue_stats st;

        assert_evq_ok(evq_enqueue(q, ev));
        assert_evq_ok(evq_dequeue(q, &m, 0));
        assert_int_equal(evq_event_attempt(evq_msg_event(m)), 1);
        int64_t t0 = now_ms();
        assert_evq_ok(evq_nack(m, 200));
        assert_evq_ok(evq_queue_stats(q, &st));
        assert_int_equal(st.delayed, 1);
        assert_int_equal(st.nacked, 1);
        assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ETIMEDOUT);
        assert_evq_ok(evq_dequeue(q, &m, 5000));
        assert_true(now_ms() - t0 >= 200);
        assert_int_equal(number_of(m), 7);
        assert_int_equal(evq_event_attempt(evq_msg_event(m)), 2);
        assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(ev));
        /* A nack without delay puts it back at once. */
        assert_evq_ok(evq_nack(m, 0));
        assert_evq_ok(evq_dequeue(q, &m, 0));
        assert_int_equal(evq_event_attempt(evq_msg_event(m)), 3);
        assert_evq_ok(evq_ack(m));
        evq_event_free(ev);
        evq_queue_close(q);
    }
}

static void delayed_enqueue_is_not_early(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://", "delayed");
    evq_event *late = numbered(1), *early = numbered(2), *now = numbered(3);
    evq_msg *m;

    int64_t t0 = now_ms();
    assert_evq_ok(evq_enqueue_delayed(q, late, 300));
    assert_evq_ok(evq_enqueue_delayed(q, early, 150));
    assert_evq_ok(evq_enqueue_delayed(q, now, 0));
    assert_evq_err(evq_enqueue_delayed(q, now, -1), EVQ_EINVAL);
    assert_evq_ok(evq_dequeue(q, &m, 0));
    assert_int_equal(number_of(m), 3);
    assert_evq_ok(evq_ack(m));
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_true(now_ms() - t0 >= 150);
    assert_int_equal(number_of(m), 2);
    assert_evq_ok(evq_ack(m));
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_true(now_ms() - t0 >= 300);
    assert_int_equal(number_of(m), 1);
    assert_evq_ok(evq_ack(m));
    evq_event_free(late);
    evq_event_free(early);
    evq_event_free(now);
    evq_queue_close(q);
}

struct producer {
    evq_queue *q;
    evq_event *ev;
    atomic_int done;
    int rc;
};

static void *produce_one(void *arg)
{
    struct producer *p = arg;
    p->rc = evq_enqueue(p->q, p->ev);
    atomic_store(&p->done, 1);
    return NULL;
}

static void full_queue_blocks_the_producer(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://?capacity=2", "blocking");
    evq_event *ev = numbered(1);
    struct producer p = {.q = q, .ev = ev};
    pthread_t t;
    evq_msg *m;

    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_enqueue(q, ev));
    pthread_create(&t, NULL, produce_one, &p);
    /* Give the producer time to run; it must still be waiting. */
    struct timespec pause = {0, 100 * 1000000};
    nanosleep(&pause, NULL);
    assert_int_equal(atomic_load(&p.done), 0);
    /* Taking one out makes room (in-flight events do not count). */
    assert_evq_ok(evq_dequeue(q, &m, 0));
    pthread_join(t, NULL);
    assert_evq_ok(p.rc);
    assert_evq_ok(evq_ack(m));

    /* overflow=error on another handle of the same queue */
    evq_queue *q2 = open_q("memory://?overflow=error", "blocking");
    assert_evq_err(evq_enqueue(q2, ev), EVQ_EFULL);
    assert_errmsg_has("full");
    const evq_event *batch[] = {ev, ev};
    assert_evq_ok(evq_dequeue(q, &m, 0));
    assert_evq_ok(evq_ack(m));
    /* A batch that does not fit is refused whole. */
    assert_evq_err(evq_enqueue_batch(q2, batch, 2), EVQ_EFULL);
    struct evq_queue_stats st;
    evq_queue_stats(q2, &st);
    assert_int_equal(st.depth, 1);
    evq_queue_close(q2);
    evq_queue_close(q);
    evq_event_free(ev);
}

static void *blocked_dequeue(void *arg)
{
    evq_msg *m;
    return (void *)(intptr_t)evq_dequeue(arg, &m, -1);
}

static void interrupt_wakes_blocked_callers(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://", "interrupt");
    evq_queue *other = open_q("memory://", "interrupt");
    pthread_t t[3];
    void *rc;

    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, blocked_dequeue, q);
    assert_evq_ok(evq_queue_interrupt(q));
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], &rc);
        assert_int_equal((int)(intptr_t)rc, EVQ_ECLOSED);
    }
    /* Sticky for this handle, and for producers too... */
    evq_msg *m;
    evq_event *ev = numbered(1);
    assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ECLOSED);
    assert_evq_err(evq_enqueue(q, ev), EVQ_ECLOSED);
    /* ...but other handles on the same queue carry on. */
    assert_evq_ok(evq_enqueue(other, ev));
    assert_evq_ok(evq_dequeue(other, &m, 0));
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(q);
    evq_queue_close(other);
    assert_evq_err(evq_queue_interrupt(NULL), EVQ_EINVAL);
}

/* A deleted queue: a new open of its name starts empty, while a handle
 * that was open keeps the old queue until it closes (valgrind and ASan
 * see the last close free it with what it held). */
static void a_deleted_queue_stays_with_its_open_handles(void **state)
{
    (void)state;
    evq_queue *a = open_q("memory://", "deleted");
    evq_queue *b = open_q("memory://", "deleted");
    evq_event *ev = numbered(1);
    evq_msg *m;
    assert_evq_ok(evq_enqueue(a, ev));
    assert_evq_ok(evq_enqueue(a, ev));
    assert_evq_ok(evq_queue_delete(a));
    assert_evq_ok(evq_queue_delete(a)); /* twice: nothing more to do */
    evq_queue *c = open_q("memory://", "deleted");
    assert_evq_err(evq_dequeue(c, &m, 0), EVQ_ETIMEDOUT);
    assert_evq_ok(evq_dequeue(b, &m, 0)); /* the old queue, through b */
    assert_evq_ok(evq_ack(m));
    evq_queue_close(a);
    evq_queue_close(b); /* frees the old queue and the event left in it */
    assert_evq_ok(evq_enqueue(c, ev));
    assert_evq_ok(evq_dequeue(c, &m, 0));
    assert_evq_ok(evq_ack(m));
    evq_queue_close(c);
    evq_event_free(ev);
    assert_evq_err(evq_queue_delete(NULL), EVQ_EINVAL);
}

/* Events enqueued asynchronously without a done callback: their failures
 * (a full memory queue with overflow=error) are counted and the next
 * evq_flush reports them, once. */
static void flush_reports_failures_nobody_was_told_of(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://?capacity=1&overflow=error", "silent");
    evq_event *ev = numbered(1);
    assert_evq_ok(evq_enqueue(q, ev)); /* full: what follows cannot fit */
    for (int i = 0; i < 5; i++)
        assert_evq_ok(evq_enqueue_async(q, ev, 0, NULL, NULL));
    assert_evq_err(evq_flush(q, 10000), EVQ_EFULL);
    assert_errmsg_has("without a done callback failed");
    assert_evq_ok(evq_flush(q, 10000)); /* told once */
    evq_event_free(ev);
    evq_queue_close(q);
}

static atomic_int closed_reports, other_reports;

static void count_closed(const char *id, int rc, void *arg)
{
    (void)id;
    (void)arg;
    atomic_fetch_add(rc == EVQ_ECLOSED ? &closed_reports : &other_reports, 1);
}

/* A full queue nobody reads (overflow=block) and async events waiting for
 * room: close does not wait forever; after its grace second each event is
 * reported EVQ_ECLOSED. */
static void closing_a_full_queue_reports_what_cannot_fit(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://?capacity=1", "full-close");
    evq_event *ev = numbered(1);
    assert_evq_ok(evq_enqueue(q, ev)); /* full */
    for (int i = 0; i < 5; i++)
        assert_evq_ok(evq_enqueue_async(q, ev, 0, count_closed, NULL));
    int64_t t0 = now_ms();
    evq_queue_close(q);
    int64_t took = now_ms() - t0;
    assert_int_equal(atomic_load(&closed_reports), 5);
    assert_int_equal(atomic_load(&other_reports), 0);
    if (took < 900 || took > 10000)
        fail_msg("close took %lld ms, not about a second", (long long)took);
    /* the event that fitted is still there for the next handle */
    q = open_q("memory://?capacity=1", "full-close");
    evq_msg *m;
    assert_evq_ok(evq_dequeue(q, &m, 0));
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(q);
}

static void queues_are_shared_by_name(void **state)
{
    (void)state;
    evq_queue *a = open_q("memory://", "shared-a");
    evq_queue *a2 = open_q("memory://", "shared-a");
    evq_queue *b = open_q("memory://", "shared-b");
    evq_event *ev = numbered(5);
    evq_msg *m;

    assert_evq_ok(evq_enqueue(a, ev));
    assert_evq_err(evq_dequeue(b, &m, 0), EVQ_ETIMEDOUT);
    assert_evq_ok(evq_dequeue(a2, &m, 0));
    assert_int_equal(number_of(m), 5);
    assert_evq_ok(evq_ack(m));
    /* Events outlive the handles that enqueued them. */
    assert_evq_ok(evq_enqueue(b, ev));
    evq_queue_close(b);
    b = open_q("memory://", "shared-b");
    assert_evq_ok(evq_dequeue(b, &m, 0));
    assert_evq_ok(evq_ack(m));
    /* A second handle must agree on the format and the capacity. */
    evq_queue *bad;
    assert_evq_err(
        evq_queue_open(&bad, "memory://?format=json", "shared-a", NULL),
        EVQ_EINVAL);
    assert_errmsg_has("format");
    assert_evq_err(
        evq_queue_open(&bad, "memory://?capacity=3", "shared-a", NULL),
        EVQ_EINVAL);
    assert_errmsg_has("capacity");
    evq_event_free(ev);
    evq_queue_close(a);
    evq_queue_close(a2);
    evq_queue_close(b);
}

static void closing_keeps_unsettled_messages_valid(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://", "close-early");
    evq_event *ev = numbered(9);
    evq_msg *m1, *m2;

    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m1, 0));
    assert_evq_ok(evq_dequeue(q, &m2, 0));
    evq_queue_close(q);
    assert_int_equal(number_of(m1), 9);
    assert_evq_ok(evq_ack(m1));
    assert_evq_ok(evq_nack(m2, 0));
    q = open_q("memory://", "close-early");
    assert_evq_ok(evq_dequeue(q, &m1, 0));
    assert_int_equal(evq_event_attempt(evq_msg_event(m1)), 2);
    assert_evq_ok(evq_ack(m1));
    evq_queue_close(q);
    evq_event_free(ev);
}

static void encoded_mode_round_trips_and_isolates(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://?format=json", "encoded");
    evq_event *ev = numbered(11);
    evq_msg *m;

    assert_evq_ok(evq_event_set_attr(ev, "subject", "s1"));
    assert_evq_ok(evq_enqueue(q, ev));
    /* Encoded on the way in: the caller's event is not shared. */
    assert_evq_ok(evq_event_set_attr(ev, "subject", "changed"));
    assert_evq_ok(evq_dequeue(q, &m, 0));
    assert_string_equal(evq_event_subject(evq_msg_event(m)), "s1");
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(ev));
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(q);
}

static void oversized_events_are_refused_by_reference_too(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://", "too-big");
    size_t big = 2 * 1024 * 1024;
    char *s = malloc(big + 1);
    memset(s, 'y', big);
    s[big] = '\0';
    evq_event *ev = evq_event_new("t", json_pack("{s:s}", "blob", s));
    assert_evq_err(evq_enqueue(q, ev), EVQ_ETOOBIG);
    assert_errmsg_has("max_event_bytes");
    struct evq_queue_stats st;
    evq_queue_stats(q, &st);
    assert_int_equal(st.depth, 0);
    evq_event_free(ev);
    free(s);
    evq_queue_close(q);
}

static void undecodable_messages_go_to_the_dead_letter_queue(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://?format=json", "junk");
    evq_queue *dead = open_q("memory://?format=json", "junk.dead");
    evq_event *ev = numbered(1);
    evq_msg *m;

    assert_evq_ok(evq__enqueue_raw(q, "\x01\x02not json", 10));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 0));
    assert_int_equal(number_of(m), 1);
    assert_evq_ok(evq_ack(m));
    assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ETIMEDOUT);

    assert_evq_ok(evq_dequeue(dead, &m, 0));
    const evq_event *d = evq_msg_event(m);
    size_t len;
    const void *raw = evq_event_binary(d, &len);
    assert_int_equal(len, 10);
    assert_memory_equal(raw, "\x01\x02not json", 10);
    assert_string_equal(evq_event_type(d), "evq.undecodable");
    assert_non_null(strstr(evq_event_attr(d, "evqerror"), "invalid JSON"));
    assert_string_equal(evq_event_attr(d, "evqattempts"), "1");
    assert_string_equal(evq_event_attr(d, "evqqueue"), "junk");
    assert_evq_ok(evq_ack(m));
    struct evq_queue_stats st;
    evq_queue_stats(q, &st);
    assert_int_equal(st.dead, 0);
    assert_int_equal(st.depth, 0);
    evq_event_free(ev);
    evq_queue_close(dead);
    evq_queue_close(q);
}

static void batch_enqueue_keeps_order(void **state)
{
    (void)state;
    evq_queue *q = open_q("memory://?capacity=4", "batch");
    evq_event *evs[10];
    evq_msg *m;
    for (int i = 0; i < 3; i++)
        evs[i] = numbered(i);
    assert_evq_ok(evq_enqueue_batch(q, (const evq_event *const *)evs, 3));
    assert_evq_ok(evq_enqueue_batch(q, (const evq_event *const *)evs, 0));
    const evq_event *with_null[] = {evs[0], NULL};
    assert_evq_err(evq_enqueue_batch(q, with_null, 2), EVQ_EINVAL);
    for (int i = 0; i < 3; i++) {
        assert_evq_ok(evq_dequeue(q, &m, 0));
        assert_int_equal(number_of(m), i);
        assert_evq_ok(evq_ack(m));
    }
    assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ETIMEDOUT);
    for (int i = 0; i < 3; i++)
        evq_event_free(evs[i]);
    evq_queue_close(q);
}

/* ---- 8 producers x 8 consumers x 100 000 events each --------------------- */

#define NPROD        8
#define NCONS        8
#define PER_PRODUCER 100000
#define TOTAL        (NPROD * PER_PRODUCER)

struct stress {
    evq_queue *q;
    _Atomic unsigned char seen[TOTAL];
    atomic_int consumed;
    atomic_int errors;
    int id;
};

struct worker_arg {
    struct stress *s;
    int id;
};

static void *stress_producer(void *arg)
{
    struct worker_arg *w = arg;
    for (int i = 0; i < PER_PRODUCER; i++) {
        evq_event *ev = numbered((json_int_t)w->id * PER_PRODUCER + i);
        if (!ev || evq_enqueue(w->s->q, ev) != 0)
            atomic_fetch_add(&w->s->errors, 1);
        evq_event_free(ev);
    }
    return NULL;
}

static void *stress_consumer(void *arg)
{
    struct worker_arg *w = arg;
    struct stress *s = w->s;
    for (;;) {
        evq_msg *m;
        int rc = evq_dequeue(s->q, &m, -1);
        if (rc == EVQ_ECLOSED)
            break;
        if (rc) {
            atomic_fetch_add(&s->errors, 1);
            break;
        }
        json_int_t n = number_of(m);
        if (n < 0 || n >= TOTAL)
            atomic_fetch_add(&s->errors, 1);
        else
            atomic_fetch_add(&s->seen[n], 1);
        if (evq_ack(m) != 0)
            atomic_fetch_add(&s->errors, 1);
        if (atomic_fetch_add(&s->consumed, 1) + 1 == TOTAL)
            evq_queue_interrupt(s->q); /* everything arrived: stop all */
    }
    return NULL;
}

static void many_producers_and_consumers_deliver_each_event_once(void **state)
{
    (void)state;
    struct stress *s = calloc(1, sizeof *s);
    pthread_t prod[NPROD], cons[NCONS];
    struct worker_arg pa[NPROD], ca[NCONS];

    /* A small capacity keeps producers blocking and waking throughout. */
    s->q = open_q("memory://?capacity=1024", "stress");
    for (int i = 0; i < NCONS; i++) {
        ca[i] = (struct worker_arg){s, i};
        pthread_create(&cons[i], NULL, stress_consumer, &ca[i]);
    }
    for (int i = 0; i < NPROD; i++) {
        pa[i] = (struct worker_arg){s, i};
        pthread_create(&prod[i], NULL, stress_producer, &pa[i]);
    }
    for (int i = 0; i < NPROD; i++)
        pthread_join(prod[i], NULL);
    for (int i = 0; i < NCONS; i++)
        pthread_join(cons[i], NULL);
    assert_int_equal(atomic_load(&s->errors), 0);
    assert_int_equal(atomic_load(&s->consumed), TOTAL);
    for (int i = 0; i < TOTAL; i++) {
        if (s->seen[i] != 1)
            fail_msg("event %d delivered %d times", i, s->seen[i]);
    }
    struct evq_queue_stats st;
    evq_queue_stats(s->q, &st);
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.in_flight, 0);
    assert_int_equal(st.enqueued, TOTAL);
    assert_int_equal(st.acked, TOTAL);
    evq_queue_close(s->q);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(one_producer_is_fifo),
        cmocka_unit_test(ack_removes),
        cmocka_unit_test(nack_redelivers_after_its_delay),
        cmocka_unit_test(delayed_enqueue_is_not_early),
        cmocka_unit_test(full_queue_blocks_the_producer),
        cmocka_unit_test(interrupt_wakes_blocked_callers),
        cmocka_unit_test(a_deleted_queue_stays_with_its_open_handles),
        cmocka_unit_test(flush_reports_failures_nobody_was_told_of),
        cmocka_unit_test(closing_a_full_queue_reports_what_cannot_fit),
        cmocka_unit_test(queues_are_shared_by_name),
        cmocka_unit_test(closing_keeps_unsettled_messages_valid),
        cmocka_unit_test(encoded_mode_round_trips_and_isolates),
        cmocka_unit_test(oversized_events_are_refused_by_reference_too),
        cmocka_unit_test(undecodable_messages_go_to_the_dead_letter_queue),
        cmocka_unit_test(batch_enqueue_keeps_order),
        cmocka_unit_test(many_producers_and_consumers_deliver_each_event_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
