/*
 * memory.c - process-wide named in-memory queues.
 *
 * Every handle opened with the same name shares one queue.  A queue holds at
 * most `capacity` events counting ready, delayed and in-flight ones, so a nack
 * never needs room and memory stays bounded under any backlog.  Ready events
 * sit in a ring, delayed ones in a min-heap by due time; an in-flight event
 * is owned by its message until ack or nack.  Events pass by reference (the
 * node holds a reference) unless the queue has a format, in which case nodes
 * hold the encoded bytes.
 *
 * Locking: one mutex per queue guards everything in it; the registry lock is
 * taken only to open and close handles, never together with a queue lock.
 * Guarantee: at-least-once within the process; everything is lost on exit.
 */
#include "../internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct mnode {
    evq_event *ev; /* a reference, or NULL when bytes are held */
    unsigned char *bytes;
    size_t len;
    int attempt; /* deliveries so far */
    int64_t due; /* monotonic ns, for the delay heap */
    uint64_t seq;
} mnode;

typedef struct mqueue {
    struct mqueue *next; /* registry list */
    char *name;
    char *format; /* NULL: by reference */
    pthread_mutex_t mu;
    pthread_cond_t readable, writable;
    size_t capacity;
    size_t total; /* ready + delayed + in flight */
    mnode **ring;
    size_t ring_cap, head, ready;
    mnode **heap;
    size_t heap_cap, delayed;
    size_t in_flight;
    uint64_t seq;
    int handles;
} mqueue;

typedef struct mhandle {
    mqueue *q;
    bool overflow_error;
    atomic_bool interrupted;
} mhandle;

static const evq__opt_spec memory_opts[] = {
    {"capacity", EVQ__OPT_INT, "65536", 1, 1 << 30, NULL,
     "most events the queue holds (ready, delayed and in flight); fixed by "
     "the first handle that opens the queue"},
    {"overflow", EVQ__OPT_ENUM, "block", 0, 0, "block|error",
     "when the queue is full: block the producer, or fail with EVQ_EFULL"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static mqueue *registry;

static void node_free(mnode *n)
{
    if (!n)
        return;
    evq_event_free(n->ev);
    free(n->bytes);
    free(n);
}

static void mqueue_destroy(mqueue *q)
{
    for (size_t i = 0; i < q->ready; i++)
        node_free(q->ring[(q->head + i) % q->ring_cap]);
    for (size_t i = 0; i < q->delayed; i++)
        node_free(q->heap[i]);
    free(q->ring);
    free(q->heap);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->readable);
    pthread_cond_destroy(&q->writable);
    free(q->name);
    free(q->format);
    free(q);
}

/* Queues live until the process exits, so events enqueued by a handle that
 * was then closed wait for the next handle; free them at exit so leak
 * checkers see a clean heap. */
__attribute__((destructor)) static void memory_atexit(void)
{
    pthread_mutex_lock(&registry_lock);
    for (mqueue **pp = &registry; *pp;) {
        mqueue *q = *pp;
        if (q->handles == 0) {
            *pp = q->next;
            mqueue_destroy(q);
        } else {
            pp = &q->next; /* still open: leave it to its owner */
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

static mqueue *mqueue_new(const char *name, const char *format, size_t capacity)
{
    mqueue *q = calloc(1, sizeof *q);
    pthread_condattr_t ca;

    if (!q || !(q->name = evq__strdup(name)) ||
        (format && !(q->format = evq__strdup(format)))) {
        if (q)
            free(q->name);
        free(q);
        return NULL;
    }
    pthread_mutex_init(&q->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->readable, &ca);
    pthread_cond_init(&q->writable, &ca);
    pthread_condattr_destroy(&ca);
    q->capacity = capacity;
    return q;
}

static int memory_open(void **state, const evq__url *url, const char *name,
                       const evq__optset *opts)
{
    const char *format = evq__opt_str(opts, memory_opts, "format");
    size_t capacity = (size_t)evq__opt_int(opts, memory_opts, "capacity");
    bool cap_given = false;
    mhandle *h;
    mqueue *q;
    int rc = 0;

    if (url->n_hosts || url->path[0] || url->user)
        return evq__err(EVQ_EINVAL,
                        "memory:// URLs take no host, path or user (the queue "
                        "name is passed on its own)");
    for (size_t i = 0; i < opts->n; i++)
        cap_given |= strcmp(opts->kv[i].key, "capacity") == 0;
    h = calloc(1, sizeof *h);
    if (!h)
        return evq__err(EVQ_ENOMEM, "out of memory");
    h->overflow_error =
        strcmp(evq__opt_str(opts, memory_opts, "overflow"), "error") == 0;
    atomic_init(&h->interrupted, false);

    pthread_mutex_lock(&registry_lock);
    for (q = registry; q && strcmp(q->name, name) != 0; q = q->next)
        ;
    if (q) {
        if ((format == NULL) != (q->format == NULL) ||
            (format && strcmp(format, q->format) != 0))
            rc = evq__err(EVQ_EINVAL,
                          "memory queue '%s' is already open with format=%s",
                          name, q->format ? q->format : "(by reference)");
        else if (cap_given && capacity != q->capacity)
            rc = evq__err(EVQ_EINVAL,
                          "option 'capacity': memory queue '%s' already "
                          "exists with capacity %zu",
                          name, q->capacity);
    } else if (!(q = mqueue_new(name, format, capacity))) {
        rc = evq__err(EVQ_ENOMEM, "out of memory");
    } else {
        q->next = registry;
        registry = q;
    }
    if (!rc)
        q->handles++;
    pthread_mutex_unlock(&registry_lock);
    if (rc) {
        free(h);
        return rc;
    }
    h->q = q;
    *state = h;
    return 0;
}

static void memory_close(void *state)
{
    mhandle *h = state;
    pthread_mutex_lock(&registry_lock);
    h->q->handles--;
    pthread_mutex_unlock(&registry_lock);
    free(h);
}

/* ---- ring and heap (queue lock held) ------------------------------------- */

static int ring_push(mqueue *q, mnode *n)
{
    if (q->ready == q->ring_cap) {
        size_t cap = q->ring_cap ? q->ring_cap * 2 : 64;
        mnode **r = malloc(cap * sizeof *r);
        if (!r)
            return evq__err(EVQ_ENOMEM, "out of memory");
        for (size_t i = 0; i < q->ready; i++)
            r[i] = q->ring[(q->head + i) % q->ring_cap];
        free(q->ring);
        q->ring = r;
        q->ring_cap = cap;
        q->head = 0;
    }
    q->ring[(q->head + q->ready) % q->ring_cap] = n;
    q->ready++;
    return 0;
}

static mnode *ring_pop(mqueue *q)
{
    mnode *n = q->ring[q->head];
    q->head = (q->head + 1) % q->ring_cap;
    q->ready--;
    return n;
}

static bool heap_less(const mnode *a, const mnode *b)
{
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static int heap_push(mqueue *q, mnode *n)
{
    if (q->delayed == q->heap_cap) {
        size_t cap = q->heap_cap ? q->heap_cap * 2 : 16;
        mnode **h = realloc(q->heap, cap * sizeof *h);
        if (!h)
            return evq__err(EVQ_ENOMEM, "out of memory");
        q->heap = h;
        q->heap_cap = cap;
    }
    size_t i = q->delayed++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(n, q->heap[p]))
            break;
        q->heap[i] = q->heap[p];
        i = p;
    }
    q->heap[i] = n;
    return 0;
}

static mnode *heap_pop(mqueue *q)
{
    mnode *top = q->heap[0], *last = q->heap[--q->delayed];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= q->delayed)
            break;
        if (c + 1 < q->delayed && heap_less(q->heap[c + 1], q->heap[c]))
            c++;
        if (!heap_less(q->heap[c], last))
            break;
        q->heap[i] = q->heap[c];
        i = c;
    }
    if (q->delayed)
        q->heap[i] = last;
    return top;
}

/* Moves due delayed events to the ready ring.  Cannot fail for lack of room:
 * the ring grows, and the capacity bound already counts these events. */
static int promote_due(mqueue *q, int64_t now)
{
    while (q->delayed && q->heap[0]->due <= now) {
        mnode *n = q->heap[0];
        if (ring_push(q, n))
            return EVQ_ENOMEM;
        heap_pop(q);
    }
    return 0;
}

static int place(mqueue *q, mnode *n, int64_t delay_ms)
{
    n->seq = q->seq++;
    if (delay_ms > 0) {
        n->due = evq__now_mono_ns() + delay_ms * 1000000;
        return heap_push(q, n);
    }
    return ring_push(q, n);
}

/* ---- operations ---------------------------------------------------------- */

static int wait_until(pthread_cond_t *c, pthread_mutex_t *mu, int64_t when)
{
    if (when == INT64_MAX)
        return pthread_cond_wait(c, mu);
    struct timespec ts = evq__ts_from_ns(when);
    return pthread_cond_timedwait(c, mu, &ts);
}

static int memory_enqueue(void *state, const evq__item *items, size_t n)
{
    mhandle *h = state;
    mqueue *q = h->q;
    mnode **nodes = calloc(n, sizeof *nodes);
    size_t done = 0;
    bool delayed = false;
    int rc = 0;

    if (!nodes)
        return evq__err(EVQ_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        mnode *nd = nodes[i] = calloc(1, sizeof *nd);
        if (!nd)
            goto oom;
        if (items[i].bytes) {
            nd->bytes = malloc(items[i].len ? items[i].len : 1);
            if (!nd->bytes)
                goto oom;
            memcpy(nd->bytes, items[i].bytes, items[i].len);
            nd->len = items[i].len;
        } else {
            nd->ev = evq__event_ref(items[i].ev);
        }
        delayed |= items[i].delay_ms > 0;
    }

    pthread_mutex_lock(&q->mu);
    if (h->overflow_error && q->capacity - q->total < n) {
        rc = evq__err(EVQ_EFULL,
                      "memory queue '%s' is full (%zu of capacity %zu held)",
                      q->name, q->total, q->capacity);
        goto unlock;
    }
    while (done < n) {
        /* Wait for room for the whole rest of the batch when it can fit at
         * all, so a batch lands together; a batch larger than the queue goes
         * in as room appears. */
        size_t want = n - done <= q->capacity ? n - done : 1;
        while (q->capacity - q->total < want) {
            if (atomic_load(&h->interrupted)) {
                rc = evq__err(EVQ_ECLOSED, "queue interrupted");
                goto unlock;
            }
            pthread_cond_wait(&q->writable, &q->mu);
        }
        if (atomic_load(&h->interrupted)) {
            rc = evq__err(EVQ_ECLOSED, "queue interrupted");
            goto unlock;
        }
        for (size_t k = 0; k < want; k++, done++) {
            if ((rc = place(q, nodes[done], items[done].delay_ms)) != 0)
                goto unlock;
            q->total++;
        }
        if (delayed || want > 1)
            pthread_cond_broadcast(&q->readable);
        else
            pthread_cond_signal(&q->readable);
    }
unlock:
    pthread_mutex_unlock(&q->mu);
    for (size_t i = done; i < n; i++)
        node_free(nodes[i]);
    free(nodes);
    return rc;
oom:
    for (size_t i = 0; i < n; i++)
        node_free(nodes[i]);
    free(nodes);
    return evq__err(EVQ_ENOMEM, "out of memory");
}

static int memory_dequeue(void *state, evq__delivery *d, int timeout_ms)
{
    mhandle *h = state;
    mqueue *q = h->q;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : 0;
    int rc = 0;

    pthread_mutex_lock(&q->mu);
    for (;;) {
        int64_t now = 0;
        if (atomic_load(&h->interrupted)) {
            /* A wake-up meant for a reader may have landed here; pass it on. */
            if (q->ready)
                pthread_cond_signal(&q->readable);
            rc = evq__err(EVQ_ECLOSED, "queue interrupted");
            break;
        }
        if (q->delayed) {
            now = evq__now_mono_ns();
            if (promote_due(q, now)) {
                rc = evq__err(EVQ_ENOMEM, "out of memory");
                break;
            }
        }
        if (q->ready) {
            mnode *n = ring_pop(q);
            q->in_flight++;
            n->attempt++;
            d->ev = n->ev;
            d->bytes = n->bytes;
            d->len = n->len;
            d->attempt = n->attempt;
            d->token = n;
            break;
        }
        if (timeout_ms >= 0 && deadline == 0) {
            if (!now)
                now = evq__now_mono_ns();
            deadline = now + (int64_t)timeout_ms * 1000000;
        }
        if (timeout_ms == 0 || (deadline != INT64_MAX &&
                                (now ? now : evq__now_mono_ns()) >= deadline)) {
            rc = evq__err(EVQ_ETIMEDOUT, "no event within %d ms", timeout_ms);
            break;
        }
        int64_t wake = deadline;
        if (q->delayed && q->heap[0]->due < wake)
            wake = q->heap[0]->due;
        wait_until(&q->readable, &q->mu, wake);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

static int memory_ack(void *state, void *token)
{
    mqueue *q = ((mhandle *)state)->q;
    pthread_mutex_lock(&q->mu);
    q->in_flight--;
    q->total--;
    pthread_cond_signal(&q->writable);
    pthread_mutex_unlock(&q->mu);
    node_free(token);
    return 0;
}

static int memory_nack(void *state, void *token, int64_t delay_ms)
{
    mqueue *q = ((mhandle *)state)->q;
    mnode *n = token;
    int rc;

    pthread_mutex_lock(&q->mu);
    q->in_flight--;
    rc = place(q, n, delay_ms);
    if (rc) {
        /* No memory to requeue it: the event is dropped, and said so. */
        q->total--;
        pthread_cond_signal(&q->writable);
    } else if (delay_ms > 0) {
        pthread_cond_broadcast(&q->readable);
    } else {
        pthread_cond_signal(&q->readable);
    }
    pthread_mutex_unlock(&q->mu);
    if (rc) {
        node_free(n);
        return evq__err(EVQ_ENOMEM, "out of memory requeueing an event; it "
                                    "was dropped");
    }
    return 0;
}

static int memory_interrupt(void *state)
{
    mhandle *h = state;
    atomic_store(&h->interrupted, true);
    pthread_mutex_lock(&h->q->mu);
    pthread_cond_broadcast(&h->q->readable);
    pthread_cond_broadcast(&h->q->writable);
    pthread_mutex_unlock(&h->q->mu);
    return 0;
}

static int memory_stats(void *state, struct evq_queue_stats *out)
{
    mqueue *q = ((mhandle *)state)->q;
    pthread_mutex_lock(&q->mu);
    out->depth = (int64_t)q->ready;
    out->in_flight = (int64_t)q->in_flight;
    out->delayed = (int64_t)q->delayed;
    pthread_mutex_unlock(&q->mu);
    return 0;
}

const struct evq_backend_ops evq__backend_memory = {
    .scheme = "memory",
    .flags = EVQ__BY_REF,
    .opts = memory_opts,
    .open = memory_open,
    .enqueue = memory_enqueue,
    .dequeue = memory_dequeue,
    .ack = memory_ack,
    .nack = memory_nack,
    .interrupt = memory_interrupt,
    .stats = memory_stats,
    .close = memory_close,
};
