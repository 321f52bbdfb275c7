/* A worker service: handles the events of a queue on a server backend until
 * SIGTERM (systemctl stop) or Ctrl-C, then stops cleanly: running handlers
 * finish, events fetched but not started go back to the queue, exit 0.
 *
 *   worker_service URL QUEUE     e.g. sqlite:///var/lib/app/evq.db orders
 *                                     redis://127.0.0.1:6379 orders
 *
 * The signals are blocked before the queue opens: client libraries start
 * their threads then, and those inherit the mask, so no thread of theirs
 * can be killed by the signal's default action.  The main thread then
 * just waits for one with sigwait. */
#include <evq.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static atomic_long handled;

static int place_order(const evq_event *ev, void *arg)
{
    (void)arg;
    json_t *id = json_object_get(evq_event_data(ev), "id");
    if (!json_is_integer(id))
        return evq_handler_reason("order without an integer id");
    printf("order %lld placed (attempt %d)\n",
           (long long)json_integer_value(id), evq_event_attempt(ev));
    fflush(stdout);
    atomic_fetch_add(&handled, 1);
    return 0;
}

static void on_log(evq_log_level level, const char *line, void *arg)
{
    (void)arg;
    if (level >= EVQ_LOG_WARN)
        fprintf(stderr, "worker: %s\n", line);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: worker_service URL QUEUE\n");
        return 2;
    }
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL); /* before any thread starts */

    evq_queue *q;
    evq_events *events = evq_events_new();
    evq_worker *w;
    evq_worker_opts o;
    int rc = evq_queue_open(&q, argv[1], argv[2], NULL);
    if (rc) {
        fprintf(stderr, "open: %s: %s\n", evq_strerror(rc), evq_errmsg());
        return 1;
    }
    evq_register_handler(events, "order.placed", place_order, NULL);
    evq_worker_opts_init(&o);
    o.concurrency = 4;
    o.handler_timeout_ms = 30000; /* a stuck order is retried elsewhere */
    o.log = on_log;
    if ((rc = evq_worker_start(&w, q, events, &o)) != 0) {
        fprintf(stderr, "worker: %s: %s\n", evq_strerror(rc), evq_errmsg());
        return 1;
    }
    printf("worker_service: running\n");
    fflush(stdout);

    int sig;
    sigwait(&stop, &sig);
    /* Running handlers get 30 s to finish; fetched events go back. */
    rc = evq_worker_stop(w, 30000);
    struct evq_worker_stats st;
    evq_worker_stats(w, &st);
    printf("worker_service: stopped by %s: %ld handled, %s\n",
           sig == SIGTERM ? "SIGTERM" : "SIGINT", atomic_load(&handled),
           rc == 0 ? "cleanly" : evq_errmsg());
    evq_worker_free(w);
    evq_events_free(events);
    evq_queue_close(q);
    return rc == 0 ? 0 : 1;
}
