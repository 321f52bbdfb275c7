/*
 * evq.h - asynchronous, event-driven programs on queues.
 *
 * This header is the whole public API of evq and its documentation.
 *
 * Conventions used throughout:
 * - Functions that can fail return 0 or a negative EVQ_E* code.  The code's
 *   name comes from evq_strerror(); evq_errmsg() holds a detail string for
 *   the last failure on the calling thread.  Success does not clear it.
 * - "Steals X" means the callee owns X after the call, whether it succeeded
 *   or not.  "Borrowed" means the pointer stays owned by the object it came
 *   from and is valid as long as that object is.
 * - Every destroy function accepts NULL.
 * - The library never prints, never exits and never aborts on bad input.
 */
#ifndef EVQ_H
#define EVQ_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with hidden visibility; only EVQ_API names are
 * exported from libevq.so. */
#if defined(__GNUC__) || defined(__clang__)
#define EVQ_API __attribute__((visibility("default")))
#else
#define EVQ_API
#endif

#define EVQ_VERSION_MAJOR  0
#define EVQ_VERSION_MINOR  2
#define EVQ_VERSION_PATCH  0
#define EVQ_VERSION_STRING "0.2.0"

/* The version of the library the program runs with ("0.2.0"), which may
 * be newer than the EVQ_VERSION_* it was built against.  Static storage;
 * any thread. */
EVQ_API const char *evq_version(void);

/* The ABI.  Programs built against one 0.x release (from 0.2.0 on) run
 * with any later library of the same soname, libevq.so.0; `make check`
 * compares the library with the ABI of 0.2.0 (abi/, abidiff).  The
 * structs a program fills or receives grow at their end only, and each
 * carries its size in the program's build:
 *   - the options structs (evq_worker_opts, evq_relay_opts,
 *     evq_scheduler_opts, evq_serve_opts) begin with `size`, which their
 *     _init sets to the struct's size as the program's evq.h declares it
 *     (the _init names are macros passing sizeof to an _init_sized
 *     function).  The library reads that many bytes and takes its own
 *     defaults for the fields added after; `size` 0 (options not filled
 *     by their _init) or larger than the library knows (a program built
 *     against a newer evq.h) is EVQ_EINVAL, named in evq_errmsg();
 *   - the stats structs (evq_queue_stats, evq_worker_stats,
 *     evq_relay_stats, evq_scheduler_stats) are filled through macros of
 *     the same names that pass sizeof: the library writes that many
 *     bytes, zeroing fields it does not know.
 * evq_limit, evq_codec and evq_codec_limits keep their layout for the
 * soname (new kinds of limit come as functions, not fields).
 * Durations are milliseconds in int64_t everywhere. */

/* --------------------------------------------------------------------------
 * Errors
 *
 * One table: each entry is (NAME, value, text).  EVQ_EPERMANENT is also what
 * a handler returns to say "do not retry this event".
 */
#define EVQ_ERRNO_MAP(X)                                                       \
    X(EINVAL, -1, "invalid argument")                                          \
    X(ENOMEM, -2, "out of memory")                                             \
    X(ETIMEDOUT, -3, "timed out")                                              \
    X(ECLOSED, -4, "queue closed or interrupted")                              \
    X(EFULL, -5, "queue full")                                                 \
    X(EDECODE, -6, "malformed message")                                        \
    X(ETOOBIG, -7, "message too large")                                        \
    X(ENOHANDLER, -8, "no handler for event type")                             \
    X(EPERMANENT, -9, "permanent failure, not retried")                        \
    X(ENOTSUP, -10, "operation not supported")                                 \
    X(EIO, -11, "I/O or broker error")                                         \
    X(ECONN, -12, "connection failed")                                         \
    X(EBUSY, -13, "resource busy")                                             \
    X(ENOENT, -14, "not found")                                                \
    X(EEXIST, -15, "already exists")                                           \
    X(ESTATE, -16, "operation not valid in this state")                        \
    X(EHANDLER, -17, "handler failed")

typedef enum evq_errno {
#define EVQ__ERR_ENUM(name, val, text) EVQ_##name = (val),
    EVQ_ERRNO_MAP(EVQ__ERR_ENUM)
#undef EVQ__ERR_ENUM
} evq_errno;

/* The name-less text of an error code ("timed out"); "unknown error" for a
 * value that is not an EVQ_E* code, "success" for 0.  Static storage; any
 * thread. */
EVQ_API const char *evq_strerror(int code);

/* The symbolic name of an error code ("EVQ_ETIMEDOUT"); NULL when unknown. */
EVQ_API const char *evq_errname(int code);

/* Detail of the last failure on the calling thread, e.g. "option 'capacity':
 * value 'abc' is not an integer".  Never NULL (empty when there was none).
 * Valid until the next evq call on this thread.  URL passwords never appear
 * in it. */
EVQ_API const char *evq_errmsg(void);

/* --------------------------------------------------------------------------
 * Events: CloudEvents 1.0 attributes and a payload
 *
 * An event has the required attributes specversion ("1.0"), id, source and
 * type, the optional ones time, subject, datacontenttype and dataschema,
 * extension attributes (lower-case a-z and 0-9, at most 20 characters), and a
 * payload that is either JSON (a jansson json_t) or binary bytes.
 *
 * Events are reference counted internally so that in-process queues can pass
 * them without copying.  An event handed to evq_enqueue() on such a queue is
 * shared with the queue until it is consumed; mutating it meanwhile fails with
 * EVQ_EBUSY (evq_event_dup() gives a private copy).  A payload obtained with
 * evq_event_data() must not be modified while the event is shared.
 * An event may be read from several threads at once; it must not be modified
 * while another thread reads it.
 */
typedef struct evq_event evq_event;

/* Longest attribute value accepted, in bytes. */
#define EVQ_MAX_ATTR_BYTES 4096
/* Longest extension attribute name (CloudEvents recommends 20). */
#define EVQ_MAX_ATTR_NAME 20

/* Creates an event of `type` with a new UUIDv7 id (unique across threads and
 * processes, increasing within a process), the current time, source "evq"
 * and, when `data` is not NULL, datacontenttype "application/json".
 * Steals `data` (may be NULL for no payload), even on failure.  Returns NULL
 * with evq_errmsg() set when `type` is NULL, empty, longer than
 * EVQ_MAX_ATTR_BYTES or not valid UTF-8, or on allocation failure. */
EVQ_API evq_event *evq_event_new(const char *type, json_t *data);

/* A deep copy of `ev` with refcount 1 and the same id; NULL on allocation
 * failure.  The copy's attempt count is 0. */
EVQ_API evq_event *evq_event_dup(const evq_event *ev);

/* Releases the caller's reference; the event is destroyed when the last
 * reference (the caller's or a queue's) goes.  NULL is a no-op. */
EVQ_API void evq_event_free(evq_event *ev);

/* Attribute accessors.  Borrowed strings, valid until the attribute changes
 * or the event is freed; NULL when an optional attribute is absent. */
EVQ_API const char *evq_event_type(const evq_event *ev);
EVQ_API const char *evq_event_id(const evq_event *ev);
EVQ_API const char *evq_event_source(const evq_event *ev);
EVQ_API const char *evq_event_subject(const evq_event *ev);
EVQ_API const char *evq_event_datacontenttype(const evq_event *ev);
/* Event time in nanoseconds since the Unix epoch; 0 when absent. */
EVQ_API int64_t evq_event_time_ns(const evq_event *ev);

/* Any attribute by name, context or extension, as a string (time in RFC
 * 3339, integers in decimal, booleans as "true"/"false"); NULL when absent.
 * Borrowed like the accessors above. */
EVQ_API const char *evq_event_attr(const evq_event *ev, const char *name);

/* Sets an attribute.  Context attributes (id, source, type, subject, time,
 * datacontenttype, dataschema, specversion) are checked: id, source and type
 * must be non-empty, time must be RFC 3339, specversion must be "1.0".  Any
 * other name is an extension attribute and must be 1 to 20 characters of
 * a-z and 0-9 (and not "data").  `value` is copied; it must be valid UTF-8
 * of at most EVQ_MAX_ATTR_BYTES.  A NULL `value` removes an optional
 * attribute.  EVQ_EINVAL names the bad part; EVQ_EBUSY while the event is
 * shared with a queue. */
EVQ_API int evq_event_set_attr(evq_event *ev, const char *name,
                               const char *value);

/* Number of extension attributes, and the i-th one (0-based, in the order
 * set).  evq_event_ext_at returns EVQ_ENOENT past the end; name and value
 * are borrowed. */
EVQ_API size_t evq_event_ext_count(const evq_event *ev);
EVQ_API int evq_event_ext_at(const evq_event *ev, size_t i, const char **name,
                             const char **value);

/* The JSON payload, borrowed (NULL when there is none or it is binary). */
EVQ_API json_t *evq_event_data(const evq_event *ev);

/* Replaces the payload with JSON `data` (stolen, even on failure; NULL
 * removes the payload). */
EVQ_API int evq_event_set_data(evq_event *ev, json_t *data);

/* Replaces the payload with a copy of `len` binary bytes; `content_type`
 * (copied, may be NULL) becomes the datacontenttype.  Binary payloads travel
 * as "data_base64" in the JSON format. */
EVQ_API int evq_event_set_binary(evq_event *ev, const void *bytes, size_t len,
                                 const char *content_type);

/* The binary payload, borrowed, with its length in *len; NULL when the
 * payload is not binary. */
EVQ_API const void *evq_event_binary(const evq_event *ev, size_t *len);

/* How many times this event has been delivered: 1 on the first delivery,
 * raised by every nack.  0 for an event that was never dequeued. */
EVQ_API int evq_event_attempt(const evq_event *ev);

/* --------------------------------------------------------------------------
 * Codecs: wire formats
 *
 * "json" is the CloudEvents 1.0 JSON event format; "msgpack" is the same
 * envelope in MessagePack (a binary payload is a MessagePack bin under
 * "data").  Users may register their own.
 */
typedef struct evq_codec_limits {
    size_t max_bytes; /* longest encoded event; default 1 MiB */
    int max_depth;    /* deepest nesting of the whole message; default 32 */
} evq_codec_limits;

#define EVQ_DEFAULT_MAX_EVENT_BYTES (1024u * 1024u)
#define EVQ_DEFAULT_MAX_DEPTH       32

typedef struct evq_codec {
    const char *name;         /* the value of the format= option */
    const char *content_type; /* e.g. "application/cloudevents+json" */
    /* Encodes `ev` into a malloc'd buffer *out of *len bytes (the caller
     * frees it).  EVQ_ETOOBIG past lim->max_bytes.  Any thread. */
    int (*encode)(const evq_event *ev, const evq_codec_limits *lim,
                  unsigned char **out, size_t *len);
    /* Decodes `len` untrusted bytes into a new event (*out, owned by the
     * caller).  Must never read past `len`; EVQ_EDECODE or EVQ_ETOOBIG with
     * evq_errmsg() set on bad input.  Any thread. */
    int (*decode)(const void *buf, size_t len, const evq_codec_limits *lim,
                  evq_event **out);
} evq_codec;

/* Registers a codec process-wide.  The table is borrowed and must outlive
 * every queue that uses it (a static const table is the usual case).
 * EVQ_EEXIST when the name is taken.  Thread-safe. */
EVQ_API int evq_codec_register(const evq_codec *codec);

/* The codec named `name`, or NULL.  Thread-safe. */
EVQ_API const evq_codec *evq_codec_find(const char *name);

/* Convenience wrappers: encode or decode with the codec named `format`
 * ("json" when NULL) and the limits `lim` (defaults when NULL). */
EVQ_API int evq_event_encode(const evq_event *ev, const char *format,
                             const evq_codec_limits *lim, unsigned char **out,
                             size_t *len);
EVQ_API int evq_event_decode(evq_event **out, const char *format,
                             const void *buf, size_t len,
                             const evq_codec_limits *lim);

/* --------------------------------------------------------------------------
 * Options
 *
 * String key/value pairs.  The same keys may be given as URL query
 * parameters ("memory://?capacity=16"); entries in an evq_opts override the
 * URL's.  Keys are checked when the queue opens: an unknown key or a bad value
 * fails evq_queue_open() with EVQ_EINVAL naming the key.  An evq_opts is
 * copied by evq_queue_open() and may be freed or reused afterwards.  Not
 * thread-safe; build it on one thread.
 */
typedef struct evq_opts evq_opts;

EVQ_API evq_opts *evq_opts_new(void);
EVQ_API void evq_opts_free(evq_opts *opts);
/* Sets (or replaces) key=value; both copied.  EVQ_EINVAL for an empty key or
 * NULL arguments. */
EVQ_API int evq_opts_set(evq_opts *opts, const char *key, const char *value);
/* The value of `key`, borrowed, or NULL. */
EVQ_API const char *evq_opts_get(const evq_opts *opts, const char *key);

/* Help text for the options a URL scheme accepts ("memory", "sqlite", ...),
 * including the options every queue accepts: one line per option with its
 * type, default and description.  malloc'd, the caller frees it; NULL for
 * a scheme this build has no backend for, evq_errmsg() saying so (and, for
 * a backend built out, how to build it: EVQ_WITH_<NAME>=ON). */
EVQ_API char *evq_options_help(const char *scheme);

/* --------------------------------------------------------------------------
 * Queues
 *
 * A queue handle may be shared by any number of threads for every operation
 * below, except evq_queue_close(), which must be the last call on it.
 */
typedef struct evq_queue evq_queue;
typedef struct evq_msg evq_msg;

struct evq_queue_stats {
    int64_t depth; /* ready to be dequeued; -1 when the backend can't tell */
    int64_t in_flight;      /* dequeued, not yet acked or nacked; -1 unknown */
    int64_t delayed;        /* waiting for their due time; -1 unknown */
    int64_t dead;           /* in the dead-letter queue; -1 unknown */
    uint64_t enqueued;      /* accepted by this handle */
    uint64_t dequeued;      /* delivered to this handle */
    uint64_t acked;         /* acked through this handle */
    uint64_t nacked;        /* nacked through this handle */
    uint64_t dead_lettered; /* moved to the dead-letter queue by this handle */
};

/* Opens queue `name` on the backend chosen by the scheme of `url`
 * ("memory://", "sqlite://", "postgres://", "redis://", "redis+unix://",
 * "redis+sentinel://", "nats://", "kafka://").
 * Options every queue accepts: format (codec name; memory:// passes events
 * by reference when unset, the others default to json), max_event_bytes,
 * max_depth, dead_letter, create; evq_options_help() lists each backend's
 * own.  Every server backend (redis, nats, kafka) takes connect_timeout_ms
 * (default 10000): open reaching no server fails with EVQ_ECONN after it,
 * and a later call finding none reachable reports EVQ_ECONN within it
 * (kafka.create_topics=false: a kafka open contacts no broker).  `opts`
 * may be NULL and is copied.  On success *q is a new handle owned by the caller
 * (close it with evq_queue_close); on failure *q is NULL and the code is
 * EVQ_EINVAL (bad or unknown-scheme URL, bad name or option, named in
 * evq_errmsg) or the backend's error.  Queue names are 1 to 200 characters of
 * [A-Za-z0-9._-].  Any thread. */
EVQ_API int evq_queue_open(evq_queue **q, const char *url, const char *name,
                           const evq_opts *opts);

/* Unique events.  An event with the extension attribute `evquniquekey`
 * (at most EVQ_MAX_ATTR_BYTES) is stored at most once per key within its
 * TTL: `evquniquettl` (milliseconds as a decimal string, 1 to 30 days) or
 * the queue option unique_ttl_ms; neither is EVQ_EINVAL.  Every enqueue
 * call claims the key first (one more round trip per unique event) and:
 * with the queue option unique=reject (the default) a taken key fails the
 * call with EVQ_EEXIST (a batch: all of it, nothing kept); with
 * unique=merge the event is left out and the call returns 0.  With
 * unique_until=done, or the event's attribute evquniqueuntil=done (evq
 * sets it on what it sends), acking or dead-lettering the event also
 * frees the key.  Where the claim is atomic for every producer (sqlite,
 * postgres, redis, nats) and where it holds for the process (memory,
 * kafka, amqp): docs/guarantees.md.  On nats:// the key is held for the
 * stream's duplicate window, unique_until=done is EVQ_ENOTSUP, and so is
 * any unique event on core NATS. */

/* Priorities.  An event's extension attribute `evqpriority`, "0" to "9"
 * (absent: 0), is the level it is taken at: on memory://, sqlite:// and
 * postgres:// every ready event of a higher level is handed out before any
 * of a lower one, each level first in first out (a backlog of low ones
 * can wait for as long as higher ones keep coming).  On redis:// (with the
 * queue option redis.priorities=true, on every handle of the queue) each
 * level is a stream, read by weight: every read gives each level with
 * events a share by its weight (level + 1), highest first, so a higher
 * level goes faster and none is starved.  Other backends keep one order
 * per queue and refuse a level above 0 with EVQ_ENOTSUP (so does redis://
 * without the option); any other value is EVQ_EINVAL.  A nacked or
 * delayed event keeps its level. */

/* Enqueues `ev`; it is ready at once.  Returns 0 only once the backend has
 * accepted it with the durability that backend promises.  The caller keeps
 * its reference to `ev` (in-process queues take one of their own; see the
 * event section about sharing).  On server backends it goes through the
 * handle's send pipeline (evq_enqueue_async plus a wait), so threads
 * enqueueing on one handle at once share round trips.  May block while the
 * queue is full (memory:// without overflow=error) or max_in_flight events
 * are on their way.  EVQ_EFULL, EVQ_ETOOBIG, EVQ_ECLOSED after
 * evq_queue_interrupt() or once closing, EVQ_ESTATE from inside a done
 * callback (use evq_enqueue_async there), EVQ_EEXIST (a unique event whose
 * key is taken, see above). */
EVQ_API int evq_enqueue(evq_queue *q, const evq_event *ev);

/* Called exactly once per event accepted by evq_enqueue_async: rc 0 once
 * the backend holds it as durably as evq_enqueue promises, else the error
 * (evq_errmsg() tells why, inside the call).  `id` is the event's id,
 * borrowed for the call.  Calls come one at a time, in the order the
 * events were accepted (nats:// and kafka:// keep several batches on their
 * way at once, and still report in that order).  Runs on the thread that
 * sent the event's batch: one of the handle's sender threads, or a thread
 * inside evq_enqueue, evq_flush or evq_queue_close on the same handle.  It
 * may call evq_enqueue_async (which then never waits for max_in_flight);
 * it must not call evq_enqueue, evq_flush (EVQ_ESTATE) or
 * evq_queue_close. */
typedef void (*evq_enqueued_fn)(const char *id, int rc, void *arg);

/* Enqueues `ev` without waiting for the backend: encodes it at once (the
 * caller may free `ev` on return, but must not change it until `done`
 * ran), hands it to the handle's send pipeline and returns.  Batches go out
 * as the backend takes them (one pipeline of commands, one transaction, one
 * set of delivery reports), so one thread streams at the broker's own rate.
 * 0: `done` will be called (if not NULL; a failure is then counted and
 * reported by the next evq_flush).  Non-zero: `done` is never called.
 * Blocks while max_in_flight (option, default 10000) events are on their
 * way, or fails with EVQ_EFULL with overflow=error.  delay_ms as in
 * evq_enqueue_delayed.  EVQ_EINVAL, EVQ_ETOOBIG, EVQ_ECLOSED.  A unique
 * event's key is claimed before this returns (EVQ_EEXIST when taken); one
 * merged away (unique=merge) has `done` called with 0 before it returns.
 * Any thread. */
EVQ_API int evq_enqueue_async(evq_queue *q, const evq_event *ev,
                              int64_t delay_ms, evq_enqueued_fn done,
                              void *arg);

/* Sends what waits and returns once every event accepted so far has had
 * its `done` called, or after timeout_ms (negative: no limit):
 * EVQ_ETIMEDOUT.  Then the first failure of events accepted without a
 * `done` since the last flush (the message counts them), or 0.
 * evq_queue_close flushes too.  EVQ_ESTATE from inside a done callback.
 * Any thread. */
EVQ_API int evq_flush(evq_queue *q, int64_t timeout_ms);

/* Enqueues `n` events as one operation where the backend allows; on failure
 * none or a prefix of them may have been accepted (the backend's
 * documentation says which).  `evs` and the events stay the caller's. */
EVQ_API int evq_enqueue_batch(evq_queue *q, const evq_event *const *evs,
                              size_t n);

/* Enqueues `ev` so it is not delivered before `delay_ms` milliseconds from
 * now (0 means at once; negative is EVQ_EINVAL). */
EVQ_API int evq_enqueue_delayed(evq_queue *q, const evq_event *ev,
                                int64_t delay_ms);

/* Takes the next ready event, waiting up to `timeout_ms` (0: don't wait,
 * negative: wait forever).  On success *msg is a message owned by the caller
 * until it passes it to evq_ack() or evq_nack(); until then nobody else
 * receives the event.  EVQ_ETIMEDOUT when nothing became ready in time,
 * EVQ_ECLOSED after evq_queue_interrupt().  Undecodable messages, and those
 * larger than max_event_bytes, are never returned: they go to the
 * dead-letter queue (see docs/guarantees.md for how much of an oversize
 * message each backend reads).  EVQ_ETOOBIG when a kafka:// partition holds
 * a message past librdkafka's receive.message.max.bytes (it cannot move
 * until that is raised or the message is gone). */
EVQ_API int evq_dequeue(evq_queue *q, evq_msg **msg, int64_t timeout_ms);

/* The event of a dequeued message, borrowed from `msg`. */
EVQ_API const evq_event *evq_msg_event(const evq_msg *msg);

/* Acknowledges: the event is done and removed.  Frees `msg` (always, even on
 * failure, so a second call on the same pointer is a use after free).  Any
 * thread, once per message.  EVQ_ESTATE when the message's lease has passed
 * to another consumer (see evq_msg_touch): the event was not removed by
 * this call and the other consumer's delivery is untouched; it will be
 * handled again there. */
EVQ_API int evq_ack(evq_msg *msg);

/* Takes up to `max` events: waits up to timeout_ms (as evq_dequeue) for the
 * first, then adds what is ready at once.  Returns how many (>= 1), stored
 * in msgs[0..count), each to settle as evq_dequeue's; or a negative error
 * code (EVQ_ETIMEDOUT when nothing came, EVQ_EINVAL for a NULL argument or
 * max 0).  Any thread. */
EVQ_API int evq_dequeue_batch(evq_queue *q, evq_msg **msgs, size_t max,
                              int64_t timeout_ms);

/* Acknowledges msgs[0..n), each as evq_ack (all are freed, also after a
 * failure; a NULL entry counts as a failure with EVQ_EINVAL).  0, or the
 * first failure's code, the message saying how many failed.  Acks of a
 * handle are sent together where the backend batches them (sqlite,
 * redis: *.ack_flush_ms). */
EVQ_API int evq_ack_batch(evq_msg **msgs, size_t n);

/* Returns the event for redelivery no sooner than `redeliver_after_ms` from
 * now, with its attempt count raised.  Frees `msg` (always).  EVQ_ESTATE,
 * changing nothing, when its lease has passed to another consumer. */
EVQ_API int evq_nack(evq_msg *msg, int64_t redeliver_after_ms);

/* Leases.  On sqlite://, redis:// and nats:// (JetStream) a dequeued
 * message is leased to its consumer for the queue's visibility_timeout_ms;
 * when that passes unsettled, the event is delivered to another consumer
 * (as if this one had died).  evq_msg_touch extends the lease by a whole
 * visibility timeout from now:
 * - sqlite://: moves the claimed row's visible_at, only while the row still
 *   carries this handle's claim token;
 * - redis://: resets the entry's idle time (XCLAIM ... JUSTID, in a script),
 *   only while the group's pending list still gives it to this handle's
 *   consumer with the delivery count it was read with;
 * - nats://: sends +WPI, only while the lease has not run out on this
 *   consumer's clock (the server would take +WPI, ack or nak of an old
 *   delivery as the current one's);
 * - memory://, kafka://, nats core mode: a delivery stays with its consumer
 *   for as long as the consumer lives; touch returns 0 and does nothing
 *   (kafka:// keeps a handle whose threads are all in long handlers in its
 *   group by polling for it past max.poll.interval.ms).
 * Once a lease has passed to another consumer, evq_msg_touch, evq_ack,
 * evq_nack and evq_msg_dead_letter of the old message fail with EVQ_ESTATE
 * ("the lease expired") and never settle the other consumer's delivery.  A
 * lease that ran out with nobody else taking the event can still be touched
 * or settled on sqlite:// and redis://, not on nats://.  The worker touches
 * the events it holds by itself (evq_worker_opts.touch_ms).  `msg` stays
 * the caller's.  Any thread, but not concurrently with the settling of the
 * same message; touching it again and again is fine.  EVQ_EINVAL for NULL;
 * the backend's error (EVQ_ECONN...) when the touch could not be sent. */
EVQ_API int evq_msg_touch(evq_msg *msg);

/* Wakes every caller blocked in evq_dequeue() or evq_enqueue() on this
 * handle; they, and every later dequeue or enqueue on it, return
 * EVQ_ECLOSED.  Messages already dequeued can still be acked or nacked.
 * Other handles on the same queue are not affected.  Any thread, also from a
 * signal-free context inside a handler; never blocks for long. */
EVQ_API int evq_queue_interrupt(evq_queue *q);

/* Fills `out` with the queue's counters (see evq_queue_stats).  Asks the
 * server through the handle's own connection, the dead-letter count
 * included: it opens nothing (`dead` is -1 where that queue cannot be told
 * apart: core NATS, or an explicit nats.stream).  Any thread; the
 * backend's error (EVQ_ECONN...) when the server cannot answer. */
EVQ_API int evq_queue_stats_sized(evq_queue *q, struct evq_queue_stats *out,
                                  size_t size);
#define evq_queue_stats(q, out)                                                \
    evq_queue_stats_sized((q), (out), sizeof(struct evq_queue_stats))

/* Pauses and resumes the queue `q` names, for every consumer of it: every
 * handle in every process (workers, evq_dequeue, `evq consume`, relays)
 * stops taking events within a second of the pause (each handle reads
 * the state every 250 ms while it waits; a dequeue waiting on a paused
 * queue returns EVQ_ETIMEDOUT at its timeout as on an empty one, and
 * EVQ_ECLOSED when interrupted).  Events already dequeued (a worker's
 * running handlers and its prefetch) are settled as usual; producers
 * still enqueue.  The state is kept where the queue lives, so it outlasts
 * the processes: on sqlite:// and postgres:// a row, on redis:// a key,
 * on nats:// a key of a JetStream key-value bucket (made by the
 * first pause; core NATS keeps no state: EVQ_ENOTSUP), on kafka:// the
 * offset committed by a group of its own (kept as long as the broker's
 * offsets.retention.minutes, 7 days by default, unless paused again), on
 * amqp:// a one-message queue of its own (declared by the first reading);
 * memory:// in the process.  Pausing a paused queue (or resuming
 * a running one) is 0.  Any thread.  EVQ_ENOTSUP where the backend cannot,
 * or its error (EVQ_ECONN...). */
EVQ_API int evq_queue_pause(evq_queue *q);
EVQ_API int evq_queue_resume(evq_queue *q);
/* Reads the state now from where it is kept: 1 paused, 0 not, or the
 * backend's error.  Any thread. */
EVQ_API int evq_queue_paused(evq_queue *q);

/* The backend scheme ("memory") and queue name, borrowed from `q`. */
EVQ_API const char *evq_queue_scheme(const evq_queue *q);
EVQ_API const char *evq_queue_name(const evq_queue *q);

/* Deletes the queue `q` names from where it lives: every event it holds
 * (ready, delayed, out with consumers) and what opening it made:
 * memory:// takes it out of the process (handles still open keep the old
 * one until they close); sqlite:// deletes its rows (the file and tables
 * stay, for the file's other queues); redis:// deletes its stream, with
 * the consumer group, and its delayed set; nats:// deletes its stream and
 * consumer (core mode stores nothing: 0); kafka:// deletes
 * the topic with the Admin API, then the consumer group's offsets (best
 * effort).  Not its dead-letter queue: open that one (evq_queue_open_dead)
 * and delete it too if wanted.  Events dequeued from `q` and not settled
 * can still be settled, to no effect.  Afterwards only evq_queue_close()
 * may follow; other handles on the queue see it gone (EVQ_ENOENT, or a
 * new empty queue when their backend recreates it).  0, or the backend's
 * error (EVQ_ECONN, EVQ_EIO, ...; EVQ_ENOTSUP on a kafka cluster without
 * the Admin API).  Any thread, with no other call on `q` running. */
EVQ_API int evq_queue_delete(evq_queue *q);

/* The URL schemes this build of evq serves ("memory", "sqlite", ...; a
 * backend can be left out at build time, cmake -DEVQ_WITH_<NAME>=OFF):
 * up to `max` of them into schemes[] (static strings; schemes may be NULL
 * to count).  Returns how many there are.  Any thread. */
EVQ_API size_t evq_backends(const char **schemes, size_t max);

/* Closes the handle: interrupts it and releases it.  Messages dequeued
 * through it and not yet settled stay valid and must still be acked or
 * nacked; the handle's resources go when the last of them is settled.  NULL
 * is a no-op.  No other call on `q` may run concurrently or follow. */
EVQ_API void evq_queue_close(evq_queue *q);

/* --------------------------------------------------------------------------
 * Handlers and dispatch
 */
typedef struct evq_events evq_events;

/* A handler: returns 0 when the event is done, EVQ_EPERMANENT when it can
 * never succeed, and EVQ_EHANDLER (what evq_handler_reason returns), or any
 * other negative code, to have it retried; a positive value counts as
 * EVQ_EHANDLER.  `ev` is borrowed for the duration of the call.  Called on
 * the dispatching thread; it may register more handlers but must not free
 * the evq_events. */
typedef int (*evq_process_fn)(const evq_event *ev, void *arg);

/* Called from inside a handler: the reason of its failure, printf-style
 * (at most 511 bytes kept), for the handler's thread only.  When the
 * handler then fails, the reason becomes evq_errmsg() after evq_dispatch,
 * and in a worker on_error's `reason` and the dead letter's evqerror
 * (instead of "handler 0 for 'type' failed").  Returns EVQ_EHANDLER, so a
 * handler can end with `return evq_handler_reason("declined: %s", code);`
 * for a retry (return EVQ_EPERMANENT after calling it for no retry).  A
 * reason set by a handler that then succeeds is dropped. */
EVQ_API int evq_handler_reason(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

/* The deadline of the handler running on the calling thread, in
 * CLOCK_MONOTONIC nanoseconds (compare with clock_gettime(CLOCK_MONOTONIC)),
 * set by a worker with handler_timeout_ms; 0 when there is none (no
 * timeout, or not inside a worker's handler). */
EVQ_API int64_t evq_handler_deadline_ns(void);

/* Non-zero once the calling handler's deadline has passed: the worker has
 * then counted the attempt as failed and handed the event back for a retry
 * or to the dead-letter queue, and ignores what the handler returns.  A
 * long handler should check it between steps and return promptly. */
EVQ_API int evq_handler_expired(void);

/* A new, empty handler registry; NULL on allocation failure. */
EVQ_API evq_events *evq_events_new(void);

/* Frees the registry.  No dispatch may be running. */
EVQ_API void evq_events_free(evq_events *events);

/* Registers `fn` (with `arg`, borrowed) for events whose type matches
 * `pattern`: an exact type ("user.created"), a prefix ending in ".*"
 * ("user.*" matches "user.created" and "user.a.b", not "user"), or "*" for
 * every type.  Handlers run in registration order; the same function may be
 * registered more than once.  EVQ_EINVAL for a NULL or malformed pattern
 * (empty, '*' elsewhere than a final ".*").  Safe while other threads
 * dispatch, and from inside a handler (takes effect for the next dispatch). */
EVQ_API int evq_register_handler(evq_events *events, const char *pattern,
                                 evq_process_fn fn, void *arg);

/* A batch handler: handles evs[0..n) (borrowed for the call, n >= 1, all
 * of types its pattern matches) at once, say one INSERT for all of them.
 * rcs[0..n) start at 0: set rcs[i] to a failure code (as a handler
 * returns) for each event that failed, and return 0; a non-zero return
 * fails every event of the batch with that code.  Each failed event is
 * retried alone (backoff, dead letters after max_attempts), as if a
 * per-event handler had failed; evq_handler_reason gives the reason for
 * all of the batch's failures.  Called on a worker thread (or by
 * evq_dispatch, with one event); may register handlers; must not free the
 * evq_events. */
typedef int (*evq_batch_fn)(const evq_event *const *evs, size_t n, int *rcs,
                            void *arg);

/* Most events one batch handler call may get. */
#define EVQ_MAX_BATCH 1024

/* Registers a batch handler for events whose type matches `pattern` (as
 * evq_register_handler).  A worker gathers such events into batches of up
 * to `max_batch` (1 to EVQ_MAX_BATCH), waiting at most `max_wait_ms` (0 to
 * 3600000; 0: only what was fetched together) for a batch to fill before
 * it calls `fn`.  An event type belongs to its first matching batch
 * handler, which runs before the per-event handlers matching the same
 * events (those run for each event the batch handler did not fail).
 * Events waiting for their batch count as fetched: on backends with
 * leases the worker touches them meanwhile.  EVQ_EINVAL for a NULL
 * argument, a malformed pattern or a bound out of range.  Thread safety as
 * evq_register_handler. */
EVQ_API int evq_register_batch_handler(evq_events *events, const char *pattern,
                                       evq_batch_fn fn, void *arg,
                                       size_t max_batch, int64_t max_wait_ms);

/* Runs every handler matching the event's type, in registration order,
 * stopping at the first that fails, and returns that handler's code
 * (EVQ_EHANDLER when a handler returned a positive value).  A matching
 * batch handler (the first) is called with a batch of one.
 * EVQ_ENOHANDLER when no handler matched.  Any number of threads at once. */
EVQ_API int evq_dispatch(evq_events *events, const evq_event *ev);

/* Number of handlers registered. */
EVQ_API size_t evq_events_count(evq_events *events);
/* Middleware: hooks around every dispatch of `events` (evq_dispatch's and
 * a worker's), in the order they were added: each `before` runs, first
 * added first, then the handlers, then each `after`, last added first
 * (nested, as Watermill's middleware).  Either may be NULL.
 *   before(ev, &call, arg): 0 goes on; any other value fails the event
 *     with that code (as a handler's: evq_handler_reason may give the
 *     reason) and its handlers do not run; the afters of the hooks whose
 *     before ran still do.  `*call` (NULL at first) is the hook's own
 *     pointer for this dispatch, given back to its after.
 *   after(ev, rc, elapsed_ns, call, arg): rc is the result so far (0, or
 *     the failure's code), elapsed_ns the time since this hook's before
 *     (the handlers and the hooks inside); returns the result to pass on:
 *     rc to keep it, another code to fail the event, 0 to let it succeed.
 *     evq_errmsg() in an after is the failure's message, and stays so
 *     when it keeps rc; a new code's message is the after's own
 *     (evq_handler_reason, or the evq call that failed in it).
 * The worker keeps retries, backoff, timeouts and dead letters: a hook
 * sees one attempt.  In a batch each event gets its own before and after
 * (elapsed_ns from that event's before: the batch and the other events'
 * hooks), events a before failed are left out of the batch, and the
 * batch's failures share one reason.  While an event's hooks and
 * per-event handlers run, the thread's trace context (evq_trace_current)
 * is the event's; a batch handler runs in the thread's own (each event's
 * is evq_event_traceparent).  At most 16 hooks; EVQ_EINVAL for
 * a NULL `events` or two NULL hooks, EVQ_EFULL past 16.  Safe while
 * other threads dispatch (a dispatch sees the hooks added before it
 * began). */
typedef int (*evq_before_fn)(const evq_event *ev, void **call, void *arg);
typedef int (*evq_after_fn)(const evq_event *ev, int rc, int64_t elapsed_ns,
                            void *call, void *arg);
EVQ_API int evq_events_use(evq_events *events, evq_before_fn before,
                           evq_after_fn after, void *arg);

/* ---- W3C trace context ----------------------------------------------------
 * An event carries its trace in the CloudEvents distributed-tracing
 * extension: the attributes `traceparent` ("00-<32 hex trace id>-<16 hex
 * parent id>-<2 hex flags>") and `tracestate`, kept by every backend and
 * format (kafka's binary mode too: ce_traceparent, ce_tracestate).  Each
 * thread has a current trace context: the producer's tracing sets it
 * (evq_trace_set), evq_event_set_trace copies it onto an event in one
 * call, and while an event's hooks and handlers run it is the event's, so
 * a handler continues the trace (and events it enqueues, given
 * evq_event_set_trace(ev, NULL, NULL), carry it on). */

/* Sets the calling thread's trace context (both copied; tracestate may be
 * NULL; traceparent NULL clears both).  EVQ_EINVAL for a malformed
 * traceparent (version ff, ids all zero, not lower-case hex) or a
 * tracestate over 512 bytes or with a byte outside printable ASCII. */
EVQ_API int evq_trace_set(const char *traceparent, const char *tracestate);
/* The calling thread's traceparent and tracestate, NULL when none;
 * borrowed until the thread's context changes. */
EVQ_API const char *evq_trace_current(void);
EVQ_API const char *evq_trace_current_state(void);

/* Sets the event's traceparent and tracestate (tracestate NULL: removed),
 * checked as evq_trace_set; with traceparent NULL, both are the calling
 * thread's current context (`tracestate` is not looked at; EVQ_ENOENT
 * when the thread has none).  Not while other threads use the event. */
EVQ_API int evq_event_set_trace(evq_event *ev, const char *traceparent,
                                const char *tracestate);
/* The event's traceparent, NULL when it has none or a malformed one (the
 * span context a handler continues); its tracestate, NULL when none.
 * Borrowed from the event. */
EVQ_API const char *evq_event_traceparent(const evq_event *ev);
EVQ_API const char *evq_event_tracestate(const evq_event *ev);

/* Moves a dequeued message's event to the queue's dead-letter queue (option
 * dead_letter, default "<name>.dead" on the same backend and URL), with its
 * id and payload intact and the attributes evqerror (`reason`), evqattempts
 * and evqqueue added, and only once that write succeeded acknowledges the
 * original.  Frees `msg` on success; on failure the message is nacked for
 * redelivery (and freed) so nothing is lost, and the code says why. */
EVQ_API int evq_msg_dead_letter(evq_msg *msg, const char *reason);

/* Opens the dead-letter queue of `q` as a queue of its own (to list, replay
 * or purge dead letters).  Ownership as evq_queue_open. */
EVQ_API int evq_queue_open_dead(evq_queue **dead, evq_queue *q);

/* --------------------------------------------------------------------------
 * SQLite: the transactional outbox
 */
struct sqlite3;

/* Enqueues `ev` on queue `queue` of the evq database that `db` (the
 * application's own connection, borrowed) has open, inside the transaction
 * the application holds, so its own writes and the event commit or roll
 * back together.  The event becomes visible to consumers when that
 * transaction commits, after `delay_ms`.  `format` names the codec ("json"
 * when NULL) and must match the queue's.  Creates evq's tables in the file
 * if missing.  Does not begin or commit anything.  Same threading rules as
 * the connection.  EVQ_ENOTSUP in a build without sqlite://. */
EVQ_API int evq_sqlite_enqueue_in(struct sqlite3 *db, const char *queue,
                                  const evq_event *ev, int64_t delay_ms,
                                  const char *format);

/*
 * PostgreSQL: the transactional outbox
 */
struct pg_conn; /* libpq's PGconn */

/* Enqueues `ev` on queue `queue` of the evq tables (schema `evq`) of the
 * database `conn` (the application's own libpq connection, borrowed) is
 * connected to, inside whatever transaction the application holds there,
 * so its own writes and the event commit or roll back together; consumers
 * see the event, and are woken by a notification, once that transaction
 * commits, after `delay_ms`.  `format` names the codec ("json" when NULL)
 * and must match the queue's.  The tables must exist (opening any
 * postgres:// queue of the database makes them).  Does not begin or
 * commit anything; in a transaction already failed it fails too.  Same
 * threading rules as the connection.  EVQ_ESTATE in a read-only
 * transaction, EVQ_ECONN when the connection is not open, EVQ_ENOTSUP in
 * a build without postgres://. */
EVQ_API int evq_pg_enqueue_in(struct pg_conn *conn, const char *queue,
                              const evq_event *ev, int64_t delay_ms,
                              const char *format);

/* --------------------------------------------------------------------------
 * Background processing: the worker pool
 *
 * A worker runs `concurrency` threads that dequeue, dispatch and settle:
 * success acks; a failure is retried (nack with exponential backoff and full
 * jitter) until max_attempts; EVQ_EPERMANENT, exhausted attempts and (unless
 * unhandled=ack) events no handler matched go to the dead-letter queue.
 */
typedef struct evq_worker evq_worker;

typedef enum evq_log_level {
    EVQ_LOG_DEBUG,
    EVQ_LOG_INFO,
    EVQ_LOG_WARN,
    EVQ_LOG_ERROR
} evq_log_level;

/* Called on a worker thread for every failure: a handler error (`ev` set,
 * `attempt` its delivery count), a dead-lettering, or a failure to settle.
 * `reason` is borrowed for the call.  Must not stop the worker. */
typedef void (*evq_error_fn)(const evq_event *ev, int code, const char *reason,
                             int attempt, void *arg);
/* Called on any worker thread (or the one calling start/stop) with one
 * line of text, borrowed for the call.  Lines about a broker (below) come
 * on the client library's threads too. */
typedef void (*evq_log_fn)(evq_log_level level, const char *line, void *arg);

/* Where the library says what a user needs to see of a broker: a lost
 * connection, a reconnect, a client library's warning or error (each line
 * names the queue's URL, password hidden, and name).  A line repeated
 * within 30 s is said once, then counted.  A worker's handle says them to
 * the worker's `log`; every other handle to the function set here (NULL,
 * the default: nowhere; the library never prints).  Any thread; the
 * function must be safe to call from any thread. */
EVQ_API void evq_set_log(evq_log_fn fn, void *arg);

typedef enum evq_unhandled {
    EVQ_UNHANDLED_DEAD_LETTER, /* default: dead-letter with "no handler" */
    EVQ_UNHANDLED_ACK          /* acknowledge and drop */
} evq_unhandled;

/* A rate limit (per_second > 0) or a concurrency cap (max_running > 0) on
 * the handler runs of the events whose type matches `pattern`: see
 * evq_worker_limit and evq_worker_cap. */
typedef struct evq_limit {
    const char *pattern;
    double per_second;
    int burst;
    unsigned flags; /* EVQ_LIMIT_BY_KEY */
    int max_running;
} evq_limit;

typedef struct evq_worker_opts {
    size_t size;      /* set by evq_worker_opts_init (see "The ABI") */
    int concurrency;  /* threads, 1..1024; default 1 */
    int prefetch;     /* events each thread takes ahead, 1..1024; 1 */
    int max_attempts; /* deliveries before dead-lettering, >= 1; 5 */
    int64_t backoff_initial_ms; /* first retry's delay cap; 100 */
    int64_t backoff_max_ms;     /* largest retry delay; 60000 */
    double backoff_multiplier;  /* growth per attempt, >= 1; 2.0 */
    evq_unhandled unhandled;    /* no handler matched; dead letter */
    evq_error_fn on_error;      /* may be NULL */
    void *on_error_arg;
    evq_log_fn log; /* may be NULL: the library never prints */
    void *log_arg;
    /* How often the events a worker holds are touched (evq_msg_touch) so
     * they are not delivered to another consumer meanwhile: the running
     * handlers' events and those prefetched and not started yet.  0
     * (default) means a third of the queue's visibility_timeout_ms on the
     * backends with leases (sqlite, redis, nats), -1 never, else every
     * touch_ms.  Events a backend read ahead (redis.prefetch, nats.prefetch,
     * sqlite.claim_batch) are not touched while they wait in it: one that
     * waited past a third of its lease is touched when handed out, and one
     * whose lease has gone to another consumer is dropped, not run twice. */
    int64_t touch_ms;
    /* Deadline of each handler run, in ms; 0 (default) none, at most
     * 604800000.  At the deadline the worker stops touching the event,
     * counts a failure (timed_out), and retries it with backoff or
     * dead-letters it after max_attempts (evqerror names
     * handler_timeout_ms).  A C thread cannot be stopped safely, so the
     * handler keeps running: its late return is logged and ignored, its
     * thread takes no new event until then, and evq_worker_stop waits for
     * it within its drain deadline.  Handlers should watch
     * evq_handler_expired() and return promptly.  The retry may run while
     * the late handler still does: on memory:// (events passed by
     * reference) both see the same event object, and with
     * kafka.ordering=key the next event of its key may start. */
    int64_t handler_timeout_ms;
    /* Idempotent handling: an event whose source and id (the pair
     * CloudEvents makes unique) this worker (or, where the backend keeps
     * the record, any worker of the queue) finished successfully less
     * than dedup_window_ms ago is acked without its handlers running
     * again, and counted `deduplicated`.  The pair is recorded after the
     * handlers succeed and before the ack, so a
     * worker that dies in between does not run the redelivery again.
     * Shared across processes on memory:// (within the process),
     * sqlite://, postgres:// and redis:// (a record per id that expires
     * with the window); on nats://, kafka:// and amqp:// each worker
     * remembers its own (per process, in memory).  0 (default): off; at
     * most 2592000000 (30 days). */
    int64_t dedup_window_ms;
    /* Limits and caps in force from the first event (each as
     * evq_worker_limit or evq_worker_cap would add it; copied by
     * evq_worker_start, which fails with EVQ_EINVAL naming a bad one).
     * NULL, 0 (default): none. */
    const evq_limit *limits;
    int n_limits;
} evq_worker_opts;

/* Fills `o` with the defaults above and its size (see "The ABI"); `size`
 * is how large the program's evq_worker_opts is. */
EVQ_API void evq_worker_opts_init_sized(evq_worker_opts *o, size_t size);
#define evq_worker_opts_init(o)                                                \
    evq_worker_opts_init_sized((o), sizeof(evq_worker_opts))

/* Starts a worker on `q` with the handlers of `events` (both borrowed: they
 * must outlive the worker).  `opts` is copied; NULL means the defaults.  The
 * worker fetches through a handle of its own on the same queue, so stopping
 * it does not interrupt `q`.  EVQ_EINVAL names a bad option.  On success *w
 * is the caller's, released by evq_worker_free. */
EVQ_API int evq_worker_start(evq_worker **w, evq_queue *q, evq_events *events,
                             const evq_worker_opts *opts);

/* Stops fetching, lets running handlers finish until `drain_timeout_ms`
 * (negative: no limit), hands back (nack without delay) events fetched but
 * not started, and joins the threads.  EVQ_ETIMEDOUT when handlers were
 * still running at the deadline: evq_errmsg() names them, their threads are
 * left to finish (they settle their event when the handler returns) and the
 * `events` registry must outlive them.  EVQ_ESTATE when called twice or from
 * one of the worker's own handlers.  Any thread but the worker's. */
EVQ_API int evq_worker_stop(evq_worker *w, int64_t drain_timeout_ms);

/* Rate limits and caps on the worker's handler runs, for the events whose
 * type matches `pattern` (as handlers take them: "*", "order.*",
 * "order.paid"); an event is held to every limit it matches.
 *
 * evq_worker_limit: a token bucket refilled at `per_second` (above 0, at
 * most 1e9) holding up to `burst` tokens (1 to 1000000; a new bucket is
 * full): each event takes a token before its handlers run.  With
 * EVQ_LIMIT_BY_KEY each `partitionkey` value has a bucket of its own
 * (events without one share one).  The bucket is shared by every worker
 * of the queue, in every process, on sqlite://, postgres:// and redis://
 * (a row, a hash updated by a script; the server's clock on postgres and
 * redis), and by every worker of the process on the others.
 *
 * evq_worker_cap: at most `max_running` (1 to 1024) handler runs of this
 * worker at once (a batch handler's run is one).
 *
 * An event over a limit waits on its worker thread (its lease kept by
 * the worker's touches), then runs: it is not failed, its attempt count is
 * not raised, and it is counted once as `throttled`.  evq_worker_stop
 * hands back events still waiting.  These calls add a limit to a running
 * worker, for the runs that start after them; limits in force from the
 * first event go in evq_worker_opts.limits.  At most 64 limits and caps
 * per worker (EVQ_EFULL).  EVQ_EINVAL names a bad argument.  Any
 * thread. */
#define EVQ_LIMIT_BY_KEY 0x1u
EVQ_API int evq_worker_limit(evq_worker *w, const char *pattern,
                             double per_second, int burst, unsigned flags);
EVQ_API int evq_worker_cap(evq_worker *w, const char *pattern, int max_running);

/* Frees a worker, stopping it first (without a deadline) if it runs.  NULL
 * is a no-op.  Not from one of its own handlers. */
EVQ_API void evq_worker_free(evq_worker *w);

struct evq_worker_stats {
    uint64_t received;      /* events dequeued */
    uint64_t succeeded;     /* acked after their handlers succeeded */
    uint64_t failed;        /* handler failures (each attempt counts) */
    uint64_t retried;       /* nacked for a retry */
    uint64_t dead_lettered; /* moved to the dead-letter queue */
    uint64_t unhandled;     /* no handler matched */
    int64_t in_flight;      /* being handled or prefetched now */
    /* Handler latency percentiles in nanoseconds, from a fixed-size
     * log-linear histogram (within 1/16 of the true value). */
    uint64_t latency_ns_p50, latency_ns_p90, latency_ns_p99, latency_ns_p999;
    uint64_t latency_count;
    uint64_t timed_out;    /* handler runs past handler_timeout_ms (also in
                              failed) */
    uint64_t lease_lost;   /* events whose lease passed to another consumer
                              before this worker settled them (not run, or
                              their ack refused with EVQ_ESTATE) */
    uint64_t deduplicated; /* acked without running: finished before
                              within dedup_window_ms */
    uint64_t throttled;    /* handler runs that waited for a rate limit or
                              a cap (evq_worker_limit, evq_worker_cap) */
};

/* Fills `out` with the worker's counters so far.  Any thread, any time
 * before evq_worker_free. */
EVQ_API int evq_worker_stats_sized(const evq_worker *w,
                                   struct evq_worker_stats *out, size_t size);
#define evq_worker_stats(w, out)                                               \
    evq_worker_stats_sized((w), (out), sizeof(struct evq_worker_stats))

/* Renders the stats of `q` and/or `w` (either may be NULL) in the Prometheus
 * text exposition format (version 0.0.4): evq_prometheus (below) with one
 * of each, so the labels are queue, backend and url (queues) and worker
 * ("worker0") and queue (the worker), the handler latency is a histogram,
 * and a queue whose figures cannot be read shows evq_queue_up 0.  (Before
 * evq serve came: no url or worker label, a summary, and NULL for such a
 * queue.)  malloc'd; the caller frees it.  NULL on allocation failure. */
EVQ_API char *evq_stats_prometheus(evq_queue *q, const evq_worker *w);

/* --------------------------------------------------------------------------
 * The outbox relay
 *
 * Moves events from one queue (an outbox on sqlite:// or postgres://, or
 * any queue) to another (any backend), keeping each event's id, so
 * consumers can deduplicate.  A source event is acked only once the
 * destination reported it stored (its evq_enqueue_async `done` with rc 0).
 */
typedef struct evq_relay_opts {
    size_t size; /* set by evq_relay_opts_init (see "The ABI") */
    /* Events sent and not yet reported stored, 1..100000; 1000.  Their
     * leases at the source are kept (touched) while they are out, so other
     * relays on the same source take other events.  A relay killed
     * mid-stream leaves at most this many to be sent again, plus the acks
     * the source had not yet sent (sqlite.ack_flush_ms,
     * postgres.ack_flush_ms, redis.ack_flush_ms: 0 sends each at once). */
    int window;
    /* Non-zero: return once the source has nothing ready and everything
     * sent was reported (a drain), rather than wait for more; 0. */
    int once;
    /* A source event whose send failed (the destination away, say) is
     * handed back to the source for a retry after this many ms; 1000. */
    int64_t retry_ms;
    evq_log_fn log; /* may be NULL: what fails and recovers, as lines */
    void *log_arg;
} evq_relay_opts;

struct evq_relay_stats {
    uint64_t taken;         /* dequeued from the source */
    uint64_t moved;         /* stored at the destination, acked at the source */
    uint64_t failed;        /* sends that failed: handed back for a retry */
    uint64_t dead_lettered; /* refused for good by the destination
                               (EVQ_ETOOBIG, EVQ_EINVAL): moved to the
                               source's dead-letter queue */
    uint64_t unacked;       /* stored, but the ack at the source failed (its
                               lease passed on): they are sent again */
};

/* Fills `o` with the defaults above and its size (see "The ABI"). */
EVQ_API void evq_relay_opts_init_sized(evq_relay_opts *o, size_t size);
#define evq_relay_opts_init(o)                                                 \
    evq_relay_opts_init_sized((o), sizeof(evq_relay_opts))

/* Relays events from `from` to `to` (both borrowed; distinct handles; `to`
 * may be on any backend) on the calling thread until evq_queue_interrupt
 * is called on `from` (from any thread, or a signal handler's thread), or,
 * with opts->once, until the source is drained.  Then it sends nothing
 * more, waits for every event out to be reported (evq_flush of `to`) and
 * settles it at the source, and returns.  `opts` NULL: the defaults.
 * `stats` (may be NULL) gets the counts.  Sends that fail are handed back
 * to the source and come again: nothing taken is lost.  Returns 0; with
 * once, the first send failure's code when some failed (they stay in the
 * source, evq_errmsg() counts them); EVQ_EINVAL for a bad option; or the
 * source's error when taking from it fails otherwise than by a server
 * away (then reconnects are waited for, and said to opts->log).  The
 * handles may not be used by other threads for dequeueing (`from`) or
 * flushing (`to`) meanwhile. */
EVQ_API int evq_relay_sized(evq_queue *from, evq_queue *to,
                            const evq_relay_opts *opts,
                            struct evq_relay_stats *stats, size_t stats_size);
#define evq_relay(from, to, opts, stats)                                       \
    evq_relay_sized((from), (to), (opts), (stats),                             \
                    sizeof(struct evq_relay_stats))

/* ---- periodic events ------------------------------------------------------
 * A scheduler enqueues a copy of each template at every time its cron
 * expression names.  Each time (a slot) is enqueued once however many
 * schedulers run with the same schedules, in any number of processes,
 * where the queue's backend holds unique keys for every producer (sqlite,
 * postgres, redis; nats within the stream's duplicate window): the copy
 * carries the unique key "evq-schedule:<schedule>:<slot ms>", so the first
 * scheduler to enqueue it wins.  On memory, kafka and amqp the keys are
 * the process's: run one scheduler process there.  The copy's id is
 * "evq-schedule-<schedule>-<slot ms>" and its time the slot's; the rest
 * is the template's.  <schedule> is a hash of the expression, the zone,
 * and the template's type, source, subject and data.  The copies carry
 * evquniqueuntil=ttl: a slot stays taken for its TTL (catch_up_ms plus an
 * hour), whatever the queue's unique_until. */
typedef struct evq_scheduler evq_scheduler;

/* Slots missed while no scheduler ran may be caught up to this long (7
 * days) before a start. */
#define EVQ_SCHEDULE_MAX_CATCH_UP_MS (7LL * 86400 * 1000)

typedef struct evq_scheduler_opts {
    size_t size; /* set by evq_scheduler_opts_init (see "The ABI") */
    /* Slots that passed within catch_up_ms before evq_scheduler_start
     * (downtime, a stop) are enqueued at once, late, unless enqueued
     * already; 0 (the default): they are skipped, and the first slot is
     * the first after the start.  0 to EVQ_SCHEDULE_MAX_CATCH_UP_MS. */
    int64_t catch_up_ms;
} evq_scheduler_opts;

struct evq_scheduler_stats {
    uint64_t enqueued; /* slots this scheduler enqueued */
    uint64_t taken;    /* slots another scheduler had enqueued first */
    uint64_t missed;   /* slots whose enqueue failed until the next one */
};

/* Fills `o` with the defaults above and its size (see "The ABI"). */
EVQ_API void evq_scheduler_opts_init_sized(evq_scheduler_opts *o, size_t size);
#define evq_scheduler_opts_init(o)                                             \
    evq_scheduler_opts_init_sized((o), sizeof(evq_scheduler_opts))

/* A scheduler that enqueues on `q` (borrowed: it must outlive the
 * scheduler; other threads may use it meanwhile).  `o` NULL: the
 * defaults.  EVQ_EINVAL for a bad option.  Any thread. */
EVQ_API int evq_scheduler_new(evq_scheduler **s, evq_queue *q,
                              const evq_scheduler_opts *o);

/* Adds a schedule: `cron` is a standard five-field expression, "minute
 * hour day-of-month month day-of-week", with '*', numbers, ranges a-b,
 * steps ('*' or a range, then /n; a/n runs from a to the field's end),
 * lists a,b and names JAN-DEC, SUN-SAT; or one of
 * @yearly @annually @monthly @weekly @daily @midnight @hourly.  When both
 * day fields are restricted a day matching either runs.  `tz` is an IANA
 * zone ("Europe/Berlin"; NULL or "UTC": UTC), on whose civil clock the
 * expression is read.  Daylight saving time: a minute the clocks skip
 * (spring forward) runs at the first minute after the gap; a minute they
 * repeat (fall back) runs once, the first time.  `tmpl` is copied.
 * EVQ_EINVAL naming the bad field ("cron \"61 * * * *\": minute: 61 is out
 * of 0-59"), an unknown zone, or an expression that never matches (30
 * February); EVQ_ESTATE while the scheduler runs.  Any thread. */
EVQ_API int evq_schedule_add(evq_scheduler *s, const char *cron, const char *tz,
                             const evq_event *tmpl);

/* Starts the scheduler's thread.  A slot whose enqueue fails (the server
 * away) is tried every second until the schedule's next slot is due, then
 * counted missed.  EVQ_EINVAL without schedules, EVQ_ESTATE when
 * running. */
EVQ_API int evq_scheduler_start(evq_scheduler *s);

/* Stops the thread (an enqueue in progress finishes first); it may be
 * started again.  0, or EVQ_EINVAL for NULL.  Not from two threads at
 * once. */
EVQ_API int evq_scheduler_stop(evq_scheduler *s);

/* The scheduler's counts since it was made.  Any thread. */
EVQ_API void evq_scheduler_stats_sized(const evq_scheduler *s,
                                       struct evq_scheduler_stats *out,
                                       size_t size);
#define evq_scheduler_stats(s, out)                                            \
    evq_scheduler_stats_sized((s), (out), sizeof(struct evq_scheduler_stats))

/* Stops and frees (NULL: nothing); the queue stays open. */
EVQ_API void evq_scheduler_free(evq_scheduler *s);

/* ---- a window: evq_serve --------------------------------------------------
 * An HTTP server (libmicrohttpd, on a thread of its own) that shows queues
 * and workers: GET /metrics (Prometheus text format), GET /api/... (JSON:
 * queues, a queue's dead letters, workers) and a dashboard at / (HTML, CSS
 * and JavaScript served from the library; nothing is fetched elsewhere).
 * The endpoints are listed in docs/serve.md.  Reading needs nothing;
 * changing state (replaying or purging dead letters, pausing and resuming)
 * needs a POST carrying the token in an "Authorization: Bearer" or
 * "X-Evq-Token" header, from no other origin; without a token set nothing
 * can be changed (403).  Requests whose Host is not an IP address,
 * "localhost" or one of allow_hosts get 421 (a defence against DNS
 * rebinding; a request without Host, HTTP/1.0, is answered); requests to
 * /api/ and /metrics a browser says come from another site
 * (Sec-Fetch-Site) get 403.
 * Behind a reverse proxy, keep Host and use plain HTTP to the server:
 * changes compare Origin with "http://" + Host.  URLs are shown with
 * passwords and secret options redacted.
 * EVQ_ENOTSUP everywhere when the library was built without libmicrohttpd
 * (EVQ_WITH_SERVE=OFF). */
typedef struct evq_server evq_server;

typedef struct evq_serve_opts {
    size_t size; /* set by evq_serve_opts_init (see "The ABI") */
    /* "HOST:PORT" or "[IPV6]:PORT" to listen on; "127.0.0.1:9188".  Port 0
     * takes a free one (evq_serve_port tells which).  An address other
     * than loopback opens the figures and payloads to that network. */
    const char *listen;
    /* The token that allows changes (copied); NULL: none can be made.  At
     * least 16 characters. */
    const char *token;
    /* Host names besides IP addresses and "localhost" that requests may
     * name in their Host header, comma-separated (copied); NULL: none. */
    const char *allow_hosts;
    /* How often each queue's figures are read for the rates and the
     * dashboard's chart, 100..3600000 ms; 2000.  The last 120 readings are
     * kept. */
    int64_t sample_ms;
    /* Dead letters read at most per listing (a listing takes them and
     * hands them back, sorted by time), 1..100000; 10000. */
    int max_dead_scan;
    evq_log_fn log; /* may be NULL: what fails, as lines */
    void *log_arg;
} evq_serve_opts;

/* Fills `o` with the defaults above and its size (see "The ABI"). */
EVQ_API void evq_serve_opts_init_sized(evq_serve_opts *o, size_t size);
#define evq_serve_opts_init(o)                                                 \
    evq_serve_opts_init_sized((o), sizeof(evq_serve_opts))

/* A server, not yet listening.  `o` NULL: the defaults.  EVQ_EINVAL for a
 * bad option (named in evq_errmsg: a listen address that is not HOST:PORT
 * or cannot be resolved, a short token...).  Any thread. */
EVQ_API int evq_serve_new(evq_server **s, const evq_serve_opts *o);

/* Shows queue `q` (borrowed: it must outlive the server; other threads may
 * use it meanwhile).  The server opens its dead-letter queue when a page
 * asks for it, and replays onto `q`.  Before evq_serve_start only
 * (EVQ_ESTATE after); EVQ_EEXIST when that queue (the same name, backend
 * and URL without options: the same Prometheus series) is shown
 * already. */
EVQ_API int evq_serve_queue(evq_server *s, evq_queue *q);

/* Shows the counters of worker `w` (borrowed, as above) under `name`
 * (copied; NULL: "worker<N>"), the Prometheus label worker=.  Before
 * evq_serve_start only; EVQ_EEXIST for a worker or name given already. */
EVQ_API int evq_serve_worker(evq_server *s, const evq_worker *w,
                             const char *name);

/* Binds and starts serving.  EVQ_EIO naming the address when it cannot be
 * bound (in use, not local), EVQ_ESTATE when started already. */
EVQ_API int evq_serve_start(evq_server *s);

/* The port the server listens on (after evq_serve_start), else 0. */
EVQ_API int evq_serve_port(const evq_server *s);

/* Stops serving (requests in progress finish first) and frees; the queues
 * and workers stay.  NULL: nothing.  Not from two threads at once. */
EVQ_API void evq_serve_free(evq_server *s);

/* Renders the figures of every queue and worker given in one Prometheus
 * text exposition (version 0.0.4), each metric family once: what GET
 * /metrics serves.  `queues`/`workers` may be NULL with a count of 0;
 * `worker_names` may be NULL ("worker<N>").  Queue series carry the labels
 * queue, backend and url (redacted, without options); worker series also
 * worker.  The handler latency is a histogram in seconds.  A queue whose
 * figures cannot be read gets evq_queue_up 0 and no other series.
 * malloc'd; NULL on allocation failure. */
EVQ_API char *evq_prometheus(evq_queue *const *queues, size_t nqueues,
                             const evq_worker *const *workers,
                             const char *const *worker_names, size_t nworkers);

/* The URL `q` was opened with, its password and secret options replaced
 * by "***" (safe to show), borrowed from `q`. */
EVQ_API const char *evq_queue_url(const evq_queue *q);

/* Replays a dead letter: enqueues a copy of the event of `msg` (dequeued
 * from a dead-letter queue) onto `to`, without the attributes evqerror,
 * evqattempts and evqqueue and marked evqreplayed (the time, in ms, so a
 * backend dropping duplicate ids keeps it), then acks `msg`.  `msg` is
 * freed in every case.  When the enqueue fails, `msg` is nacked (the
 * letter stays) and the code is the enqueue's.  EVQ_EINVAL, nacked, for a
 * letter cut short (evqtruncated: an undecodable or oversize message's
 * bytes), which is no event to send again.  When the enqueue succeeded but
 * the ack failed the copy is out and the letter stays (a later replay
 * sends it again): the code is the ack's.  Threading as evq_enqueue. */
EVQ_API int evq_msg_replay(evq_msg *msg, evq_queue *to);

#ifdef __cplusplus
}
#endif

#endif /* EVQ_H */
