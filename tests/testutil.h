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
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "evq.h"

/* Built with ThreadSanitizer (-fsanitize=thread). */
#if defined(__SANITIZE_THREAD__)
#define EVQ_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EVQ_UNDER_TSAN 1
#endif
#endif

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

/* Forks a consumer process that opens `queue` on `url`, takes one event
 * and is killed with SIGKILL before it can ack; asserts it died so. */
static inline void consume_one_and_die(const char *url, const char *queue)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        evq_queue *q;
        evq_msg *m;
        if (evq_queue_open(&q, url, queue, NULL) || evq_dequeue(q, &m, 5000))
            _exit(1);
        kill(getpid(), SIGKILL);
        _exit(2);
    }
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status));
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
