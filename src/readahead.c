/*
 * readahead.c - the backend kit's read-ahead: one buffer of deliveries per
 * handle, filled by the backend's `fetch` (one round trip for up to
 * `prefetch` of them) and handed out in batches.
 *
 * One thread at a time fetches (rd_mu); the others take what it buffered,
 * or wait for the reader's lock.  Fetches wait in slices of at most
 * SLICE_MS, so an interrupt is seen within one even when the broker's
 * client cannot be woken.  What the handle fetched and never handed out
 * goes back to the broker on interrupt and on close (the backend's
 * hand_back).
 *
 * Two things several brokers need ride along:
 * - delays by header: a delivery whose `due_ms` (Unix ms, from the
 *   headers spelled EVQ__HDR_DUE / EVQ__HDR_ATTEMPT) is later than now is
 *   not handed out early.  A backend with leases gives it back with the
 *   rest of its delay (the broker holds it, as NATS does with a delayed
 *   NAK); one without keeps it here until due (Kafka).
 * - ordering keys: of deliveries that carry the same `key`, one at a time
 *   is out; the next is handed out once the first is settled.
 * And the reconnect policy: a fetch that fails with EVQ_ECONN is tried
 * again after a pause that grows from reconnect_initial_ms to
 * reconnect_max_ms, until the caller's timeout.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLICE_MS 250 /* longest fetch: an interrupt is seen within it */
#define KEY_WAIT_MS 5 /* a fetch while buffered events wait for their key */

struct evq__ra {
    const struct evq_backend_ops *ops;
    void *state;
    size_t prefetch;
    evq__reconnect rc_policy;
    pthread_mutex_t rd_mu; /* the fetcher; taken before mu */
    pthread_mutex_t mu;    /* everything below */
    evq__delivery *buf;    /* fetched, due, not handed out: buf[head..) */
    size_t head, n, cap;
    evq__delivery *held; /* fetched, not yet due (backends without leases) */
    size_t n_held, cap_held;
    int64_t next_due_ms; /* earliest due of held; INT64_MAX when none */
    const char **busy;   /* keys of deliveries out */
    size_t n_busy, cap_busy;
    evq__delivery *got; /* the fetcher's (rd_mu) */
    atomic_bool interrupted;
};

static int64_t now_ms(void)
{
    return evq__now_real_ns() / 1000000;
}

int evq__ra_new(evq__ra **out, const struct evq_backend_ops *ops, void *state,
                size_t prefetch, const evq__reconnect *policy)
{
    evq__ra *ra = calloc(1, sizeof *ra);
    if (!ra || !(ra->got = calloc(prefetch, sizeof *ra->got))) {
        free(ra);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    ra->ops = ops;
    ra->state = state;
    ra->prefetch = prefetch;
    ra->rc_policy = *policy;
    ra->next_due_ms = INT64_MAX;
    pthread_mutex_init(&ra->rd_mu, NULL);
    pthread_mutex_init(&ra->mu, NULL);
    atomic_init(&ra->interrupted, false);
    *out = ra;
    return 0;
}

/* Gives back everything buffered or held (mu held). */
static void hand_back_all(evq__ra *ra)
{
    if (ra->n)
        ra->ops->hand_back(ra->state, ra->buf + ra->head, ra->n);
    if (ra->n_held)
        ra->ops->hand_back(ra->state, ra->held, ra->n_held);
    ra->n = ra->head = ra->n_held = 0;
    ra->next_due_ms = INT64_MAX;
}

void evq__ra_free(evq__ra *ra)
{
    if (!ra)
        return;
    hand_back_all(ra);
    free(ra->buf);
    free(ra->held);
    free(ra->busy);
    free(ra->got);
    pthread_mutex_destroy(&ra->rd_mu);
    pthread_mutex_destroy(&ra->mu);
    free(ra);
}

size_t evq__ra_buffered(evq__ra *ra)
{
    pthread_mutex_lock(&ra->mu);
    size_t n = ra->n + ra->n_held;
    pthread_mutex_unlock(&ra->mu);
    return n;
}

void evq__ra_interrupt(evq__ra *ra)
{
    atomic_store(&ra->interrupted, true);
    pthread_mutex_lock(&ra->mu);
    hand_back_all(ra);
    pthread_mutex_unlock(&ra->mu);
}

/* Appends d to the buffer (mu held). */
static int buffer_add(evq__ra *ra, const evq__delivery *d)
{
    if (ra->head && ra->head + ra->n == ra->cap) {
        memmove(ra->buf, ra->buf + ra->head, ra->n * sizeof *ra->buf);
        ra->head = 0;
    }
    if (evq__grow(&ra->buf, &ra->cap, ra->head + ra->n, sizeof *ra->buf))
        return EVQ_ENOMEM;
    ra->buf[ra->head + ra->n++] = *d;
    return 0;
}

/* Takes in what a fetch gave (mu held): due deliveries to the buffer,
 * early ones back to the broker with the rest of their delay, or held
 * here until due. */
static void take_in(evq__ra *ra, evq__delivery *got, size_t n)
{
    int64_t now = n ? now_ms() : 0;
    for (size_t i = 0; i < n; i++) {
        evq__delivery *d = &got[i];
        if (atomic_load(&ra->interrupted)) {
            ra->ops->hand_back(ra->state, d, n - i);
            return;
        }
        if (d->due_ms > now && ra->ops->touch) {
            ra->ops->nack(ra->state, d, d->due_ms - now);
            continue;
        }
        if (d->due_ms > now) {
            if (evq__grow(&ra->held, &ra->cap_held, ra->n_held,
                          sizeof *ra->held) == 0) {
                ra->held[ra->n_held++] = *d;
                if (d->due_ms < ra->next_due_ms)
                    ra->next_due_ms = d->due_ms;
                continue;
            }
        } else if (buffer_add(ra, d) == 0) {
            continue;
        }
        ra->ops->hand_back(ra->state, d, 1); /* out of memory: the broker
                                                keeps it */
    }
}

/* Moves held deliveries that came due to the buffer (mu held). */
static void release_due(evq__ra *ra)
{
    if (ra->next_due_ms == INT64_MAX)
        return;
    int64_t now = now_ms(), next = INT64_MAX;
    size_t k = 0;
    for (size_t i = 0; i < ra->n_held; i++) {
        evq__delivery *d = &ra->held[i];
        if (d->due_ms <= now && buffer_add(ra, d) == 0)
            continue;
        if (d->due_ms < next)
            next = d->due_ms;
        ra->held[k++] = *d;
    }
    ra->n_held = k;
    ra->next_due_ms = next;
}

static bool key_busy(const evq__ra *ra, const char *key)
{
    for (size_t i = 0; i < ra->n_busy; i++)
        if (strcmp(ra->busy[i], key) == 0)
            return true;
    return false;
}

/* Hands out up to max buffered deliveries, oldest first, passing over
 * those whose key has a delivery out (mu held). */
static size_t pop(evq__ra *ra, evq__delivery *out, size_t max)
{
    size_t got = 0, k = 0;
    release_due(ra);
    if (ra->n == 0)
        return 0;
    evq__delivery *b = ra->buf + ra->head;
    size_t i = 0;
    for (; i < ra->n && got < max; i++) {
        const char *key = b[i].key;
        if (key && (key_busy(ra, key) ||
                    evq__grow(&ra->busy, &ra->cap_busy, ra->n_busy,
                              sizeof *ra->busy))) {
            b[k++] = b[i]; /* stays, in order */
            continue;
        }
        if (key)
            ra->busy[ra->n_busy++] = key;
        out[got++] = b[i];
    }
    /* close the gaps: what was passed over, then what was not looked at */
    if (k < i)
        memmove(b + k, b + i, (ra->n - i) * sizeof *b);
    ra->n -= got;
    if (ra->n == 0)
        ra->head = 0;
    return got;
}

void evq__ra_settled(evq__ra *ra, const evq__delivery *d)
{
    if (!d->key)
        return;
    pthread_mutex_lock(&ra->mu);
    for (size_t i = 0; i < ra->n_busy; i++)
        if (ra->busy[i] == d->key) {
            ra->busy[i] = ra->busy[--ra->n_busy];
            break;
        }
    pthread_mutex_unlock(&ra->mu);
}

/* Hands out what pop gives; *waiting: deliveries stay buffered (for
 * their keys), *full: as many as a fetch brings. */
static size_t take(evq__ra *ra, evq__delivery *out, size_t max,
                   bool *waiting, bool *full)
{
    pthread_mutex_lock(&ra->mu);
    size_t n = pop(ra, out, max);
    *waiting = ra->n > 0;
    *full = ra->n >= ra->prefetch;
    pthread_mutex_unlock(&ra->mu);
    return n;
}

void evq__reconnect_init(evq__reconnect *r, const evq__optset *set)
{
    r->initial_ms = set->core.reconnect_initial_ms;
    r->max_ms = set->core.reconnect_max_ms;
    if (r->max_ms < r->initial_ms)
        r->max_ms = r->initial_ms;
}

int64_t evq__reconnect_pause_ms(const evq__reconnect *r, int failures)
{
    int64_t p = r->initial_ms;
    for (int i = 1; i < failures && p < r->max_ms; i++)
        p *= 2;
    return p < r->max_ms ? p : r->max_ms;
}

void evq__sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Takes the reader's lock by the caller's deadline: false when another
 * thread reads until then.  The reader gives the lock up and takes it
 * again every slice, and a mutex is not fair: a waiter without a deadline
 * here could wait past its own while the reader waits for events this
 * waiter's thread holds (a worker gathering a batch). */
static bool lock_reader(evq__ra *ra, int timeout_ms, int64_t deadline)
{
    if (timeout_ms == 0)
        return pthread_mutex_trylock(&ra->rd_mu) == 0;
    if (deadline == INT64_MAX) {
        pthread_mutex_lock(&ra->rd_mu);
        return true;
    }
    /* timedlock waits on the realtime clock: convert the deadline */
    int64_t left = deadline - evq__now_mono_ns();
    struct timespec ts =
        evq__ts_from_ns(evq__now_real_ns() + (left > 0 ? left : 0));
    return pthread_mutex_timedlock(&ra->rd_mu, &ts) == 0;
}

int evq__ra_take(evq__ra *ra, evq__delivery *out, size_t max, int timeout_ms)
{
    int64_t deadline = evq__deadline_ns(timeout_ms);
    int failures = 0;
    char away[512] = ""; /* why the broker is away, told at the deadline */
    int away_rc = 0;
    bool waiting, full;

    for (;;) {
        if (atomic_load(&ra->interrupted))
            return evq__err(EVQ_ECLOSED, "queue interrupted");
        size_t n = take(ra, out, max, &waiting, &full);
        if (n)
            return (int)n;
        if (!lock_reader(ra, timeout_ms, deadline)) {
            if ((n = take(ra, out, max, &waiting, &full)) != 0)
                return (int)n;
            if (atomic_load(&ra->interrupted))
                return evq__err(EVQ_ECLOSED, "queue interrupted");
            if (away[0])
                return evq__err(away_rc, "%s", away);
            if (timeout_ms == 0)
                return evq__err(EVQ_ETIMEDOUT, "another thread is reading");
            return evq__err(EVQ_ETIMEDOUT, "no event within %d ms",
                            timeout_ms);
        }
        if (atomic_load(&ra->interrupted)) {
            pthread_mutex_unlock(&ra->rd_mu);
            return evq__err(EVQ_ECLOSED, "queue interrupted");
        }
        if ((n = take(ra, out, max, &waiting, &full)) != 0) {
            pthread_mutex_unlock(&ra->rd_mu);
            return (int)n;
        }
        int64_t left = deadline == INT64_MAX
                           ? INT64_MAX
                           : (deadline - evq__now_mono_ns()) / 1000000;
        int64_t wait = timeout_ms == 0 ? 0 : waiting ? KEY_WAIT_MS : SLICE_MS;
        if (left < wait)
            wait = left > 0 ? left : 0;
        pthread_mutex_lock(&ra->mu);
        if (ra->next_due_ms != INT64_MAX && ra->next_due_ms - now_ms() < wait)
            wait = ra->next_due_ms - now_ms() > 0 ? ra->next_due_ms - now_ms()
                                                  : 0;
        pthread_mutex_unlock(&ra->mu);
        /* Buffered events all wait for their keys: fetch more only while
         * the buffer has room. */
        int got = 0;
        if (!full)
            got = ra->ops->fetch(ra->state, ra->got, ra->prefetch, (int)wait);
        else
            evq__sleep_ms(wait);
        if (got > 0) {
            pthread_mutex_lock(&ra->mu);
            take_in(ra, ra->got, (size_t)got);
            pthread_mutex_unlock(&ra->mu);
        }
        pthread_mutex_unlock(&ra->rd_mu);
        if ((n = take(ra, out, max, &waiting, &full)) != 0)
            return (int)n;
        if (got < 0 && (got != EVQ_ECONN || timeout_ms == 0))
            return got;
        if (got == EVQ_ECONN) {
            /* The broker is away: try again after a pause, never past
             * the deadline. */
            snprintf(away, sizeof away, "%s", evq_errmsg());
            away_rc = got;
            int64_t pause = evq__reconnect_pause_ms(&ra->rc_policy, ++failures);
            left = deadline == INT64_MAX
                       ? INT64_MAX
                       : (deadline - evq__now_mono_ns()) / 1000000;
            evq__sleep_ms(pause < left ? pause : left);
        } else if (got >= 0) {
            failures = 0;
            if (got > 0)
                away[0] = '\0';
        }
        if (timeout_ms == 0 || evq__now_mono_ns() >= deadline) {
            if (away[0])
                return evq__err(away_rc, "%s", away);
            return evq__err(EVQ_ETIMEDOUT, "no event within %d ms",
                            timeout_ms);
        }
    }
}
