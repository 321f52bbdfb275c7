/*
 * evcount.h - event counts over futexes: how the memory backend's consumers
 * and producers sleep without a lock on the busy path.
 *
 * A waiter takes a key (the sequence word), announces itself in `sleepers`,
 * re-checks its condition, and sleeps on the word only if the key is still
 * current.  A notifier, after making its change, clears `sleepers` and, if
 * someone had announced itself, bumps the word and wakes every sleeper.  So
 * the busy path makes no system call, and a waiter is never left asleep:
 *
 *   - if the notifier's change came before the re-check, the re-check sees
 *     it and the waiter does not sleep;
 *   - otherwise the notifier sees the announcement (all of these are seq_cst
 *     operations, so one of the two must see the other) and bumps the word;
 *     the key was read before the announcement, hence before that bump, so
 *     the sleep returns at once or is woken.
 *
 * The order inside evc_prepare matters: with the announcement first and the
 * key read after it, a notifier whose change the waiter had already consumed
 * could clear the announcement between the two, the key would then be the
 * bumped word, and the next notifier, finding nobody announced, would leave
 * the waiter asleep with work pending.  tests/test_evcount.c replays that.
 */
#ifndef EVQ_EVCOUNT_H
#define EVQ_EVCOUNT_H

#include "internal.h"

#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Runs between the two steps of evc_prepare; a test defines it to land a
 * notifier there. */
#ifndef EVC_BETWEEN_STEPS
#define EVC_BETWEEN_STEPS(e) ((void)(e))
#endif

typedef struct evcount {
    atomic_uint seq;
    atomic_int sleepers;
} evcount;

/* Called after the change a sleeper waits for was made by a seq_cst
 * operation (the memory backend's compare-and-swaps, flags and due times
 * are): see the file comment.  On x86 the first load costs no fence. */
static inline void evc_notify(evcount *e)
{
    if (atomic_load_explicit(&e->sleepers, memory_order_seq_cst) &&
        atomic_exchange_explicit(&e->sleepers, 0, memory_order_seq_cst)) {
        atomic_fetch_add_explicit(&e->seq, 1, memory_order_release);
        syscall(SYS_futex, &e->seq, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    }
}

/* Returns the key to sleep on and announces a sleeper.  The caller
 * re-checks its condition after this and before evc_wait. */
static inline unsigned evc_prepare(evcount *e)
{
    unsigned key = atomic_load_explicit(&e->seq, memory_order_seq_cst);
    EVC_BETWEEN_STEPS(e);
    atomic_store_explicit(&e->sleepers, 1, memory_order_seq_cst);
    return key;
}

/* Sleeps until the word moves past `key`, a wake-up, or `deadline`
 * (CLOCK_MONOTONIC ns; INT64_MAX: none).  May return early: callers loop
 * over their condition. */
static inline void evc_wait(evcount *e, unsigned key, int64_t deadline)
{
    struct timespec ts, *tp = NULL;
    if (deadline != INT64_MAX) {
        ts = evq__ts_from_ns(deadline);
        tp = &ts;
    }
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline. */
    syscall(SYS_futex, &e->seq, FUTEX_WAIT_BITSET_PRIVATE, key, tp, NULL,
            FUTEX_BITSET_MATCH_ANY);
}

#endif
