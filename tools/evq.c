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

#include "tool.h"

#define DEFAULT_URL "sqlite://evq.db"

const char *prog = "evq";

int fail(const char *what, int rc)
{
    fprintf(stderr, "%s: %s: %s (%s)\n", prog, what, evq_errmsg(),
            evq_strerror(rc));
    return EXIT_FAILURE;
}

int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s %s: ", prog, cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s %s --help'.\n", prog, cmd);
    return EXIT_USAGE;
}

int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Parses a whole decimal number in [min, max]. */
bool parse_long(const char *s, long min, long max, long *out)
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
int add_opt(evq_opts **o, const char *cmd, const char *kv)
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
int common_flag(int c, const char *cmd, const char *help, evq_opts **opts,
                bool *done)
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

int open_failed(const char *url, int rc)
{
    fail("open", rc);
    if (rc != EVQ_EINVAL && rc != EVQ_ENOTSUP)
        return EXIT_FAILURE;
    /* what the user wrote is wrong: a usage error */
    size_t n = strcspn(url, ":");
    if (url[n] == ':' && strstr(evq_errmsg(), "option"))
        fprintf(stderr, "Try '%s options %.*s'.\n", prog, (int)n, url);
    return EXIT_USAGE;
}

int open_queue(const char *url, const char *name, evq_opts *opts, evq_queue **q)
{
    int rc = evq_queue_open(q, url, name, opts);
    evq_opts_free(opts);
    return rc ? open_failed(url, rc) : 0;
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
    json_t *obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
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
            fprintf(stderr, "%s produce: line %ld: enqueued after all\n", prog,
                    l->lineno);
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
static int event_from_flags(const char *cmd, const char *type, const char *data,
                            const char *source, const char *subject,
                            const char *const *attrs, int nattrs,
                            evq_event **out)
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
        status = event_from_flags("produce", type, data, source, subject, attrs,
                                  nattrs, &ev);
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

/* ---- relay -----------------------------------------------------------------
 */

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
        return usage_error("relay", "relaying queue '%s' onto itself", queue);
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
                status = open_failed(url, rc);
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
        return usage_error(cmd, "%s",
                           "--status is pause's (it changes "
                           "nothing)");
    }
    if (strncmp(argv[optind], "memory:", 7) == 0) {
        evq_opts_free(opts);
        return usage_error(cmd, "%s",
                           "a memory:// queue lives in one "
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
                return usage_error("schedule",
                                   "bad --catch-up '%s' (0 to "
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
    int status = 0;
    if ((rc = evq_scheduler_new(&s, q, &so)) != 0)
        status = fail("schedule", rc);
    else if ((rc = evq_schedule_add(s, cron, tz, tmpl)) != 0)
        /* a --cron or --tz the library refuses is a usage error */
        status = rc == EVQ_EINVAL ? usage_error("schedule", "%s", evq_errmsg())
                                  : fail("schedule", rc);
    else if ((rc = evq_scheduler_start(s)) != 0)
        status = fail("schedule", rc);
    evq_event_free(tmpl);
    if (status) {
        evq_scheduler_free(s);
        evq_queue_close(q);
        return status;
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
        return open_failed(url, rc);
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
    if (!help) { /* a scheme this build has not: a usage error */
        fprintf(stderr, "%s options: %s\n", prog, evq_errmsg());
        return EXIT_USAGE;
    }
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
    {"bench", "bench URL", "throughput, latency and memory figures", cmd_bench},
    {"options", "options SCHEME", "the options a backend accepts", cmd_options},
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
