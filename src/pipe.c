/*
 * pipe.c - the send pipeline of a queue handle: evq_enqueue_async,
 * evq_flush, and evq_enqueue as "asynchronous plus a wait".
 *
 * Accepted events (already encoded by the caller's thread) wait in one
 * list per handle.  Whoever finds events waiting and room for another
 * batch on its way sends everything waiting as one batch through the
 * backend's enqueue (one pipeline of XADDs, one transaction, one set of
 * delivery reports): one of the handle's sender threads for asynchronous
 * callers, or a synchronous caller itself.  So threads that enqueue at
 * once share round trips (group commit), a lone synchronous caller pays no
 * hand-off, and an asynchronous producer's batches grow to what the
 * backend takes in one round trip.
 *
 * A backend whose enqueue comes in two halves (start: hand the batch to
 * the broker's client; finish: wait for its acknowledgements) has up to
 * PIPE_OUT batches out at once: batches start one at a time, in the order
 * they were accepted, and their waits overlap (another starts while some
 * are out once PIPE_EAGER events wait, or at once when the backend's
 * batches wait out a linger).  Batches are reported in
 * that order too: each event's `done` runs on the thread that sent its
 * batch, after every earlier batch was reported.
 *
 * Memory: `max_in_flight` bounds what is accepted and not yet reported;
 * producers wait for room (or get EVQ_EFULL with overflow=error).
 */
#include "internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PIPE_MSG_MAX 512 /* as long as evq_errmsg() gets */

/* One accepted event, from its acceptance to its `done`. */
typedef struct pitem {
    struct pitem *next;
    evq__item it; /* bytes owned; it.ev a reference held (or NULL); it.id
                     a copy: in idbuf, or on the heap when longer */
    char idbuf[40];
    size_t group_left; /* events after this one of the same user batch */
    evq_enqueued_fn done;
    void *arg;
} pitem;

/* A synchronous caller's events: counted down by their `done`. */
typedef struct waiter {
    atomic_size_t left;
    int rc; /* the first failure, written before `left` reaches 0 */
    char msg[PIPE_MSG_MAX];
} waiter;

/* A batch on its way, on the stack of the thread sending it; in the
 * order batches were taken. */
typedef struct pbatch {
    struct pbatch *next;
} pbatch;

/* Most batches out at once (backends with start and finish), and so most
 * sender threads. */
#define PIPE_OUT 4

struct evq__pipe {
    evq__pipe_ops ops;
    void *ctx;
    size_t max_in_flight;
    size_t max_out; /* PIPE_OUT with start and finish, else 1 */
    bool overflow_error;

    pthread_mutex_t mu;
    pthread_cond_t work;     /* the sender thread: events wait, or stop */
    pthread_cond_t settled;  /* a batch was reported */
    pthread_cond_t room;     /* in_flight fell */
    pitem *head, **tail;     /* accepted, not yet sent */
    size_t waiting;          /* events in that list */
    size_t in_flight;        /* accepted, `done` not yet called */
    bool starting;           /* a batch is being taken and started */
    pbatch *out, **out_tail; /* batches taken, not yet reported */
    size_t n_out;
    bool interrupted, closing, stop;
    pthread_t threads[PIPE_OUT];
    size_t n_threads, idle_threads;
    /* failures of events accepted without a `done`, since the last flush */
    uint64_t silent_failures;
    int first_rc;
    char first_msg[256];
};

/* Largest batch handed to the backend at once (a user's batch is never
 * split, so one may be larger). */
#define PIPE_BATCH 4096

/* Set while this thread runs `done` callbacks: flushing or waiting from
 * one would wait for itself. */
static _Thread_local bool tls_in_done;

bool evq__pipe_in_done(void)
{
    return tls_in_done;
}

evq__pipe *evq__pipe_new(const evq__pipe_ops *ops, void *ctx,
                         size_t max_in_flight, bool overflow_error)
{
    evq__pipe *p = calloc(1, sizeof *p);
    if (!p) {
        evq__err(EVQ_ENOMEM, "out of memory");
        return NULL;
    }
    p->ops = *ops;
    p->ctx = ctx;
    p->max_in_flight = max_in_flight ? max_in_flight : 1;
    p->max_out = ops->start && ops->finish ? PIPE_OUT : 1;
    p->overflow_error = overflow_error;
    p->tail = &p->head;
    p->out_tail = &p->out;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->settled, NULL);
    pthread_cond_init(&p->room, NULL);
    return p;
}

/* Frees x; its claim is given back first when it failed. */
static void item_release(evq__pipe *p, pitem *x, bool failed)
{
    if (failed && x->it.claim && p->ops.unclaim)
        p->ops.unclaim(p->ctx, x->it.claim);
    free(x->it.claim);
    free((void *)x->it.bytes);
    evq_event_free(x->it.ev);
    if (x->it.id != x->idbuf)
        free((char *)x->it.id);
    free(x);
}

static void wake_waiter(const char *id, int rc, void *arg)
{
    (void)id;
    waiter *w = arg;
    if (rc && !w->rc) {
        w->rc = rc;
        snprintf(w->msg, sizeof w->msg, "%s", evq_errmsg());
    }
    atomic_fetch_sub(&w->left, 1);
}

static void *sender_main(void *arg);

/* Fewest events waiting for a batch to start while others are out
 * (unless the backend lingers): a handful of synchronous callers wait for
 * the batch out and then go together, since fewer, larger batches cost
 * the broker and this machine less; a stream keeps several batches out. */
#define PIPE_EAGER 16

/* Whether another batch may start now.  Under p->mu. */
static bool may_send(const evq__pipe *p)
{
    return p->waiting && !p->starting &&
           (p->n_out == 0 || (p->n_out < p->max_out &&
                              (p->ops.lingers || p->waiting >= PIPE_EAGER)));
}

/* Hands what waits to an idle sender thread, starting one when all are
 * busy (up to one per batch out); false when there is no thread at all
 * (the caller then sends itself).  Under p->mu. */
static bool wake_sender(evq__pipe *p)
{
    if (!p->idle_threads && p->n_threads < p->max_out &&
        pthread_create(&p->threads[p->n_threads], NULL, sender_main, p) == 0)
        p->n_threads++;
    if (p->n_threads)
        pthread_cond_signal(&p->work);
    return p->n_threads > 0;
}

/* One batch through the backend: its enqueue, or its start then (without
 * holding up the next batch's start) its finish.  mu held on entry and on
 * return, released meanwhile. */
static int send_items(evq__pipe *p, const evq__item *items, size_t n)
{
    int rc;
    pthread_mutex_unlock(&p->mu);
    if (p->max_out == 1) {
        rc = p->ops.send(p->ctx, items, n);
        pthread_mutex_lock(&p->mu);
        p->starting = false;
        return rc;
    }
    void *ticket = NULL;
    rc = p->ops.start(p->ctx, items, n, &ticket);
    pthread_mutex_lock(&p->mu);
    p->starting = false;
    if (may_send(p)) { /* the next batch may start while this one waits */
        wake_sender(p);
        pthread_cond_broadcast(&p->settled);
    }
    if (rc == 0) {
        pthread_mutex_unlock(&p->mu);
        rc = p->ops.finish(p->ctx, ticket, n);
        pthread_mutex_lock(&p->mu);
    }
    return rc;
}

/* Sends what waits (whole user batches, up to PIPE_BATCH events) and
 * reports it.  mu held on entry and on return, released meanwhile; the
 * caller saw may_send(). */
static void send_batch(evq__pipe *p)
{
    pitem *first = p->head, *last = NULL;
    size_t n = 0;
    for (pitem *x = first; x && (n < PIPE_BATCH || last->group_left);
         x = x->next) {
        last = x;
        n++;
    }
    p->head = last->next;
    if (!p->head)
        p->tail = &p->head;
    last->next = NULL;
    p->waiting -= n;
    p->starting = true;
    pbatch self = {NULL};
    *p->out_tail = &self;
    p->out_tail = &self.next;
    p->n_out++;

    evq__item one, *items = n == 1 ? &one : malloc(n * sizeof *items);
    int rc;
    char msg[PIPE_MSG_MAX] = "";
    if (!items) {
        p->starting = false;
        rc = evq__err(EVQ_ENOMEM, "out of memory sending %zu events", n);
    } else {
        size_t i = 0;
        for (pitem *x = first; x; x = x->next)
            items[i++] = x->it;
        rc = send_items(p, items, n);
        if (items != &one)
            free(items);
    }
    if (rc)
        snprintf(msg, sizeof msg, "%s", evq_errmsg());
    /* reported in the order taken: after the earlier batches' reports */
    while (p->out != &self)
        pthread_cond_wait(&p->settled, &p->mu);
    pthread_mutex_unlock(&p->mu);

    uint64_t silent = 0;
    tls_in_done = true;
    for (pitem *x = first, *next; x; x = next) {
        next = x->next;
        if (rc && x->it.claim && p->ops.unclaim) {
            p->ops.unclaim(p->ctx, x->it.claim); /* before the report */
            free(x->it.claim);
            x->it.claim = NULL;
        }
        if (rc)
            evq__err(rc, "%s", msg); /* what evq_errmsg() says in done */
        if (x->done)
            x->done(x->it.id, rc, x->arg);
        else if (rc)
            silent++;
        item_release(p, x, false);
    }
    tls_in_done = false;

    pthread_mutex_lock(&p->mu);
    if (silent) {
        if (!p->silent_failures) {
            p->first_rc = rc;
            snprintf(p->first_msg, sizeof p->first_msg, "%s", msg);
        }
        p->silent_failures += silent;
    }
    p->in_flight -= n;
    p->out = self.next;
    if (!p->out)
        p->out_tail = &p->out;
    p->n_out--;
    pthread_cond_broadcast(&p->settled);
    pthread_cond_broadcast(&p->room);
    if (may_send(p)) /* more came meanwhile (maybe from a done) */
        wake_sender(p);
}

static void *sender_main(void *arg)
{
    evq__pipe *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (may_send(p)) {
            send_batch(p);
            continue;
        }
        if (p->stop && !p->waiting)
            break;
        p->idle_threads++;
        pthread_cond_wait(&p->work, &p->mu);
        p->idle_threads--;
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Waits for room for n more (mu held).  0, or EVQ_EFULL / EVQ_ECLOSED. */
static int wait_room(evq__pipe *p, size_t n)
{
    for (;;) {
        if (p->interrupted || p->closing)
            return evq__err(EVQ_ECLOSED, "queue %s",
                            p->closing ? "closed" : "interrupted");
        /* a done that enqueues again: its own batch holds the room it
         * would wait for */
        if (tls_in_done)
            return 0;
        /* a batch larger than the bound goes alone */
        if (p->in_flight == 0 || p->in_flight + n <= p->max_in_flight)
            return 0;
        if (p->overflow_error)
            return evq__err(EVQ_EFULL,
                            "%zu events in flight (max_in_flight=%zu)",
                            p->in_flight, p->max_in_flight);
        pthread_cond_wait(&p->room, &p->mu);
    }
}

int evq__pipe_put(evq__pipe *p, evq__item *items, size_t n,
                  evq_enqueued_fn done, void *arg, bool wait)
{
    waiter w = {.rc = 0};
    pitem **xs = n <= 1 ? NULL : calloc(n, sizeof *xs), *x1 = NULL;
    int rc = 0;
    if (wait && tls_in_done)
        rc = evq__err(EVQ_ESTATE,
                      "evq_enqueue from inside a done callback would wait "
                      "for itself; use evq_enqueue_async there");
    if (!rc && n > 1 && !xs)
        rc = evq__err(EVQ_ENOMEM, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        pitem *x = malloc(sizeof *x);
        const char *id = items[i].id ? items[i].id : "";
        size_t idn = strlen(id);
        if (x) {
            *x = (pitem){.it = items[i]};
            if (idn < sizeof x->idbuf) {
                x->it.id = memcpy(x->idbuf, id, idn + 1);
            } else if (!(x->it.id = evq__strdup(id))) {
                free(x);
                x = NULL;
            }
        }
        if (!x) {
            rc = evq__err(EVQ_ENOMEM, "out of memory");
            break;
        }
        items[i].bytes = NULL; /* the pipe's now */
        items[i].ev = NULL;
        items[i].claim = NULL;
        x->group_left = n - 1 - i;
        x->done = wait ? wake_waiter : done;
        x->arg = wait ? &w : arg;
        if (n > 1)
            xs[i] = x;
        else
            x1 = x;
    }
    if (rc) {
        for (size_t i = 0; i < n; i++) {
            pitem *x = n > 1 ? (xs ? xs[i] : NULL) : x1;
            if (x) {
                item_release(p, x, true);
            } else if (items[i].claim) { /* not taken over */
                if (p->ops.unclaim)
                    p->ops.unclaim(p->ctx, items[i].claim);
                free(items[i].claim);
                items[i].claim = NULL;
            }
        }
        free(xs);
        return rc;
    }
    atomic_init(&w.left, n);

    pthread_mutex_lock(&p->mu);
    if ((rc = wait_room(p, n)) != 0) {
        pthread_mutex_unlock(&p->mu);
        for (size_t i = 0; i < n; i++)
            item_release(p, n > 1 ? xs[i] : x1, true);
        free(xs);
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        pitem *x = n > 1 ? xs[i] : x1;
        *p->tail = x;
        p->tail = &x->next;
    }
    free(xs);
    p->waiting += n;
    p->in_flight += n;
    if (!wait) {
        /* no thread: send here, as a synchronous call would (not from
         * inside a done: this batch would wait for the one reporting;
         * that thread sends it when done) */
        if (may_send(p) && !wake_sender(p) && !tls_in_done)
            send_batch(p);
        pthread_mutex_unlock(&p->mu);
        return 0;
    }
    while (atomic_load(&w.left) > 0) {
        if (may_send(p))
            send_batch(p);
        else
            pthread_cond_wait(&p->settled, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    if (w.rc)
        return evq__err(w.rc, "%s", w.msg);
    return 0;
}

/* Waits until every accepted event is reported, sending what waits on
 * this thread (inline) or leaving it to the sender thread, so the wait
 * can end at its timeout even while the backend blocks. */
static int flush_wait(evq__pipe *p, int64_t timeout_ms, bool send_inline)
{
    int64_t now = evq__now_real_ns();
    int64_t deadline =
        timeout_ms < 0 || timeout_ms > (INT64_MAX - now) / 1000000
            ? INT64_MAX
            : now + timeout_ms * 1000000;
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    while (p->in_flight > 0 && !rc) {
        if (may_send(p) && send_inline) {
            send_batch(p);
            continue;
        }
        if (may_send(p) && !wake_sender(p)) {
            send_batch(p); /* no thread: send here after all */
            continue;
        }
        if (deadline == INT64_MAX) {
            pthread_cond_wait(&p->settled, &p->mu);
        } else {
            struct timespec ts = evq__ts_from_ns(deadline);
            if (pthread_cond_timedwait(&p->settled, &p->mu, &ts) != 0 &&
                p->in_flight > 0)
                rc = evq__err(EVQ_ETIMEDOUT,
                              "%zu events still in flight after %lld ms",
                              p->in_flight, (long long)timeout_ms);
        }
    }
    if (!rc && p->silent_failures) {
        rc = evq__err(p->first_rc,
                      "%llu event%s enqueued without a done callback "
                      "failed since the last flush; the first: %s",
                      (unsigned long long)p->silent_failures,
                      p->silent_failures == 1 ? "" : "s", p->first_msg);
        p->silent_failures = 0;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

int evq__pipe_flush(evq__pipe *p, int64_t timeout_ms)
{
    if (tls_in_done)
        return evq__err(EVQ_ESTATE, "evq_flush from inside a done callback "
                                    "would wait for itself");
    return flush_wait(p, timeout_ms, true);
}

void evq__pipe_interrupt(evq__pipe *p)
{
    pthread_mutex_lock(&p->mu);
    p->interrupted = true;
    pthread_cond_broadcast(&p->room);
    pthread_mutex_unlock(&p->mu);
}

int evq__pipe_close(evq__pipe *p, int grace_ms, void (*stuck)(void *),
                    void *arg)
{
    pthread_mutex_lock(&p->mu);
    p->closing = true;
    pthread_cond_broadcast(&p->room);
    pthread_mutex_unlock(&p->mu);
    /* everything sent and reported; with a grace, by the sender thread */
    int rc = flush_wait(p, grace_ms, grace_ms < 0);
    if (rc == EVQ_ETIMEDOUT) {
        /* the backend cannot take them (a full memory queue nobody
         * reads): it fails the rest, each reported EVQ_ECLOSED */
        stuck(arg);
        rc = flush_wait(p, -1, true);
    }
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->work);
    size_t n_threads = p->n_threads;
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < n_threads; i++)
        pthread_join(p->threads[i], NULL);
    return rc;
}

void evq__pipe_free(evq__pipe *p)
{
    if (!p)
        return;
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->settled);
    pthread_cond_destroy(&p->room);
    free(p);
}
