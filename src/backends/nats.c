/*
 * nats.c - queues on NATS: nats://[user:password@|token@]host:port[,...].
 *
 * JetStream mode (the default): a stream per queue (nats.stream, derived
 * from the queue name unless given) holding the one subject named like the
 * queue, file storage, work-queue retention (a message leaves the stream
 * when acked); a durable pull consumer per queue (nats.durable) with
 * explicit acks, AckWait = visibility_timeout_ms and MaxAckPending =
 * nats.max_ack_pending.  Both are created on open, or checked when they
 * exist: one with a different configuration is an error naming the
 * difference, never changed.
 *
 * - Enqueue: a JetStream publish that returns after the stream's ack, with
 *   the event id as Nats-Msg-Id so a retried publish is stored once; a
 *   batch is published asynchronously and waits for every ack.
 * - Dequeue: fetches up to nats.prefetch messages; the attempt count is the
 *   message's NumDelivered.  Ack: natsMsg_Ack.  Nack: NakWithDelay.
 * - Delayed enqueue: the message carries an evq-due header (Unix ms, the
 *   kit's spelling; the Evq-Due of earlier versions is read too); the
 *   read-ahead gives one fetched early back with NakWithDelay until
 *   due.  The held message counts against MaxAckPending meanwhile, and the
 *   hold is one delivery, which the attempt count leaves out.
 * - Touch (a long handler): natsMsg_InProgress (+WPI) restarts AckWait.
 * - Leases: the server takes the ack or +WPI of an old delivery as one of
 *   the message's current delivery, so the consumer keeps the lease's end
 *   on its own clock (from before the fetch that brought the message, so
 *   the server's AckWait never ends later) and, once it has passed, no
 *   longer acks, naks or touches the message: EVQ_ESTATE.
 *
 * Core mode (nats.mode=core): plain publish and a queue-group subscription
 * (group "evq") made at a handle's first dequeue: at most once, and only
 * to handles reading when the message is published.  Ack and nack do nothing;
 * an event nacked, or in a consumer that dies, is gone; delayed enqueue is not
 * supported.
 *
 * Messages carry the encoded CloudEvent as their body with a Content-Type
 * header (application/cloudevents+json for JSON: structured mode).  A stream
 * evq creates has MaxMsgSize max_event_bytes (plus room for headers), so the
 * server refuses larger messages from any publisher.
 */
#include "../internal.h"

#include <ctype.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NPUB_MAX 16
/* The Nats-Msg-Id of a unique event, before its key. */
#define UNIQUE_PREFIX "evq-unique:"

/* Bytes of headers (Nats-Msg-Id, Content-Type, Evq-Due) a message may carry
 * past max_event_bytes. */
#define NATS_HEADER_ROOM 4096

typedef struct ncfg {
    int64_t visibility_timeout_ms, replicas, max_ack_pending,
        dedup_window_ms, pending_limit, connect_timeout_ms, timeout_ms,
        reconnect_wait_ms;
    int mode; /* MODE_JETSTREAM or MODE_CORE */
    const char *stream, *durable, *tls_ca, *tls_cert, *tls_key, *creds, *nkey,
        *nkey_seed;
} ncfg;

enum { MODE_JETSTREAM, MODE_CORE };

static const evq__opt_spec nats_opts[] = {
    {"visibility_timeout_ms", EVQ__OPT_INT, "30000", 100, 86400000, NULL,
     "AckWait: how long a delivered, unacked event waits before it is "
     "delivered again",
     EVQ__AT(ncfg, visibility_timeout_ms)},
    {"nats.mode", EVQ__OPT_ENUM, "jetstream", 0, 0, "jetstream|core",
     "jetstream (at least once) or core (plain NATS, at most once)",
     EVQ__AT(ncfg, mode)},
    {"nats.stream", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "JetStream stream (default: EVQ_ and the queue name, '.' and other "
     "characters streams may not hold as '_')",
     EVQ__AT(ncfg, stream)},
    {"nats.durable", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "durable pull consumer (default: evq_ and the queue name, likewise)",
     EVQ__AT(ncfg, durable)},
    {"nats.replicas", EVQ__OPT_INT, "1", 1, 5, NULL,
     "stream replicas when evq creates the stream",
     EVQ__AT(ncfg, replicas)},
    {"nats.prefetch", EVQ__OPT_INT, "64", 1, 4096, NULL,
     "messages fetched per pull request", 0},
    {"nats.max_ack_pending", EVQ__OPT_INT, "20000", 1, 10000000, NULL,
     "MaxAckPending of the consumer: events delivered and not yet acked, "
     "delayed events held back included",
     EVQ__AT(ncfg, max_ack_pending)},
    {"nats.dedup_window_ms", EVQ__OPT_INT, "120000", 1000, 86400000, NULL,
     "the stream's duplicate window for Nats-Msg-Id",
     EVQ__AT(ncfg, dedup_window_ms)},
    {"nats.pending_limit", EVQ__OPT_INT, "65536", 1, 100000000, NULL,
     "core mode: messages buffered for a consumer before NATS drops more "
     "(a slow consumer)",
     EVQ__AT(ncfg, pending_limit)},
    EVQ__CONNECT_TIMEOUT_OPT(ncfg),
    {"nats.connect_timeout_ms", EVQ__OPT_INT, NULL, 1, 600000, NULL,
     "former name of connect_timeout_ms",
     EVQ__AT(ncfg, connect_timeout_ms)},
    {"nats.timeout_ms", EVQ__OPT_INT, "5000", 1, 600000, NULL,
     "wait for a publish ack or a JetStream API answer",
     EVQ__AT(ncfg, timeout_ms)},
    {"nats.reconnect_wait_ms", EVQ__OPT_INT, NULL, 1, 600000, NULL,
     "former fixed pause between reconnect attempts: reconnect_initial_ms "
     "and reconnect_max_ms both",
     EVQ__AT(ncfg, reconnect_wait_ms)},
    {"nats.tls_ca", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "CA certificates file (PEM) to verify the server: turns TLS on",
     EVQ__AT(ncfg, tls_ca)},
    {"nats.tls_cert", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "client certificate chain file (PEM), with nats.tls_key",
     EVQ__AT(ncfg, tls_cert)},
    {"nats.tls_key", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "client private key file (PEM)",
     EVQ__AT(ncfg, tls_key)},
    {"nats.creds", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "user credentials file (JWT and nkey seed)",
     EVQ__AT(ncfg, creds)},
    {"nats.nkey", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "public nkey (U...) to authenticate as, with nats.nkey_seed",
     EVQ__AT(ncfg, nkey)},
    {"nats.nkey_seed", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "file holding the seed of nats.nkey, to sign the server's nonce",
     EVQ__AT(ncfg, nkey_seed)},
    {0},
};

/* A JetStream context for publishing, used by one thread at a time so its
 * asynchronous acks belong to one batch. */
typedef struct npub {
    pthread_mutex_t mu;
    jsCtx *js;
    pthread_mutex_t err_mu; /* the ack handler runs on a nats.c thread */
    int failed;
    int taken; /* unique events whose key was stored within the window */
    char err[256], taken_id[160];
    natsStatus sent; /* how the publishing of the batch out went */
    size_t n;        /* its size */
} npub;

typedef struct nhandle {
    natsConnection *nc;
    jsCtx *js; /* API calls and fetches */
    natsSubscription *sub;
    bool core;
    char *subject, *stream, *durable, *content_type;
    bool stream_given; /* by nats.stream, not derived from the name */
    int pending_limit; /* core */
    int64_t timeout_ms;
    int64_t vt_ns;         /* AckWait */
    int64_t req_ns[2];     /* when the last two pull requests were sent */
    pthread_mutex_t rd_mu; /* the subscription, between fetch and stats */
    npub pubs[NPUB_MAX];
    evq__reconnect reconnect;
    evq__logger *log;
    atomic_bool closing; /* the disconnection is ours */
    pthread_mutex_t closed_mu;
    pthread_cond_t closed_cv;
    bool closed; /* on_closed ran */
    atomic_bool interrupted;
    pthread_mutex_t kv_mu; /* kv: the key-value bucket of pause states */
    kvStore *kv;
} nhandle;

static int64_t now_ms(void)
{
    return evq__now_real_ns() / 1000000;
}

/* ---- errors -------------------------------------------------------------- */

static int nats_code(natsStatus s)
{
    switch (s) {
    case NATS_NO_SERVER:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
    case NATS_IO_ERROR:
    case NATS_STALE_CONNECTION:
    case NATS_SSL_ERROR:
    case NATS_SECURE_CONNECTION_WANTED:
    case NATS_SECURE_CONNECTION_REQUIRED:
        return EVQ_ECONN;
    case NATS_CONNECTION_AUTH_FAILED:
    case NATS_NOT_PERMITTED:
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
    case NATS_ADDRESS_MISSING:
        return EVQ_EINVAL;
    case NATS_TIMEOUT:
        return EVQ_ETIMEDOUT;
    case NATS_NO_MEMORY:
        return EVQ_ENOMEM;
    case NATS_MAX_PAYLOAD:
        return EVQ_ETOOBIG;
    case NATS_NOT_FOUND:
        return EVQ_ENOENT;
    default:
        return EVQ_EIO;
    }
}

/* An error from nats.c, with its own text; a timeout while the connection
 * is down reads as the connection failure it is. */
static int nerr(nhandle *h, natsStatus s, jsErrCode jerr, const char *what)
{
    int code = nats_code(s);
    if (code == EVQ_ETIMEDOUT && h && h->nc &&
        natsConnection_Status(h->nc) != NATS_CONN_STATUS_CONNECTED)
        code = EVQ_ECONN;
    const char *text = nats_GetLastError(NULL);
    if (!text || !text[0])
        text = natsStatus_GetText(s);
    if (jerr)
        return evq__err(code, "nats %s: %s (JetStream error %d)", what, text,
                        (int)jerr);
    return evq__err(code, "nats %s: %s", what, text);
}

/* ---- names --------------------------------------------------------------- */

/* A subject is tokens separated by '.', none empty, no spaces, no
 * wildcards. */
static bool valid_subject(const char *s)
{
    if (!s[0] || s[0] == '.')
        return false;
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == '*' || c == '>' || c == 127)
            return false;
        if (c == '.' && (p[1] == '.' || p[1] == '\0'))
            return false;
    }
    return true;
}

/* prefix + name with what stream and consumer names may not hold as '_'. */
static char *derived_name(const char *prefix, const char *name)
{
    size_t pl = strlen(prefix), nl = strlen(name);
    char *s = malloc(pl + nl + 1);
    if (!s)
        return NULL;
    memcpy(s, prefix, pl);
    for (size_t i = 0; i < nl; i++) {
        unsigned char c = (unsigned char)name[i];
        s[pl + i] = isalnum(c) || c == '-' || c == '_' ? (char)c : '_';
    }
    s[pl + nl] = '\0';
    return s;
}

static bool valid_js_name(const char *s)
{
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || strchr(".*>/\\", *p))
            return false;
    return s[0] != '\0';
}

/* ---- open and close ------------------------------------------------------ */

static void pub_ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa,
                            jsPubAckErr *pae, void *closure)
{
    (void)js;
    npub *p = closure;
    const char *id = NULL;
    if (!pa && pae) {
        pthread_mutex_lock(&p->err_mu);
        if (p->failed++ == 0)
            snprintf(p->err, sizeof p->err, "%s",
                     pae->ErrText ? pae->ErrText
                                  : natsStatus_GetText(pae->Err));
        pthread_mutex_unlock(&p->err_mu);
    } else if (pa && pa->Duplicate &&
               natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id &&
               strncmp(id, UNIQUE_PREFIX, strlen(UNIQUE_PREFIX)) == 0) {
        /* a unique key taken (a plain duplicate is a retried publish) */
        pthread_mutex_lock(&p->err_mu);
        if (p->taken++ == 0)
            snprintf(p->taken_id, sizeof p->taken_id, "%s",
                     id + strlen(UNIQUE_PREFIX));
        pthread_mutex_unlock(&p->err_mu);
    }
    natsMsg_Destroy(msg);
}

static void nats_close(void *state)
{
    nhandle *h = state;
    if (!h)
        return;
    if (h->sub) {
        /* libnats 3.4.1's reader can still be handing a message to a
         * subscription being destroyed (it looks the subscription up, then
         * locks it): unsubscribe, and once the server answered a ping sent
         * after that, nothing more is on its way to it.  (Core only: a
         * JetStream pull subscription gets messages only while a fetch
         * asks, and unsubscribing it could touch the durable consumer.) */
        if (h->core && h->nc &&
            natsSubscription_Unsubscribe(h->sub) == NATS_OK)
            natsConnection_FlushTimeout(h->nc, 1000);
        natsSubscription_Destroy(h->sub);
    }
    for (int i = 0; i < NPUB_MAX; i++) {
        jsCtx_Destroy(h->pubs[i].js);
        pthread_mutex_destroy(&h->pubs[i].mu);
        pthread_mutex_destroy(&h->pubs[i].err_mu);
    }
    kvStore_Destroy(h->kv);
    jsCtx_Destroy(h->js);
    if (h->nc) {
        natsConnection_FlushTimeout(h->nc, 1000); /* acks sent last */
        atomic_store(&h->closing, true);
        natsConnection_Close(h->nc);
        /* callbacks run on nats.c's thread: wait for the last (bounded,
         * should nats.c never call it) before freeing what they use */
        struct timespec until = evq__ts_from_ns(evq__now_real_ns() +
                                                2000000000LL);
        pthread_mutex_lock(&h->closed_mu);
        while (!h->closed &&
               pthread_cond_timedwait(&h->closed_cv, &h->closed_mu, &until) ==
                   0)
            ;
        pthread_mutex_unlock(&h->closed_mu);
        natsConnection_Destroy(h->nc);
    }
    free(h->subject);
    free(h->stream);
    free(h->durable);
    pthread_mutex_destroy(&h->rd_mu);
    pthread_mutex_destroy(&h->kv_mu);
    pthread_mutex_destroy(&h->closed_mu);
    pthread_cond_destroy(&h->closed_cv);
    free(h);
}

/* Connection events, from nats.c's threads, to the handle's log. */
static void on_disconnected(natsConnection *nc, void *arg)
{
    (void)nc;
    nhandle *h = arg;
    if (!atomic_load(&h->closing))
        evq__logf(h->log, EVQ_LOG_WARN,
                  "lost the connection to the server; reconnecting");
}

static void on_reconnected(natsConnection *nc, void *arg)
{
    nhandle *h = arg;
    char url[256] = "";
    natsConnection_GetConnectedUrl(nc, url, sizeof url);
    evq__logf(h->log, EVQ_LOG_INFO, "connected to the server again (%s)",
              url);
}

/* The last event nats.c gives: after it no callback uses the handle. */
static void on_closed(natsConnection *nc, void *arg)
{
    (void)nc;
    nhandle *h = arg;
    pthread_mutex_lock(&h->closed_mu);
    h->closed = true;
    pthread_cond_broadcast(&h->closed_cv);
    pthread_mutex_unlock(&h->closed_mu);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub,
                           natsStatus err, void *arg)
{
    (void)nc;
    (void)sub;
    nhandle *h = arg;
    evq__logf(h->log, EVQ_LOG_WARN, "nats: %s", natsStatus_GetText(err));
}

/* nats.c's pause before its next round of reconnect attempts. */
static int64_t reconnect_delay(natsConnection *nc, int attempts, void *arg)
{
    (void)nc;
    return evq__reconnect_pause_ms(arg, attempts > 0 ? attempts : 1);
}

static int connect(nhandle *h, const evq__url *url, const evq__optset *opts,
                   const ncfg *conf)
{
    natsOptions *no = NULL;
    natsStatus s = natsOptions_Create(&no);
    /* nats://host:port for each server of the URL (127.0.0.1:4222 when
     * none); credentials go through the options, never in these. */
    size_t cap = 64, n = url->n_hosts ? url->n_hosts : 1;
    for (size_t i = 0; i < url->n_hosts; i++)
        cap += strlen(url->hosts[i].host) + 32;
    char *servers = malloc(cap);                 /* all of them, for messages */
    const char **list = calloc(n, sizeof *list); /* each, for nats.c */
    if (s == NATS_OK && (!servers || !list))
        s = NATS_NO_MEMORY;
    if (s == NATS_OK) {
        size_t off = 0;
        for (size_t i = 0; i < n; i++) {
            const evq__host *hp = url->n_hosts ? &url->hosts[i] : NULL;
            const char *host = hp && hp->host[0] ? hp->host : "127.0.0.1";
            int port = hp && hp->port ? hp->port : 4222;
            bool v6 = strchr(host, ':') != NULL;
            list[i] = servers + off + (i ? 1 : 0);
            off += (size_t)snprintf(servers + off, cap - off,
                                    "%snats://%s%s%s:%d", i ? "," : "",
                                    v6 ? "[" : "", host, v6 ? "]" : "", port);
        }
        /* nats.c wants each server alone: cut a copy at the commas */
        char *each = evq__strdup(servers);
        if (!each) {
            s = NATS_NO_MEMORY;
        } else {
            size_t k = 0;
            for (char *tok = strtok(each, ","); tok && k < n;
                 tok = strtok(NULL, ","))
                list[k++] = tok;
            s = natsOptions_SetServers(no, list, (int)k);
            free(each);
        }
    }
    free(list);
    if (s == NATS_OK && url->user && url->password)
        s = natsOptions_SetUserInfo(no, url->user, url->password);
    else if (s == NATS_OK && url->user && url->user[0])
        s = natsOptions_SetToken(no, url->user);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(
            no, conf->connect_timeout_ms);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(no, -1);
    /* nats.c reconnects forever, with the kit's backoff */
    evq__reconnect_init(&h->reconnect, opts);
    if (conf->reconnect_wait_ms)
        h->reconnect.initial_ms = h->reconnect.max_ms = conf->reconnect_wait_ms;
    if (s == NATS_OK)
        s = natsOptions_SetCustomReconnectDelay(no, reconnect_delay,
                                                &h->reconnect);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(no, on_disconnected, h);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(no, on_reconnected, h);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(no, on_async_error, h);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(no, on_closed, h);
    if (s == NATS_OK)
        s = natsOptions_SetName(no, "evq");
    const char *ca = conf->tls_ca, *cert = conf->tls_cert, *key = conf->tls_key;
    const char *creds = conf->creds, *seed = conf->nkey_seed, *nkey = conf->nkey;
    if (s == NATS_OK && (ca || cert))
        s = natsOptions_SetSecure(no, true);
    if (s == NATS_OK && ca)
        s = natsOptions_LoadCATrustedCertificates(no, ca);
    if (s == NATS_OK && (cert || key)) {
        if (!cert || !key) {
            free(servers);
            natsOptions_Destroy(no);
            return evq__err(EVQ_EINVAL,
                            "nats.tls_cert and nats.tls_key go together");
        }
        s = natsOptions_LoadCertificatesChain(no, cert, key);
    }
    if (s == NATS_OK && creds)
        s = natsOptions_SetUserCredentialsFromFiles(no, creds, NULL);
    if (s == NATS_OK && (seed || nkey)) {
        if (!seed || !nkey) {
            free(servers);
            natsOptions_Destroy(no);
            return evq__err(EVQ_EINVAL,
                            "nats.nkey and nats.nkey_seed go together");
        }
        s = natsOptions_SetNKeyFromSeed(no, nkey, seed);
    }
    if (s != NATS_OK) {
        int rc = nerr(h, s, 0, "options");
        free(servers);
        natsOptions_Destroy(no);
        return rc;
    }
    s = natsConnection_Connect(&h->nc, no);
    natsOptions_Destroy(no);
    if (s != NATS_OK) {
        const char *text = nats_GetLastError(NULL);
        int rc = evq__err(nats_code(s), "nats connect to %s: %s", servers,
                          text && text[0] ? text : natsStatus_GetText(s));
        free(servers);
        h->nc = NULL;
        return rc;
    }
    free(servers);
    return 0;
}

/* Creates the stream, or checks the one there. */
static int ensure_stream(nhandle *h, const evq__optset *opts,
                         const ncfg *conf)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    int64_t replicas = conf->replicas;
    int64_t dup_ms = conf->dedup_window_ms;
    natsStatus s = js_GetStreamInfo(&si, h->js, h->stream, NULL, &jerr);
    if (s == NATS_NO_RESPONDERS || jerr == JSNotEnabledErr ||
        jerr == JSNotEnabledForAccountErr)
        return evq__err(EVQ_ENOTSUP,
                        "nats: JetStream is not enabled on the server (start "
                        "nats-server with -js, or use nats.mode=core)");
    if ((s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) &&
        !opts->core.create)
        return evq__err(EVQ_ENOENT,
                        "nats: no queue (stream '%s' does not exist; "
                        "create=false)",
                        h->stream);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        jsStreamConfig cfg;
        jsStreamConfig_Init(&cfg);
        const char *subjects[1] = {h->subject};
        cfg.Name = h->stream;
        cfg.Subjects = subjects;
        cfg.SubjectsLen = 1;
        cfg.Retention = js_WorkQueuePolicy;
        cfg.Storage = js_FileStorage;
        cfg.Replicas = replicas;
        cfg.Duplicates = dup_ms * 1000000;
        /* The server refuses larger messages from any publisher, so no
         * consumer ever receives one: max_event_bytes and room for the
         * headers. */
        int64_t max = opts->core.max_event_bytes;
        cfg.MaxMsgSize = (int32_t)(max + NATS_HEADER_ROOM);
        jerr = 0;
        s = js_AddStream(&si, h->js, &cfg, NULL, &jerr);
        if (s != NATS_OK)
            return nerr(h, s, jerr, "creating the stream");
        jsStreamInfo_Destroy(si);
        return 0;
    }
    if (s != NATS_OK)
        return nerr(h, s, jerr, "stream info");
    const jsStreamConfig *c = si->Config;
    char diff[256] = "";
    if (c->SubjectsLen != 1 || strcmp(c->Subjects[0], h->subject) != 0)
        snprintf(diff, sizeof diff, "subjects other than just '%.64s'",
                 h->subject);
    else if (c->Retention != js_WorkQueuePolicy)
        snprintf(diff, sizeof diff, "%s retention, not work-queue",
                 c->Retention == js_LimitsPolicy ? "limits" : "interest");
    else if (c->Storage != js_FileStorage)
        snprintf(diff, sizeof diff, "memory storage, not file");
    else if (c->Replicas != replicas)
        snprintf(diff, sizeof diff, "%lld replicas, not %lld (nats.replicas)",
                 (long long)c->Replicas, (long long)replicas);
    jsStreamInfo_Destroy(si);
    if (diff[0])
        return evq__err(EVQ_EEXIST,
                        "nats stream '%.64s' exists with %s; evq leaves it "
                        "unchanged (use another nats.stream)",
                        h->stream, diff);
    return 0;
}

/* Creates the durable consumer, or checks the one there. */
static int ensure_consumer(nhandle *h, const evq__optset *opts,
                           const ncfg *conf)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    int64_t ack_wait =
        conf->visibility_timeout_ms * 1000000;
    int64_t max_ack = conf->max_ack_pending;
    natsStatus s =
        js_GetConsumerInfo(&ci, h->js, h->stream, h->durable, NULL, &jerr);
    if ((s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) &&
        !opts->core.create)
        return evq__err(EVQ_ENOENT,
                        "nats: stream '%s' has no consumer '%s' (create=false)",
                        h->stream, h->durable);
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        jsConsumerConfig cfg;
        jsConsumerConfig_Init(&cfg);
        cfg.Durable = h->durable;
        cfg.AckPolicy = js_AckExplicit;
        cfg.AckWait = ack_wait;
        cfg.MaxAckPending = max_ack;
        cfg.MaxDeliver = -1;
        cfg.FilterSubject = h->subject;
        cfg.DeliverPolicy = js_DeliverAll;
        jerr = 0;
        s = js_AddConsumer(&ci, h->js, h->stream, &cfg, NULL, &jerr);
        if (s != NATS_OK)
            return nerr(h, s, jerr, "creating the consumer");
        jsConsumerInfo_Destroy(ci);
        return 0;
    }
    if (s != NATS_OK)
        return nerr(h, s, jerr, "consumer info");
    const jsConsumerConfig *c = ci->Config;
    char diff[256] = "";
    if (c->AckPolicy != js_AckExplicit)
        snprintf(diff, sizeof diff, "an ack policy other than explicit");
    else if (c->DeliverSubject && c->DeliverSubject[0])
        snprintf(diff, sizeof diff, "push delivery, not pull");
    else if (c->AckWait != ack_wait)
        snprintf(diff, sizeof diff,
                 "AckWait %lld ms, not %lld (visibility_timeout_ms)",
                 (long long)(c->AckWait / 1000000),
                 (long long)(ack_wait / 1000000));
    else if (c->MaxAckPending != max_ack)
        snprintf(diff, sizeof diff,
                 "MaxAckPending %lld, not %lld (nats.max_ack_pending)",
                 (long long)c->MaxAckPending, (long long)max_ack);
    jsConsumerInfo_Destroy(ci);
    if (diff[0])
        return evq__err(EVQ_EEXIST,
                        "nats consumer '%.64s' exists with %s; evq leaves it "
                        "unchanged",
                        h->durable, diff);
    return 0;
}

static int nats_open(void **state, const evq__url *url, const char *name,
                     const evq__optset *opts, evq__logger *log)
{
    nhandle *h = calloc(1, sizeof *h);
    if (h) {
        h->log = log;
        pthread_mutex_init(&h->closed_mu, NULL);
        pthread_cond_init(&h->closed_cv, NULL);
    }
    int rc = 0;
    natsStatus s;

    if (!h)
        return evq__err(EVQ_ENOMEM, "out of memory");
    pthread_mutex_init(&h->rd_mu, NULL);
    pthread_mutex_init(&h->kv_mu, NULL);
    for (int i = 0; i < NPUB_MAX; i++) {
        pthread_mutex_init(&h->pubs[i].mu, NULL);
        pthread_mutex_init(&h->pubs[i].err_mu, NULL);
    }
    atomic_init(&h->interrupted, false);
    ncfg cfg;
    evq__opts_read(opts, nats_opts, &cfg);
    h->core = cfg.mode == MODE_CORE;
    h->vt_ns = cfg.visibility_timeout_ms * 1000000;
    h->timeout_ms = cfg.timeout_ms;
    const char *fmt = opts->core.format;
    h->content_type = fmt && strcmp(fmt, "msgpack") == 0
                          ? "application/cloudevents+msgpack"
                          : "application/cloudevents+json";
    if (url->path[0] && strcmp(url->path, "/") != 0) {
        nats_close(h);
        return evq__err(EVQ_EINVAL, "nats:// URLs take no path");
    }
    if (!valid_subject(name)) {
        nats_close(h);
        return evq__err(EVQ_EINVAL,
                        "queue name '%.64s' is not a NATS subject (no spaces, "
                        "wildcards or empty tokens)",
                        name);
    }
    const char *stream = cfg.stream, *durable = cfg.durable;
    h->subject = evq__strdup(name);
    h->stream = stream ? evq__strdup(stream) : derived_name("EVQ_", name);
    h->stream_given = stream != NULL;
    h->durable = durable ? evq__strdup(durable) : derived_name("evq_", name);
    if (!h->subject || !h->stream || !h->durable) {
        nats_close(h);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    if (!valid_js_name(h->stream) || !valid_js_name(h->durable)) {
        rc = evq__err(EVQ_EINVAL,
                      "nats.stream and nats.durable may not hold spaces, "
                      "'.', '*', '>' or slashes");
        nats_close(h);
        return rc;
    }
    if ((rc = connect(h, url, opts, &cfg)) != 0) {
        nats_close(h);
        return rc;
    }
    if (h->core) { /* subscribes at the first dequeue */
        h->pending_limit =
            (int)cfg.pending_limit;
        *state = h;
        return 0;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = h->timeout_ms;
    if ((s = natsConnection_JetStream(&h->js, h->nc, &jo)) != NATS_OK) {
        rc = nerr(h, s, 0, "JetStream context");
        nats_close(h);
        return rc;
    }
    if ((rc = ensure_stream(h, opts, &cfg)) != 0 ||
        (rc = ensure_consumer(h, opts, &cfg)) != 0) {
        nats_close(h);
        return rc;
    }
    /* Bound to the consumer evq made, so closing never deletes it. */
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = h->stream;
    so.Consumer = h->durable;
    so.ManualAck = true;
    jsErrCode jerr = 0;
    s = js_PullSubscribe(&h->sub, h->js, h->subject, h->durable, &jo, &so,
                         &jerr);
    if (s != NATS_OK) {
        rc = nerr(h, s, jerr, "pull subscribe");
        nats_close(h);
        return rc;
    }
    *state = h;
    return 0;
}

/* ---- enqueue ------------------------------------------------------------- */

/* A publisher context: a free one, else this thread's own, waited for. */
static npub *pub_take(nhandle *h, int *rc)
{
    npub *p = &h->pubs[evq__slot_lock(h->pubs, NPUB_MAX, sizeof *h->pubs,
                                      offsetof(npub, mu))];
    if (!p->js) {
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = h->timeout_ms;
        jo.PublishAsync.AckHandler = pub_ack_handler;
        jo.PublishAsync.AckHandlerClosure = p;
        jo.PublishAsync.MaxPending = 4096;
        natsStatus s = natsConnection_JetStream(&p->js, h->nc, &jo);
        if (s != NATS_OK) {
            *rc = nerr(h, s, 0, "JetStream context");
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
    }
    return p;
}

/* The message for one item: body, Content-Type, and for a delayed event
 * its due time. */
static natsStatus make_msg(nhandle *h, const evq__item *it, int64_t now,
                           natsMsg **out)
{
    natsStatus s = natsMsg_Create(out, h->subject, NULL,
                                  (const char *)it->bytes, (int)it->len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(*out, "Content-Type", h->content_type);
    if (s == NATS_OK && it->delay_ms > 0) {
        char due[32];
        snprintf(due, sizeof due, "%lld", (long long)(now + it->delay_ms));
        s = natsMsgHeader_Set(*out, EVQ__HDR_DUE, due);
    }
    return s;
}

/* The Nats-Msg-Id of an item: the event id; a replayed dead letter adds
 * its replay mark so it is not taken for a duplicate of the original.  A
 * unique event's is its key, after UNIQUE_PREFIX. */
static void msg_id(const evq__item *it, char *out, size_t cap)
{
    out[0] = '\0';
    if (!it->ev)
        return;
    const char *key = evq_event_attr(it->ev, "evquniquekey");
    if (key) {
        snprintf(out, cap, "%s%s", UNIQUE_PREFIX, key);
        return;
    }
    const char *replay = evq_event_attr(it->ev, "evqreplayed");
    snprintf(out, cap, "%s%s%s", evq_event_id(it->ev), replay ? "/" : "",
             replay ? replay : "");
}

/* A failed publish: what nats.c says, as a code an application can retry
 * on.  While a cluster elects a stream leader the stream can answer "not
 * found" or not at all: that is a passing failure (EVQ_EIO), not an
 * absent queue. */
static int pub_err(nhandle *h, natsStatus s, jsErrCode jerr)
{
    int rc = nerr(h, s, jerr, "publish");
    if (rc == EVQ_ENOENT)
        rc = evq__err(EVQ_EIO, "%s (the stream has no leader just now?)",
                      evq_errmsg());
    return rc;
}

static int core_enqueue(nhandle *h, const evq__item *items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (items[i].delay_ms > 0)
            return evq__err(EVQ_ENOTSUP,
                            "nats.mode=core cannot delay an event (use "
                            "JetStream)");
        if (items[i].ev && evq_event_attr(items[i].ev, "evquniquekey"))
            return evq__err(EVQ_ENOTSUP,
                            "nats.mode=core keeps no unique keys (use "
                            "JetStream)");
    }
    natsStatus s = NATS_OK;
    for (size_t i = 0; i < n && s == NATS_OK; i++) {
        natsMsg *m = NULL;
        s = make_msg(h, &items[i], 0, &m);
        if (s == NATS_OK)
            s = natsConnection_PublishMsg(h->nc, m);
        natsMsg_Destroy(m);
    }
    if (s == NATS_OK &&
        natsConnection_Status(h->nc) != NATS_CONN_STATUS_CONNECTED)
        s = NATS_CONNECTION_DISCONNECTED; /* buffered, maybe never sent */
    return s == NATS_OK ? 0 : nerr(h, s, 0, "publish");
}

/* Publishes the items asynchronously on a publisher context of its own,
 * which stays this batch's until nats_finish has its acks.  Core NATS
 * has no acks: its batch is done here (ticket NULL). */
static int nats_start(void *state, const evq__item *items, size_t n,
                      void **ticket)
{
    nhandle *h = state;
    int rc = 0;
    if (atomic_load(&h->interrupted))
        return evq__err(EVQ_ECLOSED, "queue interrupted");
    *ticket = NULL;
    if (h->core)
        return core_enqueue(h, items, n);
    npub *p = pub_take(h, &rc);
    if (!p)
        return rc;
    int64_t now = now_ms();
    char id[EVQ_MAX_ATTR_BYTES + 64];
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = h->timeout_ms;
    /* an ack handler of this context's last batch may still be running
     * (its wait timed out and its pending list was dropped) */
    pthread_mutex_lock(&p->err_mu);
    p->failed = 0;
    p->taken = 0;
    pthread_mutex_unlock(&p->err_mu);
    p->n = n;
    natsStatus s = NATS_OK;
    for (size_t i = 0; i < n && s == NATS_OK; i++) {
        natsMsg *m = NULL;
        msg_id(&items[i], id, sizeof id);
        po.MsgId = id[0] ? id : NULL;
        s = make_msg(h, &items[i], now, &m);
        if (s == NATS_OK)
            s = js_PublishMsgAsync(p->js, &m, &po); /* takes m on success */
        natsMsg_Destroy(m);
    }
    p->sent = s;
    *ticket = p;
    return 0;
}

static int nats_finish(void *state, void *ticket)
{
    nhandle *h = state;
    npub *p = ticket;
    int rc = 0;
    if (!p)
        return 0;
    natsStatus s = p->sent;
    /* libnats leaves what it buffered to its flusher thread, which may
     * wait a millisecond: send it now (the next batch may start
     * meanwhile), the acks come back with the flush's answer */
    if (s == NATS_OK)
        s = natsConnection_FlushTimeout(h->nc, h->timeout_ms);
    jsPubOptions wait;
    jsPubOptions_Init(&wait);
    wait.MaxWait = h->timeout_ms;
    natsStatus cs = js_PublishAsyncComplete(p->js, &wait);
    if (cs != NATS_OK) {
        /* Acks still missing: forget those messages, so the next batch on
         * this context does not wait for them or inherit their errors. */
        natsMsgList left = {0};
        if (js_PublishAsyncGetPendingList(&left, p->js) == NATS_OK)
            natsMsgList_Destroy(&left);
        if (s == NATS_OK)
            s = cs;
    }
    if (s != NATS_OK) {
        rc = pub_err(h, s, 0);
    } else {
        pthread_mutex_lock(&p->err_mu);
        if (p->failed)
            rc = evq__err(EVQ_EIO, "nats publish: %d of %zu not stored: %s",
                          p->failed, p->n, p->err);
        else if (p->taken)
            rc = evq__err(EVQ_EEXIST,
                          "%d of %zu events not stored: unique key '%s'%s "
                          "taken within the stream's duplicate window",
                          p->taken, p->n, p->taken_id,
                          p->taken > 1 ? " and others" : "");
        pthread_mutex_unlock(&p->err_mu);
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* ---- dequeue ------------------------------------------------------------- */

static int64_t due_of(natsMsg *m)
{
    static const char *const old[] = {EVQ__HDR_DUE_OLD};
    const char *v = NULL;
    if (natsMsgHeader_Get(m, EVQ__HDR_DUE, &v) == NATS_OK && v)
        return evq__hdr_int(v, strlen(v));
    for (size_t i = 0; i < sizeof old / sizeof *old; i++)
        if (natsMsgHeader_Get(m, old[i], &v) == NATS_OK && v)
            return evq__hdr_int(v, strlen(v));
    return 0;
}

/* The attempt a delivery is: NumDelivered, less the hold of a delayed
 * event (due > 0). */
static int attempt_of(natsMsg *m, int64_t due)
{
    jsMsgMetaData *md = NULL;
    int a = 1;
    if (natsMsg_GetMetaData(&md, m) == NATS_OK) {
        a = (int)md->NumDelivered;
        jsMsgMetaData_Destroy(md);
    }
    if (due > 0)
        a--;
    return a < 1 ? 1 : a;
}

/* Turns what a fetch returned into deliveries at d[*n..max); a delayed
 * event not yet due goes with its due time, for the read-ahead to give
 * back with the rest of its delay. */
static void take_list(nhandle *h, natsMsgList *list, int64_t lease_ns,
                      evq__delivery *d, size_t *n, size_t max)
{
    for (int i = 0; i < list->Count; i++) {
        natsMsg *m = list->Msgs[i];
        list->Msgs[i] = NULL;
        if (*n == max) { /* more than asked for: the server keeps it */
            if (!h->core)
                natsMsg_Nak(m, NULL);
            natsMsg_Destroy(m);
            continue;
        }
        int64_t due = h->core ? 0 : due_of(m);
        d[(*n)++] = (evq__delivery){
            .bytes = (const unsigned char *)natsMsg_GetData(m),
            .len = (size_t)natsMsg_GetDataLength(m),
            .attempt = h->core ? 1 : attempt_of(m, due),
            .token = m,
            .lease_ns = h->core ? 0 : lease_ns,
            .due_ms = due};
    }
    natsMsgList_Destroy(list);
}

/* One fetch of up to max messages into d (*n of them), waiting up to
 * wait_ms (0: only what is there now). */
static natsStatus fetch(nhandle *h, int64_t wait_ms, evq__delivery *d,
                        size_t *n, size_t max)
{
    natsMsgList list = {0};
    natsStatus s;
    if (h->core) {
        natsMsg *m = NULL;
        if (!h->sub) {
            /* A handle joins the queue group when it first reads, so one
             * that only publishes takes no share of the messages.  Once
             * flushed the server knows of it: what is published after
             * this reaches it. */
            s = natsConnection_QueueSubscribeSync(&h->sub, h->nc, h->subject,
                                                  "evq");
            if (s == NATS_OK)
                s = natsSubscription_SetPendingLimits(h->sub, h->pending_limit,
                                                      64 * 1024 * 1024);
            if (s == NATS_OK)
                s = natsConnection_FlushTimeout(h->nc, h->timeout_ms);
            if (s != NATS_OK)
                return s;
        }
        s = natsSubscription_NextMsg(&m, h->sub, wait_ms > 0 ? wait_ms : 1);
        if (s == NATS_OK) {
            list.Msgs = calloc(1, sizeof *list.Msgs);
            if (!list.Msgs) {
                natsMsg_Destroy(m);
                return NATS_NO_MEMORY;
            }
            list.Msgs[0] = m;
            list.Count = 1;
            take_list(h, &list, 0, d, n, max);
        }
        return s;
    }
    /* libnats 3.4.1 overruns its own array when a fetch starts with more
     * than half a batch of messages already waiting in the subscription
     * (the answer to an earlier request that came late) and then asks the
     * server for the rest.  So what waits is taken one message per fetch
     * first, and a full batch is asked for only when nothing waits. */
    int waiting = 0;
    natsSubscription_GetPending(h->sub, &waiting, NULL);
    /* A message's AckWait began after the request it answers was sent.
     * Waiting messages, or late ones arriving during this fetch, may
     * answer the request before the last: the lease counts from it. */
    if (waiting == 0) { /* this fetch sends a request */
        h->req_ns[0] = h->req_ns[1];
        h->req_ns[1] = evq__now_mono_ns();
    }
    int64_t lease_ns = (h->req_ns[0] ? h->req_ns[0] : h->req_ns[1]) + h->vt_ns;
    jsFetchRequest fr;
    jsFetchRequest_Init(&fr);
    fr.Batch = waiting > 0 ? 1 : (int)max;
    if (wait_ms <= 0 || waiting > 0) {
        fr.NoWait = true;
        fr.Expires = 200 * 1000000LL; /* bound on the reply's wait */
    } else {
        fr.Expires = wait_ms * 1000000;
    }
    s = natsSubscription_FetchRequest(&list, h->sub, &fr);
    if (list.Count > 0) {
        take_list(h, &list, lease_ns, d, n, max);
        return NATS_OK;
    }
    natsMsgList_Destroy(&list);
    /* nothing there now (404), or nothing in time (408) */
    return s == NATS_OK || s == NATS_NOT_FOUND ? NATS_TIMEOUT : s;
}

static int nats_fetch(void *state, evq__delivery *d, size_t max, int wait_ms)
{
    nhandle *h = state;
    size_t n = 0;
    if (atomic_load(&h->interrupted))
        return 0;
    pthread_mutex_lock(&h->rd_mu);
    natsStatus s = fetch(h, wait_ms, d, &n, max);
    pthread_mutex_unlock(&h->rd_mu);
    if (n)
        return (int)n;
    if (s != NATS_OK && s != NATS_TIMEOUT)
        return nerr(h, s, 0, "fetch");
    if (natsConnection_Status(h->nc) != NATS_CONN_STATUS_CONNECTED)
        /* a fetch while reconnecting only times out: say why */
        return evq__err(EVQ_ECONN, "nats fetch: not connected to the server "
                                   "(the client is reconnecting)");
    return 0;
}

/* ---- settle -------------------------------------------------------------- */

/* Whether the lease of a delivery has passed on the local clock: the
 * server may have given the message to another consumer, and would take
 * this one's ack, nak or +WPI for that delivery's. */
static bool lease_gone(const nhandle *h, int64_t lease_ns)
{
    return !h->core && lease_ns && evq__now_mono_ns() >= lease_ns;
}

/* An ack, nak or +WPI sent while disconnected waits in the reconnect
 * buffer and may reach the server after AckWait, counting against the
 * message's next delivery: none is sent then. */
static int not_connected(nhandle *h, const char *what)
{
    if (h->core || natsConnection_Status(h->nc) == NATS_CONN_STATUS_CONNECTED)
        return 0;
    return evq__err(EVQ_ECONN,
                    "nats %s: not connected to the server; the event is "
                    "delivered again after AckWait",
                    what);
}

/* Whether `d` may be acked, naked or touched now: not once its lease ran
 * out, nor while disconnected. */
static int may_settle(nhandle *h, const evq__delivery *d, const char *what)
{
    if (lease_gone(h, d->lease_ns))
        return evq__lease_lost(what);
    return not_connected(h, what);
}

static int nats_ack(void *state, evq__delivery **d, size_t n)
{
    nhandle *h = state;
    int first = 0;
    char why[512];
    for (size_t i = 0; i < n; i++) {
        natsMsg *m = d[i]->token;
        int rc = may_settle(h, d[i], "ack");
        if (!rc && !h->core) {
            natsStatus s = natsMsg_Ack(m, NULL);
            if (s != NATS_OK)
                rc = nerr(h, s, 0, "ack");
        }
        natsMsg_Destroy(m);
        if (rc && !first) {
            first = rc;
            snprintf(why, sizeof why, "%s", evq_errmsg());
        }
    }
    return first ? evq__err(first, "%s", why) : 0;
}

static int nats_nack(void *state, evq__delivery *d, int64_t delay_ms)
{
    nhandle *h = state;
    natsMsg *m = d->token;
    natsStatus s = NATS_OK;
    int rc = may_settle(h, d, "nack");
    if (rc) {
        natsMsg_Destroy(m);
        return rc;
    }
    if (!h->core)
        s = delay_ms > 0 ? natsMsg_NakWithDelay(m, delay_ms, NULL)
                         : natsMsg_Nak(m, NULL);
    natsMsg_Destroy(m);
    return s == NATS_OK ? 0 : nerr(h, s, 0, "nack");
}

static int nats_touch(void *state, evq__delivery *d)
{
    nhandle *h = state;
    if (h->core)
        return 0;
    int rc = may_settle(h, d, "touch");
    if (rc)
        return rc;
    int64_t lease_ns = evq__now_mono_ns() + h->vt_ns;
    natsStatus s = natsMsg_InProgress(d->token, NULL);
    if (s != NATS_OK)
        return nerr(h, s, 0, "in progress");
    d->lease_ns = lease_ns;
    return 0;
}

/* What was fetched and never handed out goes back at once (what is no
 * longer ours is left alone). */
static void nats_hand_back(void *state, evq__delivery *d, size_t n)
{
    nhandle *h = state;
    for (size_t i = 0; i < n; i++) {
        if (!h->core && !lease_gone(h, d[i].lease_ns) &&
            !not_connected(h, "nak"))
            natsMsg_Nak(d[i].token, NULL);
        natsMsg_Destroy(d[i].token);
    }
}

static int nats_interrupt(void *state)
{
    nhandle *h = state;
    atomic_store(&h->interrupted, true);
    return 0;
}

static int nats_stats(void *state, struct evq_queue_stats *out)
{
    nhandle *h = state;
    if (h->core) {
        int pending = 0;
        pthread_mutex_lock(&h->rd_mu);
        if (h->sub)
            natsSubscription_GetPending(h->sub, &pending, NULL);
        pthread_mutex_unlock(&h->rd_mu);
        out->depth = pending;
        out->in_flight = -1;
        out->delayed = -1;
        return 0;
    }
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    /* acks are sent without an answer: make sure the server has them */
    natsConnection_FlushTimeout(h->nc, h->timeout_ms);
    natsStatus s =
        js_GetConsumerInfo(&ci, h->js, h->stream, h->durable, NULL, &jerr);
    if (s != NATS_OK)
        return nerr(h, s, jerr, "consumer info");
    out->depth = (int64_t)ci->NumPending;
    out->in_flight = ci->NumAckPending;
    out->delayed = -1; /* held delayed events count as in flight */
    jsConsumerInfo_Destroy(ci);
    return 0;
}

/* Queue `name`'s stream holds what is not yet acked (work-queue
 * retention): ready, delayed and in flight alike.  Core mode stores
 * nothing to count, and a stream named by nats.stream is not the other
 * queue's alone. */
static int nats_count(void *state, const char *name, int64_t *n)
{
    nhandle *h = state;
    *n = -1;
    if (h->core || h->stream_given)
        return 0;
    char *stream = derived_name("EVQ_", name);
    if (!stream)
        return evq__err(EVQ_ENOMEM, "out of memory");
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, h->js, stream, NULL, &jerr);
    free(stream);
    if (s == NATS_OK) {
        *n = (int64_t)si->State.Msgs;
        jsStreamInfo_Destroy(si);
        return 0;
    }
    if (jerr == JSStreamNotFoundErr) {
        *n = 0;
        return 0;
    }
    return nerr(h, s, jerr, "stream info");
}

/* Deletes the queue's stream (its one subject is the queue's: see
 * ensure_stream) and with it the consumer; what this handle fetched goes
 * too.  Core mode stores nothing: there is nothing to delete. */
static int nats_pause(void *state, int set);

static int nats_destroy(void *state)
{
    nhandle *h = state;
    jsErrCode jerr = 0;
    if (h->core)
        return 0;
    natsStatus s = js_DeleteStream(h->js, h->stream, NULL, &jerr);
    if (s != NATS_OK && jerr != JSStreamNotFoundErr)
        return nerr(h, s, jerr, "delete stream");
    return nats_pause(h, 0);
}

/* ---- the pause state ------------------------------------------------------
 * A key <stream>.paused of the JetStream key-value bucket KV_BUCKET, one
 * for every evq queue of the server, made by the first pause. */

#define KV_BUCKET "evq-state"

/* The bucket, opened once (made when `create`); *kv NULL when it is not
 * there and not made.  Under kv_mu. */
static int state_bucket(nhandle *h, bool create, kvStore **kv)
{
    *kv = h->kv;
    if (h->kv)
        return 0;
    natsStatus s = js_KeyValue(&h->kv, h->js, KV_BUCKET);
    if (s == NATS_NOT_FOUND && create) {
        kvConfig cfg;
        kvConfig_Init(&cfg);
        cfg.Bucket = KV_BUCKET;
        cfg.Description = "evq: the queues' pause states";
        cfg.History = 1;
        cfg.StorageType = js_FileStorage;
        s = js_CreateKeyValue(&h->kv, h->js, &cfg);
    }
    if (s == NATS_NOT_FOUND)
        return 0;
    if (s != NATS_OK) {
        h->kv = NULL;
        return nerr(h, s, 0, "open the key-value bucket " KV_BUCKET);
    }
    *kv = h->kv;
    return 0;
}

static int nats_pause(void *state, int set)
{
    nhandle *h = state;
    if (h->core)
        return set < 0 ? 0
                       : evq__err(EVQ_ENOTSUP,
                                  "nats.mode=core keeps no state: a queue "
                                  "can be paused with JetStream");
    char key[300];
    snprintf(key, sizeof key, "%s.paused", h->stream);
    kvStore *kv;
    pthread_mutex_lock(&h->kv_mu);
    int rc = state_bucket(h, set > 0, &kv);
    natsStatus s = NATS_OK;
    if (!rc && kv) {
        if (set > 0) {
            s = kvStore_PutString(NULL, kv, key, "1");
        } else if (set == 0) {
            s = kvStore_Delete(kv, key);
        } else {
            kvEntry *e = NULL;
            s = kvStore_Get(&e, kv, key);
            rc = s == NATS_OK;
            kvEntry_Destroy(e);
        }
        if (s == NATS_NOT_FOUND)
            s = NATS_OK;
        if (s != NATS_OK)
            rc = nerr(h, s, 0, "the pause state");
    }
    pthread_mutex_unlock(&h->kv_mu);
    return rc;
}

const struct evq_backend_ops evq__backend_nats = {
    .scheme = "nats",
    .flags = EVQ__ITEM_EVENT | EVQ__UNIQUE_ID,
    .opts = nats_opts,
    .open = nats_open,
    .enqueue_start = nats_start,
    .enqueue_finish = nats_finish,
    .fetch = nats_fetch,
    .hand_back = nats_hand_back,
    .prefetch_opt = "nats.prefetch",
    .ack = nats_ack,
    .nack = nats_nack,
    .touch = nats_touch,
    .interrupt = nats_interrupt,
    .stats = nats_stats,
    .count = nats_count,
    .close = nats_close,
    .destroy = nats_destroy,
    .pause = nats_pause,
};
