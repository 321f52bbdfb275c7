/*
 * internal.h - what the core's modules and the backends share.  Nothing here
 * is installed; non-static names start with evq__.
 */
#ifndef EVQ_INTERNAL_H
#define EVQ_INTERNAL_H

#include "evq.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EVQ__UNUSED(x)    ((void)(x))
#define EVQ__PRINTF(a, b) __attribute__((format(printf, a, b)))
/* Thread-locals on hot paths: initial-exec avoids a __tls_get_addr call per
 * access from the shared library. */
#define EVQ__TLS __attribute__((tls_model("initial-exec")))

/* ---- errors (error.c) ---------------------------------------------------- */

/* Records a detail message for the calling thread and returns `code`, so
 * failures read `return evq__err(EVQ_EINVAL, "...", ...);`. */
int evq__err(int code, const char *fmt, ...) EVQ__PRINTF(2, 3);
/* Like evq__err but prefixes the current message: "context: old detail". */
int evq__err_prefix(int code, const char *fmt, ...) EVQ__PRINTF(2, 3);

/* ---- JSON text (json_parse.cpp) ------------------------------------------ */

/* Parses JSON text into a new jansson tree, accepting and refusing exactly
 * what json_loadb(text, len, JSON_REJECT_DUPLICATES, ...) does (with `any`:
 * and JSON_DECODE_ANY), several times faster (simdjson).  NULL on failure,
 * with why in err[0..errcap).  Any thread. */
json_t *evq__json_parse(const void *text, size_t len, bool any, char *err,
                        size_t errcap);
/* What the library parses JSON text with: evq__json_parse, and what that
 * refuses json_loadb again, which has the last word and fills *jerr (the
 * line and column of the error).  JSON_REJECT_DUPLICATES, and with `any`
 * JSON_DECODE_ANY. */
json_t *evq__json_load(const void *text, size_t len, bool any,
                       json_error_t *jerr);

/* ---- small helpers (util.c) ---------------------------------------------- */

int64_t evq__now_mono_ns(void);
/* A scheme no backend of this build serves (queue.c): EVQ_ENOTSUP saying
 * how to build it when it was left out, else EVQ_EINVAL naming the
 * schemes this build has. */
int evq__scheme_unknown(const char *scheme);
int64_t evq__now_real_ns(void);
/* Monotonic deadline for a timeout in ms (negative, or above 1e12 ms, about
 * 31 years: INT64_MAX, no limit). */
int64_t evq__deadline_ns(int64_t timeout_ms);

/* The sized structs of the ABI (evq.h, "The ABI").  evq__sized_in copies
 * the program's options `src` (its first member the size_t `size`) over
 * `dst` (the library's struct of dst_size bytes, holding the defaults):
 * EVQ_EINVAL naming `what` when the size is 0 or above dst_size.
 * evq__sized_out copies the library's `src` (src_size bytes) into the
 * program's `dst` of dst_size bytes, zeroing what the library does not
 * know. */
int evq__sized_in(void *dst, size_t dst_size, const void *src,
                  const char *what);
void evq__sized_out(void *dst, size_t dst_size, const void *src,
                    size_t src_size);
/* An _init_sized: the library's `defaults` (src_size bytes) into the
 * program's options `dst` of `size` bytes (evq__sized_out), and `size`
 * into their first member; nothing when dst is NULL or size too small. */
void evq__sized_init(void *dst, size_t size, const void *defaults,
                     size_t src_size);
/* Absolute CLOCK_MONOTONIC timespec for pthread_cond_timedwait. */
struct timespec evq__ts_from_ns(int64_t ns);

/* A cheap monotonic tick counter for timing short intervals (the TSC where
 * it is invariant, else nanoseconds); evq__ticks_init must have run once
 * (it may calibrate for a few milliseconds).  Multiply tick differences by
 * evq__ns_per_tick() for nanoseconds. */
void evq__ticks_init(void);
uint64_t evq__ticks(void);
double evq__ns_per_tick(void);

char *evq__strdup(const char *s);
/* A condition variable whose timed waits take CLOCK_MONOTONIC deadlines. */
void evq__cond_init_mono(pthread_cond_t *cv);
char *evq__strndup(const char *s, size_t n);
bool evq__utf8_valid(const char *s, size_t len);

/* Base64 (RFC 4648, with padding).  encode returns a malloc'd NUL-terminated
 * string; decode returns EVQ_EDECODE on any character outside the alphabet or
 * bad padding. */
char *evq__b64_encode(const unsigned char *in, size_t len, size_t *outlen);
int evq__b64_decode(const char *in, size_t len, unsigned char **out,
                    size_t *outlen);

/* RFC 3339 timestamps <-> nanoseconds since the epoch.  format writes at most
 * EVQ__TIME_BUF bytes including the NUL. */
#define EVQ__TIME_BUF 40
int evq__time_parse(const char *s, int64_t *ns);
void evq__time_format(int64_t ns, char *buf);

/* Makes room for element n (0-based) of a malloc'd array *arrayp of `elem`
 * bytes each, doubling *cap as needed.  EVQ_ENOMEM leaves it unchanged. */
int evq__grow(void *arrayp, size_t *cap, size_t n, size_t elem);

/* Locks one of the n elements of `slots` (each `elem` bytes, with a
 * pthread_mutex_t at byte `mu_off`): the first free one from this thread's
 * own slot on, else waits for its own; returns the element's index.  A
 * pool of connections or contexts shared by threads. */
size_t evq__slot_lock(void *slots, size_t n, size_t elem, size_t mu_off);

/* Whether acks held for a group commit should go now: when flush_ms is 0,
 * 256 are waiting, the oldest waited flush_ms, or the handle was
 * interrupted (no later dequeue will carry them along). */
bool evq__flush_due(size_t pending, int64_t oldest_ms, int64_t now_ms,
                    int flush_ms, bool interrupted);

/* A thread that runs fn(arg) at a time it is armed for: deferred work
 * (group-committed acks) that must not wait for the handle's next call.
 * The thread starts on the first arm and ends on destroy. */
typedef struct evq__flusher {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    pthread_t tid;
    bool running, stop;
    int64_t due_ns; /* INT64_MAX: not armed */
    void (*fn)(void *arg);
    void *arg;
} evq__flusher;
void evq__flusher_init(evq__flusher *f, void (*fn)(void *), void *arg);
/* Has fn run once at about due_ns (monotonic); the earliest arm wins.
 * Starts the thread when needed (tried again at the next arm if it cannot
 * be started: never runs fn on the caller's thread). */
void evq__flusher_arm(evq__flusher *f, int64_t due_ns);
/* Joins the thread (fn is not running afterwards).  Not from fn. */
void evq__flusher_destroy(evq__flusher *f);

/* Ids remembered for a while, in process memory (seen.c): an idempotent
 * worker's finished events where the backend keeps no shared record.  Any
 * thread. */
typedef struct evq__seen evq__seen;
evq__seen *evq__seen_new(void);
void evq__seen_free(evq__seen *s);
/* Whether id was put less than its ttl_ms ago. */
bool evq__seen_has(evq__seen *s, const char *id);
/* Remembers id for ttl_ms (again, when it was there).  EVQ_ENOMEM. */
int evq__seen_put(evq__seen *s, const char *id, int64_t ttl_ms);
/* Remembers id for ttl_ms unless it is there: 1 put, 0 there, or
 * EVQ_ENOMEM.  Atomic against other calls on s. */
int evq__seen_claim(evq__seen *s, const char *id, int64_t ttl_ms);
/* Forgets id (nothing when it is not there). */
void evq__seen_drop(evq__seen *s, const char *id);

/* Token buckets in process memory (bucket.c), one per key for the whole
 * process: the rate limits of workers where the backend holds no shared
 * state.  Takes a token of bucket `key` (refilled at `rate` a second, up to
 * `burst`; a new bucket is full): *wait_ms 0 when taken, else how long
 * until one is there (none taken).  EVQ_ENOMEM.  Any thread. */
int evq__bucket_take(const char *key, double rate, int burst, int64_t *wait_ms);
/* How long a bucket holding `tokens` (< 1) waits for its next one. */
int64_t evq__bucket_wait_ms(double tokens, double rate);

/* Growable byte buffer. */
typedef struct evq__buf {
    unsigned char *p;
    size_t len, cap;
} evq__buf;
int evq__buf_reserve(evq__buf *b, size_t extra);
int evq__buf_append(evq__buf *b, const void *p, size_t n);

/* ---- events (event.c) ---------------------------------------------------- */

enum evq__ext_kind { EVQ__EXT_STRING, EVQ__EXT_INTEGER, EVQ__EXT_BOOLEAN };

typedef struct evq__ext {
    char name[EVQ_MAX_ATTR_NAME + 1];
    enum evq__ext_kind kind;
    char *value;
} evq__ext;

/* Hot fields first: what creating, enqueueing and dispatching an event
 * touch sits in the first cache lines.  `attempt`, the one field a consumer
 * writes, shares the refcount's line, which the producer that frees the
 * event has to take back anyway. */
struct evq_event {
    atomic_int refs;
    atomic_int attempt;
    bool has_time;
    bool is_binary;
    char *type;   /* typebuf when it fits */
    char *id;     /* idbuf when it fits */
    char *source; /* points at evq__default_source unless set */
    json_t *data;
    int64_t time_ns;
    char idbuf[40];
    char typebuf[48];
    char *subject;
    char *datacontenttype;
    char *dataschema;
    unsigned char *bin;
    size_t bin_len;
    evq__ext *ext;
    size_t n_ext, cap_ext;
    atomic_int time_state; /* time_str: 0 empty, 1 being written, 2 set */
    char time_str[EVQ__TIME_BUF];
};

extern char evq__default_source[];

/* An event with no attributes set (id, type and source unset); NULL on
 * allocation failure.  For decoders, which set everything themselves. */
evq_event *evq__event_alloc(void);
/* Checks that a decoded event has what CloudEvents requires. */
int evq__event_validate(const evq_event *ev);
/* Sets an extension attribute with an explicit kind (decoders keep the JSON
 * type of foreign extension values). */
int evq__event_set_ext(evq_event *ev, const char *name, const char *value,
                       enum evq__ext_kind kind);
evq_event *evq__event_ref(const evq_event *ev);
/* Writes a new UUIDv7 in canonical form into buf (37 bytes). */
void evq__uuid7(char *buf);
/* The same for a given time (nanoseconds since the epoch). */
void evq__uuid7_at(char *buf, int64_t now_ns);
/* CloudEvents extension attribute name rule. */
bool evq__ext_name_valid(const char *name);

/* ---- codecs (codec.c, codec_json.c, codec_msgpack.c) --------------------- */

extern const evq_codec evq__codec_json;
extern const evq_codec evq__codec_msgpack;
void evq__limits_default(evq_codec_limits *lim);
/* Moves the members of a decoded envelope (a jansson object) into `ev`,
 * checking them against the CloudEvents rules; `data` (borrowed) or the
 * binary bytes become the payload.  Shared by the JSON and MessagePack
 * decoders. */
int evq__event_from_envelope(evq_event *ev, json_t *env, json_t *data,
                             bool data_is_binary, const unsigned char *bin,
                             size_t bin_len);
/* Depth of a JSON value: 0 for scalars, 1 for a flat array or object.
 * Stops counting once `limit` is exceeded (returns limit + 1). */
int evq__json_depth(const json_t *v, int limit);

/* ---- CloudEvents binary mode (ce_binary.c) ------------------------------- */

/* A message header: name, value bytes (not NUL-terminated).  buf holds a
 * name evq__ce_to_binary made. */
typedef struct evq__header {
    const char *name;
    const void *value;
    size_t len;
    char buf[EVQ_MAX_ATTR_NAME + 4];
} evq__header;

/* The event of a binary-mode message: attributes in "ce_<name>" headers,
 * datacontenttype in "content-type", the data in `val` (JSON when the
 * content type is JSON or absent, else bytes).  EVQ_ENOENT without an
 * error message when no ce_ header is there (not binary mode); EVQ_EDECODE
 * or EVQ_ETOOBIG (lim, NULL for the defaults) when it breaks the
 * CloudEvents rules.  *out is the caller's. */
int evq__ce_from_binary(const evq__header *h, size_t n, const void *val,
                        size_t len, const evq_codec_limits *lim,
                        evq_event **out);
/* The headers (into h, room for *n; *n set to the count) and value of
 * `ev` in binary mode; names and values are borrowed from `ev`, except
 * the value may be *owned (free it). */
int evq__ce_to_binary(const evq_event *ev, evq__header *h, size_t *n,
                      char **owned, const void **val, size_t *len);

/* ---- URLs (url.c) -------------------------------------------------------- */

typedef struct evq__host {
    char *host; /* decoded; IPv6 literals without brackets; may be "" */
    int port;   /* 0 when absent */
} evq__host;

typedef struct evq__param {
    char *key, *value;
} evq__param;

typedef struct evq__url {
    char *scheme; /* lower-case */
    char *user;   /* decoded; NULL when absent */
    char *password;
    evq__host *hosts;
    size_t n_hosts;
    char *path; /* decoded, with its leading '/'; "" when absent */
    evq__param *params;
    size_t n_params;
    char *redacted; /* the URL with any password replaced by "***" */
} evq__url;

/* Parses `s`.  On failure returns EVQ_EINVAL with a message naming the bad
 * part, never echoing a password. */
int evq__url_parse(const char *s, evq__url *out);
/* Whether the option named key[0..len) holds a secret (a password, a
 * token, a key's PEM…), whose value is never printed. */
bool evq__opt_is_secret(const char *key, size_t len);
void evq__url_free(evq__url *u);

/* ---- options (opts.c) ---------------------------------------------------- */

enum evq__opt_type {
    EVQ__OPT_INT,    /* decimal integer in [min, max] */
    EVQ__OPT_BOOL,   /* true/false/1/0/yes/no/on/off */
    EVQ__OPT_STRING, /* any non-empty string */
    EVQ__OPT_ENUM,   /* one of `choices`, separated by '|' */
    EVQ__OPT_PREFIX  /* `name` is a prefix ("redis."); passed through */
};

typedef struct evq__opt_spec {
    const char *name;
    enum evq__opt_type type;
    const char *def; /* default as text; NULL for none */
    int64_t min, max;
    const char *choices;
    const char *help;
    /* EVQ__AT(struct, field): the field of the table's typed struct that
     * evq__opts_read fills (0: none).  The field's type follows the
     * option's: int64_t for INT, bool for BOOL, const char * for STRING
     * (NULL when unset without a default), int for ENUM (the index of
     * the value in `choices`).  A former name of an option names the same
     * field, and fills it when given. */
    size_t at;
} evq__opt_spec;

#define EVQ__AT(type, field) (offsetof(type, field) + 1)

/* The options of every queue, typed (evq__core_opts fills it). */
typedef struct evq__core_cfg {
    const char *format, *dead_letter;
    int64_t max_event_bytes, max_depth, max_in_flight;
    int overflow; /* EVQ__OVERFLOW_BLOCK or _ERROR */
    int64_t reconnect_initial_ms, reconnect_max_ms;
    bool create;
    int64_t unique_ttl_ms;
    int unique;       /* EVQ__UNIQUE_REJECT or _MERGE */
    int unique_until; /* EVQ__UNIQUE_UNTIL_TTL or _DONE */
} evq__core_cfg;

enum { EVQ__UNIQUE_REJECT, EVQ__UNIQUE_MERGE };
enum { EVQ__UNIQUE_UNTIL_TTL, EVQ__UNIQUE_UNTIL_DONE };

enum { EVQ__OVERFLOW_BLOCK, EVQ__OVERFLOW_ERROR };

/* Options resolved for one queue: the URL's parameters overridden by the
 * caller's evq_opts, each checked against the core's and the backend's
 * tables; `core` holds the core's, typed. */
typedef struct evq__optset {
    evq__param *kv;
    size_t n;
    evq__core_cfg core;
} evq__optset;

/* Fills the typed struct `cfg` from the rows of `tab` that name a field:
 * each default first, then each value given, in table order.  Strings
 * point into the set or the table: valid while the set lives. */
void evq__opts_read(const evq__optset *set, const evq__opt_spec *tab,
                    void *cfg);

int evq__optset_build(evq__optset *set, const evq__url *url,
                      const evq_opts *opts, const evq__opt_spec *backend);
void evq__optset_free(evq__optset *set);
/* An integer option by name: the value given, or the spec's default.
 * For the core reading what every leasing backend's table has
 * (visibility_timeout_ms, its prefetch option); backends read their
 * typed struct (evq__opts_read). */
int64_t evq__opt_int(const evq__optset *set, const evq__opt_spec *tab,
                     const char *name);
extern const evq__opt_spec evq__core_opts[];

/* The connection timeout of every server backend, one entry of each one's
 * table (redis, nats, kafka), so the name, default and meaning agree. */
#define EVQ__CONNECT_TIMEOUT_OPT(type)                                         \
    {                                                                          \
        "connect_timeout_ms", EVQ__OPT_INT, "10000", 1, 600000, NULL,          \
            "longest the server is waited for: open fails, and an enqueue or " \
            "a "                                                               \
            "waiting dequeue reports EVQ_ECONN, once no server has been "      \
            "reachable "                                                       \
            "for this long",                                                   \
            EVQ__AT(type, connect_timeout_ms)                                  \
    }

/* ---- queue core and backends (queue.c) ----------------------------------- */

/* One event handed to a backend's enqueue: either by reference (when the
 * backend declares EVQ__BY_REF and no format was chosen) or encoded. */
typedef struct evq__item {
    /* borrowed; take a reference to keep it.  Encoded items carry it only
     * to backends that declare EVQ__ITEM_EVENT (NULL for the others) */
    evq_event *ev;
    const char *id;             /* the event's id, borrowed */
    const unsigned char *bytes; /* borrowed encoded form, or NULL */
    size_t len;
    int64_t delay_ms; /* >= 0 */
    int priority;     /* evqpriority, 0 to 9: 0 unless the backend gives
                         EVQ__PRIORITIES */
    /* The unique key the core claimed for the event ("unique:<key>",
     * owned by whoever holds the item), to be given back when it is not
     * stored; NULL for most. */
    char *claim;
} evq__item;

/* What a backend's dequeue hands to the core: `ev` (by reference) or `bytes`
 * (encoded), either owned by the delivery until it is settled through the
 * backend's ack (which releases it) or nack (which keeps it queued). */
typedef struct evq__delivery {
    evq_event *ev;
    const unsigned char *bytes;
    size_t len;
    /* Set by a backend that found the stored message larger than
     * max_event_bytes and read only its first `len` bytes: the stored
     * length.  The queue dead-letters such a delivery undecoded. */
    size_t full_len;
    int attempt; /* 1 on first delivery */
    void *token; /* the backend's handle of this delivery */
    /* Monotonic time (evq__now_mono_ns) by which the backend's lease on
     * this delivery ends, as the consumer can know it: taken from a clock
     * read before the request that delivered it, so the server's own
     * timer never runs out later.  Moved on by a successful touch.  0 on
     * backends that keep a delivery with its consumer while it lives. */
    int64_t lease_ns;
    /* Set by backends whose broker has no delays (nats, kafka): the Unix
     * time in ms before which the read-ahead does not hand it out (0: due
     * now); see EVQ__HDR_DUE. */
    int64_t due_ms;
    /* An ordering key (borrowed from the token, NULL for none): the
     * read-ahead hands out one delivery of a key at a time. */
    const char *key;
} evq__delivery;

/* The headers that carry a delayed event's due time (Unix ms, decimal)
 * and the attempts it had before, on brokers without delays of their own.
 * Spelled one way on every backend; a reader also accepts the spellings
 * of earlier versions (EVQ__HDR_DUE_OLD). */
#define EVQ__HDR_DUE         "evq-due"
#define EVQ__HDR_ATTEMPT     "evq-attempt"
#define EVQ__HDR_DUE_OLD     "Evq-Due", "evq_due"
#define EVQ__HDR_ATTEMPT_OLD "evq_attempt"
/* A header value as a non-negative decimal integer; 0 when absent or
 * not one. */
int64_t evq__hdr_int(const void *value, size_t len);

/* The failure of a touch or settle whose lease has passed to another
 * consumer (or may have: the local lease clock ran out). */
int evq__lease_lost(const char *what);

enum { EVQ__RECORD_HAS, EVQ__RECORD_PUT, EVQ__RECORD_DEL, EVQ__RECORD_CLAIM };

#define EVQ__BY_REF 0x1u
/* enqueue never waits on I/O (memory://): evq_enqueue calls it directly
 * rather than through the send pipeline. */
#define EVQ__INSTANT 0x2u
/* enqueue reads an encoded item's event besides its bytes (attributes
 * for headers or keys): the pipeline keeps a reference until it is sent.
 * Without it the event is let go once encoded, on the caller's thread. */
#define EVQ__ITEM_EVENT 0x4u
/* enqueue_finish mostly waits out a timer (a producer's linger), not the
 * broker's work: the pipeline overlaps batches as soon as it can, rather
 * than letting a few waiting events gather behind the batch out. */
#define EVQ__LINGERS 0x8u
/* The backend keeps unique events itself (nats: the key is the message's
 * Nats-Msg-Id, stored once within the stream's duplicate window): enqueue
 * fails with EVQ_EEXIST when an item's key was taken, after storing the
 * items that were not; the core claims nothing. */
#define EVQ__UNIQUE_ID 0x10u
/* The backend hands out events of a higher evq__item.priority first;
 * without it an event with evqpriority above 0 is refused
 * (EVQ_ENOTSUP). */
#define EVQ__PRIORITIES 0x20u

/* ---- the send pipeline (pipe.c) ------------------------------------------
 * Accepted events of one handle, sent in batches through `send` (the
 * backend's enqueue) by a sender thread or by a synchronous caller; see
 * pipe.c. */
typedef struct evq__pipe evq__pipe;
/* The way to the backend: send (its enqueue), or, where the backend gives
 * them, start (hands the batch to the broker's client and returns; 0:
 * finish is called once with *ticket and the batch's size, else the batch
 * failed) and finish (waits for the batch's acknowledgements: what enqueue
 * would return). */
typedef struct evq__pipe_ops {
    int (*send)(void *ctx, const evq__item *items, size_t n);
    int (*start)(void *ctx, const evq__item *items, size_t n, void **ticket);
    int (*finish)(void *ctx, void *ticket, size_t n);
    /* Gives back the claim of an item that was not stored (may be
     * NULL). */
    void (*unclaim)(void *ctx, const char *claim);
    bool lingers; /* the backend's EVQ__LINGERS */
} evq__pipe_ops;
evq__pipe *evq__pipe_new(const evq__pipe_ops *ops, void *ctx,
                         size_t max_in_flight, bool overflow_error);
/* Accepts items[0..n) (one user batch, never split: its bytes and event
 * references become the pipe's, even on failure).  wait: returns once all
 * were sent, with the first failure; else `done` (NULL: counted for
 * evq__pipe_flush) is called once per event after it is sent.  EVQ_EFULL
 * (overflow=error), EVQ_ECLOSED (interrupted or closing), EVQ_ESTATE (a
 * waiting call from inside a done callback). */
int evq__pipe_put(evq__pipe *p, evq__item *items, size_t n,
                  evq_enqueued_fn done, void *arg, bool wait);
/* Sends what waits and waits until every accepted event is reported;
 * then the failures of events without a `done` since the last flush. */
int evq__pipe_flush(evq__pipe *p, int64_t timeout_ms);
/* Later puts fail with EVQ_ECLOSED; producers waiting for room return. */
void evq__pipe_interrupt(evq__pipe *p);
/* Refuses new events, sends and reports the rest, stops the thread.  When
 * that takes longer than grace_ms (< 0: no limit), stuck(arg) is called
 * to have the backend fail what it cannot take, and the rest is
 * reported. */
int evq__pipe_close(evq__pipe *p, int grace_ms, void (*stuck)(void *),
                    void *arg);
void evq__pipe_free(evq__pipe *p);
/* Whether the calling thread is inside a done callback. */
bool evq__pipe_in_done(void);

/* ---- the backend kit: the log (log.c) -------------------------------------
 * A queue handle's broker events; see log.c. */
typedef struct evq__logger evq__logger;
evq__logger *evq__logger_new(const char *where);
void evq__logger_free(evq__logger *lg);
/* The handle's own log function (NULL: the process's, evq_set_log). */
void evq__logger_set(evq__logger *lg, evq_log_fn fn, void *arg);
/* Says a line (printf-style); a repeat within 30 s is only counted.  Any
 * thread; lg may be NULL (nothing is said). */
void evq__logf(evq__logger *lg, evq_log_level level, const char *fmt, ...)
    EVQ__PRINTF(3, 4);

/* ---- the backend kit: reconnect policy and read-ahead (readahead.c) ----- */

/* One backoff for every reconnect: reconnect_initial_ms, doubling up to
 * reconnect_max_ms (core options). */
typedef struct evq__reconnect {
    int64_t initial_ms, max_ms;
} evq__reconnect;
void evq__reconnect_init(evq__reconnect *r, const evq__optset *set);
/* The pause before try number failures + 1 (failures >= 1). */
int64_t evq__reconnect_pause_ms(const evq__reconnect *r, int failures);
void evq__sleep_ms(int64_t ms);

/* The read-ahead of one handle on a backend with `fetch`; see
 * readahead.c. */
typedef struct evq__ra evq__ra;
struct evq_backend_ops;
int evq__ra_new(evq__ra **out, const struct evq_backend_ops *ops, void *state,
                size_t prefetch, const evq__reconnect *policy);
/* Up to max deliveries into out, waiting up to timeout_ms (< 0: forever)
 * for the first: the count, or EVQ_ETIMEDOUT, EVQ_ECLOSED (interrupted),
 * EVQ_ECONN (the broker was away until the timeout), or the fetch's
 * error.  Any number of threads. */
int evq__ra_take(evq__ra *ra, evq__delivery *out, size_t max, int timeout_ms);
/* A delivery handed out is being settled: the next of its key may go. */
void evq__ra_settled(evq__ra *ra, const evq__delivery *d);
/* Deliveries fetched and not handed out (the broker counts them as out;
 * to the user they are still waiting). */
size_t evq__ra_buffered(evq__ra *ra);
/* Later takes fail with EVQ_ECLOSED; what is buffered goes back. */
void evq__ra_interrupt(evq__ra *ra);
/* Gives back what is buffered and frees; no call on ra runs. */
void evq__ra_free(evq__ra *ra);

struct evq_backend_ops {
    const char *scheme;
    unsigned flags;
    const evq__opt_spec *opts; /* the backend's own options; NULL-named end */
    /* Opens the backend state for queue `name`.  `url` and `opts` are
     * borrowed for the call; `log` (the handle's, for broker events)
     * lives as long as the state.  Required. */
    int (*open)(void **state, const evq__url *url, const char *name,
                const evq__optset *opts, evq__logger *log);
    /* Accepts `n` items; returns once they are as durable as the backend
     * promises.  May block (full queue).  Required unless the two halves
     * below are given. */
    int (*enqueue)(void *state, const evq__item *items, size_t n);
    /* Both or neither: enqueue in two halves, so the pipeline
     * keeps several batches out at once.  enqueue_start hands the items to
     * the broker's client in order and returns without waiting; on 0,
     * enqueue_finish is called exactly once with *ticket, on the same
     * thread (later batches may start meanwhile, on other threads), and
     * returns what enqueue would have.  Non-zero from start: nothing of
     * the batch is pending. */
    int (*enqueue_start)(void *state, const evq__item *items, size_t n,
                         void **ticket);
    int (*enqueue_finish)(void *state, void *ticket);
    /* A backend gives either dequeue (it never waits on a broker to hand
     * out events: memory) or fetch and hand_back (the read-ahead does the
     * buffering, the waiting, the slices and the reconnect pauses).
     *
     * Both set every field of each delivery they return (the ones they
     * have no use for to 0): the core does not clear them first.
     *
     * dequeue: fills d[0..max) with ready deliveries, waiting up to
     * timeout_ms for the first; the count, or EVQ_ETIMEDOUT, or
     * EVQ_ECLOSED after interrupt. */
    int (*dequeue)(void *state, evq__delivery *d, size_t max, int timeout_ms);
    /* fetch: one trip to the broker for up to max deliveries into d,
     * waiting up to wait_ms (0: what is there now) for the first; the
     * count (0: none in time), or an error (EVQ_ECONN: the broker is
     * away; the read-ahead tries again after a pause).  One caller at a
     * time.  hand_back: deliveries fetched and never handed out go back
     * to the queue with their attempt counts unchanged (unless no longer
     * this consumer's), and are freed. */
    int (*fetch)(void *state, evq__delivery *d, size_t max, int wait_ms);
    void (*hand_back)(void *state, evq__delivery *d, size_t n);
    /* The option giving how many deliveries one fetch asks for (64 when
     * NULL). */
    const char *prefetch_opt;
    /* Settle deliveries (as dequeue or fetch filled them); they are
     * invalid afterwards.  ack takes n of them (the first failure is
     * returned; every one is freed).  nack makes one deliverable again
     * after delay_ms with the attempt count kept (the next dequeue raises
     * it).  Required. */
    int (*ack)(void *state, evq__delivery **d, size_t n);
    int (*nack)(void *state, evq__delivery *d, int64_t delay_ms);
    /* Tells the server a delivery is still being worked on, so it is not
     * given to another consumer meanwhile, and moves d->lease_ns on.
     * EVQ_ESTATE (evq__lease_lost) when the lease has passed to another
     * consumer: then ack and nack of `d` fail the same way and change
     * nothing but free `d`.  NULL on backends without leases (deliveries
     * stay with their consumer while it lives).  May run concurrently with
     * other calls, never with `d`'s settling. */
    int (*touch)(void *state, evq__delivery *d);
    /* Wakes blocked callers of this state; later ones get EVQ_ECLOSED.
     * Required; must not block for long. */
    int (*interrupt)(void *state);
    /* May be NULL (every figure then reads -1). */
    int (*stats)(void *state, struct evq_queue_stats *out);
    /* The events stored in another queue `name` of the same server,
     * opened with this handle's options (ready, delayed and in flight
     * alike; 0 when it does not exist), read through this handle's
     * connection: evq_queue_stats counts the dead-letter queue with it,
     * opening nothing.  May be NULL (the dead count then reads -1). */
    int (*count)(void *state, const char *name, int64_t *n);
    /* Releases the state; no call on it runs concurrently.  Required. */
    void (*close)(void *state);
    /* Removes the queue from where it lives: its events (ready, delayed,
     * out) and what open made for it; the state then only closes.  NULL
     * when the backend cannot. */
    int (*destroy)(void *state);
    /* The queue's small records, kept where every consumer of the queue
     * sees them (durable where the backend is): `key` (at most
     * 2 × EVQ_MAX_ATTR_BYTES + 16 bytes) is looked up (EVQ__RECORD_HAS: 1
     * there and not expired, 0 not), written (EVQ__RECORD_PUT: for
     * ttl_ms, 0 for good) or deleted (EVQ__RECORD_DEL); 0 or an error.
     * EVQ__RECORD_CLAIM writes it for ttl_ms only when it is not there
     * (or expired), atomically against every other consumer and producer
     * of the queue: 1 written, 0 there, or an error.
     * The core keeps in them the pause state ("paused") and an idempotent
     * worker's finished events ("done:<source> <id>"), and the keys of unique
     * events ("unique:<key>").  Any thread, concurrently with
     * fetch and the rest.  NULL: the backend gives `pause` (or cannot be
     * paused: EVQ_ENOTSUP), and each worker remembers its finished ids
     * (evq__seen), unless it gives done_put and done_has. */
    int (*record)(void *state, const char *key, int op, int64_t ttl_ms);
    /* Without records: the pause state where every consumer reads it.
     * set 1 pauses, 0 resumes (0 on success), -1 reads it (1 paused, 0
     * not, or an error).  Read every PAUSE_READ_MS while consumers wait. */
    int (*pause)(void *state, int set);
    /* Without records: finished ids kept otherwise (memory://, for the
     * process): done_put records `id` for window_ms; done_has gives 1,
     * 0, or an error. */
    int (*done_put)(void *state, const char *id, int64_t window_ms);
    int (*done_has)(void *state, const char *id);
    /* Takes a token of the queue's bucket `key` (evq_worker_limit),
     * refilled at `rate` a second up to `burst` (a new bucket is full),
     * where every worker of the queue shares it: *wait_ms 0 when taken,
     * else how long until one is there (none taken).  Any thread.  NULL:
     * each process has its own buckets (evq__bucket_take). */
    int (*take)(void *state, const char *key, double rate, int burst,
                int64_t *wait_ms);
    /* With EVQ__PRIORITIES, where a handle may keep fewer levels than 10
     * (redis:// without redis.priorities): how many it keeps (1: only 0),
     * and what gives it more, for the error.  NULL: all 10. */
    int (*levels)(void *state);
    const char *levels_how;
};

/* evq_enqueue, except that a unique event whose key is taken is
 * EVQ_EEXIST even with unique=merge (a scheduler counts its slots). */
int evq__enqueue_unique(evq_queue *q, const evq_event *ev);

/* An event's evqpriority: 0 to 9 (0 when it has none), or EVQ_EINVAL. */
int evq__event_priority(const evq_event *ev);

/* Looks up a backend by scheme; NULL when none. */
const struct evq_backend_ops *evq__backend_find(const char *scheme);
/* Each backend's ops are evq__backend_<name>, one per file of
 * src/backends/; the table of those built is in queue.c. */
/* Enqueues bytes as they are, bypassing the codec (tests and tools that need
 * to put foreign or broken messages on a queue opened with a format). */
int evq__enqueue_raw(evq_queue *q, const void *bytes, size_t len);
/* Opens another handle on the same queue with the same URL and options. */
int evq__queue_clone(evq_queue *q, evq_queue **out);

/* How often a worker should touch a running handler's delivery on `q`: a
 * third of its visibility timeout, or 0 when the backend cannot touch. */
int64_t evq__queue_touch_ms(const evq_queue *q);
/* Sends the broker events of `q` to fn (a worker's log). */
void evq__queue_set_log(evq_queue *q, evq_log_fn fn, void *arg);
/* The reconnect policy of `q` (reconnect_initial_ms, reconnect_max_ms). */
void evq__queue_reconnect(const evq_queue *q, evq__reconnect *out);
/* The visibility timeout of `q` in ns; 0 when it has no leases. */
int64_t evq__queue_lease_ns(const evq_queue *q);
/* When the lease of a dequeued message ends (evq__delivery.lease_ns). */
int64_t evq__msg_lease_ns(const evq_msg *m);
/* The batch handler an event goes to (the first matching), with its
 * bounds; NULL when none matches. */
const void *evq__batch_handler(evq_events *e, const evq_event *ev,
                               size_t *max_batch, int64_t *max_wait_ms);
/* The largest max_batch of the registry's batch handlers (0: none). */
size_t evq__events_max_batch(evq_events *e);
/* Runs batch handler bh on evs[0..n), then the per-event handlers of
 * each event it did not fail; rcs[i] gets each event's result, and
 * reason a failure's message. */
void evq__dispatch_batch(evq_events *e, const void *bh,
                         const evq_event *const *evs, size_t n, int *rcs,
                         char *reason, size_t reason_cap);
/* The finished-id record of an idempotent worker on q's backend (see
 * evq_backend_ops.done_put): whether q has one, and its two calls. */
bool evq__queue_done_shared(const evq_queue *q);
int evq__queue_done_put(evq_queue *q, const char *id, int64_t window_ms);
int evq__queue_done_has(evq_queue *q, const char *id);
/* A token of q's bucket `key` (see evq_backend_ops.take): shared where
 * the backend holds it, else the process's. */
int evq__queue_take(evq_queue *q, const char *key, double rate, int burst,
                    int64_t *wait_ms);
/* Handler type patterns ("*", "order.*", "order.paid"), as dispatch.c
 * takes them: valid (0, or EVQ_EINVAL naming what is wrong), and whether
 * one matches `type`. */
int evq__pattern_check(const char *pattern);
bool evq__pattern_match(const char *pattern, const char *type);
/* W3C trace context (trace.c): whether `tp` is a traceparent, and the
 * thread's current context switched to an event's for its dispatch. */
bool evq__traceparent_valid(const char *tp);
#define EVQ__TP_MAX 256 /* a later version may add fields after the flags */
#define EVQ__TS_MAX 512 /* the spec's limit for tracestate */
typedef struct evq__trace_saved {
    const char *tp, *ts;
    bool copied; /* the thread's own copies, kept here */
    char own_tp[EVQ__TP_MAX + 1], own_ts[EVQ__TS_MAX + 1];
} evq__trace_saved;
void evq__trace_enter(const evq_event *ev, evq__trace_saved *saved);
void evq__trace_leave(evq__trace_saved *saved);
/* The name of the queue a worker consumes. */
const char *evq__worker_queue_name(const evq_worker *w);
/* The handler latencies so far: `counts` (EVQ__HIST_BUCKETS of them, in
 * ticks: hist.h) and their sum in seconds.  Any thread. */
int evq__worker_latency(const evq_worker *w, uint64_t *counts, double *sum_s);
/* Empties the calling thread's evq_errmsg(). */
void evq__err_clear(void);

#endif /* EVQ_INTERNAL_H */
