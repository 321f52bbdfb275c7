/* The redis:// backend's own promises, against a real redis-server that
 * scripts/services.sh started:
 *
 *   test_redis URL PORT SERVICE_DIR
 *
 * Events written by redis-cli are read; junk goes to the dead-letter stream;
 * bad credentials and unreachable servers give clear errors; a dead
 * consumer's events are taken over; a server killed and restarted (its
 * append-only file fsynced always) loses no event whose enqueue succeeded. */
#include "outage.h"
#include "testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *url, *port, *sdir;

static void cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void cli(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    int n = snprintf(cmd, sizeof cmd, "redis-cli -p %s ", port);
    va_start(ap, fmt);
    vsnprintf(cmd + n, sizeof cmd - (size_t)n, fmt, ap);
    va_end(ap);
    strncat(cmd, " >/dev/null", sizeof cmd - strlen(cmd) - 1);
    assert_int_equal(system(cmd), 0);
}

static void url_with(char *out, size_t cap, const char *params)
{
    snprintf(out, cap, "%s?%s", url, params);
}

static void events_written_by_redis_cli_are_read(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "interop", NULL));
    cli("XADD evq:interop '*' b '%s' a 0",
        "{\"specversion\":\"1.0\",\"id\":\"cli-1\",\"source\":\"/redis-cli\","
        "\"type\":\"user.created\",\"data\":{\"userId\":\"123\"}}");
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    const evq_event *ev = evq_msg_event(m);
    assert_string_equal(evq_event_id(ev), "cli-1");
    assert_string_equal(evq_event_source(ev), "/redis-cli");
    assert_string_equal(
        json_string_value(json_object_get(evq_event_data(ev), "userId")),
        "123");
    assert_int_equal(evq_event_attempt(ev), 1);
    assert_evq_ok(evq_ack(m));
    evq_queue_close(q);
}

/* Entries far past max_event_bytes, written by another client, are
 * dead-lettered with only their start ever read, and the events around
 * them are delivered once each, also while earlier ones are still held:
 * the consumer's memory does not grow by the entries' size. */
static void an_oversize_entry_is_dead_lettered_unread(void **state)
{
    (void)state;
    enum { BIG = 64 << 20, BIG2 = 8 << 20 };
    char u[512];
    evq_queue *q;
    evq_msg *held[3];
    url_with(u, sizeof u, "max_event_bytes=65536&redis.prefetch=2");
    assert_evq_ok(evq_queue_open(&q, u, "huge", NULL));
    const char *types[] = {"huge.0", "huge.1", "huge.2"};
    const int big[] = {BIG, BIG2};
    for (int i = 0; i < 3; i++) {
        enqueue_type(q, types[i], NULL);
        if (i < 2)
            cli("EVAL \"redis.call('XADD', KEYS[1], '*', 'b', "
                "string.rep('x', %d), 'a', '0')\" 1 evq:huge",
                big[i]);
    }

    long peak = peak_rss_kib();
    assert_true(peak < 48 * 1024);
    for (int i = 0; i < 3; i++) { /* each held, unacked, till the end */
        assert_evq_ok(evq_dequeue(q, &held[i], 5000));
        assert_string_equal(evq_event_type(evq_msg_event(held[i])), types[i]);
    }
    evq_msg *m;
    assert_evq_err(evq_dequeue(q, &m, 500), EVQ_ETIMEDOUT);
    assert_peak_rss_within(peak, BIG / 1024 / 4);
    for (int i = 0; i < 3; i++)
        assert_evq_ok(evq_ack(held[i]));
    assert_oversize_dead_letter(q, BIG);
    assert_oversize_dead_letter(q, BIG2);
    evq_queue_close(q);
}

static atomic_int handled;

static void junk_goes_to_the_dead_letter_stream(void **state)
{
    (void)state;
    evq_queue *q, *dead;
    evq_events *e = evq_events_new();
    evq_worker *w;
    evq_msg *m;

    assert_evq_ok(evq_queue_open(&q, url, "junk", NULL));
    cli("XADD evq:junk '*' b '%s' a 0", "this is not json");
    cli("XADD evq:junk '*' b '%s' a 0",
        "{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"/s\"}");
    /* 2 MiB, past max_event_bytes */
    assert_int_equal(system("head -c 2097152 /dev/zero | tr '\\0' x > "
                            "/tmp/evq-redis-big.txt"),
                     0);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "redis-cli -p %s -x XADD evq:junk '*' a 0 b "
             "< /tmp/evq-redis-big.txt >/dev/null",
             port);
    assert_int_equal(system(cmd), 0);
    unlink("/tmp/evq-redis-big.txt");
    enqueue_type(q, "junk.good", NULL);

    evq_register_handler(e, "*", count_handler, &handled);
    atomic_store(&handled, 0);
    assert_evq_ok(evq_worker_start(&w, q, e, NULL));
    assert_true(eventually(at_least_one, &handled, 10000));
    assert_evq_ok(evq_worker_stop(w, 5000));
    evq_worker_free(w);
    assert_int_equal(atomic_load(&handled), 1);

    assert_evq_ok(evq_queue_open_dead(&dead, q));
    const char *reasons[] = {"invalid JSON", "no 'type'", "max_event_bytes"};
    for (int i = 0; i < 3; i++) {
        assert_evq_ok(evq_dequeue(dead, &m, 5000));
        const char *why = evq_event_attr(evq_msg_event(m), "evqerror");
        if (!strstr(why, reasons[i]))
            fail_msg("dead letter %d: '%s' lacks '%s'", i, why, reasons[i]);
        assert_string_equal(evq_event_type(evq_msg_event(m)),
                            "evq.undecodable");
        if (i == 2) { /* cut to fit, the original length kept */
            assert_string_equal(
                evq_event_attr(evq_msg_event(m), "evqtruncated"), "2097152");
            size_t len;
            assert_non_null(evq_event_binary(evq_msg_event(m), &len));
            assert_true(len > 0 && len < 1024 * 1024);
        }
        assert_evq_ok(evq_ack(m));
    }
    evq_queue_close(dead);
    evq_events_free(e);
    evq_queue_close(q);
}

/* The server's count of connected clients. */
static int clients(void)
{
    char cmd[256], line[256];
    int n = -1;
    snprintf(cmd, sizeof cmd, "redis-cli -p %s INFO clients", port);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    while (fgets(line, sizeof line, f))
        sscanf(line, "connected_clients:%d", &n);
    pclose(f);
    assert_true(n > 0);
    return n;
}

/* evq_queue_stats counts the dead-letter queue through the handle's own
 * connection: the server sees no new client. */
static void stats_open_no_connection(void **state)
{
    (void)state;
    evq_queue *q;
    struct evq_queue_stats st;
    assert_evq_ok(evq_queue_open(&q, url, "statsconn", NULL));
    enqueue_type(q, "stats.one", NULL); /* the handle is connected */
    cli("XADD evq:statsconn.dead '*' b junk-1 a 0");
    cli("XADD evq:statsconn.dead '*' b junk-2 a 0");
    cli("ZADD evq:statsconn.dead:delayed 1 x");
    int before = clients();
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(clients(), before);
    assert_int_equal(st.dead, 3);
    assert_int_equal(st.depth, 1);
    cli("DEL evq:statsconn.dead evq:statsconn.dead:delayed");
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.dead, 0);
    assert_evq_ok(evq_queue_delete(q));
    evq_queue_close(q);
}

static void bad_servers_and_credentials_are_clear_errors(void **state)
{
    (void)state;
    evq_queue *q;
    char bad[512];

    cli("ACL SETUSER %s", "alice on '>s3cret-pw' '~*' '+@all'");
    snprintf(bad, sizeof bad, "redis://alice:s3cret-pw@127.0.0.1:%s", port);
    assert_evq_ok(evq_queue_open(&q, bad, "acl", NULL));
    evq_queue_close(q);
    snprintf(bad, sizeof bad, "redis://alice:wrong-pw@127.0.0.1:%s", port);
    assert_evq_err(evq_queue_open(&q, bad, "acl", NULL), EVQ_EINVAL);
    assert_errmsg_has("WRONGPASS");
    assert_null(strstr(evq_errmsg(), "wrong-pw"));

    /* nothing listens on port 1 */
    assert_evq_err(evq_queue_open(&q, "redis://127.0.0.1:1", "q", NULL),
                   EVQ_ECONN);
    assert_errmsg_has("127.0.0.1:1");
    assert_evq_err(
        evq_queue_open(&q, "redis+unix:///nonexistent/redis.sock", "q", NULL),
        EVQ_ECONN);
    assert_evq_err(
        evq_queue_open(&q, "redis://127.0.0.1:6379/notanumber", "q", NULL),
        EVQ_EINVAL);
    url_with(bad, sizeof bad, "redis.prefetch=0");
    assert_evq_err(evq_queue_open(&q, bad, "q", NULL), EVQ_EINVAL);
    url_with(bad, sizeof bad, "connect_timeout_ms=0");
    assert_evq_err(evq_queue_open(&q, bad, "q", NULL), EVQ_EINVAL);

    /* a server that never answers: connect_timeout_ms (or its former
     * name) bounds the wait */
    int fds[2], p = silent_server(fds);
    snprintf(bad, sizeof bad, "redis://127.0.0.1:%d?connect_timeout_ms=1000",
             p);
    assert_open_times_out(bad, 1000);
    snprintf(bad, sizeof bad,
             "redis://127.0.0.1:%d?redis.connect_timeout_ms=1500", p);
    assert_open_times_out(bad, 1500);
    close(fds[0]);
    close(fds[1]);
}

static void a_dead_consumers_events_are_taken_over(void **state)
{
    (void)state;
    char vurl[512];
    evq_queue *q;
    evq_msg *m;
    url_with(vurl, sizeof vurl, "visibility_timeout_ms=500");
    assert_evq_ok(evq_queue_open(&q, vurl, "takeover", NULL));
    for (int i = 0; i < 5; i++) {
        evq_event *ev = evq_event_new("t", json_integer(i));
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
    }
    consume_one_and_die(vurl, "takeover");
    int seen = 0, second = 0;
    int64_t t0 = now_ms();
    while (seen < 5) {
        assert_evq_ok(evq_dequeue(q, &m, 10000));
        if (evq_event_attempt(evq_msg_event(m)) >= 2)
            second++;
        seen++;
        assert_evq_ok(evq_ack(m));
    }
    assert_true(second >= 1);
    assert_true(now_ms() - t0 >= 400);
    struct evq_queue_stats st;
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.in_flight, 0);
    evq_queue_close(q);
}

/* ---- batches, shared handles, read-ahead ------------------------------- */

static void enqueue_ints(evq_queue *q, int from, int n)
{
    evq_event *evs[64];
    for (int i = 0; i < n; i++)
        evs[i] = evq_event_new("t", json_integer(from + i));
    assert_evq_ok(
        evq_enqueue_batch(q, (const evq_event *const *)evs, (size_t)n));
    for (int i = 0; i < n; i++)
        evq_event_free(evs[i]);
}

/* A consumer that read a full batch has asked for the next one already;
 * closing it must give those entries back at once, not leave them pending
 * until the visibility timeout. */
static void close_hands_back_what_was_read_ahead(void **state)
{
    (void)state;
    char u[512];
    evq_queue *p, *c;
    evq_msg *m;
    url_with(u, sizeof u, "redis.prefetch=8&visibility_timeout_ms=600000");
    assert_evq_ok(evq_queue_open(&p, u, "ahead", NULL));
    for (int i = 0; i < 200; i += 50)
        enqueue_ints(p, i, 50);
    assert_evq_ok(evq_queue_open(&c, u, "ahead", NULL));
    assert_evq_ok(evq_dequeue(c, &m, 5000));
    assert_int_equal(json_integer_value(evq_event_data(evq_msg_event(m))), 0);
    assert_evq_ok(evq_ack(m));
    evq_queue_close(c);
    /* every other event is ready again, once, on its first attempt */
    bool seen[200] = {true};
    for (int i = 1; i < 200; i++) {
        assert_evq_ok(evq_dequeue(p, &m, 5000));
        assert_int_equal(evq_event_attempt(evq_msg_event(m)), 1);
        json_int_t v = json_integer_value(evq_event_data(evq_msg_event(m)));
        assert_true(v > 0 && v < 200 && !seen[v]);
        seen[v] = true;
        assert_evq_ok(evq_ack(m));
    }
    assert_evq_err(evq_dequeue(p, &m, 0), EVQ_ETIMEDOUT);
    struct evq_queue_stats st;
    assert_evq_ok(evq_queue_stats(p, &st));
    assert_int_equal(st.depth + st.in_flight, 0);
    evq_queue_close(p);
}

struct sharer {
    evq_queue *q;
    int from;
};

static void *share_producer(void *arg)
{
    struct sharer *s = arg;
    for (int i = 0; i < 2000; i += 50)
        enqueue_ints(s->q, s->from + i, 50);
    return NULL;
}

/* Threads sharing one handle enqueue in parallel over its connections
 * (one is forced to be shared by two of them); every batch arrives whole
 * and in its own order. */
static void threads_sharing_a_handle_enqueue_in_parallel(void **state)
{
    (void)state;
    for (int atomic = 0; atomic < 2; atomic++) {
        char u[512], name[32];
        evq_queue *q;
        evq_msg *m;
        url_with(u, sizeof u,
                 atomic ? "redis.connections=3&redis.atomic_batches=true"
                        : "redis.connections=3");
        snprintf(name, sizeof name, "shared%d", atomic);
        assert_evq_ok(evq_queue_open(&q, u, name, NULL));
        pthread_t t[4];
        struct sharer s[4];
        for (int i = 0; i < 4; i++) {
            s[i] = (struct sharer){q, i * 10000};
            assert_int_equal(pthread_create(&t[i], NULL, share_producer, &s[i]),
                             0);
        }
        for (int i = 0; i < 4; i++)
            pthread_join(t[i], NULL);
        int next[4] = {0, 0, 0, 0};
        for (int i = 0; i < 8000; i++) {
            assert_evq_ok(evq_dequeue(q, &m, 5000));
            json_int_t v = json_integer_value(evq_event_data(evq_msg_event(m)));
            int who = (int)(v / 10000);
            assert_true(who >= 0 && who < 4);
            assert_int_equal(v % 10000, next[who]); /* each thread in order */
            next[who]++;
            assert_evq_ok(evq_ack(m));
        }
        assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ETIMEDOUT);
        evq_queue_close(q);
    }
}

/* ---- the server killed and restarted ----------------------------------- */

static void restart_server(void *arg)
{
    (void)arg;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "kill -9 $(cat %s/redis.pid) && sleep 0.3 && "
             "redis-server --port %s --bind 127.0.0.1 --dir %s --save '' "
             "--appendonly yes --appendfsync always --daemonize yes "
             "--pidfile %s/redis.pid --logfile %s/redis.log && "
             "for i in $(seq 100); do redis-cli -p %s ping 2>/dev/null | "
             "grep -q PONG && exit 0; sleep 0.05; done; exit 1",
             sdir, port, sdir, sdir, sdir, port);
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
    if (argc != 4) {
        fprintf(stderr, "usage: test_redis URL PORT SERVICE_DIR\n");
        return 2;
    }
    url = argv[1];
    port = argv[2];
    sdir = argv[3];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(an_oversize_entry_is_dead_lettered_unread),
        cmocka_unit_test(events_written_by_redis_cli_are_read),
        cmocka_unit_test(junk_goes_to_the_dead_letter_stream),
        cmocka_unit_test(stats_open_no_connection),
        cmocka_unit_test(bad_servers_and_credentials_are_clear_errors),
        cmocka_unit_test(a_dead_consumers_events_are_taken_over),
        cmocka_unit_test(close_hands_back_what_was_read_ahead),
        cmocka_unit_test(threads_sharing_a_handle_enqueue_in_parallel),
        cmocka_unit_test(a_server_restart_loses_no_accepted_event),
        cmocka_unit_test(
            an_async_stream_across_a_restart_loses_nothing_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
