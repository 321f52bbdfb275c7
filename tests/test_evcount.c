/* The event count the memory backend sleeps on (src/evcount.h): a notifier
 * landing at any step of a waiter's way to sleep leaves the waiter either
 * awake or woken by the next notifier, and a sleeping thread is woken. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "testutil.h"

/* A late notifier can be made to land inside evc_prepare. */
struct evcount;
static void (*between_steps)(struct evcount *e);
#define EVC_BETWEEN_STEPS(e)                                                   \
    do {                                                                       \
        if (between_steps)                                                     \
            between_steps(e);                                                  \
    } while (0)
#include "evcount.h"

/* Where the late notifier lands on the waiter's way to sleep. */
enum { BEFORE_PREPARE, INSIDE_PREPARE, BEFORE_RECHECK, AFTER_RECHECK, SPOTS };

/* The race behind a lost wake-up, replayed one step at a time on one
 * thread: a producer puts an item and is delayed before its notify; the
 * consumer takes that item, finds nothing more and goes to sleep; the late
 * notify lands at `spot`; then the producer puts a second item and
 * notifies.  The consumer must not sleep through the second item: its
 * re-check saw it, or its key is stale so the sleep returns at once. */
static void a_late_notify_anywhere_loses_no_wakeup(void **state)
{
    (void)state;
    for (int spot = 0; spot < SPOTS; spot++) {
        evcount e = {0};
        int items = 1; /* the producer's first item; its notify is late */
        items--;       /* the consumer takes it */

        if (spot == BEFORE_PREPARE)
            evc_notify(&e);
        between_steps = spot == INSIDE_PREPARE ? evc_notify : NULL;
        unsigned key = evc_prepare(&e);
        between_steps = NULL;
        if (spot == BEFORE_RECHECK)
            evc_notify(&e);
        bool saw_item = items > 0; /* the re-check */
        if (spot == AFTER_RECHECK)
            evc_notify(&e);

        items++; /* the second item */
        evc_notify(&e);

        if (saw_item)
            continue;
        /* The futex sleeps only while the word equals the key. */
        if (atomic_load(&e.seq) == key)
            fail_msg("late notify at spot %d: the consumer would sleep "
                     "through a pending item (key %u still current, "
                     "sleepers %d)",
                     spot, key, atomic_load(&e.sleepers));
        /* ... and so this returns at once rather than at the deadline. */
        evc_wait(&e, key, evq__now_mono_ns() + 10 * 1000000000LL);
    }
}

static void a_notify_with_nobody_asleep_is_free(void **state)
{
    (void)state;
    evcount e = {0};
    evc_notify(&e);
    assert_int_equal(atomic_load(&e.seq), 0); /* no bump, so no syscall */
    unsigned key = evc_prepare(&e);
    assert_int_equal(atomic_load(&e.sleepers), 1);
    evc_notify(&e);
    assert_int_equal(atomic_load(&e.sleepers), 0);
    assert_int_not_equal(atomic_load(&e.seq), key);
}

struct sleeper {
    evcount e;
    atomic_int items;
    atomic_int taken;
};

/* A consumer loop like memory_dequeue's, without the spinning. */
static void *sleeper_main(void *arg)
{
    struct sleeper *s = arg;
    int64_t deadline = evq__now_mono_ns() + 60 * 1000000000LL;
    while (evq__now_mono_ns() < deadline) {
        int n = atomic_load(&s->items);
        if (n > 0 && atomic_compare_exchange_strong(&s->items, &n, n - 1)) {
            atomic_fetch_add(&s->taken, 1);
            return NULL;
        }
        unsigned key = evc_prepare(&s->e);
        if (atomic_load(&s->items) > 0)
            continue;
        evc_wait(&s->e, key, deadline);
    }
    return NULL;
}

static void a_sleeping_thread_is_woken(void **state)
{
    (void)state;
    struct sleeper s = {0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, sleeper_main, &s), 0);
    /* Wait until it has announced itself, then give it work. */
    while (!atomic_load(&s.e.sleepers))
        sched_yield();
    atomic_fetch_add(&s.items, 1);
    evc_notify(&s.e);
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&s.taken), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_late_notify_anywhere_loses_no_wakeup),
        cmocka_unit_test(a_notify_with_nobody_asleep_is_free),
        cmocka_unit_test(a_sleeping_thread_is_woken),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
