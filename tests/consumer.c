/* Consumer processes the tests kill, to see what becomes of their events:
 *
 *   consumer one URL QUEUE
 *       takes one event of QUEUE at URL (waiting up to 5 s) and kills
 *       itself with SIGKILL before settling it;
 *   consumer log FILE URL QUEUE
 *       runs a worker of 8 threads (prefetch 4) whose handler waits a
 *       random time of up to 20 ms, then appends the event's data (an
 *       integer) as a line to FILE; until it is killed.
 *   consumer poll FILE URL QUEUE MS
 *       dequeues for MS milliseconds, appending each event's id as a line
 *       to FILE and acking it (a second consumer beside a test's own).
 *   consumer limit FILE URL QUEUE RATE
 *       runs a worker of 4 threads (max_attempts 1) limited to RATE events
 *       a second, burst 20 (evq_worker_limit on "*"), whose handler
 *       appends the wall-clock time in ms as a line to FILE; until it is
 *       killed.
 *   consumer dedup FILE URL QUEUE WINDOW
 *       runs a worker of one thread (prefetch 4) with dedup_window_ms
 *       WINDOW whose handler appends the event's number ("n" of its data)
 *       as a line to FILE, and then, for number 6, sleeps; until it is
 *       killed.
 *   consumer unique FILE URL QUEUE KEYS
 *       once FILE.go exists, enqueues KEYS events with evquniquekey
 *       key-0, key-1, ... (evquniquettl 10 minutes) one evq_enqueue each,
 *       then appends "<stored> <taken>" to FILE: how many returned 0 and
 *       how many EVQ_EEXIST (any other failure exits 1).
 *   consumer produce FILE URL QUEUE
 *       enqueues events 0, 1, 2, ... (the data) with evq_enqueue_async,
 *       appending to FILE the number of each one its done callback reports
 *       stored (rc 0); until it is killed.
 *
 * Exits 1 if it could not start.  A program of its own, started with
 * posix_spawn, so the tests never fork a process that then starts threads
 * (ThreadSanitizer cannot follow that). */
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "evq.h"

static int log_fd = -1;
static atomic_uint seed;

static void log_stored(const char *id, int rc, void *arg)
{
    (void)id;
    if (rc != 0)
        return;
    char line[32];
    int n = snprintf(line, sizeof line, "%ld\n", (long)(intptr_t)arg);
    if (write(log_fd, line, (size_t)n) != n)
        _exit(4);
}

static int log_handler(const evq_event *ev, void *arg)
{
    (void)arg;
    unsigned r = atomic_fetch_add(&seed, 2654435761u);
    struct timespec pause = {0, (long)((r >> 8) % 20000) * 1000};
    nanosleep(&pause, NULL);
    char line[32];
    int n = snprintf(line, sizeof line, "%lld\n",
                     (long long)json_integer_value(evq_event_data(ev)));
    return write(log_fd, line, (size_t)n) == n ? 0 : EVQ_EIO;
}

static int number_handler(const evq_event *ev, void *arg)
{
    (void)arg;
    char line[32];
    int n = snprintf(line, sizeof line, "%lld\n",
                     (long long)json_integer_value(
                         json_object_get(evq_event_data(ev), "n")));
    if (write(log_fd, line, (size_t)n) != n)
        return EVQ_EIO;
    if (json_integer_value(json_object_get(evq_event_data(ev), "n")) == 6)
        sleep(600); /* until killed */
    return 0;
}

static int time_handler(const evq_event *ev, void *arg)
{
    (void)ev;
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char line[32];
    int n = snprintf(line, sizeof line, "%lld\n",
                     (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    return write(log_fd, line, (size_t)n) == n ? 0 : EVQ_EIO;
}

/* Opens FILE (argv[2]) for appending and runs a worker with `o` and
 * `handler` on queue argv[4] at argv[3] until killed; 1 if it could not
 * start. */
static int serve(char **argv, evq_process_fn handler, evq_worker_opts *o)
{
    evq_events *e = evq_events_new();
    evq_queue *q;
    evq_worker *w;
    log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT, 0600);
    evq_register_handler(e, "*", handler, NULL);
    if (log_fd < 0 || evq_queue_open(&q, argv[3], argv[4], NULL) ||
        evq_worker_start(&w, q, e, o)) {
        fprintf(stderr, "consumer: %s\n", evq_errmsg());
        return 1;
    }
    for (;;)
        pause();
}

int main(int argc, char **argv)
{
    evq_queue *q;
    if (argc == 4 && strcmp(argv[1], "one") == 0) {
        evq_msg *m;
        if (evq_queue_open(&q, argv[2], argv[3], NULL) ||
            evq_dequeue(q, &m, 5000)) {
            fprintf(stderr, "consumer: %s\n", evq_errmsg());
            return 1;
        }
        kill(getpid(), SIGKILL);
        return 3;
    }
    if (argc == 5 && strcmp(argv[1], "log") == 0) {
        evq_worker_opts o;
        atomic_store(&seed, (unsigned)getpid());
        evq_worker_opts_init(&o);
        o.concurrency = 8;
        o.prefetch = 4;
        return serve(argv, log_handler, &o);
    }
    if (argc == 6 && strcmp(argv[1], "limit") == 0) {
        evq_worker_opts o;
        evq_worker_opts_init(&o);
        o.concurrency = 4;
        o.max_attempts = 1;
        evq_limit lim = {.pattern = "*", .per_second = atof(argv[5]),
                         .burst = 20};
        o.limits = &lim;
        o.n_limits = 1;
        return serve(argv, time_handler, &o);
    }
    if (argc == 6 && strcmp(argv[1], "poll") == 0) {
        evq_msg *m;
        struct timespec t0, t;
        long ms = atol(argv[5]);
        FILE *f = fopen(argv[2], "a");
        if (!f || evq_queue_open(&q, argv[3], argv[4], NULL)) {
            fprintf(stderr, "consumer: %s\n", evq_errmsg());
            return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            long left = ms - ((t.tv_sec - t0.tv_sec) * 1000 +
                              (t.tv_nsec - t0.tv_nsec) / 1000000);
            if (left <= 0)
                break;
            int rc = evq_dequeue(q, &m, (int)(left < 200 ? left : 200));
            if (rc == EVQ_ETIMEDOUT)
                continue;
            if (rc) {
                fprintf(stderr, "consumer: %s\n", evq_errmsg());
                return 1;
            }
            fprintf(f, "%s\n", evq_event_id(evq_msg_event(m)));
            fflush(f);
            if ((rc = evq_ack(m)) != 0)
                fprintf(stderr, "consumer: ack: %s\n", evq_errmsg());
        }
        fclose(f);
        evq_queue_close(q);
        return 0;
    }
    if (argc == 6 && strcmp(argv[1], "dedup") == 0) {
        evq_worker_opts o;
        evq_worker_opts_init(&o);
        o.concurrency = 1;
        o.prefetch = 4;
        o.dedup_window_ms = atol(argv[5]);
        return serve(argv, number_handler, &o);
    }
    if (argc == 6 && strcmp(argv[1], "unique") == 0) {
        char go[512], line[64];
        long keys = atol(argv[5]), stored = 0, taken = 0;
        snprintf(go, sizeof go, "%s.go", argv[2]);
        if (evq_queue_open(&q, argv[3], argv[4], NULL)) {
            fprintf(stderr, "consumer: %s\n", evq_errmsg());
            return 1;
        }
        while (access(go, F_OK) != 0)
            nanosleep(&(struct timespec){0, 1000000}, NULL);
        for (long i = 0; i < keys; i++) {
            evq_event *ev = evq_event_new("conf.unique", json_integer(i));
            char key[32];
            snprintf(key, sizeof key, "key-%ld", i);
            evq_event_set_attr(ev, "evquniquekey", key);
            evq_event_set_attr(ev, "evquniquettl", "600000");
            int rc = evq_enqueue(q, ev);
            evq_event_free(ev);
            if (rc == 0) {
                stored++;
            } else if (rc == EVQ_EEXIST) {
                taken++;
            } else {
                fprintf(stderr, "consumer: %s\n", evq_errmsg());
                return 1;
            }
        }
        evq_queue_close(q);
        log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT, 0600);
        int n = snprintf(line, sizeof line, "%ld %ld\n", stored, taken);
        return log_fd >= 0 && write(log_fd, line, (size_t)n) == n ? 0 : 1;
    }
    if (argc == 5 && strcmp(argv[1], "produce") == 0) {
        log_fd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT, 0600);
        if (log_fd < 0 || evq_queue_open(&q, argv[3], argv[4], NULL)) {
            fprintf(stderr, "consumer: %s\n", evq_errmsg());
            return 1;
        }
        for (intptr_t i = 0;; i++) {
            evq_event *ev = evq_event_new("produced", json_integer(i));
            while (evq_enqueue_async(q, ev, 0, log_stored, (void *)i) != 0) {
                struct timespec pause = {0, 10 * 1000000};
                nanosleep(&pause, NULL);
            }
            evq_event_free(ev);
        }
    }
    fprintf(stderr, "usage: consumer one URL QUEUE\n"
                    "       consumer log FILE URL QUEUE\n"
                    "       consumer poll FILE URL QUEUE MS\n"
                    "       consumer limit FILE URL QUEUE RATE\n"
                    "       consumer dedup FILE URL QUEUE WINDOW\n"
                    "       consumer unique FILE URL QUEUE KEYS\n"
                    "       consumer produce FILE URL QUEUE\n");
    return 2;
}
