/*
 * pg_baseline.c - what a plain libpq program does on the same server with
 * the same rows, for bench/postgres.sh to set evq's postgres:// figures
 * against:
 *
 *   pg_baseline CONNINFO insert N SIZE BATCH   N rows of SIZE bytes, BATCH
 *                                              rows per INSERT, each its own
 *                                              transaction (committed
 *                                              synchronously, as evq's
 *                                              enqueues are)
 *   pg_baseline CONNINFO drain N CLAIM         claims CLAIM rows at a time
 *                                              (UPDATE ... FOR UPDATE SKIP
 *                                              LOCKED ... RETURNING) and
 *                                              deletes them (a second
 *                                              statement), until N are gone;
 *                                              synchronous_commit off, as
 *                                              evq's claims and acks
 *
 * The table is evq's (one table, an index on queue, visible_at, id), in a
 * schema of its own (evq_baseline); insert makes it.  Prints one JSON
 * object.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void check(PGconn *c, PGresult *r, const char *what)
{
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
        fprintf(stderr, "pg_baseline: %s: %s", what, PQerrorMessage(c));
        exit(1);
    }
}

static void exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    check(c, r, sql);
    PQclear(r);
}

static const char schema[] =
    "CREATE SCHEMA IF NOT EXISTS evq_baseline;"
    "CREATE TABLE IF NOT EXISTS evq_baseline.messages ("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " queue text NOT NULL, body bytea NOT NULL,"
    " attempt integer NOT NULL DEFAULT 0, visible_at bigint NOT NULL,"
    " enqueued_at bigint NOT NULL, claim bigint);"
    "CREATE INDEX IF NOT EXISTS messages_visible ON evq_baseline.messages "
    "(queue, visible_at, id);";

#define NOW "(extract(epoch from clock_timestamp()) * 1000)::bigint"

static int insert(PGconn *c, long n, int size, int batch)
{
    exec(c, schema);
    exec(c, "DELETE FROM evq_baseline.messages");
    /* INSERT ... VALUES ('base', $1, 0, now, now), ... : BATCH rows */
    size_t cap = 200 + (size_t)batch * (2 * sizeof NOW + 32);
    char *sql = malloc(cap);
    size_t len = (size_t)snprintf(
        sql, cap,
        "INSERT INTO evq_baseline.messages (queue, body, attempt, "
        "visible_at, enqueued_at) VALUES ");
    for (int i = 0; i < batch; i++)
        len += (size_t)snprintf(sql + len, cap - len, "%s('base', $%d, 0, " NOW
                                ", " NOW ")",
                                i ? "," : "", i + 1);
    PGresult *r = PQprepare(c, "ins", sql, batch, NULL);
    check(c, r, "prepare");
    PQclear(r);
    free(sql);
    char *body = malloc((size_t)size);
    memset(body, 'x', (size_t)size);
    const char **vals = malloc((size_t)batch * sizeof *vals);
    int *lens = malloc((size_t)batch * sizeof *lens);
    int *fmts = malloc((size_t)batch * sizeof *fmts);
    for (int i = 0; i < batch; i++) {
        vals[i] = body;
        lens[i] = size;
        fmts[i] = 1;
    }
    double t0 = now_s();
    for (long done = 0; done < n; done += batch) {
        r = PQexecPrepared(c, "ins", batch, vals, lens, fmts, 0);
        check(c, r, "insert");
        PQclear(r);
    }
    double dt = now_s() - t0;
    printf("{\"pg_insert_per_s\":%.0f,\"rows\":%ld,\"batch\":%d}\n",
           (double)((n + batch - 1) / batch * batch) / dt,
           (n + batch - 1) / batch * batch, batch);
    free(body);
    free(vals);
    free(lens);
    free(fmts);
    return 0;
}

static int drain(PGconn *c, long n, int claim)
{
    exec(c, "SET synchronous_commit = off");
    char lim[16];
    snprintf(lim, sizeof lim, "%d", claim);
    PGresult *r = PQprepare(
        c, "claim",
        "WITH t AS (SELECT " NOW " AS now), c AS (SELECT m.id FROM "
        "evq_baseline.messages m, t WHERE m.queue = 'base' AND m.visible_at "
        "<= t.now ORDER BY m.visible_at, m.id LIMIT $1 FOR UPDATE OF m SKIP "
        "LOCKED) UPDATE evq_baseline.messages m SET visible_at = t.now + "
        "30000, attempt = m.attempt + 1, claim = 1 FROM c, t WHERE m.id = "
        "c.id RETURNING m.id, m.body",
        1, NULL);
    check(c, r, "prepare claim");
    PQclear(r);
    r = PQprepare(c, "del",
                  "DELETE FROM evq_baseline.messages WHERE id = ANY($1::"
                  "bigint[])",
                  1, NULL);
    check(c, r, "prepare delete");
    PQclear(r);
    long got = 0;
    size_t cap = (size_t)claim * 24 + 8;
    char *ids = malloc(cap);
    double t0 = now_s();
    while (got < n) {
        const char *v[1] = {lim};
        r = PQexecPrepared(c, "claim", 1, v, NULL, NULL, 0);
        check(c, r, "claim");
        int k = PQntuples(r);
        if (k == 0) {
            PQclear(r);
            break;
        }
        size_t len = 0;
        ids[len++] = '{';
        for (int i = 0; i < k; i++)
            len += (size_t)snprintf(ids + len, cap - len, "%s%s",
                                    i ? "," : "", PQgetvalue(r, i, 0));
        snprintf(ids + len, cap - len, "}");
        PQclear(r);
        const char *d[1] = {ids};
        r = PQexecPrepared(c, "del", 1, d, NULL, NULL, 0);
        check(c, r, "delete");
        PQclear(r);
        got += k;
    }
    double dt = now_s() - t0;
    free(ids);
    printf("{\"pg_drain_per_s\":%.0f,\"rows\":%ld,\"claim\":%d}\n",
           (double)got / dt, got, claim);
    return got >= n ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: pg_baseline CONNINFO insert N SIZE BATCH\n"
                        "       pg_baseline CONNINFO drain N CLAIM\n");
        return 2;
    }
    PGconn *c = PQconnectdb(argv[1]);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pg_baseline: connect: %s", PQerrorMessage(c));
        return 1;
    }
    exec(c, "SET client_min_messages = warning");
    long n = atol(argv[3]);
    int rc;
    if (strcmp(argv[2], "insert") == 0 && argc == 6)
        rc = insert(c, n, atoi(argv[4]), atoi(argv[5]));
    else if (strcmp(argv[2], "drain") == 0 && argc == 5)
        rc = drain(c, n, atoi(argv[4]));
    else {
        fprintf(stderr, "pg_baseline: bad arguments\n");
        rc = 2;
    }
    PQfinish(c);
    return rc;
}
