/*
 * schedule.c - periodic events: a scheduler enqueues a copy of each of its
 * templates at every time its cron expression names.
 *
 * Each slot is enqueued once however many schedulers run: the copy for a
 * slot has a unique key made of the schedule (its expression, zone, type,
 * source, subject and data) and the slot's time, so the first scheduler to
 * enqueue it wins and the others get EVQ_EEXIST, where the queue's backend
 * holds unique keys for every producer (see the unique events in queue.c).  The
 * copy's id is made the same way, and its time is the slot's.
 *
 * One thread per scheduler sleeps until the earliest next slot (a second
 * at most, so a changed wall clock is noticed).  A slot whose enqueue
 * fails is tried again every second until the schedule's following slot
 * is due; then it is counted missed (at once when the failure is one a
 * retry cannot mend: EVQ_EINVAL, EVQ_ENOTSUP, EVQ_ETOOBIG).  Slots that passed
 * while no scheduler ran are skipped, or, within catch_up_ms before a start,
 * enqueued late at once.
 */
#include "cron.h"
#include "internal.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RETRY_MS   1000
#define KEY_TTL_MS (3600 * 1000) /* beyond catch_up_ms */

typedef struct schedule {
    evq__cron cron;
    evq__tz *tz;
    evq_event *tmpl;
    char key[17];     /* the schedule's hash, in hex */
    int64_t next;     /* its next slot, unix ms; INT64_MAX: none */
    int64_t retry_at; /* when the slot's enqueue failed: the next try */
} schedule;

struct evq_scheduler {
    evq_queue *q;
    evq_scheduler_opts o;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    pthread_t tid;
    bool running, stop;
    schedule *s;
    size_t n, cap;
    atomic_uint_fast64_t enqueued, taken, missed;
};

void evq_scheduler_opts_init_sized(evq_scheduler_opts *o, size_t size)
{
    const evq_scheduler_opts d = {.catch_up_ms = 0};
    evq__sized_init(o, size, &d, sizeof d);
}

int evq_scheduler_new(evq_scheduler **out, evq_queue *q,
                      const evq_scheduler_opts *o)
{
    if (!out || !q)
        return evq__err(EVQ_EINVAL, "evq_scheduler_new: %s is NULL",
                        out ? "q" : "out");
    *out = NULL;
    evq_scheduler_opts def;
    evq_scheduler_opts_init(&def);
    if (o && evq__sized_in(&def, sizeof def, o, "evq_scheduler_opts") != 0)
        return EVQ_EINVAL;
    o = &def;
    if (o->catch_up_ms < 0 || o->catch_up_ms > EVQ_SCHEDULE_MAX_CATCH_UP_MS)
        return evq__err(
            EVQ_EINVAL, "catch_up_ms %lld is not from 0 to %lld (7 days)",
            (long long)o->catch_up_ms, (long long)EVQ_SCHEDULE_MAX_CATCH_UP_MS);
    evq_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return evq__err(EVQ_ENOMEM, "out of memory");
    s->q = q;
    s->o = *o;
    pthread_mutex_init(&s->mu, NULL);
    evq__cond_init_mono(&s->cv);
    *out = s;
    return 0;
}

static uint64_t fnv(uint64_t h, const char *s)
{
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (h ^ 0xff) * 1099511628211ull; /* a separator */
}

int evq_schedule_add(evq_scheduler *s, const char *cron, const char *tz,
                     const evq_event *tmpl)
{
    if (!s || !tmpl)
        return evq__err(EVQ_EINVAL, "evq_schedule_add: %s is NULL",
                        s ? "the template event" : "the scheduler");
    evq__cron c;
    int rc = evq__cron_parse(cron, &c);
    if (rc)
        return rc;
    evq__tz *zone = NULL;
    if ((rc = evq__tz_open(tz, &zone)) != 0)
        return rc;
    int64_t probe;
    if ((rc = evq__cron_next(&c, zone, evq__now_real_ns() / 1000000, &probe)) !=
        0) {
        evq__tz_free(zone);
        return rc;
    }
    evq_event *copy = evq_event_dup(tmpl);
    if (!copy) {
        evq__tz_free(zone);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    uint64_t h = 1469598103934665603ull;
    h = fnv(h, cron);
    h = fnv(h, tz ? tz : "UTC");
    h = fnv(h, evq_event_type(tmpl));
    h = fnv(h, evq_event_source(tmpl));
    h = fnv(h, evq_event_subject(tmpl));
    char *data =
        evq_event_data(tmpl)
            ? json_dumps(evq_event_data(tmpl),
                         JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY)
            : NULL;
    h = fnv(h, data);
    free(data);
    pthread_mutex_lock(&s->mu);
    if (s->running) {
        rc = evq__err(EVQ_ESTATE, "evq_schedule_add: the scheduler is "
                                  "running (add schedules before "
                                  "evq_scheduler_start)");
    } else if ((rc = evq__grow(&s->s, &s->cap, s->n, sizeof *s->s)) == 0) {
        schedule *e = &s->s[s->n++];
        *e = (schedule){.cron = c, .tz = zone, .tmpl = copy, .next = INT64_MAX};
        snprintf(e->key, sizeof e->key, "%016" PRIx64, h);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        evq_event_free(copy);
        evq__tz_free(zone);
    }
    return rc;
}

/* The slot after `after` (INT64_MAX: none, which cannot happen for an
 * expression evq_schedule_add took, short of year 9999). */
static int64_t slot_after(const schedule *e, int64_t after)
{
    int64_t t;
    return evq__cron_next(&e->cron, e->tz, after, &t) ? INT64_MAX : t;
}

/* Enqueues the copy of e's template for `slot`: 0 (this scheduler's),
 * EVQ_EEXIST (another's), or the failure. */
static int fire(evq_scheduler *s, const schedule *e, int64_t slot)
{
    evq_event *ev = evq_event_dup(e->tmpl);
    if (!ev)
        return evq__err(EVQ_ENOMEM, "out of memory");
    char id[64], key[96], ttl[24], when[40];
    snprintf(id, sizeof id, "evq-schedule-%s-%lld", e->key, (long long)slot);
    snprintf(key, sizeof key, "evq-schedule:%s:%lld", e->key, (long long)slot);
    snprintf(ttl, sizeof ttl, "%lld",
             (long long)(s->o.catch_up_ms + KEY_TTL_MS));
    time_t secs = (time_t)(slot / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int rc = evq_event_set_attr(ev, "id", id);
    if (!rc)
        rc = evq_event_set_attr(ev, "time", when);
    if (!rc)
        rc = evq_event_set_attr(ev, "evquniquekey", key);
    if (!rc)
        rc = evq_event_set_attr(ev, "evquniquettl", ttl);
    if (!rc) /* a slot is a time: it stays taken for the TTL */
        rc = evq_event_set_attr(ev, "evquniqueuntil", "ttl");
    if (!rc)
        rc = evq__enqueue_unique(s->q, ev);
    evq_event_free(ev);
    return rc;
}

/* Brings e up to `now`: enqueues its due slot, moves on to the next. */
static void run_due(evq_scheduler *s, schedule *e, int64_t now)
{
    while (e->next <= now && e->retry_at <= now) {
        int64_t slot = e->next, following = slot_after(e, slot);
        pthread_mutex_unlock(&s->mu);
        int rc = fire(s, e, slot);
        pthread_mutex_lock(&s->mu);
        bool lasting = rc == EVQ_EINVAL || rc == EVQ_ENOTSUP ||
                       rc == EVQ_ETOOBIG; /* trying again changes nothing */
        if (rc == 0 || rc == EVQ_EEXIST) {
            atomic_fetch_add(rc ? &s->taken : &s->enqueued, 1);
        } else if (following > now && !s->stop && !lasting) {
            e->retry_at = now + RETRY_MS; /* this slot again, shortly */
            return;
        } else {
            atomic_fetch_add(&s->missed, 1); /* its time is over */
        }
        e->retry_at = 0;
        e->next = following;
        if (s->stop)
            return;
    }
}

static void *scheduler_main(void *arg)
{
    evq_scheduler *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        int64_t now = evq__now_real_ns() / 1000000, wake = now + RETRY_MS;
        for (size_t i = 0; i < s->n && !s->stop; i++) {
            schedule *e = &s->s[i];
            run_due(s, e, now);
            int64_t at = e->retry_at > e->next ? e->retry_at : e->next;
            if (at < wake)
                wake = at;
        }
        now = evq__now_real_ns() / 1000000;
        if (s->stop || wake <= now)
            continue;
        struct timespec ts =
            evq__ts_from_ns(evq__now_mono_ns() + (wake - now) * 1000000);
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int evq_scheduler_start(evq_scheduler *s)
{
    if (!s)
        return evq__err(EVQ_EINVAL, "evq_scheduler_start: s is NULL");
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (s->running) {
        rc = evq__err(EVQ_ESTATE, "the scheduler is running already");
    } else if (s->n == 0) {
        rc = evq__err(EVQ_EINVAL, "the scheduler has no schedules "
                                  "(evq_schedule_add)");
    } else {
        int64_t from = evq__now_real_ns() / 1000000 - s->o.catch_up_ms;
        for (size_t i = 0; i < s->n; i++) {
            s->s[i].next = slot_after(&s->s[i], from);
            s->s[i].retry_at = 0;
        }
        s->stop = false;
        if (pthread_create(&s->tid, NULL, scheduler_main, s) != 0)
            rc = evq__err(EVQ_ENOMEM, "cannot start the scheduler's thread");
        else
            s->running = true;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int evq_scheduler_stop(evq_scheduler *s)
{
    if (!s)
        return evq__err(EVQ_EINVAL, "evq_scheduler_stop: s is NULL");
    pthread_mutex_lock(&s->mu);
    bool running = s->running;
    s->stop = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (!running)
        return 0;
    pthread_join(s->tid, NULL);
    pthread_mutex_lock(&s->mu);
    s->running = false;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void evq_scheduler_stats_sized(const evq_scheduler *s,
                               struct evq_scheduler_stats *user, size_t size)
{
    if (!s || !user)
        return;
    evq_scheduler *m = (evq_scheduler *)s;
    struct evq_scheduler_stats out = {
        .enqueued = atomic_load(&m->enqueued),
        .taken = atomic_load(&m->taken),
        .missed = atomic_load(&m->missed),
    };
    evq__sized_out(user, size, &out, sizeof out);
}

void evq_scheduler_free(evq_scheduler *s)
{
    if (!s)
        return;
    evq_scheduler_stop(s);
    for (size_t i = 0; i < s->n; i++) {
        evq_event_free(s->s[i].tmpl);
        evq__tz_free(s->s[i].tz);
    }
    free(s->s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
