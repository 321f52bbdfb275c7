/* The transactional outbox on sqlite://: the application writes its own
 * row and the event in one transaction on its own connection, so both
 * happen or neither does.  A consumer then receives the event. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <evq.h>

static int check(int rc, sqlite3 *db, const char *what)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE) {
        fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
    return rc;
}

int main(void)
{
    char path[64], url[128];
    snprintf(path, sizeof path, "/tmp/evq-outbox-%d.db", (int)getpid());
    snprintf(url, sizeof url, "sqlite://%s", path);

    /* The application's own database and connection. */
    sqlite3 *db;
    check(sqlite3_open(path, &db), db, "open");
    check(sqlite3_exec(db,
                       "PRAGMA journal_mode=WAL;"
                       "CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT)",
                       NULL, NULL, NULL),
          db, "create");

    /* One transaction: the user row and the user.created event. */
    evq_event *ev =
        evq_event_new("user.created", json_pack("{s:s, s:s}", "userId", "123",
                                                "name", "John Doe"));
    check(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), db, "begin");
    check(sqlite3_exec(db, "INSERT INTO users VALUES ('123', 'John Doe')", NULL,
                       NULL, NULL),
          db, "insert");
    int rc = evq_sqlite_enqueue_in(db, "users", ev, 0, NULL);
    if (rc != 0) {
        fprintf(stderr, "outbox: %s\n", evq_errmsg());
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return 1;
    }
    check(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), db, "commit");
    evq_event_free(ev);

    /* Any consumer of the queue now sees the event. */
    evq_queue *q;
    evq_msg *msg;
    if (evq_queue_open(&q, url, "users", NULL) != 0 ||
        evq_dequeue(q, &msg, 5000) != 0) {
        fprintf(stderr, "consume: %s\n", evq_errmsg());
        return 1;
    }
    char *data = json_dumps(evq_event_data(evq_msg_event(msg)), JSON_COMPACT);
    printf("committed together, received: %s %s\n",
           evq_event_type(evq_msg_event(msg)), data);
    free(data);
    evq_ack(msg);
    evq_queue_close(q);
    sqlite3_close(db);
    char wal[80], shm[80];
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(shm, sizeof shm, "%s-shm", path);
    unlink(path);
    unlink(wal);
    unlink(shm);
    return 0;
}
