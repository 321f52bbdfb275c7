/*
 * amqp.c - queues on RabbitMQ (AMQP 0-9-1, librabbitmq):
 * amqp://user:password@host:5672/vhost and amqps:// (TLS, through
 * librabbitmq's OpenSSL socket).
 *
 * A durable queue per evq queue, named like it: a quorum queue unless
 * amqp.queue_type=classic, declared at open when missing (create=false:
 * it must exist).  Messages are persistent and go through the default
 * exchange.
 *
 * - Enqueue: basic.publish (mandatory) on a connection of its own in
 *   confirm mode; a batch is published at once and its publisher confirms
 *   read back (enqueue_start / enqueue_finish).  A nack, or a message
 *   returned unroutable (the queue is gone), fails its batch.
 * - Dequeue: basic.consume with manual acks on a second connection,
 *   basic.qos amqp.prefetch; the read-ahead fetches what arrived.
 * - Delays without plugins: a delayed or nacked event goes to a TTL queue
 *   "<queue>.evq-delay-<ms>" that dead-letters back to the queue.  There
 *   are AMQP_LEVELS of them, 100 ms doubling up to 54.6 min; a delay is
 *   rounded up to the next level, and one past the last waits there and,
 *   carrying its due time in the evq-due header, goes round again until
 *   due.  A delay queue is declared when first used, like the queue.
 * - Attempts: the evq-attempt header holds the deliveries an event had
 *   before it was last published (a nack publishes it again with the
 *   count and acks the delivery); a delivery the broker flags redelivered
 *   (its consumer died or its channel closed) counts one more.
 * - No leases: a delivery stays with its channel until it is settled or
 *   the channel closes (then the broker redelivers it).  RabbitMQ's own
 *   consumer_timeout (30 min by default) closes a channel that holds a
 *   delivery longer; once the consumer has read that close it opens the
 *   channel again, and the delivery's late ack fails with EVQ_ESTATE
 *   (one sent before is lost with the channel: the event comes again).
 *
 * Content modes (amqp.ce_mode): structured (the encoded event is the body,
 * content_type application/cloudevents+json or +msgpack) or binary (the
 * data is the body, datacontenttype the content_type property, the other
 * attributes "cloudEvents_<name>" string headers, as the CloudEvents AMQP
 * binding 1.0.2 spells them).  Binary messages are recognised with that
 * prefix and the other spellings in use: "cloudEvents:", "ce-" and "ce_".
 *
 * librabbitmq connections are not thread-safe: every call on one runs
 * under its mutex (pub_mu, con_mu).  The fetch waits for data with poll()
 * on the socket outside the lock, so acks never wait behind it.
 */
#include "../internal.h"

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AMQP_LEVELS   16
#define AMQP_LEVEL0   100 /* ms */
#define CH            1   /* the channel of each connection */
#define CH_ADMIN      2   /* declares, counts and deletes (publisher's) */
#define AMQP_MAX_HDRS 64

typedef struct acfg {
    int queue_type, ce_mode;
    int64_t prefetch, connect_timeout_ms, timeout_ms;
    const char *tls_ca, *tls_cert, *tls_key;
    bool tls_verify;
} acfg;

enum { QT_QUORUM, QT_CLASSIC };
enum { CE_STRUCTURED, CE_BINARY };

static const evq__opt_spec amqp_opts[] = {
    {"amqp.queue_type", EVQ__OPT_ENUM, "quorum", 0, 0, "quorum|classic",
     "the type of the queues evq declares: quorum (replicated, Raft) or "
     "classic",
     EVQ__AT(acfg, queue_type)},
    {"amqp.prefetch", EVQ__OPT_INT, "256", 1, 65535, NULL,
     "basic.qos prefetch count: deliveries out to a handle and not yet "
     "acked",
     EVQ__AT(acfg, prefetch)},
    {"amqp.ce_mode", EVQ__OPT_ENUM, "structured", 0, 0, "structured|binary",
     "CloudEvents on AMQP: the whole event as the body (structured) or "
     "attributes as cloudEvents_* headers and the data as the body (binary)",
     EVQ__AT(acfg, ce_mode)},
    EVQ__CONNECT_TIMEOUT_OPT(acfg),
    {"amqp.timeout_ms", EVQ__OPT_INT, "10000", 1, 600000, NULL,
     "wait for a publisher confirm or a method's answer",
     EVQ__AT(acfg, timeout_ms)},
    {"amqp.tls_ca", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "amqps://: CA certificates file (PEM) to verify the server with",
     EVQ__AT(acfg, tls_ca)},
    {"amqp.tls_cert", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "amqps://: client certificate file (PEM), with amqp.tls_key",
     EVQ__AT(acfg, tls_cert)},
    {"amqp.tls_key", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "amqps://: client private key file (PEM)",
     EVQ__AT(acfg, tls_key)},
    {"amqp.tls_verify", EVQ__OPT_BOOL, "true", 0, 0, NULL,
     "amqps://: check the server's certificate and host name",
     EVQ__AT(acfg, tls_verify)},
    {0},
};

/* One connection with its channel(s). */
typedef struct aconn {
    amqp_connection_state_t st;
    bool up;
    bool admin;    /* CH_ADMIN is open */
    uint64_t gen;  /* raised at each new connection or channel */
    bool consuming;
} aconn;

/* A batch published and waiting for its confirms: tags first..last. */
typedef struct abatch {
    struct abatch *next;
    uint64_t first, last, gen;
    uint64_t lo;         /* every tag below it is confirmed */
    size_t left;
    unsigned char *seen; /* a bit per tag confirmed */
    int rc;              /* the first failure */
    char why[200];
} abatch;

/* A delivery: the envelope, and which channel it came on. */
typedef struct amsg {
    amqp_envelope_t env;
    uint64_t gen;
    bool binary_ev;
} amsg;

typedef struct ahandle {
    char *queue, *host, *vhost, *user, *password;
    int port;
    bool tls;
    acfg cfg;
    char *content_type;
    evq_codec_limits lim;
    evq__logger *log;
    evq__reconnect reconnect;
    atomic_bool interrupted;

    pthread_mutex_t pub_mu; /* pub, batches, declared */
    aconn pub;
    uint64_t next_tag;   /* the tag of the next publish on pub */
    abatch *open;        /* batches waiting for confirms */
    uint32_t declared;   /* delay levels declared (a bit each) */
    int64_t down_since;  /* monotonic ns the publisher lost the broker */

    pthread_mutex_t con_mu; /* con */
    aconn con;
} ahandle;

/* ---- errors and connections ---------------------------------------------- */

static const char *reply_text(amqp_rpc_reply_t r, char *buf, size_t cap)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buf, cap, "ok");
        break;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, cap, "no reply");
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, cap, "%s", amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *c = r.reply.decoded;
            snprintf(buf, cap, "server closed the connection: %u %.*s",
                     c->reply_code, (int)c->reply_text.len,
                     (char *)c->reply_text.bytes);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *c = r.reply.decoded;
            snprintf(buf, cap, "server closed the channel: %u %.*s",
                     c->reply_code, (int)c->reply_text.len,
                     (char *)c->reply_text.bytes);
        } else {
            snprintf(buf, cap, "server error (method 0x%08x)", r.reply.id);
        }
        break;
    }
    return buf;
}

static int reply_code(amqp_rpc_reply_t r)
{
    if (r.reply_type != AMQP_RESPONSE_SERVER_EXCEPTION)
        return 0;
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
        return ((amqp_connection_close_t *)r.reply.decoded)->reply_code;
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
        return ((amqp_channel_close_t *)r.reply.decoded)->reply_code;
    return 0;
}

static void conn_drop(aconn *c)
{
    if (c->st) {
        amqp_destroy_connection(c->st);
        c->st = NULL;
    }
    c->up = false;
    c->admin = false;
    c->consuming = false;
    c->gen++;
}

/* After a channel.close from the server on `ch`: answer it (the channel
 * may then be opened again). */
static void close_ok(aconn *c, amqp_channel_t ch)
{
    amqp_channel_close_ok_t ok = {0};
    amqp_send_method(c->st, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
}

/* After a connection.close from the server: answer it (the connection
 * is then to be dropped). */
static void conn_close_ok(aconn *c)
{
    amqp_connection_close_ok_t ok = {0};
    amqp_send_method(c->st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
}

/* A failed reply on c: a closed channel is answered (the connection
 * stays up, the channel is to be opened again), anything else drops the
 * connection.  Returns the evq code. */
static int rpc_fail(ahandle *h, aconn *c, amqp_channel_t ch,
                    amqp_rpc_reply_t r, const char *what)
{
    char t[256];
    reply_text(r, t, sizeof t);
    int code = reply_code(r), rc;
    if (code == 403 || code == 530)
        rc = evq__err(EVQ_EINVAL, "amqp %s: %s (user or vhost)", what, t);
    else if (code == 404)
        rc = evq__err(EVQ_ENOENT, "amqp %s: %s", what, t);
    else if (code == 406)
        rc = evq__err(EVQ_EEXIST, "amqp %s: %s", what, t);
    else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION)
        rc = evq__err(EVQ_EIO, "amqp %s: %s", what, t);
    else
        rc = evq__err(EVQ_ECONN, "amqp %s: %s", what, t);
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        close_ok(c, ch);
        if (ch == CH_ADMIN)
            c->admin = false;
        else
            conn_drop(c); /* the main channel: start again */
    } else {
        if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
            r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
            conn_close_ok(c);
        if (c->up)
            evq__logf(h->log, EVQ_LOG_WARN, "lost the connection to the broker (%s)", t);
        conn_drop(c);
    }
    return rc;
}

static struct timeval tv_ms(int64_t ms)
{
    return (struct timeval){.tv_sec = ms / 1000,
                            .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

/* TCP keepalive on c's socket, probing after 30 s idle, every 10 s, 3
 * times: a broker gone without a word (a dead host, a cut network) fails
 * a read or write within about a minute.  AMQP heartbeats would do it
 * too, but librabbitmq sends them only from inside its calls, so an idle
 * connection would be closed by the broker. */
static void keepalive(aconn *c)
{
    int fd = amqp_get_sockfd(c->st), on = 1, idle = 30, intvl = 10, cnt = 3;
    if (fd < 0)
        return;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

/* Opens c: TCP (or TLS), login, channel CH; confirm mode when `confirm`. */
static int conn_open(ahandle *h, aconn *c, bool confirm)
{
    conn_drop(c);
    if (!(c->st = amqp_new_connection()))
        return evq__err(EVQ_ENOMEM, "out of memory");
    amqp_socket_t *s;
    if (h->tls) {
        s = amqp_ssl_socket_new(c->st);
        if (s) {
            amqp_ssl_socket_set_verify_peer(s, h->cfg.tls_verify);
            amqp_ssl_socket_set_verify_hostname(s, h->cfg.tls_verify);
            if (h->cfg.tls_ca &&
                amqp_ssl_socket_set_cacert(s, h->cfg.tls_ca) != AMQP_STATUS_OK) {
                conn_drop(c);
                return evq__err(EVQ_EINVAL, "amqp: cannot read amqp.tls_ca "
                                            "'%.200s'",
                                h->cfg.tls_ca);
            }
            if (h->cfg.tls_cert &&
                amqp_ssl_socket_set_key(s, h->cfg.tls_cert,
                                        h->cfg.tls_key ? h->cfg.tls_key
                                                       : h->cfg.tls_cert) !=
                    AMQP_STATUS_OK) {
                conn_drop(c);
                return evq__err(EVQ_EINVAL,
                                "amqp: cannot read amqp.tls_cert/tls_key");
            }
        }
    } else {
        s = amqp_tcp_socket_new(c->st);
    }
    if (!s) {
        conn_drop(c);
        return evq__err(EVQ_ENOMEM, "amqp: no socket");
    }
    struct timeval ct = tv_ms(h->cfg.connect_timeout_ms);
    int st = amqp_socket_open_noblock(s, h->host, h->port, &ct);
    if (st != AMQP_STATUS_OK) {
        conn_drop(c);
        return evq__err(EVQ_ECONN, "amqp: cannot connect to %s:%d: %s", h->host, h->port,
                        amqp_error_string2(st));
    }
    keepalive(c);
    struct timeval rt = tv_ms(h->cfg.timeout_ms);
    amqp_set_handshake_timeout(c->st, &ct);
    amqp_set_rpc_timeout(c->st, &rt);
    amqp_rpc_reply_t r = amqp_login(c->st, h->vhost, 0, 131072,
                                    0 /* heartbeats: see keepalive() */,
                                    AMQP_SASL_METHOD_PLAIN, h->user,
                                    h->password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char t[256];
        reply_text(r, t, sizeof t);
        int code = reply_code(r);
        conn_drop(c);
        /* RabbitMQ refuses bad credentials (librabbitmq asks for
         * authentication_failure_close) and a vhost with a
         * connection.close: 403 or 530.  A socket closed without a word
         * is a broker starting or stopping: try again. */
        if (code == 403 || code == 530)
            return evq__err(EVQ_EINVAL,
                            "amqp login to %s:%d vhost '%.100s' refused (%s): "
                            "check the user, password and vhost",
                            h->host, h->port, h->vhost, t);
        return evq__err(EVQ_ECONN, "amqp login: %s", t);
    }
    c->up = true;
    amqp_channel_open(c->st, CH);
    r = amqp_get_rpc_reply(c->st);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        return rpc_fail(h, c, CH, r, "channel.open");
    if (confirm) {
        amqp_confirm_select(c->st, CH);
        r = amqp_get_rpc_reply(c->st);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            return rpc_fail(h, c, CH, r, "confirm.select");
    }
    return 0;
}

static int admin_open(ahandle *h, aconn *c)
{
    if (c->admin)
        return 0;
    amqp_channel_open(c->st, CH_ADMIN);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c->st);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        return rpc_fail(h, c, CH_ADMIN, r, "channel.open");
    c->admin = true;
    return 0;
}

/* ---- queues -------------------------------------------------------------- */

static int64_t level_ms(int i)
{
    return (int64_t)AMQP_LEVEL0 << i;
}

/* The delay level for delay_ms: the first at least that long (the last
 * for longer ones). */
static int level_of(int64_t delay_ms)
{
    int i = 0;
    while (i < AMQP_LEVELS - 1 && level_ms(i) < delay_ms)
        i++;
    return i;
}

static void level_name(const ahandle *h, int i, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s.evq-delay-%lld", h->queue, (long long)level_ms(i));
}

static amqp_table_entry_t entry_str(const char *k, const char *v)
{
    amqp_table_entry_t e;
    e.key = amqp_cstring_bytes(k);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(v);
    return e;
}

static amqp_table_entry_t entry_i64(const char *k, int64_t v)
{
    amqp_table_entry_t e;
    e.key = amqp_cstring_bytes(k);
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = v;
    return e;
}

/* Declares queue `name` (the queue itself when level < 0, else that
 * delay level's) on the admin channel of c; passive when !create. */
static int declare(ahandle *h, aconn *c, int level, bool create)
{
    int rc = admin_open(h, c);
    if (rc)
        return rc;
    char name[512];
    amqp_table_entry_t e[6];
    int n = 0;
    if (level < 0) {
        snprintf(name, sizeof name, "%s", h->queue);
    } else {
        level_name(h, level, name, sizeof name);
        e[n++] = entry_i64("x-message-ttl", level_ms(level));
        e[n++] = entry_str("x-dead-letter-exchange", "");
        e[n++] = entry_str("x-dead-letter-routing-key", h->queue);
        if (h->cfg.queue_type == QT_QUORUM) {
            /* dead-lettered only once the queue has it */
            e[n++] = entry_str("x-dead-letter-strategy", "at-least-once");
            e[n++] = entry_str("x-overflow", "reject-publish");
        }
    }
    e[n++] = entry_str("x-queue-type",
                       h->cfg.queue_type == QT_QUORUM ? "quorum" : "classic");
    amqp_table_t args = {n, e};
    amqp_queue_declare(c->st, CH_ADMIN, amqp_cstring_bytes(name), !create, 1,
                       0, 0, create ? args : amqp_empty_table);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c->st);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    char what[600];
    snprintf(what, sizeof what, "queue.declare '%.500s'", name);
    rc = rpc_fail(h, c, CH_ADMIN, r, what);
    if (rc == EVQ_EEXIST)
        evq__err_prefix(EVQ_EEXIST,
                        "the queue exists with other arguments (another "
                        "amqp.queue_type?); evq leaves it unchanged");
    if (rc == EVQ_ENOENT && !create)
        evq__err_prefix(EVQ_ENOENT, "no such queue (create=false)");
    return rc;
}

/* ---- publishing ---------------------------------------------------------- */

static void batch_fail(abatch *b, int rc, const char *why)
{
    if (!b->rc) {
        b->rc = rc;
        snprintf(b->why, sizeof b->why, "%s", why);
    }
}

static void batch_mark(abatch *b, uint64_t tag)
{
    uint64_t i = tag - b->first;
    if (!(b->seen[i / 8] & (1u << (i % 8)))) {
        b->seen[i / 8] |= (unsigned char)(1u << (i % 8));
        b->left--;
    }
}

/* A confirm (ack or nack) of tag, or of every tag up to it. */
static void on_confirm(ahandle *h, uint64_t tag, bool multiple, bool nack)
{
    for (abatch *b = h->open; b; b = b->next) {
        if (b->gen != h->pub.gen || b->first > tag)
            continue;
        /* a multiple confirm covers what earlier ones did: start past
         * them, so a batch of N costs N marks, not N per confirm */
        uint64_t lo = multiple ? b->lo : tag,
                 hi = tag < b->last ? tag : b->last;
        if (!multiple && tag > b->last)
            continue;
        for (uint64_t t = lo; t <= hi; t++)
            batch_mark(b, t);
        if (multiple && hi + 1 > b->lo)
            b->lo = hi + 1;
        if (nack)
            batch_fail(b, EVQ_EIO, "the broker refused the message (nack)");
    }
}

/* A basic.return: one message went nowhere (its queue is gone).  It
 * names no delivery tag, only that its message's confirm is still to
 * come, so every batch still waiting fails: a batch reported failed may
 * have been stored (sent again, twice), but none that went nowhere is
 * reported stored.  The delay queues are declared again at their next
 * use, in case one of them was what went. */
static void on_return(ahandle *h)
{
    for (abatch *b = h->open; b; b = b->next)
        if (b->gen == h->pub.gen && b->left)
            batch_fail(b, EVQ_ENOENT,
                       "a message was returned unroutable: its queue is "
                       "gone");
    h->declared = 0;
}

/* The connection under the publisher failed: every open batch of it
 * fails (its confirms never come). */
static void pub_lost(ahandle *h, int rc)
{
    for (abatch *b = h->open; b; b = b->next)
        if (b->gen == h->pub.gen && b->left) {
            batch_fail(b, rc, evq_errmsg());
            b->left = 0;
        }
    if (!h->down_since)
        h->down_since = evq__now_mono_ns();
}

/* The publisher's connection failed with librabbitmq status st: its open
 * batches fail, and the next call connects again. */
static int pub_broke(ahandle *h, int st)
{
    int rc = evq__err(EVQ_ECONN, "amqp publish: %s", amqp_error_string2(st));
    evq__logf(h->log, EVQ_LOG_WARN, "lost the connection to the broker (%s)",
              amqp_error_string2(st));
    pub_lost(h, rc);
    conn_drop(&h->pub);
    return rc;
}

/* Reads one frame from the publisher's connection, waiting up to
 * wait_ms, and acts on it (pub_mu held).  0, EVQ_ETIMEDOUT, or a
 * connection failure. */
static int pub_read(ahandle *h, int64_t wait_ms)
{
    amqp_frame_t f;
    struct timeval tv = tv_ms(wait_ms);
    int st = amqp_simple_wait_frame_noblock(h->pub.st, &f, &tv);
    if (st == AMQP_STATUS_TIMEOUT)
        return EVQ_ETIMEDOUT;
    if (st != AMQP_STATUS_OK) {
        return pub_broke(h, st);
    }
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 0;
    switch (f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        amqp_basic_ack_t *a = f.payload.method.decoded;
        on_confirm(h, a->delivery_tag, a->multiple, false);
        break;
    }
    case AMQP_BASIC_NACK_METHOD: {
        amqp_basic_nack_t *a = f.payload.method.decoded;
        on_confirm(h, a->delivery_tag, a->multiple, true);
        break;
    }
    case AMQP_BASIC_RETURN_METHOD: {
        amqp_message_t m;
        amqp_rpc_reply_t r = amqp_read_message(h->pub.st, f.channel, &m, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            int rc = rpc_fail(h, &h->pub, CH, r, "basic.return");
            pub_lost(h, rc);
            return rc;
        }
        amqp_destroy_message(&m);
        on_return(h);
        break;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
        amqp_channel_close_t *c = f.payload.method.decoded;
        char t[256];
        snprintf(t, sizeof t, "amqp: the broker closed the channel: %u %.*s",
                 c->reply_code, (int)c->reply_text.len,
                 (char *)c->reply_text.bytes);
        close_ok(&h->pub, f.channel);
        if (f.channel == CH_ADMIN) {
            h->pub.admin = false;
            return 0;
        }
        int rc = evq__err(EVQ_EIO, "%s", t);
        pub_lost(h, rc);
        conn_drop(&h->pub);
        return rc;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        conn_close_ok(&h->pub);
        int rc = evq__err(EVQ_ECONN, "amqp: the broker closed the "
                                     "connection");
        evq__logf(h->log, EVQ_LOG_WARN, "the broker closed the connection");
        pub_lost(h, rc);
        conn_drop(&h->pub);
        return rc;
    }
    default:
        break;
    }
    return 0;
}

/* The publisher's connection, made when missing; while the broker is
 * away, tried again with the reconnect pauses until connect_timeout_ms
 * has passed since it was lost (pub_mu held). */
static int pub_ready(ahandle *h)
{
    for (int tries = 1;; tries++) {
        if (atomic_load(&h->interrupted))
            return evq__err(EVQ_ECLOSED, "queue interrupted");
        if (h->pub.up)
            return 0;
        int rc = conn_open(h, &h->pub, true);
        if (rc == 0) {
            if (h->down_since)
                evq__logf(h->log, EVQ_LOG_INFO, "publishing again");
            h->down_since = 0;
            h->next_tag = 1;
            h->declared = 0;
            return 0;
        }
        if (rc != EVQ_ECONN)
            return rc;
        int64_t now = evq__now_mono_ns();
        if (!h->down_since)
            h->down_since = now;
        int64_t left_ms = h->cfg.connect_timeout_ms -
                          (now - h->down_since) / 1000000;
        if (left_ms <= 0)
            return rc;
        int64_t p = evq__reconnect_pause_ms(&h->reconnect, tries);
        evq__sleep_ms(p < left_ms ? p : left_ms);
    }
}

/* The properties and headers of one message; hdr and its strings live in
 * the caller's arrays. */
typedef struct amsgout {
    amqp_basic_properties_t p;
    amqp_table_entry_t hdr[AMQP_MAX_HDRS + 2];
    char names[AMQP_MAX_HDRS][EVQ_MAX_ATTR_NAME + 16];
    char due[24];
    char *owned;
    const void *body;
    size_t len;
} amsgout;

/* Headers for binary mode from the event (cloudEvents_<name>). */
static int binary_props(ahandle *h, const evq_event *ev, amsgout *o)
{
    evq__header hs[AMQP_MAX_HDRS];
    size_t n = AMQP_MAX_HDRS;
    if (evq__ce_to_binary(ev, hs, &n, &o->owned, &o->body, &o->len) != 0)
        return evq__err_prefix(EVQ_EINVAL, "amqp binary mode");
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(hs[i].name, "content-type") == 0) {
            o->p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
            o->p.content_type.bytes = (void *)hs[i].value;
            o->p.content_type.len = hs[i].len;
            continue;
        }
        const char *attr = hs[i].name + 3; /* after "ce_" */
        snprintf(o->names[k], sizeof o->names[k], "cloudEvents_%s", attr);
        o->hdr[k].key = amqp_cstring_bytes(o->names[k]);
        o->hdr[k].value.kind = AMQP_FIELD_KIND_UTF8;
        o->hdr[k].value.value.bytes.bytes = (void *)hs[i].value;
        o->hdr[k].value.value.bytes.len = hs[i].len;
        k++;
    }
    o->p.headers.num_entries = k;
    (void)h;
    return 0;
}

/* Publishes one message to `target` on pub (pub_mu held): the tag it
 * got is h->next_tag - 1. */
static int publish_one(ahandle *h, const char *target, amqp_basic_properties_t *p,
                       const void *body, size_t len)
{
    amqp_bytes_t b = {len, (void *)body};
    int st = amqp_basic_publish(h->pub.st, CH, amqp_cstring_bytes(""),
                                amqp_cstring_bytes(target), 1, 0, p, b);
    if (st != AMQP_STATUS_OK) {
        return pub_broke(h, st);
    }
    h->next_tag++;
    return 0;
}

/* Where a message delayed delay_ms goes: the queue, or a delay level's
 * queue (declared once per connection). */
static int target_of(ahandle *h, int64_t delay_ms, char *buf, size_t cap)
{
    if (delay_ms <= 0) {
        snprintf(buf, cap, "%s", h->queue);
        return 0;
    }
    int lv = level_of(delay_ms);
    if (!(h->declared & (1u << lv))) {
        int rc = declare(h, &h->pub, lv, true);
        if (rc)
            return rc;
        h->declared |= 1u << lv;
    }
    level_name(h, lv, buf, cap);
    return 0;
}

static abatch *batch_new(ahandle *h, size_t n)
{
    abatch *b = calloc(1, sizeof *b);
    if (!b || !(b->seen = calloc(1, n / 8 + 1))) {
        free(b);
        return NULL;
    }
    b->first = b->lo = h->next_tag;
    b->last = h->next_tag + n - 1;
    b->left = n;
    b->gen = h->pub.gen;
    b->next = h->open;
    h->open = b;
    return b;
}

static void batch_unlink(ahandle *h, abatch *b)
{
    for (abatch **p = &h->open; *p; p = &(*p)->next)
        if (*p == b) {
            *p = b->next;
            break;
        }
    free(b->seen);
    free(b);
}

/* The properties of a new event's message. */
static int props_for(ahandle *h, const evq__item *it, int64_t now_ms,
                     amsgout *o)
{
    memset(&o->p, 0, sizeof o->p);
    o->owned = NULL;
    o->body = it->bytes;
    o->len = it->len;
    o->p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_HEADERS_FLAG |
                  AMQP_BASIC_MESSAGE_ID_FLAG;
    o->p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    o->p.message_id = amqp_cstring_bytes(it->id ? it->id : "");
    o->p.headers.entries = o->hdr;
    o->p.headers.num_entries = 0;
    if (h->cfg.ce_mode == CE_BINARY && it->ev) {
        int rc = binary_props(h, it->ev, o);
        if (rc)
            return rc;
    } else {
        o->p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        o->p.content_type = amqp_cstring_bytes(h->content_type);
    }
    if (it->delay_ms > 0) {
        int k = o->p.headers.num_entries;
        o->hdr[k] = entry_i64(EVQ__HDR_DUE, now_ms + it->delay_ms);
        o->p.headers.num_entries = k + 1;
    }
    return 0;
}

static int amqp_start(void *state, const evq__item *items, size_t n,
                      void **ticket)
{
    ahandle *h = state;
    pthread_mutex_lock(&h->pub_mu);
    int rc = pub_ready(h);
    if (rc) {
        pthread_mutex_unlock(&h->pub_mu);
        return rc;
    }
    int64_t now = evq__now_real_ns() / 1000000;
    /* the delay queues first: declaring waits for an answer */
    char target[512];
    for (size_t i = 0; i < n; i++)
        if (items[i].delay_ms > 0 &&
            (rc = target_of(h, items[i].delay_ms, target, sizeof target))) {
            pthread_mutex_unlock(&h->pub_mu);
            return rc;
        }
    abatch *b = batch_new(h, n);
    if (!b) {
        pthread_mutex_unlock(&h->pub_mu);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    amsgout *o = malloc(sizeof *o);
    if (!o) {
        batch_unlink(h, b);
        pthread_mutex_unlock(&h->pub_mu);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    size_t sent = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if ((rc = props_for(h, &items[i], now, o)) == 0 &&
            (rc = target_of(h, items[i].delay_ms, target, sizeof target)) == 0)
            rc = publish_one(h, target, &o->p, o->body, o->len);
        free(o->owned);
        if (!rc)
            sent++;
    }
    free(o);
    if (rc) {
        if (sent == 0) {
            batch_unlink(h, b);
            pthread_mutex_unlock(&h->pub_mu);
            return rc;
        }
        /* the rest never went: the batch fails, once what went is
         * confirmed (or its connection lost: then left is 0 already) */
        batch_fail(b, rc, evq_errmsg());
        if (b->gen == h->pub.gen) {
            b->last = b->first + sent - 1;
            b->left = sent;
        }
    }
    pthread_mutex_unlock(&h->pub_mu);
    *ticket = b;
    return 0;
}

/* Reads confirms until b has all of its own, or fails. */
static int amqp_finish(void *state, void *ticket)
{
    ahandle *h = state;
    abatch *b = ticket;
    pthread_mutex_lock(&h->pub_mu);
    int64_t end = evq__now_mono_ns() + h->cfg.timeout_ms * 1000000;
    while (b->left > 0) {
        if (b->gen != h->pub.gen || !h->pub.up) {
            batch_fail(b, EVQ_ECONN, "amqp: the connection was lost before "
                                     "the broker confirmed the message");
            break;
        }
        int64_t left = (end - evq__now_mono_ns()) / 1000000;
        if (left <= 0) {
            batch_fail(b, EVQ_ETIMEDOUT,
                       "amqp: no publisher confirm within amqp.timeout_ms");
            /* confirms may still come: the connection is started again,
             * so none is taken for a later batch's */
            evq__logf(h->log, EVQ_LOG_WARN,
                      "no publisher confirm in %lld ms; connecting again",
                      (long long)h->cfg.timeout_ms);
            pub_lost(h, EVQ_ETIMEDOUT);
            conn_drop(&h->pub);
            h->down_since = 0;
            break;
        }
        if (!amqp_data_in_buffer(h->pub.st) &&
            !amqp_frames_enqueued(h->pub.st)) {
            /* wait for the socket outside the lock, so other batches
             * start (and other finishes read) meanwhile */
            struct pollfd p = {.fd = amqp_get_sockfd(h->pub.st),
                               .events = POLLIN};
            uint64_t gen = h->pub.gen;
            pthread_mutex_unlock(&h->pub_mu);
            int r = poll(&p, 1, (int)(left < 100 ? left : 100));
            pthread_mutex_lock(&h->pub_mu);
            if (r == 0 || gen != h->pub.gen || !h->pub.up || b->left == 0)
                continue;
        }
        /* data is there (another finish may have read it meanwhile) */
        int rc = pub_read(h, 10);
        if (rc && rc != EVQ_ETIMEDOUT)
            batch_fail(b, rc, evq_errmsg());
    }
    int rc = b->rc;
    char why[200];
    snprintf(why, sizeof why, "%s", b->why);
    batch_unlink(h, b);
    if (!h->open && h->pub.up && !amqp_frames_enqueued(h->pub.st))
        amqp_maybe_release_buffers(h->pub.st);
    pthread_mutex_unlock(&h->pub_mu);
    return rc ? evq__err(rc, "%s", why) : 0;
}

/* ---- consuming ----------------------------------------------------------- */

static int64_t field_int(const amqp_field_value_t *v)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8: return v->value.i8;
    case AMQP_FIELD_KIND_U8: return v->value.u8;
    case AMQP_FIELD_KIND_I16: return v->value.i16;
    case AMQP_FIELD_KIND_U16: return v->value.u16;
    case AMQP_FIELD_KIND_I32: return v->value.i32;
    case AMQP_FIELD_KIND_U32: return v->value.u32;
    case AMQP_FIELD_KIND_I64: return v->value.i64;
    case AMQP_FIELD_KIND_U64: return (int64_t)v->value.u64;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        return evq__hdr_int(v->value.bytes.bytes, v->value.bytes.len);
    default: return 0;
    }
}

static bool key_is(amqp_bytes_t k, const char *s)
{
    size_t n = strlen(s);
    return k.len == n && memcmp(k.bytes, s, n) == 0;
}

/* A header as an integer, by its name or an earlier spelling. */
static int64_t hdr_int(const amqp_basic_properties_t *p, const char *name,
                       const char *const *old, size_t n_old)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return 0;
    for (int i = 0; i < p->headers.num_entries; i++) {
        amqp_table_entry_t *e = &p->headers.entries[i];
        if (key_is(e->key, name))
            return field_int(&e->value);
        for (size_t j = 0; j < n_old; j++)
            if (key_is(e->key, old[j]))
                return field_int(&e->value);
    }
    return 0;
}

static const char *const ce_prefixes[] = {"cloudEvents_", "cloudEvents:",
                                          "ce-", "ce_"};

/* The attribute a binary-mode header names (after its prefix); NULL for
 * another header. */
static const char *ce_attr(amqp_bytes_t k, size_t *alen)
{
    for (size_t i = 0; i < sizeof ce_prefixes / sizeof *ce_prefixes; i++) {
        size_t pl = strlen(ce_prefixes[i]);
        if (k.len > pl && memcmp(k.bytes, ce_prefixes[i], pl) == 0) {
            *alen = k.len - pl;
            return (const char *)k.bytes + pl;
        }
    }
    return NULL;
}

/* A binary-mode message as an event; NULL when it is not one, or is
 * broken (the core then decodes the body, and dead-letters it when that
 * fails). */
static evq_event *from_binary(const ahandle *h, const amqp_message_t *m)
{
    const amqp_basic_properties_t *p = &m->properties;
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return NULL;
    evq__header hs[AMQP_MAX_HDRS + 1];
    size_t n = 0;
    bool any = false;
    for (int i = 0; i < p->headers.num_entries && n < AMQP_MAX_HDRS; i++) {
        amqp_table_entry_t *e = &p->headers.entries[i];
        size_t alen;
        const char *attr = ce_attr(e->key, &alen);
        if (!attr || alen > EVQ_MAX_ATTR_NAME)
            continue;
        if (e->value.kind != AMQP_FIELD_KIND_UTF8 &&
            e->value.kind != AMQP_FIELD_KIND_BYTES)
            continue;
        evq__header *x = &hs[n++];
        snprintf(x->buf, sizeof x->buf, "ce_%.*s", (int)alen, attr);
        x->name = x->buf;
        x->value = e->value.value.bytes.bytes;
        x->len = e->value.value.bytes.len;
        if (strcmp(x->buf, "ce_specversion") == 0)
            any = true;
    }
    if (!any)
        return NULL;
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
        hs[n++] = (evq__header){"content-type", p->content_type.bytes,
                                p->content_type.len, ""};
    evq_event *ev = NULL;
    if (evq__ce_from_binary(hs, n, m->body.bytes, m->body.len, &h->lim, &ev) !=
        0)
        return NULL;
    return ev;
}

/* Consuming on con, made when missing (con_mu held). */
static int con_ready(ahandle *h)
{
    if (h->con.up && h->con.consuming)
        return 0;
    int rc;
    bool again = h->con.gen > 0;
    if (!h->con.up && (rc = conn_open(h, &h->con, false)) != 0)
        return rc;
    amqp_basic_qos(h->con.st, CH, 0, (uint16_t)h->cfg.prefetch, 0);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(h->con.st);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        return rpc_fail(h, &h->con, CH, r, "basic.qos");
    amqp_basic_consume(h->con.st, CH, amqp_cstring_bytes(h->queue),
                       amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    r = amqp_get_rpc_reply(h->con.st);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        return rpc_fail(h, &h->con, CH, r, "basic.consume");
    h->con.consuming = true;
    if (again)
        evq__logf(h->log, EVQ_LOG_INFO, "consuming again");
    return 0;
}

/* A frame other than a delivery on con (con_mu held). */
static int con_other_frame(ahandle *h)
{
    amqp_frame_t f;
    struct timeval tv = tv_ms(h->cfg.timeout_ms);
    int st = amqp_simple_wait_frame_noblock(h->con.st, &f, &tv);
    if (st != AMQP_STATUS_OK) {
        evq__logf(h->log, EVQ_LOG_WARN, "lost the connection to the broker (%s)",
                  amqp_error_string2(st));
        conn_drop(&h->con);
        return evq__err(EVQ_ECONN, "amqp consume: %s", amqp_error_string2(st));
    }
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 0;
    switch (f.payload.method.id) {
    case AMQP_CHANNEL_CLOSE_METHOD: {
        amqp_channel_close_t *c = f.payload.method.decoded;
        evq__logf(h->log, EVQ_LOG_WARN,
                  "the broker closed the consumer's channel: %u %.*s",
                  c->reply_code, (int)c->reply_text.len,
                  (char *)c->reply_text.bytes);
        close_ok(&h->con, f.channel);
        conn_drop(&h->con); /* its deliveries are the broker's again */
        return evq__err(EVQ_ECONN, "amqp: the broker closed the channel");
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        conn_close_ok(&h->con);
        evq__logf(h->log, EVQ_LOG_WARN, "the broker closed the connection");
        conn_drop(&h->con);
        return evq__err(EVQ_ECONN, "amqp: the broker closed the connection");
    }
    case AMQP_BASIC_CANCEL_METHOD: /* the queue was deleted */
        h->con.consuming = false;
        return evq__err(EVQ_ENOENT, "amqp: the broker cancelled the consumer "
                                    "(the queue was deleted)");
    default:
        return 0;
    }
}

/* Whether con has data to read now, or within wait_ms: polled outside
 * con_mu, so settling goes on meanwhile. */
static bool con_wait(ahandle *h, int fd, int64_t wait_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int64_t end = evq__now_mono_ns() + wait_ms * 1000000;
    for (;;) {
        int64_t left = (end - evq__now_mono_ns()) / 1000000;
        if (left < 0)
            left = 0;
        int r = poll(&p, 1, (int)(left < 100 ? left : 100));
        if (r > 0)
            return true;
        if (r < 0 && errno != EINTR)
            return true; /* let the read find the error */
        if (left == 0 || atomic_load(&h->interrupted))
            return false;
    }
}

/* The deliveries m had before it was last published (evq-attempt). */
static int attempts_before(const amsg *m)
{
    static const char *const old_att[] = {EVQ__HDR_ATTEMPT_OLD};
    int64_t n = hdr_int(&m->env.message.properties, EVQ__HDR_ATTEMPT, old_att,
                        sizeof old_att / sizeof *old_att);
    return n < 0 || n > 1000000 ? 0 : (int)n;
}

static void fill(ahandle *h, evq__delivery *d, amsg *m)
{
    int before = attempts_before(m);
    *d = (evq__delivery){
        .ev = from_binary(h, &m->env.message),
        .bytes = m->env.message.body.bytes,
        .len = m->env.message.body.len,
        .attempt = before + 1 + (m->env.redelivered ? 1 : 0),
        .token = m,
    };
    if (d->ev) {
        d->bytes = NULL;
        d->len = 0;
    } else if (d->len > h->lim.max_bytes) {
        /* read whole (AMQP has no partial read): dead-lettered as a
         * prefix with its stored size, as on the other backends */
        d->full_len = d->len;
        d->len = h->lim.max_bytes;
    }
}

static void msg_free(amsg *m)
{
    amqp_destroy_envelope(&m->env);
    free(m);
}

static int repost(ahandle *h, amsg *m, int attempts, int64_t delay_ms,
                  int64_t due_ms);

static int amqp_fetch(void *state, evq__delivery *d, size_t max, int wait_ms)
{
    ahandle *h = state;
    if (atomic_load(&h->interrupted))
        return 0;
    pthread_mutex_lock(&h->con_mu);
    int rc = con_ready(h);
    int fd = rc ? -1 : amqp_get_sockfd(h->con.st);
    bool buffered = !rc && (amqp_data_in_buffer(h->con.st) ||
                            amqp_frames_enqueued(h->con.st));
    pthread_mutex_unlock(&h->con_mu);
    if (rc)
        return rc;
    if (!buffered && !con_wait(h, fd, wait_ms))
        return 0;
    size_t n = 0;
    amsg *later[64];
    size_t n_later = 0;
    pthread_mutex_lock(&h->con_mu);
    int64_t now_ms = evq__now_real_ns() / 1000000;
    while (n < max && h->con.up && n_later < sizeof later / sizeof *later) {
        if (n > 0 && !amqp_data_in_buffer(h->con.st) &&
            !amqp_frames_enqueued(h->con.st)) {
            struct pollfd p = {.fd = amqp_get_sockfd(h->con.st),
                               .events = POLLIN};
            if (poll(&p, 1, 0) <= 0)
                break;
        }
        amsg *m = calloc(1, sizeof *m);
        if (!m) {
            rc = evq__err(EVQ_ENOMEM, "out of memory");
            break;
        }
        struct timeval tv = tv_ms(n ? h->cfg.timeout_ms : (wait_ms > 0 ? wait_ms : 1));
        amqp_maybe_release_buffers(h->con.st);
        amqp_rpc_reply_t r = amqp_consume_message(h->con.st, &m->env, &tv, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            free(m);
            if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                r.library_error == AMQP_STATUS_TIMEOUT)
                break;
            if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
                rc = con_other_frame(h);
                if (rc)
                    break;
                continue;
            }
            char t[256];
            evq__logf(h->log, EVQ_LOG_WARN, "lost the connection to the broker (%s)",
                      reply_text(r, t, sizeof t));
            rc = evq__err(EVQ_ECONN, "amqp consume: %s", t);
            conn_drop(&h->con);
            break;
        }
        m->gen = h->con.gen;
        int64_t due = hdr_int(&m->env.message.properties, EVQ__HDR_DUE, NULL,
                              0);
        if (due > now_ms + 5) {
            later[n_later++] = m; /* past the last level: round again */
            continue;
        }
        fill(h, &d[n++], m);
    }
    pthread_mutex_unlock(&h->con_mu);
    for (size_t i = 0; i < n_later; i++) {
        amsg *m = later[i];
        int before = attempts_before(m);
        int64_t due = hdr_int(&m->env.message.properties, EVQ__HDR_DUE, NULL,
                              0);
        int prc = repost(h, m, before, due - now_ms, due);
        if (prc != 0) {
            /* back to the queue as it is, to be tried again; with
             * nothing else fetched the failure is the fetch's, so the
             * read-ahead pauses before it comes round again */
            if (!rc)
                rc = prc;
            pthread_mutex_lock(&h->con_mu);
            if (h->con.up && m->gen == h->con.gen)
                amqp_basic_reject(h->con.st, CH, m->env.delivery_tag, 1);
            pthread_mutex_unlock(&h->con_mu);
            msg_free(m);
        }
    }
    if (n)
        return (int)n;
    return rc;
}

/* ---- settling ------------------------------------------------------------ */

/* Acks or rejects delivery m on con (con_mu held); EVQ_ESTATE when its
 * channel is gone (the broker has it again). */
static int settle(ahandle *h, amsg *m, bool ack, const char *what)
{
    if (!h->con.up || m->gen != h->con.gen)
        return evq__lease_lost(what);
    int st = ack ? amqp_basic_ack(h->con.st, CH, m->env.delivery_tag, 0)
                 : amqp_basic_reject(h->con.st, CH, m->env.delivery_tag, 1);
    if (st != AMQP_STATUS_OK) {
        evq__logf(h->log, EVQ_LOG_WARN, "lost the connection to the broker (%s)",
                  amqp_error_string2(st));
        conn_drop(&h->con);
        return evq__err(EVQ_ECONN, "amqp %s: %s", what, amqp_error_string2(st));
    }
    return 0;
}

static int amqp_ack(void *state, evq__delivery **d, size_t n)
{
    ahandle *h = state;
    int first = 0;
    char why[256] = "";
    pthread_mutex_lock(&h->con_mu);
    for (size_t i = 0; i < n; i++) {
        amsg *m = d[i]->token;
        int rc = settle(h, m, true, "ack");
        if (rc && !first) {
            first = rc;
            snprintf(why, sizeof why, "%s", evq_errmsg());
        }
        if (d[i]->ev)
            evq_event_free(d[i]->ev);
        msg_free(m);
    }
    pthread_mutex_unlock(&h->con_mu);
    return first ? evq__err(first, "%s", why) : 0;
}

/* Publishes a copy of m (its body and properties, with evq-attempt =
 * attempts and evq-due set when delayed) to the queue or a delay level,
 * waits for the confirm, then acks m and frees it. */
static int repost(ahandle *h, amsg *m, int attempts, int64_t delay_ms,
                  int64_t due_ms)
{
    amqp_basic_properties_t p = m->env.message.properties;
    amqp_table_entry_t hdr[AMQP_MAX_HDRS + 2];
    int k = 0;
    if (p._flags & AMQP_BASIC_HEADERS_FLAG)
        for (int i = 0; i < p.headers.num_entries && k < AMQP_MAX_HDRS; i++) {
            amqp_table_entry_t *e = &p.headers.entries[i];
            if (key_is(e->key, EVQ__HDR_ATTEMPT) ||
                key_is(e->key, EVQ__HDR_DUE))
                continue;
            hdr[k++] = *e;
        }
    if (attempts > 0)
        hdr[k++] = entry_i64(EVQ__HDR_ATTEMPT, attempts);
    if (delay_ms > 0)
        hdr[k++] = entry_i64(EVQ__HDR_DUE, due_ms);
    p._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    p.headers.entries = hdr;
    p.headers.num_entries = k;

    pthread_mutex_lock(&h->pub_mu);
    char target[512];
    int rc = pub_ready(h);
    if (!rc)
        rc = target_of(h, delay_ms, target, sizeof target);
    abatch *b = rc ? NULL : batch_new(h, 1);
    if (!rc && !b)
        rc = evq__err(EVQ_ENOMEM, "out of memory");
    if (!rc && (rc = publish_one(h, target, &p, m->env.message.body.bytes,
                                 m->env.message.body.len)) != 0) {
        batch_unlink(h, b);
        b = NULL;
    }
    pthread_mutex_unlock(&h->pub_mu);
    if (b)
        rc = amqp_finish(h, b);
    if (rc)
        return rc;
    pthread_mutex_lock(&h->con_mu);
    /* a channel lost meanwhile gives m to the broker again: then it is
     * there twice, which at-least-once allows */
    settle(h, m, true, "ack");
    pthread_mutex_unlock(&h->con_mu);
    msg_free(m);
    return 0;
}

static int amqp_nack(void *state, evq__delivery *d, int64_t delay_ms)
{
    ahandle *h = state;
    amsg *m = d->token;
    if (d->ev)
        evq_event_free(d->ev);
    pthread_mutex_lock(&h->con_mu);
    bool mine = h->con.up && m->gen == h->con.gen;
    pthread_mutex_unlock(&h->con_mu);
    if (!mine) {
        msg_free(m);
        return evq__lease_lost("nack");
    }
    int64_t due = evq__now_real_ns() / 1000000 + delay_ms;
    int rc = repost(h, m, d->attempt, delay_ms, due);
    if (rc) {
        /* not published again: back to the queue as it is (its attempt
         * count then rises by the redelivered flag alone) */
        char why[256];
        snprintf(why, sizeof why, "%s", evq_errmsg());
        pthread_mutex_lock(&h->con_mu);
        settle(h, m, false, "nack");
        pthread_mutex_unlock(&h->con_mu);
        msg_free(m);
        return evq__err(rc, "%s", why);
    }
    return 0;
}

/* Fetched and never handed out: back to the queue (basic.reject with
 * requeue keeps its place; the broker flags it redelivered). */
static void amqp_hand_back(void *state, evq__delivery *d, size_t n)
{
    ahandle *h = state;
    pthread_mutex_lock(&h->con_mu);
    for (size_t i = 0; i < n; i++) {
        amsg *m = d[i].token;
        if (h->con.up && m->gen == h->con.gen)
            amqp_basic_reject(h->con.st, CH, m->env.delivery_tag, 1);
        if (d[i].ev)
            evq_event_free(d[i].ev);
        msg_free(m);
    }
    pthread_mutex_unlock(&h->con_mu);
}

static int amqp_interrupt(void *state)
{
    ahandle *h = state;
    atomic_store(&h->interrupted, true);
    return 0;
}

/* ---- stats, count, delete ------------------------------------------------ */

/* The ready messages of queue `name` (passive declare on the admin
 * channel, pub_mu held); 0 when it does not exist. */
static int ready_of(ahandle *h, const char *name, int64_t *n, int64_t *consumers)
{
    int rc = admin_open(h, &h->pub);
    if (rc)
        return rc;
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(h->pub.st, CH_ADMIN, amqp_cstring_bytes(name), 1, 0,
                           0, 0, amqp_empty_table);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(h->pub.st);
    if (r.reply_type == AMQP_RESPONSE_NORMAL && ok) {
        *n = ok->message_count;
        if (consumers)
            *consumers = ok->consumer_count;
        return 0;
    }
    rc = rpc_fail(h, &h->pub, CH_ADMIN, r, "queue.declare passive");
    if (rc == EVQ_ENOENT) {
        *n = 0;
        return 0;
    }
    return rc;
}

static int amqp_stats(void *state, struct evq_queue_stats *out)
{
    ahandle *h = state;
    pthread_mutex_lock(&h->pub_mu);
    int rc = pub_ready(h);
    int64_t ready = 0, delayed = 0;
    if (!rc)
        rc = ready_of(h, h->queue, &ready, NULL);
    for (int i = 0; !rc && i < AMQP_LEVELS; i++) {
        char name[512];
        int64_t k = 0;
        level_name(h, i, name, sizeof name);
        rc = ready_of(h, name, &k, NULL);
        delayed += k;
    }
    pthread_mutex_unlock(&h->pub_mu);
    if (rc)
        return rc;
    out->depth = ready;
    out->delayed = delayed;
    out->in_flight = -1; /* unacked counts are the management API's */
    return 0;
}

/* Queue `name` of the same vhost: its ready and delayed events (what
 * RabbitMQ says without the management API). */
static int amqp_count(void *state, const char *name, int64_t *n)
{
    ahandle *h = state;
    pthread_mutex_lock(&h->pub_mu);
    int rc = pub_ready(h);
    int64_t k = 0;
    if (!rc)
        rc = ready_of(h, name, &k, NULL);
    *n = rc ? -1 : k;
    pthread_mutex_unlock(&h->pub_mu);
    return rc;
}

static int amqp_destroy(void *state)
{
    ahandle *h = state;
    pthread_mutex_lock(&h->pub_mu);
    int rc = pub_ready(h);
    for (int i = -2; !rc && i < AMQP_LEVELS; i++) {
        char name[512];
        if (i == -2)
            snprintf(name, sizeof name, "%s.evq-state", h->queue);
        else if (i < 0)
            snprintf(name, sizeof name, "%s", h->queue);
        else
            level_name(h, i, name, sizeof name);
        if ((rc = admin_open(h, &h->pub)) != 0)
            break;
        amqp_queue_delete(h->pub.st, CH_ADMIN, amqp_cstring_bytes(name), 0, 0);
        amqp_rpc_reply_t r = amqp_get_rpc_reply(h->pub.st);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            rc = rpc_fail(h, &h->pub, CH_ADMIN, r, "queue.delete");
            if (rc == EVQ_ENOENT)
                rc = 0;
        }
    }
    h->declared = 0;
    pthread_mutex_unlock(&h->pub_mu);
    return rc;
}

/* ---- the pause state ------------------------------------------------------
 * A classic durable queue <queue>.evq-state of at most one message: a
 * message there means paused.  Every handle declares it (the same
 * arguments: no error, and its message count in the answer) rather than
 * look for it passively, which closes the channel when it is missing. */

/* Declares the state queue on the admin channel (pub_mu held); *paused
 * gets whether it holds the message. */
static int state_declare(ahandle *h, bool *paused)
{
    int rc = admin_open(h, &h->pub);
    if (rc)
        return rc;
    char name[512];
    snprintf(name, sizeof name, "%s.evq-state", h->queue);
    amqp_table_entry_t e[3] = {entry_str("x-queue-type", "classic"),
                               entry_i64("x-max-length", 1),
                               entry_str("x-overflow", "drop-head")};
    amqp_table_t args = {3, e};
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(
        h->pub.st, CH_ADMIN, amqp_cstring_bytes(name), 0, 1, 0, 0, args);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(h->pub.st);
    if (r.reply_type == AMQP_RESPONSE_NORMAL && ok) {
        *paused = ok->message_count > 0;
        return 0;
    }
    char what[600];
    snprintf(what, sizeof what, "queue.declare '%.500s'", name);
    return rpc_fail(h, &h->pub, CH_ADMIN, r, what);
}

static int amqp_pause(void *state, int set)
{
    ahandle *h = state;
    char name[512];
    snprintf(name, sizeof name, "%s.evq-state", h->queue);
    bool paused = false;
    pthread_mutex_lock(&h->pub_mu);
    int rc = pub_ready(h);
    if (!rc)
        rc = state_declare(h, &paused);
    if (!rc && set > 0 && !paused) {
        amqp_basic_properties_t p = {0};
        p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
        p.delivery_mode = 2; /* persistent */
        int st = amqp_basic_publish(h->pub.st, CH_ADMIN, amqp_cstring_bytes(""),
                                    amqp_cstring_bytes(name), 0, 0, &p,
                                    amqp_cstring_bytes("paused"));
        rc = st == AMQP_STATUS_OK ? 0 : pub_broke(h, st);
        /* The broker counts the message in the queue a moment after the
         * publish (the channel hands it on): wait until it shows, letting
         * publishers in between. */
        for (int i = 0; !rc && !paused && i < 400; i++) {
            if (i) {
                pthread_mutex_unlock(&h->pub_mu);
                evq__sleep_ms(5);
                pthread_mutex_lock(&h->pub_mu);
                rc = pub_ready(h);
            }
            if (!rc)
                rc = state_declare(h, &paused);
        }
        if (!rc && !paused)
            rc = evq__err(EVQ_EIO, "amqp: the pause message did not reach "
                                   "queue '%s' within two seconds",
                          name);
    } else if (!rc && set == 0 && paused) {
        amqp_queue_purge(h->pub.st, CH_ADMIN, amqp_cstring_bytes(name));
        amqp_rpc_reply_t r = amqp_get_rpc_reply(h->pub.st);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            rc = rpc_fail(h, &h->pub, CH_ADMIN, r, "queue.purge");
    }
    pthread_mutex_unlock(&h->pub_mu);
    if (rc)
        return rc;
    return set < 0 ? paused : 0;
}

/* ---- open and close ------------------------------------------------------ */

static void amqp_close(void *state)
{
    ahandle *h = state;
    if (h->pub.st && h->pub.up) {
        amqp_channel_close(h->pub.st, CH, AMQP_REPLY_SUCCESS);
        amqp_connection_close(h->pub.st, AMQP_REPLY_SUCCESS);
    }
    if (h->con.st && h->con.up) {
        amqp_channel_close(h->con.st, CH, AMQP_REPLY_SUCCESS);
        amqp_connection_close(h->con.st, AMQP_REPLY_SUCCESS);
    }
    conn_drop(&h->pub);
    conn_drop(&h->con);
    while (h->open) {
        abatch *b = h->open;
        h->open = b->next;
        free(b->seen);
        free(b);
    }
    pthread_mutex_destroy(&h->pub_mu);
    pthread_mutex_destroy(&h->con_mu);
    free(h->queue);
    free(h->host);
    free(h->vhost);
    free(h->user);
    free(h->password);
    free(h);
}

static bool valid_queue_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 200 || strncmp(s, "amq.", 4) == 0)
        return false;
    return evq__utf8_valid(s, n);
}

static int amqp_open(void **state, const evq__url *url, const char *name,
                     const evq__optset *opts, evq__logger *log)
{
    ahandle *h = calloc(1, sizeof *h);
    if (!h)
        return evq__err(EVQ_ENOMEM, "out of memory");
    pthread_mutex_init(&h->pub_mu, NULL);
    pthread_mutex_init(&h->con_mu, NULL);
    atomic_init(&h->interrupted, false);
    h->log = log;
    evq__opts_read(opts, amqp_opts, &h->cfg);
    evq__reconnect_init(&h->reconnect, opts);
    h->tls = strcmp(url->scheme, "amqps") == 0;
    int rc = 0;
    if (url->n_hosts > 1)
        rc = evq__err(EVQ_EINVAL, "amqp:// takes one host (librabbitmq "
                                  "connects to one broker)");
    else if (!valid_queue_name(name))
        rc = evq__err(EVQ_EINVAL,
                      "queue name '%.64s' is not an AMQP queue name (1 to "
                      "200 bytes of UTF-8, not starting with 'amq.')",
                      name);
    else if (!h->tls && (h->cfg.tls_ca || h->cfg.tls_cert))
        rc = evq__err(EVQ_EINVAL, "amqp.tls_* options need an amqps:// URL");
    else if (h->cfg.tls_cert && !h->cfg.tls_key)
        rc = evq__err(EVQ_EINVAL, "amqp.tls_cert needs amqp.tls_key");
    if (rc) {
        amqp_close(h);
        return rc;
    }
    const char *host = url->n_hosts && url->hosts[0].host[0]
                           ? url->hosts[0].host
                           : "127.0.0.1";
    h->port = url->n_hosts && url->hosts[0].port ? url->hosts[0].port
                                                  : (h->tls ? 5671 : 5672);
    /* the path is the vhost: "/" alone (or none) is the default "/";
     * "/%2f" names it too, and "/name" is "name" */
    const char *vh = url->path[0] == '/' ? url->path + 1 : url->path;
    h->queue = evq__strdup(name);
    h->host = evq__strdup(host);
    h->vhost = evq__strdup(vh[0] ? vh : "/");
    h->user = evq__strdup(url->user ? url->user : "guest");
    h->password = evq__strdup(url->password ? url->password : "guest");
    const char *fmt = opts->core.format;
    h->content_type = fmt && strcmp(fmt, "msgpack") == 0
                          ? "application/cloudevents+msgpack"
                          : "application/cloudevents+json";
    h->lim.max_bytes = (size_t)opts->core.max_event_bytes;
    h->lim.max_depth = (int)opts->core.max_depth;
    if (!h->queue || !h->host || !h->vhost || !h->user || !h->password) {
        amqp_close(h);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    /* a broker away is waited for up to connect_timeout_ms */
    pthread_mutex_lock(&h->pub_mu);
    if ((rc = pub_ready(h)) == 0)
        rc = declare(h, &h->pub, -1, opts->core.create);
    pthread_mutex_unlock(&h->pub_mu);
    if (rc) {
        amqp_close(h);
        return rc;
    }
    *state = h;
    return 0;
}

const struct evq_backend_ops evq__backend_amqp = {
    .scheme = "amqp",
    .flags = EVQ__ITEM_EVENT,
    .opts = amqp_opts,
    .open = amqp_open,
    .enqueue_start = amqp_start,
    .enqueue_finish = amqp_finish,
    .fetch = amqp_fetch,
    .hand_back = amqp_hand_back,
    .prefetch_opt = "amqp.prefetch",
    .ack = amqp_ack,
    .nack = amqp_nack,
    .interrupt = amqp_interrupt,
    .stats = amqp_stats,
    .count = amqp_count,
    .close = amqp_close,
    .destroy = amqp_destroy,
    .pause = amqp_pause,
};
