/*
 * dispatch.c - handler registry and the default dispatcher.
 *
 * Dispatch takes no lock: handlers live in an append-only table that readers
 * walk up to a published count.  Registering appends under a mutex and
 * publishes the new count with release order; when the table is full it is
 * copied into one twice the size and the old one is kept (not freed) until
 * evq_events_free, because a dispatch may still be walking it.  So a handler
 * may register more handlers without deadlock, and many threads dispatch at
 * once without contending.
 *
 * Middleware hooks (evq_events_use) sit in a fixed array published the
 * same way; a dispatch runs the befores, the handlers, then the afters,
 * with the thread's trace context the event's (trace.c).
 *
 * Batch handlers live in the same table.  An event type's first matching
 * batch handler takes it: a worker gathers such events into batches for it
 * (evq__batch_handler, evq__dispatch_batch); evq_dispatch calls it with a
 * batch of one.
 */
#include "internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum match_kind { MATCH_EXACT, MATCH_PREFIX, MATCH_ALL };

typedef struct handler {
    char *pattern; /* for MATCH_PREFIX, without the final '*' ("user.") */
    size_t plen;
    enum match_kind kind;
    evq_process_fn fn;
    evq_batch_fn batch_fn; /* a batch handler: fn is NULL */
    size_t max_batch;
    int64_t max_wait_ms;
    void *arg;
} handler;

typedef struct table {
    struct table *older; /* retired tables, freed with the registry */
    size_t cap;
    atomic_size_t n;
    handler h[];
} table;

#define MAX_HOOKS 16

typedef struct hook {
    evq_before_fn before;
    evq_after_fn after;
    void *arg;
} hook;

struct evq_events {
    pthread_mutex_t mu;
    hook hooks[MAX_HOOKS];
    atomic_size_t n_hooks;
    _Atomic(table *) cur;
    /* the largest max_batch of the batch handlers, 0 while there are none:
     * a worker with no batch handler asks nothing per event */
    atomic_size_t batch_max;
};

evq_events *evq_events_new(void)
{
    evq_events *e = calloc(1, sizeof *e);
    table *t = calloc(1, sizeof *t + 8 * sizeof(handler));

    if (!e || !t) {
        free(e);
        free(t);
        evq__err(EVQ_ENOMEM, "out of memory");
        return NULL;
    }
    t->cap = 8;
    atomic_init(&t->n, 0);
    pthread_mutex_init(&e->mu, NULL);
    atomic_init(&e->cur, t);
    atomic_init(&e->batch_max, 0);
    atomic_init(&e->n_hooks, 0);
    return e;
}

void evq_events_free(evq_events *e)
{
    if (!e)
        return;
    table *t = atomic_load(&e->cur);
    size_t n = atomic_load(&t->n);
    for (size_t i = 0; i < n; i++)
        free(t->h[i].pattern);
    while (t) {
        table *older = t->older;
        free(t);
        t = older;
    }
    pthread_mutex_destroy(&e->mu);
    free(e);
}

static int parse_pattern(const char *p, handler *h)
{
    size_t n;
    const char *star;

    if (!p)
        return evq__err(EVQ_EINVAL, "handler pattern is NULL");
    n = strlen(p);
    if (n == 0)
        return evq__err(EVQ_EINVAL, "handler pattern is empty");
    if (n > EVQ_MAX_ATTR_BYTES)
        return evq__err(EVQ_EINVAL, "handler pattern is longer than %d bytes",
                        EVQ_MAX_ATTR_BYTES);
    if (!evq__utf8_valid(p, n))
        return evq__err(EVQ_EINVAL, "handler pattern is not valid UTF-8");
    star = strchr(p, '*');
    if (!star) {
        h->kind = MATCH_EXACT;
        h->plen = n;
    } else if (n == 1) {
        h->kind = MATCH_ALL;
        h->plen = 0;
    } else if (star == p + n - 1 && n >= 3 && p[n - 2] == '.') {
        h->kind = MATCH_PREFIX;
        h->plen = n - 1;
    } else {
        return evq__err(EVQ_EINVAL,
                        "handler pattern '%.64s' is malformed: '*' may only "
                        "be the whole pattern or follow a final '.'",
                        p);
    }
    h->pattern = evq__strndup(p, h->plen);
    if (!h->pattern)
        return evq__err(EVQ_ENOMEM, "out of memory");
    return 0;
}

/* Appends h (its pattern now the registry's) to the table. */
static int add_handler(evq_events *e, handler *h)
{
    pthread_mutex_lock(&e->mu);
    table *t = atomic_load_explicit(&e->cur, memory_order_relaxed);
    size_t n = atomic_load_explicit(&t->n, memory_order_relaxed);
    if (n == t->cap) {
        table *nt = malloc(sizeof *nt + 2 * t->cap * sizeof(handler));
        if (!nt) {
            pthread_mutex_unlock(&e->mu);
            free(h->pattern);
            return evq__err(EVQ_ENOMEM, "out of memory");
        }
        nt->cap = 2 * t->cap;
        memcpy(nt->h, t->h, n * sizeof(handler));
        atomic_init(&nt->n, n);
        nt->older = t;
        atomic_store_explicit(&e->cur, nt, memory_order_release);
        t = nt;
    }
    t->h[n] = *h;
    atomic_store_explicit(&t->n, n + 1, memory_order_release);
    if (h->batch_fn && h->max_batch > atomic_load(&e->batch_max))
        atomic_store_explicit(&e->batch_max, h->max_batch,
                              memory_order_release);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int evq_register_handler(evq_events *e, const char *pattern, evq_process_fn fn,
                         void *arg)
{
    handler h = {0};
    int rc;

    if (!e || !fn)
        return evq__err(EVQ_EINVAL, "evq_register_handler: %s is NULL",
                        e ? "handler function" : "registry");
    if ((rc = parse_pattern(pattern, &h)) != 0)
        return rc;
    h.fn = fn;
    h.arg = arg;
    return add_handler(e, &h);
}

int evq_register_batch_handler(evq_events *e, const char *pattern,
                               evq_batch_fn fn, void *arg, size_t max_batch,
                               int64_t max_wait_ms)
{
    handler h = {0};
    int rc;

    if (!e || !fn)
        return evq__err(EVQ_EINVAL, "evq_register_batch_handler: %s is NULL",
                        e ? "handler function" : "registry");
    if (max_batch < 1 || max_batch > EVQ_MAX_BATCH)
        return evq__err(EVQ_EINVAL,
                        "batch handler max_batch: %zu is out of range (1 to "
                        "%d)",
                        max_batch, EVQ_MAX_BATCH);
    if (max_wait_ms < 0 || max_wait_ms > 3600000)
        return evq__err(EVQ_EINVAL,
                        "batch handler max_wait_ms: %lld is out of range (0 "
                        "to 3600000)",
                        (long long)max_wait_ms);
    if ((rc = parse_pattern(pattern, &h)) != 0)
        return rc;
    h.batch_fn = fn;
    h.max_batch = max_batch;
    h.max_wait_ms = max_wait_ms;
    h.arg = arg;
    return add_handler(e, &h);
}

int evq__pattern_check(const char *pattern)
{
    handler h;
    int rc = parse_pattern(pattern, &h);
    if (rc == 0)
        free(h.pattern);
    return rc;
}

bool evq__pattern_match(const char *pattern, const char *type)
{
    size_t n = strlen(pattern), tlen = strlen(type);
    if (n == 1 && pattern[0] == '*')
        return true;
    if (n >= 3 && pattern[n - 1] == '*')
        return tlen > n - 1 && memcmp(type, pattern, n - 1) == 0;
    return tlen == n && memcmp(type, pattern, n) == 0;
}

/* The published handlers: a walk reads the table and its count once. */
static const handler *handlers(evq_events *e, size_t *n)
{
    table *t = atomic_load_explicit(&e->cur, memory_order_acquire);
    *n = atomic_load_explicit(&t->n, memory_order_acquire);
    return t->h;
}

static bool match(const handler *h, const char *type, size_t tlen)
{
    switch (h->kind) {
    case MATCH_ALL:
        return true;
    case MATCH_PREFIX:
        return tlen > h->plen && memcmp(type, h->pattern, h->plen) == 0;
    default:
        return tlen == h->plen && memcmp(type, h->pattern, tlen) == 0;
    }
}

/* The reason a handler gave for its failure (evq_handler_reason), on the
 * handler's own thread. */
static _Thread_local char tls_reason[512];
static _Thread_local bool tls_reason_set;

int evq_handler_reason(const char *fmt, ...)
{
    if (!fmt)
        return EVQ_EHANDLER;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_reason, sizeof tls_reason, fmt, ap);
    va_end(ap);
    tls_reason_set = true;
    return EVQ_EHANDLER;
}

/* A handler's failure as the code and message evq_dispatch gives. */
static int handler_failed(int rc, const char *who, const char *type)
{
    if (tls_reason_set) {
        tls_reason_set = false;
        return evq__err(rc < 0 ? rc : EVQ_EHANDLER, "%s", tls_reason);
    }
    if (rc < 0 && evq_errmsg()[0])
        return evq__err_prefix(rc, "%s for '%.64s' failed (%s)", who, type,
                               evq_strerror(rc));
    if (rc < 0)
        return evq__err(rc, "%s for '%.64s' failed: %s", who, type,
                        evq_strerror(rc));
    return evq__err(EVQ_EHANDLER, "%s for '%.64s' returned %d", who, type, rc);
}

/* Runs the handlers matching ev: the per-event ones, and (with `batch`)
 * the first batch handler with a batch of one.  EVQ_ENOHANDLER (no
 * message) when none matched. */
static int dispatch(evq_events *e, const evq_event *ev, bool batch)
{
    bool matched = false, batched = false;
    const char *type = evq_event_type(ev);
    size_t tlen = strlen(type), n;
    const handler *hs = handlers(e, &n);
    for (size_t i = 0; i < n; i++) {
        const handler *h = &hs[i];
        if (!match(h, type, tlen) || (h->batch_fn && (!batch || batched)))
            continue;
        matched = true;
        evq__err_clear(); /* so a detail the handler leaves is its own */
        tls_reason_set = false;
        int rc;
        if (h->batch_fn) {
            batched = true;
            int one = 0;
            rc = h->batch_fn(&ev, 1, &one, h->arg);
            if (rc == 0)
                rc = one;
        } else {
            rc = h->fn(ev, h->arg);
        }
        if (rc != 0) {
            char who[48];
            snprintf(who, sizeof who, "%s %zu",
                     h->batch_fn ? "batch handler" : "handler", i);
            return handler_failed(rc, who, type);
        }
    }
    return matched ? 0 : EVQ_ENOHANDLER;
}

int evq_events_use(evq_events *e, evq_before_fn before, evq_after_fn after,
                   void *arg)
{
    if (!e || (!before && !after))
        return evq__err(EVQ_EINVAL, "evq_events_use: %s",
                        e ? "both hooks are NULL" : "events is NULL");
    pthread_mutex_lock(&e->mu);
    size_t n = atomic_load_explicit(&e->n_hooks, memory_order_relaxed);
    if (n == MAX_HOOKS) {
        pthread_mutex_unlock(&e->mu);
        return evq__err(EVQ_EFULL, "evq_events_use: %d hooks already",
                        MAX_HOOKS);
    }
    e->hooks[n] = (hook){before, after, arg};
    atomic_store_explicit(&e->n_hooks, n + 1, memory_order_release);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static const hook *hooks(evq_events *e, size_t *n)
{
    *n = atomic_load_explicit(&e->n_hooks, memory_order_acquire);
    return e->hooks;
}

/* The befores of ev, first added first, from hook 0: how many ran (their
 * afters are due) and the first failure, as a dispatch gives it. */
static int run_befores(const hook *hs, size_t nh, const evq_event *ev,
                       void **calls, uint64_t *t0, size_t *ran)
{
    for (size_t i = 0; i < nh; i++) {
        calls[i] = NULL;
        t0[i] = evq__ticks();
        *ran = i + 1;
        if (!hs[i].before)
            continue;
        evq__err_clear();
        tls_reason_set = false;
        int rc = hs[i].before(ev, &calls[i], hs[i].arg);
        if (rc) {
            char who[40];
            snprintf(who, sizeof who, "middleware %zu", i);
            return handler_failed(rc, who, evq_event_type(ev));
        }
    }
    return 0;
}

/* The afters of the `ran` hooks, last added first, each taking the
 * result so far and giving the next. */
static int run_afters(const hook *hs, size_t ran, const evq_event *ev,
                      void **calls, const uint64_t *t0, int rc)
{
    double f = evq__ns_per_tick();
    char msg[512];
    for (size_t i = ran; i-- > 0;) {
        if (!hs[i].after)
            continue;
        int64_t took = (int64_t)((double)(evq__ticks() - t0[i]) * f);
        /* the failure's message, kept from what the after's own calls
         * leave; a code of its own gets a message of its own */
        snprintf(msg, sizeof msg, "%s", evq_errmsg());
        evq__err_clear();
        tls_reason_set = false;
        int r = hs[i].after(ev, rc, took, calls[i], hs[i].arg);
        if (r != 0 && r == rc) {
            evq__err(r, "%s", msg);
            tls_reason_set = false;
        } else if (r != 0) {
            char who[40];
            snprintf(who, sizeof who, "middleware %zu", i);
            r = handler_failed(r, who, evq_event_type(ev));
        }
        rc = r;
    }
    return rc;
}

/* dispatch() inside the hooks, with the event's trace context. */
static int dispatch_hooked(evq_events *e, const evq_event *ev, bool batch)
{
    evq__trace_saved saved;
    evq__trace_enter(ev, &saved);
    size_t nh, ran = 0;
    const hook *hs = hooks(e, &nh);
    void *calls[MAX_HOOKS];
    uint64_t t0[MAX_HOOKS];
    int rc = nh ? run_befores(hs, nh, ev, calls, t0, &ran) : 0;
    if (!rc)
        rc = dispatch(e, ev, batch);
    if (ran)
        rc = run_afters(hs, ran, ev, calls, t0, rc);
    evq__trace_leave(&saved);
    return rc;
}

int evq_dispatch(evq_events *e, const evq_event *ev)
{
    if (!e || !ev)
        return evq__err(EVQ_EINVAL, "evq_dispatch: %s is NULL",
                        e ? "event" : "registry");
    int rc = dispatch_hooked(e, ev, true);
    if (rc == EVQ_ENOHANDLER)
        return evq__err(EVQ_ENOHANDLER, "no handler for event type '%.64s'",
                        evq_event_type(ev));
    return rc;
}

const void *evq__batch_handler(evq_events *e, const evq_event *ev,
                               size_t *max_batch, int64_t *max_wait_ms)
{
    if (atomic_load_explicit(&e->batch_max, memory_order_acquire) == 0)
        return NULL;
    const char *type = evq_event_type(ev);
    size_t tlen = strlen(type), n;
    const handler *hs = handlers(e, &n);
    for (size_t i = 0; i < n; i++) {
        const handler *h = &hs[i];
        if (h->batch_fn && match(h, type, tlen)) {
            *max_batch = h->max_batch;
            *max_wait_ms = h->max_wait_ms;
            return h;
        }
    }
    return NULL;
}

size_t evq__events_max_batch(evq_events *e)
{
    return atomic_load_explicit(&e->batch_max, memory_order_acquire);
}

static void batch_core(evq_events *e, const handler *h,
                       const evq_event *const *evs, size_t n, int *rcs,
                       char *reason, size_t reason_cap);

void evq__dispatch_batch(evq_events *e, const void *bh,
                         const evq_event *const *evs, size_t n, int *rcs,
                         char *reason, size_t reason_cap)
{
    size_t nh;
    const hook *hs = hooks(e, &nh);
    if (nh == 0) {
        batch_core(e, bh, evs, n, rcs, reason, reason_cap);
        return;
    }
    /* each event's befores; those they failed stay out of the batch */
    void **calls = calloc(n * nh, sizeof *calls);
    uint64_t *t0 = calloc(n * nh, sizeof *t0);
    size_t *ran = calloc(n, sizeof *ran), *map = calloc(n, sizeof *map);
    const evq_event **sub = calloc(n, sizeof *sub);
    int *subrcs = calloc(n, sizeof *subrcs);
    if (!calls || !t0 || !ran || !map || !sub || !subrcs) {
        evq__err(EVQ_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++)
            rcs[i] = EVQ_ENOMEM;
        snprintf(reason, reason_cap, "%s", evq_errmsg());
        goto out;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        evq__trace_saved saved;
        evq__trace_enter(evs[i], &saved);
        rcs[i] =
            run_befores(hs, nh, evs[i], calls + i * nh, t0 + i * nh, &ran[i]);
        evq__trace_leave(&saved);
        if (rcs[i]) {
            snprintf(reason, reason_cap, "%s", evq_errmsg());
        } else {
            map[m] = i;
            sub[m++] = evs[i];
        }
    }
    if (m) {
        batch_core(e, bh, sub, m, subrcs, reason, reason_cap);
        for (size_t k = 0; k < m; k++)
            rcs[map[k]] = subrcs[k];
    }
    for (size_t i = 0; i < n; i++) {
        evq__trace_saved saved;
        evq__trace_enter(evs[i], &saved);
        int before = rcs[i];
        rcs[i] =
            run_afters(hs, ran[i], evs[i], calls + i * nh, t0 + i * nh, rcs[i]);
        if (rcs[i] && rcs[i] != before)
            snprintf(reason, reason_cap, "%s", evq_errmsg());
        evq__trace_leave(&saved);
    }
out:
    free(calls);
    free(t0);
    free(ran);
    free(map);
    free(sub);
    free(subrcs);
}

static void batch_core(evq_events *e, const handler *h,
                       const evq_event *const *evs, size_t n, int *rcs,
                       char *reason, size_t reason_cap)
{
    const char *type = evq_event_type(evs[0]);
    memset(rcs, 0, n * sizeof *rcs);
    evq__err_clear();
    tls_reason_set = false;
    int rc = h->batch_fn(evs, n, rcs, h->arg);
    bool failed = rc != 0;
    for (size_t i = 0; i < n && !failed; i++)
        failed = rcs[i] != 0;
    if (failed) {
        /* one reason for the batch: the handler's, or its code's */
        int code = rc;
        for (size_t i = 0; i < n && !code; i++)
            code = rcs[i];
        handler_failed(code, "the batch handler", type);
        snprintf(reason, reason_cap, "%s", evq_errmsg());
        for (size_t i = 0; rc && i < n; i++)
            rcs[i] = rc;
        for (size_t i = 0; i < n; i++)
            if (rcs[i] > 0)
                rcs[i] = EVQ_EHANDLER;
    }
    /* the per-event handlers of what the batch handler did */
    for (size_t i = 0; i < n; i++) {
        if (rcs[i])
            continue;
        evq__trace_saved saved;
        evq__trace_enter(evs[i], &saved);
        int prc = dispatch(e, evs[i], false);
        evq__trace_leave(&saved);
        if (prc && prc != EVQ_ENOHANDLER) {
            rcs[i] = prc;
            snprintf(reason, reason_cap, "%s", evq_errmsg());
        }
    }
}

size_t evq_events_count(evq_events *e)
{
    if (!e)
        return 0;
    size_t n;
    handlers(e, &n);
    return n;
}
