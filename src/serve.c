/*
 * serve.c - a window on the queues: /metrics, a JSON API and a dashboard,
 * over HTTP through libmicrohttpd.
 *
 * One thread of libmicrohttpd's answers the requests, one at a time, so the
 * dead-letter handles (opened on first use) are only ever used there; a
 * sampler thread reads each queue's figures every sample_ms into a ring
 * that gives the rates and the chart.  The routes are in docs/serve.md.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

void evq_serve_opts_init_sized(evq_serve_opts *o, size_t size)
{
    const evq_serve_opts d = {
        .listen = "127.0.0.1:9188", .sample_ms = 2000, .max_dead_scan = 10000};
    evq__sized_init(o, size, &d, sizeof d);
}

#if EVQ__HAVE_SERVE

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <strings.h>
#include <sys/socket.h>

#include "web_assets.h"

#define N_SAMPLES 120

typedef struct sample {
    int64_t t_ms; /* real time */
    int64_t depth, in_flight, delayed, dead;
} sample;

typedef struct squeue {
    evq_queue *q;
    evq_queue *dead;        /* opened on first use, by the HTTP thread only */
    sample ring[N_SAMPLES]; /* under the server's mu */
    int n, head;            /* head: the next slot written */
} squeue;

struct evq_server {
    evq_serve_opts o;
    char *listen, *token, *allow_hosts;
    squeue *q;
    size_t nq;
    const evq_worker **w;
    char **wname;
    size_t nw;
    struct MHD_Daemon *d;
    int port;
    evq__logger *lg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t sampler;
    bool sampling, stop;
};

/* "HOST:PORT" or "[V6]:PORT" into an address. */
static int parse_listen(const char *s, struct sockaddr_storage *ss, int *v6)
{
    char host[256];
    const char *port;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof host)
            return evq__err(EVQ_EINVAL,
                            "evq_serve: listen '%s' is not [IPV6]:PORT", s);
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof host)
            return evq__err(EVQ_EINVAL,
                            "evq_serve: listen '%s' is not HOST:PORT", s);
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        port = colon + 1;
    }
    char *end;
    errno = 0;
    long p = strtol(port, &end, 10);
    if (!*port || *end || errno || p < 0 || p > 65535)
        return evq__err(EVQ_EINVAL, "evq_serve: bad port in listen '%s'", s);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV},
                    *ai;
    char ps[8];
    snprintf(ps, sizeof ps, "%ld", p);
    int g = getaddrinfo(host, ps, &hints, &ai);
    if (g)
        return evq__err(EVQ_EINVAL, "evq_serve: listen '%s': %s", s,
                        gai_strerror(g));
    memset(ss, 0, sizeof *ss);
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    return 0;
}

int evq_serve_new(evq_server **out, const evq_serve_opts *o)
{
    evq_serve_opts d;
    if (!out)
        return evq__err(EVQ_EINVAL, "evq_serve_new: s is NULL");
    *out = NULL;
    evq_serve_opts_init(&d);
    if (o && evq__sized_in(&d, sizeof d, o, "evq_serve_opts") != 0)
        return EVQ_EINVAL;
    o = &d;
    if (!o->listen || !*o->listen)
        return evq__err(EVQ_EINVAL, "evq_serve: listen is empty");
    if (o->token && strlen(o->token) < 16)
        return evq__err(EVQ_EINVAL,
                        "evq_serve: the token is %zu characters; at least 16",
                        strlen(o->token));
    if (o->sample_ms < 100 || o->sample_ms > 3600000)
        return evq__err(EVQ_EINVAL,
                        "evq_serve: sample_ms %lld is outside 100..3600000",
                        (long long)o->sample_ms);
    if (o->max_dead_scan < 1 || o->max_dead_scan > 100000)
        return evq__err(EVQ_EINVAL,
                        "evq_serve: max_dead_scan %d is outside 1..100000",
                        o->max_dead_scan);
    struct sockaddr_storage ss;
    int v6 = 0, rc = parse_listen(o->listen, &ss, &v6);
    if (rc)
        return rc;
    evq_server *s = calloc(1, sizeof *s);
    if (!s)
        return evq__err(EVQ_ENOMEM, "out of memory");
    pthread_mutex_init(&s->mu, NULL);
    evq__cond_init_mono(&s->cv);
    s->o = *o;
    s->listen = evq__strdup(o->listen);
    s->token = o->token ? evq__strdup(o->token) : NULL;
    s->allow_hosts = o->allow_hosts ? evq__strdup(o->allow_hosts) : NULL;
    s->lg = evq__logger_new("serve");
    if (!s->listen || (o->token && !s->token) ||
        (o->allow_hosts && !s->allow_hosts) || !s->lg) {
        evq_serve_free(s);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    evq__logger_set(s->lg, o->log, o->log_arg);
    *out = s;
    return 0;
}

int evq_serve_queue(evq_server *s, evq_queue *q)
{
    if (!s || !q)
        return evq__err(EVQ_EINVAL, "evq_serve_queue: NULL argument");
    if (s->d)
        return evq__err(EVQ_ESTATE, "evq_serve_queue: the server runs");
    /* the same series twice would make Prometheus refuse the scrape:
     * the labels are the name, the scheme and the URL without options */
    const char *u = evq_queue_url(q);
    size_t ul = strcspn(u, "?");
    for (size_t i = 0; i < s->nq; i++) {
        const char *v = evq_queue_url(s->q[i].q);
        if (s->q[i].q == q ||
            (strcspn(v, "?") == ul && !strncmp(u, v, ul) &&
             !strcmp(evq_queue_scheme(s->q[i].q), evq_queue_scheme(q)) &&
             !strcmp(evq_queue_name(s->q[i].q), evq_queue_name(q))))
            return evq__err(EVQ_EEXIST, "queue '%s' on %.*s is shown already",
                            evq_queue_name(q), (int)ul, u);
    }
    squeue *n = realloc(s->q, (s->nq + 1) * sizeof *n);
    if (!n)
        return evq__err(EVQ_ENOMEM, "out of memory");
    s->q = n;
    memset(&s->q[s->nq], 0, sizeof *n);
    s->q[s->nq++].q = q;
    return 0;
}

int evq_serve_worker(evq_server *s, const evq_worker *w, const char *name)
{
    if (!s || !w)
        return evq__err(EVQ_EINVAL, "evq_serve_worker: NULL argument");
    if (s->d)
        return evq__err(EVQ_ESTATE, "evq_serve_worker: the server runs");
    char dflt[32];
    snprintf(dflt, sizeof dflt, "worker%zu", s->nw);
    for (size_t i = 0; i < s->nw; i++) {
        if (s->w[i] == w || !strcmp(s->wname[i], name ? name : dflt))
            return evq__err(EVQ_EEXIST, "worker '%s' is shown already",
                            s->wname[i]);
    }
    char *copy = evq__strdup(name ? name : dflt);
    const evq_worker **nw = realloc(s->w, (s->nw + 1) * sizeof *nw);
    if (nw)
        s->w = nw;
    char **nn = realloc(s->wname, (s->nw + 1) * sizeof *nn);
    if (nn)
        s->wname = nn;
    if (!copy || !nw || !nn) {
        free(copy);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    s->w[s->nw] = w;
    s->wname[s->nw++] = copy;
    return 0;
}

/* ---- the sampler --------------------------------------------------------- */

static void take_sample(evq_server *s, squeue *sq)
{
    struct evq_queue_stats st;
    if (evq_queue_stats(sq->q, &st))
        return; /* a gap in the chart */
    sample x = {evq__now_real_ns() / 1000000, st.depth, st.in_flight,
                st.delayed, st.dead};
    pthread_mutex_lock(&s->mu);
    sq->ring[sq->head] = x;
    sq->head = (sq->head + 1) % N_SAMPLES;
    if (sq->n < N_SAMPLES)
        sq->n++;
    pthread_mutex_unlock(&s->mu);
}

static void *sampler_main(void *arg)
{
    evq_server *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        pthread_mutex_unlock(&s->mu);
        for (size_t i = 0; i < s->nq; i++)
            take_sample(s, &s->q[i]);
        pthread_mutex_lock(&s->mu);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = (int64_t)ts.tv_nsec + (int64_t)s->o.sample_ms * 1000000;
        ts.tv_sec += (time_t)(ns / 1000000000);
        ts.tv_nsec = (long)(ns % 1000000000);
        while (!s->stop && pthread_cond_timedwait(&s->cv, &s->mu, &ts) == 0)
            ;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- responses ------------------------------------------------------------
 */

typedef struct req {
    evq_server *s;
    struct MHD_Connection *c;
    const char *method, *url;
    const char *allow; /* the methods a 405 names */
} req;

static const char *const security_headers[][2] = {
    {"Cache-Control", "no-store"},
    {"X-Content-Type-Options", "nosniff"},
    {"X-Frame-Options", "DENY"},
    {"Referrer-Policy", "no-referrer"},
    {"Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; "
     "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
     "frame-ancestors 'none'; base-uri 'none'"},
};

static enum MHD_Result respond(req *r, unsigned status, const char *type,
                               const void *body, size_t len, bool copy)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, (void *)body,
        copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", type);
    for (size_t i = 0; i < sizeof security_headers / sizeof *security_headers;
         i++)
        MHD_add_response_header(resp, security_headers[i][0],
                                security_headers[i][1]);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED && r->allow)
        MHD_add_response_header(resp, "Allow", r->allow);
    enum MHD_Result ok = MHD_queue_response(r->c, status, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* Sends `j` (stolen) as JSON. */
static enum MHD_Result respond_json(req *r, unsigned status, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text)
        return respond(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain",
                       "out of memory\n", 14, false);
    enum MHD_Result ok =
        respond(r, status, "application/json", text, strlen(text), true);
    free(text);
    return ok;
}

static enum MHD_Result fail(req *r, unsigned status, const char *fmt, ...)
    EVQ__PRINTF(3, 4);
/* A message as a JSON string: bytes outside printable ASCII (a UTF-8
 * character cut short by a bound, say) become '?', so it always is one. */
static json_t *ascii_string(const char *m)
{
    char clean[512];
    size_t i = 0;
    for (; m[i] && i + 1 < sizeof clean; i++)
        clean[i] = m[i] >= 0x20 && m[i] < 0x7f ? m[i] : '?';
    clean[i] = '\0';
    return json_string(clean);
}

static enum MHD_Result fail(req *r, unsigned status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return respond_json(r, status,
                        json_pack("{so}", "error", ascii_string(msg)));
}

/* ---- checks ----------------------------------------------------------------
 */

/* Whether the Host header names this server as no other site can: an IP
 * address, localhost, or a name the operator allowed. */
static bool host_allowed(const evq_server *s, const char *host)
{
    if (!host)
        return true; /* HTTP/1.0: no browser sends that */
    char name[256];
    size_t n;
    if (host[0] == '[') {
        const char *end = strchr(host, ']');
        if (!end || end - host - 1 >= (long)sizeof name)
            return false;
        n = (size_t)(end - host - 1);
        memcpy(name, host + 1, n);
        name[n] = '\0';
        unsigned char a[16];
        return inet_pton(AF_INET6, name, a) == 1;
    }
    n = strcspn(host, ":");
    if (n >= sizeof name)
        return false;
    memcpy(name, host, n);
    name[n] = '\0';
    unsigned char a[4];
    if (inet_pton(AF_INET, name, a) == 1 || !strcasecmp(name, "localhost"))
        return true;
    for (const char *p = s->allow_hosts; p && *p;) {
        size_t k = strcspn(p, ",");
        if (k == n && !strncasecmp(p, name, n))
            return true;
        p += k + (p[k] == ',');
    }
    return false;
}

static bool same_bytes(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = (unsigned char)(la != lb);
    for (size_t i = 0; i < la; i++)
        d |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return d == 0;
}

/* A change is allowed when the token came in a header (which no form of
 * another site can send) and the request came from no other origin. */
static enum MHD_Result check_change(req *r, bool *ok)
{
    *ok = false;
    if (!r->s->token)
        return fail(r, MHD_HTTP_FORBIDDEN,
                    "changes are off: the server has no token");
    const char *auth =
        MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "Authorization");
    const char *tok =
        MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "X-Evq-Token");
    if (!tok && auth && !strncasecmp(auth, "Bearer ", 7))
        tok = auth + 7;
    if (!tok || !same_bytes(tok, r->s->token))
        return fail(r, MHD_HTTP_FORBIDDEN, "a bad or missing token");
    const char *origin =
        MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "Origin");
    const char *host =
        MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "Host");
    if (origin &&
        (!host || strncmp(origin, "http://", 7) || strcmp(origin + 7, host)))
        return fail(r, MHD_HTTP_FORBIDDEN, "a request from another origin");
    const char *site =
        MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "Sec-Fetch-Site");
    if (site && strcmp(site, "same-origin") && strcmp(site, "none"))
        return fail(r, MHD_HTTP_FORBIDDEN, "a request from another site");
    *ok = true;
    return MHD_YES;
}

/* ---- the API ----------------------------------------------------------------
 */

static json_t *num_or_null(int64_t v)
{
    return v >= 0 ? json_integer(v) : json_null();
}

static json_t *queue_json(evq_server *s, size_t i)
{
    squeue *sq = &s->q[i];
    struct evq_queue_stats st;
    int rc = evq_queue_stats(sq->q, &st);
    json_t *o = json_pack("{sI ss ss ss}", "id", (json_int_t)i, "name",
                          evq_queue_name(sq->q), "backend",
                          evq_queue_scheme(sq->q), "url", evq_queue_url(sq->q));
    if (!o)
        return NULL;
    if (rc) {
        json_object_set_new(o, "error", ascii_string(evq_errmsg()));
        return o;
    }
    json_object_set_new(o, "depth", num_or_null(st.depth));
    json_object_set_new(o, "in_flight", num_or_null(st.in_flight));
    json_object_set_new(o, "delayed", num_or_null(st.delayed));
    json_object_set_new(o, "dead", num_or_null(st.dead));
    int p = evq_queue_paused(sq->q);
    json_object_set_new(o, "paused",
                        p == 0 || p == 1 ? json_boolean(p) : json_null());
    /* the rates over the ring (a minute at the default): how fast depth
     * and dead letters grew, per second */
    pthread_mutex_lock(&s->mu);
    json_t *h = json_array(); /* the readings' depths, for the chart */
    for (int k = 0; h && k < sq->n; k++)
        json_array_append_new(
            h,
            num_or_null(sq->ring[(sq->head + N_SAMPLES - sq->n + k) % N_SAMPLES]
                            .depth));
    json_object_set_new(o, "history", h);
    if (sq->n >= 2) {
        const sample *last = &sq->ring[(sq->head + N_SAMPLES - 1) % N_SAMPLES];
        int back = sq->n < 31 ? sq->n - 1 : 30;
        const sample *first =
            &sq->ring[(sq->head + N_SAMPLES - 1 - back) % N_SAMPLES];
        double dt = (double)(last->t_ms - first->t_ms) / 1000.0;
        if (dt > 0) {
            if (last->depth >= 0 && first->depth >= 0)
                json_object_set_new(
                    o, "depth_rate",
                    json_real((double)(last->depth - first->depth) / dt));
            if (last->dead >= 0 && first->dead >= 0)
                json_object_set_new(
                    o, "dead_rate",
                    json_real((double)(last->dead - first->dead) / dt));
        }
    }
    pthread_mutex_unlock(&s->mu);
    return o;
}

static enum MHD_Result api_queues(req *r)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < r->s->nq; i++)
        json_array_append_new(a, queue_json(r->s, i));
    return respond_json(r, MHD_HTTP_OK, json_pack("{so}", "queues", a));
}

static enum MHD_Result api_history(req *r, squeue *sq)
{
    json_t *a = json_array();
    pthread_mutex_lock(&r->s->mu);
    for (int k = 0; a && k < sq->n; k++) {
        const sample *x =
            &sq->ring[(sq->head + N_SAMPLES - sq->n + k) % N_SAMPLES];
        json_array_append_new(
            a, json_pack("[I o o o o]", (json_int_t)x->t_ms,
                         num_or_null(x->depth), num_or_null(x->in_flight),
                         num_or_null(x->delayed), num_or_null(x->dead)));
    }
    pthread_mutex_unlock(&r->s->mu);
    return respond_json(r, MHD_HTTP_OK,
                        json_pack("{sI s[ssss] so}", "interval_ms",
                                  (json_int_t)r->s->o.sample_ms, "columns",
                                  "depth", "in_flight", "delayed", "dead",
                                  "samples", a));
}

static enum MHD_Result api_workers(req *r)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < r->s->nw; i++) {
        struct evq_worker_stats st;
        if (evq_worker_stats(r->s->w[i], &st))
            continue;
        json_array_append_new(
            a,
            json_pack(
                "{ss ss sI sI sI sI sI sI sI sI sf sf sf sf}", "name",
                r->s->wname[i], "queue", evq__worker_queue_name(r->s->w[i]),
                "received", (json_int_t)st.received, "succeeded",
                (json_int_t)st.succeeded, "failed", (json_int_t)st.failed,
                "retried", (json_int_t)st.retried, "dead_lettered",
                (json_int_t)st.dead_lettered, "timed_out",
                (json_int_t)st.timed_out, "in_flight", (json_int_t)st.in_flight,
                "latency_count", (json_int_t)st.latency_count, "latency_p50_s",
                (double)st.latency_ns_p50 / 1e9, "latency_p90_s",
                (double)st.latency_ns_p90 / 1e9, "latency_p99_s",
                (double)st.latency_ns_p99 / 1e9, "latency_p999_s",
                (double)st.latency_ns_p999 / 1e9));
    }
    return respond_json(r, MHD_HTTP_OK, json_pack("{so}", "workers", a));
}

/* The dead-letter queue of sq, opened once.  1 when there is none (no
 * letter ever died), 0 when open, else an error answered already. */
static int open_dead(req *r, squeue *sq, enum MHD_Result *res)
{
    if (sq->dead)
        return 0;
    int rc = evq_queue_open_dead(&sq->dead, sq->q);
    if (rc == EVQ_ENOENT)
        return 1;
    if (rc) {
        evq__logf(r->s->lg, EVQ_LOG_WARN, "opening the dead letters of %s: %s",
                  evq_queue_name(sq->q), evq_errmsg());
        *res = fail(r, MHD_HTTP_BAD_GATEWAY, "opening the dead letters: %s",
                    evq_errmsg());
        return -1;
    }
    return 0;
}

/* Takes dead letters until `want` (an event id) is found, or all of them
 * (up to max_dead_scan): a dequeue comes back empty early while a backend
 * gets ready (a consumer group's join), so it waits up to 5 s for as many
 * as the queue's figures say it holds.  The caller settles each taken
 * message. */
static int take_dead(evq_server *s, squeue *sq, const char *want,
                     evq_msg ***out, size_t *n)
{
    struct evq_queue_stats st;
    int64_t expected = -1;
    if (evq_queue_stats(sq->dead, &st) == 0)
        expected = st.depth;
    int64_t until = evq__now_mono_ns() + 5000000000LL;
    evq_msg **m = NULL;
    size_t k = 0, cap = 0;
    int rc = 0;
    while (k < (size_t)s->o.max_dead_scan) {
        int64_t left = (until - evq__now_mono_ns()) / 1000000;
        int wait = (int64_t)k < expected && left > 0 ? (int)left : 0;
        evq_msg *x;
        rc = evq_dequeue(sq->dead, &x, wait);
        if (rc == EVQ_ETIMEDOUT) {
            rc = 0;
            break;
        }
        if (rc)
            break;
        if (k == cap) { /* doubling: a scan may take 100 000 */
            size_t ncap = cap ? 2 * cap : 64;
            evq_msg **g = realloc(m, ncap * sizeof *g);
            if (!g) {
                evq_nack(x, 0);
                rc = EVQ_ENOMEM;
                break;
            }
            m = g;
            cap = ncap;
        }
        m[k++] = x;
        if (want && !strcmp(evq_event_id(evq_msg_event(x)), want))
            break;
    }
    *out = m;
    *n = k;
    return rc;
}

/* open_dead and take_dead: 1 when answered already (the dead-letter
 * queue could not be opened), else take_dead's code (0 or an EVQ_ error);
 * none taken when no letter ever died. */
static int take_letters(req *r, squeue *sq, const char *want, evq_msg ***m,
                        size_t *n, enum MHD_Result *res)
{
    *m = NULL;
    *n = 0;
    int none = open_dead(r, sq, res);
    if (none)
        return none < 0 ? 1 : 0;
    return take_dead(r->s, sq, want, m, n);
}

static void give_back(evq_msg **m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (m[i])
            evq_nack(m[i], 0);
    free(m);
}

static int by_time(const void *a, const void *b)
{
    const evq_event *x = evq_msg_event(*(evq_msg *const *)a),
                    *y = evq_msg_event(*(evq_msg *const *)b);
    int64_t tx = evq_event_time_ns(x), ty = evq_event_time_ns(y);
    if (tx != ty)
        return tx < ty ? -1 : 1;
    return strcmp(evq_event_id(x), evq_event_id(y));
}

/* A letter: the event as CloudEvents JSON, its reason and attempts.  Data
 * past `max_data` bytes of JSON is left out (truncated: true). */
static json_t *letter_json(const evq_event *ev, size_t max_data)
{
    unsigned char *bytes = NULL;
    size_t len = 0;
    json_t *e = NULL;
    if (evq_event_encode(ev, "json", NULL, &bytes, &len) == 0)
        e = json_loadb((const char *)bytes, len, 0, NULL);
    free(bytes);
    if (!e)
        e = json_pack("{ss}", "id", evq_event_id(ev));
    bool truncated = false;
    if (len > max_data) {
        truncated = json_object_del(e, "data") == 0;
        truncated |= json_object_del(e, "data_base64") == 0;
    }
    const char *reason = evq_event_attr(ev, "evqerror"),
               *attempts = evq_event_attr(ev, "evqattempts");
    return json_pack("{so ss? ss? sb}", "event", e, "reason", reason,
                     "attempts", attempts, "truncated", truncated);
}

static bool parse_size(const char *s, long max, long *out)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : -1;
    if (!s || errno || end == s || *end || v < 0 || v > max)
        return false;
    *out = v;
    return true;
}

static enum MHD_Result api_dead(req *r, squeue *sq, bool one)
{
    const char *id = NULL;
    long offset = 0, limit = 50;
    if (one) {
        id = MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, "id");
        if (!id || !*id)
            return fail(r, MHD_HTTP_BAD_REQUEST, "needs ?id=EVENT_ID");
    } else {
        const char *o =
            MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, "offset");
        const char *l =
            MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, "limit");
        if (o && !parse_size(o, 1000000, &offset))
            return fail(r, MHD_HTTP_BAD_REQUEST, "bad offset '%.40s'", o);
        if (l && (!parse_size(l, 500, &limit) || limit < 1))
            return fail(r, MHD_HTTP_BAD_REQUEST, "bad limit '%.40s': 1 to 500",
                        l);
    }
    enum MHD_Result res = MHD_NO;
    evq_msg **m = NULL;
    size_t n = 0;
    int rc = take_letters(r, sq, id, &m, &n, &res);
    if (rc == 1)
        return res;
    if (rc) {
        give_back(m, n);
        return fail(r, MHD_HTTP_BAD_GATEWAY, "reading the dead letters: %s",
                    evq_errmsg());
    }
    json_t *body;
    if (one) {
        body = n && !strcmp(evq_event_id(evq_msg_event(m[n - 1])), id)
                   ? letter_json(evq_msg_event(m[n - 1]), SIZE_MAX)
                   : NULL;
        give_back(m, n);
        if (!body)
            return fail(r, MHD_HTTP_NOT_FOUND, "no dead letter with that id");
        return respond_json(r, MHD_HTTP_OK, body);
    }
    if (n > 1)
        qsort(m, n, sizeof *m, by_time);
    json_t *a = json_array();
    for (size_t i = (size_t)offset; a && i < n && i < (size_t)(offset + limit);
         i++)
        json_array_append_new(a, letter_json(evq_msg_event(m[i]), 16384));
    give_back(m, n);
    return respond_json(r, MHD_HTTP_OK,
                        json_pack("{sI sI sI sb so}", "total", (json_int_t)n,
                                  "offset", (json_int_t)offset, "limit",
                                  (json_int_t)limit, "scan_limited",
                                  n >= (size_t)r->s->o.max_dead_scan, "letters",
                                  a));
}

/* Replays or purges the letter ?id=, or every letter with ?all=1. */
static enum MHD_Result api_settle(req *r, squeue *sq, bool replay)
{
    const char *id =
        MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, "id");
    const char *all =
        MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, "all");
    bool every = all && !strcmp(all, "1");
    if ((!id || !*id) == !every)
        return fail(r, MHD_HTTP_BAD_REQUEST, "needs ?id=EVENT_ID or ?all=1");
    enum MHD_Result res = MHD_NO;
    evq_msg **m = NULL;
    size_t n = 0;
    int rc = take_letters(r, sq, every ? NULL : id, &m, &n, &res);
    if (rc == 1)
        return res;
    size_t done = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (!every && strcmp(evq_event_id(evq_msg_event(m[i])), id))
            continue;
        evq_msg *x = m[i];
        m[i] = NULL;
        rc = replay ? evq_msg_replay(x, sq->q) : evq_ack(x);
        if (!rc)
            done++;
    }
    give_back(m, n);
    const char *what = replay ? "replayed" : "purged";
    if (done)
        evq__logf(r->s->lg, EVQ_LOG_INFO, "%s %zu dead letter%s of %s", what,
                  done, done == 1 ? "" : "s", evq_queue_name(sq->q));
    if (rc)
        return fail(r, MHD_HTTP_BAD_GATEWAY, "%s %zu, then: %s", what, done,
                    evq_errmsg());
    if (!every && !done)
        return fail(r, MHD_HTTP_NOT_FOUND, "no dead letter with that id");
    return respond_json(r, MHD_HTTP_OK,
                        json_pack("{sI}", what, (json_int_t)done));
}

static enum MHD_Result api_pause(req *r, squeue *sq, bool pause)
{
    int rc = pause ? evq_queue_pause(sq->q) : evq_queue_resume(sq->q);
    if (rc == EVQ_ENOTSUP)
        return fail(r, MHD_HTTP_NOT_IMPLEMENTED, "%s", evq_errmsg());
    if (rc)
        return fail(r, MHD_HTTP_BAD_GATEWAY, "%s", evq_errmsg());
    evq__logf(r->s->lg, EVQ_LOG_INFO, "%s %s", pause ? "paused" : "resumed",
              evq_queue_name(sq->q));
    return respond_json(r, MHD_HTTP_OK, json_pack("{sb}", "paused", pause));
}

/* ---- routing
 * ----------------------------------------------------------------- */

static enum MHD_Result route(req *r)
{
    evq_server *s = r->s;
    bool get = !strcmp(r->method, "GET") || !strcmp(r->method, "HEAD");
    bool post = !strcmp(r->method, "POST");
    const char *u = r->url;

    if (!strncmp(u, "/api/queues/", 12)) {
        char *end;
        errno = 0;
        unsigned long i = strtoul(u + 12, &end, 10);
        if (errno || end == u + 12 || !isdigit((unsigned char)u[12]) ||
            i >= s->nq)
            return fail(r, MHD_HTTP_NOT_FOUND, "no such queue");
        squeue *sq = &s->q[i];
        static const struct {
            const char *path;
            bool change;
            int what;
        } sub[] = {{"/history", false, 0},   {"/dead", false, 1},
                   {"/letter", false, 2},    {"/dead/replay", true, 3},
                   {"/dead/purge", true, 4}, {"/pause", true, 5},
                   {"/resume", true, 6}};
        for (size_t k = 0; k < sizeof sub / sizeof *sub; k++) {
            if (strcmp(end, sub[k].path))
                continue;
            if (sub[k].change ? !post : !get) {
                r->allow = sub[k].change ? "POST" : "GET, HEAD";
                return fail(r, MHD_HTTP_METHOD_NOT_ALLOWED, "use %s",
                            sub[k].change ? "POST" : "GET");
            }
            if (sub[k].change) {
                bool ok;
                enum MHD_Result res = check_change(r, &ok);
                if (!ok)
                    return res;
            }
            switch (sub[k].what) {
            case 0:
                return api_history(r, sq);
            case 1:
            case 2:
                return api_dead(r, sq, sub[k].what == 2);
            case 3:
            case 4:
                return api_settle(r, sq, sub[k].what == 3);
            default:
                return api_pause(r, sq, sub[k].what == 5);
            }
        }
        return fail(r, MHD_HTTP_NOT_FOUND, "no such page");
    }
    if (!get) {
        r->allow = "GET, HEAD";
        return fail(r, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET");
    }
    if (!strcmp(u, "/api/queues"))
        return api_queues(r);
    if (!strcmp(u, "/api/workers"))
        return api_workers(r);
    if (!strcmp(u, "/metrics")) {
        evq_queue **qs = s->nq ? calloc(s->nq, sizeof *qs) : NULL;
        if (s->nq && !qs)
            return fail(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        for (size_t i = 0; i < s->nq; i++)
            qs[i] = s->q[i].q;
        char *text = evq_prometheus(qs, s->nq, s->w,
                                    (const char *const *)s->wname, s->nw);
        free(qs);
        if (!text)
            return fail(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        enum MHD_Result ok =
            respond(r, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                    text, strlen(text), true);
        free(text);
        return ok;
    }
    const char *file = !strcmp(u, "/") ? "/index.html" : u;
    for (size_t i = 0; i < evq__web_count; i++) {
        if (!strcmp(file + 1, evq__web[i].name))
            return respond(r, MHD_HTTP_OK, evq__web[i].type, evq__web[i].data,
                           evq__web[i].len, false);
    }
    return fail(r, MHD_HTTP_NOT_FOUND, "no such page");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **state)
{
    (void)version;
    (void)upload;
    req r = {cls, c, method, url, NULL};
    /* the first call only sees the headers; a body (none is needed) is
     * read and dropped before the answer */
    if (!*state) {
        *state = cls; /* any non-NULL marker */
        if (!host_allowed(
                r.s, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host")))
            return fail(&r, MHD_HTTP_MISDIRECTED_REQUEST,
                        "unknown Host: start the server with "
                        "--allow-host NAME");
        /* A page of another site may not make the browser call the API
         * (a listing takes the dead letters for a moment): browsers say
         * where a request comes from; curl and Prometheus say nothing. */
        const char *site =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Sec-Fetch-Site");
        if (site && strcmp(site, "same-origin") && strcmp(site, "none") &&
            (!strncmp(url, "/api/", 5) || !strcmp(url, "/metrics")))
            return fail(&r, MHD_HTTP_FORBIDDEN, "a request from another site");
        return MHD_YES;
    }
    if (*upload_size) {
        *upload_size = 0;
        return MHD_YES;
    }
    return route(&r);
}

static void mhd_log(void *arg, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void mhd_log(void *arg, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    evq__logf(arg, EVQ_LOG_WARN, "%s", line);
}

int evq_serve_start(evq_server *s)
{
    if (!s)
        return evq__err(EVQ_EINVAL, "evq_serve_start: s is NULL");
    if (s->d)
        return evq__err(EVQ_ESTATE, "evq_serve_start: started already");
    struct sockaddr_storage ss;
    int v6 = 0, rc = parse_listen(s->listen, &ss, &v6);
    if (rc)
        return rc;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
                     (v6 ? MHD_USE_IPv6 : 0);
    s->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, s->lg, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_END);
    if (!s->d)
        return evq__err(EVQ_EIO, "evq_serve: cannot listen on %s: %s",
                        s->listen, strerror(errno));
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : 0;
    s->stop = false;
    if (s->nq && pthread_create(&s->sampler, NULL, sampler_main, s) == 0)
        s->sampling = true;
    else if (s->nq)
        evq__logf(s->lg, EVQ_LOG_WARN,
                  "no sampler thread: the rates and charts stay empty");
    return 0;
}

int evq_serve_port(const evq_server *s)
{
    return s && s->d ? s->port : 0;
}

void evq_serve_free(evq_server *s)
{
    if (!s)
        return;
    if (s->sampling) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->sampler, NULL);
    }
    if (s->d)
        MHD_stop_daemon(s->d);
    for (size_t i = 0; i < s->nq; i++)
        evq_queue_close(s->q[i].dead);
    for (size_t i = 0; i < s->nw; i++)
        free(s->wname[i]);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    evq__logger_free(s->lg);
    free(s->q);
    free(s->w);
    free(s->wname);
    free(s->listen);
    free(s->token);
    free(s->allow_hosts);
    free(s);
}

#else /* without libmicrohttpd */

#define OFF                                                                    \
    evq__err(EVQ_ENOTSUP, "evq was built without evq serve: build it with "    \
                          "libmicrohttpd and -DEVQ_WITH_SERVE=ON")

int evq_serve_new(evq_server **s, const evq_serve_opts *o)
{
    evq_serve_opts d;
    if (s)
        *s = NULL;
    evq_serve_opts_init(&d);
    if (o && evq__sized_in(&d, sizeof d, o, "evq_serve_opts") != 0)
        return EVQ_EINVAL; /* a program's mistake, said in any build */
    return OFF;
}

int evq_serve_queue(evq_server *s, evq_queue *q)
{
    (void)s;
    (void)q;
    return OFF;
}

int evq_serve_worker(evq_server *s, const evq_worker *w, const char *name)
{
    (void)s;
    (void)w;
    (void)name;
    return OFF;
}

int evq_serve_start(evq_server *s)
{
    (void)s;
    return OFF;
}

int evq_serve_port(const evq_server *s)
{
    (void)s;
    return 0;
}

void evq_serve_free(evq_server *s)
{
    (void)s;
}

#endif
