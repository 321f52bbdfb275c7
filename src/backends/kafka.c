/*
 * kafka.c - queues on Kafka: kafka://host:port[,host:port].
 *
 * A queue is a topic of the same name, read by the consumer group
 * kafka.group (default "evq.<queue>").  Any librdkafka property can be
 * given as rdkafka.<property>=value; librdkafka checks it at open.
 *
 * - Enqueue: an idempotent producer (acks=all); a call returns once every
 *   delivery report of its events arrived.  The event's partitionkey
 *   attribute is the message key, so one key stays in one partition, in
 *   order.  Messages are structured-mode CloudEvents (header content-type
 *   application/cloudevents+json, or +msgpack with format=msgpack);
 *   binary-mode messages (ce_* headers, the
 *   data as the value) are read too.
 * - Consume: auto-commit off.  Events go to the worker threads in any
 *   order, and a partition's offset is committed only up to its first
 *   event not yet finished (acked, dead-lettered or nacked), so a crash
 *   never skips unfinished work; at most kafka.max_in_flight events per
 *   partition are out at once (the partition is paused meanwhile).  A
 *   consumer joins the group at its first dequeue, so a handle that only
 *   produces takes no partitions.
 * - Nack, delayed enqueue: the event is produced again with the kit's
 *   headers evq-attempt (deliveries so far) and evq-due (Unix ms; the
 *   evq_attempt and evq_due of earlier versions are read too), and the
 *   nacked offset counts as finished.  The read-ahead holds an event that
 *   is not due yet in memory, unfinished, so only its own partition's
 *   commits wait for it; other partitions go on.
 * - kafka.ordering=key: each message's key is its delivery's ordering
 *   key, so the read-ahead hands out one event of a key at a time.
 * - On a rebalance, finished offsets of the revoked partitions are
 *   committed synchronously; what was polled and not yet fetched is
 *   dropped, and the partition's new owner reads it again (what the
 *   read-ahead holds may still be handled here: at least once).
 * - Long handlers: librdkafka takes a consumer that has not polled for
 *   max.poll.interval.ms out of its group, and its unfinished events to
 *   another member (or back to itself, read again).  So while every thread
 *   of a handle is busy elsewhere, a keepalive (the flusher helper, as a
 *   timer) polls for it every third of that interval: events stay with
 *   their consumer for as long as it lives, and touch has nothing to do.
 */
#include "../internal.h"

#include <ctype.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct kcfg {
    const char *group;
    int ce_mode;  /* CE_STRUCTURED or CE_BINARY */
    int ordering; /* ORDER_NONE or ORDER_KEY */
    bool create_topics;
    int64_t partitions, replication, create_timeout_ms, max_in_flight,
        timeout_ms, connect_timeout_ms, commit_interval_ms;
} kcfg;

enum { CE_STRUCTURED, CE_BINARY };
enum { ORDER_NONE, ORDER_KEY };

static const evq__opt_spec kafka_opts[] = {
    {"kafka.group", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "consumer group (default: evq.<queue>)", EVQ__AT(kcfg, group)},
    {"kafka.ce_mode", EVQ__OPT_ENUM, "structured", 0, 0, "structured|binary",
     "CloudEvents on Kafka: the whole event as the value (structured) or "
     "attributes as ce_* headers and the data as the value (binary)",
     EVQ__AT(kcfg, ce_mode)},
    {"kafka.ordering", EVQ__OPT_ENUM, "none", 0, 0, "none|key",
     "key: events with the same partitionkey are never handled at once (the "
     "next waits until the one before is settled)",
     EVQ__AT(kcfg, ordering)},
    {"kafka.create_topics", EVQ__OPT_BOOL, "true", 0, 0, NULL,
     "create a missing topic with the Admin API at open (kafka.partitions, "
     "kafka.replication); when the broker cannot, the broker's own "
     "auto-creation on first use is relied on",
     EVQ__AT(kcfg, create_topics)},
    {"kafka.partitions", EVQ__OPT_INT, "4", 1, 100000, NULL,
     "partitions of a topic evq creates", EVQ__AT(kcfg, partitions)},
    {"kafka.replication", EVQ__OPT_INT, "-1", -1, 32767, NULL,
     "replication factor of a topic evq creates (-1: the broker's default)",
     EVQ__AT(kcfg, replication)},
    {"kafka.create_timeout_ms", EVQ__OPT_INT, "5000", 100, 600000, NULL,
     "longest open waits for the topic's creation",
     EVQ__AT(kcfg, create_timeout_ms)},
    {"kafka.prefetch", EVQ__OPT_INT, "256", 1, 100000, NULL,
     "messages taken from the consumer at once", 0},
    {"kafka.max_in_flight", EVQ__OPT_INT, "1000", 1, 1000000, NULL,
     "events of one partition handed out and not finished before the "
     "partition is paused",
     EVQ__AT(kcfg, max_in_flight)},
    {"kafka.timeout_ms", EVQ__OPT_INT, "30000", 100, 3600000, NULL,
     "longest an enqueue waits for its delivery reports",
     EVQ__AT(kcfg, timeout_ms)},
    EVQ__CONNECT_TIMEOUT_OPT(kcfg),
    {"kafka.commit_interval_ms", EVQ__OPT_INT, "200", 0, 60000, NULL,
     "how often finished offsets are committed",
     EVQ__AT(kcfg, commit_interval_ms)},
    {"rdkafka.", EVQ__OPT_PREFIX, NULL, 0, 0, NULL,
     "any librdkafka property, e.g. rdkafka.security.protocol=ssl", 0},
    {0},
};

/* ---- offsets in flight, per partition ------------------------------------ */

typedef struct koff {
    int64_t offset;
    bool done;
} koff;

typedef struct kpart {
    int32_t partition;
    koff *q; /* ring of offsets handed out or held, in offset order */
    size_t head, n, cap;
    int64_t next; /* the offset after the last one taken */
    int64_t committed;
    bool paused;
} kpart;

typedef struct kmsg {
    rd_kafka_message_t *rm;
    int32_t partition;
    int64_t offset;
    int64_t due; /* Unix ms; 0 when due */
    int attempt;
    evq_event *ev; /* built from ce_* headers (binary mode) */
    char *key;     /* with kafka.ordering=key: its ordering key */
} kmsg;

/* A batch handed to librdkafka, waiting for its delivery reports. */
typedef struct kbatch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t left;              /* reports still to come */
    rd_kafka_resp_err_t err;  /* the first report's error */
    rd_kafka_resp_err_t fail; /* why producing stopped short, or 0 */
} kbatch;

typedef struct khandle {
    char *topic, *group, *brokers;
    bool group_given;         /* by kafka.group, not derived from the name */
    const char *content_type; /* structured mode's, by the queue's format */
    evq_codec_limits lim;     /* max_event_bytes, max_depth */
    bool binary;
    bool by_key; /* kafka.ordering=key */
    int max_in_flight;
    int64_t timeout_ms, commit_every_ms;
    evq__optset props; /* rdkafka.* given */
    const evq__optset *opts_ref;
    /* producer: its own poll thread serves delivery reports */
    rd_kafka_t *prod;
    pthread_t prod_thread;
    atomic_bool prod_stop;
    /* consumer, made at the first dequeue */
    pthread_mutex_t rd_mu; /* consumer polls and the polled buffer */
    rd_kafka_t *cons;
    kmsg **buf; /* polled, not yet fetched (the keepalive polls too) */
    size_t n_buf, cap_buf;
    pthread_mutex_t trk_mu; /* partitions' offsets */
    kpart *parts;
    size_t n_parts;
    int64_t last_commit_ms;
    char create_note[400]; /* why the Admin API could not create the topic */
    pthread_mutex_t note_mu;
    /* librdkafka's last "Invalid response size" (a message past
     * receive.message.max.bytes), when it came and when a dequeue last
     * reported it (under note_mu) */
    char size_note[300];
    int64_t size_note_ms, size_told_ms;
    char broker_note[300]; /* librdkafka's last error event (TLS, SASL, ...)
                              since the last enqueue that worked */
    bool commit_due;
    /* when librdkafka last said every broker was down (0: not since the
     * last probe found one up), and when a dequeue last probed */
    _Atomic int64_t down_ms;
    int64_t probed_ms;
    int64_t connect_ms; /* connect_timeout_ms */
    evq__reconnect reconnect;
    evq__logger *log;
    /* keepalive: polls when no dequeue did for keep_every_ns */
    evq__flusher keep;
    bool keep_armed;
    int64_t keep_every_ns;
    _Atomic int64_t last_poll_ns;
    atomic_bool interrupted;
    char errbuf[512];
} khandle;

static int64_t now_ms(void)
{
    return evq__now_real_ns() / 1000000;
}

static int kerr(rd_kafka_resp_err_t e, const char *what)
{
    int code = EVQ_EIO;
    switch (e) {
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
        code = EVQ_ECONN;
        break;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
        code = EVQ_ETOOBIG;
        break;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        code = EVQ_EFULL;
        break;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
        code = EVQ_EINVAL;
        break;
    default:
        break;
    }
    return evq__err(code, "kafka %s: %s", what, rd_kafka_err2str(e));
}

/* ---- configuration ---------------------------------------------------------
 */

/* librdkafka logs to stderr unless told otherwise; the library never
 * prints, and what matters reaches the caller as an error. */
/* librdkafka's warnings and errors (syslog levels 0 to 4) go to the
 * handle's log; its notices and debug lines nowhere. */
static void kafka_log(const rd_kafka_t *rk, int level, const char *fac,
                      const char *buf)
{
    khandle *h = rd_kafka_opaque(rk);
    /* rdkafka.* options go to the producer and the consumer alike: that
     * each ignores the other's is no news */
    if (strcmp(fac, "CONFWARN") == 0 && strstr(buf, "will be ignored by this"))
        return;
    if (h && level <= 4)
        evq__logf(h->log, level <= 3 ? EVQ_LOG_ERROR : EVQ_LOG_WARN,
                  "librdkafka %s: %s", fac, buf);
}

/* The end of an outage (delivery or metadata from a broker). */
static void broker_back(khandle *h)
{
    if (atomic_exchange(&h->down_ms, 0))
        evq__logf(h->log, EVQ_LOG_INFO, "a broker is reachable again");
}

/* librdkafka reports connection trouble (a TLS handshake, SASL, a refused
 * connection) as error events, not in the delivery report: the last one is
 * kept to explain a later failure. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    khandle *h = opaque;
    if (!h)
        return;
    /* The outage's start: all brokers down, or a connection that failed
     * (with a single broker behind a bootstrap address librdkafka may
     * never count all of them down); a metadata answer or a delivery
     * ends it. */
    int64_t zero = 0;
    if ((err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ||
         err == RD_KAFKA_RESP_ERR__TRANSPORT) &&
        atomic_compare_exchange_strong(&h->down_ms, &zero, now_ms()))
        evq__logf(h->log, EVQ_LOG_WARN,
                  "lost the connection to a broker (%s); reconnecting", reason);
    else
        evq__logf(h->log, EVQ_LOG_WARN, "librdkafka: %s (%s)", reason,
                  rd_kafka_err2name((rd_kafka_resp_err_t)err));
    pthread_mutex_lock(&h->note_mu);
    snprintf(h->broker_note, sizeof h->broker_note, "%s (%s)", reason,
             rd_kafka_err2name((rd_kafka_resp_err_t)err));
    if (strstr(reason, "receive.message.max.bytes")) {
        snprintf(h->size_note, sizeof h->size_note, "%s", reason);
        h->size_note_ms = now_ms();
    }
    pthread_mutex_unlock(&h->note_mu);
}

/* Whether librdkafka failed lately to take a fetch answer past
 * receive.message.max.bytes: a message too large to read at all holds its
 * partition back.  Sets that error, at most once per 5 s, so a waiting
 * dequeue says so instead of waiting silently. */
static int size_failure(khandle *h)
{
    int rc = 0;
    int64_t now = now_ms();
    pthread_mutex_lock(&h->note_mu);
    if (h->size_note[0] && now - h->size_note_ms < 60000 &&
        now - h->size_told_ms >= 5000) {
        h->size_told_ms = now;
        rc = evq__err(EVQ_ETOOBIG,
                      "kafka topic '%s' holds a message larger than "
                      "rdkafka.receive.message.max.bytes lets evq read, and "
                      "its partition is stuck until that is raised or the "
                      "message is removed: %s",
                      h->topic, h->size_note);
    }
    pthread_mutex_unlock(&h->note_mu);
    return rc;
}

/* Whether the consumer can reach no broker (rd_mu held): once librdkafka
 * said all were down, a metadata request (at most once a second, 500 ms)
 * tells whether one is back.  EVQ_ECONN with the broker's last error
 * while none is, so a waiting dequeue says so instead of waiting in
 * silence. */
static int brokers_down(khandle *h)
{
    int64_t now = now_ms();
    if (!atomic_load(&h->down_ms))
        return 0;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN;
    if (now - h->probed_ms >= 1000) { /* else the last probe's answer */
        h->probed_ms = now;
        const struct rd_kafka_metadata *md = NULL;
        e = rd_kafka_metadata(h->cons, 0, NULL, &md, 500);
        if (!e) {
            rd_kafka_metadata_destroy(md);
            broker_back(h);
            return 0;
        }
    }
    char note[300];
    pthread_mutex_lock(&h->note_mu);
    snprintf(note, sizeof note, "%s", h->broker_note);
    pthread_mutex_unlock(&h->note_mu);
    return evq__err(EVQ_ECONN, "kafka: no broker of %s reachable: %s",
                    h->brokers, note[0] ? note : rd_kafka_err2str(e));
}

/* Adds the broker's last error since the last enqueue that worked, if
 * any, to the current error message. */
static int with_broker_note(khandle *h, int rc)
{
    char note[300];
    pthread_mutex_lock(&h->note_mu);
    snprintf(note, sizeof note, "%s", h->broker_note);
    pthread_mutex_unlock(&h->note_mu);
    if (note[0]) {
        char first[512];
        snprintf(first, sizeof first, "%s", evq_errmsg());
        evq__err(rc, "%s; last broker error: %s", first, note);
    }
    return rc;
}

/* Whether no broker has been reachable for connect_timeout_ms: librdkafka
 * said all were down that long ago, and the producer's metadata request
 * (500 ms) still gets no answer.  An answer ends the outage. */
static bool down_too_long(khandle *h)
{
    int64_t down = atomic_load(&h->down_ms);
    if (!down || now_ms() - down < h->connect_ms)
        return false;
    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(h->prod, 0, NULL, &md, 500) == 0) {
        rd_kafka_metadata_destroy(md);
        if (atomic_compare_exchange_strong(&h->down_ms, &down, 0))
            evq__logf(h->log, EVQ_LOG_INFO, "a broker is reachable again");
        return false;
    }
    return true;
}

/* The error of an enqueue cut off by down_too_long. */
static int cut_off(khandle *h)
{
    return with_broker_note(
        h, evq__err(EVQ_ECONN,
                    "kafka: no broker of %s reachable for %lld ms "
                    "(connect_timeout_ms); the enqueue was given up (an "
                    "event already sent may still have been stored)",
                    h->brokers, (long long)h->connect_ms));
}

/* A librdkafka configuration with the brokers, the rdkafka.* properties and
 * `extra` (NULL-ended name, value pairs); NULL with the error set. */
static rd_kafka_conf_t *make_conf(khandle *h, const char *const *extra, int *rc)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    char err[512];
#define SET(k, v)                                                              \
    do {                                                                       \
        if (rd_kafka_conf_set(c, (k), (v), err, sizeof err) !=                 \
            RD_KAFKA_CONF_OK) {                                                \
            *rc = evq__opt_is_secret((k), strlen(k))                           \
                      ? evq__err(EVQ_EINVAL, "kafka option %s: invalid value", \
                                 (k))                                          \
                      : evq__err(EVQ_EINVAL, "kafka option %s: %s", (k), err); \
            rd_kafka_conf_destroy(c);                                          \
            return NULL;                                                       \
        }                                                                      \
    } while (0)
    rd_kafka_conf_set_log_cb(c, kafka_log);
    rd_kafka_conf_set_error_cb(c, on_error);
    rd_kafka_conf_set_opaque(c, h);
    SET("bootstrap.servers", h->brokers);
    char setup_ms[32]; /* librdkafka takes no less than a second */
    snprintf(setup_ms, sizeof setup_ms, "%lld",
             (long long)(h->connect_ms < 1000 ? 1000 : h->connect_ms));
    SET("socket.connection.setup.timeout.ms", setup_ms);
    char backoff[32], backoff_max[32]; /* the kit's reconnect policy */
    snprintf(backoff, sizeof backoff, "%lld",
             (long long)h->reconnect.initial_ms);
    snprintf(backoff_max, sizeof backoff_max, "%lld",
             (long long)h->reconnect.max_ms);
    SET("reconnect.backoff.ms", backoff);
    SET("reconnect.backoff.max.ms", backoff_max);
    for (size_t i = 0; extra && extra[i]; i += 2)
        SET(extra[i], extra[i + 1]);
    for (size_t i = 0; i < h->props.n; i++)
        SET(h->props.kv[i].key, h->props.kv[i].value);
#undef SET
    return c;
}

/* ---- producer
 * ---------------------------------------------------------------- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m,
                        void *opaque)
{
    (void)rk;
    khandle *h = opaque;
    kbatch *b = m->_private;
    if (!m->err && h && atomic_load(&h->down_ms)) /* a broker took it */
        broker_back(h);
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    if (m->err && !b->err)
        b->err = m->err;
    if (--b->left == 0)
        pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void *prod_main(void *arg)
{
    khandle *h = arg;
    while (!atomic_load(&h->prod_stop))
        rd_kafka_poll(h->prod, 100);
    return NULL;
}

static int open_producer(khandle *h)
{
    int rc = 0;
    char tmo[32];
    snprintf(tmo, sizeof tmo, "%lld", (long long)h->timeout_ms);
    const char *extra[] = {
        "enable.idempotence", "true", "acks", "all", "message.timeout.ms", tmo,
        "linger.ms",          "1",    NULL};
    rd_kafka_conf_t *c = make_conf(h, extra, &rc);
    if (!c)
        return rc;
    rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
    char err[512];
    h->prod = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    if (!h->prod) {
        rd_kafka_conf_destroy(c);
        return evq__err(EVQ_EINVAL, "kafka producer: %s", err);
    }
    atomic_init(&h->prod_stop, false);
    if (pthread_create(&h->prod_thread, NULL, prod_main, h) != 0) {
        rd_kafka_destroy(h->prod);
        h->prod = NULL;
        return evq__err(EVQ_ENOMEM, "cannot start the kafka poll thread");
    }
    return 0;
}

/* Waits up to connect_timeout_ms for a broker to answer a metadata
 * request: what open does before it creates or looks up the topic. */
static int reach_brokers(khandle *h)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e =
        rd_kafka_metadata(h->prod, 0, NULL, &md, (int)h->connect_ms);
    if (!e) {
        rd_kafka_metadata_destroy(md);
        return 0;
    }
    return with_broker_note(
        h, evq__err(EVQ_ECONN,
                    "kafka: no broker of %s reachable within %lld ms "
                    "(connect_timeout_ms): %s",
                    h->brokers, (long long)h->connect_ms, rd_kafka_err2str(e)));
}

/* Admin API options with both timeouts set to tmo ms. */
static rd_kafka_AdminOptions_t *admin_options(khandle *h,
                                              rd_kafka_admin_op_t op, int tmo)
{
    char err[256];
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(h->prod, op);
    rd_kafka_AdminOptions_set_request_timeout(ao, tmo, err, sizeof err);
    rd_kafka_AdminOptions_set_operation_timeout(ao, tmo, err, sizeof err);
    return ao;
}

/* The outcome for the one topic of a CreateTopics or DeleteTopics result
 * (`ev` NULL: the wait timed out), and the broker's words in *why. */
static rd_kafka_resp_err_t topic_outcome(rd_kafka_event_t *ev, const char **why)
{
    if (!ev)
        return RD_KAFKA_RESP_ERR__TIMED_OUT;
    if (rd_kafka_event_error(ev)) {
        *why = rd_kafka_event_error_string(ev);
        return rd_kafka_event_error(ev);
    }
    size_t cnt = 0;
    const rd_kafka_topic_result_t **tr =
        rd_kafka_event_type(ev) == RD_KAFKA_EVENT_CREATETOPICS_RESULT
            ? rd_kafka_CreateTopics_result_topics(
                  rd_kafka_event_CreateTopics_result(ev), &cnt)
            : rd_kafka_DeleteTopics_result_topics(
                  rd_kafka_event_DeleteTopics_result(ev), &cnt);
    if (cnt != 1)
        return RD_KAFKA_RESP_ERR__FAIL;
    *why = rd_kafka_topic_result_error_string(tr[0]);
    return rd_kafka_topic_result_error(tr[0]);
}

/* Creates the topic (and its dead-letter twin is made the same way when
 * opened) with the Admin API.  A topic that exists is fine.  When the
 * broker cannot create it in time (no Admin API, no controller), the
 * reason is kept for the errors of later calls and the broker's own
 * auto-creation on first use is relied on. */
static void create_topic(khandle *h, const kcfg *cfg)
{
    char err[512];
    int partitions = (int)cfg->partitions;
    int replication = (int)cfg->replication;
    int tmo = (int)cfg->create_timeout_ms;
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(
        h->topic, partitions, replication, err, sizeof err);
    if (!nt) {
        snprintf(h->create_note, sizeof h->create_note, "%.200s", err);
        return;
    }
    rd_kafka_AdminOptions_t *ao =
        admin_options(h, RD_KAFKA_ADMIN_OP_CREATETOPICS, tmo);
    rd_kafka_queue_t *rq = rd_kafka_queue_new(h->prod);
    rd_kafka_CreateTopics(h->prod, &nt, 1, ao, rq);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(rq, tmo + 2000);
    const char *why = NULL;
    rd_kafka_resp_err_t e = topic_outcome(ev, &why);
    if (e && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
        snprintf(h->create_note, sizeof h->create_note,
                 "creating topic '%.64s' failed (%s), relying on the "
                 "broker's auto-creation",
                 h->topic, why ? why : rd_kafka_err2str(e));
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(rq);
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_NewTopic_destroy(nt);
}

/* Produces one message; headers, when given, pass to librdkafka. */
static rd_kafka_resp_err_t produce(khandle *h, const void *val, size_t len,
                                   const char *key, rd_kafka_headers_t *hdrs,
                                   kbatch *b)
{
    for (;;) {
        rd_kafka_resp_err_t e = rd_kafka_producev(
            h->prod, RD_KAFKA_V_TOPIC(h->topic),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_VALUE((void *)val, len),
            RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
            RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(b), RD_KAFKA_V_END);
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            return e;
        rd_kafka_poll(h->prod, 10); /* the local queue is full: wait */
    }
}

/* The headers of a binary-mode message for `ev` (ce_* attributes and
 * content-type), and its data as the value (*val, *len; *owned to free). */
static rd_kafka_headers_t *binary_headers(const evq_event *ev, char **owned,
                                          const void **val, size_t *len)
{
    evq__header hs[64];
    size_t n = sizeof hs / sizeof *hs;
    if (evq__ce_to_binary(ev, hs, &n, owned, val, len) != 0)
        return NULL;
    rd_kafka_headers_t *hd = rd_kafka_headers_new(n + 2);
    for (size_t i = 0; i < n; i++)
        rd_kafka_header_add(hd, hs[i].name, -1, hs[i].value,
                            (ssize_t)hs[i].len);
    return hd;
}

static void kbatch_free(kbatch *b)
{
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b);
}

/* Hands the items to librdkafka, in order; kafka_finish waits for their
 * delivery reports. */
static int kafka_start(void *state, const evq__item *items, size_t n,
                       void **ticket)
{
    khandle *h = state;
    if (atomic_load(&h->interrupted))
        return evq__err(EVQ_ECLOSED, "queue interrupted");
    kbatch *b = malloc(sizeof *b);
    if (!b)
        return evq__err(EVQ_ENOMEM, "out of memory");
    *b = (kbatch){.left = n};
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    int64_t now = now_ms();
    size_t queued = 0;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;

    for (size_t i = 0; i < n && !e; i++) {
        const evq__item *it = &items[i];
        const char *key =
            it->ev ? evq_event_attr(it->ev, "partitionkey") : NULL;
        char *owned = NULL;
        const void *val = it->bytes;
        size_t len = it->len;
        rd_kafka_headers_t *hd;
        if (h->binary && it->ev) {
            if (!(hd = binary_headers(it->ev, &owned, &val, &len))) {
                e = RD_KAFKA_RESP_ERR__BAD_MSG;
                break;
            }
        } else {
            hd = rd_kafka_headers_new(3);
            rd_kafka_header_add(hd, "content-type", -1, h->content_type, -1);
        }
        if (it->delay_ms > 0) {
            char due[32];
            snprintf(due, sizeof due, "%lld", (long long)(now + it->delay_ms));
            rd_kafka_header_add(hd, EVQ__HDR_DUE, -1, due, -1);
        }
        e = produce(h, val, len, key, hd, b);
        free(owned);
        if (e)
            rd_kafka_headers_destroy(hd); /* kept by librdkafka otherwise */
        else
            queued++;
    }
    pthread_mutex_lock(&b->mu);
    b->left -= n - queued;
    b->fail = e;
    pthread_mutex_unlock(&b->mu);
    *ticket = b;
    return 0;
}

/* Waits for the reports of what kafka_start handed to librdkafka, in
 * slices: once no broker has been reachable for connect_timeout_ms, what
 * is still queued or sent is purged (its reports then come at once),
 * rather than waiting out message.timeout.ms (kafka.timeout_ms). */
static int kafka_finish(void *state, void *ticket)
{
    khandle *h = state;
    kbatch *b = ticket;
    pthread_mutex_lock(&b->mu);
    int64_t end = evq__now_real_ns() + (h->timeout_ms + 5000) * 1000000;
    bool purged = false;
    while (b->left > 0) {
        int64_t t = evq__now_real_ns(), slice = t + 250 * 1000000LL;
        if (t >= end)
            break;
        struct timespec ts = evq__ts_from_ns(slice < end ? slice : end);
        if (pthread_cond_timedwait(&b->cv, &b->mu, &ts) == 0 || purged ||
            b->left == 0)
            continue;
        pthread_mutex_unlock(&b->mu);
        if (down_too_long(h)) {
            rd_kafka_purge(h->prod, RD_KAFKA_PURGE_F_QUEUE |
                                        RD_KAFKA_PURGE_F_INFLIGHT |
                                        RD_KAFKA_PURGE_F_NON_BLOCKING);
            purged = true;
        }
        pthread_mutex_lock(&b->mu);
    }
    size_t left = b->left;
    rd_kafka_resp_err_t de = b->err;
    pthread_mutex_unlock(&b->mu);
    if (left > 0) {
        /* librdkafka still holds reports pointing at b: wait them out */
        rd_kafka_flush(h->prod, -1);
    }
    rd_kafka_resp_err_t e = b->fail;
    kbatch_free(b);
    if (e)
        return kerr(e, "produce");
    if (de == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
        de == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
        return cut_off(h);
    if (de) {
        int rc = kerr(de, "delivery");
        if (h->create_note[0]) {
            char first[512];
            snprintf(first, sizeof first, "%s", evq_errmsg());
            evq__err(rc, "%s; %s", first, h->create_note);
        }
        return rc == EVQ_ECONN ? with_broker_note(h, rc) : rc;
    }
    pthread_mutex_lock(&h->note_mu); /* whatever troubled it is over */
    h->broker_note[0] = '\0';
    pthread_mutex_unlock(&h->note_mu);
    return 0;
}

/* ---- offsets in flight -----------------------------------------------------
 */

/* The partition's record (trk_mu held); NULL when out of memory. */
static kpart *part_of(khandle *h, int32_t partition)
{
    for (size_t i = 0; i < h->n_parts; i++)
        if (h->parts[i].partition == partition)
            return &h->parts[i];
    kpart *np = realloc(h->parts, (h->n_parts + 1) * sizeof *np);
    if (!np)
        return NULL;
    h->parts = np;
    kpart *p = &h->parts[h->n_parts++];
    memset(p, 0, sizeof *p);
    p->partition = partition;
    p->next = p->committed = -1;
    return p;
}

/* Records that `offset` was taken (trk_mu held). */
static int track(khandle *h, int32_t partition, int64_t offset)
{
    kpart *p = part_of(h, partition);
    if (!p)
        return EVQ_ENOMEM;
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 64;
        koff *nq = malloc(ncap * sizeof *nq);
        if (!nq)
            return EVQ_ENOMEM;
        for (size_t i = 0; i < p->n; i++)
            nq[i] = p->q[(p->head + i) % p->cap];
        free(p->q);
        p->q = nq;
        p->cap = ncap;
        p->head = 0;
    }
    p->q[(p->head + p->n++) % p->cap] = (koff){offset, false};
    p->next = offset + 1;
    return 0;
}

/* Marks `offset` finished and moves the partition's commit point past
 * every finished offset at the front (trk_mu held). */
static void finish(khandle *h, int32_t partition, int64_t offset)
{
    kpart *p = NULL;
    for (size_t i = 0; i < h->n_parts && !p; i++)
        if (h->parts[i].partition == partition)
            p = &h->parts[i];
    if (!p)
        return; /* revoked meanwhile: its new owner reads it again */
    size_t lo = 0, hi = p->n; /* offsets are in order: binary search */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->q[(p->head + mid) % p->cap].offset < offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < p->n && p->q[(p->head + lo) % p->cap].offset == offset)
        p->q[(p->head + lo) % p->cap].done = true;
    while (p->n > 0 && p->q[p->head].done) {
        p->head = (p->head + 1) % p->cap;
        p->n--;
    }
    h->commit_due = true;
}

/* The offset to commit for `p`: its first unfinished one, or the next to
 * read when none is out. */
static int64_t commit_point(const kpart *p)
{
    return p->n > 0 ? p->q[p->head].offset : p->next;
}

/* Commits what moved (trk_mu held). */
static void commit(khandle *h, bool sync)
{
    if (!h->cons || !h->commit_due)
        return;
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new((int)h->n_parts + 1);
    for (size_t i = 0; i < h->n_parts; i++) {
        kpart *p = &h->parts[i];
        int64_t at = commit_point(p);
        if (at >= 0 && at != p->committed) {
            rd_kafka_topic_partition_list_add(l, h->topic, p->partition)
                ->offset = at;
            p->committed = at;
        }
    }
    if (l->cnt > 0)
        rd_kafka_commit(h->cons, l, sync ? 0 : 1);
    rd_kafka_topic_partition_list_destroy(l);
    h->commit_due = false;
    h->last_commit_ms = now_ms();
}

/* ---- consumer
 * ---------------------------------------------------------------- */

static void kmsg_free(kmsg *m)
{
    if (!m)
        return;
    free(m->key);
    rd_kafka_message_destroy(m->rm);
    if (m->ev)
        evq_event_free(m->ev);
    free(m);
}

/* Drops what was polled from partitions no longer ours (rd_mu held). */
static void drop_revoked(khandle *h,
                         const rd_kafka_topic_partition_list_t *revoked)
{
    size_t k = 0;
    for (size_t i = 0; i < h->n_buf; i++) {
        kmsg *m = h->buf[i];
        bool gone = false;
        for (int r = 0; r < revoked->cnt && !gone; r++)
            gone = revoked->elems[r].partition == m->partition;
        if (gone)
            kmsg_free(m);
        else
            h->buf[k++] = m;
    }
    h->n_buf = k;
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    khandle *h = opaque;
    bool cooperative =
        strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (cooperative)
            rd_kafka_incremental_assign(rk, parts);
        else
            rd_kafka_assign(rk, parts);
        return;
    }
    /* Revoked: commit what is finished, synchronously, before the
     * partitions go; forget the rest (the new owner reads it again). */
    pthread_mutex_lock(&h->trk_mu);
    h->commit_due = true;
    commit(h, true);
    for (int r = 0; r < parts->cnt; r++) {
        for (size_t i = 0; i < h->n_parts; i++) {
            if (h->parts[i].partition == parts->elems[r].partition) {
                free(h->parts[i].q);
                h->parts[i] = h->parts[--h->n_parts];
                break;
            }
        }
    }
    pthread_mutex_unlock(&h->trk_mu);
    drop_revoked(h, parts);
    if (cooperative)
        rd_kafka_incremental_unassign(rk, parts);
    else
        rd_kafka_assign(rk, NULL);
}

static int open_consumer(khandle *h)
{
    int rc = 0;
    const char *extra[] = {"group.id",
                           h->group,
                           "enable.auto.commit",
                           "false",
                           "enable.auto.offset.store",
                           "false",
                           "auto.offset.reset",
                           "earliest",
                           "allow.auto.create.topics",
                           "true",
                           NULL};
    rd_kafka_conf_t *c = make_conf(h, extra, &rc);
    if (!c)
        return rc;
    rd_kafka_conf_set_rebalance_cb(c, on_rebalance);
    rd_kafka_conf_set_opaque(c, h);
    char err[512];
    h->cons = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
    if (!h->cons) {
        rd_kafka_conf_destroy(c);
        return evq__err(EVQ_EINVAL, "kafka consumer: %s", err);
    }
    rd_kafka_poll_set_consumer(h->cons);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, h->topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(h->cons, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        rd_kafka_destroy(h->cons);
        h->cons = NULL;
        return kerr(e, "subscribe");
    }
    return 0;
}

static const char *hdr(rd_kafka_headers_t *hd, const char *name, size_t *len)
{
    const void *v = NULL;
    size_t l = 0;
    if (!hd || rd_kafka_header_get_last(hd, name, &v, &l) != 0)
        return NULL;
    if (len)
        *len = l;
    return v;
}

/* The integer in header `name`, or else in one of the spellings `old`
 * of earlier versions; 0 when none is there. */
static int64_t hdr_int(rd_kafka_headers_t *hd, const char *name,
                       const char *const *old, size_t n_old)
{
    size_t l = 0;
    const char *v = hdr(hd, name, &l);
    for (size_t i = 0; !v && i < n_old; i++)
        v = hdr(hd, old[i], &l);
    return v ? evq__hdr_int(v, l) : 0;
}

/* A binary-mode message (ce_* headers) as an event; NULL when it is not
 * one, or is broken: the core then decodes the value, and what it cannot
 * decode goes to the dead letters. */
static evq_event *from_binary(const khandle *h, rd_kafka_message_t *rm,
                              rd_kafka_headers_t *hd)
{
    evq__header hs[64];
    size_t n = 0;
    const char *name;
    const void *v;
    size_t l;
    /* most messages are structured: one lookup says so */
    if (!hd || (rd_kafka_header_get_last(hd, "ce_specversion", &v, &l) != 0 &&
                rd_kafka_header_get_last(hd, "ce_type", &v, &l) != 0))
        return NULL;
    for (size_t i = 0; hd && n < sizeof hs / sizeof *hs &&
                       rd_kafka_header_get_all(hd, i, &name, &v, &l) == 0;
         i++)
        hs[n++] = (evq__header){name, v, l, ""};
    evq_event *ev = NULL;
    if (evq__ce_from_binary(hs, n, rm->payload, rm->len, &h->lim, &ev) != 0)
        return NULL;
    return ev;
}

/* Takes one message from the consumer into the polled buffer (rd_mu
 * held); EVQ_ETIMEDOUT when none came within wait_ms. */
static int poll_one(khandle *h, int wait_ms)
{
    rd_kafka_message_t *rm = rd_kafka_consumer_poll(h->cons, wait_ms);
    atomic_store_explicit(&h->last_poll_ns, evq__now_mono_ns(),
                          memory_order_relaxed);
    if (!rm)
        return EVQ_ETIMEDOUT;
    if (rm->err) {
        rd_kafka_resp_err_t e = rm->err;
        rd_kafka_message_destroy(rm);
        if (e == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            return EVQ_ETIMEDOUT;
        return kerr(e, "consume");
    }
    kmsg *m = calloc(1, sizeof *m);
    if (!m) {
        rd_kafka_message_destroy(rm);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    m->rm = rm;
    m->partition = rm->partition;
    m->offset = rm->offset;
    rd_kafka_headers_t *hd = NULL;
    rd_kafka_message_headers(rm, &hd);
    static const char *const old_due[] = {EVQ__HDR_DUE_OLD},
                             *const old_att[] = {EVQ__HDR_ATTEMPT_OLD};
    m->due = hdr_int(hd, EVQ__HDR_DUE, old_due, 2);
    m->attempt = (int)hdr_int(hd, EVQ__HDR_ATTEMPT, old_att,
                              sizeof old_att / sizeof *old_att) +
                 1;
    m->ev = from_binary(h, rm, hd);
    if (h->by_key && rm->key && rm->key_len > 0 &&
        !(m->key = strndup(rm->key, rm->key_len))) {
        kmsg_free(m);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    pthread_mutex_lock(&h->trk_mu);
    int rc = track(h, m->partition, m->offset);
    kpart *p = rc ? NULL : part_of(h, m->partition);
    if (p && !p->paused && p->n >= (size_t)h->max_in_flight) {
        rd_kafka_topic_partition_list_t *l =
            rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, h->topic, m->partition);
        rd_kafka_pause_partitions(h->cons, l);
        rd_kafka_topic_partition_list_destroy(l);
        p->paused = true;
    }
    pthread_mutex_unlock(&h->trk_mu);
    if (rc) {
        kmsg_free(m);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    if (evq__grow(&h->buf, &h->cap_buf, h->n_buf, sizeof *h->buf)) {
        kmsg_free(m);
        return EVQ_ENOMEM;
    }
    h->buf[h->n_buf++] = m;
    return 0;
}

/* Resumes paused partitions with room again, and commits when due (rd_mu
 * held). */
static void housekeeping(khandle *h)
{
    pthread_mutex_lock(&h->trk_mu);
    for (size_t i = 0; i < h->n_parts; i++) {
        kpart *p = &h->parts[i];
        if (p->paused && p->n < (size_t)h->max_in_flight / 2 + 1) {
            rd_kafka_topic_partition_list_t *l =
                rd_kafka_topic_partition_list_new(1);
            rd_kafka_topic_partition_list_add(l, h->topic, p->partition);
            rd_kafka_resume_partitions(h->cons, l);
            rd_kafka_topic_partition_list_destroy(l);
            p->paused = false;
        }
    }
    if (h->commit_due && now_ms() - h->last_commit_ms >= h->commit_every_ms)
        commit(h, false);
    pthread_mutex_unlock(&h->trk_mu);
}

/* The keepalive's round (on the flusher's thread): polls once, taking
 * what comes into the buffer, when no dequeue has polled for a third of
 * max.poll.interval.ms and none is polling now; then comes again. */
static void kafka_keepalive(void *arg)
{
    khandle *h = arg;
    /* Also after an interrupt: a stopping worker may wait a long time for
     * its handlers, which must keep their events meanwhile. */
    int64_t now = evq__now_mono_ns();
    if (now - atomic_load(&h->last_poll_ns) >= h->keep_every_ns &&
        pthread_mutex_trylock(&h->rd_mu) == 0) {
        poll_one(h, 0);
        housekeeping(h);
        pthread_mutex_unlock(&h->rd_mu);
    }
    evq__flusher_arm(&h->keep, evq__now_mono_ns() + h->keep_every_ns);
}

/* Starts the keepalive for a new consumer (rd_mu held). */
static void keepalive_start(khandle *h)
{
    char v[32];
    size_t sz = sizeof v;
    int64_t every_ms = 100000; /* librdkafka's default 300000, a third */
    if (rd_kafka_conf_get(rd_kafka_conf(h->cons), "max.poll.interval.ms", v,
                          &sz) == RD_KAFKA_CONF_OK)
        every_ms = strtoll(v, NULL, 10) / 3;
    h->keep_every_ns = (every_ms > 10 ? every_ms : 10) * 1000000;
    atomic_store(&h->last_poll_ns, evq__now_mono_ns());
    evq__flusher_init(&h->keep, kafka_keepalive, h);
    h->keep_armed = true;
    evq__flusher_arm(&h->keep, evq__now_mono_ns() + h->keep_every_ns);
}

/* Polls up to max messages, waiting up to wait_ms for the first; the
 * first of them may be there already (the keepalive's). */
static int kafka_fetch(void *state, evq__delivery *d, size_t max, int wait_ms)
{
    khandle *h = state;
    int rc = 0;

    pthread_mutex_lock(&h->rd_mu);
    if (!h->cons) {
        if ((rc = open_consumer(h)) != 0) {
            pthread_mutex_unlock(&h->rd_mu);
            return rc;
        }
        keepalive_start(h);
    }
    if (atomic_load(&h->interrupted)) {
        pthread_mutex_unlock(&h->rd_mu);
        return 0;
    }
    housekeeping(h);
    if (h->n_buf == 0)
        rc = poll_one(h, wait_ms);
    while (rc == 0 && h->n_buf < max)
        rc = poll_one(h, 0);
    size_t n = h->n_buf < max ? h->n_buf : max;
    for (size_t i = 0; i < n; i++) {
        kmsg *m = h->buf[i];
        d[i] = (evq__delivery){.ev = m->ev,
                               .bytes = m->rm->payload,
                               .len = m->rm->len,
                               .attempt = m->attempt,
                               .token = m,
                               .due_ms = m->due,
                               .key = m->key};
        m->ev = NULL;
    }
    if (n) { /* (h->buf is NULL until the first message) */
        memmove(h->buf, h->buf + n, (h->n_buf - n) * sizeof *h->buf);
        h->n_buf -= n;
    }
    if (n == 0 && rc == EVQ_ETIMEDOUT) {
        rc = size_failure(h);
        if (!rc)
            rc = brokers_down(h);
    }
    pthread_mutex_unlock(&h->rd_mu);
    if (n)
        return (int)n;
    return rc == EVQ_ETIMEDOUT ? 0 : rc;
}

/* ---- settle ----------------------------------------------------------------
 */

/* A delivery's event and message, once they are done with. */
static void delivery_free(evq__delivery *d)
{
    if (d->ev)
        evq_event_free(d->ev);
    kmsg_free(d->token);
}

static int kafka_ack(void *state, evq__delivery **d, size_t n)
{
    khandle *h = state;
    pthread_mutex_lock(&h->trk_mu);
    for (size_t i = 0; i < n; i++) {
        kmsg *m = d[i]->token;
        finish(h, m->partition, m->offset);
    }
    pthread_mutex_unlock(&h->trk_mu);
    for (size_t i = 0; i < n; i++)
        delivery_free(d[i]);
    return 0;
}

/* What was fetched and not handed out is freed unfinished: the commit
 * point stays before it, and it is read again after a restart or a
 * rebalance. */
static void kafka_hand_back(void *state, evq__delivery *d, size_t n)
{
    (void)state;
    for (size_t i = 0; i < n; i++)
        delivery_free(&d[i]);
}

/* Produces the event again, due in delay_ms with its attempt count, then
 * counts the nacked offset as finished. */
static int kafka_nack(void *state, evq__delivery *d, int64_t delay_ms)
{
    khandle *h = state;
    kmsg *m = d->token;
    kbatch b = {.left = 1};
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    rd_kafka_headers_t *src = NULL, *hd;
    if (rd_kafka_message_headers(m->rm, &src) == 0 && src)
        hd = rd_kafka_headers_copy(src);
    else
        hd = rd_kafka_headers_new(3);
    static const char *const old[] = {EVQ__HDR_DUE_OLD, EVQ__HDR_ATTEMPT_OLD};
    rd_kafka_header_remove(hd, EVQ__HDR_DUE);
    rd_kafka_header_remove(hd, EVQ__HDR_ATTEMPT);
    for (size_t i = 0; i < sizeof old / sizeof *old; i++)
        rd_kafka_header_remove(hd, old[i]);
    char num[32];
    snprintf(num, sizeof num, "%d", m->attempt);
    rd_kafka_header_add(hd, EVQ__HDR_ATTEMPT, -1, num, -1);
    if (delay_ms > 0) {
        snprintf(num, sizeof num, "%lld", (long long)(now_ms() + delay_ms));
        rd_kafka_header_add(hd, EVQ__HDR_DUE, -1, num, -1);
    }
    char *key = m->rm->key ? strndup(m->rm->key, m->rm->key_len) : NULL;
    rd_kafka_resp_err_t e = produce(h, m->rm->payload, m->rm->len, key, hd, &b);
    free(key);
    int rc = 0;
    if (e) {
        rd_kafka_headers_destroy(hd);
        rc = kerr(e, "nack");
    } else {
        pthread_mutex_lock(&b.mu);
        while (b.left > 0)
            pthread_cond_wait(&b.cv, &b.mu);
        pthread_mutex_unlock(&b.mu);
        if (b.err)
            rc = kerr(b.err, "nack");
    }
    pthread_mutex_destroy(&b.mu);
    pthread_cond_destroy(&b.cv);
    if (d->ev)
        evq_event_free(d->ev);
    /* only once the copy is stored is the original finished; if it could
     * not be, the original stays unfinished and is read again after a
     * restart */
    if (!rc) {
        pthread_mutex_lock(&h->trk_mu);
        finish(h, m->partition, m->offset);
        pthread_mutex_unlock(&h->trk_mu);
    }
    kmsg_free(m);
    return rc;
}

static int kafka_interrupt(void *state)
{
    khandle *h = state;
    atomic_store(&h->interrupted, true);
    return 0;
}

/* What `group` has not yet committed of `topic`: over its partitions, the
 * high watermark less the committed offset (the low watermark where none
 * is).  Through rk's own connections: the admin API reads any group's
 * offsets, so no consumer of that group is made.  rk is the producer: a
 * broker answers a connection's requests in order, and a consumer's
 * connections carry fetches that wait up to fetch.wait.max.ms for data,
 * so each request there waited behind one (half a second apiece, seven
 * seconds for a queue's stats).  0 for a topic that does not exist. */
static int group_lag(rd_kafka_t *rk, const char *topic, const char *group,
                     int64_t *lag)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, t, &md, 5000);
    rd_kafka_topic_destroy(t);
    *lag = 0;
    if (e)
        return kerr(e, "metadata");
    int np = md->topic_cnt == 1 && !md->topics[0].err
                 ? md->topics[0].partition_cnt
                 : 0;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
    for (int i = 0; i < np; i++)
        rd_kafka_topic_partition_list_add(l, topic,
                                          md->topics[0].partitions[i].id);
    rd_kafka_metadata_destroy(md);
    if (np == 0) {
        rd_kafka_topic_partition_list_destroy(l);
        return 0;
    }
    rd_kafka_queue_t *rq = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(
        rk, RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS);
    rd_kafka_AdminOptions_set_request_timeout(ao, 5000, NULL, 0);
    rd_kafka_ListConsumerGroupOffsets_t *req =
        rd_kafka_ListConsumerGroupOffsets_new(group, l);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_ListConsumerGroupOffsets(rk, &req, 1, ao, rq);
    rd_kafka_ListConsumerGroupOffsets_destroy(req);
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(rq, 10000);
    rd_kafka_queue_destroy(rq);
    if (!ev)
        return evq__err(EVQ_ETIMEDOUT,
                        "kafka: no answer listing group '%s' offsets", group);
    const rd_kafka_ListConsumerGroupOffsets_result_t *res =
        rd_kafka_event_ListConsumerGroupOffsets_result(ev);
    size_t ng = 0;
    const rd_kafka_group_result_t **g =
        res ? rd_kafka_ListConsumerGroupOffsets_result_groups(res, &ng) : NULL;
    const rd_kafka_error_t *ge =
        ng == 1 ? rd_kafka_group_result_error(g[0]) : NULL;
    const rd_kafka_topic_partition_list_t *got =
        ng == 1 ? rd_kafka_group_result_partitions(g[0]) : NULL;
    int rc = 0;
    if ((e = rd_kafka_event_error(ev)) != 0)
        rc = kerr(e, "listing group offsets");
    else if (ge)
        rc = kerr(rd_kafka_error_code(ge), "listing group offsets");
    else if (!got)
        rc = evq__err(EVQ_EIO, "kafka: no offsets for group '%s'", group);
    for (int i = 0; !rc && i < got->cnt; i++) {
        int64_t lo = 0, hi = 0;
        e = rd_kafka_query_watermark_offsets(rk, topic, got->elems[i].partition,
                                             &lo, &hi, 5000);
        if (e) {
            rc = kerr(e, "watermarks");
            break;
        }
        int64_t at = got->elems[i].offset >= 0 ? got->elems[i].offset : lo;
        *lag += hi > at ? hi - at : 0;
    }
    rd_kafka_event_destroy(ev);
    return rc;
}

static int kafka_stats(void *state, struct evq_queue_stats *out)
{
    khandle *h = state;
    int64_t depth = 0;
    pthread_mutex_lock(&h->trk_mu);
    commit(h, true); /* this handle's progress first */
    pthread_mutex_unlock(&h->trk_mu);
    int rc = group_lag(h->prod, h->topic, h->group, &depth);
    if (rc)
        return rc;
    int64_t out_now = 0;
    pthread_mutex_lock(&h->trk_mu);
    for (size_t i = 0; i < h->n_parts; i++)
        for (size_t k = 0; k < h->parts[i].n; k++)
            out_now +=
                !h->parts[i].q[(h->parts[i].head + k) % h->parts[i].cap].done;
    pthread_mutex_unlock(&h->trk_mu);
    out->in_flight = out_now;
    out->depth = depth > out_now ? depth - out_now : 0;
    out->delayed = -1;
    return 0;
}

/* ---- the pause state ------------------------------------------------------
 * The offset a group of its own, <group>.evq-paused, has committed on
 * partition 0 of the topic: 1 paused, 0 (or none) not.  Kept by the
 * broker's group coordinator like any committed offset, so it outlasts
 * the consumers; written and read with the Admin API through the
 * producer's connections. */

static int kafka_pause(void *state, int set)
{
    khandle *h = state;
    rd_kafka_t *rk = h->prod;
    char group[512];
    snprintf(group, sizeof group, "%s.evq-paused", h->group);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, h->topic, 0)->offset = set > 0;
    rd_kafka_queue_t *rq = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *ao =
        admin_options(h,
                      set < 0 ? RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS
                              : RD_KAFKA_ADMIN_OP_ALTERCONSUMERGROUPOFFSETS,
                      (int)h->connect_ms);
    if (set < 0) {
        rd_kafka_ListConsumerGroupOffsets_t *req =
            rd_kafka_ListConsumerGroupOffsets_new(group, l);
        rd_kafka_ListConsumerGroupOffsets(rk, &req, 1, ao, rq);
        rd_kafka_ListConsumerGroupOffsets_destroy(req);
    } else {
        rd_kafka_AlterConsumerGroupOffsets_t *req =
            rd_kafka_AlterConsumerGroupOffsets_new(group, l);
        rd_kafka_AlterConsumerGroupOffsets(rk, &req, 1, ao, rq);
        rd_kafka_AlterConsumerGroupOffsets_destroy(req);
    }
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(rq, (int)h->connect_ms + 2000);
    rd_kafka_queue_destroy(rq);
    if (!ev)
        return evq__err(EVQ_ETIMEDOUT,
                        "kafka: no answer about the pause state (group '%s')",
                        group);
    const rd_kafka_group_result_t **g = NULL;
    size_t ng = 0;
    if (set < 0) {
        const rd_kafka_ListConsumerGroupOffsets_result_t *res =
            rd_kafka_event_ListConsumerGroupOffsets_result(ev);
        g = res ? rd_kafka_ListConsumerGroupOffsets_result_groups(res, &ng)
                : NULL;
    } else {
        const rd_kafka_AlterConsumerGroupOffsets_result_t *res =
            rd_kafka_event_AlterConsumerGroupOffsets_result(ev);
        g = res ? rd_kafka_AlterConsumerGroupOffsets_result_groups(res, &ng)
                : NULL;
    }
    const rd_kafka_topic_partition_list_t *got =
        ng == 1 ? rd_kafka_group_result_partitions(g[0]) : NULL;
    rd_kafka_resp_err_t e = rd_kafka_event_error(ev);
    if (!e && ng == 1 && rd_kafka_group_result_error(g[0]))
        e = rd_kafka_error_code(rd_kafka_group_result_error(g[0]));
    if (!e && got && got->cnt == 1)
        e = got->elems[0].err;
    int rc;
    if (e)
        rc = kerr(e, set < 0 ? "reading the pause state"
                             : "writing the pause state");
    else if (!got || got->cnt != 1)
        rc = evq__err(EVQ_EIO,
                      "kafka: no pause state in the answer for "
                      "group '%s'",
                      group);
    else
        rc = set < 0 ? got->elems[0].offset >= 1 : 0;
    rd_kafka_event_destroy(ev);
    return rc;
}

/* The consumer group of queue `name`: kafka.group when given, else
 * evq.<name>.  Allocated; NULL when out of memory. */
static char *group_name(const char *given, const char *name)
{
    if (given)
        return evq__strdup(given);
    size_t gl = strlen(name) + 8;
    char *g = malloc(gl);
    if (g)
        snprintf(g, gl, "evq.%s", name);
    return g;
}

/* Queue `name` is a topic read by the group its handle would use. */
static int kafka_count(void *state, const char *name, int64_t *n)
{
    khandle *h = state;
    char *group = group_name(h->group_given ? h->group : NULL, name);
    *n = -1;
    if (!group)
        return evq__err(EVQ_ENOMEM, "out of memory");
    int rc = group_lag(h->prod, name, group, n);
    free(group);
    if (rc)
        *n = -1;
    return rc;
}

/* ---- open and close --------------------------------------------------------
 */

/* Leaves the group before the close: unsubscribes, and polls (which runs
 * on_rebalance's revoke here, on this thread) until nothing is assigned,
 * for at most kafka.timeout_ms (10 s at most).  rd_kafka_consumer_close
 * would revoke the partitions itself, but librdkafka (2.0) can lose the
 * reply to the rd_kafka_assign of a revoke that comes during the close,
 * which then waits forever (librdkafka issue #4884).  Messages polled
 * meanwhile are dropped unacked: their offsets are not committed, so the
 * partitions' next owner reads them. */
static void leave_group(khandle *h)
{
    if (rd_kafka_unsubscribe(h->cons) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    int64_t wait_ms = h->timeout_ms < 10000 ? h->timeout_ms : 10000;
    int64_t end = evq__now_mono_ns() + wait_ms * 1000000;
    for (;;) {
        rd_kafka_topic_partition_list_t *a = NULL;
        bool empty = rd_kafka_assignment(h->cons, &a) == 0 && a && a->cnt == 0;
        if (a)
            rd_kafka_topic_partition_list_destroy(a);
        if (empty || evq__now_mono_ns() >= end)
            return;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(h->cons, 10);
        if (m)
            rd_kafka_message_destroy(m);
    }
}

static void kafka_close(void *state)
{
    khandle *h = state;
    if (!h)
        return;
    if (h->keep_armed)
        evq__flusher_destroy(&h->keep);
    if (h->cons) {
        pthread_mutex_lock(&h->trk_mu);
        h->commit_due = true;
        commit(h, true);
        pthread_mutex_unlock(&h->trk_mu);
        leave_group(h);
        rd_kafka_consumer_close(h->cons);
        for (size_t i = 0; i < h->n_buf; i++)
            kmsg_free(h->buf[i]);
        rd_kafka_destroy(h->cons);
    }
    if (h->prod) {
        rd_kafka_flush(h->prod, (int)h->timeout_ms);
        atomic_store(&h->prod_stop, true);
        pthread_join(h->prod_thread, NULL);
        rd_kafka_destroy(h->prod);
    }
    for (size_t i = 0; i < h->n_parts; i++)
        free(h->parts[i].q);
    free(h->parts);
    free(h->buf);
    free(h->topic);
    free(h->group);
    free(h->brokers);
    free(h->props.kv);
    pthread_mutex_destroy(&h->rd_mu);
    pthread_mutex_destroy(&h->trk_mu);
    pthread_mutex_destroy(&h->note_mu);
    free(h);
}

static int kafka_open(void **state, const evq__url *url, const char *name,
                      const evq__optset *opts, evq__logger *log)
{
    khandle *h = calloc(1, sizeof *h);
    int rc;
    if (!h)
        return evq__err(EVQ_ENOMEM, "out of memory");
    h->log = log;
    pthread_mutex_init(&h->rd_mu, NULL);
    pthread_mutex_init(&h->trk_mu, NULL);
    pthread_mutex_init(&h->note_mu, NULL);
    atomic_init(&h->interrupted, false);
    if (url->path[0] && strcmp(url->path, "/") != 0) {
        kafka_close(h);
        return evq__err(EVQ_EINVAL, "kafka:// URLs take no path");
    }
    for (const char *c = name; *c; c++)
        if (!(isalnum((unsigned char)*c) || strchr("._-", *c))) {
            kafka_close(h);
            return evq__err(EVQ_EINVAL,
                            "queue name '%.64s' is not a Kafka topic name "
                            "(letters, digits, '.', '_', '-')",
                            name);
        }
    if (strlen(name) > 249) {
        kafka_close(h);
        return evq__err(EVQ_EINVAL, "Kafka topic names are at most 249 "
                                    "characters");
    }
    size_t cap = 16;
    for (size_t i = 0; i < url->n_hosts; i++)
        cap += strlen(url->hosts[i].host) + 24;
    h->brokers = malloc(cap);
    h->topic = evq__strdup(name);
    kcfg cfg;
    evq__opts_read(opts, kafka_opts, &cfg);
    const char *group = cfg.group;
    h->group = group_name(group, name);
    if (!h->brokers || !h->topic || !h->group) {
        kafka_close(h);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    h->group_given = group != NULL;
    size_t off = 0;
    h->brokers[0] = '\0';
    for (size_t i = 0; i < url->n_hosts; i++) {
        const char *host =
            url->hosts[i].host[0] ? url->hosts[i].host : "127.0.0.1";
        bool v6 = strchr(host, ':') != NULL;
        off +=
            (size_t)snprintf(h->brokers + off, cap - off, "%s%s%s%s:%d",
                             i ? "," : "", v6 ? "[" : "", host, v6 ? "]" : "",
                             url->hosts[i].port ? url->hosts[i].port : 9092);
    }
    if (url->n_hosts == 0)
        snprintf(h->brokers, cap, "127.0.0.1:9092");
    h->binary = cfg.ce_mode == CE_BINARY;
    h->lim.max_bytes = (size_t)opts->core.max_event_bytes;
    h->lim.max_depth = (int)opts->core.max_depth;
    const char *fmt = opts->core.format;
    h->content_type = fmt && strcmp(fmt, "msgpack") == 0
                          ? "application/cloudevents+msgpack"
                          : "application/cloudevents+json";
    h->by_key = cfg.ordering == ORDER_KEY;
    h->max_in_flight = (int)cfg.max_in_flight;
    h->timeout_ms = cfg.timeout_ms;
    h->connect_ms = cfg.connect_timeout_ms;
    evq__reconnect_init(&h->reconnect, opts);
    h->commit_every_ms = cfg.commit_interval_ms;
    /* the rdkafka.* properties, without their prefix */
    h->props.kv = calloc(opts->n + 1, sizeof *h->props.kv);
    if (!h->props.kv) {
        kafka_close(h);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < opts->n; i++)
        if (strncmp(opts->kv[i].key, "rdkafka.", 8) == 0) {
            h->props.kv[h->props.n].key = opts->kv[i].key + 8;
            h->props.kv[h->props.n++].value = opts->kv[i].value;
        }
    if ((rc = open_producer(h)) != 0) {
        kafka_close(h);
        return rc;
    }
    bool create = opts->core.create;
    if ((!create || cfg.create_topics) && (rc = reach_brokers(h)) != 0) {
        kafka_close(h);
        return rc;
    }
    if (!create) {
        /* Look the topic up among all (asking for it by name could have
         * the broker create it). */
        int tmo = (int)cfg.create_timeout_ms;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(h->prod, 1, NULL, &md, tmo);
        bool found = false;
        for (int i = 0; !e && i < md->topic_cnt && !found; i++)
            found = strcmp(md->topics[i].topic, h->topic) == 0 &&
                    !md->topics[i].err;
        if (!e)
            rd_kafka_metadata_destroy(md);
        if (e || !found) {
            rc = e ? with_broker_note(h, kerr(e, "metadata"))
                   : evq__err(EVQ_ENOENT,
                              "kafka: no queue (topic '%s' does not exist; "
                              "create=false)",
                              h->topic);
            kafka_close(h);
            return rc;
        }
    } else if (cfg.create_topics) {
        create_topic(h, &cfg);
    }
    *state = h;
    return 0;
}

/* Deletes the topic with the Admin API, then (best effort: it refuses
 * while a consumer is still in it) the consumer group's offsets. */
static int kafka_destroy(void *state)
{
    khandle *h = state;
    int tmo = (int)h->connect_ms; /* an answer, not a delivery, is awaited */
    rd_kafka_queue_t *rq = rd_kafka_queue_new(h->prod);
    rd_kafka_AdminOptions_t *ao =
        admin_options(h, RD_KAFKA_ADMIN_OP_DELETETOPICS, tmo);
    rd_kafka_DeleteTopic_t *dt = rd_kafka_DeleteTopic_new(h->topic);
    rd_kafka_DeleteTopics(h->prod, &dt, 1, ao, rq);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(rq, tmo + 2000);
    const char *why = NULL;
    rd_kafka_resp_err_t e = topic_outcome(ev, &why);
    int rc = 0;
    if (e && e != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        rc = with_broker_note(h, evq__err(kerr(e, "delete topic"),
                                          "kafka: deleting topic '%s' "
                                          "failed: %s",
                                          h->topic,
                                          why ? why : rd_kafka_err2str(e)));
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_DeleteTopic_destroy(dt);
    rd_kafka_AdminOptions_destroy(ao);
    if (!rc) {
        /* the group's offsets, and the pause state's group (best effort) */
        char paused[512];
        snprintf(paused, sizeof paused, "%s.evq-paused", h->group);
        const char *groups[] = {h->group, paused};
        for (int i = 0; i < 2; i++) {
            rd_kafka_DeleteGroup_t *dg = rd_kafka_DeleteGroup_new(groups[i]);
            rd_kafka_DeleteGroups(h->prod, &dg, 1, NULL, rq);
            if ((ev = rd_kafka_queue_poll(rq, tmo + 2000)) != NULL)
                rd_kafka_event_destroy(ev);
            rd_kafka_DeleteGroup_destroy(dg);
        }
    }
    rd_kafka_queue_destroy(rq);
    return rc;
}

const struct evq_backend_ops evq__backend_kafka = {
    .scheme = "kafka",
    .flags = EVQ__ITEM_EVENT | EVQ__LINGERS,
    .opts = kafka_opts,
    .open = kafka_open,
    .enqueue_start = kafka_start,
    .enqueue_finish = kafka_finish,
    .fetch = kafka_fetch,
    .hand_back = kafka_hand_back,
    .prefetch_opt = "kafka.prefetch",
    .ack = kafka_ack,
    .nack = kafka_nack,
    .interrupt = kafka_interrupt,
    .stats = kafka_stats,
    .count = kafka_count,
    .close = kafka_close,
    .destroy = kafka_destroy,
    .pause = kafka_pause,
};
