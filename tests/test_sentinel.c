/* redis+sentinel:// against a redis-server master, a replica and three
 * redis-sentinel (scripts/services.sh run sentinel): the master is found
 * through the sentinels; bad URLs and unknown masters are clear errors;
 * and the master SIGKILLed while async producers (redis.wait_replicas=1)
 * and a worker stream 20 000 events: none reported stored is lost, the
 * worker goes on by itself after the failover, and the time it took is
 * printed.
 *   test_sentinel SENTINEL_URL SENTINEL_DIR */
#include "internal.h"
#include "outage.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *url;  /* redis+sentinel://.../evqmaster */
static const char *sdir; /* master/redis.pid, master/port, master-start.sh */

static void with(char *out, size_t cap, const char *params)
{
    snprintf(out, cap, "%s?%s", url, params);
}

static void the_master_is_found_through_the_sentinels(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "found", NULL));
    evq_event *ev = evq_event_new("sentinel.found", json_integer(7));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(ev));
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    /* with WAIT: the replica has it before the enqueue returns */
    char u[512];
    with(u, sizeof u, "redis.wait_replicas=1");
    evq_queue *w;
    assert_evq_ok(evq_queue_open(&w, u, "found", NULL));
    ev = evq_event_new("sentinel.waited", json_integer(8));
    assert_evq_ok(evq_enqueue(w, ev));
    evq_event_free(ev);
    /* more replicas than there are: the batch fails, saying why */
    with(u, sizeof u, "redis.wait_replicas=2&redis.wait_timeout_ms=200");
    evq_queue *w2;
    assert_evq_ok(evq_queue_open(&w2, u, "found", NULL));
    ev = evq_event_new("sentinel.unwaited", json_integer(9));
    assert_evq_err(evq_enqueue(w2, ev), EVQ_ETIMEDOUT);
    assert_errmsg_has("1 of redis.wait_replicas=2");
    evq_event_free(ev);
    evq_queue_close(w2);
    evq_queue_close(w);
    evq_queue_close(q);
}

static void bad_urls_and_masters_are_clear_errors(void **state)
{
    (void)state;
    evq_queue *q;
    char u[512];
    assert_evq_err(evq_queue_open(&q, "redis+sentinel://127.0.0.1:1", "q",
                                  NULL),
                   EVQ_EINVAL);
    assert_errmsg_has("name the sentinels and the master");
    assert_evq_err(evq_queue_open(&q, "redis+sentinel://127.0.0.1:1/m/x",
                                  "q", NULL),
                   EVQ_EINVAL);
    assert_errmsg_has("not a database number");
    /* no sentinel there */
    assert_evq_err(evq_queue_open(&q,
                                  "redis+sentinel://127.0.0.1:1,127.0.0.1:2/"
                                  "m?connect_timeout_ms=500",
                                  "q", NULL),
                   EVQ_ECONN);
    assert_errmsg_has("no sentinel gave the master of 'm'");
    /* sentinels that know no such master */
    const char *slash = strrchr(url, '/');
    snprintf(u, sizeof u, "%.*s/nosuchmaster", (int)(slash - url), url);
    assert_evq_err(evq_queue_open(&q, u, "q", NULL), EVQ_ECONN);
    assert_errmsg_has("no master of that name");
    /* a password is not printed */
    snprintf(u, sizeof u, "redis+sentinel://:hunter2@%s",
             url + strlen("redis+sentinel://"));
    assert_true(evq_queue_open(&q, u, "q", NULL) != 0);
    assert_non_null(strstr(evq_errmsg(), "AUTH"));
    assert_null(strstr(evq_errmsg(), "hunter2"));
}

static int64_t failover_ms;

/* The master's port, as the sentinels name it now (0: none answers). */
static int master_port(void)
{
    char cmd[512], out[64] = "";
    const char *p = url + strlen("redis+sentinel://");
    int sport = atoi(strchr(p, ':') + 1);
    snprintf(cmd, sizeof cmd,
             "redis-cli -p %d SENTINEL get-master-addr-by-name evqmaster "
             "2>/dev/null | tail -1",
             sport);
    FILE *f = popen(cmd, "r");
    if (!f)
        return 0;
    if (!fgets(out, sizeof out, f))
        out[0] = '\0';
    pclose(f);
    return atoi(out);
}

/* Kills the master; once the sentinels name another, starts the old one
 * again (they make it a replica of the new master, so WAIT 1 can be
 * answered again). */
static const char *killer_failed; /* what went wrong there, if anything */

static void *kill_the_master(void *arg)
{
    (void)arg;
    char cmd[1024];
    int old = master_port();
    if (old <= 0) {
        killer_failed = "the sentinels named no master";
        return NULL;
    }
    int64_t t0 = now_ms();
    snprintf(cmd, sizeof cmd, "kill -9 $(cat %s/master/redis.pid)", sdir);
    if (system(cmd) != 0) {
        killer_failed = "the master could not be killed";
        return NULL;
    }
    int now = old;
    while ((now = master_port()) == old || now == 0) {
        if (now_ms() - t0 >= 60000) {
            killer_failed = "no failover within 60 s";
            return NULL;
        }
        struct timespec pause = {0, 50 * 1000000};
        nanosleep(&pause, NULL);
    }
    failover_ms = now_ms() - t0;
    snprintf(cmd, sizeof cmd, "sh %s/master-start.sh", sdir);
    if (system(cmd) != 0) {
        killer_failed = "the old master did not start again";
        return NULL;
    }
    printf("failover: the sentinels made the replica (port %d) master %.1f "
           "s after the master (port %d) was killed\n",
           now, (double)failover_ms / 1000, old);
    return NULL;
}

static bool all_stored(void *arg)
{
    (void)arg;
    for (int i = 0; i < OUTAGE_EVENTS; i++)
        if (!atomic_load(&outage_acked[i]))
            return false;
    return true;
}

/* Async producers (redis.wait_replicas=1) and a worker stream 20 000
 * events; the master is SIGKILLed mid-stream.  Every event reported
 * stored is processed; the failed ones are sent again (as an application
 * would) until all are stored, and the worker, untouched, processes them
 * on the new master. */
static void a_killed_master_loses_nothing_reported_stored(void **state)
{
    (void)state;
    char u[512];
    with(u, sizeof u, "redis.wait_replicas=1");
    struct outage_producer p = {0};
    evq_events *e = evq_events_new();
    evq_worker_opts o;
    evq_worker *w;
    pthread_t prod, killer;
    memset(outage_seen, 0, sizeof outage_seen);
    memset(outage_acked, 0, sizeof outage_acked);
    memset(outage_reports, 0, sizeof outage_reports);
    outage_log_reset();
    evq_set_log(outage_log, NULL);
    assert_evq_ok(evq_queue_open(&p.q, u, "failover", NULL));
    evq_worker_opts_init(&o);
    o.concurrency = 2;
    o.log = outage_log;
    evq_register_handler(e, "outage", outage_handler, NULL);
    assert_evq_ok(evq_worker_start(&w, p.q, e, &o));
    int64_t t0 = now_ms();
    pthread_create(&prod, NULL, outage_produce_async, &p);
    struct timespec pause = {0, 300 * 1000000};
    nanosleep(&pause, NULL);
    int before = 0;
    for (int i = 0; i < OUTAGE_EVENTS; i++)
        before += atomic_load(&outage_acked[i]);
    int64_t killed = now_ms();
    pthread_create(&killer, NULL, kill_the_master, NULL);
    pthread_join(prod, NULL);
    pthread_join(killer, NULL);
    if (killer_failed)
        fail_msg("failover: %s", killer_failed);
    int first = 0;
    for (int i = 0; i < OUTAGE_EVENTS; i++)
        first += atomic_load(&outage_acked[i]);
    assert_true(before < OUTAGE_EVENTS); /* the kill came mid-stream */
    /* what failed, again, until everything is stored */
    int rounds = 0;
    int64_t stored_again = 0;
    while (!all_stored(NULL)) {
        assert_true(now_ms() - t0 < 120000);
        rounds++;
        for (intptr_t i = 0; i < OUTAGE_EVENTS; i++) {
            if (atomic_load(&outage_acked[i]))
                continue;
            evq_event *ev =
                evq_event_new("outage", json_integer((json_int_t)i));
            if (evq_enqueue_async(p.q, ev, 0, outage_enqueued, (void *)i) != 0)
                nanosleep(&pause, NULL);
            evq_event_free(ev);
        }
        evq_flush(p.q, -1);
        if (!stored_again && all_stored(NULL))
            stored_again = now_ms();
        if (!all_stored(NULL))
            nanosleep(&pause, NULL);
    }
    bool ok = eventually(outage_all_acked_seen, NULL, 60000);
    int64_t all_seen = now_ms();
    assert_evq_ok(evq_worker_stop(w, 10000));
    int seen = 0;
    for (int i = 0; i < OUTAGE_EVENTS; i++)
        seen += atomic_load(&outage_seen[i]);
    printf("failover: %d of %d events reported stored before the kill, %d "
           "in the first pass; the rest stored in %d more pass(es), all by "
           "%.1f s after the kill; all %d processed by %.1f s after it (the "
           "worker was not touched)\n",
           before, OUTAGE_EVENTS, first, rounds,
           stored_again ? (double)(stored_again - killed) / 1000 : 0.0, seen,
           (double)(all_seen - killed) / 1000);
    printf("failover: %d log lines (%d of a lost connection, %d of one "
           "back)\n",
           atomic_load(&outage_lines), atomic_load(&outage_lost),
           atomic_load(&outage_back));
    assert_true(ok); /* none reported stored was lost */
    assert_int_equal(seen, OUTAGE_EVENTS);
    assert_true(failover_ms > 0);
    assert_true(atomic_load(&outage_lines) <= 200);
    evq_set_log(NULL, NULL);
    evq_worker_free(w);
    evq_events_free(e);
    evq_queue_close(p.q);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: test_sentinel SENTINEL_URL SENTINEL_DIR\n");
        return 2;
    }
    url = argv[1];
    sdir = argv[2];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(the_master_is_found_through_the_sentinels),
        cmocka_unit_test(bad_urls_and_masters_are_clear_errors),
        cmocka_unit_test(a_killed_master_loses_nothing_reported_stored),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
