/* The queue core: argument checks on every entry point, queue names. */
#include "testutil.h"

static void null_arguments_are_refused(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    evq_event *ev = evq_event_new("t", NULL);
    struct evq_queue_stats st;

    assert_evq_err(evq_queue_open(NULL, "memory://", "q", NULL), EVQ_EINVAL);
    assert_evq_err(evq_queue_open(&q, NULL, "q", NULL), EVQ_EINVAL);
    assert_null(q);
    assert_evq_err(evq_queue_open(&q, "memory://", NULL, NULL), EVQ_EINVAL);
    assert_evq_ok(evq_queue_open(&q, "memory://", "core-null", NULL));
    assert_evq_err(evq_enqueue(NULL, ev), EVQ_EINVAL);
    assert_evq_err(evq_enqueue(q, NULL), EVQ_EINVAL);
    assert_evq_err(evq_enqueue_delayed(q, NULL, 5), EVQ_EINVAL);
    assert_evq_err(evq_enqueue_batch(q, NULL, 3), EVQ_EINVAL);
    assert_evq_err(evq_dequeue(NULL, &m, 0), EVQ_EINVAL);
    assert_evq_err(evq_dequeue(q, NULL, 0), EVQ_EINVAL);
    assert_evq_err(evq_ack(NULL), EVQ_EINVAL);
    assert_evq_err(evq_nack(NULL, 0), EVQ_EINVAL);
    assert_evq_err(evq_queue_stats(NULL, &st), EVQ_EINVAL);
    assert_evq_err(evq_queue_stats(q, NULL), EVQ_EINVAL);
    assert_null(evq_msg_event(NULL));
    assert_null(evq_queue_name(NULL));
    assert_string_equal(evq_queue_name(q), "core-null");
    assert_string_equal(evq_queue_scheme(q), "memory");
    evq_queue_close(q);
    evq_queue_close(NULL);
    evq_event_free(ev);
    /* Accessors tolerate NULL events. */
    assert_null(evq_event_type(NULL));
    assert_null(evq_event_attr(NULL, "id"));
    assert_int_equal(evq_event_attempt(NULL), 0);
    assert_int_equal(evq_event_time_ns(NULL), 0);
}

static void queue_names_are_checked(void **state)
{
    (void)state;
    evq_queue *q;
    char long_name[300];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    static const char *bad[] = {"",      "has space",   "slash/name",
                                "star*", "caf\xc3\xa9", "new\nline"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_evq_err(evq_queue_open(&q, "memory://", bad[i], NULL),
                       EVQ_EINVAL);
        assert_errmsg_has("queue name");
    }
    assert_evq_err(evq_queue_open(&q, "memory://", long_name, NULL),
                   EVQ_EINVAL);
    assert_evq_ok(evq_queue_open(&q, "memory://", "Orders_v2.high-prio", NULL));
    evq_queue_close(q);
}

static void negative_nack_delay_counts_as_zero(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    evq_event *ev = evq_event_new("t", NULL);
    assert_evq_ok(evq_queue_open(&q, "memory://", "neg-nack", NULL));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 0));
    assert_evq_ok(evq_nack(m, -5));
    assert_evq_ok(evq_dequeue(q, &m, 0));
    assert_evq_ok(evq_ack(m));
    evq_queue_close(q);
    evq_event_free(ev);
}

/* A replay sends the letter's event again without its dead-letter marks;
 * a letter cut short is refused and stays. */
static void replay_strips_the_marks_and_refuses_a_cut_letter(void **state)
{
    (void)state;
    evq_queue *q, *dead;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, "memory://", "replay.q", NULL));
    evq_event *ok = evq_event_new("t", NULL), *cut = evq_event_new("t", NULL);
    assert_evq_ok(evq_event_set_attr(cut, "evqtruncated", "70000"));
    assert_evq_ok(evq_enqueue(q, ok));
    assert_evq_ok(evq_enqueue(q, cut));
    for (int i = 0; i < 2; i++) {
        assert_evq_ok(evq_dequeue(q, &m, 1000));
        assert_evq_ok(evq_msg_dead_letter(m, "failed"));
    }
    assert_evq_ok(evq_queue_open_dead(&dead, q));
    assert_evq_ok(evq_dequeue(dead, &m, 1000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(ok));
    assert_string_equal(evq_event_attr(evq_msg_event(m), "evqerror"),
                        "failed");
    assert_evq_ok(evq_msg_replay(m, q));
    assert_evq_ok(evq_dequeue(dead, &m, 1000));
    assert_evq_err(evq_msg_replay(m, q), EVQ_EINVAL);
    assert_errmsg_has("cut short");
    /* back: the cut one waits in the dead letters, the other in q */
    assert_evq_ok(evq_dequeue(dead, &m, 1000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(cut));
    assert_evq_ok(evq_ack(m));
    assert_evq_ok(evq_dequeue(q, &m, 1000));
    const evq_event *got = evq_msg_event(m);
    assert_string_equal(evq_event_id(got), evq_event_id(ok));
    assert_null(evq_event_attr(got, "evqerror"));
    assert_null(evq_event_attr(got, "evqattempts"));
    assert_non_null(evq_event_attr(got, "evqreplayed"));
    assert_evq_ok(evq_ack(m));
    assert_evq_err(evq_msg_replay(NULL, q), EVQ_EINVAL);
    evq_event_free(ok);
    evq_event_free(cut);
    evq_queue_close(dead);
    evq_queue_close(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(null_arguments_are_refused),
        cmocka_unit_test(queue_names_are_checked),
        cmocka_unit_test(negative_nack_delay_counts_as_zero),
        cmocka_unit_test(replay_strips_the_marks_and_refuses_a_cut_letter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
