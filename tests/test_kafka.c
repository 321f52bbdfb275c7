/* The kafka:// backend's own promises, against the test broker
 * (tests/kafka_broker.c, librdkafka's mock cluster of three brokers) that
 * scripts/services.sh started:
 *
 *   test_kafka BOOTSTRAP SERVICE_DIR
 *
 * kcat reads what evq produces and produces what evq reads (structured and
 * binary mode); junk goes to the dead letters; events of one partition key
 * are handled in order; no broker is a clear error in time; rdkafka.ssl.*
 * reach librdkafka (a wrong CA fails the handshake); a bad librdkafka
 * property is refused with librdkafka's words; a broker taken down and
 * brought back while 20 000 events flow loses none that was accepted. */
#include "outage.h"
#include "testutil.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

static const char *boot, *sdir;
static char url[1024];

/* The suite's consumers use a short session (the mock keeps a member that
 * left its group until its session times out), and leave topic creation to
 * the broker (the mock answers no Admin API request: each open would wait
 * for it); a_missing_topic_is_created_or_left_to_the_broker tries both. */
static void url_with(char *out, size_t cap, const char *params)
{
    snprintf(out, cap,
             "kafka://%s?rdkafka.session.timeout.ms=6000&"
             "kafka.create_topics=false%s%s",
             boot, params && params[0] ? "&" : "", params ? params : "");
}

/* Runs a shell command with the bootstrap list as $B; asserts it worked. */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[8192];
    int n = snprintf(cmd, sizeof cmd, "B='%s'; ", boot);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd + n, sizeof cmd - (size_t)n, fmt, ap);
    va_end(ap);
    assert_int_equal(system(cmd), 0);
}

/* ---- interop with kcat ----------------------------------------------------
 */

static void kcat_reads_what_evq_produces(void **state)
{
    (void)state;
    evq_queue *q;
    assert_evq_ok(evq_queue_open(&q, url, "kcat-out", NULL));
    evq_event *ev = evq_event_new("order.placed", json_pack("{s:i}", "n", 7));
    assert_evq_ok(evq_event_set_attr(ev, "partitionkey", "customer-1"));
    assert_evq_ok(evq_enqueue(q, ev));
    char out[512];
    snprintf(out, sizeof out, "%s/kcat-out.txt", sdir);
    sh("kcat -C -b \"$B\" -t kcat-out -c 1 -e -q -f '%%k|%%h|%%s\\n' > %s",
       out);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    char line[4096] = "";
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    assert_non_null(strstr(line, "customer-1|")); /* the key */
    assert_non_null(strstr(line, "content-type=application/cloudevents+json"));
    const char *body = strrchr(line, '|') + 1;
    json_error_t jerr;
    json_t *j = json_loads(body, JSON_DISABLE_EOF_CHECK, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "type")),
                        "order.placed");
    assert_string_equal(json_string_value(json_object_get(j, "id")),
                        evq_event_id(ev));
    json_decref(j);
    evq_event_free(ev);
    evq_queue_close(q);
}

static void evq_reads_what_kcat_produces(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "kcat-in", NULL));
    /* structured mode */
    sh("printf '%%s' '{\"specversion\":\"1.0\",\"id\":\"k-1\",\"source\":"
       "\"/kcat\",\"type\":\"user.created\",\"data\":{\"userId\":\"123\"}}' | "
       "kcat -P -b \"$B\" -t kcat-in -p 0 "
       "-H content-type=application/cloudevents+json");
    assert_evq_ok(evq_dequeue(q, &m, 20000));
    const evq_event *ev = evq_msg_event(m);
    assert_string_equal(evq_event_id(ev), "k-1");
    assert_string_equal(
        json_string_value(json_object_get(evq_event_data(ev), "userId")),
        "123");
    assert_evq_ok(evq_ack(m));
    /* binary mode: attributes as ce_* headers, the data as the value */
    sh("printf '%%s' '{\"userId\":\"456\"}' | kcat -P -b \"$B\" -t kcat-in "
       "-p 0 -H ce_specversion=1.0 -H ce_id=k-2 -H ce_source=/kcat "
       "-H ce_type=user.deleted -H content-type=application/json");
    assert_evq_ok(evq_dequeue(q, &m, 20000));
    ev = evq_msg_event(m);
    assert_string_equal(evq_event_id(ev), "k-2");
    assert_string_equal(evq_event_type(ev), "user.deleted");
    assert_string_equal(evq_event_source(ev), "/kcat");
    assert_string_equal(
        json_string_value(json_object_get(evq_event_data(ev), "userId")),
        "456");
    assert_evq_ok(evq_ack(m));
    evq_queue_close(q);
}

/* Reads the first message of `topic` with kcat as "headers|value". */
static void kcat_first(const char *topic, char *line, size_t cap)
{
    char out[512];
    snprintf(out, sizeof out, "%s/%s.txt", sdir, topic);
    sh("kcat -C -b \"$B\" -t %s -c 1 -e -q -f '%%h|%%s\\n' > %s", topic, out);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    line[0] = '\0';
    assert_non_null(fgets(line, (int)cap, f));
    fclose(f);
}

/* kafka.ce_mode=binary: the attributes as ce_* headers, the data alone as
 * the value; evq reads it back as the same event. */
static void evq_writes_binary_mode(void **state)
{
    (void)state;
    char u[1024], line[4096], want[256];
    evq_queue *q;
    evq_msg *m;
    url_with(u, sizeof u, "kafka.ce_mode=binary");
    assert_evq_ok(evq_queue_open(&q, u, "kbin-out", NULL));
    evq_event *ev = evq_event_new("order.shipped", json_pack("{s:i}", "n", 7));
    assert_evq_ok(evq_event_set_attr(ev, "subject", "order-7"));
    assert_evq_ok(evq_enqueue(q, ev));
    kcat_first("kbin-out", line, sizeof line);
    const char *expect[] = {"ce_specversion=1.0",
                            "ce_type=order.shipped",
                            "ce_subject=order-7",
                            "ce_source=",
                            "content-type=application/json",
                            NULL};
    for (int i = 0; expect[i]; i++)
        assert_non_null(strstr(line, expect[i]));
    snprintf(want, sizeof want, "ce_id=%s", evq_event_id(ev));
    assert_non_null(strstr(line, want));
    assert_string_equal(strrchr(line, '|') + 1, "{\"n\":7}\n");

    assert_evq_ok(evq_dequeue(q, &m, 20000));
    const evq_event *got = evq_msg_event(m);
    assert_string_equal(evq_event_id(got), evq_event_id(ev));
    assert_string_equal(evq_event_type(got), "order.shipped");
    assert_string_equal(evq_event_attr(got, "subject"), "order-7");
    assert_string_equal(evq_event_source(got), evq_event_source(ev));
    assert_int_equal(
        json_integer_value(json_object_get(evq_event_data(got), "n")), 7);
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(q);
}

/* format=msgpack: structured mode says so in its content-type. */
static void msgpack_messages_say_so(void **state)
{
    (void)state;
    char u[1024], line[4096];
    evq_queue *q;
    evq_msg *m;
    url_with(u, sizeof u, "format=msgpack");
    assert_evq_ok(evq_queue_open(&q, u, "kmsgpack", NULL));
    evq_event *ev = evq_event_new("packed", json_integer(3));
    assert_evq_ok(evq_enqueue(q, ev));
    kcat_first("kmsgpack", line, sizeof line);
    assert_non_null(
        strstr(line, "content-type=application/cloudevents+msgpack"));
    assert_evq_ok(evq_dequeue(q, &m, 20000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(ev));
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(q);
}

/* Sends a command to the test broker and waits for its answer. */
static void broker_command(const char *cmd)
{
    char ctl[512], log[512], line[600];
    snprintf(ctl, sizeof ctl, "%s/kafka.ctl", sdir);
    snprintf(log, sizeof log, "%s/kafka.log", sdir);
    FILE *f = fopen(ctl, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", cmd);
    fclose(f);
    for (int i = 0; i < 200; i++) {
        FILE *l = fopen(log, "r");
        while (l && fgets(line, sizeof line, l)) {
            line[strcspn(line, "\n")] = '\0';
            if (strncmp(line, "ok ", 3) == 0 && strcmp(line + 3, cmd) == 0) {
                fclose(l);
                return;
            }
            if (strncmp(line, "error ", 6) == 0 &&
                strncmp(line + 6, cmd, strlen(cmd)) == 0)
                fail_msg("broker: %s", line);
        }
        if (l)
            fclose(l);
        struct timespec t = {0, 50 * 1000000};
        nanosleep(&t, NULL);
    }
    fail_msg("the test broker did not answer '%s'", cmd);
}

#define PAUSE_EVENTS 40
#define PAUSE_MAX    4

/* Counts what comes out without acking, until nothing more comes within
 * 1.5 s (the first may wait longer: the consumer joins its group). */
static int take_all(evq_queue *q, evq_msg **out, int have, int *next)
{
    evq_msg *m;
    int wait = *next == 0 ? 20000 : 1500;
    while (have < PAUSE_EVENTS && evq_dequeue(q, &m, wait) == 0) {
        wait = 1500;
        /* one partition, one reader: in enqueue order */
        assert_int_equal(json_integer_value(evq_event_data(evq_msg_event(m))),
                         *next);
        (*next)++;
        out[have++] = m;
    }
    return have;
}

/* kafka.max_in_flight: a partition with that many events out is paused
 * and gives no more until half of them finish; then it goes on, in
 * order, to the last. */
static void a_full_partition_waits_for_finished_events(void **state)
{
    (void)state;
    char u[1024];
    evq_queue *q;
    evq_msg *out[PAUSE_EVENTS];
    broker_command("topic kpause 1 1");
    url_with(u, sizeof u, "kafka.max_in_flight=4");
    assert_evq_ok(evq_queue_open(&q, u, "kpause", NULL));
    evq_event *evs[PAUSE_EVENTS];
    for (int i = 0; i < PAUSE_EVENTS; i++)
        evs[i] = evq_event_new("p", json_integer(i));
    assert_evq_ok(
        evq_enqueue_batch(q, (const evq_event *const *)evs, PAUSE_EVENTS));
    for (int i = 0; i < PAUSE_EVENTS; i++)
        evq_event_free(evs[i]);

    int next = 0, out_n = take_all(q, out, 0, &next);
    assert_int_equal(out_n, PAUSE_MAX);
    struct evq_queue_stats st;
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.in_flight, PAUSE_MAX);
    /* one finished is not enough room ... */
    assert_evq_ok(evq_ack(out[0]));
    int more = take_all(q, out, out_n, &next);
    assert_int_equal(more, out_n);
    /* ... half is */
    assert_evq_ok(evq_ack(out[1]));
    assert_evq_ok(evq_ack(out[2]));
    out_n = take_all(q, out, out_n, &next);
    assert_int_equal(out_n, 2 * PAUSE_MAX - 1);
    for (int i = 3; i < out_n; i++)
        assert_evq_ok(evq_ack(out[i]));
    /* and so on to the last */
    while (next < PAUSE_EVENTS) {
        int before = next;
        int got = take_all(q, out, 0, &next);
        assert_true(got > 0 && got <= PAUSE_MAX);
        for (int i = 0; i < got; i++)
            assert_evq_ok(evq_ack(out[i]));
        assert_int_equal(next, before + got);
    }
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.in_flight, 0);
    evq_queue_close(q);
}

static atomic_int handled;

/* The good event handled and both junk messages in the dead-letter topic
 * (they may sit in another partition than the good one, read later). */
static bool junk_settled(void *arg)
{
    struct evq_queue_stats st;
    return atomic_load(&handled) >= 1 && evq_queue_stats(arg, &st) == 0 &&
           st.dead >= 2;
}

static void junk_goes_to_the_dead_letters(void **state)
{
    (void)state;
    evq_queue *q, *dead;
    evq_events *e = evq_events_new();
    evq_worker *w;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "kjunk", NULL));
    sh("printf 'not json at all' | kcat -P -b \"$B\" -t kjunk -p 0");
    sh("printf '%%s' '{\"specversion\":\"1.0\",\"id\":\"x\"}' | "
       "kcat -P -b \"$B\" -t kjunk -p 0");
    enqueue_type(q, "good", "p0");
    atomic_store(&handled, 0);
    evq_register_handler(e, "good", count_handler, &handled);
    assert_evq_ok(evq_worker_start(&w, q, e, NULL));
    assert_true(eventually(junk_settled, q, 60000));
    assert_evq_ok(evq_worker_stop(w, 5000));
    evq_worker_free(w);
    evq_events_free(e);
    assert_evq_ok(evq_queue_open_dead(&dead, q));
    for (int i = 0; i < 2; i++) {
        assert_evq_ok(evq_dequeue(dead, &m, 20000));
        assert_string_equal(evq_event_type(evq_msg_event(m)),
                            "evq.undecodable");
        assert_evq_ok(evq_ack(m));
    }
    evq_queue_close(dead);
    evq_queue_close(q);
}

/* A message past max_event_bytes is dead-lettered, cut, with its size
 * kept; one past what librdkafka may read (receive.message.max.bytes) holds
 * its partition back, and dequeue says so instead of waiting silently. */
static void oversize_messages_are_clear(void **state)
{
    (void)state;
    char u[1200];
    evq_queue *q;
    evq_msg *m;
    url_with(u, sizeof u, "max_event_bytes=65536");
    assert_evq_ok(evq_queue_open(&q, u, "kbig", NULL));
    sh("head -c 2097152 /dev/zero | tr '\\0' x | kcat -P -b \"$B\" -t kbig "
       "-p 0 -X message.max.bytes=10000000");
    enqueue_type(q, "kbig.ok", "p0");
    assert_evq_ok(evq_dequeue(q, &m, 30000));
    assert_string_equal(evq_event_type(evq_msg_event(m)), "kbig.ok");
    assert_evq_ok(evq_ack(m));
    /* the big one is dead-lettered by a dequeue that meets it */
    struct evq_queue_stats st = {0};
    for (int i = 0; i < 20 && st.dead_lettered == 0; i++) {
        assert_evq_err(evq_dequeue(q, &m, 1000), EVQ_ETIMEDOUT);
        assert_evq_ok(evq_queue_stats(q, &st));
    }
    assert_int_equal(st.dead_lettered, 1);
    assert_oversize_dead_letter(q, 2097152);
    evq_queue_close(q);

    url_with(u, sizeof u,
             "rdkafka.receive.message.max.bytes=1049088&"
             "rdkafka.fetch.max.bytes=1048576");
    assert_evq_ok(evq_queue_open(&q, u, "khuge", NULL));
    sh("head -c 3000000 /dev/zero | tr '\\0' x | kcat -P -b \"$B\" -t khuge "
       "-p 0 -X message.max.bytes=10000000");
    assert_evq_err(evq_dequeue(q, &m, 30000), EVQ_ETOOBIG);
    assert_errmsg_has("receive.message.max.bytes");
    assert_errmsg_has("khuge");
    evq_queue_close(q);
}

/* ---- ordering ---------------------------------------------------------------
 */

#define ORDER_KEYS    4
#define ORDER_PER_KEY 250

static int order_last[ORDER_KEYS];
static atomic_int order_errors, order_done;
static pthread_mutex_t order_mu = PTHREAD_MUTEX_INITIALIZER;

static int order_handler(const evq_event *ev, void *arg)
{
    (void)arg;
    json_t *d = evq_event_data(ev);
    int k = (int)json_integer_value(json_object_get(d, "k"));
    int i = (int)json_integer_value(json_object_get(d, "i"));
    pthread_mutex_lock(&order_mu);
    if (k < 0 || k >= ORDER_KEYS || i != order_last[k] + 1)
        atomic_fetch_add(&order_errors, 1);
    else
        order_last[k] = i;
    pthread_mutex_unlock(&order_mu);
    atomic_fetch_add(&order_done, 1);
    return 0;
}

static bool order_all_done(void *arg)
{
    (void)arg;
    return atomic_load(&order_done) >= ORDER_KEYS * ORDER_PER_KEY;
}

static atomic_int key_running[ORDER_KEYS], key_overlaps;

/* Slow enough that another thread would take the next event of the key
 * meanwhile, were it allowed to. */
static int order_slow_handler(const evq_event *ev, void *arg)
{
    int k = (int)json_integer_value(json_object_get(evq_event_data(ev), "k"));
    if (k >= 0 && k < ORDER_KEYS && atomic_fetch_add(&key_running[k], 1) != 0)
        atomic_fetch_add(&key_overlaps, 1);
    struct timespec pause = {0, 200 * 1000};
    nanosleep(&pause, NULL);
    if (k >= 0 && k < ORDER_KEYS)
        atomic_fetch_sub(&key_running[k], 1);
    return order_handler(ev, arg);
}

/* Events of one partition key are handled in the order they were enqueued:
 * by a single-threaded worker, and with kafka.ordering=key by a worker of
 * four threads, which then never runs two events of one key at once. */
static void one_keys_events_keep_their_order(void **state)
{
    (void)state;
    for (int by_key = 0; by_key < 2; by_key++) {
        evq_queue *q;
        evq_events *e = evq_events_new();
        evq_worker *w;
        evq_worker_opts o;
        char u[1024];
        url_with(u, sizeof u, by_key ? "kafka.ordering=key" : NULL);
        assert_evq_ok(
            evq_queue_open(&q, u, by_key ? "korder-key" : "korder", NULL));
        for (int i = 0; i < ORDER_PER_KEY; i++)
            for (int k = 0; k < ORDER_KEYS; k++) {
                char key[16];
                snprintf(key, sizeof key, "key-%d", k);
                evq_event *ev =
                    evq_event_new("o", json_pack("{s:i,s:i}", "k", k, "i", i));
                assert_evq_ok(evq_event_set_attr(ev, "partitionkey", key));
                assert_evq_ok(evq_enqueue(q, ev));
                evq_event_free(ev);
            }
        for (int k = 0; k < ORDER_KEYS; k++)
            order_last[k] = -1;
        atomic_store(&order_done, 0);
        evq_worker_opts_init(&o);
        if (by_key) {
            o.concurrency = 4;
            o.prefetch = 4;
        }
        evq_register_handler(e, "o",
                             by_key ? order_slow_handler : order_handler, NULL);
        assert_evq_ok(evq_worker_start(&w, q, e, &o));
        assert_true(eventually(order_all_done, NULL, 60000));
        assert_evq_ok(evq_worker_stop(w, 5000));
        assert_int_equal(atomic_load(&order_errors), 0);
        assert_int_equal(atomic_load(&key_overlaps), 0);
        evq_worker_free(w);
        evq_events_free(e);
        evq_queue_close(q);
    }
}

/* ---- topic creation --------------------------------------------------------
 */

/* With the Admin API the open asks the broker to create the topic; the test
 * broker cannot (no controller), so the open gives up after
 * kafka.create_timeout_ms and the broker's auto-creation makes the topic on
 * first use: events flow either way. */
static void a_missing_topic_is_created_or_left_to_the_broker(void **state)
{
    (void)state;
    for (int create = 1; create >= 0; create--) {
        char u[1024], name[32];
        evq_queue *q;
        evq_msg *m;
        snprintf(u, sizeof u,
                 "kafka://%s?rdkafka.session.timeout.ms=6000&"
                 "kafka.create_topics=%s&kafka.create_timeout_ms=1000",
                 boot, create ? "true" : "false");
        snprintf(name, sizeof name, "kcreate%d", create);
        int64_t t0 = now_ms();
        assert_evq_ok(evq_queue_open(&q, u, name, NULL));
        int64_t took = now_ms() - t0;
        printf("kafka: open with create_topics=%s took %lld ms\n",
               create ? "true" : "false", (long long)took);
        assert_true(took < 8000); /* bounded by the creation timeout */
        evq_event *ev = evq_event_new("c", json_integer(create));
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
        assert_evq_ok(evq_dequeue(q, &m, 30000));
        assert_int_equal(json_integer_value(evq_event_data(evq_msg_event(m))),
                         create);
        assert_evq_ok(evq_ack(m));
        evq_queue_close(q);
    }
}

/* ---- bad input --------------------------------------------------------------
 */

static void bad_brokers_and_properties_are_clear_errors(void **state)
{
    (void)state;
    evq_queue *q;
    char bad[512];
    /* a property librdkafka does not know: its own words come back */
    url_with(bad, sizeof bad, "rdkafka.no.such.property=1");
    assert_evq_err(evq_queue_open(&q, bad, "kbad", NULL), EVQ_EINVAL);
    assert_errmsg_has("No such configuration property");
    url_with(bad, sizeof bad, "rdkafka.acks=maybe");
    assert_evq_err(evq_queue_open(&q, bad, "kbad", NULL), EVQ_EINVAL);
    assert_errmsg_has("acks");
    /* a queue name that is no topic name */
    assert_evq_err(evq_queue_open(&q, url, "two words", NULL), EVQ_EINVAL);
    /* no broker: open, which creates the topic, fails after
     * connect_timeout_ms (not a hang, nor kafka.timeout_ms of 30 s) */
    snprintf(bad, sizeof bad, "kafka://127.0.0.1:1?connect_timeout_ms=1500");
    int64_t t0 = now_ms();
    assert_evq_err(evq_queue_open(&q, bad, "knobroker", NULL), EVQ_ECONN);
    assert_true(now_ms() - t0 < 20000);
    assert_errmsg_has("no broker of 127.0.0.1:1 reachable");
    assert_errmsg_has("Connection refused"); /* the broker's last error */
    /* a broker that never answers the connection */
    int fds[2], sp = silent_server(fds);
    snprintf(bad, sizeof bad, "kafka://127.0.0.1:%d?connect_timeout_ms=2000",
             sp);
    assert_open_times_out(bad, 2000);
    close(fds[0]);
    close(fds[1]);
    /* ...and without a topic to create, open needs no broker: the enqueue
     * fails after connect_timeout_ms */
    snprintf(bad, sizeof bad,
             "kafka://127.0.0.1:1?connect_timeout_ms=1500&"
             "kafka.create_topics=false");
    assert_evq_ok(evq_queue_open(&q, bad, "knobroker", NULL));
    evq_event *ev = evq_event_new("x", NULL);
    t0 = now_ms();
    assert_evq_err(evq_enqueue(q, ev), EVQ_ECONN);
    assert_true(now_ms() - t0 < 20000);
    assert_errmsg_has("connect_timeout_ms");
    assert_errmsg_has("Connection refused");
    evq_event_free(ev);
    evq_queue_close(q);
}

/* Every broker down for longer than connect_timeout_ms: an enqueue fails
 * with EVQ_ECONN once that has passed (kafka.timeout_ms is a minute), and
 * when the brokers are back the same handle enqueues again, and everything
 * that was accepted is there to read. */
static void an_enqueue_with_no_broker_fails_after_the_connect_timeout(
    void **state)
{
    (void)state;
    char u[1024];
    evq_queue *q;
    evq_msg *m;
    url_with(u, sizeof u, "connect_timeout_ms=2000&kafka.timeout_ms=60000");
    outage_log_reset();
    evq_set_log(outage_log, NULL); /* the outage is told, once, and its end */
    assert_evq_ok(evq_queue_open(&q, u, "kcutoff", NULL));
    evq_event *ev = evq_event_new("x", json_integer(1));
    assert_evq_ok(evq_enqueue(q, ev));
    broker_command("down 1"); /* the three brokers of the test cluster */
    broker_command("down 2");
    broker_command("down 3");
    /* (a broker may take one more on the connection it is closing) */
    int64_t t0 = now_ms();
    int rc = 0;
    for (int i = 0; i < 10 && rc == 0; i++) {
        t0 = now_ms();
        rc = evq_enqueue(q, ev);
    }
    assert_evq_err(rc, EVQ_ECONN);
    printf("enqueue with the broker down failed after %lld ms: %s\n",
           (long long)(now_ms() - t0), evq_errmsg());
    assert_true(now_ms() - t0 < 45000);
    assert_errmsg_has("connect_timeout_ms");
    broker_command("up 1");
    broker_command("up 2");
    broker_command("up 3");
    evq_event *ev2 = evq_event_new("x", json_integer(2));
    rc = EVQ_ECONN;
    for (int i = 0; i < 30 && rc == EVQ_ECONN; i++)
        rc = evq_enqueue(q, ev2);
    assert_evq_ok(rc);
    evq_set_log(NULL, NULL);
    printf("kafka outage: %d log lines (%d of a lost connection, %d of one "
           "back)\n",
           atomic_load(&outage_lines), atomic_load(&outage_lost),
           atomic_load(&outage_back));
    assert_true(atomic_load(&outage_lost) >= 1);
    assert_true(atomic_load(&outage_back) >= 1);
    assert_true(atomic_load(&outage_lines) <= 100);
    bool one = false, two = false;
    while (!(one && two) && evq_dequeue(q, &m, 20000) == 0) {
        json_int_t n = json_integer_value(evq_event_data(evq_msg_event(m)));
        one |= n == 1;
        two |= n == 2;
        assert_evq_ok(evq_ack(m));
    }
    assert_true(one && two);
    evq_event_free(ev);
    evq_event_free(ev2);
    evq_queue_close(q);
}

/* rdkafka.ssl.* reach librdkafka: against a TLS server (openssl s_server
 * with the certificate services.sh --tls made), a CA that did not sign it
 * fails the handshake, and the error says so. */
static void ssl_options_reach_librdkafka(void **state)
{
    (void)state;
    int p = free_port();
    char accept[64], cert[600], key[600], u[1400];
    snprintf(accept, sizeof accept, "127.0.0.1:%d", p);
    snprintf(cert, sizeof cert, "%s/server.pem", sdir);
    snprintf(key, sizeof key, "%s/server.key", sdir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open("/dev/null", O_RDWR);
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("openssl", "openssl", "s_server", "-accept", accept, "-cert",
               cert, "-key", key, "-quiet", (char *)NULL);
        _exit(127);
    }
    assert_true(port_open(p));
    snprintf(u, sizeof u,
             "kafka://127.0.0.1:%d?rdkafka.security.protocol=ssl&"
             "rdkafka.ssl.ca.location=%s/other-ca.pem&kafka.timeout_ms=3000&"
             "kafka.create_topics=false",
             p, sdir);
    evq_queue *q;
    assert_evq_ok(evq_queue_open(&q, u, "ktls", NULL));
    evq_event *ev = evq_event_new("x", NULL);
    assert_evq_err(evq_enqueue(q, ev), EVQ_ECONN);
    printf("kafka tls: %s\n", evq_errmsg());
    assert_errmsg_has("certificate verify failed");
    evq_event_free(ev);
    evq_queue_close(q);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

/* ---- a broker down and up
 * ----------------------------------------------------- */

static void broker_down_and_up(void *arg)
{
    (void)arg;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "echo 'down 1' > %s/kafka.ctl && sleep 2 && "
             "echo 'up 1' > %s/kafka.ctl",
             sdir, sdir);
    assert_int_equal(system(cmd), 0);
}

static void a_broker_down_and_up_loses_no_accepted_event(void **state)
{
    (void)state;
    char u[1024];
    url_with(u, sizeof u, "kafka.timeout_ms=30000");
    run_outage(u, "koutage", broker_down_and_up, NULL, false);
}

static void an_async_stream_across_an_outage_loses_nothing_reported(
    void **state)
{
    (void)state;
    char u[1024];
    url_with(u, sizeof u, "kafka.timeout_ms=30000");
    run_outage_async(u, "koutage-async", broker_down_and_up, NULL, false);
}

/* ---- commits under SIGKILL
 * ---------------------------------------------------- */

#define KILL_EVENTS 20000

/* A consumer process (tests/consumer.c): a worker of 8 threads whose
 * handlers take a random time of up to 20 ms (so the kills find work half
 * done) and log each event handled, until it is killed. */
static pid_t start_consumer(const char *u, const char *logpath)
{
    const char *args[] = {"log", logpath, u, "kkill", NULL};
    return spawn_consumer(args);
}

static int count_handled(const char *logpath, bool *seen)
{
    memset(seen, 0, KILL_EVENTS * sizeof *seen);
    FILE *f = fopen(logpath, "r");
    int lines = 0;
    long long n;
    while (f && fscanf(f, "%lld", &n) == 1) {
        lines++;
        if (n >= 0 && n < KILL_EVENTS)
            seen[n] = true;
    }
    if (f)
        fclose(f);
    return lines;
}

/* Consumers of 8 threads with handlers of random duration are killed with
 * SIGKILL at random moments and started again; at the end every event was
 * handled at least once: no commit ever passed an unfinished event. */
static void killed_consumers_skip_nothing(void **state)
{
    (void)state;
    char u[1024], logpath[512];
    evq_queue *q;
    url_with(u, sizeof u, "kafka.commit_interval_ms=50");
    snprintf(logpath, sizeof logpath, "%s/kkill.log", sdir);
    assert_evq_ok(evq_queue_open(&q, u, "kkill", NULL));
    for (int i = 0; i < KILL_EVENTS; i += 100) {
        evq_event *evs[100];
        for (int k = 0; k < 100; k++)
            evs[k] = evq_event_new("k", json_integer(i + k));
        assert_evq_ok(evq_enqueue_batch(q, (const evq_event *const *)evs, 100));
        for (int k = 0; k < 100; k++)
            evq_event_free(evs[k]);
    }
    static bool seen[KILL_EVENTS];
    srand((unsigned)getpid());
    for (int round = 0; round < 4; round++) {
        pid_t pid = start_consumer(u, logpath);
        /* past the group join (about 3 s on the test broker, up to the
         * 6 s session of the consumer killed before), then a random
         * moment in the next 2 s */
        int ms = 7000 + rand() % 2000;
        struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000};
        nanosleep(&t, NULL);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    int handled_before = count_handled(logpath, seen);
    pid_t pid = start_consumer(u, logpath);
    int64_t end = now_ms() + 120000;
    int missing = KILL_EVENTS;
    while (missing > 0 && now_ms() < end) {
        struct timespec t = {0, 200 * 1000000};
        nanosleep(&t, NULL);
        count_handled(logpath, seen);
        missing = 0;
        for (int i = 0; i < KILL_EVENTS; i++)
            missing += !seen[i];
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    int lines = count_handled(logpath, seen);
    printf("kill: %d of %d handled before the last consumer, %d handlings "
           "in all (%d again), %d never\n",
           handled_before, KILL_EVENTS, lines, lines - KILL_EVENTS + missing,
           missing);
    /* the kills came mid-way */
    assert_true(handled_before > 0 && handled_before < KILL_EVENTS);
    assert_int_equal(missing, 0);
    evq_queue_close(q);
}

/* ---- long handlers ------------------------------------------------------ */

static atomic_int long_runs;

static int eight_seconds(const evq_event *ev, void *arg)
{
    (void)ev;
    (void)arg;
    atomic_fetch_add(&long_runs, 1);
    struct timespec pause = {8, 0};
    nanosleep(&pause, NULL);
    return 0;
}

static bool long_done(void *arg)
{
    struct evq_worker_stats st;
    evq_worker_stats(arg, &st);
    return st.succeeded >= 1;
}

static bool ran_twice(void *arg)
{
    (void)arg;
    return atomic_load(&long_runs) >= 2;
}

/* A handler longer than max.poll.interval.ms, on the worker's only thread:
 * librdkafka would take the consumer out of its group, and the event would
 * be read again.  The keepalive polls meanwhile: it runs once. */
static void a_handler_past_the_poll_interval_keeps_its_event(void **state)
{
    (void)state;
    char u[1024];
    evq_queue *q;
    evq_events *e = evq_events_new();
    evq_worker *w;
    url_with(u, sizeof u, "rdkafka.max.poll.interval.ms=6000");
    assert_evq_ok(evq_queue_open(&q, u, "klong", NULL));
    enqueue_type(q, "long", "p0");
    atomic_store(&long_runs, 0);
    evq_register_handler(e, "long", eight_seconds, NULL);
    assert_evq_ok(evq_worker_start(&w, q, e, NULL));
    assert_true(eventually(long_done, w, 60000));
    /* Were the consumer out of its group, it would rejoin and read the
     * event again within a session or two. */
    assert_false(eventually(ran_twice, NULL, 15000));
    assert_evq_ok(evq_worker_stop(w, 5000));
    struct evq_worker_stats st;
    evq_worker_stats(w, &st);
    assert_int_equal(st.received, 1);
    assert_int_equal(st.succeeded, 1);
    evq_worker_free(w);
    evq_events_free(e);
    evq_queue_close(q);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: test_kafka BOOTSTRAP SERVICE_DIR\n");
        return 2;
    }
    boot = argv[1];
    sdir = argv[2];
    url_with(url, sizeof url, NULL);
    if (getenv("EVQ_TEST_FILTER")) /* run only the tests matching it */
        cmocka_set_test_filter(getenv("EVQ_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(kcat_reads_what_evq_produces),
        cmocka_unit_test(evq_reads_what_kcat_produces),
        cmocka_unit_test(evq_writes_binary_mode),
        cmocka_unit_test(msgpack_messages_say_so),
        cmocka_unit_test(a_full_partition_waits_for_finished_events),
        cmocka_unit_test(junk_goes_to_the_dead_letters),
        cmocka_unit_test(oversize_messages_are_clear),
        cmocka_unit_test(one_keys_events_keep_their_order),
        cmocka_unit_test(a_missing_topic_is_created_or_left_to_the_broker),
        cmocka_unit_test(bad_brokers_and_properties_are_clear_errors),
        cmocka_unit_test(ssl_options_reach_librdkafka),
        cmocka_unit_test(
            an_enqueue_with_no_broker_fails_after_the_connect_timeout),
        cmocka_unit_test(a_handler_past_the_poll_interval_keeps_its_event),
        cmocka_unit_test(killed_consumers_skip_nothing),
        cmocka_unit_test(a_broker_down_and_up_loses_no_accepted_event),
        cmocka_unit_test(
            an_async_stream_across_an_outage_loses_nothing_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
