/*
 * queue.c - the queue core: the backend table, options, encoding and
 * decoding around the backend calls, message lifetimes.
 *
 * A backend only moves messages; the core picks it by URL scheme, resolves
 * options, encodes on the way in and decodes on the way out, and moves what
 * cannot be decoded to the dead-letter queue so no caller ever sees it.
 */
#include "internal.h"

#include "evq_backends.h" /* written by cmake/backends.cmake */

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct evq_queue {
    const struct evq_backend_ops *ops;
    void *state;
    char *name;
    char *url;      /* as given, for opening the dead-letter queue */
    char *redacted; /* safe to print */
    evq__optset opts;
    const evq_codec *codec; /* NULL: events pass by reference */
    evq_codec_limits lim;
    char *dead_name;
    int64_t lease_ns; /* visibility timeout in ns; 0 without leases */
    evq__pipe *pipe;  /* the send pipeline */
    evq__ra *ra;      /* the read-ahead of a backend with fetch, else NULL */
    evq__logger *log; /* broker events */
    atomic_bool closed;
    /* The pause state as last read from the backend (-1: not read yet),
     * when (monotonic ns), and what a paused dequeue waits on: one thread
     * at a time reads it again (read_mu, held over the backend's call),
     * an interrupt or a change wakes the waiters (pause_mu, never held
     * over a backend call, so an interrupt does not wait for one). */
    pthread_mutex_t read_mu, pause_mu;
    pthread_cond_t pause_cv; /* CLOCK_MONOTONIC, with pause_mu */
    atomic_int paused;
    atomic_uint pause_gen; /* raised by every pause and resume */
    atomic_bool read_failing;
    _Atomic int64_t pause_read_ns;
    atomic_bool interrupted;
    pthread_mutex_t dead_lock;
    evq_queue *dead; /* opened on first use */
    /* Written per event: producers' and consumers' counters on lines of
     * their own, apart from the read-mostly fields above, so a producer and
     * a consumer sharing a handle do not pull each other's lines. */
    _Alignas(64) atomic_uint_fast64_t enqueued;
    _Alignas(64) atomic_int refs; /* the caller's, plus one per unsettled
                                     message */
    atomic_uint_fast64_t dequeued, acked, nacked, dead_lettered;
};

static int backend_enqueue(evq_queue *q, const evq__item *items, size_t n);
static int pipe_send(void *ctx, const evq__item *items, size_t n);
static int pipe_start(void *ctx, const evq__item *items, size_t n,
                      void **ticket);
/* The result of a batch whose duplicates the backend found itself
 * (EVQ__UNIQUE_ID): success when merging.  The one place that maps it:
 * every event of such a backend goes through pipe_finish. */
static int unique_result(const evq_queue *q, int rc, bool merge)
{
    if (rc == EVQ_EEXIST && (q->ops->flags & EVQ__UNIQUE_ID) && merge)
        return 0;
    return rc;
}

static int pipe_finish(void *ctx, void *ticket, size_t n);
static void pipe_unclaim(void *ctx, const char *claim);

struct evq_msg {
    evq_queue *q;
    evq_event *ev; /* owned when decoded, else the delivery's */
    bool owns_ev;
    evq__delivery d;
};

/* URL schemes and the backend each selects: those this build has. */
#define EVQ__DECLARE(name, scheme)                                             \
    extern const struct evq_backend_ops evq__backend_##name;
EVQ__BACKEND_SCHEMES(EVQ__DECLARE)
#undef EVQ__DECLARE
#define EVQ__ENTRY(name, scheme) {scheme, &evq__backend_##name},
static const struct {
    const char *scheme;
    const struct evq_backend_ops *ops;
} backends[] = {EVQ__BACKEND_SCHEMES(EVQ__ENTRY)};
#undef EVQ__ENTRY

/* Schemes this build left out: the option that would build each, and its
 * client library. */
#define EVQ__ENTRY(name, scheme, option, module) {scheme, option, module},
static const struct {
    const char *scheme, *option, *module;
} omitted[] = {EVQ__BACKEND_OMITTED(EVQ__ENTRY){NULL, NULL, NULL}};
#undef EVQ__ENTRY

int evq__scheme_unknown(const char *scheme)
{
    for (size_t i = 0; omitted[i].scheme; i++)
        if (strcmp(omitted[i].scheme, scheme) == 0)
            return evq__err(EVQ_ENOTSUP,
                            "this evq was built without the %s:// backend "
                            "(build it with cmake -DEVQ_WITH_%s=ON, which "
                            "needs %s)",
                            scheme, omitted[i].option, omitted[i].module);
    char built[256] = "";
    size_t len = 0;
    for (size_t i = 0; i < sizeof backends / sizeof *backends; i++)
        len += (size_t)snprintf(built + len, sizeof built - len, "%s%s",
                                i ? ", " : "", backends[i].scheme);
    return evq__err(EVQ_EINVAL, "unknown URL scheme '%.32s' (this evq has: %s)",
                    scheme, built);
}

#if !EVQ__HAVE_SQLITE
/* The outbox is sqlite's: without it, the call says so. */
int evq_sqlite_enqueue_in(struct sqlite3 *db, const char *queue,
                          const evq_event *ev, int64_t delay_ms,
                          const char *format)
{
    EVQ__UNUSED(db), EVQ__UNUSED(queue), EVQ__UNUSED(ev);
    EVQ__UNUSED(delay_ms), EVQ__UNUSED(format);
    return evq__scheme_unknown("sqlite");
}
#endif

#if !EVQ__HAVE_POSTGRES
int evq_pg_enqueue_in(struct pg_conn *conn, const char *queue,
                      const evq_event *ev, int64_t delay_ms, const char *format)
{
    EVQ__UNUSED(conn), EVQ__UNUSED(queue), EVQ__UNUSED(ev);
    EVQ__UNUSED(delay_ms), EVQ__UNUSED(format);
    return evq__scheme_unknown("postgres");
}
#endif

size_t evq_backends(const char **schemes, size_t max)
{
    size_t n = sizeof backends / sizeof *backends;
    for (size_t i = 0; schemes && i < n && i < max; i++)
        schemes[i] = backends[i].scheme;
    return n;
}

const struct evq_backend_ops *evq__backend_find(const char *scheme)
{
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++) {
        if (strcmp(backends[i].scheme, scheme) == 0)
            return backends[i].ops;
    }
    return NULL;
}

static bool ops_complete(const struct evq_backend_ops *o)
{
    bool halves = o->enqueue_start && o->enqueue_finish;
    return o->open && (o->enqueue || halves) &&
           (o->dequeue || (o->fetch && o->hand_back)) && o->ack && o->nack &&
           o->interrupt && o->close;
}

static int check_name(const char *name)
{
    size_t n;

    if (!name)
        return evq__err(EVQ_EINVAL, "queue name is NULL");
    n = strlen(name);
    if (n == 0 || n > 200)
        return evq__err(EVQ_EINVAL, "queue name must be 1 to 200 characters");
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return evq__err(EVQ_EINVAL,
                            "queue name '%.64s' has a character outside "
                            "[A-Za-z0-9._-] at offset %zu",
                            name, i);
    }
    return 0;
}

static void queue_release(evq_queue *q)
{
    if (atomic_fetch_sub(&q->refs, 1) != 1)
        return;
    evq__ra_free(q->ra); /* gives back what it holds: before close */
    q->ops->close(q->state);
    evq__logger_free(q->log);
    evq__pipe_free(q->pipe);
    evq_queue_close(q->dead);
    pthread_mutex_destroy(&q->dead_lock);
    pthread_mutex_destroy(&q->pause_mu);
    pthread_mutex_destroy(&q->read_mu);
    pthread_cond_destroy(&q->pause_cv);
    evq__optset_free(&q->opts);
    free(q->name);
    free(q->url);
    free(q->redacted);
    free(q->dead_name);
    free(q);
}

int evq_queue_open(evq_queue **qp, const char *url, const char *name,
                   const evq_opts *opts)
{
    evq__url u;
    evq_queue *q = NULL;
    const char *fmt;
    int rc;

    if (!qp)
        return evq__err(EVQ_EINVAL, "evq_queue_open: q is NULL");
    *qp = NULL;
    if ((rc = check_name(name)) != 0)
        return rc;
    if ((rc = evq__url_parse(url, &u)) != 0)
        return rc;
    const struct evq_backend_ops *ops = evq__backend_find(u.scheme);
    if (!ops) {
        rc = evq__scheme_unknown(u.scheme);
        goto out;
    }
    if (!ops_complete(ops)) {
        rc = evq__err(EVQ_ENOTSUP, "backend %s is incomplete", ops->scheme);
        goto out;
    }
    q = aligned_alloc(_Alignof(evq_queue), sizeof *q);
    if (q)
        memset(q, 0, sizeof *q);
    if (!q) {
        rc = evq__err(EVQ_ENOMEM, "out of memory");
        goto out;
    }
    q->ops = ops;
    atomic_init(&q->refs, 1);
    atomic_init(&q->paused, -1);
    pthread_mutex_init(&q->dead_lock, NULL);
    pthread_mutex_init(&q->pause_mu, NULL);
    pthread_mutex_init(&q->read_mu, NULL);
    evq__cond_init_mono(&q->pause_cv);
    if ((rc = evq__optset_build(&q->opts, &u, opts, ops->opts)) != 0)
        goto fail;
    const evq__core_cfg *core = &q->opts.core;
    fmt = core->format;
    if (fmt)
        q->codec = evq_codec_find(fmt);
    else if (!(ops->flags & EVQ__BY_REF))
        q->codec = &evq__codec_json;
    q->lim.max_bytes = (size_t)core->max_event_bytes;
    q->lim.max_depth = (int)core->max_depth;
    if (ops->touch)
        q->lease_ns =
            evq__opt_int(&q->opts, ops->opts, "visibility_timeout_ms") *
            1000000;
    const char *dl = core->dead_letter;
    char dbuf[256];
    if (!dl) {
        snprintf(dbuf, sizeof dbuf, "%s.dead", name);
        dl = dbuf;
    }
    if (!(q->name = evq__strdup(name)) || !(q->url = evq__strdup(url)) ||
        !(q->redacted = evq__strdup(u.redacted)) ||
        !(q->dead_name = evq__strdup(dl))) {
        rc = evq__err(EVQ_ENOMEM, "out of memory");
        goto fail;
    }
    evq__pipe_ops pops = {.send = pipe_send, .unclaim = pipe_unclaim};
    if (ops->enqueue_start && ops->enqueue_finish) {
        pops.start = pipe_start;
        pops.finish = pipe_finish;
        pops.lingers = (ops->flags & EVQ__LINGERS) != 0;
    }
    q->pipe = evq__pipe_new(&pops, q, (size_t)core->max_in_flight,
                            core->overflow == EVQ__OVERFLOW_ERROR);
    if (!q->pipe) {
        rc = EVQ_ENOMEM;
        goto fail;
    }
    char where[160];
    snprintf(where, sizeof where, "%.120s '%.32s'", u.redacted, name);
    if (!(q->log = evq__logger_new(where))) {
        rc = evq__err(EVQ_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = ops->open(&q->state, &u, name, &q->opts, q->log)) != 0) {
        evq__err_prefix(rc, "opening queue '%s' on %s", name, u.redacted);
        goto fail;
    }
    if (ops->fetch) {
        evq__reconnect policy;
        evq__reconnect_init(&policy, &q->opts);
        int64_t prefetch = ops->prefetch_opt ? evq__opt_int(&q->opts, ops->opts,
                                                            ops->prefetch_opt)
                                             : 64;
        if ((rc = evq__ra_new(&q->ra, ops, q->state, (size_t)prefetch,
                              &policy)) != 0) {
            ops->close(q->state);
            goto fail;
        }
    }
    evq__url_free(&u);
    *qp = q;
    return 0;
fail:
    evq__logger_free(q->log);
    evq__pipe_free(q->pipe);
    pthread_mutex_destroy(&q->dead_lock);
    pthread_mutex_destroy(&q->pause_mu);
    pthread_mutex_destroy(&q->read_mu);
    pthread_cond_destroy(&q->pause_cv);
    evq__optset_free(&q->opts);
    free(q->name);
    free(q->url);
    free(q->redacted);
    free(q->dead_name);
    free(q);
out:
    evq__url_free(&u);
    return rc;
}

/* Wakes what waits on the backend; the read-ahead gives back what it
 * holds. */
static int queue_interrupt(evq_queue *q)
{
    pthread_mutex_lock(&q->pause_mu);
    atomic_store(&q->interrupted, true);
    pthread_cond_broadcast(&q->pause_cv);
    pthread_mutex_unlock(&q->pause_mu);
    if (q->ra)
        evq__ra_interrupt(q->ra);
    return q->ops->interrupt(q->state);
}

static void backend_stuck(void *arg)
{
    evq_queue *q = arg;
    q->ops->interrupt(q->state);
}

void evq_queue_close(evq_queue *q)
{
    if (!q)
        return;
    /* What was accepted is sent and reported first.  A server backend
     * gives up by itself (connect_timeout_ms); memory:// would wait for a
     * reader of a full queue forever, so after a second it is told to
     * refuse the rest (reported EVQ_ECLOSED). */
    evq__pipe_close(q->pipe, (q->ops->flags & EVQ__INSTANT) ? 1000 : -1,
                    backend_stuck, q);
    atomic_store(&q->closed, true);
    queue_interrupt(q);
    queue_release(q);
}

int evq_queue_delete(evq_queue *q)
{
    if (!q)
        return evq__err(EVQ_EINVAL, "evq_queue_delete: q is NULL");
    if (!q->ops->destroy)
        return evq__err(EVQ_ENOTSUP, "%s:// cannot delete a queue",
                        q->ops->scheme);
    return q->ops->destroy(q->state);
}

int evq_queue_interrupt(evq_queue *q)
{
    if (!q)
        return evq__err(EVQ_EINVAL, "evq_queue_interrupt: q is NULL");
    evq__pipe_interrupt(q->pipe);
    return queue_interrupt(q);
}

const char *evq_queue_scheme(const evq_queue *q)
{
    return q ? q->ops->scheme : NULL;
}

const char *evq_queue_name(const evq_queue *q)
{
    return q ? q->name : NULL;
}

const char *evq_queue_url(const evq_queue *q)
{
    return q ? q->redacted : NULL;
}

/* A cheap lower bound of a payload's encoded size and a check of its depth,
 * so a queue that passes events by reference refuses what a queue that
 * encodes them would refuse.  Stops as soon as either limit is passed. */
static int payload_check(const json_t *v, int depth, size_t *size,
                         const evq_codec_limits *lim)
{
    if (*size > lim->max_bytes)
        return EVQ_ETOOBIG;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        size_t klen;
        json_t *x;
        if (depth + 1 > lim->max_depth)
            return EVQ_EINVAL;
        *size += 2;
        json_object_keylen_foreach((json_t *)v, k, klen, x)
        {
            *size += klen + 3;
            int rc = payload_check(x, depth + 1, size, lim);
            if (rc)
                return rc;
        }
        return 0;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        if (depth + 1 > lim->max_depth)
            return EVQ_EINVAL;
        *size += 2;
        json_array_foreach(v, i, x)
        {
            *size += 1;
            int rc = payload_check(x, depth + 1, size, lim);
            if (rc)
                return rc;
        }
        return 0;
    }
    case JSON_STRING:
        *size += json_string_length(v) + 2;
        return *size > lim->max_bytes ? EVQ_ETOOBIG : 0;
    default:
        *size += 1;
        return 0;
    }
}

static int check_event_by_ref(const evq_queue *q, const evq_event *ev)
{
    size_t size = ev->is_binary ? ev->bin_len * 4 / 3 : 0;
    int rc = 0;

    if (ev->data)
        rc = payload_check(ev->data, 1, &size, &q->lim);
    if (!rc && size > q->lim.max_bytes)
        rc = EVQ_ETOOBIG;
    if (rc == EVQ_ETOOBIG)
        return evq__err(rc, "event %s is larger than max_event_bytes=%zu",
                        ev->id, q->lim.max_bytes);
    if (rc)
        return evq__err(rc, "payload nests deeper than max_depth=%d",
                        q->lim.max_depth);
    return 0;
}

/* ---- unique events ------------------------------------------------------
 * An event with evquniquekey is stored once per key within its TTL.  The
 * key is claimed ("unique:<key>") before the event is sent: in the
 * backend's records, atomically against every producer of the queue
 * (sqlite, postgres, redis), or in this process's table (memory://,
 * kafka://, amqp://).  A claim whose event was not stored is given back
 * (through the pipeline, pipe_unclaim).  nats:// keeps the key itself as
 * the message's Nats-Msg-Id (EVQ__UNIQUE_ID). */

static pthread_once_t claims_once = PTHREAD_ONCE_INIT;
static evq__seen *claims; /* the process's, for backends without records */

static void claims_init(void)
{
    claims = evq__seen_new();
}

/* The process table's name of claim `key` on q: its server and queue too
 * (the URL's options left out, as they do not change the queue). */
static char *process_claim(const evq_queue *q, const char *key)
{
    size_t at = strcspn(q->redacted, "?");
    size_t len = at + strlen(q->name) + strlen(key) + 3;
    char *k = malloc(len);
    if (k)
        snprintf(k, len, "%.*s\n%s\n%s", (int)at, q->redacted, q->name, key);
    return k;
}

/* Claims `key` ("unique:<key>") for ttl_ms: 1 claimed, 0 taken, or an
 * error. */
static int unique_claim(evq_queue *q, const char *key, int64_t ttl_ms)
{
    if (q->ops->record)
        return q->ops->record(q->state, key, EVQ__RECORD_CLAIM, ttl_ms);
    pthread_once(&claims_once, claims_init);
    char *k = process_claim(q, key);
    if (!claims || !k) {
        free(k);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    int rc = evq__seen_claim(claims, k, ttl_ms);
    free(k);
    return rc;
}

/* Frees claim `key` (a failure leaves it to its TTL). */
static void unique_unclaim(evq_queue *q, const char *key)
{
    if (q->ops->record) {
        q->ops->record(q->state, key, EVQ__RECORD_DEL, 0);
        return;
    }
    char *k = process_claim(q, key);
    if (claims && k)
        evq__seen_drop(claims, k);
    free(k);
}

static void pipe_unclaim(void *ctx, const char *claim)
{
    unique_unclaim(ctx, claim);
}

/* What unique event ev asks: its key (NULL: none), for how long, and
 * whether it is freed when the event is finished.  0 or EVQ_EINVAL,
 * EVQ_ENOTSUP. */
static int unique_of(const evq_queue *q, const evq_event *ev, const char **key,
                     int64_t *ttl_ms, bool *until_done)
{
    const char *id = evq_event_id(ev);
    *key = evq_event_attr(ev, "evquniquekey");
    if (!*key)
        return 0;
    if (!**key)
        return evq__err(EVQ_EINVAL, "event %s: evquniquekey is empty", id);
    *ttl_ms = q->opts.core.unique_ttl_ms;
    const char *t = evq_event_attr(ev, "evquniquettl");
    if (t) {
        char *end;
        errno = 0;
        long long v = strtoll(t, &end, 10);
        if (errno || end == t || *end || v < 1 || v > 30LL * 86400000)
            return evq__err(EVQ_EINVAL,
                            "event %s: evquniquettl '%.40s' is not a number "
                            "of milliseconds from 1 to 2592000000 (30 days)",
                            id, t);
        *ttl_ms = v;
    }
    if (*ttl_ms <= 0)
        return evq__err(EVQ_EINVAL,
                        "event %s has evquniquekey '%.100s' but no TTL: set "
                        "its evquniquettl or the queue option unique_ttl_ms",
                        id, *key);
    const char *u = evq_event_attr(ev, "evquniqueuntil");
    if (u && strcmp(u, "done") != 0 && strcmp(u, "ttl") != 0)
        return evq__err(EVQ_EINVAL,
                        "event %s: evquniqueuntil '%.40s' is neither ttl nor "
                        "done",
                        id, u);
    *until_done = u ? strcmp(u, "done") == 0
                    : q->opts.core.unique_until == EVQ__UNIQUE_UNTIL_DONE;
    if (*until_done && (q->ops->flags & EVQ__UNIQUE_ID))
        return evq__err(EVQ_ENOTSUP,
                        "%s:// keeps a unique key for the stream's duplicate "
                        "window (nats.dedup_window_ms): unique_until=done is "
                        "not possible there",
                        q->ops->scheme);
    return 0;
}

/* A batch on its way out: the events that go (those whose key was taken
 * left out when merging; a copy carrying evquniqueuntil=done where the
 * queue option asks it), each with its claim (or NULL). */
typedef struct unique_batch {
    const evq_event *const *evs;
    size_t n;
    char **claims;
    const evq_event **out;
    evq_event **copies;
    size_t n_copies;
    bool merged; /* some event was left out */
} unique_batch;

static void unique_end(evq_queue *q, unique_batch *u, bool unclaim)
{
    if (u->claims) {
        for (size_t i = 0; i < u->n; i++) {
            if (u->claims[i] && unclaim)
                unique_unclaim(q, u->claims[i]);
            free(u->claims[i]);
        }
    }
    for (size_t i = 0; i < u->n_copies; i++)
        evq_event_free(u->copies[i]);
    free(u->claims);
    free(u->out);
    free(u->copies);
    memset(u, 0, sizeof *u);
}

/* Claims the keys of the unique events of evs[0..n).  A taken key fails
 * the whole batch with EVQ_EEXIST (unique=reject, nothing claimed is
 * kept) or leaves its event out (unique=merge). */
static int unique_begin(evq_queue *q, const evq_event *const *evs, size_t n,
                        bool merge, unique_batch *u)
{
    memset(u, 0, sizeof *u);
    size_t i = 0;
    while (i < n && !(evs[i] && evq_event_attr(evs[i], "evquniquekey")))
        i++;
    if (i == n) { /* the common case: nothing to claim */
        u->evs = evs;
        u->n = n;
        return 0;
    }
    u->out = malloc(n * sizeof *u->out);
    u->claims = calloc(n, sizeof *u->claims);
    u->copies = malloc(n * sizeof *u->copies);
    if (!u->out || !u->claims || !u->copies) {
        unique_end(q, u, false);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    u->evs = u->out;
    int rc = 0;
    for (i = 0; i < n && !rc; i++) {
        const evq_event *ev = evs[i];
        const char *key = NULL;
        int64_t ttl = 0;
        bool until_done = false;
        if (ev && (rc = unique_of(q, ev, &key, &ttl, &until_done)) != 0)
            break;
        if (key && !(q->ops->flags & EVQ__UNIQUE_ID)) {
            size_t len = strlen(key) + 8;
            char *claim = malloc(len);
            if (!claim) {
                rc = evq__err(EVQ_ENOMEM, "out of memory");
                break;
            }
            snprintf(claim, len, "unique:%s", key);
            int c = unique_claim(q, claim, ttl);
            if (c != 1) {
                free(claim);
                if (c == 0 && merge) {
                    u->merged = true;
                    continue; /* left out */
                }
                rc = c < 0 ? c
                           : evq__err(EVQ_EEXIST,
                                      "event %s: unique key '%.200s' is "
                                      "taken (an event with it was enqueued "
                                      "less than its TTL ago)",
                                      evq_event_id(ev), key);
                break;
            }
            u->claims[u->n] = claim;
        }
        if (key && until_done) {
            const char *has = evq_event_attr(ev, "evquniqueuntil");
            if (!has) { /* consumers read it from the event */
                evq_event *c = evq_event_dup(ev);
                if (!c || (rc = evq_event_set_attr(c, "evquniqueuntil",
                                                   "done")) != 0) {
                    evq_event_free(c);
                    if (!rc)
                        rc = evq__err(EVQ_ENOMEM, "out of memory");
                    u->n++; /* its claim is given back with the rest */
                    break;
                }
                u->copies[u->n_copies++] = c;
                ev = c;
            }
        }
        u->out[u->n++] = ev;
    }
    if (rc)
        unique_end(q, u, true);
    return rc;
}

/* The claim a unique event frees once finished (acked or dead-lettered),
 * when it asked so (evquniqueuntil=done): "unique:<key>", malloc'd, or
 * NULL.  Taken before the settling, which may free the event (memory://
 * hands it to its producers). */
static char *unique_finishing(const evq_queue *q, const evq_event *ev)
{
    const char *key, *u;
    if (!ev || !(key = evq_event_attr(ev, "evquniquekey")) ||
        !(u = evq_event_attr(ev, "evquniqueuntil")) || strcmp(u, "done") != 0 ||
        (q->ops->flags & EVQ__UNIQUE_ID))
        return NULL;
    size_t len = strlen(key) + 8;
    char *claim = malloc(len);
    if (claim) /* else left to its TTL */
        snprintf(claim, len, "unique:%s", key);
    return claim;
}

/* Frees claim (from unique_finishing) once its event is settled: rc 0. */
static void unique_finished(evq_queue *q, char *claim, int rc)
{
    if (claim && rc == 0)
        unique_unclaim(q, claim);
    free(claim);
}

/* An event's evqpriority: 0 to 9 (0 when absent), EVQ_EINVAL for anything
 * else, EVQ_ENOTSUP above 0 on a backend that cannot order by it. */
static int priority_of(const evq_queue *q, const evq_event *ev, int *out)
{
    *out = evq__event_priority(ev);
    if (*out < 0)
        return *out;
    if (*out && (q->ops->flags & EVQ__PRIORITIES) && q->ops->levels &&
        *out >= q->ops->levels(q->state))
        return evq__err(EVQ_ENOTSUP,
                        "event %s: evqpriority %d: this %s:// queue keeps "
                        "one order (%s)",
                        evq_event_id(ev), *out, q->ops->scheme,
                        q->ops->levels_how ? q->ops->levels_how : "");
    if (*out && !(q->ops->flags & EVQ__PRIORITIES))
        return evq__err(EVQ_ENOTSUP,
                        "event %s: %s:// hands out a queue's events in the "
                        "order they were stored, so it cannot honour "
                        "evqpriority %d (memory, sqlite, postgres and redis "
                        "can)",
                        evq_event_id(ev), q->ops->scheme, *out);
    return 0;
}

/* Checks and encodes evs[0..n) into items (bytes owned, a reference to
 * each event held).  On failure frees what it made. */
static int make_items(evq_queue *q, const evq_event *const *evs, size_t n,
                      int64_t delay_ms, evq__item *items)
{
    int rc = 0;
    size_t i;
    for (i = 0; i < n && !rc; i++) {
        const evq_event *ev = evs[i];
        items[i] = (evq__item){.delay_ms = delay_ms};
        if (!ev) {
            rc = evq__err(EVQ_EINVAL, "event %zu of the batch is NULL", i);
            break;
        }
        if (!q->codec) {
            rc = check_event_by_ref(q, ev);
        } else {
            unsigned char *buf = NULL;
            size_t len = 0;
            rc = q->codec->encode(ev, &q->lim, &buf, &len);
            items[i].bytes = buf;
            items[i].len = len;
        }
        items[i].id = evq_event_id(ev);
        if (!rc)
            rc = priority_of(q, ev, &items[i].priority);
        if (!rc && (!q->codec || (q->ops->flags & EVQ__ITEM_EVENT))) {
            atomic_fetch_add_explicit(&((evq_event *)ev)->refs, 1,
                                      memory_order_relaxed);
            items[i].ev = (evq_event *)ev;
        }
    }
    if (rc) {
        for (size_t k = 0; k < n && k <= i; k++) {
            free((void *)items[k].bytes);
            evq_event_free(items[k].ev);
        }
    }
    return rc;
}

/* The backend's enqueue, or its two halves one after the other. */
static int backend_enqueue(evq_queue *q, const evq__item *items, size_t n)
{
    if (q->ops->enqueue)
        return q->ops->enqueue(q->state, items, n);
    void *ticket;
    int rc = q->ops->enqueue_start(q->state, items, n, &ticket);
    return rc ? rc : q->ops->enqueue_finish(q->state, ticket);
}

/* The pipeline's way to the backend (pipe.c). */
static int pipe_send(void *ctx, const evq__item *items, size_t n)
{
    evq_queue *q = ctx;
    int rc = backend_enqueue(q, items, n);
    if (!rc)
        atomic_fetch_add_explicit(&q->enqueued, n, memory_order_relaxed);
    return rc;
}

static int pipe_start(void *ctx, const evq__item *items, size_t n,
                      void **ticket)
{
    evq_queue *q = ctx;
    return q->ops->enqueue_start(q->state, items, n, ticket);
}

static int pipe_finish(void *ctx, void *ticket, size_t n)
{
    evq_queue *q = ctx;
    int rc = q->ops->enqueue_finish(q->state, ticket);
    /* the backend found taken keys itself (nats): merged, not failed */
    rc = unique_result(q, rc, q->opts.core.unique == EVQ__UNIQUE_MERGE);
    if (!rc)
        atomic_fetch_add_explicit(&q->enqueued, n, memory_order_relaxed);
    return rc;
}

/* Hands each item its claim (the item's now). */
static void give_claims(evq__item *items, unique_batch *u)
{
    if (!u->claims)
        return;
    for (size_t k = 0; k < u->n; k++) {
        items[k].claim = u->claims[k];
        u->claims[k] = NULL;
    }
}

/* merge: unique=merge, or false to have EVQ_EEXIST whatever the queue's
 * option. */
static int enqueue_items(evq_queue *q, const evq_event *const *evs, size_t n,
                         int64_t delay_ms, bool merge)
{
    if (evq__pipe_in_done()) /* as on every backend, memory:// too */
        return evq__err(EVQ_ESTATE,
                        "evq_enqueue from inside a done callback would wait "
                        "for itself; use evq_enqueue_async there");
    unique_batch u;
    int rc = unique_begin(q, evs, n, merge, &u);
    if (rc)
        return rc;
    n = u.n;
    if (n == 0) { /* every one merged into an earlier event */
        unique_end(q, &u, false);
        return 0;
    }
    evq__item one, *items = n == 1 ? &one : malloc(n * sizeof *items);
    if (!items) {
        unique_end(q, &u, true);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    if ((rc = make_items(q, u.evs, n, delay_ms, items)) != 0) {
        unique_end(q, &u, true);
    } else {
        /* the items borrow the ids of u's copies: freed after the send */
        give_claims(items, &u);
        if (q->ops->flags & EVQ__INSTANT) { /* nothing to wait for */
            rc = pipe_send(q, items, n);
            for (size_t k = 0; k < n; k++) {
                if (rc && items[k].claim)
                    unique_unclaim(q, items[k].claim);
                free(items[k].claim);
                free((void *)items[k].bytes);
                evq_event_free(items[k].ev);
            }
        } else {
            rc = evq__pipe_put(q->pipe, items, n, NULL, NULL, true);
        }
        unique_end(q, &u, false);
    }
    if (items != &one)
        free(items);
    return rc;
}

int evq_enqueue_async(evq_queue *q, const evq_event *ev, int64_t delay_ms,
                      evq_enqueued_fn done, void *arg)
{
    evq__item it;
    int rc;
    if (!q || !ev)
        return evq__err(EVQ_EINVAL, "evq_enqueue_async: %s is NULL",
                        q ? "event" : "queue");
    if (delay_ms < 0)
        return evq__err(EVQ_EINVAL, "delay %lld ms is negative",
                        (long long)delay_ms);
    unique_batch u;
    if ((rc = unique_begin(q, &ev, 1, q->opts.core.unique == EVQ__UNIQUE_MERGE,
                           &u)) != 0)
        return rc;
    if (u.n == 0) { /* merged: reported at once */
        unique_end(q, &u, false);
        if (done)
            done(evq_event_id(ev), 0, arg);
        return 0;
    }
    if ((rc = make_items(q, u.evs, 1, delay_ms, &it)) != 0) {
        unique_end(q, &u, true);
        return rc;
    }
    give_claims(&it, &u);
    rc = evq__pipe_put(q->pipe, &it, 1, done, arg, false); /* copies the id */
    unique_end(q, &u, false);
    return rc;
}

int evq_flush(evq_queue *q, int64_t timeout_ms)
{
    if (!q)
        return evq__err(EVQ_EINVAL, "evq_flush: q is NULL");
    /* a close in another thread leaves the handle to this call */
    atomic_fetch_add(&q->refs, 1);
    int rc = evq__pipe_flush(q->pipe, timeout_ms);
    queue_release(q);
    return rc;
}

int evq_enqueue(evq_queue *q, const evq_event *ev)
{
    if (!q || !ev)
        return evq__err(EVQ_EINVAL, "evq_enqueue: %s is NULL",
                        q ? "event" : "queue");
    return enqueue_items(q, &ev, 1, 0,
                         q->opts.core.unique == EVQ__UNIQUE_MERGE);
}

int evq__enqueue_unique(evq_queue *q, const evq_event *ev)
{
    return enqueue_items(q, &ev, 1, 0, false);
}

int evq_enqueue_delayed(evq_queue *q, const evq_event *ev, int64_t delay_ms)
{
    if (!q || !ev)
        return evq__err(EVQ_EINVAL, "evq_enqueue_delayed: %s is NULL",
                        q ? "event" : "queue");
    if (delay_ms < 0)
        return evq__err(EVQ_EINVAL, "delay %lld ms is negative",
                        (long long)delay_ms);
    return enqueue_items(q, &ev, 1, delay_ms,
                         q->opts.core.unique == EVQ__UNIQUE_MERGE);
}

int evq_enqueue_batch(evq_queue *q, const evq_event *const *evs, size_t n)
{
    if (!q || (!evs && n))
        return evq__err(EVQ_EINVAL, "evq_enqueue_batch: NULL argument");
    if (n == 0)
        return 0;
    return enqueue_items(q, evs, n, 0,
                         q->opts.core.unique == EVQ__UNIQUE_MERGE);
}

/* The queue's options as an evq_opts, for opening related handles. */
static evq_opts *opts_copy(const evq_queue *q)
{
    evq_opts *o = evq_opts_new();
    for (size_t i = 0; o && i < q->opts.n; i++) {
        if (evq_opts_set(o, q->opts.kv[i].key, q->opts.kv[i].value)) {
            evq_opts_free(o);
            return NULL;
        }
    }
    return o;
}

int evq__queue_clone(evq_queue *q, evq_queue **out)
{
    evq_opts *o = opts_copy(q);
    int rc;
    if (!o)
        return evq__err(EVQ_ENOMEM, "out of memory");
    rc = evq_queue_open(out, q->url, q->name, o);
    evq_opts_free(o);
    return rc;
}

int evq_queue_open_dead(evq_queue **dead, evq_queue *q)
{
    evq_opts *o;
    int rc;

    if (!dead || !q)
        return evq__err(EVQ_EINVAL, "evq_queue_open_dead: NULL argument");
    *dead = NULL;
    if (!(o = opts_copy(q)))
        return evq__err(EVQ_ENOMEM, "out of memory");
    /* What the dead-letter queue cannot decode stays in it. */
    rc = evq_opts_set(o, "dead_letter", q->dead_name);
    if (!rc)
        rc = evq_queue_open(dead, q->url, q->dead_name, o);
    evq_opts_free(o);
    return rc;
}

/* Settling through the backend; the read-ahead first lets the next
 * delivery of the same ordering key go. */
static int backend_ack(evq_queue *q, evq__delivery *d)
{
    if (q->ra)
        evq__ra_settled(q->ra, d);
    return q->ops->ack(q->state, &d, 1);
}

static int backend_nack(evq_queue *q, evq__delivery *d, int64_t delay_ms)
{
    if (q->ra)
        evq__ra_settled(q->ra, d);
    return q->ops->nack(q->state, d, delay_ms);
}

/* The dead-letter queue of `q`, opened on first use. */
static int dead_queue(evq_queue *q, evq_queue **dead)
{
    int rc = 0;
    pthread_mutex_lock(&q->dead_lock);
    if (!q->dead)
        rc = evq_queue_open_dead(&q->dead, q);
    *dead = q->dead;
    pthread_mutex_unlock(&q->dead_lock);
    if (rc)
        evq__err_prefix(rc, "opening dead-letter queue '%s'", q->dead_name);
    return rc;
}

/* Writes `ev` (borrowed; a copy is written) to the dead-letter queue with
 * the reason and attempt count. */
static int dead_write(evq_queue *q, const evq_event *ev, const char *reason,
                      int attempts)
{
    evq_queue *dead;
    evq_event *dl;
    char num[16];
    int rc;

    if ((rc = dead_queue(q, &dead)) != 0)
        return rc;
    if (!(dl = evq_event_dup(ev)))
        return EVQ_ENOMEM;
    /* A dead letter is not a unique event: its key was the source
     * queue's (and would refuse a second dead letter of the key). */
    evq_event_set_attr(dl, "evquniquekey", NULL);
    evq_event_set_attr(dl, "evquniquettl", NULL);
    evq_event_set_attr(dl, "evquniqueuntil", NULL);
    snprintf(num, sizeof num, "%d", attempts);
    if ((rc = evq_event_set_attr(dl, "evqerror", reason ? reason : "")) ||
        (rc = evq__event_set_ext(dl, "evqattempts", num, EVQ__EXT_INTEGER)) ||
        (rc = evq_event_set_attr(dl, "evqqueue", q->name)) ||
        (rc = evq_enqueue(dead, dl)))
        evq__err_prefix(rc, "writing to dead-letter queue '%s'", q->dead_name);
    else
        atomic_fetch_add(&q->dead_lettered, 1);
    evq_event_free(dl);
    return rc;
}

/* Moves an undecodable message to the dead-letter queue as an event of type
 * "evq.undecodable" carrying the raw bytes and the decoder's reason, and only
 * then acknowledges the original. */
static int dead_letter_raw(evq_queue *q, evq__delivery *d, const char *reason)
{
    evq_event *dl = evq_event_new("evq.undecodable", NULL);
    int rc;

    if (!dl)
        return EVQ_ENOMEM;
    /* Bytes too large to fit a dead letter (base64 grows them by a third)
     * are cut, and the original length is kept in evqtruncated. */
    size_t keep = d->len, room = q->lim.max_bytes > 16384
                                     ? (q->lim.max_bytes - 8192) / 4 * 3
                                     : q->lim.max_bytes / 2;
    size_t stored = d->full_len > d->len ? d->full_len : d->len;
    rc = 0;
    if (keep > room || stored > keep) {
        char orig[32];
        snprintf(orig, sizeof orig, "%zu", stored);
        keep = keep > room ? room : keep;
        rc = evq__event_set_ext(dl, "evqtruncated", orig, EVQ__EXT_INTEGER);
    }
    if (!rc)
        rc = evq_event_set_binary(dl, d->bytes, keep,
                                  "application/octet-stream");
    if (!rc)
        rc = dead_write(q, dl, reason, d->attempt);
    if (!rc)
        rc = backend_ack(q, d);
    evq_event_free(dl);
    return rc;
}

/* Whether a delivery the backend read ahead still has its lease.  One
 * that waited in the backend's buffer for more than a third of its lease is
 * touched first, so its consumer gets a whole lease; one whose lease has
 * passed to another consumer (or ran out on the local clock) is dropped
 * without being settled: the other consumer has it, or will. */
static bool lease_fresh(evq_queue *q, evq__delivery *d)
{
    int64_t left = d->lease_ns - evq__now_mono_ns();
    if (left >= q->lease_ns * 2 / 3)
        return true;
    int rc = q->ops->touch(q->state, d);
    if (rc == 0 || (rc != EVQ_ESTATE && left > 0))
        return true;
    backend_nack(q, d, 0); /* frees d; settles nothing not ours */
    return false;
}

/* What is left of a dequeue's wait after messages it passed over: the
 * timeout for the next try, or EVQ_ETIMEDOUT once it is spent. */
static int time_left(int64_t deadline, int64_t *timeout_ms)
{
    if (*timeout_ms <= 0)
        return 0;
    int64_t left = deadline - evq__now_mono_ns();
    if (left <= 0)
        return evq__err(EVQ_ETIMEDOUT, "dequeue timed out");
    *timeout_ms = (left + 999999) / 1000000;
    return 0;
}

/* The event of delivery d: its own (by reference) or decoded; NULL when
 * it could not be decoded, and then it went to the dead letters (or back
 * to the queue, with *rc set, when that failed). */
static evq_event *delivery_event(evq_queue *q, evq__delivery *d, bool *owns,
                                 int *rc)
{
    evq_event *ev = NULL;
    int drc;
    *owns = false;
    if (d->ev)
        return d->ev;
    if (d->full_len > d->len)
        drc = evq__err(EVQ_ETOOBIG,
                       "stored message of %zu bytes is larger than "
                       "max_event_bytes=%zu; only its first %zu bytes were "
                       "read",
                       d->full_len, q->lim.max_bytes, d->len);
    else
        drc = q->codec ? q->codec->decode(d->bytes, d->len, &q->lim, &ev)
                       : evq__err(EVQ_EDECODE, "no codec for raw bytes");
    if (drc == 0) {
        *owns = true;
        return ev;
    }
    char reason[512];
    snprintf(reason, sizeof reason, "%s: %s", evq_strerror(drc), evq_errmsg());
    if ((drc = dead_letter_raw(q, d, reason)) != 0) {
        /* Keep it rather than lose it: redeliver later. */
        backend_nack(q, d, 1000);
        *rc = evq__err_prefix(drc, "could not dead-letter an undecodable "
                                   "message");
    }
    return NULL;
}

/* Turns deliveries d[0..n) into messages at msgs[0..): those whose lease
 * is gone are passed over, the undecodable dead-lettered.  Returns how many
 * messages it made; *rc gets the first failure. */
static size_t make_msgs(evq_queue *q, evq__delivery *d, size_t n,
                        evq_msg **msgs, int *rc)
{
    size_t got = 0;
    for (size_t i = 0; i < n; i++) {
        bool owns;
        if (d[i].lease_ns && !lease_fresh(q, &d[i]))
            continue;
        evq_event *ev = delivery_event(q, &d[i], &owns, rc);
        if (!ev)
            continue;
        evq_msg *m = malloc(sizeof *m);
        if (!m) {
            if (owns)
                evq_event_free(ev);
            backend_nack(q, &d[i], 0);
            *rc = evq__err(EVQ_ENOMEM, "out of memory");
            continue;
        }
        atomic_store_explicit(&ev->attempt, d[i].attempt, memory_order_relaxed);
        m->q = q;
        m->ev = ev;
        m->owns_ev = owns;
        m->d = d[i];
        msgs[got++] = m;
    }
    if (got) {
        atomic_fetch_add_explicit(&q->refs, (int)got, memory_order_relaxed);
        atomic_fetch_add_explicit(&q->dequeued, got, memory_order_relaxed);
    }
    return got;
}

/* Deliveries taken from the backend at once (a batch decoded together). */
#define TAKE_MAX 128

/* How often a consumer reads the queue's pause state again, and the
 * longest a dequeue waits on the backend between two readings: an event
 * is handed out at most twice this long after a pause. */
#define PAUSE_READ_MS 250

/* The backend's pause state: `pause` where it gives one, else its record
 * "paused"; set as evq_backend_ops.pause. */
static int backend_pause(evq_queue *q, int set)
{
    if (q->ops->pause)
        return q->ops->pause(q->state, set);
    if (set < 0)
        return q->ops->record(q->state, "paused", EVQ__RECORD_HAS, 0);
    return q->ops->record(q->state, "paused",
                          set ? EVQ__RECORD_PUT : EVQ__RECORD_DEL, 0);
}

static bool can_pause(const evq_queue *q)
{
    return q->ops->pause || q->ops->record;
}

/* Whether the consumers of q are to wait (evq_queue_pause): 1 paused, 0
 * not, -1 not known by `end` (monotonic ns; the first reading of a handle
 * still under way in another thread).  The state is read again once the
 * last reading is PAUSE_READ_MS old, by one thread at a time (the others
 * go by the last reading, or wait for the first until `end`).  A reading
 * that fails keeps the last one (none yet: not paused), and is said to
 * the handle's log when reading starts or stops failing.  A reading that
 * began before a pause or resume of this handle does not overwrite it
 * (pause_gen). */
static int pause_on(evq_queue *q, int64_t end)
{
    if (!can_pause(q))
        return 0;
    int64_t now = evq__now_mono_ns();
    if (now - atomic_load(&q->pause_read_ns) < PAUSE_READ_MS * 1000000LL)
        return atomic_load(&q->paused) == 1;
    int locked;
    if (atomic_load(&q->paused) >= 0 || end <= now) {
        locked = pthread_mutex_trylock(&q->read_mu);
    } else if (end == INT64_MAX) {
        locked = pthread_mutex_lock(&q->read_mu);
    } else {
        /* timedlock waits on the realtime clock: convert the deadline */
        struct timespec ts = evq__ts_from_ns(evq__now_real_ns() + (end - now));
        locked = pthread_mutex_timedlock(&q->read_mu, &ts);
    }
    if (locked == 0) {
        if (evq__now_mono_ns() - atomic_load(&q->pause_read_ns) >=
            PAUSE_READ_MS * 1000000LL) {
            unsigned gen = atomic_load(&q->pause_gen);
            int rc = backend_pause(q, -1);
            bool failing = rc < 0;
            if (rc >= 0 && atomic_load(&q->pause_gen) == gen)
                atomic_store(&q->paused, rc);
            if (failing != atomic_exchange(&q->read_failing, failing))
                evq__logf(q->log, failing ? EVQ_LOG_WARN : EVQ_LOG_INFO,
                          failing ? "reading the pause state failed (the "
                                    "last one holds): %s: %s"
                                  : "reading the pause state works again%s%s",
                          failing ? evq_strerror(rc) : "",
                          failing ? evq_errmsg() : "");
            atomic_store(&q->pause_read_ns, evq__now_mono_ns());
        }
        pthread_mutex_unlock(&q->read_mu);
    }
    int p = atomic_load(&q->paused);
    return p < 0 ? -1 : p == 1;
}

/* Waits while q is paused (or its state is not known yet), until `end`
 * (monotonic ns): 0 once it is not, else EVQ_ETIMEDOUT or EVQ_ECLOSED
 * (interrupted). */
static int pause_wait(evq_queue *q, int64_t end)
{
    for (;;) {
        if (atomic_load(&q->interrupted))
            return evq__err(EVQ_ECLOSED, "queue interrupted");
        int on = pause_on(q, end);
        if (on == 0)
            return 0;
        int64_t now = evq__now_mono_ns();
        if (now >= end)
            return evq__err(EVQ_ETIMEDOUT,
                            on > 0 ? "dequeue timed out: the queue is paused "
                                     "(evq_queue_resume)"
                                   : "dequeue timed out reading whether the "
                                     "queue is paused");
        int64_t until = now + PAUSE_READ_MS * 1000000LL;
        struct timespec ts = evq__ts_from_ns(until < end ? until : end);
        pthread_mutex_lock(&q->pause_mu);
        if (!atomic_load(&q->interrupted))
            pthread_cond_timedwait(&q->pause_cv, &q->pause_mu, &ts);
        pthread_mutex_unlock(&q->pause_mu);
    }
}

/* One take from the backend: the read-ahead or its dequeue. */
static int take(evq_queue *q, evq__delivery *d, size_t want, int timeout_ms)
{
    return q->ra ? evq__ra_take(q->ra, d, want, timeout_ms)
                 : q->ops->dequeue(q->state, d, want, timeout_ms);
}

/* The first take of a dequeue on a queue that can be paused: none while
 * it is paused, and the backend waited on in slices of PAUSE_READ_MS, so a
 * pause that comes meanwhile is seen. */
static int take_first(evq_queue *q, evq__delivery *d, size_t want,
                      int64_t timeout_ms)
{
    bool pausable = can_pause(q);
    if (!pausable && timeout_ms <= INT_MAX)
        return take(q, d, want, (int)timeout_ms);
    /* the backends wait at most INT_MAX ms a call: longer waits are slices
     * too */
    int64_t end = evq__deadline_ns(timeout_ms);
    int64_t most = pausable ? PAUSE_READ_MS : INT_MAX;
    for (;;) {
        int rc = pausable ? pause_wait(q, end) : 0;
        if (rc)
            return rc;
        int64_t left = end == INT64_MAX
                           ? most
                           : (end - evq__now_mono_ns() + 999999) / 1000000;
        int slice = left < most ? (int)(left > 0 ? left : 0) : (int)most;
        int n = take(q, d, want, slice);
        if (n != EVQ_ETIMEDOUT || evq__now_mono_ns() >= end)
            return n;
    }
}

/* Pauses (set 1) or resumes (0) the queue for every consumer; this
 * handle's waiters see it at once. */
static int set_paused(evq_queue *q, int set, const char *fn)
{
    if (!q)
        return evq__err(EVQ_EINVAL, "%s: q is NULL", fn);
    if (!can_pause(q))
        return evq__err(EVQ_ENOTSUP, "%s:// queues cannot be paused",
                        q->ops->scheme);
    atomic_fetch_add(&q->pause_gen, 1);
    int rc = backend_pause(q, set);
    if (rc == 0) {
        pthread_mutex_lock(&q->pause_mu);
        atomic_store(&q->paused, set);
        atomic_store(&q->pause_read_ns, evq__now_mono_ns());
        pthread_cond_broadcast(&q->pause_cv);
        pthread_mutex_unlock(&q->pause_mu);
    }
    return rc;
}

int evq_queue_pause(evq_queue *q)
{
    return set_paused(q, 1, "evq_queue_pause");
}

int evq_queue_resume(evq_queue *q)
{
    return set_paused(q, 0, "evq_queue_resume");
}

int evq_queue_paused(evq_queue *q)
{
    if (!q)
        return evq__err(EVQ_EINVAL, "evq_queue_paused: q is NULL");
    if (!can_pause(q))
        return 0;
    unsigned gen = atomic_load(&q->pause_gen);
    int rc = backend_pause(q, -1);
    if (rc >= 0 && atomic_load(&q->pause_gen) == gen) {
        atomic_store(&q->paused, rc);
        atomic_store(&q->pause_read_ns, evq__now_mono_ns());
    }
    return rc;
}

bool evq__queue_done_shared(const evq_queue *q)
{
    return q->ops->record || (q->ops->done_put && q->ops->done_has);
}

/* The record of finished id `id`: "done:<id>". */
static void done_key(char *key, size_t cap, const char *id)
{
    snprintf(key, cap, "done:%s", id);
}

int evq__queue_done_put(evq_queue *q, const char *id, int64_t window_ms)
{
    if (!q->ops->record)
        return q->ops->done_put(q->state, id, window_ms);
    char key[2 * EVQ_MAX_ATTR_BYTES + 16];
    done_key(key, sizeof key, id);
    return q->ops->record(q->state, key, EVQ__RECORD_PUT, window_ms);
}

int evq__queue_take(evq_queue *q, const char *key, double rate, int burst,
                    int64_t *wait_ms)
{
    if (q->ops->take)
        return q->ops->take(q->state, key, rate, burst, wait_ms);
    char k[EVQ_MAX_ATTR_BYTES * 2 + 300];
    snprintf(k, sizeof k, "%s\n%s\n%s", q->redacted, q->name, key);
    return evq__bucket_take(k, rate, burst, wait_ms);
}

int evq__queue_done_has(evq_queue *q, const char *id)
{
    if (!q->ops->record)
        return q->ops->done_has(q->state, id);
    char key[2 * EVQ_MAX_ATTR_BYTES + 16];
    done_key(key, sizeof key, id);
    return q->ops->record(q->state, key, EVQ__RECORD_HAS, 0);
}

int evq_dequeue_batch(evq_queue *q, evq_msg **msgs, size_t max,
                      int64_t timeout_ms)
{
    evq__delivery d[TAKE_MAX];
    size_t got = 0;
    int rc = 0;

    if (!q || !msgs || max == 0)
        return evq__err(EVQ_EINVAL, "evq_dequeue_batch: %s",
                        !q      ? "q is NULL"
                        : !msgs ? "msgs is NULL"
                                : "max is 0");
    if (max > INT_MAX)
        max = INT_MAX;
    if (timeout_ms < 0)
        timeout_ms = -1; /* any negative is forever, also past INT_MIN */
    int64_t deadline = timeout_ms > 0 ? evq__deadline_ns(timeout_ms) : 0;
    while (got < max) {
        size_t want = max - got < TAKE_MAX ? max - got : TAKE_MAX;
        int n = got ? take(q, d, want, 0) : take_first(q, d, want, timeout_ms);
        if (n <= 0) {
            if (got)
                break; /* a failure here is the next call's */
            return n ? n : evq__err(EVQ_EIO, "backend gave no event");
        }
        int mrc = 0;
        size_t made = make_msgs(q, d, (size_t)n, msgs + got, &mrc);
        got += made;
        if (got == 0) {
            if (mrc)
                return mrc;
            if ((rc = time_left(deadline, &timeout_ms)) != 0)
                return rc;
            continue;
        }
        if ((size_t)n < want)
            break; /* that was all that was ready */
    }
    evq__err_clear();
    return (int)got;
}

int evq_dequeue(evq_queue *q, evq_msg **msgp, int64_t timeout_ms)
{
    if (!q || !msgp)
        return evq__err(EVQ_EINVAL, "evq_dequeue: %s is NULL",
                        q ? "msg" : "queue");
    *msgp = NULL;
    int n = evq_dequeue_batch(q, msgp, 1, timeout_ms);
    return n == 1 ? 0 : n;
}

const evq_event *evq_msg_event(const evq_msg *m)
{
    return m ? m->ev : NULL;
}

static void msg_free(evq_msg *m)
{
    evq_queue *q = m->q;
    if (m->owns_ev)
        evq_event_free(m->ev);
    free(m);
    queue_release(q);
}

/* Acks msgs[0..n), all of one queue, in one backend call. */
static int ack_run(evq_msg **msgs, size_t n)
{
    evq_queue *q = msgs[0]->q;
    evq__delivery *d[TAKE_MAX];
    char *frees[TAKE_MAX];
    for (size_t i = 0; i < n; i++) {
        d[i] = &msgs[i]->d;
        frees[i] = unique_finishing(q, msgs[i]->ev);
        if (q->ra)
            evq__ra_settled(q->ra, d[i]);
    }
    int rc = q->ops->ack(q->state, d, n);
    atomic_fetch_add_explicit(&q->acked, n, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        unique_finished(q, frees[i], rc);
    for (size_t i = 0; i < n; i++)
        msg_free(msgs[i]); /* the last may free q */
    return rc;
}

int evq_ack(evq_msg *m)
{
    if (!m)
        return evq__err(EVQ_EINVAL, "evq_ack: msg is NULL");
    return ack_run(&m, 1);
}

int evq_ack_batch(evq_msg **msgs, size_t n)
{
    int first = 0;
    size_t failed = 0;
    char why[512] = "";
    if (!msgs && n)
        return evq__err(EVQ_EINVAL, "evq_ack_batch: msgs is NULL");
    for (size_t i = 0; i < n;) {
        int rc;
        size_t k = 1;
        if (!msgs[i]) {
            rc = evq__err(EVQ_EINVAL, "a message is NULL");
        } else {
            /* a run of messages of one queue goes in one backend call */
            while (i + k < n && k < TAKE_MAX && msgs[i + k] &&
                   msgs[i + k]->q == msgs[i]->q)
                k++;
            rc = ack_run(msgs + i, k);
        }
        if (rc) {
            if (!failed)
                snprintf(why, sizeof why, "%s", evq_errmsg());
            if (!first)
                first = rc;
            failed += k;
        }
        i += k;
    }
    if (failed)
        return evq__err(first, "%zu of %zu acks failed; the first: %s", failed,
                        n, why);
    return 0;
}

int evq_nack(evq_msg *m, int64_t delay_ms)
{
    int rc;
    if (!m)
        return evq__err(EVQ_EINVAL, "evq_nack: msg is NULL");
    rc = backend_nack(m->q, &m->d, delay_ms < 0 ? 0 : delay_ms);
    atomic_fetch_add_explicit(&m->q->nacked, 1, memory_order_relaxed);
    msg_free(m);
    return rc;
}

int64_t evq__queue_touch_ms(const evq_queue *q)
{
    if (!q->ops->touch)
        return 0;
    int64_t vt = evq__opt_int(&q->opts, q->ops->opts, "visibility_timeout_ms");
    return vt / 3 > 10 ? vt / 3 : 10;
}

void evq__queue_set_log(evq_queue *q, evq_log_fn fn, void *arg)
{
    evq__logger_set(q->log, fn, arg);
}

void evq__queue_reconnect(const evq_queue *q, evq__reconnect *out)
{
    evq__reconnect_init(out, &q->opts);
}

int64_t evq__queue_lease_ns(const evq_queue *q)
{
    return q->lease_ns;
}

int64_t evq__msg_lease_ns(const evq_msg *m)
{
    return m->d.lease_ns;
}

int evq_msg_touch(evq_msg *m)
{
    if (!m)
        return evq__err(EVQ_EINVAL, "evq_msg_touch: msg is NULL");
    if (!m->q->ops->touch)
        return 0; /* the delivery stays with this consumer while it lives */
    return m->q->ops->touch(m->q->state, &m->d);
}

int evq_msg_dead_letter(evq_msg *m, const char *reason)
{
    int rc;
    if (!m)
        return evq__err(EVQ_EINVAL, "evq_msg_dead_letter: msg is NULL");
    /* A lease another consumer holds now is not ours to dead-letter: the
     * touch proves it is still ours (and keeps it so while writing). */
    if (m->d.lease_ns && (rc = m->q->ops->touch(m->q->state, &m->d)) != 0) {
        if (rc == EVQ_ESTATE) {
            backend_nack(m->q, &m->d, 0);
            atomic_fetch_add_explicit(&m->q->nacked, 1, memory_order_relaxed);
            msg_free(m);
            return evq__lease_lost("dead-letter");
        }
    }
    rc = dead_write(m->q, m->ev, reason, m->d.attempt);
    if (rc) {
        backend_nack(m->q, &m->d, 0);
        atomic_fetch_add_explicit(&m->q->nacked, 1, memory_order_relaxed);
    } else {
        char *claim = unique_finishing(m->q, m->ev);
        rc = backend_ack(m->q, &m->d);
        atomic_fetch_add_explicit(&m->q->acked, 1, memory_order_relaxed);
        unique_finished(m->q, claim, rc);
    }
    msg_free(m);
    return rc;
}

int evq_msg_replay(evq_msg *m, evq_queue *to)
{
    if (!m || !to) {
        if (m)
            evq_nack(m, 0);
        return evq__err(EVQ_EINVAL, "evq_msg_replay: NULL argument");
    }
    /* what could not be read whole is no event to send again */
    if (evq_event_attr(evq_msg_event(m), "evqtruncated")) {
        char id[128];
        snprintf(id, sizeof id, "%s", evq_event_id(evq_msg_event(m)));
        evq_nack(m, 0);
        return evq__err(EVQ_EINVAL,
                        "dead letter %s was cut short (evqtruncated): it "
                        "cannot be replayed; purge it",
                        id);
    }
    evq_event *copy = evq_event_dup(evq_msg_event(m));
    int rc = copy ? 0 : EVQ_ENOMEM;
    if (!rc) {
        evq_event_set_attr(copy, "evqerror", NULL);
        evq_event_set_attr(copy, "evqattempts", NULL);
        evq_event_set_attr(copy, "evqqueue", NULL);
        /* Marks the replay, so a backend that drops duplicates by event id
         * (nats://) does not take it for the original. */
        char mark[32];
        snprintf(mark, sizeof mark, "%lld",
                 (long long)(evq__now_real_ns() / 1000000));
        rc = evq_event_set_attr(copy, "evqreplayed", mark);
    }
    rc = rc ? rc : evq_enqueue(to, copy);
    evq_event_free(copy);
    if (rc) {
        evq_nack(m, 0); /* the letter stays */
        return rc;
    }
    return evq_ack(m);
}

int evq_queue_stats_sized(evq_queue *q, struct evq_queue_stats *user,
                          size_t size)
{
    struct evq_queue_stats st, *out = &st;
    int rc = 0;

    if (!q || !user)
        return evq__err(EVQ_EINVAL, "evq_queue_stats: NULL argument");
    memset(&st, 0, sizeof st);
    out->depth = out->in_flight = out->delayed = out->dead = -1;
    if (q->ops->stats)
        rc = q->ops->stats(q->state, out);
    if (q->ra && out->depth >= 0 && out->in_flight >= 0) {
        /* Read ahead but not handed out counts as ready, as it is to the
         * user. */
        int64_t b = (int64_t)evq__ra_buffered(q->ra);
        if (b > out->in_flight)
            b = out->in_flight;
        out->depth += b;
        out->in_flight -= b;
    }
    out->enqueued = atomic_load(&q->enqueued);
    out->dequeued = atomic_load(&q->dequeued);
    out->acked = atomic_load(&q->acked);
    out->nacked = atomic_load(&q->nacked);
    /* the dead-letter queue, counted through this handle's connection */
    if (q->ops->count && q->ops->count(q->state, q->dead_name, &out->dead))
        out->dead = -1;
    out->dead_lettered = atomic_load(&q->dead_lettered);
    evq__sized_out(user, size, &st, sizeof st);
    return rc;
}

int evq__enqueue_raw(evq_queue *q, const void *bytes, size_t len)
{
    evq__item it = {.bytes = bytes, .len = len};
    if (!q || (!bytes && len))
        return evq__err(EVQ_EINVAL, "evq__enqueue_raw: NULL argument");
    if (!q->codec)
        return evq__err(EVQ_EINVAL,
                        "raw bytes need a queue opened with a format");
    return backend_enqueue(q, &it, 1);
}
