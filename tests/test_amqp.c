/* The amqp:// backend's own promises, beyond the conformance suite:
 * events written by evq are read by Debian's amqp-tools and the other way
 * round, in structured and binary content mode; junk from another client
 * is dead-lettered; bad credentials, a bad vhost, a queue of another type
 * and an unreachable broker are clear errors (the password never
 * printed); a delay is rounded up to a delay level and one carried in a
 * header past the levels is not handed out early; a consumer SIGKILLed
 * holding events gets them redelivered; and the broker killed (SIGKILL)
 * and started again under synchronous and asynchronous producers loses
 * nothing confirmed.
 *
 * amqps:// reaches the broker's TLS listener only with the right CA.
 *
 *   test_amqp AMQP_URL SERVICE_DIR AMQPS_PORT (services.sh run rabbitmq
 *   --tls gives them) */
#include "internal.h"
#include "outage.h"
#include "testutil.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>

static const char *url;
static const char *sdir; /* the service's folder: rabbit/start.sh, node.pid */
static int port;
static int tls_port; /* the broker's TLS listener */

/* Runs a shell command (printf-style) with $URL set to the broker's
 * URL; its standard output into out (NUL-terminated). */
static int sh(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int sh(char *out, size_t cap, const char *fmt, ...)
{
    char cmd[4096], line[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    /* the URL inside double quotes: %2f must not meet printf again */
    snprintf(line, sizeof line, "URL='%s'; %s", url, cmd);
    FILE *p = popen(line, "r");
    assert_non_null(p);
    size_t n = 0;
    if (out) {
        n = fread(out, 1, cap - 1, p);
        out[n] = 0;
    } else {
        char junk[4096];
        while (fread(junk, 1, sizeof junk, p) > 0) {
        }
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* url with its credentials, vhost or options replaced. */
static void url_with(char *out, size_t cap, const char *userpass,
                     const char *vhost, const char *params)
{
    snprintf(out, cap, "amqp://%s@127.0.0.1:%d/%s%s%s", userpass, port, vhost,
             params ? "?" : "", params ? params : "");
}

/* A plain librabbitmq connection on channel 1, as another client. */
static amqp_connection_state_t raw_conn(void)
{
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    assert_int_equal(amqp_socket_open(s, "127.0.0.1", port), 0);
    amqp_rpc_reply_t r = amqp_login(c, "/", 0, 131072, 0,
                                    AMQP_SASL_METHOD_PLAIN, "guest", "guest");
    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    amqp_channel_open(c, 1);
    assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    return c;
}

static void raw_close(amqp_connection_state_t c)
{
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
}

static const char *header(const amqp_basic_properties_t *p, const char *k,
                          char *buf, size_t cap)
{
    for (int i = 0; i < p->headers.num_entries; i++) {
        amqp_table_entry_t *e = &p->headers.entries[i];
        if (e->key.len == strlen(k) && memcmp(e->key.bytes, k, e->key.len) == 0 &&
            e->value.kind == AMQP_FIELD_KIND_UTF8) {
            snprintf(buf, cap, "%.*s", (int)e->value.value.bytes.len,
                     (char *)e->value.value.bytes.bytes);
            return buf;
        }
    }
    return NULL;
}

/* Structured mode: what evq writes, amqp-get reads as CloudEvents JSON;
 * what amqp-publish writes as CloudEvents JSON, evq reads. */
static void amqp_tools_read_and_write_structured_events(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    char out[4096];
    assert_evq_ok(evq_queue_open(&q, url, "interop", NULL));
    evq_event *ev = evq_event_new("tools.hello", json_pack("{s:i}", "n", 7));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_int_equal(sh(out, sizeof out, "amqp-get -u \"$URL\" -q interop"), 0);
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "type")),
                        "tools.hello");
    assert_string_equal(json_string_value(json_object_get(j, "id")),
                        evq_event_id(ev));
    assert_string_equal(json_string_value(json_object_get(j, "specversion")),
                        "1.0");
    json_decref(j);
    evq_event_free(ev);

    assert_int_equal(
        sh(NULL, 0,
           "amqp-publish -u \"$URL\" -r interop -p -C "
           "application/cloudevents+json -b '{\"specversion\":\"1.0\","
           "\"id\":\"from-tools-1\",\"source\":\"/amqp-tools\",\"type\":"
           "\"tools.published\",\"data\":{\"k\":\"v\"}}'"),
        0);
    assert_evq_ok(evq_dequeue(q, &m, 10000));
    const evq_event *got = evq_msg_event(m);
    assert_string_equal(evq_event_id(got), "from-tools-1");
    assert_string_equal(evq_event_type(got), "tools.published");
    assert_int_equal(evq_event_attempt(got), 1);
    assert_evq_ok(evq_ack(m));
    assert_evq_err(evq_dequeue(q, &m, 200), EVQ_ETIMEDOUT);
    evq_queue_close(q);
}

/* Binary mode: evq writes cloudEvents_* headers and the data as the body
 * (another client sees them); a message amqp-publish writes with such
 * headers, or the "ce-" spelling, is read as the event. */
static void binary_mode_events_cross_both_ways(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    char u[512], b[256];
    url_with(u, sizeof u, "guest:guest", "%2f", "amqp.ce_mode=binary");
    assert_evq_ok(evq_queue_open(&q, u, "binary", NULL));
    evq_event *ev = evq_event_new("bin.hello", json_pack("{s:i}", "n", 42));
    assert_evq_ok(evq_event_set_attr(ev, "subject", "subj-1"));
    assert_evq_ok(evq_enqueue(q, ev));

    amqp_connection_state_t c = raw_conn();
    amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes("binary"), 1);
    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    assert_int_equal(r.reply.id, AMQP_BASIC_GET_OK_METHOD);
    amqp_message_t msg;
    assert_int_equal(amqp_read_message(c, 1, &msg, 0).reply_type,
                     AMQP_RESPONSE_NORMAL);
    const amqp_basic_properties_t *p = &msg.properties;
    assert_string_equal(header(p, "cloudEvents_type", b, sizeof b),
                        "bin.hello");
    assert_string_equal(header(p, "cloudEvents_id", b, sizeof b),
                        evq_event_id(ev));
    assert_string_equal(header(p, "cloudEvents_specversion", b, sizeof b),
                        "1.0");
    assert_string_equal(header(p, "cloudEvents_subject", b, sizeof b),
                        "subj-1");
    assert_true(p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG);
    assert_int_equal(strncmp(p->content_type.bytes, "application/json",
                             p->content_type.len),
                     0);
    json_error_t jerr;
    json_t *body = json_loadb(msg.body.bytes, msg.body.len, 0, &jerr);
    assert_non_null(body);
    assert_int_equal(json_integer_value(json_object_get(body, "n")), 42);
    json_decref(body);
    amqp_destroy_message(&msg);
    raw_close(c);
    evq_event_free(ev);

    /* the CloudEvents AMQP binding's spelling and the "ce-" one */
    const char *prefixes[] = {"cloudEvents_", "ce-"};
    for (int i = 0; i < 2; i++) {
        const char *x = prefixes[i];
        assert_int_equal(
            sh(NULL, 0,
               "amqp-publish -u \"$URL\" -r binary -p -C application/json "
               "-H '%sspecversion: 1.0' -H '%sid: bin-%d' -H '%ssource: /t' "
               "-H '%stype: bin.tools' -b '{\"i\":%d}'",
               x, x, i, x, x, i),
            0);
        assert_evq_ok(evq_dequeue(q, &m, 10000));
        const evq_event *got = evq_msg_event(m);
        char want[16];
        snprintf(want, sizeof want, "bin-%d", i);
        assert_string_equal(evq_event_id(got), want);
        assert_string_equal(evq_event_type(got), "bin.tools");
        assert_int_equal(
            json_integer_value(json_object_get(evq_event_data(got), "i")), i);
        assert_evq_ok(evq_ack(m));
    }
    evq_queue_close(q);
}

/* Bodies that are no event, from another client, go to the dead-letter
 * queue; the good event after them is delivered. */
static void junk_from_another_client_is_dead_lettered(void **state)
{
    (void)state;
    evq_queue *q, *dead;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "junk", NULL));
    assert_int_equal(sh(NULL, 0, "amqp-publish -u \"$URL\" -r junk -b 'not "
                                 "json at all'"),
                     0);
    assert_int_equal(
        sh(NULL, 0,
           "amqp-publish -u \"$URL\" -r junk -b '{\"specversion\":\"1.0\"}'"),
        0);
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
    evq_queue_close(q);
}

/* A 2 MiB body from another client on a queue with a 64 KiB
 * max_event_bytes, between two events: both delivered, the big one
 * dead-lettered as a prefix with its stored size. */
static void an_oversize_message_is_dead_lettered(void **state)
{
    (void)state;
    char u[512];
    url_with(u, sizeof u, "guest:guest", "%2f", "max_event_bytes=65536");
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, u, "big", NULL));
    evq_event *ev = evq_event_new("amqp.before", json_integer(1));
    assert_evq_ok(evq_enqueue(q, ev));
    evq_event_free(ev);
    assert_int_equal(sh(NULL, 0,
                        "head -c 2097152 /dev/zero | tr '\\0' x | "
                        "amqp-publish -u \"$URL\" -r big -p"),
                     0);
    ev = evq_event_new("amqp.after", json_integer(2));
    assert_evq_ok(evq_enqueue(q, ev));
    evq_event_free(ev);
    const char *want[] = {"amqp.before", "amqp.after"};
    for (int i = 0; i < 2; i++) {
        assert_evq_ok(evq_dequeue(q, &m, 20000));
        assert_string_equal(evq_event_type(evq_msg_event(m)), want[i]);
        assert_evq_ok(evq_ack(m));
    }
    assert_oversize_dead_letter(q, 2097152);
    evq_queue_close(q);
}

/* The queue deleted behind the handle's back: a publish comes back
 * unroutable (basic.return), and the enqueue fails saying so, rather
 * than reporting an event stored that went nowhere. */
static void a_publish_to_a_deleted_queue_fails(void **state)
{
    (void)state;
    evq_queue *q;
    assert_evq_ok(evq_queue_open(&q, url, "vanishing", NULL));
    amqp_connection_state_t c = raw_conn();
    amqp_queue_delete(c, 1, amqp_cstring_bytes("vanishing"), 0, 0);
    assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    raw_close(c);
    evq_event *ev = evq_event_new("nowhere", json_integer(1));
    assert_evq_err(evq_enqueue(q, ev), EVQ_ENOENT);
    assert_errmsg_has("unroutable");
    evq_event_free(ev);
    evq_queue_close(q);
}

static void bad_credentials_and_places_are_clear_errors(void **state)
{
    (void)state;
    char u[512];
    evq_queue *q = NULL;
    url_with(u, sizeof u, "guest:not-the-Secret-42", "%2f", NULL);
    assert_evq_err(evq_queue_open(&q, u, "x", NULL), EVQ_EINVAL);
    assert_errmsg_has("refused");
    if (strstr(evq_errmsg(), "not-the-Secret-42"))
        fail_msg("the password was printed: %s", evq_errmsg());

    url_with(u, sizeof u, "guest:guest", "no-such-vhost", NULL);
    assert_evq_err(evq_queue_open(&q, u, "x", NULL), EVQ_EINVAL);
    assert_errmsg_has("no-such-vhost");

    /* a classic queue opened as quorum: named, and left as it is */
    url_with(u, sizeof u, "guest:guest", "%2f", "amqp.queue_type=classic");
    assert_evq_ok(evq_queue_open(&q, u, "typed", NULL));
    evq_queue_close(q);
    assert_evq_err(evq_queue_open(&q, url, "typed", NULL), EVQ_EEXIST);
    assert_errmsg_has("amqp.queue_type");

    /* create=false and no queue */
    url_with(u, sizeof u, "guest:guest", "%2f", "create=false");
    assert_evq_err(evq_queue_open(&q, u, "never-made", NULL), EVQ_ENOENT);
    assert_errmsg_has("create=false");

    /* names and options the backend refuses */
    assert_evq_err(evq_queue_open(&q, url, "amq.reserved", NULL), EVQ_EINVAL);
    url_with(u, sizeof u, "guest:guest", "%2f", "amqp.queue_type=stream");
    assert_evq_err(evq_queue_open(&q, u, "x", NULL), EVQ_EINVAL);
    url_with(u, sizeof u, "guest:guest", "%2f", "amqp.tls_ca=/nonexistent");
    assert_evq_err(evq_queue_open(&q, u, "x", NULL), EVQ_EINVAL);
    assert_errmsg_has("amqps://");

    /* nothing listening: EVQ_ECONN once connect_timeout_ms has passed */
    snprintf(u, sizeof u, "amqp://guest:guest@127.0.0.1:1/?connect_timeout_ms=500");
    int64_t t0 = now_ms();
    assert_evq_err(evq_queue_open(&q, u, "x", NULL), EVQ_ECONN);
    assert_true(now_ms() - t0 < 30000);
}

/* A delay goes to the first delay level at least as long (150 ms: the
 * 200 ms level) and is not delivered early; a message whose evq-due
 * header lies past what the levels hold goes round again, not out. */
static void delays_use_levels_and_due_headers_hold(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "levels", NULL));
    evq_event *ev = evq_event_new("later", json_integer(1));
    int64_t t0 = now_ms();
    assert_evq_ok(evq_enqueue_delayed(q, ev, 150));
    evq_event_free(ev);
    /* the level's queue exists: a passive declare answers */
    amqp_connection_state_t c = raw_conn();
    amqp_queue_declare(c, 1, amqp_cstring_bytes("levels.evq-delay-200"), 1, 0,
                       0, 0, amqp_empty_table);
    assert_int_equal(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
    raw_close(c);
    assert_evq_ok(evq_dequeue(q, &m, 10000));
    assert_true(now_ms() - t0 >= 150);
    assert_string_equal(evq_event_type(evq_msg_event(m)), "later");
    assert_evq_ok(evq_ack(m));

    /* due in 3 s, put straight on the queue by another client */
    char due[32];
    snprintf(due, sizeof due, "%lld", (long long)(evq__now_real_ns() / 1000000 + 3000));
    assert_int_equal(
        sh(NULL, 0,
           "amqp-publish -u \"$URL\" -r levels -p -C "
           "application/cloudevents+json -H 'evq-due: %s' -b "
           "'{\"specversion\":\"1.0\",\"id\":\"due-1\",\"source\":\"/t\","
           "\"type\":\"due\"}'",
           due),
        0);
    t0 = now_ms();
    assert_evq_ok(evq_dequeue(q, &m, 20000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), "due-1");
    assert_true(now_ms() - t0 >= 2500);
    assert_int_equal(evq_event_attempt(evq_msg_event(m)), 1);
    assert_evq_ok(evq_ack(m));
    struct evq_queue_stats st;
    assert_evq_ok(evq_queue_stats(q, &st));
    assert_int_equal(st.depth + st.delayed, 0);
    evq_queue_close(q);
}

/* A consumer process SIGKILLed holding a delivery: the broker redelivers
 * it (its channel closed), counted as a second attempt; nothing lost. */
static void a_dead_consumers_events_come_back(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "crash", NULL));
    for (int i = 0; i < 3; i++) {
        evq_event *ev = evq_event_new("amqp.crash", json_integer(i));
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
    }
    consume_one_and_die(url, "crash");
    int seen = 0, redelivered = 0;
    unsigned got = 0;
    while (seen < 3) {
        assert_evq_ok(evq_dequeue(q, &m, 10000));
        const evq_event *e = evq_msg_event(m);
        if (evq_event_attempt(e) == 2)
            redelivered++;
        got |= 1u << json_integer_value(evq_event_data(e));
        seen++;
        assert_evq_ok(evq_ack(m));
    }
    assert_int_equal(got, 7);
    assert_true(redelivered >= 1);
    assert_evq_err(evq_dequeue(q, &m, 500), EVQ_ETIMEDOUT);
    evq_queue_close(q);
}

/* amqps://: a broker whose certificate the test CA signed is reached
 * and used; the same broker checked against an unrelated CA is refused
 * with a clear error. */
static void amqps_verifies_the_broker(void **state)
{
    (void)state;
    char u[1024];
    evq_queue *q;
    evq_msg *m;
    snprintf(u, sizeof u,
             "amqps://guest:guest@localhost:%d/%%2f?amqp.tls_ca=%s/ca.pem",
             tls_port, sdir);
    assert_evq_ok(evq_queue_open(&q, u, "over-tls", NULL));
    evq_event *ev = evq_event_new("tls.hello", json_integer(1));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 10000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(ev));
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(q);

    snprintf(u, sizeof u,
             "amqps://guest:guest@localhost:%d/%%2f?amqp.tls_ca=%s/"
             "other-ca.pem&connect_timeout_ms=2000",
             tls_port, sdir);
    assert_evq_err(evq_queue_open(&q, u, "over-tls", NULL), EVQ_ECONN);
    assert_errmsg_has("cannot connect");
}

/* ---- the broker killed and started again --------------------------------- */

static void restart_broker(void *arg)
{
    (void)arg;
    char out[64];
    /* how many times the node has started so far */
    assert_int_equal(sh(out, sizeof out,
                        "cat %s/rabbit/log/*.log | grep -c 'Server startup "
                        "complete'",
                        sdir),
                     0);
    int starts = atoi(out);
    assert_int_equal(sh(NULL, 0, "kill -9 $(cat %s/rabbit/node.pid)", sdir), 0);
    struct timespec pause = {0, 300 * 1000000};
    nanosleep(&pause, NULL);
    assert_int_equal(sh(NULL, 0, "sh %s/rabbit/start.sh", sdir), 0);
    int64_t end = now_ms() + 120000;
    for (;;) {
        sh(out, sizeof out,
           "cat %s/rabbit/log/*.log | grep -c 'Server startup complete'",
           sdir);
        if (atoi(out) > starts)
            break;
        if (now_ms() > end)
            fail_msg("the broker did not start again");
        nanosleep(&pause, NULL);
    }
}

/* RabbitMQ 3.10 writes a new quorum queue's Ra registration to disk a
 * moment after declaring it: a node killed within about a second of the
 * declare comes back with the queue and no leader for it, and publishes
 * to it are never confirmed (README, amqp://).  So the queue is declared
 * two seconds before the kill, as a queue in service would be. */
static void declared_a_while_ago(const char *name)
{
    evq_queue *q;
    assert_evq_ok(evq_queue_open(&q, url, name, NULL));
    evq_queue_close(q);
    struct timespec pause = {2, 0};
    nanosleep(&pause, NULL);
}

static void a_broker_restart_loses_no_accepted_event(void **state)
{
    (void)state;
    declared_a_while_ago("outage");
    run_outage(url, "outage", restart_broker, NULL, true);
}

static void an_async_stream_across_a_restart_loses_nothing_reported(
    void **state)
{
    (void)state;
    declared_a_while_ago("outage-async");
    run_outage_async(url, "outage-async", restart_broker, NULL, true);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s AMQP_URL SERVICE_DIR AMQPS_PORT\n",
                argv[0]);
        return 2;
    }
    url = argv[1];
    sdir = argv[2];
    tls_port = atoi(argv[3]);
    const char *colon = strrchr(url, ':');
    port = colon ? atoi(colon + 1) : 5672;
    if (getenv("EVQ_TEST_FILTER")) /* run only the tests matching it */
        cmocka_set_test_filter(getenv("EVQ_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(amqp_tools_read_and_write_structured_events),
        cmocka_unit_test(binary_mode_events_cross_both_ways),
        cmocka_unit_test(junk_from_another_client_is_dead_lettered),
        cmocka_unit_test(an_oversize_message_is_dead_lettered),
        cmocka_unit_test(a_publish_to_a_deleted_queue_fails),
        cmocka_unit_test(bad_credentials_and_places_are_clear_errors),
        cmocka_unit_test(delays_use_levels_and_due_headers_hold),
        cmocka_unit_test(a_dead_consumers_events_come_back),
        cmocka_unit_test(amqps_verifies_the_broker),
        cmocka_unit_test(a_broker_restart_loses_no_accepted_event),
        cmocka_unit_test(
            an_async_stream_across_a_restart_loses_nothing_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
