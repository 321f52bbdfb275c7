/*
 * sqlite.c - durable queues in one SQLite file: sqlite:///path/file.db,
 * or sqlite://file.db relative to the working directory.
 *
 * Every queue of a file lives in one table, evq_messages, ordered by
 * (queue, visible_at, id).  A message is visible when visible_at (Unix
 * milliseconds) has passed.  Dequeue claims the oldest visible messages in
 * one transaction: it pushes their visible_at a visibility timeout ahead,
 * raises their attempt count and stamps them with a claim token.  A
 * consumer that dies without acking simply lets the timeout pass and the
 * message becomes visible again.  Ack deletes the row if the claim is still
 * ours; nack sets visible_at to now + delay.
 *
 * Connections: one per handle, in WAL mode, with a busy timeout, used under
 * the handle's mutex (a handle may be shared by threads).  Claims are taken
 * in small batches, and acks are group-committed (kept for at most
 * ack_flush_ms, or until the next claim, stats or close): a crash in that
 * window can redeliver an acked event, which at-least-once allows.
 * Enqueue commits before it returns.
 *
 * Waiting: handles of the same file and queue in one process share a
 * condition variable that enqueue and nack signal; events from other
 * processes are found by polling every poll_ms (default 25): one indexed
 * read, which also says when the next delayed event comes due.
 */
#include "../internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SCHEMA_VERSION "1"

typedef struct sqcfg {
    int64_t visibility_timeout_ms, poll_ms, busy_timeout_ms, ack_flush_ms;
    int synchronous; /* SYNC_FULL or SYNC_NORMAL */
} sqcfg;

enum { SYNC_FULL, SYNC_NORMAL };

static const evq__opt_spec sqlite_opts[] = {
    {"visibility_timeout_ms", EVQ__OPT_INT, "30000", 100, 86400000, NULL,
     "how long a dequeued event stays hidden before it is delivered again "
     "(a consumer that died without acking)",
     EVQ__AT(sqcfg, visibility_timeout_ms)},
    {"poll_ms", EVQ__OPT_INT, "25", 1, 1000, NULL,
     "how often a waiting dequeue looks for events enqueued by other "
     "processes",
     EVQ__AT(sqcfg, poll_ms)},
    {"sqlite.synchronous", EVQ__OPT_ENUM, "FULL", 0, 0, "FULL|NORMAL",
     "FULL: every commit survives power loss; NORMAL: the last commits may be "
     "lost on power loss (never on a process crash), several times faster",
     EVQ__AT(sqcfg, synchronous)},
    {"sqlite.busy_timeout_ms", EVQ__OPT_INT, "10000", 0, 600000, NULL,
     "how long to wait for another connection's write lock",
     EVQ__AT(sqcfg, busy_timeout_ms)},
    {"sqlite.claim_batch", EVQ__OPT_INT, "64", 1, 1000, NULL,
     "events claimed per transaction by a dequeue (the rest wait in the "
     "handle, hidden from others, until dequeued); read by the core as "
     "the read-ahead's size", 0},
    {"sqlite.ack_flush_ms", EVQ__OPT_INT, "20", 0, 10000, NULL,
     "longest an ack waits to be committed with others (0: commit each ack)",
     EVQ__AT(sqcfg, ack_flush_ms)},
    {0},
};

/* A claimed message, handed to the core as the delivery's token. */
typedef struct sqmsg {
    int64_t id;
    int64_t claim;
    int64_t lease_ns; /* evq__delivery's lease_ns */
    int attempt;
    int priority;
    size_t len;
    size_t full_len; /* stored length of an oversize message, or 0 */
    unsigned char body[];
} sqmsg;

/* What the handles of this process share, found by a key and counted:
 * per database file (key: the path), the gate its writers take turns
 * through before asking SQLite for the write lock, so they queue on a mutex
 * instead of SQLite's busy retries (which only other processes then meet);
 * per file and queue (key: path, newline, queue), the condition variable
 * with which enqueue and nack wake that queue's waiting dequeues. */
typedef struct sqshared {
    struct sqshared *next;
    char *key;
    int refs;
    pthread_mutex_t mu; /* the gate, or the lock of cv and gen */
    pthread_cond_t cv;
    uint64_t gen;
} sqshared;

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static sqshared *shareds;

static sqshared *shared_get(const char *key)
{
    sqshared *x;
    pthread_mutex_lock(&shared_lock);
    for (x = shareds; x && strcmp(x->key, key) != 0; x = x->next)
        ;
    if (!x && (x = calloc(1, sizeof *x)) != NULL) {
        if (!(x->key = evq__strdup(key))) {
            free(x);
            x = NULL;
        } else {
            evq__cond_init_mono(&x->cv);
            pthread_mutex_init(&x->mu, NULL);
            x->next = shareds;
            shareds = x;
        }
    }
    if (x)
        x->refs++;
    pthread_mutex_unlock(&shared_lock);
    return x;
}

static void shared_put(sqshared *x)
{
    if (!x)
        return;
    pthread_mutex_lock(&shared_lock);
    if (--x->refs == 0) {
        for (sqshared **pp = &shareds; *pp; pp = &(*pp)->next) {
            if (*pp == x) {
                *pp = x->next;
                break;
            }
        }
        pthread_mutex_destroy(&x->mu);
        pthread_cond_destroy(&x->cv);
        free(x->key);
        free(x);
    }
    pthread_mutex_unlock(&shared_lock);
}

enum {
    S_INSERT,
    S_CLAIM,
    S_ACK,
    S_NACK,
    S_RELEASE,
    S_TOUCH,
    S_BIG,
    S_STUB,
    S_DROP,
    S_NEXT,
    S_STATS,
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_STATE_GET,
    S_STATE_PUT,
    S_STATE_DEL,
    S_STATE_GC,
    S_COUNT
};

static const char *const sql_text[S_COUNT] = {
    [S_INSERT] = "INSERT INTO evq_messages (queue, body, attempt, visible_at, "
                 "enqueued_at, priority) VALUES (?1, ?2, 0, ?3, ?4, ?5)",
    /* Events with a priority first (the partial index evq_messages_prio
     * has only those, so an ordinary event costs it nothing), then the
     * rest in visibility order: UNION ALL runs its parts in turn, and the
     * LIMIT stops it once it has enough. */
    [S_CLAIM] = "UPDATE evq_messages SET visible_at = ?1, attempt = attempt + "
                "1, claim = ?2 WHERE id IN (SELECT id FROM (SELECT * FROM "
                "(SELECT id FROM evq_messages WHERE queue = ?3 AND priority > "
                "0 AND visible_at <= ?4 AND length(body) <= ?6 ORDER BY "
                "priority DESC, visible_at, id LIMIT ?5) UNION ALL SELECT * "
                "FROM (SELECT id FROM evq_messages WHERE queue = ?3 AND "
                "visible_at <= ?4 AND priority = 0 AND length(body) <= ?6 ORDER "
                "BY visible_at, id LIMIT ?5)) LIMIT ?5) RETURNING id, body, "
                "attempt, priority",
    [S_ACK] = "DELETE FROM evq_messages WHERE id = ?1 AND claim = ?2",
    [S_NACK] = "UPDATE evq_messages SET visible_at = ?1, claim = NULL WHERE id "
               "= ?2 AND claim = ?3",
    [S_TOUCH] = "UPDATE evq_messages SET visible_at = ?1 WHERE id = ?2 AND "
                "claim = ?3",
    [S_RELEASE] = "UPDATE evq_messages SET visible_at = ?1, claim = NULL, "
                  "attempt = attempt - 1 WHERE id = ?2 AND claim = ?3",
    /* length() of a column reads no content, so oversize rows are found
     * without loading them; an UPDATE of one would. */
    [S_BIG] = "SELECT id, attempt, enqueued_at FROM evq_messages WHERE queue = "
              "?1 AND visible_at <= ?2 AND length(body) > ?3 ORDER BY "
              "visible_at, id LIMIT ?4",
    [S_STUB] = "INSERT INTO evq_messages (queue, body, attempt, visible_at, "
               "enqueued_at, claim) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING "
               "id",
    [S_DROP] = "DELETE FROM evq_messages WHERE id = ?1",
    [S_NEXT] = "SELECT MIN(visible_at) FROM evq_messages WHERE queue = ?1",
    [S_STATS] = "SELECT COALESCE(SUM(visible_at <= ?2), 0), "
                "COALESCE(SUM(visible_at > ?2 AND claim IS NOT NULL), 0), "
                "COALESCE(SUM(visible_at > ?2 AND claim IS NULL), 0) FROM "
                "evq_messages WHERE queue = ?1",
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_STATE_GET] = "SELECT value FROM evq_state WHERE queue = ?1 AND key = "
                    "?2 AND (expires_at IS NULL OR expires_at > ?3)",
    [S_STATE_PUT] = "INSERT OR REPLACE INTO evq_state (queue, key, value, "
                    "expires_at) VALUES (?1, ?2, ?3, ?4)",
    [S_STATE_DEL] = "DELETE FROM evq_state WHERE queue = ?1 AND key = ?2",
    [S_STATE_GC] = "DELETE FROM evq_state WHERE queue = ?1 AND expires_at <= "
                   "?2",
};

/* An enqueue waiting to be committed with others (group commit). */
typedef struct sqpending {
    struct sqpending *next;
    const evq__item *items;
    size_t n;
    int rc;
    bool done;
    char err[256];
} sqpending;

typedef struct sqhandle {
    /* Group commit: enqueues arriving while one commits wait here and go
     * in the next transaction together. */
    pthread_mutex_t gc_mu;
    pthread_cond_t gc_cv;
    sqpending *gc_head, **gc_tail;
    bool gc_busy;
    pthread_mutex_t mu; /* guards everything below but `interrupted` */
    sqlite3 *db;
    sqlite3_stmt *st[S_COUNT];
    char *queue;
    char *path;
    sqshared *wake; /* this file and queue */
    sqshared *file; /* this file: its mu is the writers' gate */
    int64_t vt_ms;
    int poll_ms;
    size_t max_bytes; /* max_event_bytes: larger rows are never loaded */
    int ack_flush_ms;
    sqmsg **ready; /* a claim's rows, before they go to the read-ahead */
    size_t cap_ready;
    /* acks waiting to be committed */
    struct {
        int64_t id, claim;
    } * acks;
    size_t n_acks, cap_acks;
    int64_t oldest_ack_ms;
    uint64_t claim_seq;
    uint64_t done_puts; /* record writes: every 256th clears the expired */
    int busy_timeout_ms;
    int64_t busy_since;
    evq__flusher flusher; /* commits deferred acks in time */
    bool flusher_init;
    atomic_bool interrupted;
} sqhandle;

/* SQLite's own busy handler sleeps in steps of milliseconds, which caps
 * two busy connections at a few hundred transactions a second; this one
 * retries after tens of microseconds, growing to a millisecond, until the
 * handle's busy timeout. */
static int busy_wait(void *arg, int count)
{
    sqhandle *h = arg;
    if (count == 0)
        h->busy_since = evq__now_mono_ns();
    else if (evq__now_mono_ns() - h->busy_since >
             (int64_t)h->busy_timeout_ms * 1000000)
        return 0;
    long us = count < 5 ? 20L << count : 1000;
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
    return 1;
}

static int64_t now_ms(void)
{
    return evq__now_real_ns() / 1000000;
}

static int db_err(sqhandle *h, int src, const char *what)
{
    int code = EVQ_EIO;
    if (src == SQLITE_BUSY || src == SQLITE_LOCKED)
        code = EVQ_EBUSY;
    else if (src == SQLITE_NOMEM)
        code = EVQ_ENOMEM;
    return evq__err(code, "sqlite %s on '%s': %s", what, h->path,
                    h->db ? sqlite3_errmsg(h->db) : sqlite3_errstr(src));
}

/* Runs a statement that returns no rows, resetting it. */
static int step_done(sqhandle *h, int which, const char *what)
{
    sqlite3_stmt *st = h->st[which];
    int rc = sqlite3_step(st);
    int out = rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : db_err(h, rc, what);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return out;
}

static void rollback(sqhandle *h)
{
    if (!sqlite3_get_autocommit(h->db))
        step_done(h, S_ROLLBACK, "rollback");
}

/* Starts a write transaction (mu held), through the file's gate. */
static int tx_begin(sqhandle *h)
{
    pthread_mutex_lock(&h->file->mu);
    int rc = step_done(h, S_BEGIN, "begin");
    if (rc)
        pthread_mutex_unlock(&h->file->mu);
    return rc;
}

/* Commits when rc is 0, else rolls back; returns the outcome. */
static int tx_end(sqhandle *h, int rc)
{
    if (!rc)
        rc = step_done(h, S_COMMIT, "commit");
    if (rc)
        rollback(h);
    pthread_mutex_unlock(&h->file->mu);
    return rc;
}

/* Deletes the acked rows still claimed by us (inside a transaction). */
static int write_acks(sqhandle *h)
{
    int rc = 0;
    for (size_t i = 0; i < h->n_acks && !rc; i++) {
        sqlite3_bind_int64(h->st[S_ACK], 1, h->acks[i].id);
        sqlite3_bind_int64(h->st[S_ACK], 2, h->acks[i].claim);
        rc = step_done(h, S_ACK, "ack");
    }
    return rc;
}

/* ---- schema ---------------------------------------------------------------
 */

static const char tables_sql[] =
    "CREATE TABLE IF NOT EXISTS evq_meta (key TEXT PRIMARY KEY, value TEXT "
    "NOT NULL);"
    "CREATE TABLE IF NOT EXISTS evq_messages ("
    " id INTEGER PRIMARY KEY,"
    " queue TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " attempt INTEGER NOT NULL DEFAULT 0,"
    " visible_at INTEGER NOT NULL,"
    " enqueued_at INTEGER NOT NULL,"
    " claim INTEGER,"
    " priority INTEGER NOT NULL DEFAULT 0);"
    /* A queue's small records: its pause state ('paused'), the ids an
     * idempotent worker finished ('done:<id>', until expires_at). */
    "CREATE TABLE IF NOT EXISTS evq_state ("
    " queue TEXT NOT NULL,"
    " key TEXT NOT NULL,"
    " value TEXT NOT NULL,"
    " expires_at INTEGER,"
    " PRIMARY KEY (queue, key));";

static const char index_sql[] =
    "CREATE INDEX IF NOT EXISTS evq_messages_visible ON evq_messages (queue, "
    "visible_at, id);"
    "CREATE INDEX IF NOT EXISTS evq_messages_prio ON evq_messages (queue, "
    "priority DESC, visible_at, id) WHERE priority > 0;";

/* A file made before priorities lacks their column: added in place (the
 * schema version stays, as evq without priorities reads the table
 * still). */
static const char priority_sql[] =
    "ALTER TABLE evq_messages ADD COLUMN priority INTEGER NOT NULL DEFAULT 0";

static const char meta_sql[] =
    "INSERT OR IGNORE INTO evq_meta (key, value) VALUES ('schema', "
    "'" SCHEMA_VERSION "');";

/* Creates evq's tables if missing and checks that existing ones are evq's.
 * Runs on `db` inside whatever transaction the caller holds. */
/* Whether the file has evq's tables (looking creates nothing). */
static bool has_tables(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    bool found =
        sqlite3_prepare_v2(db,
                           "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                           "AND name = 'evq_messages'",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return found;
}

static int ensure_schema(sqlite3 *db, const char *path)
{
    char *msg = NULL;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_exec(db, tables_sql, NULL, NULL, &msg);

    if (rc != SQLITE_OK) {
        rc = evq__err(EVQ_EIO, "sqlite: cannot set up evq's tables in '%s': %s",
                      path, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return rc;
    }
    /* Tables of these names made by something else fail here, clearly. */
    rc = sqlite3_prepare_v2(db,
                            "SELECT id, queue, body, attempt, visible_at, "
                            "enqueued_at, claim FROM evq_messages LIMIT 0",
                            -1, &st, NULL);
    sqlite3_finalize(st);
    if (rc != SQLITE_OK)
        return evq__err(EVQ_EINVAL,
                        "sqlite: '%s' has a table evq_messages that is not "
                        "evq's: %s",
                        path, sqlite3_errmsg(db));
    st = NULL;
    rc = sqlite3_prepare_v2(db, "SELECT priority FROM evq_messages LIMIT 0",
                            -1, &st, NULL);
    sqlite3_finalize(st);
    if (rc != SQLITE_OK &&
        (rc = sqlite3_exec(db, priority_sql, NULL, NULL, &msg)) != SQLITE_OK &&
        !(msg && strstr(msg, "duplicate column"))) { /* another, meanwhile */
        rc = evq__err(EVQ_EIO, "sqlite: cannot add evq's priority column in "
                               "'%s': %s",
                      path, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return rc;
    }
    rc = sqlite3_exec(db, index_sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        rc = evq__err(EVQ_EINVAL, "sqlite: '%s' has tables evq cannot use: %s",
                      path, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return rc;
    }
    rc = sqlite3_prepare_v2(
        db, "SELECT value FROM evq_meta WHERE key = 'schema'", -1, &st, NULL);
    if (rc == SQLITE_OK && sqlite3_step(st) != SQLITE_ROW) {
        /* A new file: record the schema (a write only the first time). */
        sqlite3_finalize(st);
        st = NULL;
        rc = sqlite3_exec(db, meta_sql, NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
            rc = evq__err(EVQ_EIO, "sqlite: cannot set up '%s': %s", path,
                          msg ? msg : sqlite3_errstr(rc));
            sqlite3_free(msg);
            return rc;
        }
        return 0;
    }
    if (rc == SQLITE_OK) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        if (!v || strcmp(v, SCHEMA_VERSION) != 0) {
            rc = evq__err(EVQ_EINVAL,
                          "sqlite: '%s' holds evq schema version %s; this evq "
                          "reads version " SCHEMA_VERSION,
                          path, v ? v : "(none)");
            sqlite3_finalize(st);
            return rc;
        }
    }
    sqlite3_finalize(st);
    return 0;
}

/* ---- wake-ups between handles of this process -------------------------- */

static void wake_all(sqshared *w)
{
    pthread_mutex_lock(&w->mu);
    w->gen++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* ---- open and close ------------------------------------------------------ */

/* The file a URL names: sqlite:///abs/path.db is /abs/path.db;
 * sqlite://rel.db (and sqlite://dir/rel.db) is relative to the working
 * directory. */
static int url_path(const evq__url *url, char *out, size_t cap)
{
    const char *host = url->n_hosts ? url->hosts[0].host : "";
    if (url->n_hosts > 1 || (url->n_hosts && url->hosts[0].port) || url->user)
        return evq__err(EVQ_EINVAL,
                        "sqlite:// URLs name a file: sqlite:///abs/path.db or "
                        "sqlite://relative.db");
    int n = snprintf(out, cap, "%s%s", host, url->path);
    if (n <= 0)
        return evq__err(EVQ_EINVAL, "sqlite:// URL names no file");
    if ((size_t)n >= cap)
        return evq__err(EVQ_EINVAL, "sqlite:// file path is too long");
    return 0;
}

static void sqlite_close(void *state);
static void sqlite_flush_later(void *arg);

/* Puts the file in WAL mode unless it is already.  Changing the mode needs
 * a lock that SQLite's busy handler does not wait for, so a busy answer is
 * retried here until the busy timeout. */
static int set_wal(sqhandle *h)
{
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(h->db, "PRAGMA journal_mode", -1, &st, NULL);
    bool wal = false;
    if (src == SQLITE_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        const char *mode = (const char *)sqlite3_column_text(st, 0);
        wal = mode && strcmp(mode, "wal") == 0;
        src = SQLITE_OK;
    }
    sqlite3_finalize(st);
    if (src != SQLITE_OK || wal)
        return src;
    for (int n = 0;; n++) {
        src = sqlite3_exec(h->db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
        if (src != SQLITE_BUSY && src != SQLITE_LOCKED)
            return src;
        if (!busy_wait(h, n))
            return src;
    }
}

static int sqlite_open(void **state, const evq__url *url, const char *name,
                       const evq__optset *opts, evq__logger *log)
{
    EVQ__UNUSED(log); /* no broker to speak of */
    char path[PATH_MAX];
    sqhandle *h;
    int rc, src;

    if ((rc = url_path(url, path, sizeof path)) != 0)
        return rc;
    h = calloc(1, sizeof *h);
    if (!h)
        return evq__err(EVQ_ENOMEM, "out of memory");
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->gc_mu, NULL);
    pthread_cond_init(&h->gc_cv, NULL);
    h->gc_tail = &h->gc_head;
    atomic_init(&h->interrupted, false);
    sqcfg cfg;
    evq__opts_read(opts, sqlite_opts, &cfg);
    h->vt_ms = cfg.visibility_timeout_ms;
    h->poll_ms = (int)cfg.poll_ms;
    h->max_bytes = (size_t)opts->core.max_event_bytes;
    h->ack_flush_ms = (int)cfg.ack_flush_ms;
    /* Claim tokens tell this handle's claims from every other's: each
     * handle counts up from a start no other handle shares. */
    static atomic_uint handles;
    h->claim_seq = (((uint64_t)evq__now_real_ns() << 16) ^ (uint64_t)getpid()) +
                   ((uint64_t)atomic_fetch_add(&handles, 1) << 44);
    evq__flusher_init(&h->flusher, sqlite_flush_later, h);
    h->flusher_init = true;
    if (!(h->queue = evq__strdup(name)) || !(h->path = evq__strdup(path))) {
        sqlite_close(h);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }

    /* No SQLITE_OPEN_CREATE on a path whose folder is missing: say so. */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        struct stat sb;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            sqlite_close(h);
            return evq__err(EVQ_EIO, "sqlite: folder '%s' does not exist", dir);
        }
    }
    bool create = opts->core.create;
    struct stat fb;
    if (!create && stat(path, &fb) != 0) {
        sqlite_close(h);
        return evq__err(EVQ_ENOENT,
                        "sqlite: '%s' does not exist (create=false)", path);
    }
    src = sqlite3_open_v2(path, &h->db,
                          SQLITE_OPEN_READWRITE |
                              (create ? SQLITE_OPEN_CREATE : 0) |
                              SQLITE_OPEN_NOMUTEX,
                          NULL);
    if (src != SQLITE_OK) {
        rc = db_err(h, src, "open");
        sqlite_close(h);
        return rc;
    }
    sqlite3_extended_result_codes(h->db, 0);
    h->busy_timeout_ms = (int)cfg.busy_timeout_ms;
    sqlite3_busy_handler(h->db, busy_wait, h);
    char pragmas[160];
    snprintf(pragmas, sizeof pragmas, "PRAGMA synchronous=%s;",
             cfg.synchronous == SYNC_NORMAL ? "NORMAL" : "FULL");
    char *msg = NULL;
    src = set_wal(h);
    if (src == SQLITE_OK)
        src = sqlite3_exec(h->db, pragmas, NULL, NULL, &msg);
    if (src != SQLITE_OK) {
        rc = evq__err(EVQ_EIO, "sqlite: '%s' cannot be used: %s", path,
                      msg ? msg : sqlite3_errstr(src));
        sqlite3_free(msg);
        sqlite_close(h);
        return rc;
    }
    if (!create && !has_tables(h->db)) {
        sqlite_close(h);
        return evq__err(EVQ_ENOENT,
                        "sqlite: '%s' holds no evq queues (create=false)",
                        path);
    }
    if ((rc = ensure_schema(h->db, path)) != 0) {
        sqlite_close(h);
        return rc;
    }
    for (int i = 0; i < S_COUNT; i++) {
        src = sqlite3_prepare_v3(h->db, sql_text[i], -1,
                                 SQLITE_PREPARE_PERSISTENT, &h->st[i], NULL);
        if (src != SQLITE_OK) {
            rc = db_err(h, src, "prepare");
            sqlite_close(h);
            return rc;
        }
    }
    char key[PATH_MAX + 256];
    snprintf(key, sizeof key, "%s\n%s", path, name);
    if (!(h->wake = shared_get(key)) || !(h->file = shared_get(path))) {
        sqlite_close(h);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    *state = h;
    return 0;
}

/* ---- acks, releases ------------------------------------------------------ */

/* Commits the acks waiting in the handle (mu held). */
static int flush_acks(sqhandle *h)
{
    int rc = 0;
    if (h->n_acks == 0)
        return 0;
    if ((rc = tx_begin(h)) != 0)
        return rc;
    if ((rc = tx_end(h, write_acks(h))) != 0)
        return rc; /* kept: the next flush tries again */
    h->n_acks = 0;
    return 0;
}

/* The flusher's work: acks deferred for a group commit go within
 * ack_flush_ms even when the handle sees no other call meanwhile (a slow
 * handler), long before their leases end. */
static void sqlite_flush_later(void *arg)
{
    sqhandle *h = arg;
    pthread_mutex_lock(&h->mu);
    if (flush_acks(h) != 0 && h->n_acks > 0)
        evq__flusher_arm(&h->flusher, evq__now_mono_ns() +
                                          (h->ack_flush_ms + 10) * 1000000LL);
    pthread_mutex_unlock(&h->mu);
}

/* Hands back claimed messages nobody was given: visible again at once,
 * their claim not counted as a delivery; freed. */
static void sqlite_hand_back(void *state, evq__delivery *d, size_t n)
{
    sqhandle *h = state;
    if (n == 0)
        return;
    int64_t now = now_ms();
    pthread_mutex_lock(&h->mu);
    if (tx_begin(h) == 0) {
        int rc = write_acks(h);
        for (size_t i = 0; i < n && !rc; i++) {
            sqmsg *m = d[i].token;
            sqlite3_bind_int64(h->st[S_RELEASE], 1, now);
            sqlite3_bind_int64(h->st[S_RELEASE], 2, m->id);
            sqlite3_bind_int64(h->st[S_RELEASE], 3, m->claim);
            rc = step_done(h, S_RELEASE, "release");
        }
        if (tx_end(h, rc) == 0)
            h->n_acks = 0;
    }
    pthread_mutex_unlock(&h->mu);
    /* On failure they stay claimed and come back after the timeout. */
    for (size_t i = 0; i < n; i++)
        free(d[i].token);
    wake_all(h->wake);
}

static void sqlite_close(void *state)
{
    sqhandle *h = state;
    if (!h)
        return;
    if (h->flusher_init)
        evq__flusher_destroy(&h->flusher);
    if (h->db) {
        if (h->st[S_COUNT - 1] && h->file)
            flush_acks(h);
        for (int i = 0; i < S_COUNT; i++)
            sqlite3_finalize(h->st[i]);
        sqlite3_close(h->db);
    }
    shared_put(h->wake);
    shared_put(h->file);
    free(h->ready);
    free(h->acks);
    free(h->queue);
    free(h->path);
    pthread_mutex_destroy(&h->mu);
    pthread_mutex_destroy(&h->gc_mu);
    pthread_cond_destroy(&h->gc_cv);
    free(h);
}

/* ---- enqueue ------------------------------------------------------------- */

/* Writes a group of enqueues in one transaction (mu held). */
static int insert_group(sqhandle *h, sqpending *group)
{
    int64_t now = now_ms();
    int rc = tx_begin(h);
    if (rc)
        return rc;
    for (sqpending *p = group; p && !rc; p = p->next) {
        for (size_t i = 0; i < p->n && !rc; i++) {
            sqlite3_stmt *st = h->st[S_INSERT];
            sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
            sqlite3_bind_blob(st, 2, p->items[i].bytes, (int)p->items[i].len,
                              SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, now + p->items[i].delay_ms);
            sqlite3_bind_int64(st, 4, now);
            sqlite3_bind_int(st, 5, p->items[i].priority);
            rc = step_done(h, S_INSERT, "insert");
        }
    }
    return tx_end(h, rc);
}

/* Commits before returning.  Concurrent callers on one handle share a
 * transaction: the first to arrive commits everything queued behind it
 * while the others wait for its result, so N producer threads pay for one
 * fsync rather than N.  A group fails or succeeds whole. */
static int sqlite_enqueue(void *state, const evq__item *items, size_t n)
{
    sqhandle *h = state;
    sqpending me = {.items = items, .n = n};

    if (atomic_load(&h->interrupted))
        return evq__err(EVQ_ECLOSED, "queue interrupted");
    pthread_mutex_lock(&h->gc_mu);
    *h->gc_tail = &me;
    h->gc_tail = &me.next;
    while (!me.done) {
        if (h->gc_busy) {
            pthread_cond_wait(&h->gc_cv, &h->gc_mu);
            continue;
        }
        sqpending *group = h->gc_head;
        h->gc_head = NULL;
        h->gc_tail = &h->gc_head;
        h->gc_busy = true;
        pthread_mutex_unlock(&h->gc_mu);

        pthread_mutex_lock(&h->mu);
        int rc = insert_group(h, group);
        pthread_mutex_unlock(&h->mu);

        pthread_mutex_lock(&h->gc_mu);
        for (sqpending *p = group, *next; p; p = next) {
            next = p->next;
            p->rc = rc;
            if (rc)
                snprintf(p->err, sizeof p->err, "%s", evq_errmsg());
            p->done = true;
        }
        h->gc_busy = false;
        pthread_cond_broadcast(&h->gc_cv);
    }
    pthread_mutex_unlock(&h->gc_mu);
    if (me.rc)
        return evq__err(me.rc, "%s", me.err);
    wake_all(h->wake);
    return 0;
}

/* ---- dequeue ------------------------------------------------------------- */

static int by_priority_id(const void *a, const void *b)
{
    const sqmsg *x = *(sqmsg *const *)a, *y = *(sqmsg *const *)b;
    if (x->priority != y->priority)
        return y->priority - x->priority;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* The earliest visible_at in the queue, INT64_MAX when it is empty,
 * INT64_MIN on error (mu held). */
static int64_t next_visible(sqhandle *h)
{
    sqlite3_stmt *st = h->st[S_NEXT];
    int64_t v = INT64_MAX;
    sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        if (sqlite3_column_type(st, 0) != SQLITE_NULL)
            v = sqlite3_column_int64(st, 0);
    } else {
        v = INT64_MIN;
    }
    sqlite3_reset(st);
    return v;
}

/* Claims visible rows larger than max_bytes (mu held, inside the claim's
 * transaction, h->ready with room for `limit`) without loading them:
 * each is replaced by a row holding its first max_bytes bytes, claimed
 * with `token`, and delivered with its stored length, so the queue
 * dead-letters it.  Should the process die first, the shortened row comes
 * back after the visibility timeout, still undecodable: the bytes kept are
 * dead-lettered then. */
static int claim_big(sqhandle *h, int64_t token, int64_t now, size_t limit,
                     size_t *got)
{
    enum { MAX_BIG = 16 };
    int64_t ids[MAX_BIG], enq[MAX_BIG];
    int att[MAX_BIG], src = SQLITE_DONE;
    size_t n = 0, room = limit - *got;
    sqlite3_stmt *st = h->st[S_BIG];

    if (room > MAX_BIG)
        room = MAX_BIG;
    sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_int64(st, 3, (int64_t)h->max_bytes);
    sqlite3_bind_int64(st, 4, (int64_t)room);
    while (n < room && (src = sqlite3_step(st)) == SQLITE_ROW) {
        ids[n] = sqlite3_column_int64(st, 0);
        att[n] = sqlite3_column_int(st, 1);
        enq[n++] = sqlite3_column_int64(st, 2);
    }
    int rc = n < room && src != SQLITE_DONE ? db_err(h, src, "claim") : 0;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    for (size_t i = 0; !rc && i < n; i++) {
        sqlite3_blob *b = NULL;
        sqmsg *m = NULL;
        if (sqlite3_blob_open(h->db, "main", "evq_messages", "body", ids[i], 0,
                              &b) != SQLITE_OK) {
            rc = db_err(h, sqlite3_errcode(h->db), "open oversize row");
            sqlite3_blob_close(b);
            break;
        }
        size_t full = (size_t)sqlite3_blob_bytes(b);
        size_t keep = full < h->max_bytes ? full : h->max_bytes;
        if (!(m = malloc(sizeof *m + keep)))
            rc = evq__err(EVQ_ENOMEM, "out of memory");
        else if (sqlite3_blob_read(b, m->body, (int)keep, 0) != SQLITE_OK)
            rc = db_err(h, sqlite3_errcode(h->db), "read oversize row");
        sqlite3_blob_close(b);
        if (!rc) {
            st = h->st[S_STUB];
            sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
            sqlite3_bind_blob(st, 2, m->body, (int)keep, SQLITE_STATIC);
            sqlite3_bind_int(st, 3, att[i] + 1);
            sqlite3_bind_int64(st, 4, now + h->vt_ms);
            sqlite3_bind_int64(st, 5, enq[i]);
            sqlite3_bind_int64(st, 6, token);
            if ((src = sqlite3_step(st)) == SQLITE_ROW)
                m->id = sqlite3_column_int64(st, 0);
            else
                rc = db_err(h, src, "replace oversize row");
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
        }
        if (!rc) {
            st = h->st[S_DROP];
            sqlite3_bind_int64(st, 1, ids[i]);
            if ((src = sqlite3_step(st)) != SQLITE_DONE)
                rc = db_err(h, src, "replace oversize row");
            sqlite3_reset(st);
        }
        if (rc) {
            free(m);
            break;
        }
        m->claim = token;
        m->attempt = att[i] + 1;
        m->len = keep;
        m->full_len = full;
        h->ready[(*got)++] = m;
    }
    return rc;
}

/* Claims up to `limit` visible messages into h->ready (mu held).
 * Returns how many (maybe none) or an error; *next is the earliest
 * visible_at seen (INT64_MAX: the queue is empty). */
static int claim(sqhandle *h, size_t limit, int64_t *next)
{
    int64_t lease_ns = evq__now_mono_ns() + h->vt_ms * 1000000;
    int64_t now = now_ms();
    int rc, src;

    /* A read first: claiming takes the write lock, looking does not.  It
     * also tells a waiting dequeue when the next event comes due. */
    *next = next_visible(h);
    if (*next == INT64_MIN)
        return db_err(h, sqlite3_errcode(h->db), "select");
    if (*next > now)
        return h->n_acks ? flush_acks(h) : 0;

    if ((rc = tx_begin(h)) != 0)
        return rc;
    rc = write_acks(h); /* acks ride along with the claim */
    int64_t token = (int64_t)(++h->claim_seq & INT64_MAX);
    sqlite3_stmt *st = h->st[S_CLAIM];
    size_t got = 0;
    if (!rc) {
        sqlite3_bind_int64(st, 1, now + h->vt_ms);
        sqlite3_bind_int64(st, 2, token);
        sqlite3_bind_text(st, 3, h->queue, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, now);
        sqlite3_bind_int64(st, 5, (int64_t)limit);
        sqlite3_bind_int64(st, 6, (int64_t)h->max_bytes);
        if (evq__grow(&h->ready, &h->cap_ready, limit - 1, sizeof *h->ready))
            rc = EVQ_ENOMEM;
        while (!rc && (src = sqlite3_step(st)) == SQLITE_ROW) {
            const void *body = sqlite3_column_blob(st, 1);
            size_t len = (size_t)sqlite3_column_bytes(st, 1);
            sqmsg *m = malloc(sizeof *m + len);
            if (!m) {
                rc = evq__err(EVQ_ENOMEM, "out of memory");
                break;
            }
            m->id = sqlite3_column_int64(st, 0);
            m->claim = token;
            m->attempt = sqlite3_column_int(st, 2);
            m->priority = sqlite3_column_int(st, 3);
            m->len = len;
            m->full_len = 0;
            if (len)
                memcpy(m->body, body, len);
            h->ready[got++] = m;
        }
        if (!rc && src != SQLITE_DONE)
            rc = db_err(h, src, "claim");
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (!rc && got < limit)
            rc = claim_big(h, token, now, limit, &got);
    }
    if ((rc = tx_end(h, rc)) != 0) {
        for (size_t i = 0; i < got; i++)
            free(h->ready[i]);
        return rc;
    }
    h->n_acks = 0;
    for (size_t i = 0; i < got; i++)
        h->ready[i]->lease_ns = lease_ns;
    /* RETURNING gives no order; hand them out by priority, oldest
     * first. */
    qsort(h->ready, got, sizeof *h->ready, by_priority_id);
    return (int)got;
}

/* Claims up to max messages into d, waiting up to wait_ms for one: until
 * woken by an enqueue in this process, the next poll (sqlite.poll_ms), the
 * next delayed event, or the wait's end. */
static int sqlite_fetch(void *state, evq__delivery *d, size_t max, int wait_ms)
{
    sqhandle *h = state;
    int64_t deadline = evq__now_mono_ns() + (int64_t)wait_ms * 1000000;

    for (;;) {
        uint64_t gen;
        pthread_mutex_lock(&h->wake->mu);
        gen = h->wake->gen;
        pthread_mutex_unlock(&h->wake->mu);

        int64_t visible = INT64_MAX;
        pthread_mutex_lock(&h->mu);
        int got = atomic_load(&h->interrupted) ? 0 : claim(h, max, &visible);
        for (int i = 0; i < got; i++) {
            sqmsg *m = h->ready[i];
            d[i] = (evq__delivery){.bytes = m->body,
                                   .len = m->len,
                                   .full_len = m->full_len,
                                   .attempt = m->attempt,
                                   .token = m,
                                   .lease_ns = m->lease_ns};
        }
        pthread_mutex_unlock(&h->mu);
        if (got != 0 && got != EVQ_EBUSY)
            return got;

        int64_t now = evq__now_mono_ns();
        if (now >= deadline || atomic_load(&h->interrupted))
            return 0;
        int64_t wake = now + (int64_t)h->poll_ms * 1000000;
        if (visible != INT64_MAX) {
            int64_t until = (visible - now_ms()) * 1000000;
            if (until < 0)
                until = 0;
            if (now + until < wake)
                wake = now + until;
        }
        if (deadline < wake)
            wake = deadline;
        struct timespec ts = evq__ts_from_ns(wake);
        pthread_mutex_lock(&h->wake->mu);
        while (h->wake->gen == gen && !atomic_load(&h->interrupted)) {
            if (pthread_cond_timedwait(&h->wake->cv, &h->wake->mu, &ts) ==
                ETIMEDOUT)
                break;
        }
        pthread_mutex_unlock(&h->wake->mu);
    }
}

/* ---- settle ----------------------------------------------------------------
 */

/* Runs a claim-checked statement on the row of `m` (mu held, inside a
 * transaction): EVQ_ESTATE when the claim is no longer ours. */
static int claimed_step(sqhandle *h, int which, sqmsg *m, int64_t visible_at,
                        const char *what)
{
    sqlite3_stmt *st = h->st[which];
    int col = 1;
    if (which != S_ACK)
        sqlite3_bind_int64(st, col++, visible_at);
    sqlite3_bind_int64(st, col++, m->id);
    sqlite3_bind_int64(st, col, m->claim);
    int rc = step_done(h, which, what);
    if (!rc && sqlite3_changes(h->db) == 0)
        rc = evq__lease_lost(what);
    return rc;
}

/* Acks of deliveries with time left on their lease wait to be committed
 * together (ack_flush_ms; the flusher sees to it): nobody else can claim
 * the row before its lease ends.  An ack near or past the end of its lease
 * is committed at once, checked against the claim. */
static int sqlite_ack(void *state, evq__delivery **d, size_t n)
{
    sqhandle *h = state;
    int rc = 0, lost = 0;
    int64_t margin = h->vt_ms * 1000000 / 2 + h->ack_flush_ms * 1000000LL;
    int64_t now_ns = evq__now_mono_ns(), now = now_ms();
    size_t urgent = 0;

    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < n; i++) {
        sqmsg *m = d[i]->token;
        if (m->lease_ns - now_ns <= margin) {
            urgent++; /* checked below, in this call */
            continue;
        }
        if (evq__grow(&h->acks, &h->cap_acks, h->n_acks, sizeof *h->acks)) {
            rc = evq__err(EVQ_ENOMEM, "out of memory");
        } else { /* else its lease runs out: it is delivered again */
            if (h->n_acks == 0)
                h->oldest_ack_ms = now;
            h->acks[h->n_acks].id = m->id;
            h->acks[h->n_acks].claim = m->claim;
            h->n_acks++;
        }
        free(m);
        d[i]->token = NULL;
    }
    if (urgent && (rc = tx_begin(h)) == 0) {
        int arc = write_acks(h);
        for (size_t i = 0; i < n && !arc; i++) {
            if (!d[i]->token)
                continue;
            int src = claimed_step(h, S_ACK, d[i]->token, 0, "ack");
            if (src == EVQ_ESTATE)
                lost++;
            else
                arc = src;
        }
        rc = tx_end(h, arc);
        if (!rc)
            h->n_acks = 0;
    } else if (h->n_acks && !rc) {
        if (evq__flush_due(h->n_acks, h->oldest_ack_ms, now, h->ack_flush_ms,
                           atomic_load(&h->interrupted)))
            rc = flush_acks(h);
        else
            evq__flusher_arm(&h->flusher,
                             evq__now_mono_ns() + h->ack_flush_ms * 1000000LL);
    }
    pthread_mutex_unlock(&h->mu);
    for (size_t i = 0; i < n; i++)
        free(d[i]->token);
    if (!rc && lost)
        rc = evq__lease_lost("ack");
    return rc;
}

static int sqlite_nack(void *state, evq__delivery *d, int64_t delay_ms)
{
    sqhandle *h = state;
    sqmsg *m = d->token;
    int rc;

    pthread_mutex_lock(&h->mu);
    if ((rc = tx_begin(h)) == 0)
        rc = tx_end(h, claimed_step(h, S_NACK, m, now_ms() + delay_ms, "nack"));
    pthread_mutex_unlock(&h->mu);
    free(m);
    if (!rc)
        wake_all(h->wake);
    return rc;
}

/* Moves the claim's visible_at a visibility timeout on, only while the
 * claim is still ours; acks waiting for a commit ride along. */
static int sqlite_touch(void *state, evq__delivery *d)
{
    sqhandle *h = state;
    sqmsg *m = d->token;
    int64_t lease_ns = evq__now_mono_ns() + h->vt_ms * 1000000;
    int rc;

    pthread_mutex_lock(&h->mu);
    if ((rc = tx_begin(h)) == 0) {
        rc = write_acks(h);
        int trc =
            rc ? rc : claimed_step(h, S_TOUCH, m, now_ms() + h->vt_ms, "touch");
        rc = tx_end(h, trc == EVQ_ESTATE ? 0 : trc);
        if (!rc) {
            h->n_acks = 0;
            if (trc == EVQ_ESTATE)
                rc = evq__lease_lost("touch");
        }
    }
    pthread_mutex_unlock(&h->mu);
    if (!rc)
        m->lease_ns = d->lease_ns = lease_ns;
    return rc;
}

/* Commits the acks waiting and wakes a waiting fetch.  Blocks for at most
 * one transaction. */
static int sqlite_interrupt(void *state)
{
    sqhandle *h = state;
    atomic_store(&h->interrupted, true);
    pthread_mutex_lock(&h->mu);
    flush_acks(h);
    pthread_mutex_unlock(&h->mu);
    wake_all(h->wake);
    return 0;
}

/* The figures of queue `name` in this database. */
static int stats_of(sqhandle *h, const char *name, struct evq_queue_stats *out)
{
    sqlite3_stmt *st = h->st[S_STATS];
    int rc = 0;

    pthread_mutex_lock(&h->mu);
    flush_acks(h);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now_ms());
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        out->depth = sqlite3_column_int64(st, 0);
        out->in_flight = sqlite3_column_int64(st, 1);
        out->delayed = sqlite3_column_int64(st, 2);
    } else {
        rc = db_err(h, src, "stats");
    }
    sqlite3_reset(st);
    pthread_mutex_unlock(&h->mu);
    return rc;
}

static int sqlite_stats(void *state, struct evq_queue_stats *out)
{
    sqhandle *h = state;
    return stats_of(h, h->queue, out);
}

static int sqlite_count(void *state, const char *name, int64_t *n)
{
    struct evq_queue_stats s;
    int rc = stats_of(state, name, &s);
    *n = rc ? -1 : s.depth + s.in_flight + s.delayed;
    return rc;
}

/* Deletes every row of the queue (ready, delayed, claimed) in one
 * transaction; the file and the tables stay, for the other queues they
 * may hold. */
static int sqlite_destroy(void *state)
{
    sqhandle *h = state;
    static const char *const sql[] = {
        "DELETE FROM evq_messages WHERE queue = ?1",
        "DELETE FROM evq_state WHERE queue = ?1",
    };
    pthread_mutex_lock(&h->mu);
    flush_acks(h);
    int rc = tx_begin(h);
    bool began = rc == 0;
    for (size_t i = 0; !rc && i < sizeof sql / sizeof *sql; i++) {
        sqlite3_stmt *st = NULL;
        int src = sqlite3_prepare_v2(h->db, sql[i], -1, &st, NULL);
        if (src == SQLITE_OK) {
            sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
            src = sqlite3_step(st);
        }
        rc = src == SQLITE_OK || src == SQLITE_DONE ? 0
                                                     : db_err(h, src, "delete");
        sqlite3_finalize(st);
    }
    if (began)
        rc = tx_end(h, rc);
    pthread_mutex_unlock(&h->mu);
    return rc;
}

/* ---- the queue's records: pause state, finished ids ------------------- */

/* Whether record `key` of the queue is there (and not expired): 1, 0, or
 * the error. */
static int state_has(sqhandle *h, const char *key)
{
    sqlite3_stmt *st = h->st[S_STATE_GET];
    pthread_mutex_lock(&h->mu);
    sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now_ms());
    int src = sqlite3_step(st);
    int rc = src == SQLITE_ROW    ? 1
             : src == SQLITE_DONE ? 0
                                  : db_err(h, src, "reading a record");
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    pthread_mutex_unlock(&h->mu);
    return rc;
}

/* One call in 256 (inside a write transaction) deletes the queue's
 * expired records: finished ids past their window, idle rate limits.  A
 * failure only leaves them for the next time. */
static void clear_expired(sqhandle *h)
{
    if (h->done_puts++ % 256 != 0)
        return;
    sqlite3_bind_text(h->st[S_STATE_GC], 1, h->queue, -1, SQLITE_STATIC);
    sqlite3_bind_int64(h->st[S_STATE_GC], 2, now_ms());
    step_done(h, S_STATE_GC, "clearing expired records");
}

/* Writes record `key` (ttl_ms 0: for good), or deletes it (`put` false),
 * in a transaction of its own. */
static int state_write(sqhandle *h, const char *key, bool put, int64_t ttl_ms)
{
    pthread_mutex_lock(&h->mu);
    int rc = tx_begin(h);
    if (!rc) {
        int which = put ? S_STATE_PUT : S_STATE_DEL;
        sqlite3_stmt *st = h->st[which];
        sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
        if (put) {
            sqlite3_bind_text(st, 3, "1", -1, SQLITE_STATIC);
            if (ttl_ms > 0)
                sqlite3_bind_int64(st, 4, now_ms() + ttl_ms);
        }
        rc = step_done(h, which, "writing a record");
        if (!rc && ttl_ms > 0)
            clear_expired(h);
        rc = tx_end(h, rc);
    }
    pthread_mutex_unlock(&h->mu);
    return rc;
}

/* Writes record `key` for ttl_ms unless it is there and not expired, in
 * one transaction (BEGIN IMMEDIATE: one writer of the file at a time):
 * 1 written, 0 there, or the error. */
static int state_claim(sqhandle *h, const char *key, int64_t ttl_ms)
{
    pthread_mutex_lock(&h->mu);
    int rc = tx_begin(h);
    if (!rc) {
        int64_t now = now_ms();
        sqlite3_stmt *st = h->st[S_STATE_GET];
        sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, now);
        int src = sqlite3_step(st);
        rc = src == SQLITE_ROW    ? 0
             : src == SQLITE_DONE ? 1
                                  : db_err(h, src, "reading a unique key");
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc == 1) {
            st = h->st[S_STATE_PUT];
            sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, "1", -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 4, now + ttl_ms);
            int wrc = step_done(h, S_STATE_PUT, "writing a unique key");
            if (wrc)
                rc = wrc;
            else
                clear_expired(h);
        }
        int erc = tx_end(h, rc < 0 ? rc : 0);
        if (erc)
            rc = erc;
    }
    pthread_mutex_unlock(&h->mu);
    return rc;
}

/* A rate limit's bucket is the row `key`, value "<tokens> <ms>", read and
 * written in one transaction; it expires once it would be full again. */
static int sqlite_take(void *state, const char *key, double rate, int burst,
                       int64_t *wait_ms)
{
    sqhandle *h = state;
    *wait_ms = 0;
    pthread_mutex_lock(&h->mu);
    int rc = tx_begin(h);
    if (rc) {
        pthread_mutex_unlock(&h->mu);
        return rc;
    }
    int64_t now = now_ms();
    double tokens = burst;
    int64_t at = now;
    sqlite3_stmt *st = h->st[S_STATE_GET];
    sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        double t;
        long long a;
        if (v && sscanf(v, "%lf %lld", &t, &a) == 2) {
            tokens = t;
            at = a;
        }
    } else if (src != SQLITE_DONE) {
        rc = db_err(h, src, "reading a rate limit");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (!rc) {
        if (now > at)
            tokens += (double)(now - at) * rate / 1000.0;
        if (tokens > burst)
            tokens = burst;
        if (tokens >= 1.0)
            tokens -= 1.0;
        else
            *wait_ms = evq__bucket_wait_ms(tokens, rate);
        char v[64];
        snprintf(v, sizeof v, "%.17g %lld", tokens, (long long)now);
        st = h->st[S_STATE_PUT];
        sqlite3_bind_text(st, 1, h->queue, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, v, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4,
                           now + (int64_t)((burst - tokens) * 1000 / rate) +
                               1000);
        rc = step_done(h, S_STATE_PUT, "writing a rate limit");
        if (!rc)
            clear_expired(h);
    }
    rc = tx_end(h, rc);
    pthread_mutex_unlock(&h->mu);
    return rc;
}

static int sqlite_record(void *state, const char *key, int op,
                         int64_t ttl_ms)
{
    if (op == EVQ__RECORD_HAS)
        return state_has(state, key);
    if (op == EVQ__RECORD_CLAIM)
        return state_claim(state, key, ttl_ms);
    return state_write(state, key, op == EVQ__RECORD_PUT, ttl_ms);
}

const struct evq_backend_ops evq__backend_sqlite = {
    .scheme = "sqlite",
    .flags = EVQ__PRIORITIES,
    .opts = sqlite_opts,
    .open = sqlite_open,
    .enqueue = sqlite_enqueue,
    .fetch = sqlite_fetch,
    .hand_back = sqlite_hand_back,
    .prefetch_opt = "sqlite.claim_batch",
    .ack = sqlite_ack,
    .nack = sqlite_nack,
    .touch = sqlite_touch,
    .interrupt = sqlite_interrupt,
    .stats = sqlite_stats,
    .count = sqlite_count,
    .close = sqlite_close,
    .destroy = sqlite_destroy,
    .record = sqlite_record,
    .take = sqlite_take,
};

/* ---- the outbox -----------------------------------------------------------
 */

int evq_sqlite_enqueue_in(sqlite3 *db, const char *queue, const evq_event *ev,
                          int64_t delay_ms, const char *format)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    sqlite3_stmt *st = NULL;
    int rc;

    if (!db || !queue || !ev)
        return evq__err(EVQ_EINVAL, "evq_sqlite_enqueue_in: NULL argument");
    if (delay_ms < 0)
        return evq__err(EVQ_EINVAL, "delay %lld ms is negative",
                        (long long)delay_ms);
    int priority = evq__event_priority(ev);
    if (priority < 0)
        return priority;
    if ((rc = evq_event_encode(ev, format, NULL, &buf, &len)) != 0)
        return rc;
    const char *path = sqlite3_db_filename(db, "main");
    if ((rc = ensure_schema(db, path && path[0] ? path : "(memory)")) != 0)
        goto out;
    if (sqlite3_prepare_v2(db, sql_text[S_INSERT], -1, &st, NULL) !=
        SQLITE_OK) {
        rc = evq__err(EVQ_EIO, "sqlite: %s", sqlite3_errmsg(db));
        goto out;
    }
    int64_t now = now_ms();
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, buf, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now + delay_ms);
    sqlite3_bind_int64(st, 4, now);
    sqlite3_bind_int(st, 5, priority);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = evq__err(EVQ_EIO, "sqlite insert: %s", sqlite3_errmsg(db));
out:
    sqlite3_finalize(st);
    free(buf);
    return rc;
}
