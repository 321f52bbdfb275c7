/* The transactional outbox on postgres://: the application writes its own
 * row and the event in one transaction on its own libpq connection, so
 * both happen or neither does.  A consumer, woken by the commit's
 * notification, then receives the event.
 *
 *   pg_outbox postgres://user:password@host:port/dbname */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>

#include <evq.h>

static void exec_or_die(PGconn *db, const char *sql)
{
    PGresult *r = PQexec(db, sql);
    ExecStatusType st = PQresultStatus(r);
    PQclear(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "%s: %s", sql, PQerrorMessage(db));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s postgres://user:password@host/db\n",
                argv[0]);
        return 2;
    }
    const char *url = argv[1];

    /* A consumer's handle; opening it makes evq's tables if missing. */
    evq_queue *q;
    if (evq_queue_open(&q, url, "users", NULL) != 0) {
        fprintf(stderr, "open: %s\n", evq_errmsg());
        return 1;
    }

    /* The application's own connection and table. */
    PGconn *db = PQconnectdb(url);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(db));
        return 1;
    }
    exec_or_die(db, "CREATE TABLE IF NOT EXISTS users (id text PRIMARY KEY, "
                    "name text)");
    exec_or_die(db, "DELETE FROM users WHERE id = '123'");

    /* One transaction: the user row and the user.created event. */
    evq_event *ev =
        evq_event_new("user.created", json_pack("{s:s, s:s}", "userId", "123",
                                                "name", "John Doe"));
    exec_or_die(db, "BEGIN");
    exec_or_die(db, "INSERT INTO users VALUES ('123', 'John Doe')");
    if (evq_pg_enqueue_in(db, "users", ev, 0, NULL) != 0) {
        fprintf(stderr, "outbox: %s\n", evq_errmsg());
        exec_or_die(db, "ROLLBACK");
        return 1;
    }
    exec_or_die(db, "COMMIT");
    evq_event_free(ev);

    evq_msg *msg;
    if (evq_dequeue(q, &msg, 10000) != 0) {
        fprintf(stderr, "consume: %s\n", evq_errmsg());
        return 1;
    }
    char *data = json_dumps(evq_event_data(evq_msg_event(msg)), JSON_COMPACT);
    printf("committed together, received: %s %s\n",
           evq_event_type(evq_msg_event(msg)), data);
    free(data);
    evq_ack(msg);
    evq_queue_close(q);
    PQfinish(db);
    return 0;
}
