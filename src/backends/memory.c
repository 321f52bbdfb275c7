/*
 * memory.c - process-wide named in-memory queues.
 *
 * Every handle opened with the same name shares one queue.  Ready events sit
 * in a bounded lock-free ring (Vyukov's MPMC array queue: each slot carries a
 * sequence number that says whose turn it is, so producers and consumers
 * claim slots with one compare-and-swap and never take a lock); `capacity` is
 * the ring's size.  Delayed and nacked-with-delay events wait in a min-heap
 * under a mutex, bounded by the same capacity, and are moved to the ring by
 * consumers once due.  In-flight events belong to their message until ack or
 * nack and are not counted against capacity.
 *
 * Sleeping uses event counts over futexes (evcount.h): a waiter takes a
 * key, announces itself, re-checks, then sleeps on a sequence word; the
 * other side bumps the word and wakes only when someone announced itself,
 * so the busy path makes no system call.  Items pass by reference (the queue
 * holds one reference to the event) unless the queue has a format, in which
 * case it holds the encoded bytes.
 *
 * Guarantee: at-least-once within the process; everything is lost on exit.
 */
#include "../evcount.h"
#include "../internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* An encoded message as the queue holds it. */
typedef struct mblob {
    size_t len;
    int priority; /* evqpriority, for a nack to put it back in its level */
    unsigned char data[];
} mblob;

/* What a slot or the heap holds: an event reference or a blob, and the number
 * of deliveries so far. */
typedef struct mitem {
    void *p;
    int attempt;
    bool blob;
    unsigned char priority; /* 0: the ring; 1 to 9: a level's list */
} mitem;

/* The ready events of one priority level, first in first out. */
typedef struct mlevel {
    mitem *a;
    size_t cap, head, n; /* cap a power of two, or 0 */
} mlevel;

#define LEVELS 10

typedef struct mslot {
    atomic_size_t seq;
    mitem item;
} mslot;

typedef struct mdelayed {
    mitem item;
    int64_t due; /* monotonic ns */
    uint64_t order;
} mdelayed;

#define CACHELINE 64
/* Empty-queue polls before a consumer sleeps: some tens of microseconds,
 * long enough to bridge the gap between events of a busy producer. */
/* Events handed back by consumers for producers to free. */
#define GRAVE_SIZE 256
#ifndef SPIN_LIMIT
#define SPIN_LIMIT 1000
#endif

/* A bounded array queue of items (Vyukov). */
typedef struct mring {
    mslot *slots;
    size_t cap;   /* slots; at least 2 (one slot cannot tell full from empty) */
    bool one;     /* holds at most one event: a capacity of 1 */
    _Alignas(CACHELINE) atomic_size_t tail; /* producers */
    _Alignas(CACHELINE) atomic_size_t head; /* consumers */
} mring;

typedef struct mqueue {
    struct mqueue *next; /* registry list, under registry_lock */
    int handles;         /* under registry_lock */
    bool deleted; /* out of the registry: freed by its last handle's close */
    char *name;
    char *format; /* NULL: by reference */
    size_t capacity;
    /* A producer blocked on a full ring sleeps until the depth is at most
     * this, so it wakes once per capacity/16 events rather than once per
     * event; with small capacities any room wakes it. */
    size_t low_water;
    mring ready;
    /* Events consumers are done with, for producers to free: see
     * memory_ack. */
    mring grave;
    _Alignas(CACHELINE) atomic_long in_flight;
    evcount readable;
    _Alignas(CACHELINE) evcount writable;
    _Alignas(CACHELINE) pthread_mutex_t heap_mu;
    mdelayed *heap; /* under heap_mu */
    size_t heap_cap, heap_n;
    uint64_t heap_order;
    atomic_llong next_due; /* earliest due in the heap; INT64_MAX if none */
    atomic_size_t delayed;
    /* Ready events with a priority (evqpriority 1 to 9), taken before the
     * ring's: a list per level under prio_mu, bounded by the capacity.
     * prio_n lets consumers skip the lock while there are none. */
    _Alignas(CACHELINE) pthread_mutex_t prio_mu;
    mlevel levels[LEVELS];
    atomic_size_t prio_n;
    atomic_bool paused;  /* evq_queue_pause */
    evq__seen *done;     /* an idempotent worker's finished ids */
} mqueue;

typedef struct mhandle {
    mqueue *q;
    bool overflow_error;
    atomic_bool interrupted;
} mhandle;

typedef struct mcfg {
    int64_t capacity;
} mcfg;

static const evq__opt_spec memory_opts[] = {
    {"capacity", EVQ__OPT_INT, "65536", 1, 1 << 24, NULL,
     "most ready events the queue holds (and, separately, most delayed ones); "
     "fixed by the first handle that opens the queue",
     EVQ__AT(mcfg, capacity)},
    {0},
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static mqueue *registry;

/* ---- waiting ------------------------------------------------------------ */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---- the ring ------------------------------------------------------------ */

static int ring_init(mring *r, size_t cap)
{
    r->one = cap == 1;
    if (cap < 2)
        cap = 2;
    r->slots = malloc(cap * sizeof *r->slots);
    if (!r->slots)
        return -1;
    r->cap = cap;
    for (size_t i = 0; i < cap; i++)
        atomic_init(&r->slots[i].seq, i);
    atomic_init(&r->tail, 0);
    atomic_init(&r->head, 0);
    return 0;
}

static bool ring_push(mring *r, mitem it)
{
    size_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    for (;;) {
        mslot *s = &r->slots[pos % r->cap];
        size_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)pos;
        if (dif == 0) {
            /* a capacity of 1 in a ring of 2: full when one is in */
            if (r->one && pos != atomic_load(&r->head))
                return false;
            if (atomic_compare_exchange_weak_explicit(&r->tail, &pos, pos + 1,
                                                      memory_order_seq_cst,
                                                      memory_order_relaxed)) {
                s->item = it;
                atomic_store_explicit(&s->seq, pos + 1, memory_order_release);
                return true;
            }
        } else if (dif < 0) {
            return false; /* full */
        } else {
            pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
        }
    }
}

static bool ring_pop(mring *r, mitem *it)
{
    size_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    for (;;) {
        mslot *s = &r->slots[pos % r->cap];
        size_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)(pos + 1);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + 1,
                                                      memory_order_seq_cst,
                                                      memory_order_relaxed)) {
                *it = s->item;
                atomic_store_explicit(&s->seq, pos + r->cap,
                                      memory_order_release);
                return true;
            }
        } else if (dif < 0) {
            return false; /* empty */
        } else {
            pos = atomic_load_explicit(&r->head, memory_order_relaxed);
        }
    }
}

static size_t ring_depth(mring *r)
{
    size_t h = atomic_load(&r->head), t = atomic_load(&r->tail);
    return t > h ? t - h : 0;
}

/* ---- the delay heap (heap_mu held) -------------------------------------- */

static bool heap_less(const mdelayed *a, const mdelayed *b)
{
    return a->due < b->due || (a->due == b->due && a->order < b->order);
}

static int heap_push(mqueue *q, mitem it, int64_t due)
{
    int rc = evq__grow(&q->heap, &q->heap_cap, q->heap_n, sizeof *q->heap);
    if (rc)
        return rc;
    mdelayed n = {it, due, q->heap_order++};
    size_t i = q->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&n, &q->heap[p]))
            break;
        q->heap[i] = q->heap[p];
        i = p;
    }
    q->heap[i] = n;
    atomic_store(&q->next_due, q->heap[0].due);
    atomic_store(&q->delayed, q->heap_n);
    return 0;
}

static void heap_pop(mqueue *q)
{
    mdelayed last = q->heap[--q->heap_n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= q->heap_n)
            break;
        if (c + 1 < q->heap_n && heap_less(&q->heap[c + 1], &q->heap[c]))
            c++;
        if (!heap_less(&q->heap[c], &last))
            break;
        q->heap[i] = q->heap[c];
        i = c;
    }
    if (q->heap_n)
        q->heap[i] = last;
    atomic_store(&q->next_due, q->heap_n ? q->heap[0].due : INT64_MAX);
    atomic_store(&q->delayed, q->heap_n);
}

/* ---- the priority levels (prio_mu held) --------------------------------- */

static int level_push(mqueue *q, mitem it)
{
    mlevel *l = &q->levels[it.priority];
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        mitem *a = malloc(cap * sizeof *a);
        if (!a)
            return evq__err(EVQ_ENOMEM, "out of memory");
        for (size_t i = 0; i < l->n; i++)
            a[i] = l->a[(l->head + i) & (l->cap - 1)];
        free(l->a);
        l->a = a;
        l->cap = cap;
        l->head = 0;
    }
    l->a[(l->head + l->n++) & (l->cap - 1)] = it;
    atomic_fetch_add(&q->prio_n, 1);
    return 0;
}

/* The first event of the highest level that has one. */
static bool level_pop(mqueue *q, mitem *it)
{
    for (int p = LEVELS - 1; p > 0; p--) {
        mlevel *l = &q->levels[p];
        if (l->n) {
            *it = l->a[l->head];
            l->head = (l->head + 1) & (l->cap - 1);
            l->n--;
            atomic_fetch_sub(&q->prio_n, 1);
            return true;
        }
    }
    return false;
}

/* Puts a ready event where it belongs: its level, or the ring (false when
 * that is full). */
static bool ready_push(mqueue *q, mitem it, bool *failed)
{
    *failed = false;
    if (!it.priority)
        return ring_push(&q->ready, it);
    pthread_mutex_lock(&q->prio_mu);
    *failed = level_push(q, it) != 0;
    pthread_mutex_unlock(&q->prio_mu);
    return !*failed;
}

/* Moves due events from the heap to the ring (or their level) while there
 * is room. */
static void promote_due(mqueue *q, int64_t now)
{
    bool moved = false, failed = false;
    pthread_mutex_lock(&q->heap_mu);
    while (q->heap_n && q->heap[0].due <= now &&
           ready_push(q, q->heap[0].item, &failed)) {
        heap_pop(q);
        moved = true;
    }
    pthread_mutex_unlock(&q->heap_mu);
    if (moved) {
        evc_notify(&q->readable);
        evc_notify(&q->writable); /* heap room for delayed producers */
    }
}

/* ---- lifecycle ------------------------------------------------------------
 */

static void item_free(mitem it)
{
    if (it.blob)
        free(it.p);
    else
        evq_event_free(it.p);
}

/* Frees up to `n` events from the graveyard (producer side). */
static void bury(mqueue *q, int n)
{
    mitem it;
    while (n-- > 0 && ring_pop(&q->grave, &it))
        item_free(it);
}

static void mqueue_destroy(mqueue *q)
{
    mitem it;
    while (ring_pop(&q->ready, &it))
        item_free(it);
    while (ring_pop(&q->grave, &it))
        item_free(it);
    for (size_t i = 0; i < q->heap_n; i++)
        item_free(q->heap[i].item);
    free(q->heap);
    while (level_pop(q, &it))
        item_free(it);
    for (int p = 0; p < LEVELS; p++)
        free(q->levels[p].a);
    pthread_mutex_destroy(&q->prio_mu);
    free(q->ready.slots);
    free(q->grave.slots);
    pthread_mutex_destroy(&q->heap_mu);
    evq__seen_free(q->done);
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
    mqueue *q = aligned_alloc(CACHELINE, (sizeof *q + CACHELINE - 1) /
                                             CACHELINE * CACHELINE);
    if (!q)
        return NULL;
    memset(q, 0, sizeof *q);
    bool ok = ring_init(&q->ready, capacity) == 0;
    ok &= ring_init(&q->grave, GRAVE_SIZE) == 0;
    q->name = evq__strdup(name);
    if (format)
        q->format = evq__strdup(format);
    q->done = evq__seen_new();
    if (!ok || !q->name || (format && !q->format) || !q->done) {
        evq__seen_free(q->done);
        free(q->ready.slots);
        free(q->grave.slots);
        free(q->name);
        free(q->format);
        free(q);
        return NULL;
    }
    q->capacity = capacity;
    q->low_water = capacity >= 64 ? capacity - capacity / 16 : capacity - 1;
    pthread_mutex_init(&q->heap_mu, NULL);
    pthread_mutex_init(&q->prio_mu, NULL);
    atomic_init(&q->next_due, INT64_MAX);
    return q;
}

static int memory_open(void **state, const evq__url *url, const char *name,
                       const evq__optset *opts, evq__logger *log)
{
    EVQ__UNUSED(log); /* no broker to speak of */
    mcfg cfg;
    evq__opts_read(opts, memory_opts, &cfg);
    const char *format = opts->core.format;
    size_t capacity = (size_t)cfg.capacity;
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
    h->overflow_error = opts->core.overflow == EVQ__OVERFLOW_ERROR;
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
        rc = evq__err(EVQ_ENOMEM,
                      "out of memory creating a queue of "
                      "capacity %zu",
                      capacity);
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
    bool last = --h->q->handles == 0 && h->q->deleted;
    pthread_mutex_unlock(&registry_lock);
    if (last)
        mqueue_destroy(h->q);
    free(h);
}

/* Takes the queue out of the registry, so the next open of its name finds
 * none; handles still open keep the old one (as a removed file stays with
 * whoever has it open) and the last to close frees it with what it holds. */
static int memory_destroy(void *state)
{
    mhandle *h = state;
    pthread_mutex_lock(&registry_lock);
    for (mqueue **pp = &registry; *pp; pp = &(*pp)->next) {
        if (*pp == h->q) {
            *pp = h->q->next;
            h->q->deleted = true;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

/* ---- operations ---------------------------------------------------------- */

static int closed_err(void)
{
    return evq__err(EVQ_ECLOSED, "queue interrupted");
}

/* Puts one item in the ring (delay 0) or the heap, waiting for room unless
 * overflow=error. */
static int put(mhandle *h, mitem it, int64_t delay_ms)
{
    mqueue *q = h->q;

    for (;;) {
        if (atomic_load_explicit(&h->interrupted, memory_order_relaxed))
            return closed_err();
        if (delay_ms <= 0 && it.priority) {
            int rc = 0;
            bool placed = false;
            pthread_mutex_lock(&q->prio_mu);
            if (atomic_load(&q->prio_n) < q->capacity) {
                rc = level_push(q, it);
                placed = rc == 0;
            }
            pthread_mutex_unlock(&q->prio_mu);
            if (rc)
                return rc;
            if (placed) {
                evc_notify(&q->readable);
                return 0;
            }
        } else if (delay_ms <= 0) {
            if (ring_push(&q->ready, it)) {
                evc_notify(&q->readable);
                return 0;
            }
        } else {
            int rc = 0;
            bool placed = false;
            pthread_mutex_lock(&q->heap_mu);
            if (q->heap_n < q->capacity) {
                rc = heap_push(q, it, evq__now_mono_ns() + delay_ms * 1000000);
                placed = rc == 0;
            }
            pthread_mutex_unlock(&q->heap_mu);
            if (rc)
                return rc;
            if (placed) {
                /* Sleepers may need to wake earlier than they planned. */
                evc_notify(&q->readable);
                return 0;
            }
        }
        if (h->overflow_error)
            return evq__err(EVQ_EFULL,
                            "memory queue '%s' is full (capacity "
                            "%zu)",
                            q->name, q->capacity);
        unsigned key = evc_prepare(&q->writable);
        bool room = delay_ms > 0     ? atomic_load(&q->delayed) < q->capacity
                    : it.priority ? atomic_load(&q->prio_n) < q->capacity
                                  : ring_depth(&q->ready) <= q->low_water;
        if (room || atomic_load(&h->interrupted)) {
            continue;
        }
        evc_wait(&q->writable, key, INT64_MAX);
    }
}

static int memory_enqueue(void *state, const evq__item *items, size_t n)
{
    mhandle *h = state;
    mqueue *q = h->q;

    if (h->overflow_error && n > 1) {
        /* Refuse a batch whole when there visibly is no room for it. */
        bool delayed = items[0].delay_ms > 0;
        size_t used =
            delayed ? atomic_load(&q->delayed) : ring_depth(&q->ready);
        if (used + n > q->capacity)
            return evq__err(EVQ_EFULL,
                            "memory queue '%s' has no room for a batch of %zu "
                            "(capacity %zu)",
                            q->name, n, q->capacity);
    }
    bury(q, (int)n + 1);
    for (size_t i = 0; i < n; i++) {
        mitem it = {.attempt = 0, .priority = (unsigned char)items[i].priority};
        if (items[i].bytes) {
            mblob *b = malloc(sizeof *b + items[i].len);
            if (!b)
                return evq__err(EVQ_ENOMEM, "out of memory");
            b->len = items[i].len;
            b->priority = items[i].priority;
            memcpy(b->data, items[i].bytes, items[i].len);
            it.p = b;
            it.blob = true;
        } else {
            it.p = evq__event_ref(items[i].ev);
        }
        int rc = put(h, it, items[i].delay_ms);
        if (rc) {
            item_free(it);
            return rc;
        }
    }
    return 0;
}

/* Takes up to max ready events into d; how many.  The counters and the
 * producers' wake-up are seen to once per call, not per event. */
static size_t take(mqueue *q, evq__delivery *d, size_t max)
{
    if (atomic_load_explicit(&q->next_due, memory_order_relaxed) != INT64_MAX) {
        int64_t now = evq__now_mono_ns();
        if (atomic_load_explicit(&q->next_due, memory_order_relaxed) <= now)
            promote_due(q, now);
    }
    size_t n = 0, from_levels = 0;
    mitem it, got[64];
    if (atomic_load_explicit(&q->prio_n, memory_order_relaxed)) {
        pthread_mutex_lock(&q->prio_mu);
        while (from_levels < max && from_levels < 64 &&
               level_pop(q, &got[from_levels]))
            from_levels++;
        pthread_mutex_unlock(&q->prio_mu);
        if (from_levels)
            evc_notify(&q->writable);
    }
    while (n < max && (n < from_levels ? (it = got[n], true)
                                       : ring_pop(&q->ready, &it))) {
        it.attempt++;
        mblob *b = it.blob ? it.p : NULL;
        d[n++] = (evq__delivery){.ev = b ? NULL : it.p,
                                 .bytes = b ? b->data : NULL,
                                 .len = b ? b->len : 0,
                                 .attempt = it.attempt,
                                 .token = it.p};
    }
    if (n) {
        atomic_fetch_add_explicit(&q->in_flight, (long)n, memory_order_relaxed);
        if (ring_depth(&q->ready) <= q->low_water)
            evc_notify(&q->writable);
    }
    return n;
}

static int memory_dequeue(void *state, evq__delivery *d, size_t max,
                          int timeout_ms)
{
    mhandle *h = state;
    mqueue *q = h->q;
    int64_t deadline = 0;

    for (int spins = 0;; spins++) {
        if (atomic_load_explicit(&h->interrupted, memory_order_relaxed)) {
            /* A wake-up meant for a reader may have landed here; pass it. */
            if (ring_depth(&q->ready))
                evc_notify(&q->readable);
            return closed_err();
        }
        size_t n = take(q, d, max);
        if (n)
            return (int)n;
        if (timeout_ms == 0)
            return evq__err(EVQ_ETIMEDOUT, "queue is empty");
        if (spins < SPIN_LIMIT) { /* a producer is often a moment away */
            cpu_relax();
            continue;
        }
        int64_t now = evq__now_mono_ns();
        if (deadline == 0)
            deadline = timeout_ms < 0 ? INT64_MAX
                                      : now + (int64_t)timeout_ms * 1000000;
        if (now >= deadline)
            return evq__err(EVQ_ETIMEDOUT, "no event within %d ms", timeout_ms);
        /* About to sleep: nobody is producing, so free what consumers
         * left for producers rather than hold it while idle. */
        bury(q, GRAVE_SIZE);
        unsigned key = evc_prepare(&q->readable);
        if (ring_depth(&q->ready) || atomic_load(&q->prio_n) ||
            atomic_load(&h->interrupted)) {
            continue;
        }
        int64_t wake = deadline, due = atomic_load(&q->next_due);
        if (due < wake)
            wake = due;
        evc_wait(&q->readable, key, wake);
    }
}

/* An acked event is not freed here but handed back to the producers, who
 * free it on their next enqueue: memory is then released on the thread that
 * allocated it, where malloc's per-thread caches serve the next event,
 * instead of crossing threads on every event (which costs glibc malloc a
 * locked slow path per allocation).  When the graveyard is full the
 * consumer frees as usual, and a consumer about to sleep (nothing produced
 * for a while) empties it, so idle queues hold no finished events. */
static int memory_ack(void *state, evq__delivery **d, size_t n)
{
    mqueue *q = ((mhandle *)state)->q;
    atomic_fetch_sub_explicit(&q->in_flight, (int64_t)n, memory_order_relaxed);
    for (size_t i = 0; i < n; i++) {
        mitem it = {.p = d[i]->token, .blob = d[i]->ev == NULL};
        /* Only an event nobody else references goes to the graveyard; one
         * the application still holds just loses the queue's reference
         * now, so it stops counting as shared the moment it is acked. */
        if ((it.blob ||
             atomic_load_explicit(&d[i]->ev->refs, memory_order_acquire) ==
                 1) &&
            ring_push(&q->grave, it))
            continue;
        item_free(it);
    }
    return 0;
}

static int memory_nack(void *state, evq__delivery *d, int64_t delay_ms)
{
    mqueue *q = ((mhandle *)state)->q;
    mitem it = {.p = d->token, .attempt = d->attempt, .blob = d->ev == NULL};
    int rc = 0;
    int prio = it.blob ? ((mblob *)it.p)->priority
                       : evq__event_priority(d->ev);
    it.priority = (unsigned char)(prio > 0 ? prio : 0);
    bool failed;

    atomic_fetch_sub_explicit(&q->in_flight, 1, memory_order_relaxed);
    if (delay_ms <= 0 && ready_push(q, it, &failed)) {
        evc_notify(&q->readable);
        return 0;
    }
    /* Delayed, or the ring is full: the heap takes it without a bound check,
     * since a nack must never block; it held a place before delivery. */
    pthread_mutex_lock(&q->heap_mu);
    rc = heap_push(
        q, it, evq__now_mono_ns() + (delay_ms > 0 ? delay_ms : 0) * 1000000);
    pthread_mutex_unlock(&q->heap_mu);
    if (rc) {
        item_free(it);
        return evq__err(EVQ_ENOMEM, "out of memory requeueing an event; it "
                                    "was dropped");
    }
    evc_notify(&q->readable);
    return 0;
}

static int memory_interrupt(void *state)
{
    mhandle *h = state;
    atomic_store(&h->interrupted, true);
    evc_notify(&h->q->readable);
    evc_notify(&h->q->writable);
    return 0;
}

static int memory_count(void *state, const char *name, int64_t *n)
{
    (void)state;
    *n = 0;
    pthread_mutex_lock(&registry_lock);
    for (mqueue *q = registry; q; q = q->next)
        if (strcmp(q->name, name) == 0) {
            *n = (int64_t)ring_depth(&q->ready) + atomic_load(&q->in_flight) +
                 (int64_t)atomic_load(&q->delayed) +
                 (int64_t)atomic_load(&q->prio_n);
            break;
        }
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

static int memory_stats(void *state, struct evq_queue_stats *out)
{
    mqueue *q = ((mhandle *)state)->q;
    out->depth = (int64_t)ring_depth(&q->ready) + (int64_t)atomic_load(&q->prio_n);
    out->in_flight = atomic_load(&q->in_flight);
    out->delayed = (int64_t)atomic_load(&q->delayed);
    return 0;
}

static int memory_pause(void *state, int set)
{
    mqueue *q = ((mhandle *)state)->q;
    if (set < 0)
        return atomic_load(&q->paused) ? 1 : 0;
    atomic_store(&q->paused, set != 0);
    return 0;
}

static int memory_done_put(void *state, const char *id, int64_t window_ms)
{
    return evq__seen_put(((mhandle *)state)->q->done, id, window_ms);
}

static int memory_done_has(void *state, const char *id)
{
    return evq__seen_has(((mhandle *)state)->q->done, id) ? 1 : 0;
}

const struct evq_backend_ops evq__backend_memory = {
    .scheme = "memory",
    .flags = EVQ__BY_REF | EVQ__INSTANT | EVQ__PRIORITIES,
    .opts = memory_opts,
    .open = memory_open,
    .enqueue = memory_enqueue,
    .dequeue = memory_dequeue,
    .ack = memory_ack,
    .nack = memory_nack,
    .interrupt = memory_interrupt,
    .stats = memory_stats,
    .count = memory_count,
    .close = memory_close,
    .destroy = memory_destroy,
    .pause = memory_pause,
    .done_put = memory_done_put,
    .done_has = memory_done_has,
};
