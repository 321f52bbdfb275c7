/*
 * testutil.h - what every evq test file includes: cmocka and assertions
 * that print the evq error name and detail when they fail.
 */
#ifndef EVQ_TESTUTIL_H
#define EVQ_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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

#endif
