/*
 * worker.c - the worker pool: threads that dequeue, dispatch and settle.
 *
 * Each thread fetches through the worker's own handle on the queue (so
 * stopping interrupts only that handle), takes up to `prefetch` events at
 * once (or a batch handler's max_batch), and settles each one itself: ack
 * on success, nack with backoff for a retry, or the dead-letter queue.
 * Events for a batch handler are gathered from what was fetched, and more
 * are fetched for up to its max_wait_ms, then handled in one call.  On a
 * queue without leases the acks of a fetched batch go to the backend
 * together.  Counters and the latency histogram are
 * per thread with a single writer, so the hot path has no shared writes; the
 * stats call sums them.
 *
 * The keeper, a thread of the worker's own, runs when the queue has leases
 * (it touches the events threads hold, running or prefetched, so they are
 * not given to another consumer meanwhile) or handlers have a deadline
 * (handler_timeout_ms: at the deadline it takes the event from the
 * running handler and retries or dead-letters it).  A thread and the
 * keeper share what the thread holds under the thread's hold_mu.
 *
 * Lifetime: the worker is reference counted by its owner and by each live
 * thread, so a thread left running past a stop deadline (a stuck handler)
 * can still settle its event and exit safely after evq_worker_free.
 */
#include "hist.h"
#include "internal.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Most messages a thread holds: a prefetch, and what comes while a batch
 * handler's batch fills. */
#define HOLD_MAX (1024 + EVQ_MAX_BATCH)
/* Acks a thread gathers before sending them (queues without leases). */
#define ACKS_MAX 256

/* Most limits and caps a worker takes (evq_worker_limit, evq_worker_cap). */
#define LIMITS_MAX 64

/* A rate limit (rate > 0) or a concurrency cap (cap > 0) on the events
 * whose type matches `pattern`.  Immutable once published, but for
 * `running`. */
typedef struct wlimit {
    char *pattern;
    double rate;
    int burst;
    bool by_key;
    int cap;
    atomic_int running; /* handler runs holding a place under the cap */
} wlimit;

typedef struct wcounter {
    _Atomic uint64_t v;
} wcounter;

/* Single-writer increment: no read-modify-write needed. */
static inline void bump(wcounter *c, int64_t d)
{
    atomic_store_explicit(
        &c->v, atomic_load_explicit(&c->v, memory_order_relaxed) + (uint64_t)d,
        memory_order_relaxed);
}

typedef struct wthread {
    struct evq_worker *w;
    pthread_t tid;
    int index;
    bool joinable;
    uint64_t rng;
    /* The event whose handlers run now, for stop's report of stuck
     * handlers.  The reader raises `inspecting` before looking at `cur`;
     * the thread clears `cur` and then waits while `inspecting` is up, so
     * the event cannot be settled and freed under the reader's eyes.
     * `inspecting` counts readers: stop's report and the keeper. */
    _Atomic(const evq_event *) cur;
    _Atomic uint64_t cur_start; /* ticks */
    atomic_int inspecting;
    /* What the keeper looks after, under hold_mu (used only when the
     * worker has a keeper): the messages of the running handler (a batch
     * handler's, or one) until they are settled, or taken by the keeper at
     * their deadline; and the messages fetched but not started,
     * held[next_held .. n_held), an entry NULL once the keeper found its
     * lease gone. */
    pthread_mutex_t hold_mu;
    evq_msg **run;
    int n_run;
    int64_t run_deadline_ns; /* monotonic; INT64_MAX: none */
    bool run_timed_out;
    evq_msg **held;
    int n_held, next_held;
    /* acks of a queue without leases, sent together (the thread's own) */
    evq_msg **acks;
    int n_acks;
    wcounter received, succeeded, failed, retried, dead, unhandled, in_flight,
        timed_out, lease_lost, deduplicated, throttled;
    wcounter took_ticks; /* the sum of the histogram's values */
    evq__hist hist;
} wthread;

struct evq_worker {
    evq_queue *fetch; /* closed by a stop that leaves no thread behind */
    char *qname;
    evq_events *events;
    evq_worker_opts o;
    int n;
    wthread **t;
    atomic_bool stopping;
    atomic_int state; /* 0 running, 1 stop called */
    atomic_int refs;  /* the owner's plus one per live thread */
    pthread_mutex_t mu;
    pthread_cond_t exited;
    int live; /* under mu */
    /* The keeper: touches held events, times handlers out.  kt holds its
     * counters and random state (it settles timed-out events). */
    int64_t touch_ms;  /* 0: no touching */
    int64_t lease_ns;  /* the queue's visibility timeout */
    int64_t period_ms; /* the keeper's round; 0: no keeper */
    wthread *kt;
    pthread_t keeper;
    bool keeper_joinable;
    pthread_cond_t keeper_wake; /* with mu */
    /* dedup_window_ms: the finished ids, where the backend keeps no
     * shared record (NULL otherwise, or when off) */
    evq__seen *seen;
    /* limits[0..n_limits): appended under lim_mu, read without it */
    wlimit *limits[LIMITS_MAX];
    atomic_int n_limits;
    pthread_mutex_t lim_mu;
};

static _Thread_local evq_worker *tls_worker;
/* The running handler's deadline on this thread (monotonic ns), or 0. */
static _Thread_local int64_t tls_deadline_ns;

int64_t evq_handler_deadline_ns(void)
{
    return tls_deadline_ns;
}

int evq_handler_expired(void)
{
    return tls_deadline_ns && evq__now_mono_ns() >= tls_deadline_ns;
}

void evq_worker_opts_init_sized(evq_worker_opts *o, size_t size)
{
    const evq_worker_opts d = {.concurrency = 1,
                               .prefetch = 1,
                               .max_attempts = 5,
                               .backoff_initial_ms = 100,
                               .backoff_max_ms = 60000,
                               .backoff_multiplier = 2.0,
                               .unhandled = EVQ_UNHANDLED_DEAD_LETTER};
    evq__sized_init(o, size, &d, sizeof d);
}

static void wlog(const evq_worker *w, evq_log_level lvl, const char *fmt, ...)
    EVQ__PRINTF(3, 4);
static void wlog(const evq_worker *w, evq_log_level lvl, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    if (!w->o.log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    w->o.log(lvl, line, w->o.log_arg);
}

static void report(const evq_worker *w, const evq_event *ev, int code,
                   const char *reason, int attempt)
{
    if (w->o.on_error)
        w->o.on_error(ev, code, reason, attempt, w->o.on_error_arg);
}

static void worker_release(evq_worker *w)
{
    if (atomic_fetch_sub(&w->refs, 1) != 1)
        return;
    for (int i = 0; w->t && i < w->n; i++)
        if (w->t[i]) {
            pthread_mutex_destroy(&w->t[i]->hold_mu);
            free(w->t[i]->held);
            free(w->t[i]->run);
            free(w->t[i]->acks);
            free(w->t[i]);
        }
    free(w->t);
    free(w->kt);
    evq__seen_free(w->seen);
    for (int i = 0; i < atomic_load(&w->n_limits); i++) {
        free(w->limits[i]->pattern);
        free(w->limits[i]);
    }
    pthread_mutex_destroy(&w->lim_mu);
    evq_queue_close(w->fetch);
    free(w->qname);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->exited);
    pthread_cond_destroy(&w->keeper_wake);
    free(w);
}

static void time_out(wthread *ct, evq_msg *m);

/* Touches m (hold_mu held) once touch_ms has passed since its lease was
 * last extended; false when its lease is gone (m is freed then). */
static bool keep_one(evq_worker *w, evq_msg *m, int64_t now_ns)
{
    int64_t lease = evq__msg_lease_ns(m);
    if (!lease || lease - now_ns > w->lease_ns - w->touch_ms * 1000000)
        return true;
    int rc = evq_msg_touch(m);
    if (rc == EVQ_ESTATE)
        return false;
    if (rc)
        wlog(w, EVQ_LOG_WARN, "touching a held event: %s: %s", evq_strerror(rc),
             evq_errmsg());
    return true;
}

/* One round of the keeper over thread t: the running handler's events
 * are taken at their deadline (into expired, for time_out; the count is
 * returned) or else touched; the prefetched ones are touched, or dropped
 * when their lease is gone. */
static int keep_thread(evq_worker *w, wthread *t, int64_t now_ns,
                       evq_msg **expired)
{
    int n_expired = 0;
    pthread_mutex_lock(&t->hold_mu);
    if (t->n_run && now_ns >= t->run_deadline_ns) {
        n_expired = t->n_run;
        memcpy(expired, t->run, (size_t)t->n_run * sizeof *expired);
        t->n_run = 0;
        t->run_timed_out = true;
        /* Its thread is stuck in the handler: what it prefetched goes back
         * for other threads and consumers rather than wait for it. */
        for (int i = t->next_held; i < t->n_held; i++)
            if (t->held[i]) {
                evq_nack(t->held[i], 0);
                t->held[i] = NULL;
            }
    } else {
        for (int i = 0; w->touch_ms && i < t->n_run; i++)
            if (!keep_one(w, t->run[i], now_ns))
                wlog(w, EVQ_LOG_WARN,
                     "a running handler's event lost its lease: its settle "
                     "will fail");
    }
    for (int i = t->next_held; w->touch_ms && i < t->n_held; i++) {
        evq_msg *m = t->held[i];
        if (m && !keep_one(w, m, now_ns)) {
            evq_nack(m, 0); /* settles nothing: frees the message */
            t->held[i] = NULL;
            bump(&w->kt->lease_lost, 1);
        }
    }
    pthread_mutex_unlock(&t->hold_mu);
    return n_expired;
}

/* The keeper: every period_ms (or at the next deadline, if sooner) it
 * touches each held event last touched touch_ms ago, so the backend does
 * not hand it to another consumer meanwhile, and times out handlers past
 * their deadline.  It holds a reference to the worker and ends once the
 * worker is stopping and no thread is left, so handlers stuck past a stop
 * deadline stay covered. */
static void *keeper_main(void *arg)
{
    evq_worker *w = arg;
    pthread_setname_np(pthread_self(), "evq-keeper");
    tls_worker = w; /* its callbacks may not stop the worker either */
    evq_msg **expired = malloc(EVQ_MAX_BATCH * sizeof *expired);
    pthread_mutex_lock(&w->mu);
    int64_t wake = evq__now_mono_ns() + w->period_ms * 1000000;
    while (!atomic_load(&w->stopping) || w->live > 0) {
        /* keeper_wake waits on the realtime clock (the default); convert. */
        int64_t left = wake - evq__now_mono_ns();
        if (left > 0) {
            struct timespec ts = evq__ts_from_ns(evq__now_real_ns() + left);
            pthread_cond_timedwait(&w->keeper_wake, &w->mu, &ts);
        }
        if (atomic_load(&w->stopping) && w->live == 0)
            break;
        pthread_mutex_unlock(&w->mu);
        int64_t now_ns = evq__now_mono_ns();
        wake = now_ns + w->period_ms * 1000000;
        for (int i = 0; i < w->n; i++) {
            wthread *t = w->t[i];
            if (!t)
                continue;
            int n_expired = expired ? keep_thread(w, t, now_ns, expired) : 0;
            for (int k = 0; k < n_expired; k++)
                time_out(w->kt, expired[k]);
            pthread_mutex_lock(&t->hold_mu);
            if (t->n_run && t->run_deadline_ns < wake)
                wake = t->run_deadline_ns;
            pthread_mutex_unlock(&t->hold_mu);
        }
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    free(expired);
    worker_release(w);
    return NULL;
}

static uint64_t next_rand(wthread *t)
{
    t->rng ^= t->rng << 13;
    t->rng ^= t->rng >> 7;
    t->rng ^= t->rng << 17;
    return t->rng;
}

/* Exponential backoff with full jitter: a uniform delay between 0 and
 * min(max, initial * multiplier^(attempt-1)). */
static int64_t backoff_ms(wthread *t, int attempt)
{
    const evq_worker_opts *o = &t->w->o;
    double cap = o->backoff_initial_ms *
                 pow(o->backoff_multiplier, attempt > 1 ? attempt - 1 : 0);
    if (!(cap < o->backoff_max_ms))
        cap = o->backoff_max_ms;
    int64_t c = (int64_t)cap;
    return c > 0 ? (int64_t)(next_rand(t) % (uint64_t)(c + 1)) : 0;
}

static void dead_letter(wthread *t, evq_msg *m, const evq_event *ev,
                        int attempt, int code, const char *reason)
{
    evq_worker *w = t->w;
    report(w, ev, code, reason, attempt);
    /* evq_msg_dead_letter frees m; keep what the log needs. */
    char id[64], type[64];
    snprintf(id, sizeof id, "%s", evq_event_id(ev));
    snprintf(type, sizeof type, "%s", evq_event_type(ev));
    int rc = evq_msg_dead_letter(m, reason);
    if (rc) {
        char why[640];
        snprintf(why, sizeof why, "could not dead-letter (%s); redelivering",
                 evq_errmsg());
        report(w, NULL, rc, why, attempt);
        wlog(w, EVQ_LOG_ERROR, "event %s (%s): %s", id, type, why);
        return;
    }
    bump(&t->dead, 1);
    wlog(w, EVQ_LOG_WARN, "event %s (%s) dead-lettered after %d attempt%s: %s",
         id, type, attempt, attempt == 1 ? "" : "s", reason);
}

/* A handler ran past its deadline (the keeper's thread): the event counts
 * as failed and is retried with backoff, or dead-lettered once its
 * attempts are spent.  Its handler keeps running; its result is ignored. */
static void time_out(wthread *kt, evq_msg *m)
{
    evq_worker *w = kt->w;
    const evq_event *ev = evq_msg_event(m);
    int attempt = evq_event_attempt(ev);
    char reason[200];

    bump(&kt->failed, 1);
    bump(&kt->timed_out, 1);
    snprintf(reason, sizeof reason,
             "handler timed out: still running after handler_timeout_ms=%lld",
             (long long)w->o.handler_timeout_ms);
    wlog(w, EVQ_LOG_WARN, "event %.40s (%.64s): %s", evq_event_id(ev),
         evq_event_type(ev), reason);
    if (attempt >= w->o.max_attempts) {
        char full[300];
        snprintf(full, sizeof full, "failed after %d attempt%s: %s", attempt,
                 attempt == 1 ? "" : "s", reason);
        dead_letter(kt, m, ev, attempt, EVQ_ETIMEDOUT, full);
        return;
    }
    report(w, ev, EVQ_ETIMEDOUT, reason, attempt);
    int nrc = evq_nack(m, backoff_ms(kt, attempt));
    if (nrc)
        report(w, NULL, nrc, evq_errmsg(), attempt);
    if (nrc == EVQ_ESTATE)
        bump(&kt->lease_lost, 1);
    else
        bump(&kt->retried, 1);
}

/* Acks m after its handlers succeeded.  An ack refused because the lease
 * went to another consumer meanwhile is not a success: the event runs
 * there again. */
static void flush_acks(wthread *t);

/* Sends the acks gathered (a queue without leases: no ack is refused for
 * a lease, so they count as succeeded when gathered). */
static void flush_acks(wthread *t)
{
    if (!t->n_acks)
        return;
    int rc = evq_ack_batch(t->acks, (size_t)t->n_acks);
    t->n_acks = 0;
    if (rc) {
        report(t->w, NULL, rc, evq_errmsg(), 0);
        wlog(t->w, EVQ_LOG_ERROR, "ack failed: %s: %s", evq_strerror(rc),
             evq_errmsg());
    }
}

static void succeed(wthread *t, evq_msg *m, int attempt)
{
    evq_worker *w = t->w;
    if (t->acks) {
        t->acks[t->n_acks++] = m;
        bump(&t->succeeded, 1);
        if (t->n_acks == ACKS_MAX)
            flush_acks(t);
        return;
    }
    int arc = evq_ack(m);
    if (arc == 0) {
        bump(&t->succeeded, 1);
        return;
    }
    report(w, NULL, arc, evq_errmsg(), attempt);
    wlog(w, EVQ_LOG_ERROR, "ack failed: %s: %s", evq_strerror(arc),
         evq_errmsg());
    if (arc == EVQ_ESTATE)
        bump(&t->lease_lost, 1);
    else
        bump(&t->succeeded, 1); /* the event is done; the backend redelivers
                                   it if the ack was lost */
}

/* dedup_window_ms: records that ev finished, before its ack, so a
 * redelivery after a crash in between is not run again.  A record that
 * cannot be written is said; the ack goes on (the event is done). */
/* What names an event for dedup_window_ms: its source and id (CloudEvents
 * makes the pair unique), "<source> <id>". */
static void done_name(const evq_event *ev, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s %s", evq_event_source(ev), evq_event_id(ev));
}

static void done_record(wthread *t, const evq_event *ev)
{
    evq_worker *w = t->w;
    if (w->o.dedup_window_ms <= 0)
        return;
    char name[2 * EVQ_MAX_ATTR_BYTES + 2];
    done_name(ev, name, sizeof name);
    int rc = w->seen
                 ? evq__seen_put(w->seen, name, w->o.dedup_window_ms)
                 : evq__queue_done_put(w->fetch, name, w->o.dedup_window_ms);
    if (rc) {
        report(w, ev, rc, evq_errmsg(), evq_event_attempt(ev));
        wlog(w, EVQ_LOG_ERROR, "recording event %.40s as done failed: %s: %s",
             evq_event_id(ev), evq_strerror(rc), evq_errmsg());
    }
}

/* dedup_window_ms: acks the messages of ms[0..n) whose event finished
 * within the window (a redelivery), keeping the others in order; returns
 * how many are kept.  A record that cannot be read runs the event (at
 * least once). */
static int skip_done(wthread *t, evq_msg **ms, int n)
{
    evq_worker *w = t->w;
    if (w->o.dedup_window_ms <= 0)
        return n;
    int keep = 0;
    for (int i = 0; i < n; i++) {
        const char *id = evq_event_id(evq_msg_event(ms[i]));
        char name[2 * EVQ_MAX_ATTR_BYTES + 2];
        done_name(evq_msg_event(ms[i]), name, sizeof name);
        int rc = w->seen ? evq__seen_has(w->seen, name)
                         : evq__queue_done_has(w->fetch, name);
        if (rc < 0)
            wlog(w, EVQ_LOG_WARN,
                 "reading whether event %.40s was done failed (it runs): "
                 "%s: %s",
                 id, evq_strerror(rc), evq_errmsg());
        if (rc != 1) {
            ms[keep++] = ms[i];
            continue;
        }
        bump(&t->deduplicated, 1);
        bump(&t->in_flight, -1);
        int arc = evq_ack(ms[i]);
        if (arc) {
            report(w, NULL, arc, evq_errmsg(), 0);
            wlog(w, EVQ_LOG_ERROR, "ack failed: %s: %s", evq_strerror(arc),
                 evq_errmsg());
        }
    }
    return keep;
}

/* Settles m after its handlers returned rc (reason: the failure's
 * message). */
static void settle(wthread *t, evq_msg *m, int rc, const char *reason)
{
    evq_worker *w = t->w;
    const evq_event *ev = evq_msg_event(m);
    int attempt = evq_event_attempt(ev);
    char why[700];

    if (rc == 0) {
        done_record(t, ev);
        succeed(t, m, attempt);
        return;
    }
    if (rc == EVQ_ENOHANDLER) {
        bump(&t->unhandled, 1);
        if (w->o.unhandled == EVQ_UNHANDLED_ACK) {
            evq_ack(m);
            return;
        }
        snprintf(why, sizeof why, "no handler for type '%.200s'",
                 evq_event_type(ev));
        dead_letter(t, m, ev, attempt, rc, why);
        return;
    }
    bump(&t->failed, 1);
    if (rc == EVQ_EPERMANENT || attempt >= w->o.max_attempts) {
        snprintf(why, sizeof why, "%s after %d attempt%s: %.600s",
                 rc == EVQ_EPERMANENT ? "permanent failure" : "failed", attempt,
                 attempt == 1 ? "" : "s", reason);
        dead_letter(t, m, ev, attempt, rc, why);
        return;
    }
    report(w, ev, rc, reason, attempt);
    int64_t delay = backoff_ms(t, attempt);
    int nrc = evq_nack(m, delay);
    if (nrc == 0) {
        bump(&t->retried, 1);
        return;
    }
    report(w, NULL, nrc, evq_errmsg(), attempt);
    if (nrc == EVQ_ESTATE)
        bump(&t->lease_lost, 1);
    else
        bump(&t->retried, 1);
}

/* Gives back the places under caps that run_handlers took for a run. */
static void caps_release(evq_worker *w, const bool *held, int n)
{
    for (int i = 0; i < n; i++)
        if (held[i])
            atomic_fetch_sub(&w->limits[i]->running, 1);
}

/* Sleeps up to ms, in short steps; false once the worker stops. */
static bool nap(evq_worker *w, int64_t ms)
{
    while (ms > 0) {
        if (atomic_load_explicit(&w->stopping, memory_order_acquire))
            return false;
        int64_t step = ms < 50 ? ms : 50;
        evq__sleep_ms(step);
        ms -= step;
    }
    return !atomic_load_explicit(&w->stopping, memory_order_acquire);
}

/* Waits until a run of evs[0..k) may start under the worker's limits: a
 * place under each cap whose pattern the first event's type matches
 * (held[i] set; one place for a batch), then a token of each rate limit
 * for each event.  Counts `throttled` once per run that waited.  False
 * when the worker stops meanwhile (the places are given back). */
static bool limits_wait(wthread *t, const evq_event *const *evs, int k,
                        bool *held, int n)
{
    evq_worker *w = t->w;
    bool waited = false;
    memset(held, 0, (size_t)n * sizeof *held);
    for (int i = 0; i < n; i++) {
        wlimit *l = w->limits[i];
        if (l->cap <= 0 ||
            !evq__pattern_match(l->pattern, evq_event_type(evs[0])))
            continue;
        for (;;) {
            int cur = atomic_load(&l->running);
            if (cur < l->cap &&
                atomic_compare_exchange_weak(&l->running, &cur, cur + 1))
                break;
            waited = true;
            if (!nap(w, 2)) {
                caps_release(w, held, n);
                return false;
            }
        }
        held[i] = true;
    }
    int failures = 0;
    for (int e = 0; e < k; e++) {
        const char *type = evq_event_type(evs[e]);
        for (int i = 0; i < n; i++) {
            wlimit *l = w->limits[i];
            if (l->rate <= 0 || !evq__pattern_match(l->pattern, type))
                continue;
            char key[EVQ_MAX_ATTR_BYTES * 2 + 16];
            const char *pk = evq_event_attr(evs[e], "partitionkey");
            snprintf(key, sizeof key, "rate:%s%s%s", l->pattern,
                     l->by_key ? "\n" : "", l->by_key && pk ? pk : "");
            for (;;) {
                int64_t wait = 0;
                int rc =
                    evq__queue_take(w->fetch, key, l->rate, l->burst, &wait);
                if (rc) {
                    /* the shared bucket cannot be read: wait, not run */
                    wlog(w, EVQ_LOG_WARN,
                         "rate limit '%s': taking a token failed: %s: %s",
                         l->pattern, evq_strerror(rc), evq_errmsg());
                    wait = evq__reconnect_pause_ms(&(evq__reconnect){100, 2000},
                                                   ++failures);
                } else if (wait == 0) {
                    break;
                }
                waited = true;
                if (!nap(w, wait)) {
                    caps_release(w, held, n);
                    return false;
                }
            }
        }
    }
    if (waited)
        bump(&t->throttled, 1);
    return true;
}

/* Runs the handlers of ms[0..k): batch handler bh on all of them, or
 * (bh NULL, k 1) the event's handlers; then settles each, unless the
 * keeper took them at their deadline meanwhile. */
static void run_handlers(wthread *t, evq_msg **ms, int k, const void *bh)
{
    evq_worker *w = t->w;
    bool kept = w->period_ms > 0;
    int64_t timeout = w->o.handler_timeout_ms;
    const evq_event *evs[EVQ_MAX_BATCH];
    evq_event *own[EVQ_MAX_BATCH];
    int rcs[EVQ_MAX_BATCH];
    char reason[600] = "";
    int n_limits = atomic_load_explicit(&w->n_limits, memory_order_acquire);
    bool held[LIMITS_MAX];

    /* Limits first: the events wait (kept, so their leases hold), not
     * counted as a failure or an attempt.  A stop meanwhile hands them
     * back. */
    if (n_limits > 0) {
        for (int i = 0; i < k; i++)
            evs[i] = evq_msg_event(ms[i]);
        if (kept) {
            pthread_mutex_lock(&t->hold_mu);
            memcpy(t->run, ms, (size_t)k * sizeof *ms);
            t->n_run = k;
            t->run_timed_out = false;
            t->run_deadline_ns = INT64_MAX;
            pthread_mutex_unlock(&t->hold_mu);
        }
        if (!limits_wait(t, evs, k, held, n_limits)) {
            if (kept) {
                pthread_mutex_lock(&t->hold_mu);
                t->n_run = 0;
                pthread_mutex_unlock(&t->hold_mu);
            }
            for (int i = 0; i < k; i++)
                evq_nack(ms[i], 0); /* never started: hand back */
            return;
        }
    }

    /* With a deadline the keeper may settle the messages (and free their
     * events) while the handler still runs: the events are kept alive
     * here. */
    for (int i = 0; i < k; i++) {
        evs[i] = evq_msg_event(ms[i]);
        own[i] = timeout > 0 ? evq__event_ref(evs[i]) : NULL;
    }
    uint64_t start = evq__ticks();
    int64_t deadline_ns =
        timeout > 0 ? evq__now_mono_ns() + timeout * 1000000 : 0;
    tls_deadline_ns = deadline_ns;
    if (kept) {
        pthread_mutex_lock(&t->hold_mu);
        memcpy(t->run, ms, (size_t)k * sizeof *ms);
        t->n_run = k;
        t->run_timed_out = false;
        t->run_deadline_ns = timeout > 0 ? deadline_ns : INT64_MAX;
        pthread_mutex_unlock(&t->hold_mu);
    }
    atomic_store_explicit(&t->cur_start, start, memory_order_relaxed);
    atomic_store_explicit(&t->cur, evs[0], memory_order_release);

    if (bh) {
        evq__dispatch_batch(w->events, bh, evs, (size_t)k, rcs, reason,
                            sizeof reason);
    } else {
        rcs[0] = evq_dispatch(w->events, evs[0]);
        if (rcs[0])
            snprintf(reason, sizeof reason, "%s", evq_errmsg());
    }

    /* Ticks go into the histogram; quantiles convert to nanoseconds.  A
     * batch's time counts for each of its events. */
    uint64_t took = evq__ticks() - start;
    for (int i = 0; i < k; i++)
        evq__hist_record(&t->hist, took);
    bump(&t->took_ticks, (int64_t)(took * (uint64_t)k));
    if (n_limits > 0)
        caps_release(w, held, n_limits);
    atomic_store_explicit(&t->cur, NULL, memory_order_seq_cst);
    while (atomic_load_explicit(&t->inspecting, memory_order_seq_cst))
        ;
    tls_deadline_ns = 0;
    bool late = false, expired = false;
    if (kept) {
        pthread_mutex_lock(&t->hold_mu);
        late = t->run_timed_out;
        /* Past the deadline before the keeper's round saw it: a timeout
         * all the same (the handler may have stopped early because
         * evq_handler_expired said so, and returned success). */
        expired = !late && deadline_ns && evq__now_mono_ns() >= deadline_ns;
        t->n_run = 0;
        pthread_mutex_unlock(&t->hold_mu);
    }
    if (expired || late) {
        /* late: the keeper settled the events at their deadline */
        wlog(w, EVQ_LOG_WARN,
             "event %.40s (%.64s)%s: its handler returned %d ms after its "
             "deadline (%s); the result is ignored",
             evq_event_id(own[0]), evq_event_type(own[0]),
             k > 1 ? " and the rest of its batch" : "",
             (int)((evq__now_mono_ns() - deadline_ns) / 1000000),
             rcs[0] ? evq_strerror(rcs[0]) : "success");
        for (int i = 0; i < k; i++) {
            if (expired)
                time_out(t, ms[i]);
            evq_event_free(own[i]);
        }
        return;
    }
    for (int i = 0; i < k; i++) {
        evq_event_free(own[i]); /* ms[i] still holds the event */
        settle(t, ms[i], rcs[i], reason);
    }
}

/* The next fetched message to start, or NULL when none is left; entries
 * the keeper dropped are passed over. */
static evq_msg *next_held(wthread *t, evq_msg **batch, int *next, int n,
                          bool kept)
{
    while (*next < n) {
        evq_msg *m;
        if (kept) {
            pthread_mutex_lock(&t->hold_mu);
            m = t->held[*next];
            t->next_held = ++*next;
            pthread_mutex_unlock(&t->hold_mu);
        } else {
            m = batch[(*next)++];
        }
        if (m)
            return m;
        bump(&t->in_flight, -1);
    }
    return NULL;
}

/* Adds m to what thread t holds (the keeper's view when kept): at
 * batch[*n].  False when there is no room (m is then handed back). */
static bool hold_more(wthread *t, evq_msg **batch, int *n, bool kept,
                      evq_msg *m)
{
    if (*n >= HOLD_MAX) {
        evq_nack(m, 0);
        bump(&t->in_flight, -1);
        return false;
    }
    if (kept)
        pthread_mutex_lock(&t->hold_mu);
    batch[(*n)++] = m;
    if (kept) {
        t->n_held = *n;
        pthread_mutex_unlock(&t->hold_mu);
    }
    return true;
}

/* Makes group[0..*k) (the first already there) a batch for handler bh:
 * what thread t holds for bh joins it, then what more comes within the
 * handler's max_wait_ms; the rest fetched meanwhile is held for later.
 * When kept, the group is the keeper's run set while it fills. */
static void gather(wthread *t, evq_msg **batch, int next, int *n, bool kept,
                   const void *bh, size_t max_batch, int64_t max_wait_ms,
                   evq_msg **group, int *k)
{
    evq_worker *w = t->w;
    size_t mb;
    int64_t mw;
    if (kept) {
        pthread_mutex_lock(&t->hold_mu);
        t->run[0] = group[0];
        t->n_run = 1;
        t->run_deadline_ns = INT64_MAX;
        t->run_timed_out = false;
    }
    int keep = next;
    for (int i = next; i < *n; i++) {
        evq_msg *m = batch[i];
        if (m && (size_t)*k < max_batch &&
            evq__batch_handler(w->events, evq_msg_event(m), &mb, &mw) == bh) {
            group[(*k)++] = m;
            if (kept)
                t->run[t->n_run++] = m;
        } else {
            batch[keep++] = m;
        }
    }
    *n = keep;
    if (kept) {
        t->n_held = *n;
        pthread_mutex_unlock(&t->hold_mu);
    }
    int64_t end = evq__now_mono_ns() + max_wait_ms * 1000000;
    size_t fetched = 0; /* bounds what waits in batch */
    while ((size_t)*k < max_batch && fetched < max_batch &&
           !atomic_load_explicit(&w->stopping, memory_order_acquire)) {
        int64_t left = (end - evq__now_mono_ns()) / 1000000;
        if (left <= 0)
            break;
        evq_msg *more[EVQ_MAX_BATCH];
        int got = evq_dequeue_batch(w->fetch, more, max_batch - (size_t)*k,
                                    (int)left);
        if (got <= 0)
            break;
        fetched += (size_t)got;
        bump(&t->received, got);
        bump(&t->in_flight, got);
        got = skip_done(t, more, got);
        for (int i = 0; i < got; i++) {
            evq_msg *m = more[i];
            if (evq__batch_handler(w->events, evq_msg_event(m), &mb, &mw) !=
                bh) {
                hold_more(t, batch, n, kept, m);
                continue;
            }
            group[(*k)++] = m;
            if (kept) {
                pthread_mutex_lock(&t->hold_mu);
                t->run[t->n_run++] = m;
                pthread_mutex_unlock(&t->hold_mu);
            }
        }
    }
}

static void *worker_main(void *arg)
{
    wthread *t = arg;
    evq_worker *w = t->w;
    bool kept = w->period_ms > 0;
    evq_msg *more[HOLD_MAX], **batch = kept ? t->held : more;
    evq_msg *group[EVQ_MAX_BATCH];
    evq__reconnect policy;
    evq__queue_reconnect(w->fetch, &policy);
    int failures = 0;

    char tname[16];
    snprintf(tname, sizeof tname, "evq-worker-%d", t->index % 1000);
    pthread_setname_np(pthread_self(), tname);
    tls_worker = w;
    while (!atomic_load_explicit(&w->stopping, memory_order_acquire)) {
        size_t take = (size_t)w->o.prefetch, mb = 0;
        int64_t mw = 0;
        size_t most = evq__events_max_batch(w->events);
        if (most > take)
            take = most;
        int n = evq_dequeue_batch(w->fetch, more, take, -1);
        if (n == EVQ_ECLOSED)
            break;
        if (n == EVQ_ETIMEDOUT)
            continue;
        if (n < 0) {
            /* The backend is failing (a broker away, say): report, pause
             * (reconnect_initial_ms, doubling up to reconnect_max_ms) and
             * try again rather than spin. */
            report(w, NULL, n, evq_errmsg(), 0);
            wlog(w, EVQ_LOG_ERROR, "dequeue failed: %s: %s", evq_strerror(n),
                 evq_errmsg());
            evq__sleep_ms(evq__reconnect_pause_ms(&policy, ++failures));
            continue;
        }
        failures = 0;
        bump(&t->received, n);
        bump(&t->in_flight, n);
        if ((n = skip_done(t, more, n)) == 0)
            continue;
        if (kept) {
            pthread_mutex_lock(&t->hold_mu);
            for (int i = 0; i < n; i++)
                t->held[i] = more[i];
            t->n_held = n;
            t->next_held = 0;
            pthread_mutex_unlock(&t->hold_mu);
        }
        int next = 0;
        evq_msg *m;
        while ((m = next_held(t, batch, &next, n, kept)) != NULL) {
            if (atomic_load_explicit(&w->stopping, memory_order_acquire)) {
                evq_nack(m, 0); /* fetched, never started: hand back */
                bump(&t->in_flight, -1);
                continue;
            }
            const void *bh =
                evq__batch_handler(w->events, evq_msg_event(m), &mb, &mw);
            if (!bh) {
                run_handlers(t, &m, 1, NULL);
                bump(&t->in_flight, -1);
                continue;
            }
            int k = 1;
            group[0] = m;
            gather(t, batch, next, &n, kept, bh, mb, mw, group, &k);
            run_handlers(t, group, k, bh);
            bump(&t->in_flight, -k);
        }
        flush_acks(t);
        if (kept) {
            pthread_mutex_lock(&t->hold_mu);
            t->n_held = t->next_held = 0;
            pthread_mutex_unlock(&t->hold_mu);
        }
    }
    flush_acks(t);
    tls_worker = NULL;
    pthread_mutex_lock(&w->mu);
    w->live--;
    pthread_cond_broadcast(&w->exited);
    pthread_mutex_unlock(&w->mu);
    worker_release(w);
    return NULL;
}

static int check_opts(const evq_worker_opts *o)
{
    if (o->concurrency < 1 || o->concurrency > 1024)
        return evq__err(EVQ_EINVAL,
                        "worker option 'concurrency': %d is out of range (1 "
                        "to 1024)",
                        o->concurrency);
    if (o->prefetch < 1 || o->prefetch > 1024)
        return evq__err(EVQ_EINVAL,
                        "worker option 'prefetch': %d is out of range (1 to "
                        "1024)",
                        o->prefetch);
    if (o->max_attempts < 1)
        return evq__err(EVQ_EINVAL,
                        "worker option 'max_attempts': %d must be at least 1",
                        o->max_attempts);
    if (o->backoff_initial_ms < 0 ||
        o->backoff_max_ms < o->backoff_initial_ms ||
        o->backoff_max_ms > 2592000000LL)
        return evq__err(EVQ_EINVAL,
                        "worker options 'backoff_initial_ms' (%lld) and "
                        "'backoff_max_ms' (%lld) need 0 <= initial <= max <= "
                        "2592000000 (30 days)",
                        (long long)o->backoff_initial_ms,
                        (long long)o->backoff_max_ms);
    if (!(o->backoff_multiplier >= 1.0) || !isfinite(o->backoff_multiplier))
        return evq__err(EVQ_EINVAL,
                        "worker option 'backoff_multiplier': %g must be a "
                        "finite number >= 1",
                        o->backoff_multiplier);
    if (o->touch_ms < -1 || o->touch_ms > 2592000000LL)
        return evq__err(EVQ_EINVAL,
                        "worker option 'touch_ms': %lld must be -1 (never), 0 "
                        "(a third of the visibility timeout) or up to "
                        "2592000000 (30 days)",
                        (long long)o->touch_ms);
    if (o->handler_timeout_ms < 0 || o->handler_timeout_ms > 604800000)
        return evq__err(EVQ_EINVAL,
                        "worker option 'handler_timeout_ms': %lld is out of "
                        "range (0: none, up to 604800000: a week)",
                        (long long)o->handler_timeout_ms);
    if (o->dedup_window_ms < 0 || o->dedup_window_ms > 2592000000LL)
        return evq__err(EVQ_EINVAL,
                        "worker option 'dedup_window_ms': %lld is out of "
                        "range (0: off, up to 2592000000: 30 days)",
                        (long long)o->dedup_window_ms);
    if (o->n_limits < 0 || o->n_limits > LIMITS_MAX ||
        (o->n_limits > 0 && !o->limits))
        return evq__err(EVQ_EINVAL,
                        "worker option 'n_limits': %d needs 0 to %d entries "
                        "in 'limits'",
                        o->n_limits, LIMITS_MAX);
    if (o->unhandled != EVQ_UNHANDLED_DEAD_LETTER &&
        o->unhandled != EVQ_UNHANDLED_ACK)
        return evq__err(EVQ_EINVAL,
                        "worker option 'unhandled': %d is not an "
                        "evq_unhandled value",
                        (int)o->unhandled);
    return 0;
}

int evq_worker_start(evq_worker **wp, evq_queue *q, evq_events *events,
                     const evq_worker_opts *opts)
{
    evq_worker_opts def;
    evq_worker *w;
    int rc;

    if (!wp || !q || !events)
        return evq__err(EVQ_EINVAL, "evq_worker_start: NULL argument");
    *wp = NULL;
    evq_worker_opts_init(&def);
    if (opts &&
        (rc = evq__sized_in(&def, sizeof def, opts, "evq_worker_opts")) != 0)
        return rc;
    opts = &def;
    if ((rc = check_opts(opts)) != 0)
        return rc;
    evq__ticks_init();
    w = calloc(1, sizeof *w);
    if (!w)
        return evq__err(EVQ_ENOMEM, "out of memory");
    w->o = *opts;
    w->o.limits = NULL; /* copied into w->limits below */
    w->o.n_limits = 0;
    w->events = events;
    w->n = opts->concurrency;
    atomic_init(&w->refs, 1);
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->lim_mu, NULL);
    pthread_cond_init(&w->exited, NULL);
    pthread_cond_init(&w->keeper_wake, NULL);
    w->touch_ms = opts->touch_ms < 0   ? 0
                  : opts->touch_ms > 0 ? opts->touch_ms
                                       : evq__queue_touch_ms(q);
    w->lease_ns = evq__queue_lease_ns(q);
    if (w->lease_ns == 0)
        w->touch_ms = 0; /* the backend has no leases to keep */
    if (w->touch_ms * 1000000 >= w->lease_ns && w->lease_ns > 0) {
        int64_t vt = w->lease_ns / 1000000;
        worker_release(w);
        return evq__err(EVQ_EINVAL,
                        "worker option 'touch_ms': %lld is not shorter "
                        "than the queue's visibility_timeout_ms (%lld): "
                        "leases would run out between touches",
                        (long long)opts->touch_ms, (long long)vt);
    }
    /* The keeper's round: half the touch interval, and a tenth of the
     * handler timeout so a deadline is seen at most that late. */
    int64_t period = w->touch_ms > 0 ? w->touch_ms / 2 : INT64_MAX;
    if (opts->handler_timeout_ms > 0 && opts->handler_timeout_ms / 10 < period)
        period = opts->handler_timeout_ms / 10;
    w->period_ms = period == INT64_MAX ? 0 : period < 5 ? 5 : period;
    w->t = calloc((size_t)w->n, sizeof *w->t);
    w->kt = aligned_alloc(64, (sizeof *w->kt + 63) / 64 * 64);
    if (w->kt) {
        memset(w->kt, 0, sizeof *w->kt);
        w->kt->w = w;
        w->kt->rng = ((uint64_t)evq__now_real_ns() * 0x9e3779b97f4a7c15ull) | 1;
    }
    if (!w->t || !w->kt) {
        worker_release(w);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    if (!(w->qname = evq__strdup(evq_queue_name(q)))) {
        worker_release(w);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    if ((rc = evq__queue_clone(q, &w->fetch)) != 0) {
        worker_release(w);
        return evq__err_prefix(rc, "worker: opening its queue handle");
    }
    if (opts->log)
        evq__queue_set_log(w->fetch, opts->log, opts->log_arg);
    for (int i = 0; i < opts->n_limits; i++) {
        const evq_limit *l = &opts->limits[i];
        rc = 0;
        if (l->max_running < 0 || l->per_second < 0 ||
            (l->max_running == 0 && l->per_second == 0))
            rc = evq__err(EVQ_EINVAL,
                          "needs per_second (a rate limit) or max_running (a "
                          "cap), neither negative");
        if (!rc && l->per_second != 0)
            rc = evq_worker_limit(w, l->pattern, l->per_second, l->burst,
                                  l->flags);
        if (!rc && l->max_running != 0)
            rc = evq_worker_cap(w, l->pattern, l->max_running);
        if (rc) {
            worker_release(w);
            return evq__err_prefix(rc, "worker option 'limits[%d]'", i);
        }
    }
    if (opts->dedup_window_ms > 0 && !evq__queue_done_shared(w->fetch) &&
        !(w->seen = evq__seen_new())) {
        worker_release(w);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    uint64_t seed = (uint64_t)evq__now_real_ns() ^ (uint64_t)(uintptr_t)w;
    for (int i = 0; i < w->n; i++) {
        wthread *t = aligned_alloc(64, (sizeof *t + 63) / 64 * 64);
        if (!t) {
            rc = evq__err(EVQ_ENOMEM, "out of memory");
            break;
        }
        memset(t, 0, sizeof *t);
        pthread_mutex_init(&t->hold_mu, NULL);
        t->w = w;
        t->index = i;
        w->t[i] = t;
        if ((w->period_ms > 0 &&
             (!(t->held = calloc(HOLD_MAX, sizeof *t->held)) ||
              !(t->run = calloc(EVQ_MAX_BATCH, sizeof *t->run)))) ||
            (w->lease_ns == 0 &&
             !(t->acks = calloc(ACKS_MAX, sizeof *t->acks)))) {
            rc = evq__err(EVQ_ENOMEM, "out of memory");
            break;
        }
        t->rng = (seed + (uint64_t)i * 0x9e3779b97f4a7c15ull) | 1;
        atomic_fetch_add(&w->refs, 1);
        pthread_mutex_lock(&w->mu);
        w->live++;
        pthread_mutex_unlock(&w->mu);
        if ((rc = pthread_create(&t->tid, NULL, worker_main, t)) != 0) {
            atomic_fetch_sub(&w->refs, 1);
            pthread_mutex_lock(&w->mu);
            w->live--;
            pthread_mutex_unlock(&w->mu);
            rc = evq__err(EVQ_ENOMEM, "cannot start worker thread %d: %s", i,
                          strerror(rc));
            break;
        }
        t->joinable = true;
    }
    if (!rc && w->period_ms > 0) {
        atomic_fetch_add(&w->refs, 1);
        int e = pthread_create(&w->keeper, NULL, keeper_main, w);
        if (e) {
            atomic_fetch_sub(&w->refs, 1);
            rc = evq__err(EVQ_ENOMEM, "cannot start the keeper thread: %s",
                          strerror(e));
        } else {
            w->keeper_joinable = true;
        }
    }
    if (rc) {
        evq_worker_stop(w, -1);
        worker_release(w);
        return rc;
    }
    wlog(w, EVQ_LOG_INFO, "worker started: %d thread%s on queue '%s'", w->n,
         w->n == 1 ? "" : "s", evq_queue_name(q));
    *wp = w;
    return 0;
}

int evq_worker_stop(evq_worker *w, int64_t drain_timeout_ms)
{
    int expected = 0;
    int64_t deadline = evq__deadline_ns(drain_timeout_ms);
    int rc = 0;

    if (!w)
        return evq__err(EVQ_EINVAL, "evq_worker_stop: worker is NULL");
    if (tls_worker == w)
        return evq__err(EVQ_ESTATE, "a worker cannot be stopped from one of "
                                    "its own handlers");
    if (!atomic_compare_exchange_strong(&w->state, &expected, 1))
        return evq__err(EVQ_ESTATE, "worker is already stopped");
    atomic_store_explicit(&w->stopping, true, memory_order_release);
    evq_queue_interrupt(w->fetch);

    pthread_mutex_lock(&w->mu);
    while (w->live > 0) {
        if (deadline == INT64_MAX) {
            pthread_cond_wait(&w->exited, &w->mu);
            continue;
        }
        /* exited uses the realtime clock (the default); convert. */
        int64_t left = deadline - evq__now_mono_ns();
        if (left <= 0)
            break;
        struct timespec ts = evq__ts_from_ns(evq__now_real_ns() + left);
        pthread_cond_timedwait(&w->exited, &w->mu, &ts);
    }
    int stuck = w->live;
    pthread_mutex_unlock(&w->mu);

    if (stuck > 0) {
        char msg[512];
        int len = snprintf(msg, sizeof msg,
                           "%d handler%s still running after %lld ms:", stuck,
                           stuck == 1 ? "" : "s", (long long)drain_timeout_ms);
        uint64_t now = evq__ticks();
        for (int i = 0; i < w->n && len < (int)sizeof msg - 1; i++) {
            wthread *t = w->t[i];
            if (!t)
                continue;
            atomic_fetch_add_explicit(&t->inspecting, 1, memory_order_seq_cst);
            const evq_event *ev =
                atomic_load_explicit(&t->cur, memory_order_seq_cst);
            if (ev) {
                double ms = (double)(now - atomic_load(&t->cur_start)) *
                            evq__ns_per_tick() / 1e6;
                len += snprintf(msg + len, sizeof msg - (size_t)len,
                                " thread %d on %.64s %.40s for %.0f ms;", i,
                                evq_event_type(ev), evq_event_id(ev), ms);
            }
            atomic_fetch_sub_explicit(&t->inspecting, 1, memory_order_release);
        }
        wlog(w, EVQ_LOG_ERROR, "%s", msg);
        rc = evq__err(EVQ_ETIMEDOUT, "%s", msg);
    }
    if (w->keeper_joinable) { /* ends now, or after the stuck handlers */
        w->keeper_joinable = false;
        pthread_mutex_lock(&w->mu);
        pthread_cond_signal(&w->keeper_wake);
        pthread_mutex_unlock(&w->mu);
        if (stuck > 0)
            pthread_detach(w->keeper);
        else
            pthread_join(w->keeper, NULL);
    }
    /* Join the threads that ended; leave the stuck ones to finish alone
     * (each holds a reference to the worker). */
    for (int i = 0; i < w->n; i++) {
        wthread *t = w->t[i];
        if (!t || !t->joinable)
            continue;
        t->joinable = false;
        if (stuck > 0)
            pthread_detach(t->tid);
        else
            pthread_join(t->tid, NULL);
    }
    if (stuck == 0) {
        /* Nothing uses the worker's handle any more: closing it now
         * settles what it still holds and lets other consumers have its
         * share (a Kafka consumer leaves its group). */
        evq_queue_close(w->fetch);
        w->fetch = NULL;
    }
    if (!rc)
        wlog(w, EVQ_LOG_INFO, "worker stopped");
    return rc;
}

void evq_worker_free(evq_worker *w)
{
    if (!w || tls_worker == w) /* from its own handler it would deadlock */
        return;
    if (atomic_load(&w->state) == 0)
        evq_worker_stop(w, -1);
    worker_release(w);
}

int evq_worker_stats_sized(const evq_worker *w, struct evq_worker_stats *user,
                           size_t size)
{
    struct evq_worker_stats st, *out = &st;
    uint64_t *counts;

    if (!w || !user)
        return evq__err(EVQ_EINVAL, "evq_worker_stats: NULL argument");
    memset(out, 0, sizeof *out);
    counts = calloc(EVQ__HIST_BUCKETS, sizeof *counts);
    if (!counts)
        return evq__err(EVQ_ENOMEM, "out of memory");
    for (int i = 0; i <= w->n; i++) {
        const wthread *t = i < w->n ? w->t[i] : w->kt; /* the keeper's last */
        if (!t)
            continue;
#define SUM(f) out->f += atomic_load_explicit(&t->f.v, memory_order_relaxed)
        SUM(received);
        SUM(succeeded);
        SUM(failed);
        SUM(retried);
        SUM(unhandled);
        SUM(timed_out);
        SUM(lease_lost);
        SUM(deduplicated);
        SUM(throttled);
#undef SUM
        out->dead_lettered += atomic_load(&t->dead.v);
        out->in_flight += (int64_t)atomic_load(&t->in_flight.v);
        evq__hist_merge(counts, &t->hist);
    }
    for (unsigned b = 0; b < EVQ__HIST_BUCKETS; b++)
        out->latency_count += counts[b];
    double f = evq__ns_per_tick();
#define Q(q)                                                                   \
    (uint64_t)((double)evq__hist_quantile(counts, out->latency_count, q) * f)
    out->latency_ns_p50 = Q(0.5);
    out->latency_ns_p90 = Q(0.9);
    out->latency_ns_p99 = Q(0.99);
    out->latency_ns_p999 = Q(0.999);
#undef Q
    free(counts);
    evq__sized_out(user, size, &st, sizeof st);
    return 0;
}

/* Adds a limit, checked and copied, to the worker's list. */
static int add_limit(evq_worker *w, const char *what, const char *pattern,
                     double rate, int burst, bool by_key, int cap)
{
    if (!w)
        return evq__err(EVQ_EINVAL, "%s: w is NULL", what);
    int rc = evq__pattern_check(pattern);
    if (rc)
        return evq__err_prefix(rc, "%s", what);
    wlimit *l = calloc(1, sizeof *l);
    if (!l || !(l->pattern = evq__strdup(pattern))) {
        free(l);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    l->rate = rate;
    l->burst = burst;
    l->by_key = by_key;
    l->cap = cap;
    pthread_mutex_lock(&w->lim_mu);
    int n = atomic_load(&w->n_limits);
    if (n == LIMITS_MAX) {
        pthread_mutex_unlock(&w->lim_mu);
        free(l->pattern);
        free(l);
        return evq__err(EVQ_EFULL, "%s: a worker takes at most %d limits", what,
                        LIMITS_MAX);
    }
    w->limits[n] = l;
    atomic_store_explicit(&w->n_limits, n + 1, memory_order_release);
    pthread_mutex_unlock(&w->lim_mu);
    return 0;
}

int evq_worker_limit(evq_worker *w, const char *pattern, double per_second,
                     int burst, unsigned flags)
{
    if (!(per_second >= 0.001) || per_second > 1e9)
        return evq__err(EVQ_EINVAL,
                        "evq_worker_limit: per_second %g is out of range "
                        "(0.001 to 1e9)",
                        per_second);
    if (burst < 1 || burst > 1000000)
        return evq__err(EVQ_EINVAL,
                        "evq_worker_limit: burst %d is out of range (1 to "
                        "1000000)",
                        burst);
    if (flags & ~EVQ_LIMIT_BY_KEY)
        return evq__err(EVQ_EINVAL, "evq_worker_limit: unknown flags 0x%x",
                        flags & ~EVQ_LIMIT_BY_KEY);
    return add_limit(w, "evq_worker_limit", pattern, per_second, burst,
                     (flags & EVQ_LIMIT_BY_KEY) != 0, 0);
}

int evq_worker_cap(evq_worker *w, const char *pattern, int max_running)
{
    if (max_running < 1 || max_running > 1024)
        return evq__err(EVQ_EINVAL,
                        "evq_worker_cap: max_running %d is out of range (1 "
                        "to 1024)",
                        max_running);
    return add_limit(w, "evq_worker_cap", pattern, 0, 0, false, max_running);
}

const char *evq__worker_queue_name(const evq_worker *w)
{
    return w->qname;
}

int evq__worker_latency(const evq_worker *w, uint64_t *counts, double *sum_s)
{
    memset(counts, 0, EVQ__HIST_BUCKETS * sizeof *counts);
    uint64_t sum = 0;
    for (int i = 0; i <= w->n; i++) {
        const wthread *t = i < w->n ? w->t[i] : w->kt;
        if (!t)
            continue;
        evq__hist_merge(counts, &t->hist);
        sum += atomic_load_explicit(&t->took_ticks.v, memory_order_relaxed);
    }
    *sum_s = (double)sum * evq__ns_per_tick() / 1e9;
    return 0;
}
