/*
 * cron.h - cron expressions and the times they name, in a time zone
 * (cron.c): the schedules of periodic events.  Nothing here is installed.
 */
#ifndef EVQ_CRON_H
#define EVQ_CRON_H

#include "internal.h"

#include <stdbool.h>
#include <stdint.h>

/* A parsed expression: for each field, the set of the values it matches
 * (bit v set: value v matches). */
typedef struct evq__cron {
    uint64_t minutes; /* bits 0..59 */
    uint32_t hours;   /* 0..23 */
    uint32_t days;    /* 1..31 (day of month) */
    uint16_t months;  /* 1..12 */
    uint8_t weekdays; /* 0..6, Sunday 0 (7 accepted as Sunday) */
    /* The day field was one '*' or '*' + "/n" item.  The standard rule:
     * when both day fields are restricted (neither flag set) a day
     * matches if EITHER matches; otherwise it must match both, so with a
     * plain '*' only the other field counts. */
    bool days_star, weekdays_star;
} evq__cron;

/* Parses a standard five-field expression, "minute hour day-of-month month
 * day-of-week" (spaces or tabs between fields, leading and trailing ones
 * allowed), into *out: per field a list of items, each '*', a number, a
 * range "a-b", or one of those followed by a step "/n" ("a/n": from a to
 * the field's last value); month names JAN-DEC and day names SUN-SAT in
 * any case.  Or one of the macros
 * @yearly @annually @monthly @weekly @daily @midnight @hourly.
 * EVQ_EINVAL, with a message quoting the expression and naming the bad
 * field ("cron \"61 * * * *\": minute: 61 is out of 0-59"), for any input
 * that is not one (NULL, empty, too long, wrong field count, value out of
 * range, step 0, reversed range, unknown name, junk).  *out is written only
 * on success; it holds no memory.  Any thread. */
int evq__cron_parse(const char *expr, evq__cron *out);

/* A time zone of the IANA database, for evq__cron_next. */
typedef struct evq__tz evq__tz;

/* Opens the time zone `name`: NULL or "UTC" for UTC (no ICU involved),
 * else an IANA name such as "Europe/Berlin".  EVQ_EINVAL naming it when
 * the database does not know it; EVQ_ENOMEM.  *out is the caller's, to
 * free with evq__tz_free.  A zone may be shared by threads (it serializes
 * its own use). */
int evq__tz_open(const char *name, evq__tz **out);
/* Frees a zone (NULL: nothing); no thread may be using it. */
void evq__tz_free(evq__tz *tz);

/* The first time `c` matches strictly after after_ms (unix milliseconds),
 * on the civil calendar of `tz` (NULL: UTC), into *slot_ms: the unix
 * milliseconds at which that local minute starts.  Daylight saving time:
 * a minute skipped by a spring-forward gap runs at the first instant after
 * the gap; a minute a fall-back repeats runs once, at its first
 * occurrence (cron.c says more).  EVQ_EINVAL when nothing matches within 8
 * years (a day no month given has, such as February 30) or after_ms is
 * outside the years 1-9999.  Any thread. */
int evq__cron_next(const evq__cron *c, evq__tz *tz, int64_t after_ms,
                   int64_t *slot_ms);

#endif
