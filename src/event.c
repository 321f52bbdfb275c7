/*
 * event.c - CloudEvents 1.0 events: attributes, payload, UUIDv7 ids.
 */
#include "internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

char evq__default_source[] = "evq";

/* ---- UUIDv7 (RFC 9562) ------------------------------------------------- *
 * 48 bits of Unix milliseconds, then 12 bits (rand_a) used as a counter so
 * ids made in one process increase strictly (RFC 9562 section 6.2, method 1:
 * when the counter overflows the timestamp moves ahead by a millisecond), then
 * 62 random bits that keep ids unique across processes.  The random bits come
 * from a per-thread xoshiro256** generator seeded by getrandom(); a fork bumps
 * a generation number so a child never repeats its parent's sequence. */

static _Atomic uint64_t uuid_last; /* (ms << 12) | counter */
static atomic_uint fork_gen = 1;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    atomic_fetch_add(&fork_gen, 1);
}

static void install_atfork(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

static _Thread_local struct {
    uint64_t s[4];
    unsigned gen;
} rng EVQ__TLS;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    unsigned gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
    if (rng.gen != gen) {
        pthread_once(&atfork_once, install_atfork);
        gen = atomic_load(&fork_gen);
        if (getrandom(rng.s, sizeof rng.s, 0) != (ssize_t)sizeof rng.s) {
            /* No entropy source: mix the clock, the thread and the pid. */
            uint64_t seed = (uint64_t)evq__now_real_ns() ^
                            (uint64_t)(uintptr_t)&rng ^
                            ((uint64_t)getpid() << 32);
            for (int i = 0; i < 4; i++) {
                seed += 0x9e3779b97f4a7c15ull;
                uint64_t z = seed;
                z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
                z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
                rng.s[i] = z ^ (z >> 31);
            }
        }
        rng.gen = gen;
    }
    uint64_t *s = rng.s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

void evq__uuid7(char *buf)
{
    evq__uuid7_at(buf, evq__now_real_ns());
}

/* "00".."ff", so formatting writes two characters per byte. */
static char hex_pairs[256][2];
static pthread_once_t hex_once = PTHREAD_ONCE_INIT;

static void hex_init(void)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 256; i++) {
        hex_pairs[i][0] = hex[i >> 4];
        hex_pairs[i][1] = hex[i & 15];
    }
}

void evq__uuid7_at(char *buf, int64_t now_ns)
{
    pthread_once(&hex_once, hex_init);
    uint64_t now = (uint64_t)(now_ns / 1000000) << 12;
    uint64_t last = atomic_load_explicit(&uuid_last, memory_order_relaxed);
    uint64_t next;
    do {
        next = now > last ? now : last + 1;
    } while (!atomic_compare_exchange_weak_explicit(
        &uuid_last, &last, next, memory_order_relaxed, memory_order_relaxed));

    uint64_t r = rng_next();
    unsigned char b[16];
    uint64_t ms = next >> 12;
    unsigned seq = (unsigned)(next & 0xfff);
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | (seq >> 8));
    b[7] = (unsigned char)seq;
    b[8] = (unsigned char)(0x80 | ((r >> 56) & 0x3f));
    for (int i = 9; i < 16; i++)
        b[i] = (unsigned char)(r >> (8 * (15 - i)));
    char *o = buf;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        memcpy(o, hex_pairs[b[i]], 2);
        o += 2;
    }
    *o = '\0';
}

/* ---- attribute checks ---------------------------------------------------- */

bool evq__ext_name_valid(const char *name)
{
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
            return false;
    }
    return n >= 1 && n <= EVQ_MAX_ATTR_NAME && strcmp(name, "data") != 0;
}

static int check_value(const char *name, const char *value, bool nonempty)
{
    size_t len = strlen(value);
    if (nonempty && len == 0)
        return evq__err(EVQ_EINVAL, "attribute '%s' must not be empty", name);
    if (len > EVQ_MAX_ATTR_BYTES)
        return evq__err(EVQ_EINVAL,
                        "attribute '%s' is %zu bytes, more than the %d allowed",
                        name, len, EVQ_MAX_ATTR_BYTES);
    if (!evq__utf8_valid(value, len))
        return evq__err(EVQ_EINVAL, "attribute '%s' is not valid UTF-8", name);
    return 0;
}

/* Points *field at a copy of value: in `buf` when it fits, else on the heap;
 * frees what *field held on the heap before. */
static int set_inline(char **field, char *buf, size_t cap, const char *value)
{
    size_t n = strlen(value);
    char *old = *field != buf ? *field : NULL;
    if (n < cap) {
        memmove(buf, value, n + 1);
        *field = buf;
    } else {
        char *p = evq__strndup(value, n);
        if (!p)
            return evq__err(EVQ_ENOMEM, "out of memory");
        *field = p;
    }
    if (old != *field)
        free(old);
    return 0;
}

/* ---- lifecycle ----------------------------------------------------------- */

/* Event structs are recycled through a small per-thread cache: a busy
 * producer frees events (memory:// hands finished ones back to it) about as
 * fast as it makes them, and the cache spares both trips through malloc.
 * The cache is emptied when its thread exits. */
#define EVENT_CACHE 256

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static _Thread_local struct {
    evq_event *slot[EVENT_CACHE];
    int n;
    bool registered;
} cache EVQ__TLS;

static void cache_drain(void *unused)
{
    (void)unused;
    while (cache.n > 0)
        free(cache.slot[--cache.n]);
}

static void cache_key_create(void)
{
    pthread_key_create(&cache_key, cache_drain);
}

/* Process exit does not run thread-key destructors for the main thread. */
__attribute__((destructor)) static void cache_atexit(void)
{
    cache_drain(NULL);
}

static evq_event *event_mem_get(void)
{
    if (cache.n > 0)
        return cache.slot[--cache.n];
    return malloc(sizeof(evq_event));
}

static void event_mem_put(evq_event *ev)
{
    if (cache.n == EVENT_CACHE) {
        free(ev);
        return;
    }
    if (!cache.registered) {
        /* Any non-NULL value makes the key's destructor run at exit. */
        pthread_once(&cache_once, cache_key_create);
        pthread_setspecific(cache_key, &cache);
        cache.registered = true;
    }
    cache.slot[cache.n++] = ev;
}

evq_event *evq__event_alloc(void)
{
    evq_event *ev = event_mem_get();
    if (!ev)
        return NULL;
    /* Everything but the inline buffers, which are written before use. */
    memset(ev, 0, offsetof(evq_event, idbuf));
    memset(&ev->subject, 0,
           offsetof(evq_event, time_str) - offsetof(evq_event, subject));
    atomic_init(&ev->refs, 1);
    atomic_init(&ev->attempt, 0);
    ev->source = evq__default_source;
    return ev;
}

evq_event *evq_event_new(const char *type, json_t *data)
{
    evq_event *ev;

    if (!type) {
        json_decref(data);
        evq__err(EVQ_EINVAL, "event type is NULL");
        return NULL;
    }
    if (check_value("type", type, true) != 0) {
        json_decref(data);
        return NULL;
    }
    ev = evq__event_alloc();
    if (!ev || set_inline(&ev->type, ev->typebuf, sizeof ev->typebuf, type)) {
        if (ev)
            event_mem_put(ev);
        json_decref(data);
        evq__err(EVQ_ENOMEM, "out of memory creating an event");
        return NULL;
    }
    ev->time_ns = evq__now_real_ns(); /* one clock read for id and time */
    evq__uuid7_at(ev->idbuf, ev->time_ns);
    ev->id = ev->idbuf;
    ev->has_time = true;
    atomic_init(&ev->time_state, 0); /* formatted on first use */
    ev->data = data;
    return ev;
}

static void event_destroy(evq_event *ev)
{
    if (ev->type != ev->typebuf)
        free(ev->type);
    if (ev->id != ev->idbuf)
        free(ev->id);
    if (ev->source != evq__default_source)
        free(ev->source);
    free(ev->subject);
    free(ev->datacontenttype);
    free(ev->dataschema);
    json_decref(ev->data);
    free(ev->bin);
    for (size_t i = 0; i < ev->n_ext; i++)
        free(ev->ext[i].value);
    free(ev->ext);
    event_mem_put(ev);
}

void evq_event_free(evq_event *ev)
{
    if (ev &&
        atomic_fetch_sub_explicit(&ev->refs, 1, memory_order_acq_rel) == 1)
        event_destroy(ev);
}

evq_event *evq__event_ref(const evq_event *cev)
{
    evq_event *ev = (evq_event *)cev;
    atomic_fetch_add_explicit(&ev->refs, 1, memory_order_relaxed);
    return ev;
}

static int dup_str(char **dst, const char *src)
{
    if (!src) {
        *dst = NULL;
        return 0;
    }
    *dst = evq__strdup(src);
    return *dst ? 0 : -1;
}

evq_event *evq_event_dup(const evq_event *src)
{
    evq_event *ev;

    if (!src) {
        evq__err(EVQ_EINVAL, "event is NULL");
        return NULL;
    }
    ev = evq__event_alloc();
    if (!ev)
        goto oom;
    if (set_inline(&ev->id, ev->idbuf, sizeof ev->idbuf, src->id))
        goto oom;
    if (src->source != evq__default_source && dup_str(&ev->source, src->source))
        goto oom;
    if (set_inline(&ev->type, ev->typebuf, sizeof ev->typebuf, src->type) ||
        dup_str(&ev->subject, src->subject) ||
        dup_str(&ev->datacontenttype, src->datacontenttype) ||
        dup_str(&ev->dataschema, src->dataschema))
        goto oom;
    ev->time_ns = src->time_ns;
    ev->has_time = src->has_time;
    atomic_store(&ev->time_state, 0);
    if (src->data && !(ev->data = json_deep_copy(src->data)))
        goto oom;
    ev->is_binary = src->is_binary;
    if (src->is_binary) {
        ev->bin = malloc(src->bin_len ? src->bin_len : 1);
        if (!ev->bin)
            goto oom;
        memcpy(ev->bin, src->bin, src->bin_len);
        ev->bin_len = src->bin_len;
    }
    for (size_t i = 0; i < src->n_ext; i++) {
        if (evq__event_set_ext(ev, src->ext[i].name, src->ext[i].value,
                               src->ext[i].kind))
            goto oom;
    }
    return ev;
oom:
    evq_event_free(ev);
    evq__err(EVQ_ENOMEM, "out of memory copying an event");
    return NULL;
}

/* ---- accessors ----------------------------------------------------------- */

const char *evq_event_type(const evq_event *ev)
{
    return ev ? ev->type : NULL;
}

const char *evq_event_id(const evq_event *ev)
{
    return ev ? ev->id : NULL;
}

const char *evq_event_source(const evq_event *ev)
{
    return ev ? ev->source : NULL;
}

const char *evq_event_subject(const evq_event *ev)
{
    return ev ? ev->subject : NULL;
}

const char *evq_event_datacontenttype(const evq_event *ev)
{
    if (!ev)
        return NULL;
    if (ev->datacontenttype)
        return ev->datacontenttype;
    return ev->data && !ev->is_binary ? "application/json" : NULL;
}

int64_t evq_event_time_ns(const evq_event *ev)
{
    return ev && ev->has_time ? ev->time_ns : 0;
}

json_t *evq_event_data(const evq_event *ev)
{
    return ev && !ev->is_binary ? ev->data : NULL;
}

const void *evq_event_binary(const evq_event *ev, size_t *len)
{
    if (!ev || !ev->is_binary) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = ev->bin_len;
    return ev->bin ? (const void *)ev->bin : (const void *)"";
}

int evq_event_attempt(const evq_event *ev)
{
    return ev ? atomic_load_explicit(&((evq_event *)ev)->attempt,
                                     memory_order_relaxed)
              : 0;
}

size_t evq_event_ext_count(const evq_event *ev)
{
    return ev ? ev->n_ext : 0;
}

int evq_event_ext_at(const evq_event *ev, size_t i, const char **name,
                     const char **value)
{
    if (!ev)
        return evq__err(EVQ_EINVAL, "event is NULL");
    if (i >= ev->n_ext)
        return evq__err(EVQ_ENOENT, "no extension attribute at index %zu", i);
    if (name)
        *name = ev->ext[i].name;
    if (value)
        *value = ev->ext[i].value;
    return 0;
}

static evq__ext *find_ext(const evq_event *ev, const char *name)
{
    for (size_t i = 0; i < ev->n_ext; i++) {
        if (strcmp(ev->ext[i].name, name) == 0)
            return &ev->ext[i];
    }
    return NULL;
}

/* The time attribute is kept as nanoseconds; its text is made on demand.
 * Formatting into the event from a const accessor is a benign cache fill
 * done once; the result does not depend on which thread does it. */
static const char *time_text(const evq_event *cev)
{
    evq_event *ev = (evq_event *)cev;
    int state = 0;

    if (!ev->has_time)
        return NULL;
    /* 0: not formatted, 1: a thread is formatting, 2: ready. */
    if (atomic_compare_exchange_strong(&ev->time_state, &state, 1)) {
        evq__time_format(ev->time_ns, ev->time_str);
        atomic_store_explicit(&ev->time_state, 2, memory_order_release);
    } else {
        while (atomic_load_explicit(&ev->time_state, memory_order_acquire) != 2)
            ;
    }
    return ev->time_str;
}

const char *evq_event_attr(const evq_event *ev, const char *name)
{
    evq__ext *x;

    if (!ev || !name)
        return NULL;
    if (strcmp(name, "specversion") == 0)
        return "1.0";
    if (strcmp(name, "id") == 0)
        return ev->id;
    if (strcmp(name, "source") == 0)
        return ev->source;
    if (strcmp(name, "type") == 0)
        return ev->type;
    if (strcmp(name, "subject") == 0)
        return ev->subject;
    if (strcmp(name, "time") == 0)
        return time_text(ev);
    if (strcmp(name, "datacontenttype") == 0)
        return evq_event_datacontenttype(ev);
    if (strcmp(name, "dataschema") == 0)
        return ev->dataschema;
    x = find_ext(ev, name);
    return x ? x->value : NULL;
}

/* ---- mutation ------------------------------------------------------------ */

static int check_mutable(const evq_event *ev)
{
    if (!ev)
        return evq__err(EVQ_EINVAL, "event is NULL");
    if (atomic_load_explicit(&((evq_event *)ev)->refs, memory_order_acquire) >
        1)
        return evq__err(EVQ_EBUSY,
                        "event %s is shared with a queue; modify a "
                        "copy made with evq_event_dup",
                        ev->id ? ev->id : "");
    return 0;
}

static int set_str(char **field, const char *value)
{
    char *v = NULL;
    if (value && !(v = evq__strdup(value)))
        return evq__err(EVQ_ENOMEM, "out of memory");
    free(*field);
    *field = v;
    return 0;
}

int evq__event_set_ext(evq_event *ev, const char *name, const char *value,
                       enum evq__ext_kind kind)
{
    evq__ext *x;
    int rc;

    if (!evq__ext_name_valid(name))
        return evq__err(EVQ_EINVAL,
                        "attribute name '%.40s' is invalid: CloudEvents names "
                        "are 1 to %d characters of a-z and 0-9",
                        name, EVQ_MAX_ATTR_NAME);
    x = find_ext(ev, name);
    if (!value) {
        if (x) {
            free(x->value);
            size_t i = (size_t)(x - ev->ext);
            memmove(x, x + 1, (ev->n_ext - i - 1) * sizeof *x);
            ev->n_ext--;
        }
        return 0;
    }
    if ((rc = check_value(name, value, false)) != 0)
        return rc;
    if (!x) {
        if ((rc = evq__grow(&ev->ext, &ev->cap_ext, ev->n_ext,
                            sizeof *ev->ext)) != 0)
            return rc;
        x = &ev->ext[ev->n_ext];
        memset(x, 0, sizeof *x);
        strcpy(x->name, name);
        if (set_str(&x->value, value))
            return EVQ_ENOMEM;
        ev->n_ext++;
    } else if (set_str(&x->value, value)) {
        return EVQ_ENOMEM;
    }
    x->kind = kind;
    return 0;
}

int evq_event_set_attr(evq_event *ev, const char *name, const char *value)
{
    int rc;

    if ((rc = check_mutable(ev)) != 0)
        return rc;
    if (!name)
        return evq__err(EVQ_EINVAL, "attribute name is NULL");
    if (strcmp(name, "specversion") == 0) {
        if (!value || strcmp(value, "1.0") != 0)
            return evq__err(EVQ_EINVAL, "specversion must be \"1.0\"");
        return 0;
    }
    bool required = strcmp(name, "id") == 0 || strcmp(name, "source") == 0 ||
                    strcmp(name, "type") == 0;
    if (required && !value)
        return evq__err(EVQ_EINVAL, "attribute '%s' is required", name);
    if (value && (rc = check_value(name, value, required)) != 0)
        return rc;
    if (strcmp(name, "id") == 0)
        return set_inline(&ev->id, ev->idbuf, sizeof ev->idbuf, value);
    if (strcmp(name, "source") == 0) {
        char *v = evq__strdup(value);
        if (!v)
            return evq__err(EVQ_ENOMEM, "out of memory");
        if (ev->source != evq__default_source)
            free(ev->source);
        ev->source = v;
        return 0;
    }
    if (strcmp(name, "type") == 0)
        return set_inline(&ev->type, ev->typebuf, sizeof ev->typebuf, value);
    if (strcmp(name, "subject") == 0)
        return set_str(&ev->subject, value);
    if (strcmp(name, "datacontenttype") == 0)
        return set_str(&ev->datacontenttype, value);
    if (strcmp(name, "dataschema") == 0)
        return set_str(&ev->dataschema, value);
    if (strcmp(name, "time") == 0) {
        int64_t ns;
        if (!value) {
            ev->has_time = false;
            return 0;
        }
        if ((rc = evq__time_parse(value, &ns)) != 0)
            return rc;
        ev->time_ns = ns;
        ev->has_time = true;
        atomic_store(&ev->time_state, 0);
        return 0;
    }
    return evq__event_set_ext(ev, name, value, EVQ__EXT_STRING);
}

int evq_event_set_data(evq_event *ev, json_t *data)
{
    int rc = check_mutable(ev);
    if (rc) {
        json_decref(data);
        return rc;
    }
    json_decref(ev->data);
    free(ev->bin);
    ev->bin = NULL;
    ev->bin_len = 0;
    ev->is_binary = false;
    ev->data = data;
    return 0;
}

int evq_event_set_binary(evq_event *ev, const void *bytes, size_t len,
                         const char *content_type)
{
    unsigned char *copy;
    int rc = check_mutable(ev);

    if (rc)
        return rc;
    if (!bytes && len)
        return evq__err(EVQ_EINVAL, "binary payload is NULL");
    if (content_type &&
        (rc = check_value("datacontenttype", content_type, false)) != 0)
        return rc;
    copy = malloc(len ? len : 1);
    if (!copy)
        return evq__err(EVQ_ENOMEM, "out of memory");
    if (len)
        memcpy(copy, bytes, len);
    if (content_type && set_str(&ev->datacontenttype, content_type)) {
        free(copy);
        return EVQ_ENOMEM;
    }
    json_decref(ev->data);
    ev->data = NULL;
    free(ev->bin);
    ev->bin = copy;
    ev->bin_len = len;
    ev->is_binary = true;
    return 0;
}

int evq__event_validate(const evq_event *ev)
{
    if (!ev->id)
        return evq__err(EVQ_EDECODE, "event has no 'id'");
    if (!ev->type)
        return evq__err(EVQ_EDECODE, "event has no 'type'");
    if (!ev->source || ev->source == evq__default_source)
        return evq__err(EVQ_EDECODE, "event has no 'source'");
    return 0;
}

int evq__event_priority(const evq_event *ev)
{
    const char *p = evq_event_attr(ev, "evqpriority");
    if (!p)
        return 0;
    if (p[0] < '0' || p[0] > '9' || p[1])
        return evq__err(EVQ_EINVAL,
                        "event %s: evqpriority '%.40s' is not a level from 0 "
                        "to 9",
                        evq_event_id(ev), p);
    return p[0] - '0';
}
