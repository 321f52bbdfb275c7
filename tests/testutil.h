/*
 * testutil.h - what every evq test file includes: cmocka and assertions
 * that print the evq error name and detail when they fail.
 */
#ifndef EVQ_TESTUTIL_H
#define EVQ_TESTUTIL_H

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "evq.h"

/* Asserts that an evq call returned 0; otherwise prints its code and
 * detail. */
#define assert_evq_ok(expr)                                                    \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        if (rc_ != 0)                                                          \
            fail_msg("%s returned %s (%s): %s", #expr,                         \
                     evq_errname(rc_) ? evq_errname(rc_) : "?",                \
                     evq_strerror(rc_), evq_errmsg());                         \
    } while (0)

/* Asserts that an evq call failed with `code`. */
#define assert_evq_err(expr, code)                                             \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        if (rc_ != (code))                                                     \
            fail_msg("%s returned %s, expected %s (detail: %s)", #expr,        \
                     rc_ == 0 ? "0" : evq_errname(rc_), evq_errname(code),     \
                     evq_errmsg());                                            \
    } while (0)

/* Asserts that evq_errmsg() contains `needle`. */
#define assert_errmsg_has(needle)                                              \
    do {                                                                       \
        if (!strstr(evq_errmsg(), (needle)))                                   \
            fail_msg("evq_errmsg() \"%s\" lacks \"%s\"", evq_errmsg(),         \
                     (needle));                                                \
    } while (0)

/* Milliseconds on the monotonic clock. */
static inline int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for cond(arg) to hold, checking every millisecond, for at most
 * timeout_ms: the way tests wait for another thread, instead of sleeping. */
static inline bool eventually(bool (*cond)(void *), void *arg, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    struct timespec ms = {0, 1000000};
    while (!cond(arg)) {
        if (now_ms() > end)
            return false;
        nanosleep(&ms, NULL);
    }
    return true;
}

/* Enqueues an event of `type` without data; with `key` (not NULL) as its
 * partitionkey. */
static inline void enqueue_type(evq_queue *q, const char *type, const char *key)
{
    evq_event *ev = evq_event_new(type, NULL);
    assert_non_null(ev);
    if (key)
        assert_evq_ok(evq_event_set_attr(ev, "partitionkey", key));
    assert_evq_ok(evq_enqueue(q, ev));
    evq_event_free(ev);
}

/* A handler that counts the events it sees in the atomic_int `arg`. */
static inline int count_handler(const evq_event *ev, void *arg)
{
    (void)ev;
    atomic_fetch_add((atomic_int *)arg, 1);
    return 0;
}

/* For eventually(): the atomic_int `arg` is at least 1. */
static inline bool at_least_one(void *arg)
{
    return atomic_load((atomic_int *)arg) >= 1;
}

#ifdef EVQ_TEST_CONSUMER
/* Starts tests/consumer.c with `args` (NULL-ended, after the program). */
static inline pid_t spawn_consumer(const char *const *args)
{
    extern char **environ;
    char *argv[8] = {(char *)EVQ_TEST_CONSUMER};
    pid_t pid;
    for (int i = 0; i < 6 && args[i]; i++)
        argv[i + 1] = (char *)args[i];
    assert_int_equal(
        posix_spawn(&pid, EVQ_TEST_CONSUMER, NULL, NULL, argv, environ), 0);
    return pid;
}

/* A consumer that takes one event of `queue` at `url` and dies by SIGKILL
 * holding it. */
static inline void consume_one_and_die(const char *url, const char *queue)
{
    const char *args[] = {"one", url, queue, NULL};
    pid_t pid = spawn_consumer(args);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
        fail_msg("the consumer did not die holding an event (status %d)",
                 status);
}
#endif

/* The most memory this process has held so far, in KiB. */
static inline long peak_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* Fails unless this process's peak memory grew by at most `limit_kib`
 * since it was `before_kib` (peak_rss_kib()). */
static inline void assert_peak_rss_within(long before_kib, long limit_kib)
{
    long grew = peak_rss_kib() - before_kib;
    if (grew > limit_kib)
        fail_msg("peak RSS grew by %ld KiB, more than %ld", grew, limit_kib);
}

/* Checks that the next dead letter of `q` is the undecodable message of
 * `stored` bytes that a backend cut short, and acks it. */
static inline void assert_oversize_dead_letter(evq_queue *q, long stored)
{
    evq_queue *dead;
    evq_msg *m;
    char want[32];
    size_t len = 0;
    assert_evq_ok(evq_queue_open_dead(&dead, q));
    assert_evq_ok(evq_dequeue(dead, &m, 20000));
    const evq_event *ev = evq_msg_event(m);
    snprintf(want, sizeof want, "%ld", stored);
    assert_string_equal(evq_event_type(ev), "evq.undecodable");
    assert_string_equal(evq_event_attr(ev, "evqtruncated"), want);
    if (!strstr(evq_event_attr(ev, "evqerror"), "max_event_bytes"))
        fail_msg("evqerror '%s' does not name max_event_bytes",
                 evq_event_attr(ev, "evqerror"));
    assert_non_null(evq_event_binary(ev, &len));
    assert_true(len > 0 && len < (size_t)stored);
    assert_evq_ok(evq_ack(m));
    evq_queue_close(dead);
}

/* A loopback port nothing listens on now (the kernel's pick). */
static inline int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* A loopback server that never answers a connection: a listening socket
 * whose backlog (of one) is taken by a connection nobody accepts, so the
 * kernel drops further handshakes and a client's connect waits out its
 * own timeout.  Returns the port; close fds[0] and fds[1] when done. */
static inline int silent_server(int fds[2])
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(fds[0], (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fds[0], 0), 0);
    assert_int_equal(getsockname(fds[0], (struct sockaddr *)&a, &len), 0);
    fds[1] = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(fds[1], (struct sockaddr *)&a, sizeof a), 0);
    return ntohs(a.sin_port);
}

/* Opens `url` (a silent_server's) and checks that it fails with
 * EVQ_ECONN, after about `ms` (connect_timeout_ms): not at once, not a
 * hang. */
static inline void assert_open_times_out(const char *url, int ms)
{
    evq_queue *q;
    int64_t t0 = now_ms();
    assert_evq_err(evq_queue_open(&q, url, "silent", NULL), EVQ_ECONN);
    int64_t took = now_ms() - t0;
    printf("%s: open failed after %lld ms: %s\n", url, (long long)took,
           evq_errmsg());
    assert_true(took >= ms / 2);
    assert_true(took < ms + 15000);
}

/* Whether something accepts connections on loopback port `p` within 5 s. */
static inline bool port_open(int p)
{
    for (int i = 0; i < 200; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)p)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            return true;
        struct timespec pause = {0, 25 * 1000000};
        nanosleep(&pause, NULL);
    }
    return false;
}

#endif
