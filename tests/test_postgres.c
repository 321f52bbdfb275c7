/* The postgres:// backend's own promises, beyond the conformance suite:
 * the outbox commits and rolls back with the application's transaction;
 * bad credentials, a missing database, a read-only transaction and rows
 * written by hand with junk bodies give clear errors (the password never
 * printed), and junk is dead-lettered; an idle consumer is woken by the
 * enqueue's notification.
 *
 * And the server stopped as a crash would (pg_ctl stop -m immediate) and
 * started again under a stream of synchronous or asynchronous enqueues
 * loses nothing accepted.
 *
 *   test_postgres URL SERVICE_DIR (services.sh run postgres gives both) */
#include "internal.h"
#include "outage.h"
#include "testutil.h"

#include <libpq-fe.h>

static const char *url;
static const char *sdir; /* the service's folder: pg-stop.sh, pg-start.sh */

/* url with the password, the database or options replaced. */
static void url_with(char *out, size_t cap, const char *password,
                     const char *db, const char *params)
{
    /* postgres://evq:evq-secret@127.0.0.1:PORT/evq */
    const char *at = strchr(url, '@');
    const char *slash = strchr(at, '/');
    snprintf(out, cap, "postgres://evq:%s%.*s/%s%s%s", password,
             (int)(slash - at), at, db, params ? "?" : "",
             params ? params : "");
}

static PGconn *app_conn(void)
{
    char conninfo[300];
    url_with(conninfo, sizeof conninfo, "evq-secret", "evq", NULL);
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect: %s", PQerrorMessage(c));
    PQsetNoticeProcessor(c, NULL, NULL); /* "drop cascades to ..." */
    return c;
}

static void sql(PGconn *c, const char *text)
{
    PGresult *r = PQexec(c, text);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", text, PQerrorMessage(c));
    PQclear(r);
}

/* The outbox: an event enqueued in a transaction that rolls back is never
 * seen; one in a transaction that commits is, with its id. */
static void the_outbox_commits_with_the_transaction(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "outbox", NULL));
    PGconn *c = app_conn();
    sql(c, "CREATE TABLE IF NOT EXISTS users (id text PRIMARY KEY)");

    evq_event *lost = evq_event_new("user.created", json_string("lost"));
    sql(c, "BEGIN");
    sql(c, "INSERT INTO users VALUES ('lost')");
    assert_evq_ok(evq_pg_enqueue_in(c, "outbox", lost, 0, NULL));
    sql(c, "ROLLBACK");

    evq_event *kept = evq_event_new("user.created", json_string("kept"));
    sql(c, "BEGIN");
    sql(c, "INSERT INTO users VALUES ('kept')");
    assert_evq_ok(evq_pg_enqueue_in(c, "outbox", kept, 0, NULL));
    /* not visible before the commit */
    assert_evq_err(evq_dequeue(q, &m, 200), EVQ_ETIMEDOUT);
    sql(c, "COMMIT");

    assert_evq_ok(evq_dequeue(q, &m, 10000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(kept));
    assert_string_equal(json_string_value(evq_event_data(evq_msg_event(m))),
                        "kept");
    assert_evq_ok(evq_ack(m));
    assert_evq_err(evq_dequeue(q, &m, 200), EVQ_ETIMEDOUT);

    /* delayed: not before its time */
    evq_event *later = evq_event_new("user.created", json_string("later"));
    assert_evq_ok(evq_pg_enqueue_in(c, "outbox", later, 1500, NULL));
    assert_evq_err(evq_dequeue(q, &m, 300), EVQ_ETIMEDOUT);
    assert_evq_ok(evq_dequeue(q, &m, 10000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(later));
    assert_evq_ok(evq_ack(m));

    evq_event_free(lost);
    evq_event_free(kept);
    evq_event_free(later);
    PQfinish(c);
    evq_queue_close(q);
}

/* The outbox's bad input: a read-only transaction, a connection that is
 * not open, NULL arguments, a negative delay. */
static void the_outbox_refuses_what_it_cannot_do(void **state)
{
    (void)state;
    evq_queue *q;
    assert_evq_ok(evq_queue_open(&q, url, "outbox-bad", NULL));
    PGconn *c = app_conn();
    evq_event *ev = evq_event_new("t", json_null());

    sql(c, "BEGIN READ ONLY");
    assert_evq_err(evq_pg_enqueue_in(c, "outbox-bad", ev, 0, NULL),
                   EVQ_ESTATE);
    assert_errmsg_has("read-only");
    sql(c, "ROLLBACK");

    assert_evq_err(evq_pg_enqueue_in(NULL, "outbox-bad", ev, 0, NULL),
                   EVQ_EINVAL);
    assert_evq_err(evq_pg_enqueue_in(c, NULL, ev, 0, NULL), EVQ_EINVAL);
    assert_evq_err(evq_pg_enqueue_in(c, "outbox-bad", NULL, 0, NULL),
                   EVQ_EINVAL);
    assert_evq_err(evq_pg_enqueue_in(c, "outbox-bad", ev, -1, NULL),
                   EVQ_EINVAL);
    assert_evq_err(evq_pg_enqueue_in(c, "outbox-bad", ev, 0, "no-such"),
                   EVQ_EINVAL);

    PGconn *down = PQconnectdb("host=127.0.0.1 port=1 connect_timeout=2");
    assert_evq_err(evq_pg_enqueue_in(down, "outbox-bad", ev, 0, NULL),
                   EVQ_ECONN);
    PQfinish(down);

    struct evq_queue_stats st;
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.depth + st.delayed + st.in_flight, 0);
    evq_event_free(ev);
    PQfinish(c);
    evq_queue_close(q);
}

/* A wrong password and a missing database: clear errors, and the
 * password given is never printed. */
static void bad_credentials_and_databases_are_clear_errors(void **state)
{
    (void)state;
    char u[300];
    evq_queue *q = NULL;
    url_with(u, sizeof u, "not-the-Secret-42", "evq", NULL);
    assert_evq_err(evq_queue_open(&q, u, "x", NULL), EVQ_EINVAL);
    assert_errmsg_has("password authentication failed");
    if (strstr(evq_errmsg(), "not-the-Secret-42"))
        fail_msg("the password was printed: %s", evq_errmsg());

    url_with(u, sizeof u, "evq-secret", "no_such_db", NULL);
    assert_evq_err(evq_queue_open(&q, u, "x", NULL), EVQ_ENOENT);
    assert_errmsg_has("no_such_db");

    /* create=false on a schema that holds no evq tables */
    url_with(u, sizeof u, "evq-secret", "evq",
             "create=false&postgres.schema=nothing_here");
    assert_evq_err(evq_queue_open(&q, u, "x", NULL), EVQ_ENOENT);
    assert_errmsg_has("create=false");

    /* an option libpq refuses */
    url_with(u, sizeof u, "evq-secret", "evq", "sslmode=sometimes");
    assert_int_not_equal(evq_queue_open(&q, u, "x", NULL), 0);
    assert_errmsg_has("sslmode");
}

/* Rows written behind evq's back with bodies that decode to nothing go to
 * the dead-letter queue, and the good ones around them are delivered. */
static void junk_rows_are_dead_lettered(void **state)
{
    (void)state;
    evq_queue *q, *dead;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "junk", NULL));
    PGconn *c = app_conn();
    sql(c, "INSERT INTO evq.messages (queue, body, visible_at, enqueued_at) "
           "VALUES ('junk', '\\x00ff7b', 0, 0), ('junk', 'not json', 0, 0)");
    evq_event *ev = evq_event_new("good", json_integer(1));
    assert_evq_ok(evq_enqueue(q, ev));

    assert_evq_ok(evq_dequeue(q, &m, 10000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(ev));
    assert_evq_ok(evq_ack(m));
    assert_evq_ok(evq_queue_open_dead(&dead, q));
    for (int i = 0; i < 2; i++) {
        assert_evq_ok(evq_dequeue(dead, &m, 10000));
        assert_non_null(evq_event_attr(evq_msg_event(m), "evqerror"));
        assert_evq_ok(evq_ack(m));
    }
    assert_evq_err(evq_dequeue(dead, &m, 200), EVQ_ETIMEDOUT);
    evq_queue_close(dead);
    evq_event_free(ev);
    PQfinish(c);
    evq_queue_close(q);
}

/* A 64 MiB row written by hand, between two events: both delivered, the
 * row dead-lettered cut to max_event_bytes with its stored size, and this
 * process never holds it (the claim asks the server for a prefix). */
static void an_oversize_row_is_dead_lettered_unread(void **state)
{
    (void)state;
    enum { BIG = 64 << 20 };
    char u[400];
    url_with(u, sizeof u, "evq-secret", "evq", "max_event_bytes=65536");
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, u, "big", NULL));
    evq_event *ev = evq_event_new("pg.before", json_integer(1));
    assert_evq_ok(evq_enqueue(q, ev));
    evq_event_free(ev);
    PGconn *c = app_conn();
    /* visible after the first event, before the second */
    sql(c, "INSERT INTO evq.messages (queue, body, visible_at, enqueued_at) "
           "VALUES ('big', convert_to(repeat('x', 67108864), 'UTF8'), 0, 0)");
    PQfinish(c);
    ev = evq_event_new("pg.after", json_integer(2));
    assert_evq_ok(evq_enqueue(q, ev));
    evq_event_free(ev);

    long before = peak_rss_kib();
    const char *want[] = {"pg.before", "pg.after"};
    for (int i = 0; i < 2; i++) {
        assert_evq_ok(evq_dequeue(q, &m, 20000));
        assert_string_equal(evq_event_type(evq_msg_event(m)), want[i]);
        assert_evq_ok(evq_ack(m));
    }
    assert_evq_err(evq_dequeue(q, &m, 200), EVQ_ETIMEDOUT);
    assert_peak_rss_within(before, BIG / 1024 / 4);
    assert_oversize_dead_letter(q, BIG);
    struct evq_queue_stats st;
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.depth + st.in_flight + st.delayed, 0);
    evq_queue_close(q);
}

/* A consumer process SIGKILLed holding a claim: its events come back
 * after the visibility timeout, with their attempt counted. */
static void a_dead_consumers_events_come_back(void **state)
{
    (void)state;
    char u[400];
    url_with(u, sizeof u, "evq-secret", "evq", "visibility_timeout_ms=300");
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, u, "crash", NULL));
    for (int i = 0; i < 3; i++) {
        evq_event *ev = evq_event_new("pg.crash", json_integer(i));
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
    }
    consume_one_and_die(u, "crash");
    int seen = 0, redelivered = 0;
    while (seen < 3) {
        assert_evq_ok(evq_dequeue(q, &m, 5000));
        if (evq_event_attempt(evq_msg_event(m)) == 2)
            redelivered++;
        seen++;
        assert_evq_ok(evq_ack(m));
    }
    assert_true(redelivered >= 1);
    assert_evq_err(evq_dequeue(q, &m, 500), EVQ_ETIMEDOUT);
    evq_queue_close(q);
}

/* Oldest visible first: events enqueued one by one come out in order;
 * one delayed past them all is not handed out meanwhile. */
static void events_come_out_oldest_first(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "order", NULL));
    evq_event *late = evq_event_new("pg.late", json_integer(-1));
    assert_evq_ok(evq_enqueue_delayed(q, late, 600000));
    evq_event_free(late);
    for (int i = 0; i < 200; i++) {
        evq_event *ev = evq_event_new("pg.order", json_integer(i));
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
    }
    for (int i = 0; i < 200; i++) {
        assert_evq_ok(evq_dequeue(q, &m, 5000));
        assert_int_equal(json_integer_value(evq_event_data(evq_msg_event(m))),
                         i);
        assert_evq_ok(evq_ack(m));
    }
    assert_evq_err(evq_dequeue(q, &m, 300), EVQ_ETIMEDOUT);
    struct evq_queue_stats st;
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.delayed, 1);
    evq_queue_close(q);
}

/* The table dropped under a handle: its calls fail with the server's
 * words, nothing crashes, and it works again once the table is back. */
static void a_dropped_table_is_a_clear_error(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    char u[300];
    url_with(u, sizeof u, "evq-secret", "evq", "postgres.schema=dropme");
    assert_evq_ok(evq_queue_open(&q, u, "d", NULL));
    PGconn *c = app_conn();
    sql(c, "DROP TABLE dropme.messages");
    evq_event *ev = evq_event_new("t", json_null());
    assert_evq_err(evq_enqueue(q, ev), EVQ_EIO);
    assert_errmsg_has("does not exist");
    assert_int_not_equal(evq_dequeue(q, &m, 200), 0);
    evq_queue_close(q);

    /* with the schema gone too, a new handle makes it all again */
    sql(c, "DROP SCHEMA dropme CASCADE");
    assert_evq_ok(evq_queue_open(&q, u, "d", NULL));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 10000));
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    PQfinish(c);
    evq_queue_close(q);
}

/* A consumer waiting with a long poll_ms is woken by the enqueue's
 * notification, long before the poll would find the event. */
static void an_idle_consumer_is_woken_by_a_notification(void **state)
{
    (void)state;
    char u[300];
    evq_queue *q, *p;
    evq_msg *m;
    url_with(u, sizeof u, "evq-secret", "evq", "poll_ms=600000");
    assert_evq_ok(evq_queue_open(&q, u, "wake", NULL));
    assert_evq_ok(evq_queue_open(&p, u, "wake", NULL));
    /* the consumer is listening once its first wait found nothing */
    assert_evq_err(evq_dequeue(q, &m, 100), EVQ_ETIMEDOUT);
    evq_event *ev = evq_event_new("t", json_null());
    assert_evq_ok(evq_enqueue(p, ev));
    /* 60 s is far less than poll_ms: only the notification wakes it */
    assert_evq_ok(evq_dequeue(q, &m, 60000));
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(p);
    evq_queue_close(q);
}

/* ---- the server stopped as a crash would, and started again ------------ */

static void restart_server(void *arg)
{
    (void)arg;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh %s/pg-stop.sh && sleep 0.3 && sh %s/pg-start.sh",
             sdir, sdir);
    assert_int_equal(system(cmd), 0);
}

static void a_server_restart_loses_no_accepted_event(void **state)
{
    (void)state;
    run_outage(url, "outage", restart_server, NULL, true);
}

static void an_async_stream_across_a_restart_loses_nothing_reported(
    void **state)
{
    (void)state;
    run_outage_async(url, "outage-async", restart_server, NULL, true);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s POSTGRES_URL SERVICE_DIR\n", argv[0]);
        return 2;
    }
    url = argv[1];
    sdir = argv[2];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(the_outbox_commits_with_the_transaction),
        cmocka_unit_test(the_outbox_refuses_what_it_cannot_do),
        cmocka_unit_test(bad_credentials_and_databases_are_clear_errors),
        cmocka_unit_test(junk_rows_are_dead_lettered),
        cmocka_unit_test(an_oversize_row_is_dead_lettered_unread),
        cmocka_unit_test(a_dead_consumers_events_come_back),
        cmocka_unit_test(events_come_out_oldest_first),
        cmocka_unit_test(a_dropped_table_is_a_clear_error),
        cmocka_unit_test(an_idle_consumer_is_woken_by_a_notification),
        cmocka_unit_test(a_server_restart_loses_no_accepted_event),
        cmocka_unit_test(
            an_async_stream_across_a_restart_loses_nothing_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
