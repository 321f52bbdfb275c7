/*
 * log.c - the backend kit's log: what a user needs to see of the broker
 * (a lost connection, a reconnect, a client library's warning), once, not
 * per message.
 *
 * Each queue handle has a logger.  Its lines go to the handle's own log
 * function (a worker sets its handle's to the worker's `log`) or else to
 * the process's (evq_set_log); with neither, nowhere: the library never
 * prints.  A line said again within QUIET_MS of the last time is counted,
 * not written; the count is told when another line comes, or when the
 * same one comes after the quiet time.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUIET_MS 30000

struct evq__logger {
    pthread_mutex_t mu;
    evq_log_fn fn; /* the handle's own; NULL: the process's */
    void *arg;
    char where[160]; /* "redis://host:6379 'orders'" */
    char last[512];
    evq_log_level last_level;
    int64_t last_ms;
    unsigned repeats;
};

static pthread_mutex_t proc_mu = PTHREAD_MUTEX_INITIALIZER;
static evq_log_fn proc_fn;
static void *proc_arg;

void evq_set_log(evq_log_fn fn, void *arg)
{
    pthread_mutex_lock(&proc_mu);
    proc_fn = fn;
    proc_arg = arg;
    pthread_mutex_unlock(&proc_mu);
}

evq__logger *evq__logger_new(const char *where)
{
    evq__logger *lg = calloc(1, sizeof *lg);
    if (!lg)
        return NULL;
    pthread_mutex_init(&lg->mu, NULL);
    snprintf(lg->where, sizeof lg->where, "%s", where);
    return lg;
}

void evq__logger_free(evq__logger *lg)
{
    if (!lg)
        return;
    pthread_mutex_destroy(&lg->mu);
    free(lg);
}

void evq__logger_set(evq__logger *lg, evq_log_fn fn, void *arg)
{
    pthread_mutex_lock(&lg->mu);
    lg->fn = fn;
    lg->arg = arg;
    pthread_mutex_unlock(&lg->mu);
}

/* Where lines go now: the handle's function, or the process's. */
static evq_log_fn target(evq__logger *lg, void **arg)
{
    if (lg->fn) {
        *arg = lg->arg;
        return lg->fn;
    }
    pthread_mutex_lock(&proc_mu);
    evq_log_fn fn = proc_fn;
    *arg = proc_arg;
    pthread_mutex_unlock(&proc_mu);
    return fn;
}

void evq__logf(evq__logger *lg, evq_log_level level, const char *fmt, ...)
{
    char text[512], line[2][800];
    int n_lines = 0;
    va_list ap;
    if (!lg)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    int64_t now = evq__now_mono_ns() / 1000000;
    evq_log_level levels[2] = {level, level};

    pthread_mutex_lock(&lg->mu);
    bool same = strcmp(text, lg->last) == 0;
    if (same && now - lg->last_ms < QUIET_MS) {
        lg->repeats++;
        pthread_mutex_unlock(&lg->mu);
        return;
    }
    if (lg->repeats) {
        levels[n_lines] = lg->last_level;
        snprintf(line[n_lines++], sizeof line[0],
                 "%s: said %u more time%s in %lld s: %s", lg->where,
                 lg->repeats, lg->repeats == 1 ? "" : "s",
                 (long long)((now - lg->last_ms) / 1000), lg->last);
    }
    levels[n_lines] = level;
    snprintf(line[n_lines++], sizeof line[0], "%s: %s", lg->where, text);
    snprintf(lg->last, sizeof lg->last, "%s", text);
    lg->last_level = level;
    lg->last_ms = now;
    lg->repeats = 0;
    void *arg;
    evq_log_fn fn = target(lg, &arg);
    pthread_mutex_unlock(&lg->mu);
    /* outside the lock: a log function may call into the library */
    for (int i = 0; fn && i < n_lines; i++)
        fn(levels[i], line[i], arg);
}
