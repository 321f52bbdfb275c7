/*
 * postgres.c - durable queues in a PostgreSQL database:
 * postgres://[user[:password]@]host[:port]/dbname (postgresql:// too).
 *
 * Every queue of a database lives in one table, <schema>.messages (schema
 * `evq` unless postgres.schema says otherwise), ordered by (queue,
 * visible_at, id), as on sqlite://: a message is visible when visible_at
 * (Unix ms, the server's clock) has passed.  Claims take the oldest
 * visible rows with FOR UPDATE SKIP LOCKED, so consumers never wait on
 * each other's rows, push their visible_at a visibility timeout ahead,
 * raise their attempt counts and stamp them with a claim token.  Ack
 * deletes a row, nack and touch move its visible_at, each only while the
 * row still carries the token of our claim.
 *
 * Connections: two per handle.  One claims and, between claims, LISTENs:
 * enqueue and nack send a NOTIFY on the queue's channel (committed with
 * the rows), so an idle consumer sleeps in poll() until one comes, the
 * next delayed event is due, or poll_ms passes (a notification missed
 * while the connection was being made again).  The other runs every other
 * statement, under the handle's lock.  A connection that fails is made
 * again on its next use; meanwhile calls fail with EVQ_ECONN.
 *
 * The connection takes libpq's conventions: the URL's parts, then any
 * libpq keyword given as an option (sslmode=require, host=/run/postgresql
 * for a socket's folder, application_name, ...), and for what neither
 * gives, libpq's PG* environment variables and defaults.
 */
#include "../internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* The schema's version: what this evq makes, and the newest it reads. */
#define SCHEMA_VERSION 2
#define SCHEMA_VERSION_TEXT "2"

/* The server's clock, Unix ms. */
#define NOW_MS "(extract(epoch from clock_timestamp()) * 1000)::bigint"

/* Enqueue: $1 queue, $2 bodies, $3 delays (ms), $4 the channel; the rows
 * and the notification commit together. */
static const char insert_sql[] =
    "WITH t AS (SELECT " NOW_MS " AS now), ins AS (INSERT INTO "
    "%1$s.messages (queue, body, attempt, visible_at, enqueued_at, "
    "priority) SELECT $1, b, 0, t.now + d, t.now, p FROM t, "
    "unnest($2::bytea[], $3::bigint[], $5::smallint[]) AS u(b, d, p) "
    "RETURNING 1) SELECT (SELECT count(*) FROM ins), pg_notify($4, '')";

typedef struct pgcfg {
    int64_t visibility_timeout_ms, poll_ms, connect_timeout_ms, ack_flush_ms;
    const char *schema;
} pgcfg;

/* libpq's connection keywords (PQconndefaults of libpq 15), taken as
 * options and passed on as they are. */
#define PG_KEYWORDS(X)                                                         \
    X(host) X(hostaddr) X(port) X(dbname) X(user) X(password) X(passfile)      \
    X(service) X(channel_binding) X(connect_timeout) X(client_encoding)        \
    X(options) X(application_name) X(keepalives) X(keepalives_idle)            \
    X(keepalives_interval) X(keepalives_count) X(tcp_user_timeout)             \
    X(sslmode) X(sslcompression) X(sslcert) X(sslkey) X(sslpassword)           \
    X(sslrootcert) X(sslcrl) X(sslcrldir) X(sslsni) X(requirepeer)             \
    X(ssl_min_protocol_version) X(ssl_max_protocol_version) X(gssencmode)      \
    X(krbsrvname) X(gsslib) X(target_session_attrs)

#define PG_OPT(kw)                                                             \
    {#kw, EVQ__OPT_STRING, NULL, 0, 0, NULL,                                   \
     "libpq's connection keyword " #kw ", passed on", 0},

static const evq__opt_spec pg_opts[] = {
    {"visibility_timeout_ms", EVQ__OPT_INT, "30000", 100, 86400000, NULL,
     "how long a dequeued event stays hidden before it is delivered again "
     "(a consumer that died without acking)",
     EVQ__AT(pgcfg, visibility_timeout_ms)},
    {"poll_ms", EVQ__OPT_INT, "1000", 10, 600000, NULL,
     "how often an idle consumer looks for events without a notification "
     "(one sent while its connection was down)",
     EVQ__AT(pgcfg, poll_ms)},
    EVQ__CONNECT_TIMEOUT_OPT(pgcfg),
    {"postgres.schema", EVQ__OPT_STRING, "evq", 0, 0, NULL,
     "the schema holding evq's tables (made if missing)",
     EVQ__AT(pgcfg, schema)},
    {"postgres.ack_flush_ms", EVQ__OPT_INT, "20", 0, 10000, NULL,
     "longest an ack waits to be sent with others (0: each ack at once)",
     EVQ__AT(pgcfg, ack_flush_ms)},
    {"postgres.claim_batch", EVQ__OPT_INT, "64", 1, 1000, NULL,
     "events claimed per statement (the rest wait in the handle, hidden "
     "from others, until dequeued)",
     0},
    PG_KEYWORDS(PG_OPT){0},
};

static const char *const pg_keywords[] = {
#define PG_NAME(kw) #kw,
    PG_KEYWORDS(PG_NAME)
#undef PG_NAME
};

/* A claimed message, the delivery's token. */
typedef struct pgmsg {
    int64_t id, claim;
    int64_t lease_ns;
    int attempt, priority;
    size_t len, full_len;
    unsigned char body[];
} pgmsg;

typedef struct pghandle {
    pthread_mutex_t mu; /* guards cmd */
    PGconn *cmd;        /* enqueue, delete: committed durably */
    pthread_mutex_t settle_mu; /* guards settle and the acks waiting */
    PGconn *settle; /* ack, nack, touch, hand-back, stats: asynchronous
                       commit (a crash may undo the last ones: the events
                       are delivered again, as at-least-once allows) */
    PGconn *rd; /* claims and LISTEN: the read-ahead's one fetcher */
    bool rd_listening;
    int wake_fd; /* an eventfd: interrupt wakes a waiting fetch */
    /* libpq's keywords and values, NULL-terminated (the values the
     * handle's copies or the options', which live as long as it) */
    const char *kw[64], *val[64];
    char *dbname, *user, *password, *port_list, *host_list,
        *connect_timeout;
    char *queue, *schema_text;
    char *schema; /* quoted identifier */
    char *channel;
    /* statements, with the schema in them */
    char *sql_insert, *sql_claim, *sql_next, *sql_ack, *sql_release,
        *sql_nack, *sql_touch, *sql_stats, *sql_delete;
    /* acks waiting to be sent together (under settle_mu) */
    struct pgack {
        int64_t id, claim;
    } * acks;
    size_t n_acks, cap_acks;
    int64_t oldest_ack_ms;
    int ack_flush_ms;
    evq__flusher flusher; /* sends them in time */
    bool flusher_init;
    int64_t vt_ms, poll_ms;
    size_t max_bytes;
    uint64_t claim_seq;
    atomic_uint record_puts; /* one in 256 clears the expired records */
    evq__logger *log;
    atomic_bool down, interrupted;
} pghandle;

/* ---- errors and connections ---------------------------------------------- */

/* libpq's message as one line: its line breaks and indents become single
 * spaces, and the trailing ones go. */
static void one_line(char *out, size_t cap, const char *msg)
{
    size_t n = 0;
    bool space = false;
    for (const char *p = msg; *p && n + 1 < cap; p++) {
        if (*p == '\n' || *p == '\t' || *p == ' ') {
            space = n > 0;
            continue;
        }
        if (space && n + 2 < cap)
            out[n++] = ' ';
        space = false;
        out[n++] = *p;
    }
    out[n] = '\0';
}

/* An error from libpq on `c` (and `res`, when a statement failed): what
 * kind, and the server's words. */
static int pg_err(pghandle *h, PGconn *c, const PGresult *res,
                  const char *what)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if (!msg || !*msg)
        msg = c ? PQerrorMessage(c) : "out of memory";
    char text[512];
    one_line(text, sizeof text, msg);
    int code = EVQ_EIO;
    if (!c || PQstatus(c) != CONNECTION_OK || (state && !strncmp(state, "08", 2)) ||
        (state && (!strcmp(state, "57P01") || !strcmp(state, "57P02") ||
                   !strcmp(state, "57P03"))))
        code = EVQ_ECONN;
    else if (state && !strcmp(state, "25006"))
        code = EVQ_ESTATE; /* a read-only transaction */
    int rc = evq__err(code, "postgres %s: %s", what, text);
    if (code == EVQ_ECONN && !atomic_exchange(&h->down, true))
        evq__logf(h->log, EVQ_LOG_WARN,
                  "lost the connection to the server (%s); reconnecting",
                  evq_errmsg());
    return rc;
}

/* Connects (or connects again) *c.  The failure names what went wrong:
 * EVQ_EINVAL for credentials refused, EVQ_ENOENT for a missing database,
 * else EVQ_ECONN. */
static int pg_connect(pghandle *h, PGconn **c, bool async_commit)
{
    if (*c && PQstatus(*c) == CONNECTION_OK)
        return 0;
    if (*c) {
        PQfinish(*c);
        *c = NULL;
    }
    PGconn *nc = PQconnectdbParams(h->kw, h->val, 0);
    if (!nc)
        return evq__err(EVQ_ENOMEM, "out of memory");
    if (PQstatus(nc) != CONNECTION_OK) {
        const char *m = PQerrorMessage(nc);
        int code = EVQ_ECONN;
        if (strstr(m, "password authentication failed") ||
            strstr(m, "no password supplied") ||
            strstr(m, "authentication failed"))
            code = EVQ_EINVAL;
        else if (strstr(m, "does not exist"))
            code = EVQ_ENOENT;
        char text[512];
        one_line(text, sizeof text, m);
        int rc = evq__err(code, "postgres connect: %s", text);
        if (code == EVQ_ECONN && !atomic_exchange(&h->down, true))
            evq__logf(h->log, EVQ_LOG_WARN,
                      "cannot reach the server (%s); trying again",
                      evq_errmsg());
        PQfinish(nc);
        return rc;
    }
    /* notices (a table already there, ...) are not the user's business */
    PQsetNoticeProcessor(nc, NULL, NULL);
    PGresult *r = PQexec(nc, async_commit
                                 ? "SET client_min_messages = warning; "
                                   "SET synchronous_commit = off"
                                 : "SET client_min_messages = warning");
    PQclear(r);
    if (atomic_exchange(&h->down, false))
        evq__logf(h->log, EVQ_LOG_INFO, "connected to the server again");
    *c = nc;
    return 0;
}

/* Runs `sql` with text parameters on c; *out gets the result on success
 * (the caller's to PQclear).  binary: results in binary. */
static int run(pghandle *h, PGconn *c, const char *sql, int n,
               const char *const *vals, const int *lens, const int *fmts,
               bool binary, PGresult **out, const char *what)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, vals, lens, fmts, binary);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        int rc = pg_err(h, c, r, what);
        PQclear(r);
        return rc;
    }
    if (out)
        *out = r;
    else
        PQclear(r);
    return 0;
}

/* A statement with the schema's quoted name for its every %1$s. */
static char *statement(const pghandle *h, const char *fmt)
{
    static const char mark[] = "%1$s";
    size_t ml = sizeof mark - 1, sl = strlen(h->schema), n = 0;
    for (const char *p = fmt; (p = strstr(p, mark)) != NULL; p += ml)
        n++;
    char *s = malloc(strlen(fmt) + n * sl + 1), *o = s;
    if (!s)
        return NULL;
    for (const char *p = fmt, *q;; p = q + ml) {
        q = strstr(p, mark);
        size_t k = q ? (size_t)(q - p) : strlen(p);
        memcpy(o, p, k);
        o += k;
        if (!q)
            break;
        memcpy(o, h->schema, sl);
        o += sl;
    }
    *o = '\0';
    return s;
}

/* The command connection, connected; under h->mu. */
static int cmd_conn(pghandle *h)
{
    return pg_connect(h, &h->cmd, false);
}

/* Runs a statement on the settling connection (connected first); under
 * settle_mu. */
static int settle_locked(pghandle *h, const char *sql, int n,
                         const char *const *vals, const int *lens,
                         const int *fmts, PGresult **out, const char *what)
{
    int rc = pg_connect(h, &h->settle, true);
    if (!rc)
        rc = run(h, h->settle, sql, n, vals, lens, fmts, false, out, what);
    return rc;
}

static int flush_acks(pghandle *h);
static void pg_flush_later(void *arg);

/* The same, taking settle_mu; the acks waiting go first. */
static int settle_run(pghandle *h, const char *sql, int n,
                      const char *const *vals, const int *lens,
                      const int *fmts, PGresult **out, const char *what)
{
    pthread_mutex_lock(&h->settle_mu);
    flush_acks(h); /* kept on failure: the next flush tries again */
    int rc = settle_locked(h, sql, n, vals, lens, fmts, out, what);
    pthread_mutex_unlock(&h->settle_mu);
    return rc;
}

/* ---- binary arrays --------------------------------------------------------
 * Parameters sent as arrays in PostgreSQL's binary array format: a header
 * (dimensions, flags, element type, length, lower bound), then each
 * element as its length and bytes, all numbers big-endian. */

#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21

static void put32(unsigned char *p, uint32_t v)
{
    v = htonl(v);
    memcpy(p, &v, 4);
}

static void put64(unsigned char *p, int64_t v)
{
    put32(p, (uint32_t)((uint64_t)v >> 32));
    put32(p + 4, (uint32_t)v);
}

static int64_t get64(const char *p)
{
    uint32_t hi, lo;
    memcpy(&hi, p, 4);
    memcpy(&lo, p + 4, 4);
    return (int64_t)(((uint64_t)ntohl(hi) << 32) | ntohl(lo));
}

static int32_t get32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return (int32_t)ntohl(v);
}

static int array_begin(evq__buf *b, uint32_t oid, size_t n)
{
    if (evq__buf_reserve(b, 20))
        return EVQ_ENOMEM;
    unsigned char *p = b->p + b->len;
    put32(p, 1);
    put32(p + 4, 0);
    put32(p + 8, oid);
    put32(p + 12, (uint32_t)n);
    put32(p + 16, 1);
    b->len += 20;
    return 0;
}

static int array_add(evq__buf *b, const void *v, size_t len)
{
    if (evq__buf_reserve(b, 4 + len))
        return EVQ_ENOMEM;
    put32(b->p + b->len, (uint32_t)len);
    if (len)
        memcpy(b->p + b->len + 4, v, len);
    b->len += 4 + len;
    return 0;
}

static int array_add64(evq__buf *b, int64_t v)
{
    unsigned char x[8];
    put64(x, v);
    return array_add(b, x, 8);
}

static int array_add16(evq__buf *b, int16_t v)
{
    uint16_t x = htons((uint16_t)v);
    return array_add(b, &x, 2);
}

/* ---- schema ---------------------------------------------------------------
 */

/* Each version's statements, applied in order from the version found. */
static const char *const migrations[SCHEMA_VERSION] = {
    "CREATE TABLE IF NOT EXISTS %1$s.messages ("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " queue text NOT NULL,"
    " body bytea NOT NULL,"
    " attempt integer NOT NULL DEFAULT 0,"
    " visible_at bigint NOT NULL,"
    " enqueued_at bigint NOT NULL,"
    " claim bigint);"
    "CREATE INDEX IF NOT EXISTS messages_visible ON %1$s.messages (queue, "
    "visible_at, id);",
    /* 2: a queue's small records: its pause state ('paused'), the ids an
     * idempotent worker finished ('done:<id>', until expires_at), the
     * buckets of rate limits ('rate:...', value "<tokens> <ms> <wait>") */
    "CREATE TABLE IF NOT EXISTS %1$s.state ("
    " queue text NOT NULL,"
    " key text NOT NULL,"
    " value text,"
    " expires_at bigint,"
    " PRIMARY KEY (queue, key));",
};

/* evqpriority's column, added in place where missing (an evq without it
 * still reads the table, so the version stays), with its partial index,
 * which holds only the events with a priority (an ordinary event costs it
 * nothing).  One transaction under the schema's advisory lock, so handles
 * opening at once take turns (CREATE INDEX CONCURRENTLY from several at
 * once deadlocks); the ALTER only changes the catalog (a constant
 * default), and the index build, done once, holds writers back while it
 * reads the table. */
static const char priority_sql[] =
    "BEGIN; SELECT pg_advisory_xact_lock(7165318); "
    "ALTER TABLE %1$s.messages ADD COLUMN IF NOT EXISTS priority smallint "
    "NOT NULL DEFAULT 0; "
    "CREATE INDEX IF NOT EXISTS messages_prio ON %1$s.messages (queue, "
    "priority DESC, visible_at, id) WHERE priority > 0; COMMIT";

/* Runs SQL text with the schema's quoted name in it as %1$s. */
static int exec_schema(pghandle *h, PGconn *c, const char *fmt,
                       const char *what)
{
    char *sql = statement(h, fmt);
    if (!sql)
        return evq__err(EVQ_ENOMEM, "out of memory");
    PGresult *r = PQexec(c, sql);
    free(sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK
                 ? 0
                 : pg_err(h, c, r, what);
    PQclear(r);
    return rc;
}

/* *version: the schema's version in the database, 0 when evq's tables
 * are not there. */
static int schema_version(pghandle *h, PGconn *c, int *version)
{
    const char *v[1] = {h->schema_text};
    PGresult *r = NULL;
    int rc = run(h, c,
                 "SELECT to_regclass(quote_ident($1) || '.meta') IS NOT NULL",
                 1, v, NULL, NULL, false, &r, "look for evq's tables");
    if (rc)
        return rc;
    bool has = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    *version = 0;
    if (!has)
        return 0;
    char *sql = statement(h, "SELECT value FROM %1$s.meta WHERE key = "
                             "'schema'");
    if (!sql)
        return evq__err(EVQ_ENOMEM, "out of memory");
    rc = run(h, c, sql, 0, NULL, NULL, NULL, false, &r, "read the schema");
    free(sql);
    if (rc)
        return rc;
    *version = PQntuples(r) == 1 ? atoi(PQgetvalue(r, 0, 0)) : 0;
    PQclear(r);
    return 0;
}

/* Makes evq's tables, or brings them to this version, in one transaction
 * that holds an advisory lock, so handles opening at once take turns. */
static int ensure_priority(pghandle *h, PGconn *c);

static int ensure_tables(pghandle *h, PGconn *c, bool create)
{
    int v = 0;
    int rc = schema_version(h, c, &v);
    if (rc)
        return rc;
    if (v > SCHEMA_VERSION)
        return evq__err(EVQ_EINVAL,
                        "postgres: schema %s is at version %d, made by a "
                        "newer evq (this one reads up to %d)",
                        h->schema_text, v, SCHEMA_VERSION);
    if (v == SCHEMA_VERSION)
        return 0;
    if (v == 0 && !create)
        return evq__err(EVQ_ENOENT,
                        "postgres: schema %s holds no evq queues "
                        "(create=false)",
                        h->schema_text);
    rc = exec_schema(h, c,
                         "BEGIN; SELECT pg_advisory_xact_lock(7165318); "
                         "CREATE SCHEMA IF NOT EXISTS %1$s; "
                         "CREATE TABLE IF NOT EXISTS %1$s.meta (key text "
                         "PRIMARY KEY, value text NOT NULL)",
                         "make the schema");
    if (!rc) /* another may have made it meanwhile */
        rc = schema_version(h, c, &v);
    for (int i = v; !rc && i < SCHEMA_VERSION; i++)
        rc = exec_schema(h, c, migrations[i], "migrate the schema");
    if (!rc)
        rc = exec_schema(h, c,
                         "INSERT INTO %1$s.meta (key, value) VALUES "
                         "('schema', '" SCHEMA_VERSION_TEXT "') ON CONFLICT "
                         "(key) DO UPDATE SET value = EXCLUDED.value",
                         "record the schema's version");
    if (!rc)
        rc = exec_schema(h, c, "COMMIT", "make the schema");
    if (rc) {
        PGresult *r = PQexec(c, "ROLLBACK");
        PQclear(r);
    }
    return rc;
}

/* The priority column and its index, where missing (priority_sql). */
static int ensure_priority(pghandle *h, PGconn *c)
{
    const char *v[1] = {h->schema_text};
    PGresult *r = NULL;
    int rc = run(h, c,
                 "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
                 "WHERE table_schema = $1 AND table_name = 'messages' AND "
                 "column_name = 'priority'), to_regclass(quote_ident($1) || "
                 "'.messages_prio') IS NOT NULL",
                 1, v, NULL, NULL, false, &r, "look for the priority column");
    if (rc)
        return rc;
    bool there = PQgetvalue(r, 0, 0)[0] == 't' && PQgetvalue(r, 0, 1)[0] == 't';
    PQclear(r);
    if (!there &&
        (rc = exec_schema(h, c, priority_sql, "add the priority column"))) {
        PGresult *rb = PQexec(c, "ROLLBACK");
        PQclear(rb);
    }
    return rc;
}

/* Makes evq's tables or brings them to this version, then adds what
 * needs no version. */
static int ensure_schema(pghandle *h, PGconn *c, bool create)
{
    int rc = ensure_tables(h, c, create);
    return rc ? rc : ensure_priority(h, c);
}

/* ---- open and close ------------------------------------------------------ */

static void pg_close(void *state)
{
    pghandle *h = state;
    if (!h)
        return;
    if (h->flusher_init)
        evq__flusher_destroy(&h->flusher);
    if (h->n_acks)
        flush_acks(h);
    free(h->acks);
    PQfinish(h->cmd);
    PQfinish(h->settle);
    PQfinish(h->rd);
    if (h->wake_fd >= 0)
        close(h->wake_fd);
    free(h->dbname);
    free(h->user);
    if (h->password) /* no copy of it left behind */
        explicit_bzero(h->password, strlen(h->password));
    free(h->password);
    free(h->port_list);
    free(h->host_list);
    free(h->connect_timeout);
    free(h->queue);
    free(h->schema_text);
    PQfreemem(h->schema);
    free(h->channel);
    char **sqls[] = {&h->sql_insert, &h->sql_claim, &h->sql_next,
                     &h->sql_ack,    &h->sql_release, &h->sql_nack,
                     &h->sql_touch,  &h->sql_stats, &h->sql_delete};
    for (size_t i = 0; i < sizeof sqls / sizeof *sqls; i++)
        free(*sqls[i]);
    pthread_mutex_destroy(&h->mu);
    pthread_mutex_destroy(&h->settle_mu);
    free(h);
}

static int make_statements(pghandle *h)
{
    struct {
        char **at;
        const char *fmt;
    } st[] = {
        {&h->sql_insert, insert_sql},
        /* $1 queue, $2 limit, $3 visibility (ms), $4 token, $5 max bytes */
        /* events with a priority first, then the rest up to $2 */
        {&h->sql_claim,
         "WITH t AS (SELECT " NOW_MS " AS now), p AS (SELECT m.id FROM "
         "%1$s.messages m, t WHERE m.queue = $1 AND m.priority > 0 AND "
         "m.visible_at <= t.now ORDER BY m.priority DESC, m.visible_at, m.id "
         "LIMIT $2 FOR UPDATE OF m SKIP LOCKED), z AS (SELECT m.id FROM "
         "%1$s.messages m, t WHERE m.queue = $1 AND m.visible_at <= t.now "
         "AND m.priority = 0 ORDER BY m.visible_at, m.id LIMIT $2::bigint - "
         "(SELECT count(*) FROM p) FOR UPDATE OF m SKIP LOCKED), c AS "
         "(SELECT id FROM p UNION ALL SELECT id FROM z) "
         "UPDATE %1$s.messages m SET visible_at = t.now + $3, attempt = "
         "m.attempt + 1, claim = $4 FROM c, t WHERE m.id = c.id RETURNING "
         "m.id, m.attempt, octet_length(m.body)::bigint, substring(m.body "
         "FROM 1 FOR $5), m.priority::integer"},
        /* ms until the next event is visible (<= 0: now), NULL: none */
        {&h->sql_next, "SELECT min(visible_at) - " NOW_MS
                       " FROM %1$s.messages WHERE queue = $1"},
        /* $1 ids, $2 claims */
        {&h->sql_ack,
         "DELETE FROM %1$s.messages m USING unnest($1::bigint[], "
         "$2::bigint[]) AS a(id, claim) WHERE m.id = a.id AND m.claim = "
         "a.claim"},
        {&h->sql_release,
         "UPDATE %1$s.messages m SET visible_at = " NOW_MS
         ", claim = NULL, attempt = m.attempt - 1 FROM unnest($1::bigint[], "
         "$2::bigint[]) AS a(id, claim) WHERE m.id = a.id AND m.claim = "
         "a.claim"},
        /* $1 id, $2 claim, $3 delay (ms), $4 the channel */
        {&h->sql_nack,
         "WITH u AS (UPDATE %1$s.messages SET visible_at = " NOW_MS
         " + $3, claim = NULL WHERE id = $1 AND claim = $2 RETURNING 1) "
         "SELECT (SELECT count(*) FROM u), pg_notify($4, '')"},
        /* $1 id, $2 claim, $3 visibility (ms) */
        {&h->sql_touch, "UPDATE %1$s.messages SET visible_at = " NOW_MS
                        " + $3 WHERE id = $1 AND claim = $2"},
        /* $1 queue */
        {&h->sql_stats,
         "SELECT count(*) FILTER (WHERE visible_at <= t.now), count(*) "
         "FILTER (WHERE visible_at > t.now AND claim IS NOT NULL), count(*) "
         "FILTER (WHERE visible_at > t.now AND claim IS NULL) FROM "
         "%1$s.messages, (SELECT " NOW_MS " AS now) t WHERE queue = $1"},
        {&h->sql_delete, "WITH gone AS (DELETE FROM %1$s.state WHERE queue "
                         "= $1) DELETE FROM %1$s.messages WHERE queue = $1"},
    };
    for (size_t i = 0; i < sizeof st / sizeof *st; i++)
        if (!(*st[i].at = statement(h, st[i].fmt)))
            return evq__err(EVQ_ENOMEM, "out of memory");
    return 0;
}

/* libpq's keywords from the URL and the options; the options win. */
static int set_keywords(pghandle *h, const evq__url *url,
                        const evq__optset *opts, const pgcfg *cfg)
{
    size_t n = 0;
    h->kw[n] = "fallback_application_name", h->val[n++] = "evq";
    if (url->n_hosts) {
        size_t hl = 1, pl = 1;
        for (size_t i = 0; i < url->n_hosts; i++)
            hl += strlen(url->hosts[i].host) + 1, pl += 8;
        h->host_list = calloc(1, hl);
        h->port_list = calloc(1, pl);
        if (!h->host_list || !h->port_list)
            return evq__err(EVQ_ENOMEM, "out of memory");
        bool any_port = false;
        for (size_t i = 0; i < url->n_hosts; i++) {
            if (i) {
                strcat(h->host_list, ",");
                strcat(h->port_list, ",");
            }
            strcat(h->host_list, url->hosts[i].host);
            if (url->hosts[i].port) {
                char p[8];
                snprintf(p, sizeof p, "%d", url->hosts[i].port);
                strcat(h->port_list, p);
                any_port = true;
            }
        }
        if (h->host_list[0] && strcmp(h->host_list, ",") != 0)
            h->kw[n] = "host", h->val[n++] = h->host_list;
        if (any_port)
            h->kw[n] = "port", h->val[n++] = h->port_list;
    }
    if (url->user) {
        if (!(h->user = evq__strdup(url->user)))
            return evq__err(EVQ_ENOMEM, "out of memory");
        h->kw[n] = "user", h->val[n++] = h->user;
    }
    if (url->password) {
        if (!(h->password = evq__strdup(url->password)))
            return evq__err(EVQ_ENOMEM, "out of memory");
        h->kw[n] = "password", h->val[n++] = h->password;
    }
    if (url->path[0] && url->path[1]) {
        if (!(h->dbname = evq__strdup(url->path + 1)))
            return evq__err(EVQ_ENOMEM, "out of memory");
        h->kw[n] = "dbname", h->val[n++] = h->dbname;
    }
    char t[24];
    snprintf(t, sizeof t, "%lld",
             (long long)((cfg->connect_timeout_ms + 999) / 1000));
    if (!(h->connect_timeout = evq__strdup(t)))
        return evq__err(EVQ_ENOMEM, "out of memory");
    h->kw[n] = "connect_timeout", h->val[n++] = h->connect_timeout;
    for (size_t i = 0; i < opts->n; i++)
        for (size_t k = 0; k < sizeof pg_keywords / sizeof *pg_keywords; k++)
            if (strcmp(opts->kv[i].key, pg_keywords[k]) == 0 &&
                n + 1 < sizeof h->kw / sizeof *h->kw) {
                h->kw[n] = pg_keywords[k];
                h->val[n++] = opts->kv[i].value;
            }
    h->kw[n] = NULL;
    h->val[n] = NULL;
    return 0;
}

/* LISTEN's channel for a queue: an identifier of at most 63 bytes; a
 * longer one is cut at a character's start (two queues sharing a channel
 * only wake each other in vain). */
static void channel_of(const char *schema, const char *queue, char out[64])
{
    int n = snprintf(out, 64, "evq.%s.%s", schema, queue);
    if (n >= 64) {
        size_t k = 63;
        while (k > 0 && ((unsigned char)out[k] & 0xC0) == 0x80)
            k--;
        out[k] = '\0';
    }
}

static int pg_open(void **state, const evq__url *url, const char *name,
                   const evq__optset *opts, evq__logger *log)
{
    pghandle *h = calloc(1, sizeof *h);
    int rc;
    if (!h)
        return evq__err(EVQ_ENOMEM, "out of memory");
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->settle_mu, NULL);
    atomic_init(&h->down, false);
    atomic_init(&h->interrupted, false);
    h->log = log;
    h->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pgcfg cfg;
    evq__opts_read(opts, pg_opts, &cfg);
    h->vt_ms = cfg.visibility_timeout_ms;
    h->poll_ms = cfg.poll_ms;
    h->ack_flush_ms = (int)cfg.ack_flush_ms;
    evq__flusher_init(&h->flusher, pg_flush_later, h);
    h->flusher_init = true;
    h->max_bytes = (size_t)opts->core.max_event_bytes;
    static atomic_uint handles;
    h->claim_seq = (((uint64_t)evq__now_real_ns() << 16) ^ (uint64_t)getpid()) +
                   ((uint64_t)atomic_fetch_add(&handles, 1) << 44);
    if (h->wake_fd < 0) {
        rc = evq__err(EVQ_EIO, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (!(h->queue = evq__strdup(name)) ||
        !(h->schema_text = evq__strdup(cfg.schema))) {
        rc = evq__err(EVQ_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = set_keywords(h, url, opts, &cfg)) != 0)
        goto fail;
    if ((rc = pg_connect(h, &h->cmd, false)) != 0)
        goto fail;
    h->schema = PQescapeIdentifier(h->cmd, cfg.schema, strlen(cfg.schema));
    if (!h->schema) {
        rc = evq__err(EVQ_EINVAL, "postgres.schema '%s': %s", cfg.schema,
                      PQerrorMessage(h->cmd));
        goto fail;
    }
    char chan[64];
    channel_of(cfg.schema, name, chan);
    if (!(h->channel = evq__strdup(chan)) || (rc = make_statements(h)) != 0) {
        rc = rc ? rc : evq__err(EVQ_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = ensure_schema(h, h->cmd, opts->core.create)) != 0)
        goto fail;
    *state = h;
    return 0;
fail:
    pg_close(h);
    return rc;
}

/* ---- enqueue ------------------------------------------------------------- */

/* One statement for the batch: the rows and the notification commit
 * together (autocommit), before it returns. */
static int pg_enqueue(void *state, const evq__item *items, size_t n)
{
    pghandle *h = state;
    evq__buf bodies = {0}, delays = {0}, prios = {0};
    int rc = 0;

    if (atomic_load(&h->interrupted))
        return evq__err(EVQ_ECLOSED, "queue interrupted");
    if (array_begin(&bodies, OID_BYTEA, n) ||
        array_begin(&delays, OID_INT8, n) || array_begin(&prios, OID_INT2, n))
        rc = evq__err(EVQ_ENOMEM, "out of memory");
    for (size_t i = 0; i < n && !rc; i++)
        if (array_add(&bodies, items[i].bytes, items[i].len) ||
            array_add64(&delays, items[i].delay_ms) ||
            array_add16(&prios, (int16_t)items[i].priority))
            rc = evq__err(EVQ_ENOMEM, "out of memory");
    if (!rc && bodies.len > INT32_MAX)
        rc = evq__err(EVQ_EINVAL, "a batch of %zu bytes is too large for "
                                  "one statement",
                      bodies.len);
    if (!rc) {
        const char *v[5] = {h->queue, (const char *)bodies.p,
                            (const char *)delays.p, h->channel,
                            (const char *)prios.p};
        int lens[5] = {0, (int)bodies.len, (int)delays.len, 0,
                       (int)prios.len};
        int fmts[5] = {0, 1, 1, 0, 1};
        pthread_mutex_lock(&h->mu);
        rc = cmd_conn(h);
        if (!rc)
            rc = run(h, h->cmd, h->sql_insert, 5, v, lens, fmts, false, NULL,
                     "enqueue");
        pthread_mutex_unlock(&h->mu);
    }
    free(bodies.p);
    free(delays.p);
    free(prios.p);
    return rc;
}

/* ---- dequeue ------------------------------------------------------------- */

static int by_priority_id(const void *a, const void *b)
{
    const evq__delivery *x = a, *y = b;
    const pgmsg *p = x->token, *q = y->token;
    if (p->priority != q->priority)
        return q->priority - p->priority;
    return p->id < q->id ? -1 : p->id > q->id;
}

/* Claims up to max visible messages into d on the reading connection:
 * the count, or an error; *next_ms is how long until the next event is
 * visible when there was none (-1: the queue is empty). */
static int claim(pghandle *h, evq__delivery *d, size_t max, int64_t *next_ms)
{
    int64_t lease_ns = evq__now_mono_ns() + h->vt_ms * 1000000;
    int64_t token = (int64_t)(++h->claim_seq & INT64_MAX);
    char lim[24], vt[24], tok[24], mb[24];
    snprintf(lim, sizeof lim, "%zu", max);
    snprintf(vt, sizeof vt, "%lld", (long long)h->vt_ms);
    snprintf(tok, sizeof tok, "%lld", (long long)token);
    snprintf(mb, sizeof mb, "%zu", h->max_bytes);
    const char *v[5] = {h->queue, lim, vt, tok, mb};
    PGresult *r = NULL;
    int rc = run(h, h->rd, h->sql_claim, 5, v, NULL, NULL, true, &r, "claim");
    if (rc)
        return rc;
    int got = PQntuples(r);
    for (int i = 0; i < got; i++) {
        size_t len = (size_t)PQgetlength(r, i, 3);
        pgmsg *m = malloc(sizeof *m + len);
        if (!m) {
            /* the rest come back after the visibility timeout */
            got = i;
            break;
        }
        m->id = get64(PQgetvalue(r, i, 0));
        m->claim = token;
        m->lease_ns = lease_ns;
        m->attempt = get32(PQgetvalue(r, i, 1));
        m->priority = get32(PQgetvalue(r, i, 4));
        int64_t full = get64(PQgetvalue(r, i, 2));
        m->len = len;
        m->full_len = (size_t)full > len ? (size_t)full : 0;
        memcpy(m->body, PQgetvalue(r, i, 3), len);
        d[i] = (evq__delivery){.bytes = m->body,
                               .len = len,
                               .full_len = m->full_len,
                               .attempt = m->attempt,
                               .token = m,
                               .lease_ns = lease_ns};
    }
    PQclear(r);
    if (got > 0) {
        /* RETURNING gives no order: by priority, oldest first */
        qsort(d, (size_t)got, sizeof *d, by_priority_id);
        return got;
    }
    *next_ms = -1;
    const char *q[1] = {h->queue};
    if ((rc = run(h, h->rd, h->sql_next, 1, q, NULL, NULL, false, &r,
                  "look ahead")) != 0)
        return rc;
    if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0)) {
        long long ms = atoll(PQgetvalue(r, 0, 0));
        *next_ms = ms < 0 ? 0 : ms;
    }
    PQclear(r);
    return 0;
}

/* The reading connection, connected and listening on the queue's
 * channel. */
static int rd_ready(pghandle *h)
{
    if (h->rd && PQstatus(h->rd) != CONNECTION_OK)
        h->rd_listening = false;
    int rc = pg_connect(h, &h->rd, true); /* claims: as settling */
    if (rc)
        return rc;
    if (!h->rd_listening) {
        char *ch = PQescapeIdentifier(h->rd, h->channel, strlen(h->channel));
        if (!ch)
            return pg_err(h, h->rd, NULL, "listen");
        char sql[160];
        snprintf(sql, sizeof sql, "LISTEN %s", ch);
        PQfreemem(ch);
        if ((rc = run(h, h->rd, sql, 0, NULL, NULL, NULL, false, NULL,
                      "listen")) != 0)
            return rc;
        h->rd_listening = true;
    }
    return 0;
}

/* Forgets the notifications that came; true when there was one. */
static bool drain_notifies(pghandle *h)
{
    bool any = false;
    PGnotify *n;
    while ((n = PQnotifies(h->rd)) != NULL) {
        any = true;
        PQfreemem(n);
    }
    return any;
}

/* Claims up to max messages, waiting up to wait_ms for one: until a
 * notification, the next delayed event's time, poll_ms, an interrupt or
 * the wait's end. */
static int pg_fetch(void *state, evq__delivery *d, size_t max, int wait_ms)
{
    pghandle *h = state;
    int64_t deadline = evq__now_mono_ns() + (int64_t)wait_ms * 1000000;
    for (;;) {
        if (atomic_load(&h->interrupted))
            return 0;
        int rc = rd_ready(h);
        if (rc)
            return rc;
        /* a notification now is for what the claim below sees */
        if (PQconsumeInput(h->rd))
            drain_notifies(h);
        pthread_mutex_lock(&h->settle_mu); /* acks ride along */
        flush_acks(h);
        pthread_mutex_unlock(&h->settle_mu);
        int64_t next_ms = -1;
        int got = claim(h, d, max, &next_ms);
        if (got != 0)
            return got;
        int64_t now = evq__now_mono_ns();
        if (now >= deadline)
            return 0;
        int64_t wake = now + h->poll_ms * 1000000;
        if (next_ms >= 0 && now + next_ms * 1000000 < wake)
            wake = now + next_ms * 1000000;
        if (deadline < wake)
            wake = deadline;
        /* libpq may have read a notification while it read the claim's
         * answer: then the socket stays quiet, and poll would miss it */
        if (!PQconsumeInput(h->rd)) { /* lost: made again above */
            PQfinish(h->rd);
            h->rd = NULL;
            h->rd_listening = false;
            continue;
        }
        if (drain_notifies(h))
            continue;
        for (;;) {
            int64_t left = (wake - evq__now_mono_ns()) / 1000000;
            if (left < 0)
                left = 0;
            struct pollfd p[2] = {{PQsocket(h->rd), POLLIN, 0},
                                  {h->wake_fd, POLLIN, 0}};
            int pr = poll(p, 2, (int)left + 1);
            if (pr < 0 && errno == EINTR)
                continue;
            if (pr <= 0 || atomic_load(&h->interrupted))
                break;
            if (p[0].revents) {
                if (!PQconsumeInput(h->rd)) { /* lost: made again above */
                    PQfinish(h->rd);
                    h->rd = NULL;
                    h->rd_listening = false;
                    break;
                }
                if (drain_notifies(h))
                    break;
            }
            if (p[1].revents)
                break;
        }
    }
}

/* Runs sql ($1 ids, $2 claims) over a[0..n); *changed gets the rows it
 * changed.  Under settle_mu. */
static int by_claims(pghandle *h, const char *sql, const struct pgack *a,
                     size_t n, long long *changed, const char *what)
{
    evq__buf ids = {0}, claims = {0};
    int rc = 0;
    if (array_begin(&ids, OID_INT8, n) || array_begin(&claims, OID_INT8, n))
        rc = evq__err(EVQ_ENOMEM, "out of memory");
    for (size_t i = 0; i < n && !rc; i++)
        if (array_add64(&ids, a[i].id) || array_add64(&claims, a[i].claim))
            rc = evq__err(EVQ_ENOMEM, "out of memory");
    if (!rc) {
        const char *v[2] = {(const char *)ids.p, (const char *)claims.p};
        int lens[2] = {(int)ids.len, (int)claims.len}, fmts[2] = {1, 1};
        PGresult *r = NULL;
        rc = settle_locked(h, sql, 2, v, lens, fmts, &r, what);
        if (!rc) {
            *changed = atoll(PQcmdTuples(r));
            PQclear(r);
        }
    }
    free(ids.p);
    free(claims.p);
    return rc;
}

/* Sends the acks waiting (settle_mu held); kept when that fails. */
static int flush_acks(pghandle *h)
{
    long long changed = 0;
    if (h->n_acks == 0)
        return 0;
    int rc = by_claims(h, h->sql_ack, h->acks, h->n_acks, &changed, "ack");
    if (!rc)
        h->n_acks = 0;
    return rc;
}

/* The flusher's work: acks held for a group go within ack_flush_ms even
 * when the handle sees no other call meanwhile. */
static void pg_flush_later(void *arg)
{
    pghandle *h = arg;
    pthread_mutex_lock(&h->settle_mu);
    if (flush_acks(h) != 0 && h->n_acks > 0)
        evq__flusher_arm(&h->flusher, evq__now_mono_ns() +
                                          (h->ack_flush_ms + 10) * 1000000LL);
    pthread_mutex_unlock(&h->settle_mu);
}

/* Hands back claimed messages nobody was given: visible again at once,
 * their claim not counted as a delivery; freed.  On failure they come
 * back after the visibility timeout. */
static void pg_hand_back(void *state, evq__delivery *d, size_t n)
{
    pghandle *h = state;
    if (n == 0)
        return;
    struct pgack *a = malloc(n * sizeof *a);
    long long changed = 0;
    if (a) {
        for (size_t i = 0; i < n; i++) {
            pgmsg *m = d[i].token;
            a[i] = (struct pgack){m->id, m->claim};
        }
        pthread_mutex_lock(&h->settle_mu);
        flush_acks(h);
        by_claims(h, h->sql_release, a, n, &changed, "hand back");
        pthread_mutex_unlock(&h->settle_mu);
        free(a);
    }
    for (size_t i = 0; i < n; i++)
        free(d[i].token);
}

/* ---- settle ----------------------------------------------------------------
 */

/* Acks of deliveries with time left on their lease wait to be sent
 * together (ack_flush_ms; the flusher sees to it, and the next claim,
 * touch, nack or stats takes them along): nobody else can claim the row
 * before its lease ends.  An ack near or past the end of its lease goes at
 * once, checked against the claim. */
static int pg_ack(void *state, evq__delivery **d, size_t n)
{
    pghandle *h = state;
    int64_t margin = h->vt_ms * 1000000 / 2 + h->ack_flush_ms * 1000000LL;
    int64_t now_ns = evq__now_mono_ns();
    int64_t now = evq__now_real_ns() / 1000000;
    struct pgack *urgent = NULL;
    size_t n_urgent = 0;
    int rc = 0;

    pthread_mutex_lock(&h->settle_mu);
    for (size_t i = 0; i < n; i++) {
        pgmsg *m = d[i]->token;
        struct pgack a = {m->id, m->claim};
        if (m->lease_ns - now_ns <= margin) {
            if (!urgent && !(urgent = malloc(n * sizeof *urgent)))
                rc = evq__err(EVQ_ENOMEM, "out of memory");
            else
                urgent[n_urgent++] = a;
        } else if (evq__grow(&h->acks, &h->cap_acks, h->n_acks,
                             sizeof *h->acks)) {
            rc = evq__err(EVQ_ENOMEM, "out of memory");
        } else { /* else its lease runs out: it is delivered again */
            if (h->n_acks == 0)
                h->oldest_ack_ms = now;
            h->acks[h->n_acks++] = a;
        }
        free(m);
        d[i]->token = NULL;
    }
    if (n_urgent) {
        long long changed = 0;
        flush_acks(h);
        int arc = by_claims(h, h->sql_ack, urgent, n_urgent, &changed, "ack");
        if (!rc)
            rc = arc;
        if (!rc && changed < (long long)n_urgent)
            rc = evq__lease_lost("ack");
    } else if (h->n_acks && !rc) {
        if (evq__flush_due(h->n_acks, h->oldest_ack_ms, now, h->ack_flush_ms,
                           atomic_load(&h->interrupted)))
            rc = flush_acks(h);
        else
            evq__flusher_arm(&h->flusher,
                             evq__now_mono_ns() + h->ack_flush_ms * 1000000LL);
    }
    pthread_mutex_unlock(&h->settle_mu);
    free(urgent);
    return rc;
}

/* Runs a statement on one claimed row ($1 id, $2 claim, $3 ms, then the
 * channel when `notify`): EVQ_ESTATE when the claim is no longer ours. */
static int on_claim(pghandle *h, const char *sql, const pgmsg *m, int64_t ms,
                    bool notify, const char *what)
{
    char id[24], claim_s[24], ms_s[24];
    snprintf(id, sizeof id, "%lld", (long long)m->id);
    snprintf(claim_s, sizeof claim_s, "%lld", (long long)m->claim);
    snprintf(ms_s, sizeof ms_s, "%lld", (long long)ms);
    const char *v[4] = {id, claim_s, ms_s, h->channel};
    PGresult *r = NULL;
    int rc = settle_run(h, sql, notify ? 4 : 3, v, NULL, NULL, &r, what);
    if (rc)
        return rc;
    long long changed = notify ? atoll(PQgetvalue(r, 0, 0))
                               : atoll(PQcmdTuples(r));
    PQclear(r);
    return changed ? 0 : evq__lease_lost(what);
}

static int pg_nack(void *state, evq__delivery *d, int64_t delay_ms)
{
    pghandle *h = state;
    pgmsg *m = d->token;
    int rc = on_claim(h, h->sql_nack, m, delay_ms, true, "nack");
    free(m);
    return rc;
}

static int pg_touch(void *state, evq__delivery *d)
{
    pghandle *h = state;
    pgmsg *m = d->token;
    int64_t lease_ns = evq__now_mono_ns() + h->vt_ms * 1000000;
    int rc = on_claim(h, h->sql_touch, m, h->vt_ms, false, "touch");
    if (!rc)
        m->lease_ns = d->lease_ns = lease_ns;
    return rc;
}

static int pg_interrupt(void *state)
{
    pghandle *h = state;
    atomic_store(&h->interrupted, true);
    pthread_mutex_lock(&h->settle_mu);
    flush_acks(h);
    pthread_mutex_unlock(&h->settle_mu);
    uint64_t one = 1;
    ssize_t w = write(h->wake_fd, &one, sizeof one);
    (void)w; /* full: a wake-up is pending anyway */
    return 0;
}

/* ---- stats and removal ------------------------------------------------------
 */

static int stats_of(pghandle *h, const char *name, struct evq_queue_stats *out)
{
    const char *v[1] = {name};
    PGresult *r = NULL;
    int rc = settle_run(h, h->sql_stats, 1, v, NULL, NULL, &r, "stats");
    if (rc)
        return rc;
    out->depth = atoll(PQgetvalue(r, 0, 0));
    out->in_flight = atoll(PQgetvalue(r, 0, 1));
    out->delayed = atoll(PQgetvalue(r, 0, 2));
    PQclear(r);
    return 0;
}

static int pg_stats(void *state, struct evq_queue_stats *out)
{
    pghandle *h = state;
    return stats_of(h, h->queue, out);
}

static int pg_count(void *state, const char *name, int64_t *n)
{
    struct evq_queue_stats s;
    int rc = stats_of(state, name, &s);
    *n = rc ? -1 : s.depth + s.in_flight + s.delayed;
    return rc;
}

/* Deletes every row of the queue; the tables stay, for the other queues
 * they hold. */
static int pg_destroy(void *state)
{
    pghandle *h = state;
    const char *v[1] = {h->queue};
    pthread_mutex_lock(&h->mu);
    int rc = cmd_conn(h);
    if (!rc)
        rc = run(h, h->cmd, h->sql_delete, 1, v, NULL, NULL, false, NULL,
                 "delete");
    pthread_mutex_unlock(&h->mu);
    return rc;
}

/* ---- the queue's records: pause state, finished ids ------------------- */

/* Runs a statement on the state table (fmt with the schema as %1$s) on
 * the settling connection, *r the caller's.  Not settle_run: the acks held
 * back stay so (the pause state is read every PAUSE_READ_MS, which would
 * otherwise send them at once). */
static int state_query(pghandle *h, const char *fmt, int n,
                       const char *const *v, PGresult **r, const char *what)
{
    char *sql = statement(h, fmt);
    if (!sql)
        return evq__err(EVQ_ENOMEM, "out of memory");
    pthread_mutex_lock(&h->settle_mu);
    int rc = settle_locked(h, sql, n, v, NULL, NULL, r, what);
    pthread_mutex_unlock(&h->settle_mu);
    free(sql);
    return rc;
}

/* Whether record `key` of the queue is there and not expired: 1, 0, or
 * the error.  On the settling connection. */
static int record_has(pghandle *h, const char *key)
{
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)(evq__now_real_ns() / 1000000));
    const char *v[3] = {h->queue, key, now};
    PGresult *r = NULL;
    int rc = state_query(h,
                         "SELECT 1 FROM %1$s.state WHERE queue = $1 AND key = "
                         "$2 AND (expires_at IS NULL OR expires_at > $3)",
                         3, v, &r, "read a record");
    if (!rc) {
        rc = PQntuples(r) > 0;
        PQclear(r);
    }
    return rc;
}

/* One call in 256 deletes the queue's expired records: finished ids past
 * their window, idle rate limits.  A failure only leaves them for the
 * next time. */
static void clear_expired(pghandle *h)
{
    if (atomic_fetch_add(&h->record_puts, 1) % 256 != 0)
        return;
    char *gc = statement(h, "DELETE FROM %1$s.state WHERE queue = $1 AND "
                            "expires_at <= (extract(epoch FROM "
                            "clock_timestamp()) * 1000)::bigint");
    const char *g[1] = {h->queue};
    if (gc)
        settle_run(h, gc, 1, g, NULL, NULL, NULL, "clear expired records");
    free(gc);
}

/* Writes record `key` (for ttl_ms; 0: for good) or deletes it (`put`
 * false): the pause state on the command connection (committed
 * durably), finished ids on the settling one, before their acks. */
static int record_write(pghandle *h, const char *key, bool put,
                        int64_t ttl_ms)
{
    int64_t now = evq__now_real_ns() / 1000000;
    char until[24];
    snprintf(until, sizeof until, "%lld", (long long)(now + ttl_ms));
    const char *v[3] = {h->queue, key, ttl_ms > 0 ? until : NULL};
    char *sql = statement(
        h, put ? "INSERT INTO %1$s.state (queue, key, expires_at) VALUES ($1, "
                 "$2, $3) ON CONFLICT (queue, key) DO UPDATE SET expires_at = "
                 "EXCLUDED.expires_at"
               : "DELETE FROM %1$s.state WHERE queue = $1 AND key = $2");
    if (!sql)
        return evq__err(EVQ_ENOMEM, "out of memory");
    int rc;
    if (ttl_ms > 0) {
        rc = settle_run(h, sql, 3, v, NULL, NULL, NULL, "write a record");
        if (!rc)
            clear_expired(h);
    } else {
        pthread_mutex_lock(&h->mu);
        rc = cmd_conn(h);
        if (!rc)
            rc = run(h, h->cmd, sql, put ? 3 : 2, v, NULL, NULL, false, NULL,
                     "write a record");
        pthread_mutex_unlock(&h->mu);
    }
    free(sql);
    return rc;
}

/* Writes record `key` for ttl_ms unless it is there and not expired: one
 * statement (the row's lock orders concurrent producers), committed on
 * the command connection before the event is sent.  1 written, 0 there,
 * or the error. */
static int record_claim(pghandle *h, const char *key, int64_t ttl_ms)
{
    int64_t now = evq__now_real_ns() / 1000000;
    char until[24], at[24];
    snprintf(until, sizeof until, "%lld", (long long)(now + ttl_ms));
    snprintf(at, sizeof at, "%lld", (long long)now);
    const char *v[4] = {h->queue, key, until, at};
    char *sql = statement(
        h, "INSERT INTO %1$s.state AS s (queue, key, expires_at) VALUES ($1, "
           "$2, $3) ON CONFLICT (queue, key) DO UPDATE SET expires_at = "
           "EXCLUDED.expires_at WHERE s.expires_at IS NOT NULL AND "
           "s.expires_at <= $4 RETURNING 1");
    if (!sql)
        return evq__err(EVQ_ENOMEM, "out of memory");
    PGresult *r = NULL;
    pthread_mutex_lock(&h->mu);
    int rc = cmd_conn(h);
    if (!rc)
        rc = run(h, h->cmd, sql, 4, v, NULL, NULL, false, &r,
                 "claim a unique key");
    pthread_mutex_unlock(&h->mu);
    free(sql);
    if (!rc) {
        rc = PQntuples(r) > 0;
        PQclear(r);
        clear_expired(h);
    }
    return rc;
}

/* A rate limit's bucket: one statement on the server's clock.  A new row
 * is a full bucket less the token taken; an existing one is refilled for
 * the time since, then a token taken or the wait until one written as the
 * value's third field. */
#define TAKE_NOW "split_part(EXCLUDED.value, ' ', 2)::bigint"
#define TAKE_AVAIL                                                             \
    "least($4::float8, split_part(s.value, ' ', 1)::float8 + greatest(0, "    \
    TAKE_NOW " - split_part(s.value, ' ', 2)::bigint) * $3::float8 / 1000)"
static const char take_sql[] =
    "INSERT INTO %1$s.state AS s (queue, key, value, expires_at) SELECT $1, "
    "$2, ($4::float8 - 1)::text || ' ' || n.now || ' 0', n.now + "
    "ceil($4::float8 * 1000 / $3::float8)::bigint + 1000 FROM (SELECT "
    "(extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now) n "
    "ON CONFLICT (queue, key) DO UPDATE SET value = CASE WHEN " TAKE_AVAIL
    " >= 1 THEN (" TAKE_AVAIL " - 1)::text || ' ' || " TAKE_NOW
    " || ' 0' ELSE (" TAKE_AVAIL ")::text || ' ' || " TAKE_NOW
    " || ' ' || ceil((1 - " TAKE_AVAIL ") * 1000 / $3::float8)::bigint END, "
    "expires_at = EXCLUDED.expires_at RETURNING value";

static int pg_take(void *state, const char *key, double rate, int burst,
                   int64_t *wait_ms)
{
    pghandle *h = state;
    char r_s[40], b_s[16];
    snprintf(r_s, sizeof r_s, "%.17g", rate);
    snprintf(b_s, sizeof b_s, "%d", burst);
    const char *v[4] = {h->queue, key, r_s, b_s};
    PGresult *r = NULL;
    int rc = state_query(h, take_sql, 4, v, &r, "a rate limit's token");
    if (rc)
        return rc;
    double t;
    long long at, wait = 0;
    if (PQntuples(r) != 1 ||
        sscanf(PQgetvalue(r, 0, 0), "%lf %lld %lld", &t, &at, &wait) != 3)
        rc = evq__err(EVQ_EIO, "postgres: a rate limit's row reads '%.64s'",
                      PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
    *wait_ms = wait > 0 ? wait : 0;
    PQclear(r);
    if (!rc)
        clear_expired(h);
    return rc;
}

static int pg_record(void *state, const char *key, int op, int64_t ttl_ms)
{
    if (op == EVQ__RECORD_HAS)
        return record_has(state, key);
    if (op == EVQ__RECORD_CLAIM)
        return record_claim(state, key, ttl_ms);
    return record_write(state, key, op == EVQ__RECORD_PUT, ttl_ms);
}

const struct evq_backend_ops evq__backend_postgres = {
    .scheme = "postgres",
    .flags = EVQ__PRIORITIES,
    .opts = pg_opts,
    .open = pg_open,
    .enqueue = pg_enqueue,
    .fetch = pg_fetch,
    .hand_back = pg_hand_back,
    .prefetch_opt = "postgres.claim_batch",
    .ack = pg_ack,
    .nack = pg_nack,
    .touch = pg_touch,
    .interrupt = pg_interrupt,
    .stats = pg_stats,
    .count = pg_count,
    .close = pg_close,
    .destroy = pg_destroy,
    .record = pg_record,
    .take = pg_take,
};

/* ---- the outbox -----------------------------------------------------------
 */

int evq_pg_enqueue_in(struct pg_conn *conn, const char *queue,
                      const evq_event *ev, int64_t delay_ms,
                      const char *format)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc;

    if (!conn || !queue || !ev)
        return evq__err(EVQ_EINVAL, "evq_pg_enqueue_in: NULL argument");
    if (delay_ms < 0)
        return evq__err(EVQ_EINVAL, "delay %lld ms is negative",
                        (long long)delay_ms);
    if (PQstatus(conn) != CONNECTION_OK)
        return evq__err(EVQ_ECONN, "evq_pg_enqueue_in: the connection is "
                                   "not open");
    int priority = evq__event_priority(ev);
    if (priority < 0)
        return priority;
    if ((rc = evq_event_encode(ev, format, NULL, &buf, &len)) != 0)
        return rc;
    evq__buf bodies = {0}, delays = {0}, prios = {0};
    if (array_begin(&bodies, OID_BYTEA, 1) || array_add(&bodies, buf, len) ||
        array_begin(&delays, OID_INT8, 1) || array_add64(&delays, delay_ms) ||
        array_begin(&prios, OID_INT2, 1) ||
        array_add16(&prios, (int16_t)priority)) {
        rc = evq__err(EVQ_ENOMEM, "out of memory");
        goto out;
    }
    /* the default schema, as a handle without postgres.schema has it; the
     * tables must be there (a handle's open makes them) */
    pghandle h = {.schema = "evq", .log = NULL};
    atomic_init(&h.down, true); /* the application's connection: no log */
    atomic_init(&h.interrupted, false);
    char chan[64];
    channel_of("evq", queue, chan);
    char *sql = statement(&h, insert_sql);
    if (!sql) {
        rc = evq__err(EVQ_ENOMEM, "out of memory");
        goto out;
    }
    const char *v[5] = {queue, (const char *)bodies.p, (const char *)delays.p,
                        chan, (const char *)prios.p};
    int lens[5] = {0, (int)bodies.len, (int)delays.len, 0, (int)prios.len};
    int fmts[5] = {0, 1, 1, 0, 1};
    rc = run(&h, conn, sql, 5, v, lens, fmts, false, NULL, "enqueue");
    free(sql);
out:
    free(bodies.p);
    free(delays.p);
    free(prios.p);
    free(buf);
    return rc;
}
