/*
 * test_serve.c - evq serve through real clients: curl for the API and
 * /metrics (checked by promtool), headless Chromium for the dashboard
 * (--dump-dom and --screenshot, and the DevTools protocol over a pipe to
 * fill and submit the page's own replay form).
 *
 *   test_serve EVQ_TOOL URL [SERVICE_DIR]
 *
 * URL is the queue's backend (sqlite://..., or postgres://... with a
 * password, which nothing served may show); with the postgres service's
 * folder, the server is also stopped and started under evq serve.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>

static const char *tool, *base_url;
static const char *service_dir; /* postgres: pg-stop.sh, pg-start.sh */
static char dir[] = "/tmp/evq-serve-XXXXXX";
static char site[128];     /* http://127.0.0.1:PORT */
static char token_path[256];
static const char token[] = "0123456789-serve-test-token";
static evq_queue *q, *jobs_q;
static evq_events *jobs_events;
static evq_worker *jobs;
static evq_server *srv;
static char ids[3][64]; /* the dead letters, oldest first */
static const char evil[] =
    "<script>document.body.dataset.pwned='1'</script>"
    "<img src=x onerror=\"document.body.dataset.pwned='2'\">";

/* ---- running commands ------------------------------------------------------ */

/* Runs `cmd` with sh, its standard output into out (NUL-terminated,
 * truncated at cap); returns the exit status (-1: not run). */
static int run(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int run(char *out, size_t cap, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = 0, k;
    char sink[4096];
    while ((k = fread(out && n + 1 < cap ? out + n : sink, 1,
                      out && n + 1 < cap ? cap - n - 1 : sizeof sink, p)) > 0)
        if (out && n + 1 < cap)
            n += k;
    if (out)
        out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* An HTTP request with curl: the status, and the body into out. */
static int http(char *out, size_t cap, const char *method, const char *path,
                const char *headers)
{
    char buf[1 << 17];
    int rc = run(buf, sizeof buf,
                 "curl -s -g -X %s %s -w '\\n%%{http_code}' '%s%s'", method,
                 headers ? headers : "", site, path);
    assert_int_equal(rc, 0);
    char *nl = strrchr(buf, '\n');
    assert_non_null(nl);
    int status = atoi(nl + 1);
    *nl = '\0';
    if (out)
        snprintf(out, cap, "%s", buf);
    return status;
}

static json_t *get_json(const char *path)
{
    static char body[1 << 17];
    assert_int_equal(http(body, sizeof body, "GET", path, NULL), 200);
    json_error_t e;
    json_t *j = json_loads(body, 0, &e);
    if (!j)
        fail_msg("%s is not JSON (%s): %.200s", path, e.text, body);
    return j;
}

static void queue_figures(int64_t *depth, int64_t *dead)
{
    struct evq_queue_stats st;
    assert_evq_ok(evq_queue_stats(q, &st));
    *depth = st.depth;
    *dead = st.dead;
}

/* Nothing served may show the password of the URL (postgres runs). */
static void no_password(const char *text)
{
    const char *at = strchr(base_url, '@'), *colon;
    if (!at)
        return;
    colon = memchr(base_url, ':', (size_t)(at - base_url));
    colon = colon && colon[1] == '/' ? memchr(colon + 1, ':', (size_t)(at - colon - 1)) : colon;
    if (!colon)
        return;
    char pw[128];
    snprintf(pw, sizeof pw, "%.*s", (int)(at - colon - 1), colon + 1);
    if (*pw && strstr(text, pw))
        fail_msg("the password shows: %.300s", text);
}

/* ---- headless Chromium ---------------------------------------------------------- */

#define CHROMIUM                                                               \
    "chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage " \
    "--no-first-run --hide-scrollbars --user-data-dir=%s/chromium "

/* A browser driven through the DevTools protocol on fds 3 and 4
 * (--remote-debugging-pipe): messages are JSON, each ended by a NUL. */
typedef struct browser {
    pid_t pid;
    int to, from;
    int next_id;
    char session[128];
    char *buf;
    size_t len, cap;
} browser;

static pid_t browsers[16];
static int n_browsers;

static void browser_open(browser *b)
{
    int in[2], out[2];
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(out), 0);
    memset(b, 0, sizeof *b);
    b->pid = fork();
    assert_true(b->pid >= 0);
    if (b->pid == 0) {
        /* fd 3: what the browser reads; fd 4: what it writes */
        int r = dup(in[0]), w = dup(out[1]);
        dup2(r, 3);
        dup2(w, 4);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        for (int fd = 5; fd < 1024; fd++)
            close(fd);
        char udd[300];
        snprintf(udd, sizeof udd, "--user-data-dir=%s/chromium-cdp%d", dir,
                 n_browsers);
        execlp("chromium", "chromium", "--headless", "--no-sandbox",
               "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--hide-scrollbars", "--remote-debugging-pipe", udd,
               "about:blank", (char *)NULL);
        _exit(127);
    }
    if (n_browsers < 16)
        browsers[n_browsers++] = b->pid;
    close(in[0]);
    close(out[1]);
    b->to = in[1];
    b->from = out[0];
    b->next_id = 1;
}

/* Sends a command (params stolen) and returns its result (the caller
 * decrefs); fails the test on an error or after 60 s. */
static json_t *cdp_try(browser *b, const char *method, json_t *params,
                       bool in_session, char *err, size_t errcap)
{
    int id = b->next_id++;
    json_t *m = json_pack("{si ss so}", "id", id, "method", method, "params",
                          params ? params : json_object());
    if (in_session)
        json_object_set_new(m, "sessionId", json_string(b->session));
    char *text = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    size_t n = strlen(text) + 1; /* the NUL ends the message */
    for (size_t off = 0; off < n;) {
        ssize_t k = write(b->to, text + off, n - off);
        assert_true(k > 0);
        off += (size_t)k;
    }
    free(text);
    int64_t end = now_ms() + 60000;
    for (;;) {
        char *nul = b->len ? memchr(b->buf, '\0', b->len) : NULL;
        if (nul) {
            size_t mlen = (size_t)(nul - b->buf);
            json_t *r = json_loadb(b->buf, mlen, 0, NULL);
            memmove(b->buf, nul + 1, b->len - mlen - 1);
            b->len -= mlen + 1;
            json_t *rid = r ? json_object_get(r, "id") : NULL;
            if (rid && json_integer_value(rid) == id) {
                json_t *e = json_object_get(r, "error");
                if (e) {
                    char *t = json_dumps(e, 0);
                    if (!err)
                        fail_msg("%s: %s", method, t);
                    snprintf(err, errcap, "%s", t);
                    free(t);
                    json_decref(r);
                    return NULL;
                }
                json_t *res = json_incref(json_object_get(r, "result"));
                json_decref(r);
                return res;
            }
            json_decref(r); /* an event */
            continue;
        }
        struct pollfd p = {b->from, POLLIN, 0};
        int left = (int)(end - now_ms());
        if (left <= 0)
            fail_msg("%s: no answer from chromium in 60 s", method);
        if (poll(&p, 1, left) <= 0)
            continue;
        if (b->cap - b->len < 65536) {
            b->cap = b->cap ? b->cap * 2 : 1 << 20;
            b->buf = realloc(b->buf, b->cap);
            assert_non_null(b->buf);
        }
        ssize_t k = read(b->from, b->buf + b->len, b->cap - b->len);
        if (k <= 0)
            fail_msg("%s: chromium closed its pipe", method);
        b->len += (size_t)k;
    }
}

static json_t *cdp(browser *b, const char *method, json_t *params,
                   bool in_session)
{
    return cdp_try(b, method, params, in_session, NULL, 0);
}

/* A new tab at `url`, attached to. */
static void browser_tab(browser *b, const char *url)
{
    json_t *r = cdp(b, "Target.createTarget", json_pack("{ss}", "url", url),
                    false);
    json_t *a = cdp(b, "Target.attachToTarget",
                    json_pack("{sO sb}", "targetId",
                              json_object_get(r, "targetId"), "flatten", 1),
                    false);
    snprintf(b->session, sizeof b->session, "%s",
             json_string_value(json_object_get(a, "sessionId")));
    json_decref(r);
    json_decref(a);
}

/* Evaluates `js` (a promise is awaited) in the tab; returns its value as
 * a string, malloc'd. */
static char *browser_eval(browser *b, const char *js)
{
    json_t *r = NULL;
    char err[512] = "";
    /* while the tab loads its page, the script may land in the blank one
     * being replaced: then again, in the page */
    for (int i = 0; i < 100 && !r; i++) {
        r = cdp_try(b, "Runtime.evaluate",
                    json_pack("{ss sb sb}", "expression", js, "awaitPromise",
                              1, "returnByValue", 1),
                    true, err, sizeof err);
        if (!r && !strstr(err, "context was destroyed") &&
            !strstr(err, "Cannot find"))
            fail_msg("Runtime.evaluate: %s", err);
        if (!r)
            usleep(100000);
    }
    if (!r)
        fail_msg("Runtime.evaluate: %s", err);
    json_t *ex = json_object_get(r, "exceptionDetails");
    if (ex) {
        char *e = json_dumps(ex, 0);
        fail_msg("script failed: %s", e);
    }
    json_t *v = json_object_get(json_object_get(r, "result"), "value");
    char *s = json_is_string(v) ? strdup(json_string_value(v))
                                : json_dumps(v, JSON_ENCODE_ANY);
    json_decref(r);
    return s;
}

static void browser_close(browser *b)
{
    json_decref(cdp(b, "Browser.close", NULL, false));
    close(b->to);
    close(b->from);
    int st;
    waitpid(b->pid, &st, 0);
    for (int i = 0; i < n_browsers; i++)
        if (browsers[i] == b->pid)
            browsers[i] = -1;
    free(b->buf);
}

/* Waits in the page until `cond` (a JS expression) holds, up to 30 s. */
#define WAIT_FOR(cond)                                                         \
    "new Promise((ok, no) => { const t0 = Date.now(); (function p() {"        \
    " try { if (" cond ") return ok('yes'); } catch (e) {}"                    \
    " if (Date.now() - t0 > 30000) return no(new Error('timed out: ' +"       \
    " document.body.innerText.slice(0, 300)));"                                \
    " setTimeout(p, 50); })(); })"

/* ---- the fixture --------------------------------------------------------- */

static int ok_handler(const evq_event *ev, void *arg)
{
    (void)ev;
    (void)arg;
    return 0;
}

static bool all_jobs_done(void *arg)
{
    (void)arg;
    struct evq_worker_stats st;
    evq_worker_stats(jobs, &st);
    return st.succeeded == 50;
}

static evq_event *event(const char *type, json_t *data)
{
    evq_event *e = evq_event_new(type, data);
    assert_non_null(e);
    assert_evq_ok(evq_event_set_attr(e, "source", "/test/serve"));
    return e;
}

static int setup(void **state)
{
    (void)state;
    assert_evq_ok(evq_queue_open(&q, base_url, "orders", NULL));
    /* a queue of its own per run, and no dead letters from before */
    evq_queue *d;
    if (evq_queue_open_dead(&d, q) == 0) {
        evq_msg *m;
        while (evq_dequeue(d, &m, 200) == 0)
            evq_ack(m);
        evq_queue_close(d);
    }
    evq_msg *m;
    while (evq_dequeue(q, &m, 200) == 0)
        evq_ack(m);

    /* three dead letters, oldest first, and one event left ready */
    evq_event *e[4] = {
        event("order.paid", json_pack("{si}", "n", 1)),
        event("order.paid", json_pack("{ss}", "html", evil)),
        event("order.blob", NULL),
        event("order.paid", json_pack("{si}", "n", 4)),
    };
    static const unsigned char blob[] = {0, 1, 2, 0xff, 0xfe};
    assert_evq_ok(evq_event_set_binary(e[2], blob, sizeof blob,
                                       "application/octet-stream"));
    const char *reasons[] = {"card declined", "<b>bold</b> reason",
                             "a binary payload"};
    for (int i = 0; i < 4; i++) {
        char t[40];
        snprintf(t, sizeof t, "2026-01-01T00:00:0%dZ", i);
        assert_evq_ok(evq_event_set_attr(e[i], "time", t));
        assert_evq_ok(evq_enqueue(q, e[i]));
    }
    for (int i = 0; i < 3; i++) {
        assert_evq_ok(evq_dequeue(q, &m, 5000));
        snprintf(ids[i], sizeof ids[i], "%s", evq_event_id(evq_msg_event(m)));
        assert_string_equal(ids[i], evq_event_id(e[i]));
        assert_evq_ok(evq_msg_dead_letter(m, reasons[i]));
    }
    for (int i = 0; i < 4; i++)
        evq_event_free(e[i]);

    /* a worker that ran 50 events, for the worker figures */
    assert_evq_ok(evq_queue_open(&jobs_q, "memory://", "jobs", NULL));
    jobs_events = evq_events_new();
    assert_evq_ok(evq_register_handler(jobs_events, "*", ok_handler, NULL));
    assert_evq_ok(evq_worker_start(&jobs, jobs_q, jobs_events, NULL));
    for (int i = 0; i < 50; i++) {
        evq_event *j = event("job", NULL);
        assert_evq_ok(evq_enqueue(jobs_q, j));
        evq_event_free(j);
    }
    assert_true(eventually(all_jobs_done, NULL, 30000));

    evq_serve_opts o;
    evq_serve_opts_init(&o);
    o.listen = "127.0.0.1:0";
    o.token = token;
    o.sample_ms = 200;
    assert_evq_ok(evq_serve_new(&srv, &o));
    assert_evq_ok(evq_serve_queue(srv, q));
    assert_evq_err(evq_serve_queue(srv, q), EVQ_EEXIST);
    assert_evq_ok(evq_serve_queue(srv, jobs_q));
    assert_evq_ok(evq_serve_worker(srv, jobs, "jobs"));
    assert_evq_ok(evq_serve_start(srv));
    assert_evq_err(evq_serve_start(srv), EVQ_ESTATE);
    assert_evq_err(evq_serve_queue(srv, q), EVQ_ESTATE);
    assert_true(evq_serve_port(srv) > 0);
    snprintf(site, sizeof site, "http://127.0.0.1:%d", evq_serve_port(srv));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < n_browsers; i++) { /* left by a failed test */
        if (browsers[i] > 0 && kill(browsers[i], SIGKILL) == 0)
            waitpid(browsers[i], NULL, 0);
    }
    evq_serve_free(srv);
    evq_worker_free(jobs);
    evq_events_free(jobs_events);
    evq_queue_close(jobs_q);
    evq_queue_close(q);
    return 0;
}

/* ---- the tests ------------------------------------------------------------ */

static void bad_options_are_refused(void **state)
{
    (void)state;
    evq_server *s;
    evq_serve_opts o;
    evq_serve_opts_init(&o);
    o.token = "short";
    assert_evq_err(evq_serve_new(&s, &o), EVQ_EINVAL);
    assert_errmsg_has("at least 16");
    evq_serve_opts_init(&o);
    o.sample_ms = 5;
    assert_evq_err(evq_serve_new(&s, &o), EVQ_EINVAL);
    const char *bad[] = {"nowhere", "127.0.0.1:99999", "127.0.0.1:x",
                         "[::1", "no.such.host.invalid:80", ":", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        evq_serve_opts_init(&o);
        o.listen = bad[i];
        int rc = evq_serve_new(&s, &o);
        if (rc != EVQ_EINVAL || s)
            fail_msg("listen '%s' gave %d", bad[i], rc);
    }
    /* the same worker twice, or a name twice: one series each */
    evq_serve_opts_init(&o);
    assert_evq_ok(evq_serve_new(&s, &o));
    assert_evq_ok(evq_serve_worker(s, jobs, "a"));
    assert_evq_err(evq_serve_worker(s, jobs, "b"), EVQ_EEXIST);
    /* a queue handle of the same name and place: the same series */
    evq_queue *again;
    char url_opts[1024];
    snprintf(url_opts, sizeof url_opts, "%s%sformat=json", base_url,
             strchr(base_url, '?') ? "&" : "?");
    assert_evq_ok(evq_queue_open(&again, url_opts, "orders", NULL));
    assert_evq_ok(evq_serve_queue(s, q));
    assert_evq_err(evq_serve_queue(s, again), EVQ_EEXIST);
    evq_serve_free(s);
    evq_queue_close(again);
    /* the port taken already */
    char taken[64];
    snprintf(taken, sizeof taken, "127.0.0.1:%d", evq_serve_port(srv));
    evq_serve_opts_init(&o);
    o.listen = taken;
    assert_evq_ok(evq_serve_new(&s, &o));
    assert_evq_err(evq_serve_start(s), EVQ_EIO);
    assert_errmsg_has(taken);
    evq_serve_free(s);
}

static void metrics_pass_promtool(void **state)
{
    (void)state;
    static char body[1 << 17];
    assert_int_equal(http(body, sizeof body, "GET", "/metrics", NULL), 200);
    char path[300];
    snprintf(path, sizeof path, "%s/metrics.txt", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(body, f);
    fclose(f);
    char out[4096];
    int rc = run(out, sizeof out, "promtool check metrics < %s 2>&1", path);
    if (rc != 0)
        fail_msg("promtool: %s", out);
    assert_non_null(strstr(body, "evq_queue_dead{queue=\"orders\",backend=\""));
    assert_non_null(strstr(body, "evq_queue_up{queue=\"jobs\",backend=\"memory"
                                 "\",url=\"memory://\"} 1\n"));
    assert_non_null(strstr(body, "evq_worker_succeeded_total{worker=\"jobs\","
                                 "queue=\"jobs\"} 50\n"));
    assert_non_null(strstr(body, "evq_worker_handler_seconds_bucket{worker="
                                 "\"jobs\",queue=\"jobs\",le=\"+Inf\"} 50\n"));
    assert_non_null(strstr(body, "evq_worker_handler_seconds_count{worker="
                                 "\"jobs\",queue=\"jobs\"} 50\n"));
    assert_non_null(strstr(body, "# TYPE evq_worker_handler_seconds "
                                 "histogram\n"));
    /* each family once, with a sample per queue */
    const char *t = strstr(body, "# TYPE evq_queue_depth ");
    assert_non_null(t);
    assert_null(strstr(t + 1, "# TYPE evq_queue_depth "));
    const char *dead = strstr(body, "evq_queue_dead{queue=\"orders\"");
    assert_non_null(dead);
    assert_memory_equal(strchr(dead, '}'), "} 3\n", 4);
    no_password(body);
}

static void the_api_lists_queues_letters_and_workers(void **state)
{
    (void)state;
    json_t *j = get_json("/api/queues");
    json_t *o = json_array_get(json_object_get(j, "queues"), 0);
    assert_string_equal(json_string_value(json_object_get(o, "name")),
                        "orders");
    assert_int_equal(json_integer_value(json_object_get(o, "dead")), 3);
    assert_int_equal(json_integer_value(json_object_get(o, "depth")), 1);
    assert_true(json_is_false(json_object_get(o, "paused")));
    char *text = json_dumps(j, 0);
    no_password(text);
    free(text);
    json_decref(j);

    j = get_json("/api/queues/0/dead");
    assert_int_equal(json_integer_value(json_object_get(j, "total")), 3);
    json_t *ls = json_object_get(j, "letters");
    assert_int_equal(json_array_size(ls), 3);
    for (int i = 0; i < 3; i++) {
        json_t *l = json_array_get(ls, (size_t)i), *ev = json_object_get(l, "event");
        assert_string_equal(json_string_value(json_object_get(ev, "id")),
                            ids[i]);
        assert_non_null(json_object_get(l, "reason"));
    }
    json_t *l1 = json_array_get(ls, 1);
    assert_string_equal(json_string_value(json_object_get(l1, "reason")),
                        "<b>bold</b> reason");
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_object_get(l1, "event"), "data"), "html")),
        evil);
    assert_non_null(json_object_get(
        json_object_get(json_array_get(ls, 2), "event"), "data_base64"));
    json_decref(j);

    /* paged */
    j = get_json("/api/queues/0/dead?offset=1&limit=1");
    ls = json_object_get(j, "letters");
    assert_int_equal(json_array_size(ls), 1);
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_array_get(ls, 0), "event"), "id")),
        ids[1]);
    json_decref(j);

    /* one letter, whole */
    char path[256];
    snprintf(path, sizeof path, "/api/queues/0/letter?id=%s", ids[0]);
    j = get_json(path);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "event"), "id")),
        ids[0]);
    json_decref(j);

    j = get_json("/api/workers");
    json_t *w = json_array_get(json_object_get(j, "workers"), 0);
    assert_string_equal(json_string_value(json_object_get(w, "name")), "jobs");
    assert_int_equal(json_integer_value(json_object_get(w, "succeeded")), 50);
    json_decref(j);

    j = get_json("/api/queues/0/history");
    assert_true(json_array_size(json_object_get(j, "samples")) >= 1);
    json_decref(j);

    /* bad requests get a clear error and a 4xx */
    static const struct {
        const char *method, *path;
        int status;
    } bad[] = {
        {"GET", "/api/queues/9/dead", 404},
        {"GET", "/api/queues/x/dead", 404},
        {"GET", "/api/queues/-1/dead", 404},
        {"GET", "/api/queues/0/nope", 404},
        {"GET", "/nope", 404},
        {"GET", "/api/queues/0/dead?limit=0", 400},
        {"GET", "/api/queues/0/dead?limit=x", 400},
        {"GET", "/api/queues/0/dead?limit=100000", 400},
        {"GET", "/api/queues/0/dead?offset=-1", 400},
        {"GET", "/api/queues/0/letter", 400},
        {"GET", "/api/queues/0/letter?id=no-such-id", 404},
        {"GET", "/api/queues/0/dead/replay?id=x", 405},
        {"DELETE", "/api/queues", 405},
        {"POST", "/metrics", 405},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char body[4096];
        int st = http(body, sizeof body, bad[i].method, bad[i].path, NULL);
        if (st != bad[i].status)
            fail_msg("%s %s: %d, expected %d", bad[i].method, bad[i].path, st,
                     bad[i].status);
        json_t *e = json_loads(body, 0, NULL);
        if (!e || !json_string_value(json_object_get(e, "error")))
            fail_msg("%s %s: no error said: %s", bad[i].method, bad[i].path,
                     body);
        json_decref(e);
    }
}

static void changes_need_the_token_a_post_and_this_origin(void **state)
{
    (void)state;
    char path[256], hdr[512];
    snprintf(path, sizeof path, "/api/queues/0/dead/replay?id=%s", ids[0]);
    static const struct {
        bool with_token; /* the right one, as a Bearer */
        const char *headers;
        int status;
    } refused[] = {
        {false, "", 403},
        {false, "-H 'Authorization: Bearer wrong-token-wrong-token'", 403},
        {false, "-H 'X-Evq-Token: 0123456789-serve-test-tokeX'", 403},
        {false, "-H 'X-Evq-Token: 0123456789-serve-test-token-and-more'", 403},
        {false, "-H 'Authorization: Basic MDEyMzQ1Njc4OQ=='", 403},
        {true, "-H 'Origin: http://evil.example'", 403},
        {true, "-H 'Origin: null'", 403},
        {true, "-H 'Sec-Fetch-Site: cross-site'", 403},
        {true, "-H 'Host: evil.example'", 421},
        {true, "-H 'Host: evil.example:1234'", 421},
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        snprintf(hdr, sizeof hdr, "%s%s%s %s",
                 refused[i].with_token ? "-H 'Authorization: Bearer " : "",
                 refused[i].with_token ? token : "",
                 refused[i].with_token ? "'" : "", refused[i].headers);
        int st = http(NULL, 0, "POST", path, hdr);
        if (st != refused[i].status)
            fail_msg("POST with %s: %d, expected %d", hdr, st,
                     refused[i].status);
    }
    /* a browser's request from another site may not read the API */
    assert_int_equal(http(NULL, 0, "GET", "/api/queues/0/dead",
                          "-H 'Sec-Fetch-Site: cross-site'"),
                     403);
    assert_int_equal(http(NULL, 0, "GET", "/api/queues",
                          "-H 'Sec-Fetch-Site: same-origin'"),
                     200);
    /* a page of another name is refused reading too (DNS rebinding) */
    assert_int_equal(
        http(NULL, 0, "GET", "/api/queues", "-H 'Host: evil.example'"), 421);
    assert_int_equal(
        http(NULL, 0, "GET", "/api/queues", "-H 'Host: localhost:1'"), 200);
    int64_t depth, dead;
    queue_figures(&depth, &dead);
    assert_int_equal(dead, 3); /* nothing changed */
    assert_int_equal(depth, 1);

    /* a server without a token changes nothing */
    evq_server *s;
    evq_serve_opts o;
    evq_serve_opts_init(&o);
    o.listen = "127.0.0.1:0";
    assert_evq_ok(evq_serve_new(&s, &o));
    assert_evq_ok(evq_serve_queue(s, q));
    assert_evq_ok(evq_serve_start(s));
    char cmd_site[128];
    snprintf(cmd_site, sizeof cmd_site, "%s", site);
    snprintf(site, sizeof site, "http://127.0.0.1:%d", evq_serve_port(s));
    snprintf(hdr, sizeof hdr, "-H 'Authorization: Bearer %s'", token);
    int st = http(NULL, 0, "POST", "/api/queues/0/pause", hdr);
    snprintf(site, sizeof site, "%s", cmd_site);
    evq_serve_free(s);
    assert_int_equal(st, 403);
    assert_int_equal(evq_queue_paused(q), 0);
}

static void pause_and_resume_with_the_token(void **state)
{
    (void)state;
    char hdr[256];
    snprintf(hdr, sizeof hdr, "-H 'X-Evq-Token: %s'", token);
    assert_int_equal(http(NULL, 0, "POST", "/api/queues/0/pause", hdr), 200);
    assert_int_equal(evq_queue_paused(q), 1);
    json_t *j = get_json("/api/queues");
    assert_true(json_is_true(json_object_get(
        json_array_get(json_object_get(j, "queues"), 0), "paused")));
    json_decref(j);
    assert_int_equal(http(NULL, 0, "POST", "/api/queues/0/resume", hdr), 200);
    assert_int_equal(evq_queue_paused(q), 0);
}

static void the_dashboard_lists_the_letters_escaped(void **state)
{
    (void)state;
    static char dom[1 << 18];
    int rc = run(dom, sizeof dom,
                 CHROMIUM "--virtual-time-budget=10000 --dump-dom '%s/' "
                          "2>/dev/null",
                 dir, site);
    assert_int_equal(rc, 0);
    if (!strstr(dom, "data-ready=\"1\""))
        fail_msg("the page's script did not finish: %.2000s", dom);
    assert_non_null(strstr(dom, ">orders<"));
    for (int i = 0; i < 3; i++)
        if (!strstr(dom, ids[i]))
            fail_msg("letter %s is not listed", ids[i]);
    assert_non_null(strstr(dom, "card declined"));
    assert_non_null(strstr(dom, "&lt;b&gt;bold&lt;/b&gt; reason"));
    assert_non_null(strstr(dom, "&lt;script&gt;document.body.dataset.pwned"));
    assert_null(strstr(dom, "data-pwned"));
    assert_null(strstr(dom, "<b>bold</b>"));
    no_password(dom);
}

static void a_replay_through_the_page_moves_the_letter_back(void **state)
{
    (void)state;
    browser b;
    browser_open(&b);
    char url[256], js[2048];
    snprintf(url, sizeof url, "%s/", site);
    browser_tab(&b, url);
    free(browser_eval(&b, WAIT_FOR("document.body.dataset.letters === '3'")));

    /* inspecting a letter shows it whole, as text */
    snprintf(js, sizeof js,
             "document.querySelector('li[data-id=\"%s\"] .inspect').click();"
             WAIT_FOR("!document.querySelector('li[data-id=\"%s\"] "
                      ".full').hidden"),
             ids[1], ids[1]);
    free(browser_eval(&b, js));
    snprintf(js, sizeof js,
             "document.querySelector('li[data-id=\"%s\"] .full').textContent",
             ids[1]);
    char *full = browser_eval(&b, js);
    assert_non_null(strstr(full, "document.body.dataset.pwned"));
    assert_non_null(strstr(full, ids[1]));
    free(full);
    char *pwned = browser_eval(&b, "String(document.body.dataset.pwned)");
    assert_string_equal(pwned, "undefined");
    free(pwned);

    /* a wrong token: refused, and said on the page */
    snprintf(js, sizeof js,
             "document.getElementById('token').value = 'not-the-token-at-all';"
             "document.querySelector('li[data-id=\"%s\"] "
             "form[data-action=replay]').requestSubmit();" WAIT_FOR(
                 "document.body.dataset.failed"),
             ids[0]);
    free(browser_eval(&b, js));
    int64_t depth, dead;
    queue_figures(&depth, &dead);
    assert_int_equal(dead, 3);

    snprintf(js, sizeof js,
             "document.getElementById('token').value = '%s';"
             "document.querySelector('li[data-id=\"%s\"] "
             "form[data-action=replay]').requestSubmit();" WAIT_FOR(
                 "document.body.dataset.done === '1' && "
                 "document.body.dataset.letters === '2'"),
             token, ids[0]);
    free(browser_eval(&b, js));
    queue_figures(&depth, &dead);
    assert_int_equal(dead, 2);
    assert_int_equal(depth, 2);
    /* the replayed event is the letter, without its dead-letter marks */
    evq_msg *m;
    assert_evq_ok(evq_dequeue(q, &m, 5000));
    if (!strcmp(evq_event_id(evq_msg_event(m)), ids[0])) {
        assert_null(evq_event_attr(evq_msg_event(m), "evqerror"));
        assert_non_null(evq_event_attr(evq_msg_event(m), "evqreplayed"));
        assert_evq_ok(evq_nack(m, 0));
    } else {
        evq_msg *m2;
        assert_evq_ok(evq_dequeue(q, &m2, 5000));
        assert_string_equal(evq_event_id(evq_msg_event(m2)), ids[0]);
        assert_null(evq_event_attr(evq_msg_event(m2), "evqerror"));
        assert_evq_ok(evq_nack(m2, 0));
        assert_evq_ok(evq_nack(m, 0));
    }

    /* readable on a phone: nothing wider than the screen but the tables'
     * own scrolling boxes */
    json_decref(cdp(&b, "Emulation.setDeviceMetricsOverride",
                    json_pack("{si si sf sb}", "width", 390, "height", 844,
                              "deviceScaleFactor", 2.0, "mobile", 1),
                    true));
    char *w = browser_eval(
        &b, "new Promise(ok => setTimeout(() => ok(String("
            "document.documentElement.scrollWidth <= window.innerWidth)), "
            "300))");
    assert_string_equal(w, "true");
    free(w);
    browser_close(&b);
}

static void a_screenshot_is_not_blank(void **state)
{
    (void)state;
    char png[300], out[512];
    snprintf(png, sizeof png, "%s/dashboard.png", dir);
    int rc = run(out, sizeof out,
                 CHROMIUM "--virtual-time-budget=10000 --window-size=1000,640 "
                          "--screenshot=%s '%s/' 2>/dev/null",
                 dir, png, site);
    assert_int_equal(rc, 0);
    FILE *f = fopen(png, "rb");
    assert_non_null(f);
    static unsigned char bytes[4 << 20];
    size_t n = fread(bytes, 1, sizeof bytes, f);
    fclose(f);
    assert_true(n > 8 && !memcmp(bytes, "\x89PNG", 4));
    /* The pixels, counted by the browser itself: the share that differs
     * from the corner's colour, and how many colours there are. */
    static char b64[(4 << 20) / 3 * 4 + 8];
    static const char al[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)bytes[i] << 16 |
                     (i + 1 < n ? (uint32_t)bytes[i + 1] << 8 : 0) |
                     (i + 2 < n ? bytes[i + 2] : 0);
        b64[o++] = al[v >> 18 & 63];
        b64[o++] = al[v >> 12 & 63];
        b64[o++] = i + 1 < n ? al[v >> 6 & 63] : '=';
        b64[o++] = i + 2 < n ? al[v & 63] : '=';
    }
    b64[o] = '\0';
    static char js[sizeof b64 + 1024];
    snprintf(js, sizeof js,
             "new Promise((ok, no) => { const i = new Image();"
             " i.onerror = () => no(new Error('not an image'));"
             " i.onload = () => { const c = document.createElement('canvas');"
             " c.width = i.width; c.height = i.height;"
             " const g = c.getContext('2d'); g.drawImage(i, 0, 0);"
             " const d = g.getImageData(0, 0, c.width, c.height).data;"
             " let differ = 0; const colours = new Set();"
             " for (let k = 0; k < d.length; k += 4) {"
             "  if (d[k] !== d[0] || d[k+1] !== d[1] || d[k+2] !== d[2])"
             "   differ++;"
             "  if (colours.size < 1000) colours.add(d[k] << 16 | d[k+1] << 8 |"
             " d[k+2]); }"
             " ok(JSON.stringify({w: c.width, h: c.height, differ,"
             " colours: colours.size})); };"
             " i.src = 'data:image/png;base64,%s'; })",
             b64);
    browser b;
    browser_open(&b);
    browser_tab(&b, "about:blank");
    char *r = browser_eval(&b, js);
    browser_close(&b);
    json_t *j = json_loads(r, 0, NULL);
    assert_non_null(j);
    long w = (long)json_integer_value(json_object_get(j, "w")),
         h = (long)json_integer_value(json_object_get(j, "h")),
         differ = (long)json_integer_value(json_object_get(j, "differ")),
         colours = (long)json_integer_value(json_object_get(j, "colours"));
    json_decref(j);
    if (w < 500 || differ * 50 < w * h || colours < 20)
        fail_msg("the screenshot looks blank: %s", r);
    free(r);
    /* EVQ_SCREENSHOT=docs/dashboard.png keeps it, for the README */
    const char *keep = getenv("EVQ_SCREENSHOT");
    if (keep && *keep)
        assert_int_equal(run(NULL, 0, "cp '%s' '%s'", png, keep), 0);
}

static void the_tool_serves_and_stops_on_sigterm(void **state)
{
    (void)state;
    char target[1024], outp[300], errp[300];
    snprintf(target, sizeof target, "%s#orders", base_url);
    snprintf(outp, sizeof outp, "%s/tool.out", dir);
    snprintf(errp, sizeof errp, "%s/tool.err", dir);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, outp, O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    posix_spawn_file_actions_addopen(&fa, 2, errp, O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    char *args[] = {(char *)tool, "serve", target, "--listen", "127.0.0.1:0",
                    "--token-file", token_path, NULL};
    pid_t pid;
    extern char **environ;
    assert_int_equal(posix_spawn(&pid, tool, &fa, NULL, args, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    char line[256] = "";
    const char *path = outp;
    int64_t end = now_ms() + 30000;
    while (!*line && now_ms() < end) {
        FILE *f = fopen(path, "r");
        if (f) {
            if (!fgets(line, sizeof line, f))
                line[0] = '\0';
            fclose(f);
        }
        if (!*line)
            usleep(20000);
    }
    const char *u = strstr(line, "\"url\":\"http://127.0.0.1:");
    if (!u)
        fail_msg("evq serve said no url: '%s'", line);
    char saved[128];
    snprintf(saved, sizeof saved, "%s", site);
    snprintf(site, sizeof site, "http://127.0.0.1:%d",
             atoi(u + strlen("\"url\":\"http://127.0.0.1:")));
    json_t *j = get_json("/api/queues");
    json_t *o = json_array_get(json_object_get(j, "queues"), 0);
    assert_int_equal(json_integer_value(json_object_get(o, "dead")), 2);
    char *text = json_dumps(j, 0);
    no_password(text);
    free(text);
    json_decref(j);
    char body[1 << 16];
    assert_int_equal(http(body, sizeof body, "GET", "/metrics", NULL), 200);
    no_password(body);
    /* the token from the file works; purging the last letter */
    char hdr[256], p[256];
    snprintf(hdr, sizeof hdr, "-H 'Authorization: Bearer %s'", token);
    snprintf(p, sizeof p, "/api/queues/0/dead/purge?id=%s", ids[2]);
    assert_int_equal(http(body, sizeof body, "POST", p, hdr), 200);
    assert_non_null(strstr(body, "\"purged\":1"));
    assert_int_equal(http(body, sizeof body, "POST", p, hdr), 404);
    snprintf(site, sizeof site, "%s", saved);
    int64_t depth, dead;
    queue_figures(&depth, &dead);
    assert_int_equal(dead, 1);

    assert_int_equal(kill(pid, SIGTERM), 0);
    int st = -1;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);

    /* bad arguments: a usage error, exit 2 */
    assert_int_equal(run(NULL, 0, "%s serve 2>/dev/null", tool), 2);
    assert_int_equal(run(NULL, 0, "%s serve '%s' 2>/dev/null", tool, base_url),
                     2);
    assert_int_equal(run(NULL, 0, "%s serve '%s#,' 2>/dev/null", tool,
                         base_url),
                     2);
    assert_int_equal(run(NULL, 0,
                         "%s serve '%s#orders' --listen nowhere 2>/dev/null",
                         tool, base_url),
                     1);
    assert_int_equal(run(NULL, 0,
                         "%s serve '%s#orders' --token-file /nonexistent "
                         "2>/dev/null",
                         tool, base_url),
                     1);
    assert_int_equal(run(NULL, 0,
                         "%s serve 'sqlite:///nonexistent/dir/x.db#q' "
                         "--listen 127.0.0.1:0 2>/dev/null",
                         tool),
                     1);
}

/* Takes every ready event of the queue into its dead letters; returns how
 * many. */
static int dead_letter_all_ready(void)
{
    evq_msg *m;
    int n = 0;
    while (evq_dequeue(q, &m, 500) == 0) {
        assert_evq_ok(evq_msg_dead_letter(m, "sent back by the test"));
        n++;
    }
    return n;
}

/* The orders queue's pause or resume form in the page's table of queues,
 * and the dead-letter section's form for every letter. */
#define ROW_FORM(action)                                                       \
    "document.querySelector('#queues tr[data-id=\"0\"] "                     \
    "form[data-action=" action "]')"
#define ALL_FORM(action)                                                       \
    "document.querySelector('#dead-section form[data-all=\"1\"]"             \
    "[data-action=" action "]')"

/* The page's pause/resume button, and its "Replay all" and "Purge all"
 * (which asks first: a "no" sends nothing). */
static void the_page_pauses_and_settles_every_letter(void **state)
{
    (void)state;
    int64_t depth, dead;
    queue_figures(&depth, &dead);
    assert_int_equal(dead, 1); /* ids[1], left by the tests before */
    assert_int_equal(dead_letter_all_ready(), (int)depth);
    queue_figures(&depth, &dead);
    assert_int_equal(depth, 0);
    int64_t letters = dead;
    assert_true(letters >= 3);

    browser b;
    browser_open(&b);
    char url[256], js[2048], want[64];
    snprintf(url, sizeof url, "%s/", site);
    browser_tab(&b, url);
    snprintf(want, sizeof want, "%" PRId64, letters);
    snprintf(js, sizeof js,
             WAIT_FOR("document.body.dataset.letters === '%s'"), want);
    free(browser_eval(&b, js));

    /* pause, then resume, with the button in the queue's row */
    snprintf(js, sizeof js,
             "document.getElementById('token').value = '%s';"
             ROW_FORM("pause") ".requestSubmit();" WAIT_FOR(
                 ROW_FORM("resume")),
             token);
    free(browser_eval(&b, js));
    assert_int_equal(evq_queue_paused(q), 1);
    free(browser_eval(
        &b, ROW_FORM("resume") ".requestSubmit();" WAIT_FOR(
                ROW_FORM("pause"))));
    assert_int_equal(evq_queue_paused(q), 0);

    /* "Replay all": every letter back in the queue */
    free(browser_eval(
        &b, ALL_FORM("replay") ".requestSubmit();" WAIT_FOR(
                "document.body.dataset.letters === '0'")));
    queue_figures(&depth, &dead);
    assert_int_equal(dead, 0);
    assert_int_equal(depth, letters);

    /* "Purge all", answered "no": nothing is sent (the page sees the
     * letters on its own next refresh) */
    assert_int_equal(dead_letter_all_ready(), (int)letters);
    snprintf(js, sizeof js,
             WAIT_FOR("document.body.dataset.letters === '%s'"), want);
    free(browser_eval(&b, js));
    char *said = browser_eval(
        &b, "window.confirm = () => false;"
            ALL_FORM("purge") ".requestSubmit();"
            "new Promise(ok => setTimeout(() => "
            "ok(String(document.body.dataset.done)), 500))");
    assert_string_equal(said, "3"); /* pause, resume, replay: no more */
    free(said);
    queue_figures(&depth, &dead);
    assert_int_equal(dead, letters);

    /* answered "yes": every letter gone, none back in the queue */
    free(browser_eval(
        &b, "window.confirm = () => true;"
            ALL_FORM("purge") ".requestSubmit();" WAIT_FOR(
                "document.body.dataset.letters === '0'")));
    queue_figures(&depth, &dead);
    assert_int_equal(dead, 0);
    assert_int_equal(depth, 0);
    browser_close(&b);
}

/* The database stopped under the server: /metrics says evq_queue_up 0
 * and the API the error, then both recover once it is back. */
static void a_server_away_reads_as_down_then_back(void **state)
{
    (void)state;
    char body[1 << 16];
    assert_int_equal(run(NULL, 0, "sh %s/pg-stop.sh >/dev/null 2>&1",
                         service_dir),
                     0);
    int st = http(body, sizeof body, "GET", "/metrics", NULL);
    int st2 = 0;
    char api[1 << 16] = "";
    if (st == 200)
        st2 = http(api, sizeof api, "GET", "/api/queues", NULL);
    assert_int_equal(run(NULL, 0, "sh %s/pg-start.sh >/dev/null 2>&1",
                         service_dir),
                     0);
    assert_int_equal(st, 200);
    assert_non_null(strstr(body, "evq_queue_up{queue=\"orders\""));
    assert_non_null(strstr(strstr(body, "evq_queue_up{queue=\"orders\""),
                           "} 0\n"));
    assert_null(strstr(body, "evq_queue_depth{queue=\"orders\""));
    assert_int_equal(st2, 200);
    assert_non_null(strstr(api, "\"error\""));
    no_password(body);
    no_password(api);
    /* back: the handle reconnects on its next call */
    int64_t end = now_ms() + 30000;
    bool up = false;
    while (!up && now_ms() < end) {
        assert_int_equal(http(body, sizeof body, "GET", "/metrics", NULL),
                         200);
        const char *u = strstr(body, "evq_queue_up{queue=\"orders\"");
        up = u && strstr(u, "} 1\n") == strchr(u, '}');
        if (!up)
            usleep(200000);
    }
    assert_true(up);
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: test_serve EVQ_TOOL URL [SERVICE_DIR]\n");
        return 2;
    }
    tool = argv[1];
    base_url = argv[2];
    service_dir = argc == 4 ? argv[3] : NULL;
    if (!mkdtemp(dir))
        return 1;
    snprintf(token_path, sizeof token_path, "%s/token", dir);
    FILE *f = fopen(token_path, "w");
    if (!f)
        return 1;
    fprintf(f, "%s\n", token);
    fclose(f);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_options_are_refused),
        cmocka_unit_test(metrics_pass_promtool),
        cmocka_unit_test(the_api_lists_queues_letters_and_workers),
        cmocka_unit_test(changes_need_the_token_a_post_and_this_origin),
        cmocka_unit_test(pause_and_resume_with_the_token),
        cmocka_unit_test(the_dashboard_lists_the_letters_escaped),
        cmocka_unit_test(a_replay_through_the_page_moves_the_letter_back),
        cmocka_unit_test(a_screenshot_is_not_blank),
        cmocka_unit_test(the_tool_serves_and_stops_on_sigterm),
        cmocka_unit_test(the_page_pauses_and_settles_every_letter),
        /* last: only with a server to stop */
        cmocka_unit_test(a_server_away_reads_as_down_then_back),
    };
    if (getenv("EVQ_TEST_FILTER"))
        cmocka_set_test_filter(getenv("EVQ_TEST_FILTER"));
    size_t n = sizeof tests / sizeof *tests - (service_dir ? 0 : 1);
    int rc = _cmocka_run_group_tests("test_serve", tests, n, setup, teardown);
    run(NULL, 0, "rm -rf %s", dir);
    return rc;
}
