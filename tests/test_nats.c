/* The nats:// backend's own promises, against a real nats-server -js that
 * scripts/services.sh started:
 *
 *   test_nats URL PORT SERVICE_DIR
 *
 * Messages other NATS clients (libnats, used directly here) publish are
 * read, and evq's are plain CloudEvents to them; junk goes to the dead
 * letters; retried publishes are stored once; long handlers are kept from
 * redelivery; a killed consumer's events come back after AckWait; bad
 * servers and credentials give clear errors; a server killed and restarted
 * loses no event whose enqueue succeeded; core mode delivers what it is
 * given when the consumer keeps up. */
#include "outage.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *url, *port, *sdir;

static void url_with(char *out, size_t cap, const char *params)
{
    snprintf(out, cap, "%s?%s", url, params);
}

/* A plain libnats connection, as another application would have. */
static natsConnection *plain_connect(void)
{
    natsConnection *nc = NULL;
    char u[64];
    snprintf(u, sizeof u, "nats://127.0.0.1:%s", port);
    assert_int_equal(natsConnection_ConnectTo(&nc, u), NATS_OK);
    return nc;
}

static void js_publish_raw(natsConnection *nc, const char *subject,
                           const char *body, int len)
{
    jsCtx *js = NULL;
    jsPubAck *pa = NULL;
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    assert_int_equal(js_Publish(&pa, js, subject, body, len, NULL, NULL),
                     NATS_OK);
    jsPubAck_Destroy(pa);
    jsCtx_Destroy(js);
}

/* ---- interop ------------------------------------------------------------- */

static void events_published_by_libnats_are_read(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "interop", NULL));
    natsConnection *nc = plain_connect();
    const char *body =
        "{\"specversion\":\"1.0\",\"id\":\"nats-1\",\"source\":\"/libnats\","
        "\"type\":\"user.created\",\"data\":{\"userId\":\"123\"}}";
    js_publish_raw(nc, "interop", body, (int)strlen(body));
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    const evq_event *ev = evq_msg_event(m);
    assert_string_equal(evq_event_id(ev), "nats-1");
    assert_string_equal(evq_event_source(ev), "/libnats");
    assert_string_equal(
        json_string_value(json_object_get(evq_event_data(ev), "userId")),
        "123");
    assert_int_equal(evq_event_attempt(ev), 1);
    assert_evq_ok(evq_ack(m));

    /* What evq publishes is structured-mode CloudEvents JSON, with its
     * content type and the event id as Nats-Msg-Id. */
    natsSubscription *sub = NULL;
    assert_int_equal(natsConnection_SubscribeSync(&sub, nc, "interop"),
                     NATS_OK);
    assert_int_equal(natsConnection_Flush(nc), NATS_OK);
    evq_event *out = evq_event_new("order.placed", json_pack("{s:i}", "n", 7));
    assert_evq_ok(evq_enqueue(q, out));
    natsMsg *nm = NULL;
    assert_int_equal(natsSubscription_NextMsg(&nm, sub, 5000), NATS_OK);
    const char *ct = NULL, *mid = NULL;
    assert_int_equal(natsMsgHeader_Get(nm, "Content-Type", &ct), NATS_OK);
    assert_string_equal(ct, "application/cloudevents+json");
    assert_int_equal(natsMsgHeader_Get(nm, "Nats-Msg-Id", &mid), NATS_OK);
    assert_string_equal(mid, evq_event_id(out));
    json_error_t jerr;
    json_t *j = json_loadb(natsMsg_GetData(nm),
                           (size_t)natsMsg_GetDataLength(nm), 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "type")),
                        "order.placed");
    assert_string_equal(json_string_value(json_object_get(j, "specversion")),
                        "1.0");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "data"), "n")),
        7);
    json_decref(j);
    natsMsg_Destroy(nm);
    natsSubscription_Destroy(sub);
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_evq_ok(evq_ack(m));
    evq_event_free(out);
    natsConnection_Destroy(nc);
    evq_queue_close(q);
}

static atomic_int handled;

static void junk_goes_to_the_dead_letters(void **state)
{
    (void)state;
    evq_queue *q, *dead;
    evq_events *e = evq_events_new();
    evq_worker *w;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "junk", NULL));
    natsConnection *nc = plain_connect();
    js_publish_raw(nc, "junk", "not json at all", 15);
    js_publish_raw(nc, "junk", "{\"specversion\":\"1.0\",\"id\":\"x\"}", 31);
    size_t big = 900 * 1024; /* under the server's 1 MiB max_payload */
    char *blob = malloc(big);
    memset(blob, '{', big);
    js_publish_raw(nc, "junk", blob, (int)big);
    free(blob);
    enqueue_type(q, "good", NULL);

    atomic_store(&handled, 0);
    evq_register_handler(e, "good", count_handler, &handled);
    assert_evq_ok(evq_worker_start(&w, q, e, NULL));
    assert_true(eventually(at_least_one, &handled, 10000));
    assert_evq_ok(evq_worker_stop(w, 5000));
    evq_worker_free(w);
    evq_events_free(e);

    assert_evq_ok(evq_queue_open_dead(&dead, q));
    for (int i = 0; i < 3; i++) {
        assert_evq_ok(evq_dequeue(dead, &m, 5000));
        assert_string_equal(evq_event_type(evq_msg_event(m)),
                            "evq.undecodable");
        assert_non_null(evq_event_attr(evq_msg_event(m), "evqerror"));
        assert_evq_ok(evq_ack(m));
    }
    assert_evq_err(evq_dequeue(dead, &m, 0), EVQ_ETIMEDOUT);
    evq_queue_close(dead);
    natsConnection_Destroy(nc);
    evq_queue_close(q);
}

/* The stream evq makes refuses, at the server, a message past
 * max_event_bytes from any publisher, so no consumer receives it. */
static void the_server_refuses_oversize_messages(void **state)
{
    (void)state;
    char u[512];
    evq_queue *q;
    evq_msg *m;
    url_with(u, sizeof u, "max_event_bytes=65536");
    assert_evq_ok(evq_queue_open(&q, u, "capped", NULL));
    natsConnection *nc = plain_connect();
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    assert_int_equal(js_GetStreamInfo(&si, js, "EVQ_capped", NULL, &jerr),
                     NATS_OK);
    assert_true(si->Config->MaxMsgSize >= 65536 &&
                si->Config->MaxMsgSize <= 65536 + 8192);
    jsStreamInfo_Destroy(si);
    size_t big = 200 * 1024;
    char *blob = malloc(big);
    memset(blob, 'x', big);
    natsStatus s = js_Publish(&pa, js, "capped", blob, (int)big, NULL, &jerr);
    assert_int_not_equal(s, NATS_OK);
    assert_null(pa);
    if (!strstr(nats_GetLastError(NULL), "maximum"))
        fail_msg("refusal does not say why: %s", nats_GetLastError(NULL));
    free(blob);
    enqueue_type(q, "capped.ok", NULL);
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_string_equal(evq_event_type(evq_msg_event(m)), "capped.ok");
    assert_evq_ok(evq_ack(m));
    assert_evq_err(evq_dequeue(q, &m, 0), EVQ_ETIMEDOUT);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    evq_queue_close(q);
}

/* ---- JetStream promises ------------------------------------------------- */

/* The same event published twice (an application retrying) is stored
 * once; a replayed dead letter carries a mark and is stored again. */
static void a_retried_publish_is_stored_once(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "dedup", NULL));
    evq_event *ev = evq_event_new("d", json_integer(1));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_enqueue(q, ev));
    const evq_event *two[2] = {ev, ev};
    assert_evq_ok(evq_enqueue_batch(q, two, 2));
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_evq_ok(evq_ack(m));
    assert_evq_err(evq_dequeue(q, &m, 300), EVQ_ETIMEDOUT);
    assert_evq_ok(evq_event_set_attr(ev, "evqreplayed", "1"));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(ev));
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(q);
}

static bool settled_on_server(void *arg)
{
    struct evq_queue_stats st;
    return evq_queue_stats(arg, &st) == 0 && st.depth == 0 && st.in_flight == 0;
}

/* A delayed event is held back until due; the hold is not an attempt. */
static void delayed_events_count_their_attempts(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    assert_evq_ok(evq_queue_open(&q, url, "delays", NULL));
    evq_event *ev = evq_event_new("d", json_integer(2));
    int64_t t0 = now_ms();
    assert_evq_ok(evq_enqueue_delayed(q, ev, 400));
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_true(now_ms() - t0 >= 400);
    assert_int_equal(evq_event_attempt(evq_msg_event(m)), 1);
    assert_evq_ok(evq_nack(m, 100));
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    assert_int_equal(evq_event_attempt(evq_msg_event(m)), 2);
    assert_evq_ok(evq_ack(m));
    /* acks go without an answer: the server's count follows shortly */
    assert_true(eventually(settled_on_server, q, 5000));
    evq_event_free(ev);
    evq_queue_close(q);
}

static atomic_int slow_calls;

static int slow_handler(const evq_event *ev, void *arg)
{
    (void)ev;
    (void)arg;
    atomic_fetch_add(&slow_calls, 1);
    struct timespec pause = {2, 500 * 1000000}; /* 2.5 AckWaits */
    nanosleep(&pause, NULL);
    return 0;
}

static bool slow_started(void *arg)
{
    (void)arg;
    return atomic_load(&slow_calls) >= 1;
}

/* A handler running longer than AckWait keeps its event: the worker sends
 * +WPI, so another consumer does not receive it meanwhile.  Without the
 * touches (touch_ms = -1) it does: the test can tell. */
static void long_handlers_keep_their_event(void **state)
{
    (void)state;
    for (int touch = 1; touch >= 0; touch--) {
        char u[512], name[32];
        evq_queue *q, *other;
        evq_events *e = evq_events_new();
        evq_worker_opts o;
        evq_worker *w;
        evq_msg *m;
        url_with(u, sizeof u, "visibility_timeout_ms=1000");
        snprintf(name, sizeof name, "long%d", touch);
        assert_evq_ok(evq_queue_open(&q, u, name, NULL));
        assert_evq_ok(evq_queue_open(&other, u, name, NULL));
        evq_event *ev = evq_event_new("slow", NULL);
        assert_evq_ok(evq_enqueue(q, ev));
        evq_event_free(ev);
        atomic_store(&slow_calls, 0);
        evq_worker_opts_init(&o);
        o.touch_ms = touch ? 0 : -1;
        evq_register_handler(e, "slow", slow_handler, NULL);
        assert_evq_ok(evq_worker_start(&w, q, e, &o));
        assert_true(eventually(slow_started, NULL, 5000));
        int rc = evq_dequeue(other, &m, 2000);
        if (touch) {
            assert_evq_err(rc, EVQ_ETIMEDOUT);
        } else {
            assert_evq_ok(rc); /* redelivered while the handler still ran */
            assert_int_equal(evq_event_attempt(evq_msg_event(m)), 2);
            assert_evq_ok(evq_ack(m));
        }
        assert_evq_ok(evq_worker_stop(w, 5000));
        evq_worker_free(w);
        evq_events_free(e);
        assert_int_equal(atomic_load(&slow_calls), 1);
        evq_queue_close(other);
        evq_queue_close(q);
    }
}

static void a_killed_consumers_events_come_back_after_ack_wait(void **state)
{
    (void)state;
    char u[512];
    evq_queue *q;
    evq_msg *m;
    url_with(u, sizeof u, "visibility_timeout_ms=800");
    assert_evq_ok(evq_queue_open(&q, u, "killed", NULL));
    evq_event *ev = evq_event_new("k", json_integer(5));
    assert_evq_ok(evq_enqueue(q, ev));
    evq_event_free(ev);
    consume_one_and_die(u, "killed");
    int64_t t0 = now_ms();
    assert_evq_ok(evq_dequeue(q, &m, 10000));
    assert_int_equal(json_integer_value(evq_event_data(evq_msg_event(m))), 5);
    assert_int_equal(evq_event_attempt(evq_msg_event(m)), 2);
    assert_true(now_ms() - t0 >= 300); /* waited out the AckWait */
    assert_evq_ok(evq_ack(m));
    evq_queue_close(q);
}

/* A stream that exists with another configuration is left alone and the
 * error names the difference. */
static void a_foreign_stream_is_an_error_naming_the_difference(void **state)
{
    (void)state;
    natsConnection *nc = plain_connect();
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    jsStreamConfig cfg;
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    jsStreamConfig_Init(&cfg);
    const char *subjects[1] = {"foreign"};
    cfg.Name = "EVQ_foreign";
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    assert_int_equal(js_AddStream(&si, js, &cfg, NULL, NULL), NATS_OK);
    jsStreamInfo_Destroy(si);
    evq_queue *q;
    assert_evq_err(evq_queue_open(&q, url, "foreign", NULL), EVQ_EEXIST);
    assert_errmsg_has("limits retention");
    assert_int_equal(js_GetStreamInfo(&si, js, "EVQ_foreign", NULL, NULL),
                     NATS_OK);
    assert_int_equal(si->Config->Retention, js_LimitsPolicy); /* untouched */
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    /* a queue name that is no subject */
    assert_evq_err(evq_queue_open(&q, url, "two words", NULL), EVQ_EINVAL);
    assert_evq_err(evq_queue_open(&q, url, "a.*", NULL), EVQ_EINVAL);
}

/* ---- bad servers and credentials ---------------------------------------- */

/* Starts a nats-server of our own (no JetStream unless asked) on a free
 * port; returns its pid. */
static pid_t spawn_server(int p, const char *user, const char *pass)
{
    char ps[16];
    snprintf(ps, sizeof ps, "%d", p);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        if (user)
            execlp("nats-server", "nats-server", "-a", "127.0.0.1", "-p", ps,
                   "--user", user, "--pass", pass, (char *)NULL);
        else
            execlp("nats-server", "nats-server", "-a", "127.0.0.1", "-p", ps,
                   (char *)NULL);
        _exit(127);
    }
    if (!port_open(p))
        fail_msg("nats-server on port %d did not start", p);
    return pid;
}

static void stop_server(pid_t pid)
{
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

static void bad_servers_and_credentials_are_clear_errors(void **state)
{
    (void)state;
    evq_queue *q;
    char bad[256];

    /* nobody listening */
    int p = free_port();
    snprintf(bad, sizeof bad, "nats://127.0.0.1:%d?connect_timeout_ms=500",
             p);
    assert_evq_err(evq_queue_open(&q, bad, "q", NULL), EVQ_ECONN);
    assert_errmsg_has("nats connect");

    /* a server that never answers: connect_timeout_ms bounds the wait */
    int fds[2], sp = silent_server(fds);
    snprintf(bad, sizeof bad, "nats://127.0.0.1:%d?connect_timeout_ms=1000",
             sp);
    assert_open_times_out(bad, 1000);
    close(fds[0]);
    close(fds[1]);

    /* a server that wants a password, given the wrong one */
    pid_t pid = spawn_server(p, "evq", "right-secret");
    snprintf(bad, sizeof bad, "nats://evq:wrong-secret@127.0.0.1:%d", p);
    assert_evq_err(evq_queue_open(&q, bad, "q", NULL), EVQ_EINVAL);
    assert_errmsg_has("uthorization");
    assert_null(strstr(evq_errmsg(), "wrong-secret"));
    snprintf(bad, sizeof bad, "nats://evq:right-secret@127.0.0.1:%d", p);
    assert_evq_err(evq_queue_open(&q, bad, "q", NULL), EVQ_ENOTSUP);
    assert_errmsg_has("JetStream is not enabled"); /* in, but no JetStream */
    snprintf(bad, sizeof bad,
             "nats://evq:right-secret@127.0.0.1:%d?nats.mode=core", p);
    assert_evq_ok(evq_queue_open(&q, bad, "q", NULL)); /* core needs none */
    evq_queue_close(q);
    stop_server(pid);

    /* options that cannot work */
    snprintf(bad, sizeof bad, "%s?nats.tls_cert=/nonexistent", url);
    assert_evq_err(evq_queue_open(&q, bad, "q", NULL), EVQ_EINVAL);
    snprintf(bad, sizeof bad, "%s?nats.tls_ca=/nonexistent/ca.pem", url);
    assert_int_not_equal(evq_queue_open(&q, bad, "q", NULL), 0);
    snprintf(bad, sizeof bad, "%s?nats.mode=turbo", url);
    assert_evq_err(evq_queue_open(&q, bad, "q", NULL), EVQ_EINVAL);
    snprintf(bad, sizeof bad, "%s/path", url);
    assert_evq_err(evq_queue_open(&q, bad, "q", NULL), EVQ_EINVAL);
}

/* ---- TLS -------------------------------------------------------------------
 */

/* Against a server that takes TLS only (services.sh --tls): with the CA that
 * signed its certificate, events flow; with another CA, or without TLS,
 * open fails clearly and in time. */
static void tls_verifies_the_server(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    char u[2048];

    snprintf(u, sizeof u, "%s?nats.tls_ca=%s/ca.pem", url, sdir);
    assert_evq_ok(evq_queue_open(&q, u, "secq", NULL));
    evq_event *ev = evq_event_new("over.tls", json_integer(1));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 10000));
    assert_string_equal(evq_event_id(evq_msg_event(m)), evq_event_id(ev));
    assert_evq_ok(evq_ack(m));
    evq_event_free(ev);
    evq_queue_close(q);

    /* a CA that signed nothing here: the server is not trusted */
    snprintf(u, sizeof u,
             "%s?nats.tls_ca=%s/other-ca.pem&nats.connect_timeout_ms=2000", url,
             sdir);
    int rc = evq_queue_open(&q, u, "secq", NULL);
    printf("tls: wrong CA: %s\n", evq_errmsg());
    assert_int_equal(rc, EVQ_ECONN);
    assert_true(strcasestr(evq_errmsg(), "certificate") ||
                strcasestr(evq_errmsg(), "handshake"));

    /* no TLS asked for: the server wants it */
    snprintf(u, sizeof u, "%s?nats.connect_timeout_ms=2000", url);
    rc = evq_queue_open(&q, u, "secq", NULL);
    printf("tls: plain client: %s\n", evq_errmsg());
    assert_int_equal(rc, EVQ_ECONN);
    assert_true(strcasestr(evq_errmsg(), "SSL") ||
                strcasestr(evq_errmsg(), "TLS"));
}

/* ---- core mode ------------------------------------------------------------
 */

static void core_mode_delivers_when_the_consumer_keeps_up(void **state)
{
    (void)state;
    char u[512];
    evq_queue *p, *c;
    evq_msg *m;
    url_with(u, sizeof u, "nats.mode=core");
    assert_evq_ok(evq_queue_open(&c, u, "core", NULL));
    assert_evq_ok(evq_queue_open(&p, u, "core", NULL));
    /* Core NATS delivers to readers present at publication: nothing is
     * kept for c before it first reads, and p, which never reads, takes
     * no share. */
    evq_event *early = evq_event_new("c", json_integer(-1));
    assert_evq_ok(evq_enqueue(p, early));
    evq_event_free(early);
    struct timespec sent = {0, 200 * 1000000}; /* p's buffer reaches the
                                                  server */
    nanosleep(&sent, NULL);
    assert_evq_err(evq_dequeue(c, &m, 200), EVQ_ETIMEDOUT);
    evq_event *ev = evq_event_new("c", NULL);
    assert_evq_err(evq_enqueue_delayed(p, ev, 100), EVQ_ENOTSUP);
    evq_event_free(ev);
    static bool seen[5000];
    for (int i = 0; i < 5000; i += 50) {
        evq_event *evs[50];
        for (int k = 0; k < 50; k++)
            evs[k] = evq_event_new("c", json_integer(i + k));
        assert_evq_ok(evq_enqueue_batch(p, (const evq_event *const *)evs, 50));
        for (int k = 0; k < 50; k++)
            evq_event_free(evs[k]);
        for (int k = 0; k < 50; k++) {
            assert_evq_ok(evq_dequeue(c, &m, 5000));
            json_int_t v = json_integer_value(evq_event_data(evq_msg_event(m)));
            assert_true(v >= 0 && v < 5000 && !seen[v]);
            seen[v] = true;
            assert_evq_ok(evq_ack(m));
        }
    }
    assert_evq_err(evq_dequeue(c, &m, 100), EVQ_ETIMEDOUT);
    evq_queue_close(p);
    evq_queue_close(c);
}

/* ---- the server killed and restarted ------------------------------------ */

static void restart_server(void *arg)
{
    (void)arg;
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "kill -9 $(cat %s/nats-1.pid) && sleep 0.3 && rm -f %s/nats-1.log "
             "&& sh %s/nats-1.sh && for i in $(seq 200); do "
             "grep -q 'Server is ready' %s/nats-1.log 2>/dev/null && exit 0; "
             "sleep 0.05; done; exit 1",
             sdir, sdir, sdir, sdir);
    assert_int_equal(system(cmd), 0);
}

static void a_server_restart_loses_no_accepted_event(void **state)
{
    (void)state;
    char u[512];
    /* acks lost with the server come back after a short AckWait */
    url_with(u, sizeof u, "visibility_timeout_ms=2000");
    /* nats.c buffers publishes while it reconnects, so calls may all
     * succeed */
    run_outage(u, "outage", restart_server, NULL, false);
}

static void an_async_stream_across_a_restart_loses_nothing_reported(
    void **state)
{
    (void)state;
    char u[512];
    url_with(u, sizeof u, "visibility_timeout_ms=2000");
    run_outage_async(u, "outage-async", restart_server, NULL, true);
}

/* ---- a three-server cluster --------------------------------------------- */

/* Kills (SIGKILL) the server that leads the stream of queue `arg`. */
static void kill_stream_leader(void *arg)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    char stream[128];
    snprintf(stream, sizeof stream, "EVQ_%s", (const char *)arg);
    assert_int_equal(natsConnection_ConnectTo(&nc, url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    assert_int_equal(js_GetStreamInfo(&si, js, stream, NULL, NULL), NATS_OK);
    assert_non_null(si->Cluster);
    assert_non_null(si->Cluster->Leader);
    int n = 0;
    assert_int_equal(sscanf(si->Cluster->Leader, "evq-%d", &n), 1);
    printf("cluster: killing evq-%d, the leader of %s\n", n, stream);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "kill -9 $(cat %s/nats-%d.pid)", sdir, n);
    assert_int_equal(system(cmd), 0);
}

static void losing_the_stream_leader_loses_nothing(void **state)
{
    (void)state;
    char u[1024];
    url_with(u, sizeof u, "nats.replicas=3&visibility_timeout_ms=2000");
    /* A cluster just formed may not place three replicas yet: create the
     * stream first, giving it a few seconds. */
    evq_queue *q = NULL;
    int rc = 0;
    for (int64_t end = now_ms() + 15000; now_ms() < end;) {
        if ((rc = evq_queue_open(&q, u, "leader", NULL)) == 0)
            break;
        printf("cluster: %s; again\n", evq_errmsg());
        struct timespec pause = {0, 500 * 1000000};
        nanosleep(&pause, NULL);
    }
    assert_evq_ok(rc);
    evq_queue_close(q);
    run_outage(u, "leader", kill_stream_leader, "leader", false);
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[4], "cluster") == 0) {
        url = argv[1];
        port = argv[2];
        sdir = argv[3];
        const struct CMUnitTest cluster[] = {
            cmocka_unit_test(losing_the_stream_leader_loses_nothing),
        };
        int rc = cmocka_run_group_tests(cluster, NULL, NULL);
        nats_Close();
        return rc;
    }
    if (argc == 5 && strcmp(argv[4], "tls") == 0) {
        url = argv[1];
        port = argv[2];
        sdir = argv[3];
        const struct CMUnitTest tls[] = {
            cmocka_unit_test(tls_verifies_the_server),
        };
        int rc = cmocka_run_group_tests(tls, NULL, NULL);
        nats_Close();
        return rc;
    }
    if (argc != 4) {
        fprintf(stderr,
                "usage: test_nats URL PORT SERVICE_DIR [cluster|tls]\n");
        return 2;
    }
    url = argv[1];
    port = argv[2];
    sdir = argv[3];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(events_published_by_libnats_are_read),
        cmocka_unit_test(junk_goes_to_the_dead_letters),
        cmocka_unit_test(the_server_refuses_oversize_messages),
        cmocka_unit_test(a_retried_publish_is_stored_once),
        cmocka_unit_test(delayed_events_count_their_attempts),
        cmocka_unit_test(long_handlers_keep_their_event),
        cmocka_unit_test(a_killed_consumers_events_come_back_after_ack_wait),
        cmocka_unit_test(a_foreign_stream_is_an_error_naming_the_difference),
        cmocka_unit_test(bad_servers_and_credentials_are_clear_errors),
        cmocka_unit_test(core_mode_delivers_when_the_consumer_keeps_up),
        cmocka_unit_test(a_server_restart_loses_no_accepted_event),
        cmocka_unit_test(
            an_async_stream_across_a_restart_loses_nothing_reported),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    nats_Close();
    return rc;
}
