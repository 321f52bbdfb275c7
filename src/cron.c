/*
 * cron.c - cron expressions and the next time they match, in a time zone.
 *
 * The next time is searched on the zone's local civil calendar, field by
 * field: the first matching month from the start, in it the first matching
 * day, then hour, then minute; a field with no match left carries into the
 * next larger one.  So a schedule that matches once in four years (February
 * 29) costs a few hundred steps, and one that never matches (February 30)
 * gives up after 8 years of calendar, the longest gap between two February
 * 29ths.  The calendar is the proleptic Gregorian one, computed here; a
 * zone is needed only to turn an instant into local fields and a local
 * civil time back into an instant (ICU's ucal_* API).  UTC needs neither.
 *
 * Daylight saving time, for a local civil time T the expression matches:
 *  - T skipped by a spring-forward gap (Europe/Berlin 2027-03-28 02:30)
 *    runs at the first valid instant after the gap (03:00 local), ICU's
 *    UCAL_SKIPPED_WALL_TIME = UCAL_WALLTIME_NEXT_VALID.  Every minute of
 *    the gap maps to that one instant, so it runs there once.
 *  - T repeated by a fall-back (Europe/Berlin 2027-10-31 02:30, at 00:30
 *    and at 01:30 UTC) runs once, at its first occurrence,
 *    UCAL_REPEATED_WALL_TIME = UCAL_WALLTIME_FIRST.
 *  - The result is always strictly after the instant asked about: when
 *    that instant is inside the second occurrence of a repeated hour, the
 *    civil times after its local time map (first occurrence) to instants
 *    before it; those are passed over, to the next civil time whose instant
 *    is later.  Each such step moves on by at least a civil minute, and the
 *    steps are counted, so the search always ends.
 *
 * Threads: an ICU UCalendar is not thread-safe; each evq__tz holds one and
 * a mutex taken around its use.
 */
#include "cron.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <unicode/ucal.h>
#include <unicode/ustring.h>
#include <unicode/utypes.h>

/* Longest expression accepted: far more than any real one needs. */
#define CRON_MAX_LEN 1024
/* Years of calendar searched before a schedule is taken to never match. */
#define CRON_MAX_YEARS 8
/* Civil matches passed over because a fall-back put their instant at or
 * before the one asked about: at most a repeated day of minutes. */
#define CRON_MAX_REPEATS 4000
/* Instants evq__cron_next accepts: the years 1 to 9999 UTC. */
#define CRON_MIN_MS (-62135596800000LL)
#define CRON_MAX_MS 253402300799999LL

#define MS_PER_MINUTE 60000LL
#define MS_PER_DAY    86400000LL
/* Days from 0001-01-01 to 1970-01-01 (proleptic Gregorian). */
#define DAYS_0001_TO_1970 719162

/* ---- parsing ------------------------------------------------------------- */

static const char *const month_names[] = {"JAN", "FEB", "MAR", "APR",
                                          "MAY", "JUN", "JUL", "AUG",
                                          "SEP", "OCT", "NOV", "DEC"};
static const char *const day_names[] = {"SUN", "MON", "TUE", "WED",
                                        "THU", "FRI", "SAT"};

typedef struct field_spec {
    const char *name;
    int min, max;             /* numbers accepted */
    int star_max;             /* last value of '*' and "a/n" (day-of-week: 6) */
    const char *const *names; /* NULL: numbers only */
    int n_names, name_base;   /* names[i] is value name_base + i */
} field_spec;

static const field_spec fields[5] = {
    {"minute", 0, 59, 59, NULL, 0, 0},
    {"hour", 0, 23, 23, NULL, 0, 0},
    {"day-of-month", 1, 31, 31, NULL, 0, 0},
    {"month", 1, 12, 12, month_names, 12, 1},
    {"day-of-week", 0, 7, 6, day_names, 7, 0},
};

static const struct {
    const char *name, *expr;
} macros[] = {
    {"@yearly", "0 0 1 1 *"},  {"@annually", "0 0 1 1 *"},
    {"@monthly", "0 0 1 * *"}, {"@weekly", "0 0 * * 0"},
    {"@daily", "0 0 * * *"},   {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

/* What a message quotes of the input: printable ASCII, the rest as '?',
 * cut at 48 bytes with "...". */
#define SHOWN_MAX 48
typedef struct shown {
    char s[SHOWN_MAX + 4];
} shown;

static shown show(const char *p, size_t n)
{
    shown out;
    size_t k = n > SHOWN_MAX ? SHOWN_MAX : n;
    for (size_t i = 0; i < k; i++) {
        unsigned char ch = (unsigned char)p[i];
        out.s[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    if (k < n)
        memcpy(out.s + k, "...", 3), k += 3;
    out.s[k] = '\0';
    return out;
}

typedef struct parse_ctx {
    shown expr; /* the whole expression, for every message */
} parse_ctx;

/* EVQ_EINVAL with "cron \"<expr>\": <field>: <detail>". */
static int field_err(const parse_ctx *px, const field_spec *f, const char *fmt,
                     ...) EVQ__PRINTF(3, 4);
static int field_err(const parse_ctx *px, const field_spec *f, const char *fmt,
                     ...)
{
    char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return evq__err(EVQ_EINVAL, "cron \"%s\": %s: %s", px->expr.s, f->name,
                    detail);
}

static bool is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static bool is_alpha(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static char upper(char ch)
{
    return ch >= 'a' && ch <= 'z' ? (char)(ch - 'a' + 'A') : ch;
}

/* Reads decimal digits at *pp (before end) into *v, saturating at a value
 * larger than any field's; returns false when there is no digit. */
static bool read_number(const char **pp, const char *end, int *v)
{
    const char *p = *pp;
    long n = 0;
    if (p == end || !is_digit(*p))
        return false;
    for (; p < end && is_digit(*p); p++)
        if (n <= 1000000)
            n = n * 10 + (*p - '0');
    *v = (int)(n > 1000000 ? 1000001 : n);
    *pp = p;
    return true;
}

/* The character at p (before end), for a message: 'x', or a byte value. */
static shown show_char(const char *p, const char *end)
{
    shown out;
    if (p == end)
        snprintf(out.s, sizeof out.s, "the end");
    else if ((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f)
        snprintf(out.s, sizeof out.s, "'%c'", *p);
    else
        snprintf(out.s, sizeof out.s, "byte 0x%02x", (unsigned char)*p);
    return out;
}

/* One value of field f at *pp: a number or (month, day-of-week) a name. */
static int parse_value(const parse_ctx *px, const field_spec *f,
                       const char **pp, const char *end, const char *item,
                       const char *item_end, int *v)
{
    const char *p = *pp, *start = *pp;
    if (read_number(&p, end, v)) {
        if (*v < f->min || *v > f->max)
            return field_err(px, f, "%s is out of %d-%d",
                             show(start, (size_t)(p - start)).s, f->min,
                             f->max);
        *pp = p;
        return 0;
    }
    if (p < end && is_alpha(*p)) {
        while (p < end && is_alpha(*p))
            p++;
        size_t n = (size_t)(p - start);
        if (!f->names)
            return field_err(px, f, "\"%s\" is not a number", show(start, n).s);
        for (int i = 0; n == 3 && i < f->n_names; i++) {
            const char *name = f->names[i];
            if (upper(start[0]) == name[0] && upper(start[1]) == name[1] &&
                upper(start[2]) == name[2]) {
                *v = f->name_base + i;
                *pp = p;
                return 0;
            }
        }
        return field_err(px, f, "unknown name \"%s\" (%s-%s expected)",
                         show(start, n).s, f->names[0],
                         f->names[f->n_names - 1]);
    }
    return field_err(px, f, "a value expected at %s in \"%s\"",
                     show_char(p, end).s,
                     show(item, (size_t)(item_end - item)).s);
}

/* One item of a list, [p, end): "*", "a", "a-b", each optionally "/n". */
static int parse_item(const parse_ctx *px, const field_spec *f, const char *p,
                      const char *end, uint64_t *bits)
{
    const char *item = p;
    int lo, hi, step = 1;
    bool single = false;
    int rc;

    if (*p == '*') {
        lo = f->min;
        hi = f->star_max;
        p++;
    } else {
        if ((rc = parse_value(px, f, &p, end, item, end, &lo)) != 0)
            return rc;
        hi = lo;
        single = true;
        if (p < end && *p == '-') {
            p++;
            if ((rc = parse_value(px, f, &p, end, item, end, &hi)) != 0)
                return rc;
            if (hi < lo)
                return field_err(px, f, "range %s is reversed",
                                 show(item, (size_t)(p - item)).s);
            single = false;
        }
    }
    if (p < end && *p == '/') {
        const char *s = ++p;
        int span = f->star_max - f->min + 1;
        if (!read_number(&p, end, &step))
            return field_err(px, f, "a step expected after '/' in \"%s\"",
                             show(item, (size_t)(end - item)).s);
        if (step == 0)
            return field_err(px, f, "step 0 in \"%s\"",
                             show(item, (size_t)(end - item)).s);
        if (step > span)
            return field_err(px, f, "step %s is out of 1-%d",
                             show(s, (size_t)(p - s)).s, span);
        if (single) /* "a/n": a to the field's last value */
            hi = lo > f->star_max ? lo : f->star_max;
    }
    if (p != end)
        return field_err(px, f, "unexpected %s in \"%s\"", show_char(p, end).s,
                         show(item, (size_t)(end - item)).s);
    for (int v = lo; v <= hi; v += step)
        *bits |= 1ull << v;
    return 0;
}

/* Field f, [p, end): a comma-separated list of items. */
static int parse_field(const parse_ctx *px, const field_spec *f, const char *p,
                       const char *end, uint64_t *bits, bool *star)
{
    const char *field = p;
    *bits = 0;
    for (;;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        if (p == item_end)
            return field_err(px, f, "empty list item in \"%s\"",
                             show(field, (size_t)(end - field)).s);
        int rc = parse_item(px, f, p, item_end, bits);
        if (rc != 0)
            return rc;
        if (!comma)
            break;
        p = comma + 1;
    }
    *star = *field == '*' && !memchr(field, ',', (size_t)(end - field));
    if (f->max == 7 && (*bits & 0x80)) /* day-of-week 7: Sunday */
        *bits = (*bits & 0x7f) | 1;
    return 0;
}

/* The five fields of s (whitespace-separated) into *out. */
static int parse_fields(const parse_ctx *px, const char *s, evq__cron *out)
{
    const char *start[5], *end[5];
    int n = 0;
    const char *p = s;
    for (;;) {
        while (is_blank(*p))
            p++;
        if (!*p)
            break;
        const char *b = p;
        while (*p && !is_blank(*p))
            p++;
        if (n < 5) {
            start[n] = b;
            end[n] = p;
        }
        n++;
    }
    if (n == 0)
        return evq__err(EVQ_EINVAL,
                        "cron \"%s\": empty expression (5 fields: minute "
                        "hour day-of-month month day-of-week)",
                        px->expr.s);
    if (n != 5)
        return evq__err(EVQ_EINVAL,
                        "cron \"%s\": %d fields, 5 expected (minute hour "
                        "day-of-month month day-of-week)",
                        px->expr.s, n);

    uint64_t bits[5];
    bool star[5];
    for (int i = 0; i < 5; i++) {
        int rc =
            parse_field(px, &fields[i], start[i], end[i], &bits[i], &star[i]);
        if (rc != 0)
            return rc;
    }
    out->minutes = bits[0];
    out->hours = (uint32_t)bits[1];
    out->days = (uint32_t)bits[2];
    out->months = (uint16_t)bits[3];
    out->weekdays = (uint8_t)bits[4];
    out->days_star = star[2];
    out->weekdays_star = star[4];
    return 0;
}

int evq__cron_parse(const char *expr, evq__cron *out)
{
    parse_ctx px;
    evq__cron c;
    int rc;

    if (!expr)
        return evq__err(EVQ_EINVAL, "cron: NULL expression");
    size_t len = strnlen(expr, CRON_MAX_LEN + 1);
    px.expr = show(expr, len);
    if (len > CRON_MAX_LEN)
        return evq__err(EVQ_EINVAL, "cron \"%s\": longer than %d characters",
                        px.expr.s, CRON_MAX_LEN);

    const char *p = expr;
    while (is_blank(*p))
        p++;
    if (*p == '@') {
        const char *b = p;
        while (*p && !is_blank(*p))
            p++;
        size_t n = (size_t)(p - b);
        const char *equiv = NULL;
        for (size_t i = 0; i < sizeof macros / sizeof *macros; i++)
            if (strlen(macros[i].name) == n &&
                strncasecmp(macros[i].name, b, n) == 0)
                equiv = macros[i].expr;
        if (!equiv)
            return evq__err(EVQ_EINVAL,
                            "cron \"%s\": unknown macro \"%s\" (@yearly, "
                            "@annually, @monthly, @weekly, @daily, "
                            "@midnight or @hourly)",
                            px.expr.s, show(b, n).s);
        while (is_blank(*p))
            p++;
        if (*p)
            return evq__err(EVQ_EINVAL,
                            "cron \"%s\": unexpected \"%s\" after %s",
                            px.expr.s, show(p, strlen(p)).s, show(b, n).s);
        rc = parse_fields(&px, equiv, &c);
    } else {
        rc = parse_fields(&px, expr, &c);
    }
    if (rc == 0)
        *out = c;
    return rc;
}

/* ---- the civil calendar -------------------------------------------------- */

/* A local civil time, to the minute; month 1..12, day 1..31. */
typedef struct civil {
    int64_t y;
    int mo, d, h, mi;
} civil;

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int64_t y, int mo)
{
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return mo == 2 && is_leap(y) ? 29 : dim[mo - 1];
}

/* Days from 0001-01-01 to January 1 of year y. */
static int64_t days_before_year(int64_t y)
{
    int64_t p = y - 1;
    return p * 365 + floor_div(p, 4) - floor_div(p, 100) + floor_div(p, 400);
}

/* Days from 1970-01-01 to y-mo-d. */
static int64_t days_from_civil(int64_t y, int mo, int d)
{
    static const int before[12] = {0,   31,  59,  90,  120, 151,
                                   181, 212, 243, 273, 304, 334};
    int64_t n = days_before_year(y) + before[mo - 1] + (d - 1);
    if (mo > 2 && is_leap(y))
        n++;
    return n - DAYS_0001_TO_1970;
}

/* Sunday 0 .. Saturday 6 (0001-01-01 was a Monday). */
static int weekday(int64_t y, int mo, int d)
{
    int64_t n = days_from_civil(y, mo, d) + DAYS_0001_TO_1970;
    return (int)((n % 7 + 7 + 1) % 7);
}

/* The date `days` after 1970-01-01. */
static void civil_from_days(int64_t days, civil *t)
{
    int64_t n = days + DAYS_0001_TO_1970; /* since 0001-01-01 */
    int64_t y = 1 + floor_div(n * 400, 146097);
    while (days_before_year(y) > n)
        y--;
    while (days_before_year(y + 1) <= n)
        y++;
    int doy = (int)(n - days_before_year(y));
    int mo = 1;
    while (doy >= days_in_month(y, mo))
        doy -= days_in_month(y, mo++);
    t->y = y;
    t->mo = mo;
    t->d = doy + 1;
}

/* The smallest value >= from in `set` (bits up to max); -1 when none. */
static int next_in(uint64_t set, int from, int max)
{
    for (int v = from < 0 ? 0 : from; v <= max; v++)
        if (set >> v & 1)
            return v;
    return -1;
}

static bool day_matches(const evq__cron *c, int64_t y, int mo, int d)
{
    bool dom = c->days >> d & 1;
    bool dow = c->weekdays >> weekday(y, mo, d) & 1;
    if (c->days_star || c->weekdays_star)
        return dom && dow;
    return dom || dow;
}

/* Moves *t to the first civil minute at or after it that c matches, in a
 * year up to y_last; false when there is none.  *t may come in
 * un-normalized past the end of its hour, day or month (a minute of 60,
 * an hour of 24, a day past the month's last): those carry over. */
static bool civil_search(const evq__cron *c, civil *t, int64_t y_last)
{
    for (;;) {
        if (t->mo > 12) {
            t->y++;
            t->mo = 1;
        }
        if (t->y > y_last)
            return false;
        int mo = next_in(c->months, t->mo, 12);
        if (mo < 0) {
            t->y++;
            t->mo = 1, t->d = 1, t->h = 0, t->mi = 0;
            continue;
        }
        if (mo != t->mo)
            t->mo = mo, t->d = 1, t->h = 0, t->mi = 0;
        int dim = days_in_month(t->y, t->mo);
        while (t->d <= dim && !day_matches(c, t->y, t->mo, t->d))
            t->d++, t->h = 0, t->mi = 0;
        if (t->d > dim) {
            t->mo++, t->d = 1, t->h = 0, t->mi = 0;
            continue;
        }
        int h = next_in(c->hours, t->h, 23);
        if (h < 0) {
            t->d++, t->h = 0, t->mi = 0;
            continue;
        }
        if (h != t->h)
            t->h = h, t->mi = 0;
        int mi = next_in(c->minutes, t->mi, 59);
        if (mi < 0) {
            t->h++, t->mi = 0;
            continue;
        }
        t->mi = mi;
        return true;
    }
}

/* ---- time zones ---------------------------------------------------------- */

struct evq__tz {
    pthread_mutex_t mu;
    UCalendar *cal; /* NULL: UTC */
    char name[64];
};

int evq__tz_open(const char *name, evq__tz **out)
{
    UChar id[64], canon[64];
    UBool system = 0;
    UErrorCode st = U_ZERO_ERROR;
    size_t len;

    *out = NULL;
    evq__tz *tz = calloc(1, sizeof *tz);
    if (!tz)
        return evq__err(EVQ_ENOMEM, "out of memory");
    if (!name || strcmp(name, "UTC") == 0) {
        snprintf(tz->name, sizeof tz->name, "UTC");
        pthread_mutex_init(&tz->mu, NULL);
        *out = tz;
        return 0;
    }
    /* IANA names are short and of these characters; anything else is no
     * zone (and u_uastrncpy wants invariant characters). */
    len = strnlen(name, sizeof id);
    bool ok = len > 0 && len < sizeof id / sizeof *id;
    for (size_t i = 0; ok && i < len; i++)
        ok = is_alpha(name[i]) || is_digit(name[i]) ||
             strchr("/_+-.", name[i]) != NULL;
    if (ok) {
        u_uastrncpy(id, name, (int32_t)(sizeof id / sizeof *id));
        ucal_getCanonicalTimeZoneID(id, (int32_t)len, canon,
                                    (int32_t)(sizeof canon / sizeof *canon),
                                    &system, &st);
        ok = U_SUCCESS(st) && system;
    }
    if (!ok) {
        free(tz);
        return evq__err(EVQ_EINVAL,
                        "time zone \"%s\": unknown (an IANA name such as "
                        "\"Europe/Berlin\" expected, or \"UTC\")",
                        show(name, strnlen(name, 200)).s);
    }
    st = U_ZERO_ERROR;
    tz->cal = ucal_open(id, (int32_t)len, "en_US_POSIX", UCAL_GREGORIAN, &st);
    if (U_SUCCESS(st)) /* proleptic Gregorian, like the search's calendar */
        ucal_setGregorianChange(tz->cal, -8.64e15, &st);
    if (U_FAILURE(st)) {
        if (tz->cal)
            ucal_close(tz->cal);
        free(tz);
        return evq__err(st == U_MEMORY_ALLOCATION_ERROR ? EVQ_ENOMEM
                                                        : EVQ_EINVAL,
                        "time zone \"%s\": %s", name, u_errorName(st));
    }
    ucal_setAttribute(tz->cal, UCAL_LENIENT, 1);
    ucal_setAttribute(tz->cal, UCAL_SKIPPED_WALL_TIME,
                      UCAL_WALLTIME_NEXT_VALID);
    ucal_setAttribute(tz->cal, UCAL_REPEATED_WALL_TIME, UCAL_WALLTIME_FIRST);
    snprintf(tz->name, sizeof tz->name, "%s", name);
    pthread_mutex_init(&tz->mu, NULL);
    *out = tz;
    return 0;
}

void evq__tz_free(evq__tz *tz)
{
    if (!tz)
        return;
    if (tz->cal)
        ucal_close(tz->cal);
    pthread_mutex_destroy(&tz->mu);
    free(tz);
}

/* The local civil minute (seconds dropped) of instant ms.  Under tz->mu. */
static int local_of(evq__tz *tz, int64_t ms, civil *t)
{
    if (!tz || !tz->cal) {
        int64_t days = floor_div(ms, MS_PER_DAY);
        int64_t rem = ms - days * MS_PER_DAY;
        civil_from_days(days, t);
        t->h = (int)(rem / 3600000);
        t->mi = (int)(rem / MS_PER_MINUTE % 60);
        return 0;
    }
    UErrorCode st = U_ZERO_ERROR;
    ucal_setMillis(tz->cal, (UDate)ms, &st);
    t->y = ucal_get(tz->cal, UCAL_EXTENDED_YEAR, &st);
    t->mo = ucal_get(tz->cal, UCAL_MONTH, &st) + 1;
    t->d = ucal_get(tz->cal, UCAL_DATE, &st);
    t->h = ucal_get(tz->cal, UCAL_HOUR_OF_DAY, &st);
    t->mi = ucal_get(tz->cal, UCAL_MINUTE, &st);
    if (U_FAILURE(st))
        return evq__err(EVQ_EINVAL, "time zone \"%s\": local time of %lld: %s",
                        tz->name, (long long)ms, u_errorName(st));
    return 0;
}

/* The instant local civil time *t starts at (skipped: the end of the gap;
 * repeated: the first occurrence).  Under tz->mu. */
static int instant_of(evq__tz *tz, const civil *t, int64_t *ms)
{
    if (!tz || !tz->cal) {
        *ms = days_from_civil(t->y, t->mo, t->d) * MS_PER_DAY +
              (int64_t)t->h * 3600000 + (int64_t)t->mi * MS_PER_MINUTE;
        return 0;
    }
    UErrorCode st = U_ZERO_ERROR;
    ucal_clear(tz->cal);
    ucal_set(tz->cal, UCAL_EXTENDED_YEAR, (int32_t)t->y);
    ucal_set(tz->cal, UCAL_MONTH, t->mo - 1);
    ucal_set(tz->cal, UCAL_DATE, t->d);
    ucal_set(tz->cal, UCAL_HOUR_OF_DAY, t->h);
    ucal_set(tz->cal, UCAL_MINUTE, t->mi);
    UDate u = ucal_getMillis(tz->cal, &st);
    if (U_FAILURE(st))
        return evq__err(EVQ_EINVAL,
                        "time zone \"%s\": %04lld-%02d-%02d %02d:%02d: %s",
                        tz->name, (long long)t->y, t->mo, t->d, t->h, t->mi,
                        u_errorName(st));
    *ms = (int64_t)u;
    return 0;
}

static int next_locked(const evq__cron *c, evq__tz *tz, int64_t after_ms,
                       int64_t *slot_ms)
{
    civil t;
    int rc = local_of(tz, after_ms, &t);
    if (rc != 0)
        return rc;
    int64_t y_last = t.y + CRON_MAX_YEARS;
    t.mi++; /* civil_search carries a minute of 60 over */
    for (int passed = 0;; passed++) {
        if (!civil_search(c, &t, y_last))
            return evq__err(EVQ_EINVAL,
                            "cron: no time matches in the %d years after "
                            "%lld ms (in %s): does the day of month exist in "
                            "the months given?",
                            CRON_MAX_YEARS, (long long)after_ms,
                            tz ? tz->name : "UTC");
        int64_t ms = 0;
        if ((rc = instant_of(tz, &t, &ms)) != 0)
            return rc;
        if (ms > after_ms) {
            *slot_ms = ms;
            return 0;
        }
        /* A first occurrence before after_ms (a fall-back): the next. */
        if (passed >= CRON_MAX_REPEATS)
            return evq__err(EVQ_EINVAL,
                            "cron: in %s, %d matching local times after "
                            "%lld ms all fall before it",
                            tz ? tz->name : "UTC", CRON_MAX_REPEATS,
                            (long long)after_ms);
        t.mi++;
    }
}

int evq__cron_next(const evq__cron *c, evq__tz *tz, int64_t after_ms,
                   int64_t *slot_ms)
{
    if (!c || !slot_ms)
        return evq__err(EVQ_EINVAL, "cron: NULL schedule or result");
    if (after_ms < CRON_MIN_MS || after_ms > CRON_MAX_MS)
        return evq__err(EVQ_EINVAL, "cron: %lld ms is outside the years 1-9999",
                        (long long)after_ms);
    if (!tz || !tz->cal)
        return next_locked(c, tz, after_ms, slot_ms);
    pthread_mutex_lock(&tz->mu);
    int rc = next_locked(c, tz, after_ms, slot_ms);
    pthread_mutex_unlock(&tz->mu);
    return rc;
}
