/*
 * evq - the command-line tool: produce, consume, stats, dead letters, demo,
 * bench.  Every command takes --help.  Exit codes: 0 success, 1 failure (a
 * queue error, or input lines that were rejected), 2 usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <evq.h>

#include "../src/internal.h" /* evq__json_load; the bench's clock */

#define EXIT_USAGE  2
#define DEFAULT_URL "sqlite://evq.db"

static const char *prog = "evq";

static int fail(const char *what, int rc)
{
    fprintf(stderr, "%s: %s: %s (%s)\n", prog, what, evq_errmsg(),
            evq_strerror(rc));
    return EXIT_FAILURE;
}

static int usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s %s: ", prog, cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s %s --help'.\n", prog, cmd);
    return EXIT_USAGE;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Parses a whole decimal number in [min, max]. */
static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!s[0] || *end || errno || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* -o key=value, collected into an evq_opts. */
static int add_opt(evq_opts **o, const char *cmd, const char *kv)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv)
        return usage_error(cmd, "option '%s' is not key=value", kv);
    if (!*o && !(*o = evq_opts_new()))
        return fail("options", EVQ_ENOMEM);
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)(eq - kv), kv);
    int rc = evq_opts_set(*o, key, eq + 1);
    return rc ? fail("options", rc) : 0;
}

/* The flags every command shares: -o KEY=VALUE and --help, and unknown
 * ones.  Sets *done when the command must return the result now. */
static int common_flag(int c, const char *cmd, const char *help,
                       evq_opts **opts, bool *done)
{
    *done = true;
    switch (c) {
    case 'o': {
        int rc = add_opt(opts, cmd, optarg);
        *done = rc != 0;
        return rc;
    }
    case 'h':
        fputs(help, stdout);
        return 0;
    default:
        return usage_error(cmd, "%s", "bad arguments");
    }
}

#define COMMON_FLAGS(cmd, help)                                                \
    default: {                                                                 \
        bool done_;                                                            \
        int r_ = common_flag(c, cmd, help, &opts, &done_);                     \
        if (done_) {                                                           \
            evq_opts_free(opts);                                               \
            return r_;                                                         \
        }                                                                      \
        break;                                                                 \
    }

/* For commands that only look: nothing is created (create=false), and a
 * missing queue is an error, unless -o create=... says otherwise. */
static int read_only(evq_opts **o)
{
    if (!*o && !(*o = evq_opts_new()))
        return fail("options", EVQ_ENOMEM);
    if (!evq_opts_get(*o, "create"))
        evq_opts_set(*o, "create", "false");
    return 0;
}

/* Opens URL QUEUE with the -o options, which it frees; prints why on
 * failure and returns the exit status (0 on success). */
static int open_queue(const char *url, const char *name, evq_opts *opts,
                      evq_queue **q)
{
    int rc = evq_queue_open(q, url, name, opts);
    evq_opts_free(opts);
    return rc ? fail("open", rc) : 0;
}

/* Signals.  SIGINT and SIGTERM are blocked in main, before any command
 * opens a queue (client libraries start their threads then, and those
 * inherit the mask, so no thread of theirs can take a signal's default
 * action), and a thread of the tool's own waits for them.  The first one
 * interrupts the queue the command registered (catch_signals): the command
 * ends cleanly, settling or handing back what it holds, and exits 0, as
 * systemd expects of a stopped service.  A command that registered none,
 * and a second signal, end the process at once with 128 + the signal's
 * number.  SIGPIPE is ignored: a closed output is a write error that
 * commands handle. */
static pthread_mutex_t signal_mu = PTHREAD_MUTEX_INITIALIZER;
static evq_queue *signal_target; /* under signal_mu */
static atomic_bool signalled;

static void *signal_thread(void *arg)
{
    sigset_t *set = arg;
    int sig;
    while (sigwait(set, &sig) == 0) {
        pthread_mutex_lock(&signal_mu);
        if (!signal_target || atomic_exchange(&signalled, true))
            _exit(128 + sig);
        evq_queue_interrupt(signal_target);
        pthread_mutex_unlock(&signal_mu);
    }
    return NULL;
}

static void signals_init(void)
{
    static sigset_t set;
    pthread_t t;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (pthread_create(&t, NULL, signal_thread, &set) == 0)
        pthread_detach(t);
    else
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* Has the first SIGINT or SIGTERM interrupt `q` (NULL: nothing, so a
 * signal ends the process).  Interrupts q at once if one came already. */
static void catch_signals(evq_queue *q)
{
    pthread_mutex_lock(&signal_mu);
    signal_target = q;
    if (q && atomic_load(&signalled))
        evq_queue_interrupt(q);
    pthread_mutex_unlock(&signal_mu);
}

/* Writes `ev` as one JSON line and flushes it; *bytes (may be NULL) is
 * the line's length. */
static int print_event_n(FILE *f, const evq_event *ev, size_t *bytes)
{
    unsigned char *buf;
    size_t len;
    int rc = evq_event_encode(ev, "json", NULL, &buf, &len);
    if (rc)
        return rc;
    if (bytes)
        *bytes = len + 1;
    fwrite(buf, 1, len, f);
    fputc('\n', f);
    free(buf);
    if (fflush(f) != 0 || ferror(f))
        return EVQ_EIO; /* errno says why (EPIPE: the reader is gone) */
    return 0;
}

static int print_event(FILE *f, const evq_event *ev)
{
    return print_event_n(f, ev, NULL);
}

/* ---- produce ------------------------------------------------------------ */

static const char produce_help[] =
    "usage: evq produce URL QUEUE --type TYPE [--data JSON] [options]\n"
    "       evq produce URL QUEUE [-] [options] < events.jsonl\n"
    "\n"
    "Enqueues one event built from the flags, or, without --type, one event\n"
    "per line of standard input: a CloudEvents JSON object (with\n"
    "specversion), or {\"type\": ..., \"data\": ...} with optional source,\n"
    "subject and extension attributes ('-' names standard input too).  Each\n"
    "rejected line is reported with its number; the valid ones are still\n"
    "enqueued.  Lines stream through evq_enqueue_async: the tool reads on\n"
    "while earlier lines are on their way, and counts a line enqueued once\n"
    "the queue reported it stored.  When the queue fails (a server away),\n"
    "the lines it refused are tried again with growing pauses for up to\n"
    "--retry-ms (so they may land after later lines); if one still fails,\n"
    "the tool stops reading, says at which line, and how many lines it did\n"
    "not read.  Exit status 1 if any line was not enqueued.\n"
    "\n"
    "  --type TYPE       event type\n"
    "  --data JSON       payload (any JSON value)\n"
    "  --source S        source attribute\n"
    "  --subject S       subject attribute\n"
    "  --attr K=V        extension attribute (repeatable)\n"
    "  --delay MS        deliver no sooner than MS milliseconds from now\n"
    "  --retry-ms MS     how long to retry a failing enqueue (default 60000;\n"
    "                    0: give up at once)\n"
    "  -o KEY=VALUE      queue option (repeatable; see 'evq options SCHEME')\n"
    "\n"
    "Prints the id of each event enqueued from flags.  memory:// queues live\n"
    "in this process: what is enqueued there is gone when it ends (a\n"
    "warning says so).  Exit status: 0 all enqueued, 1 a line was rejected\n"
    "or the queue failed, 2 usage error.\n";

static int set_attrs_from_object(evq_event *ev, json_t *obj, char *why,
                                 size_t whylen)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        if (strcmp(k, "type") == 0 || strcmp(k, "data") == 0)
            continue;
        if (!json_is_string(v)) {
            snprintf(why, whylen, "attribute '%s' must be a string", k);
            return EVQ_EINVAL;
        }
        int rc = evq_event_set_attr(ev, k, json_string_value(v));
        if (rc) {
            snprintf(why, whylen, "%s", evq_errmsg());
            return rc;
        }
    }
    return 0;
}

/* Builds an event from one input line; NULL with `why` filled on bad input. */
static evq_event *event_from_line(const char *line, size_t len, char *why,
                                  size_t whylen)
{
    json_error_t jerr;
    json_t *obj = evq__json_load(line, len, false, &jerr); /* the library's */
    evq_event *ev = NULL;

    if (!obj) {
        snprintf(why, whylen, "invalid JSON at column %d: %s", jerr.column,
                 jerr.text);
        return NULL;
    }
    if (!json_is_object(obj)) {
        snprintf(why, whylen, "not a JSON object");
    } else if (json_object_get(obj, "specversion")) {
        int rc = evq_event_decode(&ev, "json", line, len, NULL);
        if (rc)
            snprintf(why, whylen, "%s", evq_errmsg());
    } else {
        json_t *type = json_object_get(obj, "type");
        if (!json_is_string(type)) {
            snprintf(why, whylen, "needs a string \"type\" member");
        } else {
            json_t *data = json_object_get(obj, "data");
            ev = evq_event_new(json_string_value(type),
                               data ? json_incref(data) : NULL);
            if (!ev)
                snprintf(why, whylen, "%s", evq_errmsg());
            else if (set_attrs_from_object(ev, obj, why, whylen)) {
                evq_event_free(ev);
                ev = NULL;
            }
        }
    }
    json_decref(obj);
    return ev;
}

/* Failures the queue may recover from (a server away, a lock held). */
static bool retriable(int rc)
{
    return rc == EVQ_ECONN || rc == EVQ_EIO || rc == EVQ_EBUSY ||
           rc == EVQ_ETIMEDOUT;
}

/* Lines of standard input stream through evq_enqueue_async.  Each line's
 * event is kept until its report: a failure the queue may recover from
 * puts it on the retry list, which the reading thread sends again after a
 * growing pause (0.1 s doubling to 5 s) for up to --retry-ms from that
 * line's first failure; then the tool stops reading and names the line. */
struct producing;
struct pline {
    struct producing *p;
    struct pline *next; /* on the retry list */
    long lineno;
    evq_event *ev;
    int64_t first_fail_ns; /* 0: has not failed */
};

struct producing {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct pline *retry; /* under mu */
    long in_flight, ok, bad;
    long retry_ms, delay;
    bool told;      /* the current outage was reported */
    long stop_line; /* the first line given up on (0: none) */
    int stop_rc;
    char stop_msg[512];
};

static void line_done(const char *id, int rc, void *arg)
{
    (void)id;
    struct pline *l = arg;
    struct producing *p = l->p;
    int64_t now = mono_ns();
    bool keep = false;
    pthread_mutex_lock(&p->mu);
    if (rc == 0) {
        p->ok++;
        if (l->first_fail_ns)
            fprintf(stderr, "%s produce: line %ld: enqueued after all\n",
                    prog, l->lineno);
        p->told = false;
    } else if (retriable(rc) && p->retry_ms > 0 &&
               (!l->first_fail_ns ||
                now - l->first_fail_ns < p->retry_ms * 1000000LL)) {
        if (!p->told)
            fprintf(stderr,
                    "%s produce: line %ld: %s: %s; trying again for up to "
                    "%ld ms\n",
                    prog, l->lineno, evq_strerror(rc), evq_errmsg(),
                    p->retry_ms);
        p->told = true;
        if (!l->first_fail_ns)
            l->first_fail_ns = now;
        l->next = p->retry;
        p->retry = l;
        keep = true;
    } else if (retriable(rc)) { /* the queue did not recover in time */
        if (!p->stop_line || l->lineno < p->stop_line) {
            p->stop_line = l->lineno;
            p->stop_rc = rc;
            snprintf(p->stop_msg, sizeof p->stop_msg, "%s", evq_errmsg());
        }
        p->bad++;
    } else {
        fprintf(stderr, "%s produce: line %ld: %s: %s\n", prog, l->lineno,
                evq_strerror(rc), evq_errmsg());
        p->bad++;
    }
    if (!keep)
        p->in_flight--;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (!keep) {
        evq_event_free(l->ev);
        free(l);
    }
}

/* Hands l to the pipeline; a refusal is reported like a failure. */
static void line_send(evq_queue *q, struct pline *l)
{
    int rc = evq_enqueue_async(q, l->ev, l->p->delay, line_done, l);
    if (rc)
        line_done(NULL, rc, l);
}

/* Sends the retry list again after a pause that grows while the queue
 * fails; `wait`: also waits for a report when there is nothing to retry. */
static void retry_due(evq_queue *q, struct producing *p, long *pause_ms,
                      bool wait)
{
    pthread_mutex_lock(&p->mu);
    if (!p->retry && wait && p->in_flight > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    struct pline *list = p->retry;
    p->retry = NULL;
    if (!p->told)
        *pause_ms = 100;
    pthread_mutex_unlock(&p->mu);
    if (!list)
        return;
    struct timespec ts = {*pause_ms / 1000, (*pause_ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
    *pause_ms = *pause_ms < 2500 ? *pause_ms * 2 : 5000;
    /* oldest line first: the list was built newest first */
    struct pline *rev = NULL;
    while (list) {
        struct pline *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    for (struct pline *l = rev, *next; l; l = next) {
        next = l->next;
        line_send(q, l);
    }
}

/* The event --type, --data, --source, --subject and --attr K=V describe,
 * into *out.  0, EXIT_USAGE (said: --data not JSON, an --attr not K=V), or
 * EXIT_FAILURE (said: an attribute refused). */
static int event_from_flags(const char *cmd, const char *type,
                            const char *data, const char *source,
                            const char *subject, const char *const *attrs,
                            int nattrs, evq_event **out)
{
    json_t *payload = NULL;
    *out = NULL;
    if (data) {
        json_error_t jerr;
        if (!(payload = json_loads(data, JSON_DECODE_ANY, &jerr))) {
            fprintf(stderr, "%s %s: --data is not JSON: %s\n", prog, cmd,
                    jerr.text);
            return EXIT_USAGE;
        }
    }
    evq_event *ev = evq_event_new(type, payload);
    int rc = ev ? 0 : EVQ_EINVAL;
    if (!rc && source)
        rc = evq_event_set_attr(ev, "source", source);
    if (!rc && subject)
        rc = evq_event_set_attr(ev, "subject", subject);
    for (int i = 0; !rc && i < nattrs; i++) {
        char k[64];
        const char *eq = strchr(attrs[i], '=');
        if (!eq) {
            fprintf(stderr, "%s %s: --attr '%s' is not K=V\n", prog, cmd,
                    attrs[i]);
            evq_event_free(ev);
            return EXIT_USAGE;
        }
        snprintf(k, sizeof k, "%.*s", (int)(eq - attrs[i]), attrs[i]);
        rc = evq_event_set_attr(ev, k, eq + 1);
    }
    if (rc) {
        evq_event_free(ev);
        return fail(cmd, rc);
    }
    *out = ev;
    return 0;
}

static int cmd_produce(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"type", required_argument, NULL, 't'},
        {"data", required_argument, NULL, 'd'},
        {"source", required_argument, NULL, 's'},
        {"subject", required_argument, NULL, 'S'},
        {"attr", required_argument, NULL, 'a'},
        {"delay", required_argument, NULL, 'D'},
        {"retry-ms", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long retry_ms = 60000;
    const char *type = NULL, *data = NULL, *source = NULL, *subject = NULL;
    const char *attrs[64];
    int nattrs = 0, c, rc;
    long delay = 0;
    evq_opts *opts = NULL;

    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 't':
            type = optarg;
            break;
        case 'd':
            data = optarg;
            break;
        case 's':
            source = optarg;
            break;
        case 'S':
            subject = optarg;
            break;
        case 'a':
            if (nattrs == 64)
                return usage_error("produce", "%s", "too many --attr");
            attrs[nattrs++] = optarg;
            break;
        case 'D':
            if (!parse_long(optarg, 0, 365L * 86400 * 1000, &delay))
                return usage_error("produce", "bad --delay '%s'", optarg);
            break;
        case 'R':
            if (!parse_long(optarg, 0, 86400L * 1000, &retry_ms))
                return usage_error("produce", "bad --retry-ms '%s'", optarg);
            break;
            COMMON_FLAGS("produce", produce_help)
        }
    }
    /* A last "-" names standard input. */
    if (argc - optind == 3 && strcmp(argv[optind + 2], "-") == 0 && !type)
        argc--;
    if (argc - optind != 2)
        return usage_error("produce", "%s",
                           argc - optind == 3 && type
                               ? "'-' (standard input) and --type exclude "
                                 "each other"
                               : "needs URL and QUEUE");
    if (!type && (data || source || subject || nattrs))
        return usage_error(
            "produce", "%s",
            "--data, --source, --subject and --attr need --type");

    evq_queue *q;
    if ((rc = open_queue(argv[optind], argv[optind + 1], opts, &q)))
        return rc;
    int status = 0;
    if (strcmp(evq_queue_scheme(q), "memory") == 0)
        fprintf(stderr,
                "%s produce: warning: a memory:// queue lives in this "
                "process; its events are gone when the tool ends\n",
                prog);

    if (type) {
        evq_event *ev;
        status = event_from_flags("produce", type, data, source, subject,
                                  attrs, nattrs, &ev);
        if (!status) {
            if ((rc = evq_enqueue_delayed(q, ev, delay)) != 0)
                status = fail("produce", rc);
            else
                printf("%s\n", evq_event_id(ev));
        }
        evq_event_free(ev);
        evq_queue_close(q);
        return status;
    }

    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0, pause_ms = 100;
    struct producing p = {.mu = PTHREAD_MUTEX_INITIALIZER,
                          .cv = PTHREAD_COND_INITIALIZER,
                          .retry_ms = retry_ms,
                          .delay = delay};
    for (;;) {
        retry_due(q, &p, &pause_ms, false);
        pthread_mutex_lock(&p.mu);
        bool stop = p.stop_line != 0;
        pthread_mutex_unlock(&p.mu);
        if (stop || (len = getline(&line, &cap, stdin)) == -1)
            break;
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        char why[512];
        evq_event *ev = event_from_line(line, (size_t)len, why, sizeof why);
        struct pline *l = ev ? calloc(1, sizeof *l) : NULL;
        if (!l) {
            fprintf(stderr, "%s produce: line %ld: %s\n", prog, lineno,
                    ev ? "out of memory" : why);
            evq_event_free(ev);
            pthread_mutex_lock(&p.mu);
            p.bad++;
            pthread_mutex_unlock(&p.mu);
            continue;
        }
        *l = (struct pline){.p = &p, .lineno = lineno, .ev = ev};
        pthread_mutex_lock(&p.mu);
        p.in_flight++;
        pthread_mutex_unlock(&p.mu);
        line_send(q, l);
    }
    /* what is on its way: its reports, and retries until they end */
    for (;;) {
        pthread_mutex_lock(&p.mu);
        bool busy = p.in_flight > 0;
        pthread_mutex_unlock(&p.mu);
        if (!busy)
            break;
        retry_due(q, &p, &pause_ms, true);
    }
    if (p.stop_line) {
        long unread = 0;
        struct stat st;
        bool file = fstat(STDIN_FILENO, &st) == 0 && S_ISREG(st.st_mode);
        while (file && getline(&line, &cap, stdin) != -1)
            unread++;
        fprintf(stderr,
                "%s produce: stopped at line %ld (not enqueued): %s: %s; ",
                prog, p.stop_line, evq_strerror(p.stop_rc), p.stop_msg);
        if (file)
            fprintf(stderr, "%ld line%s after it not read\n", unread,
                    unread == 1 ? "" : "s");
        else
            fprintf(stderr, "the lines after it were not read\n");
    }
    free(line);
    evq_queue_close(q);
    fprintf(stderr, "%s produce: enqueued %ld event%s, rejected %ld line%s\n",
            prog, p.ok, p.ok == 1 ? "" : "s", p.bad, p.bad == 1 ? "" : "s");
    return p.bad ? EXIT_FAILURE : 0;
}

/* ---- consume ------------------------------------------------------------- */

static const char consume_help[] =
    "usage: evq consume URL QUEUE [--count N] [--timeout S] [--ack WHEN]\n"
    "                             [--no-ack]\n"
    "\n"
    "Prints each event as one CloudEvents JSON line and acknowledges it only\n"
    "once its line is out of the tool's hands, so a consumer killed at any\n"
    "moment loses nothing (the events in hand are delivered again).\n"
    "\n"
    "  --count N         stop after N events\n"
    "  --timeout S       stop after S seconds without an event (default: "
    "wait)\n"
    "  --ack WHEN        read (default): into a pipe, an event is acked once\n"
    "                    the reader has read its line from the pipe (into a\n"
    "                    file or terminal, once written);\n"
    "                    after-read: one line at a time, each written only\n"
    "                    after the reader read the one before (slower);\n"
    "                    write: once written and flushed (fastest)\n"
    "  --no-ack          print without acknowledging; events are handed back\n"
    "                    when the command ends\n"
    "  -o KEY=VALUE      queue option (repeatable)\n"
    "\n"
    "Closed pipes ('| head -1'): the pipe is shrunk to one page, and when its\n"
    "reader goes away, the event being written and every event whose line\n"
    "it had not read are handed back at once (nacked without delay); the\n"
    "tool says how many on stderr and exits 0.  What costs events is a\n"
    "reader that reads lines and drops them unused: head reads up to a page\n"
    "(4 KiB) and prints one line, so with --ack read at most a page of\n"
    "lines is acked unread; with --ack after-read none is; with --ack write,\n"
    "up to the pipe's whole buffer.\n"
    "\n"
    "Slow readers: an event is leased to this consumer for the queue's\n"
    "visibility_timeout_ms (sqlite, redis, nats).  An event whose line waits\n"
    "in the pipe past its lease is delivered to another consumer too, and\n"
    "its ack here is then refused (a warning on stderr; the event comes\n"
    "again).  Raise the timeout (-o visibility_timeout_ms=...) for readers\n"
    "that pause.  With --no-ack, events held past their lease are delivered\n"
    "again meanwhile.\n"
    "\n"
    "A server that goes away is said on stderr (then every 30 s while the\n"
    "library reconnects); with --timeout, still failing when it passes ends\n"
    "the tool with exit 1.\n"
    "\n"
    "SIGINT or SIGTERM end it cleanly: what was printed and read is acked,\n"
    "the rest handed back; a second signal ends it at once.  Exit status: 0\n"
    "ended by --count, --timeout, a signal or a closed output; 1 queue or\n"
    "output error; 2 usage error.\n";

enum ack_when { ACK_READ, ACK_AFTER_READ, ACK_WRITE };

/* Events printed and not yet acked, oldest first, with where their line
 * ends in the output (bytes written so far). */
typedef struct printed {
    evq_msg **m;
    uint64_t *end;
    size_t head, n, cap;
    uint64_t written;
    bool pipe;
} printed;

static int printed_push(printed *p, evq_msg *m)
{
    if (p->head + p->n == p->cap) {
        if (p->head) {
            memmove(p->m, p->m + p->head, p->n * sizeof *p->m);
            memmove(p->end, p->end + p->head, p->n * sizeof *p->end);
            p->head = 0;
        } else {
            size_t cap = p->cap ? p->cap * 2 : 64;
            evq_msg **nm = realloc(p->m, cap * sizeof *nm);
            if (nm)
                p->m = nm;
            uint64_t *ne = nm ? realloc(p->end, cap * sizeof *ne) : NULL;
            if (!ne)
                return EVQ_ENOMEM;
            p->end = ne;
            p->cap = cap;
        }
    }
    p->m[p->head + p->n] = m;
    p->end[p->head + p->n] = p->written;
    p->n++;
    return 0;
}

/* Bytes of the output its reader has taken: all that was written, less
 * what still waits in the pipe. */
static uint64_t printed_taken(const printed *p)
{
    int unread = 0;
    if (!p->pipe || ioctl(STDOUT_FILENO, FIONREAD, &unread) != 0 || unread < 0)
        return p->written;
    return p->written - (uint64_t)unread;
}

/* Acks the events whose line the reader has taken (all, with `all`); 1
 * when an ack failed otherwise than by a lost lease. */
static int printed_ack(printed *p, bool all)
{
    uint64_t taken = all ? UINT64_MAX : printed_taken(p);
    while (p->n > 0 && p->end[p->head] <= taken) {
        evq_msg *m = p->m[p->head++];
        p->n--;
        char id[128];
        snprintf(id, sizeof id, "%s", evq_event_id(evq_msg_event(m)));
        int rc = evq_ack(m);
        if (rc == EVQ_ESTATE) {
            /* The reader kept the line past the lease: the event is
             * another consumer's now, and comes again. */
            fprintf(stderr,
                    "%s consume: event %s was printed, but its lease "
                    "expired before its line was read: it will be "
                    "delivered again\n",
                    prog, id);
        } else if (rc) {
            return fail("ack", rc);
        }
    }
    return 0;
}

/* Hands back every event whose line the reader has not taken. */
static size_t printed_hand_back(printed *p)
{
    size_t n = p->n;
    while (p->n > 0) {
        evq_nack(p->m[p->head++], 0);
        p->n--;
    }
    return n;
}

/* Whether the reader of a pipe (or socket) on standard output is gone. */
static bool output_closed(void)
{
    struct pollfd pfd = {STDOUT_FILENO, 0, 0};
    return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLERR | POLLHUP));
}

/* Waits until the reader took every printed line (acking them), the
 * reader went away (true) or a signal came. */
static bool printed_drain(printed *p, int *status)
{
    long pause_us = 200;
    for (;;) {
        if ((*status = printed_ack(p, false)) != 0 || p->n == 0)
            return false;
        if (output_closed())
            return true;
        if (atomic_load(&signalled))
            return false;
        struct timespec ts = {0, pause_us * 1000};
        nanosleep(&ts, NULL);
        if (pause_us < 20000)
            pause_us *= 2;
    }
}

static int cmd_consume(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"count", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 'T'},
        {"ack", required_argument, NULL, 'A'},
        {"no-ack", no_argument, NULL, 'N'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long count = -1, timeout_s = -1;
    bool no_ack = false;
    enum ack_when when = ACK_READ;
    evq_opts *opts = NULL;
    int c, rc;

    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (!parse_long(optarg, 1, LONG_MAX, &count))
                return usage_error("consume", "bad --count '%s'", optarg);
            break;
        case 'T':
            if (!parse_long(optarg, 0, 86400L * 365, &timeout_s))
                return usage_error("consume", "bad --timeout '%s'", optarg);
            break;
        case 'A':
            if (strcmp(optarg, "read") == 0)
                when = ACK_READ;
            else if (strcmp(optarg, "after-read") == 0)
                when = ACK_AFTER_READ;
            else if (strcmp(optarg, "write") == 0)
                when = ACK_WRITE;
            else
                return usage_error("consume",
                                   "bad --ack '%s' (read, after-read or "
                                   "write)",
                                   optarg);
            break;
        case 'N':
            no_ack = true;
            break;
            COMMON_FLAGS("consume", consume_help)
        }
    }
    if (argc - optind != 2)
        return usage_error("consume", "%s", "needs URL and QUEUE");

    /* Into a pipe, one page at a time: what a reader can take and drop
     * unread is one page, not the default 64 KiB. */
    printed out = {0};
    struct stat st;
    if (fstat(STDOUT_FILENO, &st) == 0 && S_ISFIFO(st.st_mode) &&
        when != ACK_WRITE) {
        out.pipe = true;
        fcntl(STDOUT_FILENO, F_SETPIPE_SZ, 4096);
    }

    evq_queue *q;
    if ((rc = open_queue(argv[optind], argv[optind + 1], opts, &q)))
        return rc;
    catch_signals(q);

    evq_msg **held = NULL;
    size_t nheld = 0, capheld = 0;
    long got = 0;
    int status = 0;
    bool gone = false;
    size_t in_hand = 0;                  /* nacked when its write failed */
    int64_t down_since = 0, said_ns = 0; /* the queue failing, since */
    int64_t deadline =
        timeout_s < 0 ? INT64_MAX : mono_ns() + timeout_s * 1000000000LL;
    while (count < 0 || got < count) {
        evq_msg *m;
        if (!no_ack && (status = printed_ack(&out, !out.pipe)) != 0)
            break;
        if (!no_ack && when == ACK_AFTER_READ && out.n > 0 &&
            (gone = printed_drain(&out, &status)))
            break;
        if (status)
            break;
        /* Short waits: a reader that went away is seen while the queue is
         * empty, and lines read meanwhile are acked. */
        int64_t left = (deadline - mono_ns()) / 1000000;
        int wait_ms = left > 250 ? 250 : left > 0 ? (int)left : 0;
        rc = evq_dequeue(q, &m, wait_ms);
        if (rc == EVQ_ECLOSED && atomic_load(&signalled))
            break;
        if (rc == EVQ_ECONN || rc == EVQ_EIO || rc == EVQ_EBUSY) {
            /* The server is away: the library reconnects; say so, once
             * and then every 30 s, and give up only at --timeout. */
            int64_t now = mono_ns();
            if (!down_since || now - said_ns >= 30000000000LL) {
                fprintf(stderr, "%s consume: %s: %s (%s)\n", prog,
                        down_since ? "still failing" : "the queue fails",
                        evq_errmsg(), evq_strerror(rc));
                said_ns = now;
            }
            if (!down_since)
                down_since = now;
            if (now >= deadline) {
                status = fail("dequeue", rc);
                break;
            }
            struct timespec ts = {0, 100 * 1000000};
            nanosleep(&ts, NULL);
            continue;
        }
        if (rc == EVQ_ETIMEDOUT) {
            if ((gone = out.pipe && output_closed()))
                break;
            if (mono_ns() >= deadline) {
                if (down_since) { /* never came back */
                    fprintf(stderr, "%s: dequeue: the queue still fails\n",
                            prog);
                    status = EXIT_FAILURE;
                }
                break;
            }
            continue;
        }
        if (rc) {
            status = fail("dequeue", rc);
            break;
        }
        if (down_since) {
            fprintf(stderr, "%s consume: the queue works again after %.1f s\n",
                    prog, (double)(mono_ns() - down_since) / 1e9);
            down_since = 0;
        }
        if (timeout_s >= 0) /* --timeout counts from the last event */
            deadline = mono_ns() + timeout_s * 1000000000LL;
        size_t line = 0;
        if ((rc = print_event_n(stdout, evq_msg_event(m), &line)) != 0) {
            int werr = errno; /* the nack's own I/O may set errno */
            evq_nack(m, 0);
            if (werr == EPIPE) {
                gone = true;
                in_hand = 1;
                break;
            }
            fprintf(stderr, "%s consume: writing the event failed: %s\n", prog,
                    strerror(werr));
            status = EXIT_FAILURE;
            break;
        }
        got++;
        out.written += line;
        if (!no_ack) {
            if ((rc = printed_push(&out, m)) != 0) {
                evq_nack(m, 0);
                status = fail("consume", rc);
                break;
            }
            continue;
        }
        if (nheld == capheld) {
            capheld = capheld ? capheld * 2 : 64;
            evq_msg **n = realloc(held, capheld * sizeof *n);
            if (!n) {
                evq_nack(m, 0);
                status = fail("consume", EVQ_ENOMEM);
                break;
            }
            held = n;
        }
        held[nheld++] = m;
    }
    /* Lines the reader may still take: wait for it at the end of a run
     * (not after a signal), then hand back what it did not. */
    if (!status && !gone && out.n > 0 && !atomic_load(&signalled))
        gone = printed_drain(&out, &status);
    if (!status && out.n > 0) /* a closed pipe still tells what was read */
        status = printed_ack(&out, false);
    size_t back = printed_hand_back(&out) + in_hand;
    if (gone)
        fprintf(stderr,
                "%s consume: the output was closed; %zu event%s it had not "
                "read handed back\n",
                prog, back, back == 1 ? "" : "s");
    for (size_t i = 0; i < nheld; i++)
        evq_nack(held[i], 0);
    free(held);
    free(out.m);
    free(out.end);
    catch_signals(NULL);
    evq_queue_close(q);
    return status;
}

/* ---- relay ----------------------------------------------------------------- */

static const char relay_help[] =
    "usage: evq relay FROM_URL QUEUE TO_URL [TO_QUEUE] [--once] [--window N]\n"
    "                 [--retry-ms MS] [-o KEY=VALUE]... [-O KEY=VALUE]...\n"
    "\n"
    "Moves the events of QUEUE at FROM_URL (an outbox on sqlite:// or\n"
    "postgres://, or any queue) to TO_QUEUE (QUEUE when not given) at\n"
    "TO_URL, keeping each event's id so consumers can deduplicate.  A\n"
    "source event is acked only once the destination reported it stored.\n"
    "\n"
    "  --once        drain what is ready, then exit\n"
    "  --window N    events sent and not yet reported stored (1000); a relay\n"
    "                killed mid-stream leaves at most N to be sent again,\n"
    "                plus the source's acks not yet sent (its *.ack_flush_ms)\n"
    "  --retry-ms MS a failed send is handed back to the source for MS (1000)\n"
    "  -o KEY=VALUE  an option of the source queue (-O: of the destination)\n"
    "\n"
    "Several relays may share one source: each takes other events (their\n"
    "leases are kept while the events are out).  The destination away: the\n"
    "events are handed back and come again; said on stderr (then every 30 s).\n"
    "SIGINT or SIGTERM: stops taking, waits for what is out to be reported,\n"
    "settles it and exits 0; a second signal ends it at once.  The counts go\n"
    "to stderr at the end.  Exit status: 0 done; 1 a queue failed (with\n"
    "--once: some events could not be sent, and stay in the source); 2 usage\n"
    "error.\n";

static void relay_log(evq_log_level level, const char *line, void *arg)
{
    (void)level;
    (void)arg;
    fprintf(stderr, "%s %s\n", prog, line);
}

static int cmd_relay(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"once", no_argument, NULL, '1'},
        {"window", required_argument, NULL, 'w'},
        {"retry-ms", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    evq_relay_opts ro;
    evq_relay_opts_init(&ro);
    ro.log = relay_log;
    evq_opts *opts = NULL, *to_opts = NULL;
    long v;
    int c, rc;
    while ((c = getopt_long(argc, argv, "o:O:h", longopts, NULL)) != -1) {
        switch (c) {
        case '1':
            ro.once = 1;
            break;
        case 'w':
            if (!parse_long(optarg, 1, 100000, &v)) {
                evq_opts_free(opts);
                evq_opts_free(to_opts);
                return usage_error("relay", "bad --window '%s' (1..100000)",
                                   optarg);
            }
            ro.window = (int)v;
            break;
        case 'r':
            if (!parse_long(optarg, 0, 86400000L, &v)) {
                evq_opts_free(opts);
                evq_opts_free(to_opts);
                return usage_error("relay", "bad --retry-ms '%s'", optarg);
            }
            ro.retry_ms = (int)v;
            break;
        case 'O':
            if ((rc = add_opt(&to_opts, "relay", optarg)) != 0) {
                evq_opts_free(opts);
                evq_opts_free(to_opts);
                return rc;
            }
            break;
        default: {
            bool done_;
            int r_ = common_flag(c, "relay", relay_help, &opts, &done_);
            if (done_) {
                evq_opts_free(opts);
                evq_opts_free(to_opts);
                return r_;
            }
            break;
        }
        }
    }
    int nargs = argc - optind;
    if (nargs != 3 && nargs != 4) {
        evq_opts_free(opts);
        evq_opts_free(to_opts);
        return usage_error("relay", "%s",
                           "needs FROM_URL QUEUE TO_URL [TO_QUEUE]");
    }
    const char *from_url = argv[optind], *queue = argv[optind + 1];
    const char *to_url = argv[optind + 2];
    const char *to_queue = nargs == 4 ? argv[optind + 3] : queue;
    if (strcmp(from_url, to_url) == 0 && strcmp(queue, to_queue) == 0) {
        evq_opts_free(opts);
        evq_opts_free(to_opts);
        return usage_error("relay", "relaying queue '%s' onto itself",
                           queue);
    }

    evq_queue *from, *to;
    if ((rc = open_queue(from_url, queue, opts, &from))) {
        evq_opts_free(to_opts);
        return rc;
    }
    if ((rc = open_queue(to_url, to_queue, to_opts, &to))) {
        evq_queue_close(from);
        return rc;
    }
    catch_signals(from);
    struct evq_relay_stats st;
    rc = evq_relay(from, to, &ro, &st);
    int status = rc ? fail("relay", rc) : 0;
    catch_signals(NULL);
    fprintf(stderr,
            "%s relay: %llu moved, %llu failed and handed back, %llu "
            "dead-lettered, %llu to be sent again\n",
            prog, (unsigned long long)st.moved, (unsigned long long)st.failed,
            (unsigned long long)st.dead_lettered,
            (unsigned long long)st.unacked);
    evq_queue_close(to);
    evq_queue_close(from);
    return status;
}

/* ---- stats ------------------------------------------------------------------
 */

static const char stats_help[] =
    "usage: evq stats URL QUEUE [--prometheus]\n"
    "\n"
    "Creates nothing: a queue that does not exist is an error (exit 1).\n"
    "Prints the queue's figures as one JSON object (-1: the backend cannot\n"
    "tell), or in the Prometheus text format (the queue's gauges only: the\n"
    "counters of a handle are its own, and the tool's is new).\n";

static int cmd_stats(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"prometheus", no_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool prom = false;
    evq_opts *opts = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            prom = true;
            break;
            COMMON_FLAGS("stats", stats_help)
        }
    }
    if (argc - optind != 2)
        return usage_error("stats", "%s", "needs URL and QUEUE");
    evq_queue *q;
    if ((rc = read_only(&opts)) ||
        (rc = open_queue(argv[optind], argv[optind + 1], opts, &q)))
        return rc;
    if (prom) {
        char *text = evq_stats_prometheus(q, NULL);
        if (!text) {
            evq_queue_close(q);
            return fail("stats", EVQ_ENOMEM);
        }
        /* The handle's own counters (..._total) would read 0 here: a fresh
         * handle has counted nothing.  Only the queue's figures are
         * printed. */
        printf("# evq stats: the queue's gauges; a handle's counters are "
               "left out\n");
        for (char *line = text, *next; *line; line = next) {
            next = strchr(line, '\n');
            next = next ? next + 1 : line + strlen(line);
            const char *name = line;
            if (strncmp(line, "# HELP ", 7) == 0 ||
                strncmp(line, "# TYPE ", 7) == 0)
                name = line + 7;
            size_t n = strcspn(name, "{ \n");
            if (n >= 6 && strncmp(name + n - 6, "_total", 6) == 0)
                continue;
            fwrite(line, 1, (size_t)(next - line), stdout);
        }
        free(text);
    } else {
        struct evq_queue_stats s;
        if ((rc = evq_queue_stats(q, &s))) {
            evq_queue_close(q);
            return fail("stats", rc);
        }
        printf("{\"queue\":\"%s\",\"depth\":%" PRId64 ",\"in_flight\":%" PRId64
               ",\"delayed\":%" PRId64 ",\"dead\":%" PRId64 "}\n",
               evq_queue_name(q), s.depth, s.in_flight, s.delayed, s.dead);
    }
    evq_queue_close(q);
    return 0;
}

/* ---- serve ------------------------------------------------------------------
 */

static const char serve_help[] =
    "usage: evq serve URL#QUEUE[,QUEUE...] [URL#QUEUE...] [--listen ADDR]\n"
    "                 [--token-file FILE] [--allow-host NAME] [-o K=V]\n"
    "\n"
    "Serves the queues' figures over HTTP until SIGINT or SIGTERM:\n"
    "  /              a dashboard: the queues, their depth and a chart, the\n"
    "                 dead letters (inspect, replay, purge), pause/resume\n"
    "  /metrics       Prometheus text format (scrape it)\n"
    "  /api/queues    JSON; /api/queues/ID/dead?offset=&limit= the dead\n"
    "                 letters (docs/serve.md lists the rest)\n"
    "--listen ADDR    HOST:PORT or [IPV6]:PORT, 127.0.0.1:9188 by default;\n"
    "                 port 0 takes a free one.  Anything but loopback opens\n"
    "                 the payloads to that network.\n"
    "--token-file F   the token (first line, 16 characters at least) that\n"
    "                 replaying, purging and pausing need; without one the\n"
    "                 dashboard only shows.\n"
    "--allow-host N   a host name the browser may call the server by besides\n"
    "                 IP addresses and localhost (repeatable).\n"
    "Creates nothing: a queue that does not exist is an error (exit 1).\n"
    "Prints {\"url\":\"http://HOST:PORT/\"} once listening.\n";

static int read_token(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "%s serve: cannot read the token file %s: %s\n", prog,
                path, strerror(errno));
        return EXIT_FAILURE;
    }
    if (!fgets(out, (int)cap, f))
        out[0] = '\0';
    fclose(f);
    out[strcspn(out, "\r\n")] = '\0';
    if (strlen(out) + 1 >= cap) {
        fprintf(stderr, "%s serve: the token in %s is too long\n", prog, path);
        return EXIT_FAILURE;
    }
    return 0;
}

static int cmd_serve(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"token-file", required_argument, NULL, 't'},
        {"allow-host", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    evq_serve_opts so;
    evq_serve_opts_init(&so);
    const char *token_file = NULL;
    char hosts[1024] = "", token[512];
    evq_opts *opts = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'l':
            so.listen = optarg;
            break;
        case 't':
            token_file = optarg;
            break;
        case 'a':
            if (!*optarg || strchr(optarg, ',') ||
                strlen(hosts) + strlen(optarg) + 2 > sizeof hosts)
                return usage_error("serve", "bad --allow-host '%s'", optarg);
            if (*hosts)
                strcat(hosts, ",");
            strcat(hosts, optarg);
            break;
            COMMON_FLAGS("serve", serve_help)
        }
    }
    if (optind >= argc) {
        evq_opts_free(opts);
        return usage_error("serve", "%s", "needs URL#QUEUE[,QUEUE...]");
    }
    for (int i = optind; i < argc; i++) {
        /* (the URL is not repeated: it may hold a password) */
        const char *hash = strrchr(argv[i], '#');
        if (!hash || hash[strspn(hash, "#,")] == '\0') {
            evq_opts_free(opts);
            return usage_error("serve",
                               "argument %d names no queue: "
                               "URL#QUEUE[,QUEUE...]",
                               i - optind + 1);
        }
    }
    if (token_file && read_token(token_file, token, sizeof token)) {
        evq_opts_free(opts);
        return EXIT_FAILURE;
    }
    if ((rc = read_only(&opts)))
        return rc;
    so.token = token_file ? token : NULL;
    so.allow_hosts = *hosts ? hosts : NULL;
    so.log = relay_log;

    evq_server *srv = NULL;
    evq_queue **qs = NULL;
    size_t nq = 0;
    int status = 0;
    if ((rc = evq_serve_new(&srv, &so)))
        status = fail("serve", rc);
    for (int i = optind; i < argc && !status; i++) {
        char *url = strdup(argv[i]);
        if (!url) {
            status = fail("serve", EVQ_ENOMEM);
            break;
        }
        char *names = strrchr(url, '#');
        *names++ = '\0';
        for (char *save = NULL, *name = strtok_r(names, ",", &save);
             name && !status; name = strtok_r(NULL, ",", &save)) {
            evq_queue **n = realloc(qs, (nq + 1) * sizeof *n);
            if (!n) {
                status = fail("serve", EVQ_ENOMEM);
                break;
            }
            qs = n;
            if ((rc = evq_queue_open(&qs[nq], url, name, opts))) {
                status = fail("open", rc);
                break;
            }
            nq++;
            if ((rc = evq_serve_queue(srv, qs[nq - 1])))
                status = fail("serve", rc);
        }
        free(url);
    }
    evq_opts_free(opts);
    memset(token, 0, sizeof token);
    if (!status && (rc = evq_serve_start(srv)))
        status = fail("serve", rc);
    if (!status) {
        char host[256];
        const char *l = so.listen;
        size_t hl = l[0] == '[' ? strcspn(l, "]") + 1 : strcspn(l, ":");
        snprintf(host, sizeof host, "%.*s", (int)hl, l);
        printf("{\"url\":\"http://%s:%d/\"}\n", host, evq_serve_port(srv));
        fflush(stdout);
        catch_signals(qs[0]);
        while (!atomic_load(&signalled)) {
            struct timespec ts = {0, 100 * 1000000};
            nanosleep(&ts, NULL);
        }
        catch_signals(NULL);
    }
    evq_serve_free(srv);
    for (size_t i = 0; i < nq; i++)
        evq_queue_close(qs[i]);
    free(qs);
    return status;
}

/* ---- pause and resume ------------------------------------------------------
 */

static const char pause_help[] =
    "usage: evq pause URL QUEUE [--status]\n"
    "usage: evq resume URL QUEUE\n"
    "\n"
    "Pauses (resumes) the queue for every consumer of it, in every process:\n"
    "within a second no consumer takes another event; events already taken\n"
    "finish, producers still enqueue.  The state is kept where the queue\n"
    "lives (it outlasts restarts).  --status changes nothing.  Prints\n"
    "{\"queue\":...,\"paused\":true|false}.  A queue that does not exist is\n"
    "an error (exit 1); what holds the state is made where needed (nats://\n"
    "a key-value bucket, amqp:// a queue <QUEUE>.evq-state).  Not for\n"
    "memory://, which lives in one process.\n";

static int cmd_pause(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"status", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = argv[0];
    bool status = false;
    evq_opts *opts = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            status = true;
            break;
            COMMON_FLAGS(cmd, pause_help)
        }
    }
    if (argc - optind != 2) {
        evq_opts_free(opts);
        return usage_error(cmd, "%s", "needs URL and QUEUE");
    }
    if (status && strcmp(cmd, "resume") == 0) {
        evq_opts_free(opts);
        return usage_error(cmd, "%s", "--status is pause's (it changes "
                                      "nothing)");
    }
    if (strncmp(argv[optind], "memory:", 7) == 0) {
        evq_opts_free(opts);
        return usage_error(cmd, "%s", "a memory:// queue lives in one "
                                      "process: pause it there "
                                      "(evq_queue_pause)");
    }
    evq_queue *q;
    if ((rc = read_only(&opts)) ||
        (rc = open_queue(argv[optind], argv[optind + 1], opts, &q)))
        return rc;
    if (!status)
        rc = strcmp(cmd, "pause") == 0 ? evq_queue_pause(q)
                                       : evq_queue_resume(q);
    if (rc == 0)
        rc = evq_queue_paused(q);
    if (rc < 0) {
        int st = fail(cmd, rc);
        evq_queue_close(q);
        return st;
    }
    printf("{\"queue\":\"%s\",\"paused\":%s}\n", evq_queue_name(q),
           rc ? "true" : "false");
    evq_queue_close(q);
    return 0;
}

/* ---- schedule ---------------------------------------------------------------
 */

static const char schedule_help[] =
    "usage: evq schedule URL QUEUE --cron EXPR --type TYPE [--data JSON]\n"
    "                    [--source S] [--subject S] [--attr K=V]...\n"
    "                    [--tz ZONE] [--catch-up MS] [--for S]\n"
    "\n"
    "Enqueues an event of TYPE at every time EXPR names, until SIGINT or\n"
    "SIGTERM (or --for S seconds).  EXPR has the five standard cron fields,\n"
    "minute hour day-of-month month day-of-week ('*/5 * * * *', '0 9 * *\n"
    "MON-FRI'), or @hourly, @daily, @weekly, @monthly, @yearly; ZONE is an\n"
    "IANA time zone (default UTC) on whose clock it is read.  Run as many\n"
    "as you like with the same arguments: each time is enqueued once (on\n"
    "sqlite, postgres, redis; nats within its duplicate window; elsewhere\n"
    "once per process).  --catch-up MS: times missed within MS before the\n"
    "start are enqueued at once (default 0: skipped).  Prints one JSON line\n"
    "of counts when it stops.\n";

static int cmd_schedule(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"cron", required_argument, NULL, 'c'},
        {"tz", required_argument, NULL, 'z'},
        {"type", required_argument, NULL, 't'},
        {"data", required_argument, NULL, 'd'},
        {"source", required_argument, NULL, 's'},
        {"subject", required_argument, NULL, 'S'},
        {"attr", required_argument, NULL, 'a'},
        {"catch-up", required_argument, NULL, 'C'},
        {"for", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cron = NULL, *tz = NULL, *type = NULL, *data = NULL;
    const char *source = NULL, *subject = NULL, *attrs[64];
    int nattrs = 0, c, rc;
    long catch_up = 0, seconds = 0;
    evq_opts *opts = NULL;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cron = optarg;
            break;
        case 'z':
            tz = optarg;
            break;
        case 't':
            type = optarg;
            break;
        case 'd':
            data = optarg;
            break;
        case 's':
            source = optarg;
            break;
        case 'S':
            subject = optarg;
            break;
        case 'a':
            if (nattrs == 64) {
                evq_opts_free(opts);
                return usage_error("schedule", "%s", "too many --attr");
            }
            attrs[nattrs++] = optarg;
            break;
        case 'C':
            if (!parse_long(optarg, 0, EVQ_SCHEDULE_MAX_CATCH_UP_MS,
                            &catch_up)) {
                evq_opts_free(opts);
                return usage_error("schedule", "bad --catch-up '%s' (0 to "
                                               "%lld ms)",
                                   optarg, EVQ_SCHEDULE_MAX_CATCH_UP_MS);
            }
            break;
        case 'f':
            if (!parse_long(optarg, 1, 100L * 365 * 86400, &seconds)) {
                evq_opts_free(opts);
                return usage_error("schedule", "bad --for '%s' (seconds)",
                                   optarg);
            }
            break;
            COMMON_FLAGS("schedule", schedule_help)
        }
    }
    if (argc - optind != 2 || !cron || !type) {
        evq_opts_free(opts);
        return usage_error("schedule", "%s",
                           "needs URL, QUEUE, --cron and --type");
    }
    evq_event *tmpl;
    if ((rc = event_from_flags("schedule", type, data, source, subject, attrs,
                               nattrs, &tmpl)) != 0) {
        evq_opts_free(opts);
        return rc;
    }
    evq_queue *q;
    if ((rc = open_queue(argv[optind], argv[optind + 1], opts, &q))) {
        evq_event_free(tmpl);
        return rc;
    }
    evq_scheduler_opts so;
    evq_scheduler_opts_init(&so);
    so.catch_up_ms = catch_up;
    evq_scheduler *s = NULL;
    rc = evq_scheduler_new(&s, q, &so);
    if (!rc)
        rc = evq_schedule_add(s, cron, tz, tmpl);
    evq_event_free(tmpl);
    if (!rc)
        rc = evq_scheduler_start(s);
    if (rc) {
        int st = fail("schedule", rc);
        evq_scheduler_free(s);
        evq_queue_close(q);
        return st;
    }
    catch_signals(q);
    int64_t end = seconds ? mono_ns() + (int64_t)seconds * 1000000000 : 0;
    while (!atomic_load(&signalled) && (!end || mono_ns() < end)) {
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    }
    evq_scheduler_stop(s);
    catch_signals(NULL);
    struct evq_scheduler_stats st;
    evq_scheduler_stats(s, &st);
    printf("{\"queue\":\"%s\",\"enqueued\":%llu,\"taken\":%llu,"
           "\"missed\":%llu}\n",
           evq_queue_name(q), (unsigned long long)st.enqueued,
           (unsigned long long)st.taken, (unsigned long long)st.missed);
    evq_scheduler_free(s);
    evq_queue_close(q);
    return 0;
}

/* ---- dead letters ---------------------------------------------------------
 */

static const char dead_help[] =
    "usage: evq dead list|replay|purge URL QUEUE [--count N] [--timeout S]\n"
    "\n"
    "Works on QUEUE's dead-letter queue (option dead_letter, default\n"
    "QUEUE.dead):\n"
    "  list     print each dead letter as a CloudEvents JSON line (with\n"
    "           evqerror, evqattempts and evqqueue) and leave it there\n"
    "  replay   enqueue each dead letter on QUEUE again (without the evq*\n"
    "           attributes, with evqreplayed set to the time of the replay),\n"
    "           then remove it from the dead-letter queue\n"
    "  purge    remove the dead letters\n"
    "  --count N     handle at most N dead letters\n"
    "  --timeout S   wait at most S seconds (default 10) for the dead\n"
    "                letters the queue's figures say are there (a Kafka\n"
    "                consumer group's join takes seconds)\n"
    "  -o KEY=VALUE  queue option (repeatable)\n"
    "list creates nothing: a queue that does not exist is an error.\n"
    "Prints how many were handled on standard error; exit 1 when fewer\n"
    "than the queue's figures promised came within --timeout.\n";

static int cmd_dead(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"count", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long count = LONG_MAX, timeout_s = 10;
    evq_opts *opts = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (!parse_long(optarg, 1, LONG_MAX, &count))
                return usage_error("dead", "bad --count '%s'", optarg);
            break;
        case 'T':
            if (!parse_long(optarg, 0, 86400L, &timeout_s))
                return usage_error("dead", "bad --timeout '%s'", optarg);
            break;
            COMMON_FLAGS("dead", dead_help)
        }
    }
    if (argc - optind != 3)
        return usage_error("dead", "%s",
                           "needs list|replay|purge, URL and QUEUE");
    const char *action = argv[optind];
    if (strcmp(action, "list") && strcmp(action, "replay") &&
        strcmp(action, "purge"))
        return usage_error("dead", "unknown action '%s'", action);

    evq_queue *q, *dead;
    if (action[0] == 'l' && (rc = read_only(&opts)))
        return rc;
    if ((rc = open_queue(argv[optind + 1], argv[optind + 2], opts, &q)))
        return rc;
    if ((rc = evq_queue_open_dead(&dead, q))) {
        evq_queue_close(q);
        if (rc != EVQ_ENOENT)
            return fail("open dead-letter queue", rc);
        /* No dead-letter queue was ever made: none died. */
        fprintf(stderr, "%s dead %s: 0 dead letters\n", prog, action);
        return 0;
    }
    /* How many there are, from the queue's figures (which need no
     * consumer): a dequeue that comes back empty may only mean the
     * backend is not ready yet (a consumer group's join). */
    struct evq_queue_stats ds;
    long expected = -1;
    if (evq_queue_stats(dead, &ds) == 0 && ds.depth >= 0)
        expected = (long)ds.depth;
    int64_t until = mono_ns() + timeout_s * 1000000000LL;
    evq_msg **held = NULL;
    size_t nheld = 0;
    long done = 0;
    int status = 0;
    while (done < count) {
        evq_msg *m;
        int64_t left = (until - mono_ns()) / 1000000;
        int wait = done < expected && left > 0 ? (int)left : 0;
        rc = evq_dequeue(dead, &m, wait);
        if (rc == EVQ_ETIMEDOUT) {
            if (done < expected && done < count) {
                fprintf(stderr,
                        "%s dead %s: only %ld of the %ld dead letters the "
                        "queue holds came within %ld s\n",
                        prog, action, done, expected, timeout_s);
                status = EXIT_FAILURE;
            }
            break;
        }
        if (rc) {
            status = fail("dequeue", rc);
            break;
        }
        const evq_event *ev = evq_msg_event(m);
        if (action[0] == 'l') {
            evq_msg **n = realloc(held, (nheld + 1) * sizeof *n);
            if (!n || print_event(stdout, ev)) {
                evq_nack(m, 0);
                status = fail("list", EVQ_EIO);
                break;
            }
            held = n;
            held[nheld++] = m;
        } else if (action[0] == 'r') {
            if ((rc = evq_msg_replay(m, q))) {
                status = fail("replay", rc);
                break;
            }
        } else {
            evq_ack(m);
        }
        done++;
    }
    for (size_t i = 0; i < nheld; i++)
        evq_nack(held[i], 0);
    free(held);
    fprintf(stderr, "%s dead %s: %ld dead letter%s\n", prog, action, done,
            done == 1 ? "" : "s");
    evq_queue_close(dead);
    evq_queue_close(q);
    return status;
}

/* ---- demo ---------------------------------------------------------------- */

static const char demo_help[] =
    "usage: evq demo [URL]\n"
    "\n"
    "The seed's example end to end: registers a logging processor for\n"
    "user.created, starts a worker, enqueues {\"userId\":\"123\",\"name\":\n"
    "\"John Doe\"}, prints what the processor received, and stops cleanly.\n"
    "URL defaults to " DEFAULT_URL ".\n";

static int log_processor(const evq_event *ev, void *arg)
{
    atomic_int *seen = arg;
    fputs("Received event: ", stdout);
    int rc = print_event(stdout, ev);
    atomic_fetch_add(seen, 1);
    return rc;
}

static int cmd_demo(int argc, char **argv)
{
    if (argc > 1 &&
        (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(demo_help, stdout);
        return 0;
    }
    if (argc > 2)
        return usage_error("demo", "%s", "takes at most a URL");
    const char *url = argc > 1 ? argv[1] : DEFAULT_URL;
    evq_queue *q;
    evq_events *events = evq_events_new();
    evq_worker *w;
    atomic_int seen = 0;
    int rc;

    if ((rc = evq_queue_open(&q, url, "demo", NULL)))
        return fail("open", rc);
    evq_register_handler(events, "user.created", log_processor, &seen);
    if ((rc = evq_worker_start(&w, q, events, NULL))) {
        evq_queue_close(q);
        return fail("worker", rc);
    }
    evq_event *ev =
        evq_event_new("user.created", json_pack("{s:s, s:s}", "userId", "123",
                                                "name", "John Doe"));
    rc = evq_enqueue(q, ev);
    evq_event_free(ev);
    int64_t deadline = mono_ns() + 10 * 1000000000LL;
    while (!rc && atomic_load(&seen) == 0 && mono_ns() < deadline) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    int src = evq_worker_stop(w, 5000);
    evq_worker_free(w);
    evq_events_free(events);
    evq_queue_close(q);
    if (rc)
        return fail("enqueue", rc);
    if (src)
        return fail("stop", src);
    if (atomic_load(&seen) == 0) {
        fprintf(stderr, "%s demo: the event was not processed in 10 s\n", prog);
        return EXIT_FAILURE;
    }
    return 0;
}

/* ---- bench ----------------------------------------------------------------
 */

#include "../src/hist.h"

static const char bench_help[] =
    "usage: evq bench URL [--events N] [--size BYTES] [--producers P]\n"
    "                     [--workers W] [--batch B] [--warmup K]\n"
    "                     [--async] [--queue NAME] [--keep] [--json]\n"
    "                     [-o KEY=VALUE]\n"
    "\n"
    "Measures, on queue NAME (default bench-<pid>), after K events are\n"
    "enqueued untimed (a warm-up: connections, metadata, a topic made on\n"
    "first use; they join the backlog):\n"
    "  enqueue   P threads create and enqueue N events of about BYTES of\n"
    "            payload (the queue holds them all: memory:// capacity is\n"
    "            raised to N unless given)\n"
    "  drain     a worker of W threads empties that backlog (no-op handler),\n"
    "            timed from the first event handled to the last; the time\n"
    "            before the first (joining a consumer group) is start_ms\n"
    "  e2e       P producers and a worker of W threads at once: create the\n"
    "            event, enqueue, dequeue, dispatch, ack, free; latency is\n"
    "            from the event's creation to its handler\n"
    "  raw       memory:// only: enqueue + dequeue + ack of pre-built events,\n"
    "            one producer thread and one consumer thread (B at a time:\n"
    "            evq_enqueue_batch, evq_dequeue_batch, evq_ack_batch)\n"
    "  stats     the cost per event of the worker's latency statistics\n"
    "and the peak resident memory.  Producers enqueue B events at a time\n"
    "(evq_enqueue_batch when B > 1), or with --async one event per\n"
    "evq_enqueue_async call, not waiting (then evq_flush); --threads T is\n"
    "--producers T.  Defaults: N 1000000, BYTES 100, P 1,\n"
    "W 1, B 1, K 0.\n"
    "At the end the queue is deleted (evq_queue_delete), and on sqlite:// the\n"
    "file too when bench made it; a queue named with --queue is the\n"
    "caller's and stays, as does any with --keep.\n"
    "--json prints one object: enqueue_per_s, start_ms, drain_per_s, "
    "e2e_per_s,\n"
    "latency_us {p50, p99, p999}, peak_rss_kib, stats_overhead_ns and, on\n"
    "memory://, raw_per_s.  A progress line goes to standard error when it\n"
    "is a terminal.\n";

/* What bench made, removed at its end: the queue it named itself, and on
 * sqlite:// the file when there was none before. */
struct bench_made {
    bool queue;
    char file[PATH_MAX]; /* "" when bench did not make it */
};

/* Notes the sqlite:// file `url` names when it does not exist yet. */
static void bench_file_before(const char *url, struct bench_made *made)
{
    evq__url u;
    struct stat st;
    if (evq__url_parse(url, &u) != 0)
        return; /* open will say what is wrong */
    if (strcmp(u.scheme, "sqlite") == 0) {
        int n = snprintf(made->file, sizeof made->file, "%s%s",
                         u.n_hosts ? u.hosts[0].host : "", u.path);
        if (n <= 0 || (size_t)n >= sizeof made->file ||
            stat(made->file, &st) == 0)
            made->file[0] = '\0';
    }
    evq__url_free(&u);
}

/* Deletes what bench made and closes q; a failure is said, not fatal. */
static void bench_clean_up(evq_queue *q, const struct bench_made *made)
{
    if (made->queue && evq_queue_delete(q) != 0)
        fprintf(stderr, "%s bench: queue '%s' left in place: %s\n", prog,
                evq_queue_name(q), evq_errmsg());
    evq_queue_close(q);
    if (!made->file[0])
        return;
    static const char *const tails[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof tails / sizeof *tails; i++) {
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s%s", made->file, tails[i]);
        if (unlink(path) != 0 && errno != ENOENT)
            fprintf(stderr, "%s bench: %s left in place: %s\n", prog, path,
                    strerror(errno));
    }
}

struct bench {
    evq_queue *q;
    long n;
    int producers;
    int batch;
    bool async; /* evq_enqueue_async, one event per call */
    json_t *payload;
    atomic_long produced, handled;
    _Atomic int64_t producers_end_ns;
    atomic_int errors;
    pthread_mutex_t mu;
    struct bench_slot *slots[1100];
    int nslots;
    bool progress;
};

/* What one handler thread records, apart from the others: latencies, and
 * when it handled its first and last event. */
struct bench_slot {
    evq__hist hist;
    _Atomic int64_t first_ns, last_ns;
};

static _Thread_local struct bench_slot *bench_mine;

static int bench_handler(const evq_event *ev, void *arg)
{
    struct bench *b = arg;
    if (!bench_mine) {
        struct bench_slot *s = calloc(1, sizeof *s);
        pthread_mutex_lock(&b->mu);
        if (s && b->nslots < 1100)
            b->slots[b->nslots++] = bench_mine = s;
        else
            free(s);
        pthread_mutex_unlock(&b->mu);
    }
    /* read the payload, as a real handler would, so a decoder that puts
     * off its work cannot look faster than it is */
    if (!json_is_string(json_object_get(evq_event_data(ev), "p")))
        atomic_fetch_add(&b->errors, 1);
    struct bench_slot *s = bench_mine;
    if (s) {
        int64_t now = mono_ns(), lat = real_ns() - evq_event_time_ns(ev);
        evq__hist_record(&s->hist, (uint64_t)(lat > 0 ? lat : 0));
        if (!atomic_load_explicit(&s->first_ns, memory_order_relaxed))
            atomic_store_explicit(&s->first_ns, now, memory_order_relaxed);
        atomic_store_explicit(&s->last_ns, now, memory_order_relaxed);
    }
    /* release: the phase that reads handled then sees the histogram */
    atomic_fetch_add_explicit(&b->handled, 1, memory_order_release);
    return 0;
}

/* Enqueues `per` events in batches of b->batch. */
static void bench_enqueued(const char *id, int rc, void *arg)
{
    (void)id;
    struct bench *b = arg;
    if (rc)
        atomic_fetch_add(&b->errors, 1);
    atomic_fetch_add_explicit(&b->produced, 1, memory_order_relaxed);
}

static void produce_events(struct bench *b, long per)
{
    evq_event *evs[1000];
    if (b->async) { /* one event per call, not waiting */
        for (long i = 0; i < per; i++) {
            evq_event *ev =
                evq_event_new("bench.event", json_deep_copy(b->payload));
            if (evq_enqueue_async(b->q, ev, 0, bench_enqueued, b) != 0)
                atomic_fetch_add(&b->errors, 1);
            evq_event_free(ev);
        }
        if (evq_flush(b->q, -1) != 0)
            atomic_fetch_add(&b->errors, 1);
        return;
    }
    for (long i = 0; i < per;) {
        int k = 0;
        for (; k < b->batch && i < per; k++, i++)
            evs[k] = evq_event_new("bench.event", json_deep_copy(b->payload));
        int rc = k == 1 ? evq_enqueue(b->q, evs[0])
                        : evq_enqueue_batch(b->q, (const evq_event *const *)evs,
                                            (size_t)k);
        if (rc)
            atomic_fetch_add(&b->errors, 1);
        for (int j = 0; j < k; j++)
            evq_event_free(evs[j]);
        atomic_fetch_add_explicit(&b->produced, k, memory_order_relaxed);
    }
}

static void *bench_producer(void *arg)
{
    struct bench *b = arg;
    produce_events(b, b->n / b->producers);
    /* the phase ends when the last producer is done, not when the
     * progress loop next looks */
    int64_t end = mono_ns(), cur = atomic_load(&b->producers_end_ns);
    while (cur < end &&
           !atomic_compare_exchange_weak(&b->producers_end_ns, &cur, end))
        ;
    return NULL;
}

static void progress(struct bench *b, const char *phase, atomic_long *count,
                     long total)
{
    if (b->progress)
        fprintf(stderr, "\r%-8s %ld/%ld   ", phase, atomic_load(count), total);
}

/* Runs P producers; returns their wall time in seconds. */
static double run_producers(struct bench *b, bool show)
{
    pthread_t t[256];
    int64_t t0 = mono_ns();
    atomic_store(&b->produced, 0);
    atomic_store(&b->producers_end_ns, t0);
    for (int i = 0; i < b->producers; i++)
        pthread_create(&t[i], NULL, bench_producer, b);
    while (show && atomic_load(&b->produced) < b->n) {
        progress(b, "enqueue", &b->produced, b->n);
        struct timespec p = {0, 100 * 1000000};
        nanosleep(&p, NULL);
        if (atomic_load(&b->errors))
            break;
    }
    for (int i = 0; i < b->producers; i++)
        pthread_join(t[i], NULL);
    return (double)(atomic_load(&b->producers_end_ns) - t0) / 1e9;
}

static bool wait_handled(struct bench *b, long want, const char *phase)
{
    int64_t last_change = mono_ns();
    long last = -1;
    for (;;) {
        long h = atomic_load(&b->handled);
        if (h >= want)
            return true;
        if (h != last) {
            last = h;
            last_change = mono_ns();
        } else if (mono_ns() - last_change > 10 * 1000000000LL) {
            fprintf(stderr,
                    "%s bench: %s stalled at %ld of %ld: no event for 10 s "
                    "(did the broker drop some? the Kafka test broker keeps "
                    "about 5 MiB per partition)\n",
                    prog, phase, h, want);
            return false;
        }
        progress(b, phase, &b->handled, want);
        struct timespec p = {0, 1000000};
        nanosleep(&p, NULL);
    }
}

struct raw_bench {
    evq_queue *q;
    evq_event **evs;
    long n, k, batch;
};

static void *raw_producer(void *arg)
{
    struct raw_bench *r = arg;
    if (r->batch <= 1) {
        for (long i = 0; i < r->n; i++)
            evq_enqueue(r->q, r->evs[i % r->k]);
        return NULL;
    }
    /* k is a multiple of the batch: batches never wrap */
    for (long i = 0; i < r->n; i += r->batch) {
        long b = r->n - i < r->batch ? r->n - i : r->batch;
        evq_enqueue_batch(r->q, (const evq_event *const *)&r->evs[i % r->k],
                          (size_t)b);
    }
    return NULL;
}

/* enqueue + dequeue + ack of pre-built events, one thread each side,
 * `batch` at a time. */
static double bench_raw(const char *url, long n, long batch)
{
    if (batch > 1024)
        batch = 1024;
    struct raw_bench r = {.n = n, .k = n < 65536 ? n : 65536, .batch = batch};
    if (batch > 1)
        r.k = (r.k + batch - 1) / batch * batch;
    char name[64];
    snprintf(name, sizeof name, "bench-raw-%d", (int)getpid());
    if (evq_queue_open(&r.q, url, name, NULL))
        return 0;
    r.evs = malloc((size_t)r.k * sizeof *r.evs);
    for (long i = 0; i < r.k; i++)
        r.evs[i] = evq_event_new("bench.raw", json_integer(i));
    pthread_t t;
    int64_t t0 = mono_ns();
    pthread_create(&t, NULL, raw_producer, &r);
    evq_msg *ms[1024];
    for (long i = 0; i < n;) {
        int got = batch > 1 ? evq_dequeue_batch(r.q, ms, (size_t)batch, 10000)
                  : evq_dequeue(r.q, &ms[0], 10000) == 0 ? 1
                                                          : -1;
        if (got <= 0)
            break;
        if (batch > 1)
            evq_ack_batch(ms, (size_t)got);
        else
            evq_ack(ms[0]);
        i += got;
    }
    pthread_join(t, NULL);
    double s = (double)(mono_ns() - t0) / 1e9;
    for (long i = 0; i < r.k; i++)
        evq_event_free(r.evs[i]);
    free(r.evs);
    evq_queue_close(r.q);
    return (double)n / s;
}

/* What the worker's latency statistics cost per event: two clock reads and a
 * histogram update. */
static double bench_stats_overhead(void)
{
    evq__hist *h = calloc(1, sizeof *h);
    long iters = 5000000;
    evq__ticks_init();
    int64_t t0 = mono_ns();
    for (long i = 0; i < iters; i++) {
        uint64_t a = evq__ticks();
        uint64_t b = evq__ticks();
        evq__hist_record(h, b - a);
    }
    double ns = (double)(mono_ns() - t0) / (double)iters;
    free(h);
    return ns;
}

static uint64_t merged_quantile(struct bench *b, double q)
{
    uint64_t *counts = calloc(EVQ__HIST_BUCKETS, sizeof *counts), total = 0;
    for (int i = 0; i < b->nslots; i++)
        evq__hist_merge(counts, &b->slots[i]->hist);
    for (unsigned i = 0; i < EVQ__HIST_BUCKETS; i++)
        total += counts[i];
    uint64_t v = evq__hist_quantile(counts, total, q);
    free(counts);
    return v;
}

static int cmd_bench(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"events", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, 's'},
        {"producers", required_argument, NULL, 'p'},
        {"workers", required_argument, NULL, 'w'},
        {"batch", required_argument, NULL, 'b'},
        {"warmup", required_argument, NULL, 'k'},
        {"queue", required_argument, NULL, 'q'},
        {"json", no_argument, NULL, 'j'},
        {"keep", no_argument, NULL, 'K'},
        {"async", no_argument, NULL, 'A'},
        {"threads", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long n = 1000000, size = 100, producers = 1, workers = 1, batch = 1,
         warmup = 0;
    const char *qname = NULL;
    bool json = false, keep = false, async = false;
    evq_opts *opts = NULL;
    int c, rc;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (!parse_long(optarg, 1, 100000000, &n))
                return usage_error("bench", "bad --events '%s'", optarg);
            break;
        case 's':
            if (!parse_long(optarg, 0, 1 << 20, &size))
                return usage_error("bench", "bad --size '%s'", optarg);
            break;
        case 'p':
            if (!parse_long(optarg, 1, 256, &producers))
                return usage_error("bench", "bad --producers '%s'", optarg);
            break;
        case 'w':
            if (!parse_long(optarg, 1, 1024, &workers))
                return usage_error("bench", "bad --workers '%s'", optarg);
            break;
        case 'b':
            if (!parse_long(optarg, 1, 1000, &batch))
                return usage_error("bench", "bad --batch '%s'", optarg);
            break;
        case 'k':
            if (!parse_long(optarg, 0, 1000000, &warmup))
                return usage_error("bench", "bad --warmup '%s'", optarg);
            break;
        case 'q':
            qname = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'K':
            keep = true;
            break;
        case 'A':
            async = true;
            break;
            COMMON_FLAGS("bench", bench_help)
        }
    }
    if (argc - optind != 1) {
        evq_opts_free(opts);
        return usage_error("bench", "%s", "needs URL");
    }
    const char *url = argv[optind];
    bool memory = strncmp(url, "memory://", 9) == 0;
    n -= n % producers; /* every producer makes the same number */
    if (n == 0)
        n = producers;
    if (memory && !strstr(url, "capacity=") &&
        !evq_opts_get(opts, "capacity")) {
        char cap[32];
        snprintf(cap, sizeof cap, "%ld",
                 n < 65536      ? 65536
                 : n > 16777216 ? 16777216
                                : n);
        if ((rc = add_opt(&opts, "bench", "capacity=1")) ||
            (rc = evq_opts_set(opts, "capacity", cap))) {
            evq_opts_free(opts);
            return rc > 0 ? rc : fail("bench", rc);
        }
    }

    struct bench b = {.n = n,
                      .producers = (int)producers,
                      .batch = (int)batch,
                      .async = async,
                      .mu = PTHREAD_MUTEX_INITIALIZER,
                      .progress = isatty(STDERR_FILENO) != 0};
    char name[64], *pad = malloc((size_t)size + 1);
    memset(pad, 'x', (size_t)size);
    pad[size] = '\0';
    b.payload = json_pack("{s:s}", "p", pad);
    free(pad);
    if (qname)
        snprintf(name, sizeof name, "%s", qname);
    else
        snprintf(name, sizeof name, "bench-%d", (int)getpid());
    const char *mode = opts ? evq_opts_get(opts, "nats.mode") : NULL;
    bool core_nats =
        strstr(url, "nats.mode=core") || (mode && strcmp(mode, "core") == 0);
    struct bench_made made = {.queue = !qname && !keep};
    if (!keep)
        bench_file_before(url, &made);
    if ((rc = open_queue(url, name, opts, &b.q))) { /* frees opts */
        json_decref(b.payload);
        return rc;
    }

    /* warm up, enqueue, then drain the backlog through a worker */
    produce_events(&b, warmup);
    double enq_s = run_producers(&b, true);
    if (core_nats) {
        /* Core NATS keeps nothing for readers that were not there: there
         * is no backlog to drain, so only publishing is measured. */
        if (b.progress)
            fprintf(stderr, "\r%-40s\r", "");
        if (json)
            printf("{\"backend\":\"nats\",\"mode\":\"core\",\"events\":%ld,"
                   "\"size\":%ld,\"producers\":%ld,\"batch\":%ld,"
                   "\"enqueue_per_s\":%.0f,\"ok\":%s}\n",
                   n, size, producers, batch, n / enq_s,
                   atomic_load(&b.errors) ? "false" : "true");
        else
            printf("enqueue      %12.0f events/s (core NATS: nothing is kept "
                   "to drain)\n",
                   n / enq_s);
        bench_clean_up(b.q, &made);
        json_decref(b.payload);
        return atomic_load(&b.errors) ? EXIT_FAILURE : 0;
    }
    evq_events *events = evq_events_new();
    evq_register_handler(events, "*", bench_handler, &b);
    evq_worker_opts wo;
    evq_worker_opts_init(&wo);
    wo.concurrency = (int)workers;
    wo.prefetch = 16;
    evq_worker *w;
    int64_t t0 = mono_ns();
    if ((rc = evq_worker_start(&w, b.q, events, &wo))) {
        rc = fail("worker", rc);
        bench_clean_up(b.q, &made);
        evq_events_free(events);
        json_decref(b.payload);
        return rc;
    }
    bool ok = wait_handled(&b, n + warmup, "drain");
    /* the backlog's rate from its first event to its last: what came
     * before the first (a consumer group's join) is reported apart */
    int64_t first = INT64_MAX, last = 0;
    pthread_mutex_lock(&b.mu);
    for (int i = 0; i < b.nslots; i++) {
        int64_t f = atomic_load(&b.slots[i]->first_ns);
        int64_t l = atomic_load(&b.slots[i]->last_ns);
        first = f && f < first ? f : first;
        last = l > last ? l : last;
    }
    pthread_mutex_unlock(&b.mu);
    if (first == INT64_MAX)
        first = last = t0;
    double start_ms = (double)(first - t0) / 1e6;
    double drain_s = (double)(last - first) / 1e9;
    long drained = n + warmup - 1;
    if (drain_s <= 0 || drained < 1) {
        drain_s = (double)(mono_ns() - t0) / 1e9;
        drained = n + warmup;
    }

    /* end to end: producers and the worker at once; latency from here on */
    pthread_mutex_lock(&b.mu);
    for (int i = 0; i < b.nslots; i++)
        memset(&b.slots[i]->hist, 0, sizeof b.slots[i]->hist);
    pthread_mutex_unlock(&b.mu);
    atomic_store(&b.handled, 0);
    t0 = mono_ns();
    if (ok) {
        run_producers(&b, false);
        ok = wait_handled(&b, n, "e2e");
    }
    double e2e_s = (double)(mono_ns() - t0) / 1e9;
    evq_worker_stop(w, 10000);
    evq_worker_free(w);
    if (b.progress)
        fprintf(stderr, "\r%-40s\r", "");

    double raw = memory && ok ? bench_raw(url, n, batch) : 0;
    double stats_ns = bench_stats_overhead();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double p50 = (double)merged_quantile(&b, 0.5) / 1000.0,
           p99 = (double)merged_quantile(&b, 0.99) / 1000.0,
           p999 = (double)merged_quantile(&b, 0.999) / 1000.0;

    if (json) {
        printf(
            "{\"backend\":\"%s\",\"events\":%ld,\"size\":%ld,\"producers\":%ld,"
            "\"batch\":%ld,\"workers\":%ld,\"enqueue_per_s\":%.0f,"
            "\"start_ms\":%.1f,\"drain_per_s\":%.0f,"
            "\"e2e_per_s\":%.0f,\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,"
            "\"p999\":%.1f},\"peak_rss_kib\":%ld,\"stats_overhead_ns\":%.1f",
            evq_queue_scheme(b.q), n, size, producers, batch, workers,
            n / enq_s, start_ms, drained / drain_s, n / e2e_s, p50, p99, p999,
            ru.ru_maxrss, stats_ns);
        if (memory)
            printf(",\"raw_per_s\":%.0f", raw);
        printf(",\"ok\":%s}\n",
               ok && !atomic_load(&b.errors) ? "true" : "false");
    } else {
        printf(
            "events %ld of %ld bytes, %ld producer(s), %ld worker thread(s)\n",
            n, size, producers, workers);
        printf("enqueue      %12.0f events/s\n", n / enq_s);
        printf("drain        %12.0f events/s (first event after %.1f ms)\n",
               drained / drain_s, start_ms);
        printf("end to end   %12.0f events/s\n", n / e2e_s);
        printf("latency      p50 %.1f us  p99 %.1f us  p99.9 %.1f us\n", p50,
               p99, p999);
        if (memory)
            printf("raw queue    %12.0f events/s\n", raw);
        printf("stats cost   %12.1f ns/event\n", stats_ns);
        printf("peak RSS     %12ld KiB\n", ru.ru_maxrss);
    }
    for (int i = 0; i < b.nslots; i++)
        free(b.slots[i]);
    evq_events_free(events);
    bench_clean_up(b.q, &made);
    json_decref(b.payload);
    if (!ok || atomic_load(&b.errors)) {
        fprintf(stderr, "%s bench: %d enqueue errors%s\n", prog,
                atomic_load(&b.errors), ok ? "" : ", incomplete");
        return EXIT_FAILURE;
    }
    return 0;
}

/* ---- options, main ----------------------------------------------------------
 */

static int cmd_options(int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], "--help") == 0) {
        fputs("usage: evq options SCHEME\n\nLists the options a backend's "
              "queues accept (URL query parameters or -o KEY=VALUE).\n",
              argc == 2 ? stdout : stderr);
        return argc == 2 ? 0 : EXIT_USAGE;
    }
    char *help = evq_options_help(argv[1]);
    if (!help)
        return fail("options", EVQ_ENOENT);
    fputs(help, stdout);
    free(help);
    return 0;
}

/* ---- the commands -----------------------------------------------------------
 * One table: each command's name, the synopsis and summary `evq --help`
 * lists, and its handler (which prints its own --help: 'evq help NAME'
 * asks it). */

static const struct command {
    const char *name, *synopsis, *summary;
    int (*fn)(int, char **);
} commands[] = {
    {"produce", "produce URL QUEUE",
     "enqueue events (from flags or standard input)", cmd_produce},
    {"consume", "consume URL QUEUE",
     "print events as CloudEvents JSON lines, then ack", cmd_consume},
    {"stats", "stats URL QUEUE", "queue figures, as JSON or Prometheus text",
     cmd_stats},
    {"pause", "pause|resume URL QUEUE",
     "stop or restart every consumer of the queue", cmd_pause},
    {"resume", NULL, NULL, cmd_pause}, /* listed with pause */
    {"dead", "dead list|replay|purge URL QUEUE",
     "show, re-enqueue or drop dead letters", cmd_dead},
    {"demo", "demo [URL]", "the seed's example end to end", cmd_demo},
    {"schedule", "schedule URL QUEUE --cron EXPR --type T",
     "enqueue an event at every time a cron expression names", cmd_schedule},
    {"relay", "relay FROM_URL QUEUE TO_URL [TO_QUEUE]",
     "move an outbox's events on to another queue", cmd_relay},
    {"serve", "serve URL#QUEUE...",
     "a dashboard, Prometheus /metrics and a JSON API", cmd_serve},
    {"bench", "bench URL", "throughput, latency and memory figures",
     cmd_bench},
    {"options", "options SCHEME", "the options a backend accepts",
     cmd_options},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(name, commands[i].name) == 0)
            return &commands[i];
    return NULL;
}

/* evq --help: the table, then the URLs. */
static void print_usage(FILE *f)
{
    fputs("usage: evq COMMAND [ARGS]\n\n", f);
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const struct command *c = &commands[i];
        if (!c->synopsis)
            continue;
        /* the summary beside a short synopsis, under a long one */
        if (strlen(c->synopsis) < 20)
            fprintf(f, "  %-19s %s\n", c->synopsis, c->summary);
        else
            fprintf(f, "  %s\n                      %s\n", c->synopsis,
                    c->summary);
    }
    fputs("\n"
          "'evq COMMAND --help' (or 'evq help COMMAND') tells more.  URLs, "
          "with\n"
          "options as query parameters ('evq options SCHEME' lists them):\n"
          "  memory://                        in this process only\n"
          "  sqlite:///path/file.db           sqlite://file.db: relative\n"
          "  redis://[user:pw@]host:port[/db] redis+unix:///path/redis.sock\n"
          "  redis+sentinel://host:26379[,host:26379...]/master[/db]\n"
          "  postgres://[user:pw@]host[:port]/dbname\n"
          "  nats://[user:pw@]host:port[,host:port...]\n"
          "  kafka://host:port[,host:port...]\n"
          "  amqp://[user:pw@]host[:port]/vhost  amqps://: over TLS\n"
          "Exit status: 0 success, 1 failure, 2 usage error.\n",
          f);
}

/* The schemes this build serves (a backend can be left out). */
static void print_built(FILE *f)
{
    const char *schemes[16];
    size_t n = evq_backends(schemes, 16);
    fputs("Built with:", f);
    for (size_t i = 0; i < n && i < 16; i++)
        fprintf(f, " %s://", schemes[i]);
    fputc('\n', f);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        (strcmp(argv[1], "help") == 0 && argc == 2)) {
        print_usage(stdout);
        print_built(stdout);
        return 0;
    }
    if (strcmp(argv[1], "help") == 0) { /* help COMMAND: its --help */
        const struct command *c = argc == 3 ? find_command(argv[2]) : NULL;
        if (c) {
            char *args[] = {argv[2], "--help", NULL};
            return c->fn(2, args);
        }
        fprintf(stderr, "%s help: %s%s%s\n\n", prog,
                argc == 3 ? "no such command '" : "one command at a time",
                argc == 3 ? argv[2] : "", argc == 3 ? "'" : "");
        print_usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("evq %s (library %s)\n", EVQ_VERSION_STRING, evq_version());
        print_built(stdout);
        return 0;
    }
    const struct command *c = find_command(argv[1]);
    if (!c) {
        fprintf(stderr, "%s: unknown command '%s'\n\n", prog, argv[1]);
        print_usage(stderr);
        return EXIT_USAGE;
    }
    signals_init();
    return c->fn(argc - 1, argv + 1);
}
