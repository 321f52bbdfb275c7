/*
 * seen.c - ids remembered for a while, in process memory: the finished
 * events of an idempotent worker (dedup_window_ms) where the backend keeps
 * no shared record, memory://'s record, and the keys of unique events
 * where the backend keeps none (claimed for the process).
 *
 * Open addressing with linear probing.  Nothing is removed one by one: when
 * the table is half full it is rebuilt without the entries whose time has
 * passed, and doubled if that did not free enough.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct seen_ent {
    char *id; /* NULL: free slot */
    uint64_t hash;
    int64_t until_ns; /* monotonic */
} seen_ent;

struct evq__seen {
    pthread_mutex_t mu;
    seen_ent *t;
    size_t cap, n; /* cap a power of two */
};

static uint64_t hash_id(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

evq__seen *evq__seen_new(void)
{
    evq__seen *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->cap = 64;
    if (!(s->t = calloc(s->cap, sizeof *s->t))) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

void evq__seen_free(evq__seen *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->cap; i++)
        free(s->t[i].id);
    free(s->t);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* The slot of id, or the free slot where it would go. */
static seen_ent *slot(seen_ent *t, size_t cap, const char *id, uint64_t h)
{
    for (size_t i = h & (cap - 1);; i = (i + 1) & (cap - 1))
        if (!t[i].id || (t[i].hash == h && strcmp(t[i].id, id) == 0))
            return &t[i];
}

/* Rebuilds the table without what has expired, at a size with room. */
static int rebuild(evq__seen *s, int64_t now)
{
    size_t live = 0;
    for (size_t i = 0; i < s->cap; i++)
        if (s->t[i].id && s->t[i].until_ns > now)
            live++;
    size_t cap = s->cap;
    while ((live + 1) * 2 > cap)
        cap *= 2;
    seen_ent *t = calloc(cap, sizeof *t);
    if (!t)
        return evq__err(EVQ_ENOMEM, "out of memory");
    for (size_t i = 0; i < s->cap; i++) {
        seen_ent *e = &s->t[i];
        if (!e->id)
            continue;
        if (e->until_ns > now)
            *slot(t, cap, e->id, e->hash) = *e;
        else
            free(e->id);
    }
    free(s->t);
    s->t = t;
    s->cap = cap;
    s->n = live;
    return 0;
}

bool evq__seen_has(evq__seen *s, const char *id)
{
    uint64_t h = hash_id(id);
    pthread_mutex_lock(&s->mu);
    seen_ent *e = slot(s->t, s->cap, id, h);
    bool yes = e->id && e->until_ns > evq__now_mono_ns();
    pthread_mutex_unlock(&s->mu);
    return yes;
}

int evq__seen_put(evq__seen *s, const char *id, int64_t ttl_ms)
{
    uint64_t h = hash_id(id);
    int64_t now = evq__now_mono_ns();
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    if ((s->n + 1) * 2 > s->cap)
        rc = rebuild(s, now);
    if (rc == 0) {
        seen_ent *e = slot(s->t, s->cap, id, h);
        if (!e->id) {
            if (!(e->id = evq__strdup(id)))
                rc = evq__err(EVQ_ENOMEM, "out of memory");
            else
                s->n++;
        }
        e->hash = h;
        e->until_ns = now + ttl_ms * 1000000;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int evq__seen_claim(evq__seen *s, const char *id, int64_t ttl_ms)
{
    uint64_t h = hash_id(id);
    int64_t now = evq__now_mono_ns();
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    seen_ent *e = slot(s->t, s->cap, id, h);
    if (e->id && e->until_ns > now)
        goto out; /* taken */
    if (!e->id && (s->n + 1) * 2 > s->cap) {
        if ((rc = rebuild(s, now)) != 0)
            goto out;
        e = slot(s->t, s->cap, id, h);
    }
    if (!e->id) {
        if (!(e->id = evq__strdup(id))) {
            rc = evq__err(EVQ_ENOMEM, "out of memory");
            goto out;
        }
        s->n++;
    }
    e->hash = h;
    e->until_ns = now + ttl_ms * 1000000;
    rc = 1;
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* An entry is not taken out of its probe chain: it expires at once, and
 * the next rebuild leaves it behind. */
void evq__seen_drop(evq__seen *s, const char *id)
{
    uint64_t h = hash_id(id);
    pthread_mutex_lock(&s->mu);
    seen_ent *e = slot(s->t, s->cap, id, h);
    if (e->id)
        e->until_ns = 0;
    pthread_mutex_unlock(&s->mu);
}
