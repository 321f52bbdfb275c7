/*
 * relay.c - the outbox relay: moves events from one queue (an outbox on
 * sqlite:// or postgres://, or any other) to another, acking each source
 * event only once the destination reported it stored.
 *
 * One thread (the caller's) takes events from the source, sends them with
 * evq_enqueue_async and settles them at the source as the destination's
 * reports come: stored, acked; failed, handed back for a retry after
 * retry_ms; refused for good (too big, invalid), dead-lettered at the
 * source.  At most `window` events are out (sent, not yet reported), and
 * their leases at the source are kept (touched) meanwhile, so a second
 * relay on the same outbox takes other events.  What a relay killed
 * mid-stream had out comes again after its lease: a destination may get
 * up to `window` events twice, with the same id.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RELAY_TAKE          256 /* most events taken from the source at once */
#define RELAY_WINDOW_MAX    100000
#define RELAY_SAY_EVERY_NS  (30 * 1000000000LL) /* a failure said again */
#define RELAY_KEEP_EVERY_NS (10 * 1000000LL)    /* leases looked at */

typedef struct relay relay;

typedef struct rslot {
    relay *r;
    evq_msg *m;           /* the source's message, while out */
    int64_t touched_ns;   /* its lease last extended */
    int64_t lease_len_ns; /* the source's visibility timeout; 0: none */
    int rc;               /* the destination's report */
} rslot;

struct relay {
    const evq_relay_opts *o;
    evq_queue *from, *to;
    rslot *slots;
    int *free_slots; /* the caller's thread only */
    int n_free;
    size_t out; /* sent, not yet settled */
    pthread_mutex_t mu;
    pthread_cond_t reported;
    int *done; /* under mu: slots reported, not yet settled */
    int n_done;
    char why[256]; /* under mu: the last failure's message */
    struct evq_relay_stats st;
    int first_failure; /* with once: the first send that failed */
    char first_why[256];
    int64_t said_ns;      /* when the destination's failure was last said */
    int64_t next_keep_ns; /* when keep_leases looks again */
    uint64_t failed_since_said;
};

void evq_relay_opts_init_sized(evq_relay_opts *o, size_t size)
{
    const evq_relay_opts d = {.window = 1000, .retry_ms = 1000};
    evq__sized_init(o, size, &d, sizeof d);
}

static void rlog(relay *r, evq_log_level lvl, const char *fmt, ...)
    EVQ__PRINTF(3, 4);
static void rlog(relay *r, evq_log_level lvl, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    if (!r->o->log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    r->o->log(lvl, line, r->o->log_arg);
}

/* The destination's report (on its sender thread, or inside
 * evq_enqueue_async or evq_flush on the caller's). */
static void relay_reported(const char *id, int rc, void *arg)
{
    (void)id;
    rslot *s = arg;
    relay *r = s->r;
    pthread_mutex_lock(&r->mu);
    s->rc = rc;
    if (rc)
        snprintf(r->why, sizeof r->why, "%s", evq_errmsg());
    r->done[r->n_done++] = (int)(s - r->slots);
    pthread_cond_signal(&r->reported);
    pthread_mutex_unlock(&r->mu);
}

/* Whether the destination refused the event for good: sending it again
 * would fail the same way. */
static bool refused_for_good(int rc)
{
    return rc == EVQ_ETOOBIG || rc == EVQ_EINVAL || rc == EVQ_ENOTSUP;
}

/* Settles at the source one event whose send ended with rc (the message
 * is freed). */
static void settle_one(relay *r, evq_msg *m, int rc, const char *why)
{
    /* a unique key taken at the destination: this event (sent before,
     * its ack lost) or one it is unique with is there */
    if (rc == EVQ_EEXIST)
        rc = 0;
    if (rc == 0) {
        int a = evq_ack(m);
        if (a == 0) {
            r->st.moved++;
        } else {
            /* Stored, but the source keeps it (its lease passed on, or
             * the ack was lost): it will be sent again, same id. */
            r->st.unacked++;
            rlog(r, EVQ_LOG_WARN,
                 "relay: an event was stored but its ack at the source "
                 "failed (%s: %s): it will be sent again",
                 evq_strerror(a), evq_errmsg());
        }
        return;
    }
    if (refused_for_good(rc)) {
        char reason[320];
        snprintf(reason, sizeof reason, "relay: the destination refused it: %s",
                 why);
        if (evq_msg_dead_letter(m, reason) == 0) {
            r->st.dead_lettered++;
            return;
        }
        r->st.failed++; /* handed back by evq_msg_dead_letter */
        return;
    }
    r->st.failed++;
    r->failed_since_said++;
    if (!r->first_failure) {
        r->first_failure = rc;
        snprintf(r->first_why, sizeof r->first_why, "%s", why);
    }
    int64_t now = evq__now_mono_ns();
    if (!r->said_ns || now - r->said_ns >= RELAY_SAY_EVERY_NS) {
        rlog(r, EVQ_LOG_ERROR,
             "relay: sending to the destination fails (%s: %s); %llu "
             "event%s handed back to the source for a retry in %lld ms",
             evq_strerror(rc), why, (unsigned long long)r->failed_since_said,
             r->failed_since_said == 1 ? "" : "s", (long long)r->o->retry_ms);
        r->said_ns = now;
        r->failed_since_said = 0;
    }
    evq_nack(m, r->o->retry_ms);
}

/* Settles every event reported so far. */
static void settle_reported(relay *r)
{
    int idx[RELAY_TAKE];
    char why[256];
    for (;;) {
        pthread_mutex_lock(&r->mu);
        int n = r->n_done < RELAY_TAKE ? r->n_done : RELAY_TAKE;
        r->n_done -= n;
        memcpy(idx, r->done + r->n_done, (size_t)n * sizeof *idx);
        snprintf(why, sizeof why, "%s", r->why);
        pthread_mutex_unlock(&r->mu);
        if (n == 0)
            return;
        for (int i = 0; i < n; i++) {
            rslot *s = &r->slots[idx[i]];
            evq_msg *m = s->m;
            s->m = NULL;
            r->free_slots[r->n_free++] = idx[i];
            r->out--;
            if (s->rc == 0 && r->said_ns) {
                rlog(r, EVQ_LOG_INFO, "relay: the destination stores again");
                r->said_ns = 0;
                r->failed_since_said = 0;
            }
            settle_one(r, m, s->rc, why);
        }
    }
}

/* Keeps the leases of the events out: touched once a third of the
 * source's visibility timeout passed since the last time. */
static void keep_leases(relay *r)
{
    int64_t now = evq__now_mono_ns();
    /* leases last at least 100 ms (visibility_timeout_ms): a look every
     * 10 ms is enough, not one per batch taken */
    if (now < r->next_keep_ns)
        return;
    r->next_keep_ns = now + RELAY_KEEP_EVERY_NS;
    size_t window = (size_t)r->o->window;
    for (size_t i = 0; i < window; i++) {
        rslot *s = &r->slots[i];
        if (!s->m || !s->lease_len_ns ||
            now - s->touched_ns < s->lease_len_ns / 3)
            continue;
        int rc = evq_msg_touch(s->m);
        if (rc == 0)
            s->touched_ns = now;
        else if (rc == EVQ_ESTATE)
            s->lease_len_ns = 0; /* another consumer's now: its ack fails */
    }
}

/* Waits up to ms for a report. */
static void wait_reported(relay *r, int ms)
{
    pthread_mutex_lock(&r->mu);
    if (r->n_done == 0) {
        struct timespec ts =
            evq__ts_from_ns(evq__now_real_ns() + (int64_t)ms * 1000000);
        pthread_cond_timedwait(&r->reported, &r->mu, &ts);
    }
    pthread_mutex_unlock(&r->mu);
}

/* Sends msgs[0..n) taken from the source. */
static void send_taken(relay *r, evq_msg **msgs, int n)
{
    int64_t now = evq__now_mono_ns();
    for (int i = 0; i < n; i++) {
        int k = r->free_slots[--r->n_free];
        rslot *s = &r->slots[k];
        int64_t lease = evq__msg_lease_ns(msgs[i]);
        *s = (rslot){.r = r,
                     .m = msgs[i],
                     .touched_ns = now,
                     .lease_len_ns = lease > now ? lease - now : 0};
        r->out++;
        int rc = evq_enqueue_async(r->to, evq_msg_event(msgs[i]), 0,
                                   relay_reported, s);
        if (rc) {
            /* Not accepted: no report comes. */
            char why[256];
            snprintf(why, sizeof why, "%s", evq_errmsg());
            s->m = NULL;
            r->free_slots[r->n_free++] = k;
            r->out--;
            settle_one(r, msgs[i], rc, why);
        }
    }
}

/* Whether a source failure is a server away (the read-ahead reconnects). */
static bool source_away(int rc)
{
    return rc == EVQ_ECONN || rc == EVQ_EIO || rc == EVQ_EBUSY;
}

int evq_relay_sized(evq_queue *from, evq_queue *to, const evq_relay_opts *user,
                    struct evq_relay_stats *stats, size_t stats_size)
{
    evq_relay_opts defaults, *opts = &defaults;
    evq_relay_opts_init(&defaults);
    if (stats)
        memset(stats, 0, stats_size);
    if (user &&
        evq__sized_in(&defaults, sizeof defaults, user, "evq_relay_opts") != 0)
        return EVQ_EINVAL;
    if (!from || !to)
        return evq__err(EVQ_EINVAL, "relay: NULL queue");
    if (from == to)
        return evq__err(EVQ_EINVAL,
                        "relay: the source and the destination are one handle");
    if (opts->window < 1 || opts->window > RELAY_WINDOW_MAX)
        return evq__err(EVQ_EINVAL, "relay: window %d is not in 1..%d",
                        opts->window, RELAY_WINDOW_MAX);
    if (opts->retry_ms < 0 || opts->retry_ms > 2592000000LL)
        return evq__err(EVQ_EINVAL,
                        "relay: retry_ms %lld is not in 0..2592000000 (30 "
                        "days)",
                        (long long)opts->retry_ms);

    relay r = {.o = opts, .from = from, .to = to};
    size_t window = (size_t)opts->window;
    r.slots = calloc(window, sizeof *r.slots);
    r.free_slots = malloc(window * sizeof *r.free_slots);
    r.done = malloc(window * sizeof *r.done);
    if (!r.slots || !r.free_slots || !r.done) {
        free(r.slots);
        free(r.free_slots);
        free(r.done);
        return evq__err(EVQ_ENOMEM, "relay: out of memory");
    }
    for (size_t i = 0; i < window; i++)
        r.free_slots[r.n_free++] = (int)(window - 1 - i);
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.reported, NULL);

    evq__reconnect policy;
    evq__queue_reconnect(from, &policy);
    int failures = 0, status = 0;
    char status_why[256] = "";
    int64_t down_since = 0;
    evq_msg *msgs[RELAY_TAKE];
    for (;;) {
        settle_reported(&r);
        keep_leases(&r);
        /* A drain stops taking at the first failed send: what failed
         * stays in the source, and the call says so. */
        if (opts->once && r.first_failure)
            break;
        size_t room = window - r.out;
        if (room == 0) {
            wait_reported(&r, 100);
            continue;
        }
        size_t take = room < RELAY_TAKE ? room : RELAY_TAKE;
        /* With events out, only what is there now: their reports are
         * settled promptly. */
        int wait_ms = r.out ? 0 : opts->once ? 100 : 250;
        int n = evq_dequeue_batch(from, msgs, take, wait_ms);
        if (n > 0) {
            r.st.taken += (uint64_t)n;
            if (down_since) {
                rlog(&r, EVQ_LOG_INFO,
                     "relay: the source works again after %.1f s",
                     (double)(evq__now_mono_ns() - down_since) / 1e9);
                down_since = 0;
            }
            failures = 0;
            send_taken(&r, msgs, n);
            continue;
        }
        if (n == EVQ_ETIMEDOUT) {
            if (r.out) {
                wait_reported(&r, 50);
                continue;
            }
            if (opts->once)
                break;
            continue;
        }
        if (n == EVQ_ECLOSED)
            break; /* interrupted: stop taking */
        if (source_away(n) && !opts->once) {
            if (!down_since) {
                down_since = evq__now_mono_ns();
                rlog(&r, EVQ_LOG_ERROR, "relay: the source fails: %s: %s",
                     evq_strerror(n), evq_errmsg());
            }
            if (r.out)
                wait_reported(&r, 50);
            else
                evq__sleep_ms(evq__reconnect_pause_ms(&policy, ++failures));
            continue;
        }
        status = n;
        snprintf(status_why, sizeof status_why, "%s", evq_errmsg());
        break;
    }
    /* Everything out gets its report, and is settled; leases are kept
     * while the destination takes its time. */
    while (evq_flush(to, 100) == EVQ_ETIMEDOUT) {
        settle_reported(&r);
        keep_leases(&r);
    }
    while (r.out) {
        settle_reported(&r);
        keep_leases(&r);
        if (r.out)
            wait_reported(&r, 100);
    }
    pthread_cond_destroy(&r.reported);
    pthread_mutex_destroy(&r.mu);
    free(r.slots);
    free(r.free_slots);
    free(r.done);
    if (stats)
        evq__sized_out(stats, stats_size, &r.st, sizeof r.st);
    if (status)
        return evq__err(status, "relay: taking from the source failed: %s",
                        status_why);
    if (opts->once && r.first_failure)
        return evq__err(r.first_failure,
                        "relay: %llu event%s could not be sent (%s); they "
                        "stay in the source",
                        (unsigned long long)r.st.failed,
                        r.st.failed == 1 ? "" : "s", r.first_why);
    return 0;
}
