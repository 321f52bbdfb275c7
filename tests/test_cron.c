/* Cron expressions: every piece of the syntax, every malformed input named
 * by its field, and the next matching time in UTC and across daylight
 * saving time changes.  The expected instants were worked out apart from
 * this code (Python's zoneinfo) and are written here as constants. */
#include "cron.h"
#include "testutil.h"

#include <pthread.h>

/* Bits lo..hi, each step-th. */
static uint64_t bits(int lo, int hi, int step)
{
    uint64_t b = 0;
    for (int v = lo; v <= hi; v += step)
        b |= 1ull << v;
    return b;
}

static void parses_each_element(void **state)
{
    (void)state;
    evq__cron c;

    /* steps, ranges with steps, lists, names in either case, 7 = Sunday */
    assert_evq_ok(
        evq__cron_parse("*/15 0-6/2 1,15,31 JAN-MAR,dec sun,5-7", &c));
    assert_true(c.minutes == bits(0, 59, 15));
    assert_int_equal(c.hours, bits(0, 6, 2));
    assert_int_equal(c.days, (1u << 1) | (1u << 15) | (1u << 31));
    assert_int_equal(c.months, bits(1, 3, 1) | (1u << 12));
    assert_int_equal(c.weekdays, (1u << 0) | (1u << 5) | (1u << 6));
    assert_false(c.days_star);
    assert_false(c.weekdays_star);

    /* '*' everywhere else; blanks around and between fields */
    assert_evq_ok(evq__cron_parse(" \t5\t4  * *   *  \t", &c));
    assert_true(c.minutes == 1ull << 5);
    assert_int_equal(c.hours, 1u << 4);
    assert_int_equal(c.days, bits(1, 31, 1));
    assert_int_equal(c.months, bits(1, 12, 1));
    assert_int_equal(c.weekdays, bits(0, 6, 1));
    assert_true(c.days_star);
    assert_true(c.weekdays_star);

    /* "a/n": a to the field's last value; '*' + step still counts as '*' */
    assert_evq_ok(evq__cron_parse("10/20 5/6 */2 JAN/5 7", &c));
    assert_true(c.minutes == ((1ull << 10) | (1ull << 30) | (1ull << 50)));
    assert_int_equal(c.hours, (1u << 5) | (1u << 11) | (1u << 17) | (1u << 23));
    assert_int_equal(c.days, bits(1, 31, 2));
    assert_true(c.days_star);
    assert_int_equal(c.months, (1u << 1) | (1u << 6) | (1u << 11));
    assert_int_equal(c.weekdays, 1u << 0);
    assert_false(c.weekdays_star);

    /* day names in ranges, any case; a list starting with '*' is no star */
    assert_evq_ok(evq__cron_parse("0 0 *,5 * mon-FRI", &c));
    assert_int_equal(c.weekdays, bits(1, 5, 1));
    assert_false(c.days_star);
    assert_int_equal(c.days, bits(1, 31, 1));
    assert_evq_ok(evq__cron_parse("59 23 31 12 6", &c));
    assert_true(c.minutes == 1ull << 59);
    assert_int_equal(c.hours, 1u << 23);
    assert_int_equal(c.days, 1u << 31);
    assert_int_equal(c.months, 1u << 12);
    assert_int_equal(c.weekdays, 1u << 6);
    assert_evq_ok(evq__cron_parse("0-59 0-23 1-31 1-12 0-7", &c));
    assert_true(c.minutes == bits(0, 59, 1));
    assert_int_equal(c.weekdays, bits(0, 6, 1));
    assert_evq_err(evq__cron_parse("* * * * sat-sun", &c), EVQ_EINVAL);
    assert_errmsg_has("day-of-week: range sat-sun is reversed");
}

static void parses_macros(void **state)
{
    (void)state;
    struct {
        const char *expr;
        uint64_t minutes;
        uint32_t hours, days;
        uint16_t months;
        uint8_t weekdays;
        bool days_star, weekdays_star;
    } cases[] = {
        {"@yearly", 1, 1, 1u << 1, 1u << 1, 0x7f, false, true},
        {"@annually", 1, 1, 1u << 1, 1u << 1, 0x7f, false, true},
        {"@monthly", 1, 1, 1u << 1, 0x1ffe, 0x7f, false, true},
        {"@weekly", 1, 1, 0xfffffffe, 0x1ffe, 1, true, false},
        {"@daily", 1, 1, 0xfffffffe, 0x1ffe, 0x7f, true, true},
        {"  @MIDNIGHT\t", 1, 1, 0xfffffffe, 0x1ffe, 0x7f, true, true},
        {"@Hourly", 1, 0xffffff, 0xfffffffe, 0x1ffe, 0x7f, true, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        evq__cron c;
        assert_evq_ok(evq__cron_parse(cases[i].expr, &c));
        assert_true(c.minutes == cases[i].minutes);
        assert_int_equal(c.hours, cases[i].hours);
        assert_int_equal(c.days, cases[i].days);
        assert_int_equal(c.months, cases[i].months);
        assert_int_equal(c.weekdays, cases[i].weekdays);
        assert_int_equal(c.days_star, cases[i].days_star);
        assert_int_equal(c.weekdays_star, cases[i].weekdays_star);
    }
}

/* Each malformed expression: EVQ_EINVAL, the message naming the field,
 * and *out untouched. */
static void names_the_bad_field(void **state)
{
    (void)state;
    struct {
        const char *expr, *needle;
    } cases[] = {
        {"61 * * * *", "cron \"61 * * * *\": minute: 61 is out of 0-59"},
        {"*/0 * * * *", "cron \"*/0 * * * *\": minute: step 0"},
        {"", "cron \"\": empty expression (5 fields: minute hour "
             "day-of-month month day-of-week)"},
        {" \t  ", "empty expression"},
        {"* * * * * * *", "cron \"* * * * * * *\": 7 fields, 5 expected"},
        {"* * * *", "4 fields, 5 expected"},
        {"* 5-1 * * *", "hour: range 5-1 is reversed"},
        {"1x * * * *", "minute: unexpected 'x' in \"1x\""},
        {"1,,2 * * * *", "minute: empty list item in \"1,,2\""},
        {",1 * * * *", "minute: empty list item"},
        {"* * 1, * *", "day-of-month: empty list item"},
        {"* * * FOO *", "month: unknown name \"FOO\""},
        {"* * * * FOO", "day-of-week: unknown name \"FOO\""},
        {"* * * * MONDAY", "day-of-week: unknown name \"MONDAY\""},
        {"* * * * 1-FOO", "day-of-week: unknown name \"FOO\""},
        {"abc * * * *", "minute: \"abc\" is not a number"},
        {"* * JAN * *", "day-of-month: \"JAN\" is not a number"},
        {"* 24 * * *", "hour: 24 is out of 0-23"},
        {"* * 0 * *", "day-of-month: 0 is out of 1-31"},
        {"* * 32 * *", "day-of-month: 32 is out of 1-31"},
        {"* * * 0 *", "month: 0 is out of 1-12"},
        {"* * * 13 *", "month: 13 is out of 1-12"},
        {"* * * * 8", "day-of-week: 8 is out of 0-7"},
        {"99999999999999999999 * * * *",
         "minute: 99999999999999999999 is out of 0-59"},
        {"* * * * */99999999999999999999", "day-of-week: step"},
        {"*/61 * * * *", "minute: step 61 is out of 1-60"},
        {"*/ * * * *", "minute: a step expected after '/'"},
        {"*/x * * * *", "minute: a step expected after '/'"},
        {"1- * * * *", "minute: a value expected at the end"},
        {"-1 * * * *", "minute: a value expected at '-'"},
        {"*-5 * * * *", "minute: unexpected '-'"},
        {"1-2-3 * * * *", "minute: unexpected '-'"},
        {"1/2/3 * * * *", "minute: unexpected '/'"},
        {"** * * * *", "minute: unexpected '*'"},
        {"\x01 * * * *", "minute: a value expected at byte 0x01"},
        {"* * * * *\n", "day-of-week: unexpected byte 0x0a"},
        {"* * * * 5,", "day-of-week: empty list item"},
        {"@foo", "cron \"@foo\": unknown macro \"@foo\""},
        {"@", "unknown macro \"@\""},
        {"@daily 5", "unexpected \"5\" after @daily"},
        {"* @daily * * *", "hour: a value expected at '@' in \"@daily\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        evq__cron c;
        memset(&c, 0xa5, sizeof c);
        int rc = evq__cron_parse(cases[i].expr, &c);
        if (rc != EVQ_EINVAL)
            fail_msg("\"%s\": %d, expected EVQ_EINVAL", cases[i].expr, rc);
        assert_errmsg_has(cases[i].needle);
        assert_true(c.minutes == 0xa5a5a5a5a5a5a5a5ull);
    }
    evq__cron c;
    assert_evq_err(evq__cron_parse(NULL, &c), EVQ_EINVAL);
    assert_errmsg_has("NULL expression");
}

/* Long input and random bytes: an error or a schedule, never a crash. */
static void survives_any_input(void **state)
{
    (void)state;
    evq__cron c;
    size_t n = 100000;
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, '1', n);
    s[n] = '\0';
    assert_evq_err(evq__cron_parse(s, &c), EVQ_EINVAL);
    assert_errmsg_has("longer than 1024 characters");
    assert_true(strlen(evq_errmsg()) < 200); /* quoted, cut short */
    /* within the limit: one huge minute field */
    s[1000] = '\0';
    assert_evq_err(evq__cron_parse(s, &c), EVQ_EINVAL);
    assert_errmsg_has("1 fields, 5 expected");
    memcpy(s + 1000, " * * * *", 9);
    assert_evq_err(evq__cron_parse(s, &c), EVQ_EINVAL);
    assert_errmsg_has("minute: 1111111111");
    assert_errmsg_has("is out of 0-59");
    free(s);

    /* random strings over the syntax's alphabet and some others, and
     * random five-field expressions of random items (most of them valid,
     * some out of range) */
    static const char alpha[] = "0123456789*/-,  \tJANFEBSUNmon@xy\x01\xff";
    uint64_t x = 88172645463325252ull;
    char buf[96];
    int ok = 0;
    for (int i = 0; i < 50000; i++) {
        size_t len = 0;
#define XS (x ^= x << 13, x ^= x >> 7, x ^= x << 17)
        XS;
        if (i % 2 == 0) {
            size_t want = (size_t)(x % 40);
            while (len < want) {
                XS;
                buf[len++] = alpha[x % (sizeof alpha - 1)];
            }
            buf[len] = '\0';
        } else {
            for (int f = 0; f < 5; f++) {
                XS;
                int a = (int)((x >> 8) % 40), b = a + (int)((x >> 16) % 25);
                int st = (int)((x >> 24) % 9);
                char *o = buf + len;
                size_t room = sizeof buf - len;
                int w;
                switch (x % 8) {
                case 0:
                    w = snprintf(o, room, "%s*", f ? " " : "");
                    break;
                case 1:
                    w = snprintf(o, room, "%s*/%d", f ? " " : "", st);
                    break;
                case 2:
                    w = snprintf(o, room, "%s%d", f ? " " : "", a);
                    break;
                case 3:
                    w = snprintf(o, room, "%s%d-%d", f ? " " : "", a, b);
                    break;
                case 4:
                    w = snprintf(o, room, "%s%d-%d/%d", f ? " " : "", a, b, st);
                    break;
                case 5:
                    w = snprintf(o, room, "%s%d,%d", f ? " " : "", a, b);
                    break;
                case 6:
                    w = snprintf(o, room, "%s%d/%d", f ? " " : "", a, st);
                    break;
                default:
                    w = snprintf(o, room, "%smon", f ? " " : "");
                    break;
                }
                len += (size_t)w;
            }
        }
#undef XS
        int rc = evq__cron_parse(buf, &c);
        if (rc == 0) {
            int64_t slot;
            ok++;
            rc = evq__cron_next(&c, NULL, 1798761600000, &slot);
            assert_true(rc == 0 || rc == EVQ_EINVAL);
            if (rc == 0)
                assert_true(slot > 1798761600000);
        } else if (rc != EVQ_EINVAL) {
            fail_msg("\"%s\": %d", buf, rc);
        }
    }
    printf("random expressions: %d of 50000 valid\n", ok);
    assert_true(ok > 0);
}

/* The next slot of `expr` after `after` in zone tz. */
static int64_t next_of(const char *expr, evq__tz *tz, int64_t after)
{
    evq__cron c;
    int64_t slot = -1;
    assert_evq_ok(evq__cron_parse(expr, &c));
    assert_evq_ok(evq__cron_next(&c, tz, after, &slot));
    return slot;
}

#define T_2027_01_01 1798761600000LL /* 2027-01-01T00:00:00Z, a Friday */

static void next_in_utc(void **state)
{
    (void)state;
    /* every 5 minutes: strictly after, from mid-minute, across a year */
    assert_int_equal(next_of("*/5 * * * *", NULL, T_2027_01_01),
                     T_2027_01_01 + 5 * 60000);
    assert_int_equal(next_of("*/5 * * * *", NULL, 1798761750000), /* 00:02:30 */
                     T_2027_01_01 + 5 * 60000);
    assert_int_equal(
        next_of("*/5 * * * *", NULL, 1830297480000), /* 12-31 23:58 */
        1830297600000);                              /* 2028-01-01 */
    /* weekdays at 9: from Friday 2027-01-08 09:00 to Monday the 11th */
    assert_int_equal(next_of("0 9 * * MON-FRI", NULL, 1799398800000),
                     1799658000000);
    assert_int_equal(next_of("0 9 * * MON-FRI", NULL, 1799398800000 - 1),
                     1799398800000);
    /* February 29: from 2027 to 2028, and the 8-year gap over 2100 */
    assert_int_equal(next_of("0 0 29 2 *", NULL, T_2027_01_01), 1835395200000);
    assert_int_equal(
        next_of("0 0 29 2 *", NULL, 3981398400000), /* 2096-03-01 */
        4233686400000);                             /* 2104-02-29 */
    /* both day fields restricted: the 1st, the 15th, or a Friday */
    int64_t want[] = {1799366400000, 1799971200000, 1800576000000,
                      1801180800000, 1801440000000, 1801785600000};
    int64_t t = T_2027_01_01;
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        t = next_of("0 0 1,15 * 5", NULL, t);
        assert_int_equal(t, want[i]);
    }
    /* one day field '*' + step: both must match (Mondays on odd days) */
    assert_int_equal(next_of("0 0 */2 * 1", NULL, T_2027_01_01),
                     1799625600000); /* Monday the 11th, not the 4th */
    /* @hourly: strictly after the hour itself */
    assert_int_equal(next_of("@hourly", NULL, 1798801199999), 1798801200000);
    assert_int_equal(next_of("@hourly", NULL, 1798801200000), 1798804800000);
    /* "UTC" is the same as NULL */
    evq__tz *utc;
    assert_evq_ok(evq__tz_open("UTC", &utc));
    assert_int_equal(next_of("0 0 29 2 *", utc, T_2027_01_01), 1835395200000);
    evq__tz_free(utc);
}

/* Schedules that never match fail, and fast: no minute-by-minute scan. */
static void impossible_fails_fast(void **state)
{
    (void)state;
    const char *never[] = {"0 0 31 2 *", "0 0 30 2 *", "* * 31 4,6,9,11 *",
                           "0 0 31 2 *"};
    int64_t t0 = now_ms();
    for (size_t i = 0; i < sizeof never / sizeof *never; i++) {
        evq__cron c;
        int64_t slot = 0;
        assert_evq_ok(evq__cron_parse(never[i], &c));
        assert_evq_err(evq__cron_next(&c, NULL, T_2027_01_01, &slot),
                       EVQ_EINVAL);
        assert_errmsg_has("no time matches in the 8 years");
        assert_int_equal(slot, 0);
    }
    evq__tz *berlin;
    assert_evq_ok(evq__tz_open("Europe/Berlin", &berlin));
    evq__cron c;
    int64_t slot;
    assert_evq_ok(evq__cron_parse("0 0 30 2 *", &c));
    assert_evq_err(evq__cron_next(&c, berlin, T_2027_01_01, &slot), EVQ_EINVAL);
    /* a rare one that does match, 1000 times */
    assert_evq_ok(evq__cron_parse("0 0 29 2 *", &c));
    for (int i = 0; i < 1000; i++) {
        assert_evq_ok(evq__cron_next(&c, berlin, T_2027_01_01, &slot));
        assert_int_equal(slot, 1835395200000 - 3600000); /* 00:00 CET */
    }
    evq__tz_free(berlin);
    int64_t took = now_ms() - t0;
    printf("impossible and rare schedules: %lld ms\n", (long long)took);
    assert_true(took < 5000); /* even under valgrind */

    /* instants out of range, and NULLs */
    assert_evq_err(evq__cron_next(&c, NULL, INT64_MAX, &slot), EVQ_EINVAL);
    assert_errmsg_has("outside the years 1-9999");
    assert_evq_err(evq__cron_next(&c, NULL, INT64_MIN, &slot), EVQ_EINVAL);
    assert_evq_err(evq__cron_next(NULL, NULL, 0, &slot), EVQ_EINVAL);
    assert_evq_err(evq__cron_next(&c, NULL, 0, NULL), EVQ_EINVAL);
}

static void berlin_spring_forward(void **state)
{
    (void)state;
    evq__tz *tz;
    assert_evq_ok(evq__tz_open("Europe/Berlin", &tz));
    /* the day before: 02:30 CET = 01:30Z */
    assert_int_equal(next_of("30 2 * * *", tz, 1806105600000 /* 03-27 */),
                     1806111000000);
    /* 2027-03-28 02:30 does not exist: 03:00 CEST = 01:00Z */
    assert_int_equal(next_of("30 2 * * *", tz, 1806148800000 /* 03-27 12Z */),
                     1806195600000);
    /* and then the next day's 02:30 CEST = 00:30Z */
    assert_int_equal(next_of("30 2 * * *", tz, 1806195600000), 1806280200000);
    /* every half hour from 01:45 CET: 02:00 is skipped, 03:00, 03:30 */
    assert_int_equal(next_of("*/30 * * * *", tz, 1806194700000), 1806195600000);
    assert_int_equal(next_of("*/30 * * * *", tz, 1806195600000), 1806197400000);
    evq__tz_free(tz);
}

static void berlin_fall_back(void **state)
{
    (void)state;
    evq__tz *tz;
    assert_evq_ok(evq__tz_open("Europe/Berlin", &tz));
    /* 2027-10-31 02:30 is 00:30Z (CEST) and 01:30Z (CET): the first */
    assert_int_equal(next_of("30 2 * * *", tz, 1824897600000 /* 10-30 12Z */),
                     1824942600000);
    /* once: after it, the next day's 02:30 CET = 01:30Z */
    assert_int_equal(next_of("30 2 * * *", tz, 1824942600000), 1825032600000);
    /* from 02:45 CEST, and from inside the second occurrence (02:10 CET) */
    assert_int_equal(next_of("30 2 * * *", tz, 1824943500000), 1825032600000);
    assert_int_equal(next_of("30 2 * * *", tz, 1824945000000), 1825032600000);
    /* every 15 minutes: 02:xx runs once, 03:00 CET = 02:00Z comes next */
    assert_int_equal(next_of("*/15 * * * *", tz, 1824943800000), 1824948000000);
    /* inside the second occurrence: never a time before the one asked */
    for (int64_t t = 1824944400000; t < 1824948000000; t += 60000 * 7) {
        int64_t s = next_of("* * * * *", tz, t);
        assert_true(s > t);
        assert_int_equal(s, 1824948000000);
    }
    evq__tz_free(tz);
}

static void new_york_normal_days(void **state)
{
    (void)state;
    evq__tz *tz;
    assert_evq_ok(evq__tz_open("America/New_York", &tz));
    /* 09:00 EDT = 13:00Z; 09:00 EST = 14:00Z */
    assert_int_equal(next_of("0 9 * * *", tz, 1813017600000), 1813064400000);
    assert_int_equal(next_of("0 9 * * *", tz, 1799971200000), 1800021600000);
    /* 2027-06-15T00:00Z is still the 14th in New York: 20:00 EDT */
    assert_int_equal(next_of("0 20 14 6 *", tz, 1813017600000 - 1),
                     1813017600000);
    evq__tz_free(tz);
}

static void unknown_zones(void **state)
{
    (void)state;
    const char *bad[] = {
        "Mars/Olympus",    "",          "Etc/Unknown",     "europe/berlin",
        "Europe/Berlin\n", "GMT+05:00", "../../etc/passwd"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        evq__tz *tz = (evq__tz *)&tz;
        assert_evq_err(evq__tz_open(bad[i], &tz), EVQ_EINVAL);
        assert_null(tz);
        assert_errmsg_has("time zone \"");
        assert_errmsg_has("unknown");
    }
    evq__tz *tz;
    assert_evq_err(evq__tz_open("Mars/Olympus", &tz), EVQ_EINVAL);
    assert_errmsg_has("\"Mars/Olympus\"");
    /* NULL is UTC; a link name works */
    assert_evq_ok(evq__tz_open(NULL, &tz));
    evq__tz_free(tz);
    assert_evq_ok(evq__tz_open("US/Eastern", &tz));
    assert_int_equal(next_of("0 9 * * *", tz, 1813017600000), 1813064400000);
    evq__tz_free(tz);
    evq__tz_free(NULL);
}

/* The arithmetic of the UTC path agrees with ICU's calendar (Etc/UTC),
 * over many years and schedules. */
static void utc_arithmetic_agrees_with_icu(void **state)
{
    (void)state;
    const char *exprs[] = {"*/7 3-5 * * *", "0 0 29 2 *", "15 12 1,31 * SUN",
                           "0 0 * * 6",     "@monthly",   "59 23 31 12 *"};
    evq__tz *icu;
    assert_evq_ok(evq__tz_open("Etc/UTC", &icu));
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 3000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        /* 1600 to 2400 */
        int64_t t = -11676096000000LL + (int64_t)(x % 25245000000000ull);
        const char *e = exprs[i % (sizeof exprs / sizeof *exprs)];
        int64_t a = next_of(e, NULL, t), b = next_of(e, icu, t);
        if (a != b)
            fail_msg("%s after %lld: %lld arithmetic, %lld ICU", e,
                     (long long)t, (long long)a, (long long)b);
    }
    evq__tz_free(icu);
}

typedef struct shared {
    evq__tz *tz;
    atomic_int bad;
} shared;

static void *use_zone(void *arg)
{
    shared *sh = arg;
    evq__cron c;
    if (evq__cron_parse("30 2 * * *", &c) != 0)
        atomic_fetch_add(&sh->bad, 1);
    for (int i = 0; i < 300; i++) {
        int64_t s;
        if (evq__cron_next(&c, sh->tz, 1824897600000, &s) != 0 ||
            s != 1824942600000)
            atomic_fetch_add(&sh->bad, 1);
        if (evq__cron_next(&c, sh->tz, 1806148800000, &s) != 0 ||
            s != 1806195600000)
            atomic_fetch_add(&sh->bad, 1);
    }
    return NULL;
}

/* One zone shared by threads. */
static void zone_shared_by_threads(void **state)
{
    (void)state;
    shared sh = {.bad = 0};
    pthread_t th[4];
    assert_evq_ok(evq__tz_open("Europe/Berlin", &sh.tz));
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, use_zone, &sh), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&sh.bad), 0);
    evq__tz_free(sh.tz);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_each_element),
        cmocka_unit_test(parses_macros),
        cmocka_unit_test(names_the_bad_field),
        cmocka_unit_test(survives_any_input),
        cmocka_unit_test(next_in_utc),
        cmocka_unit_test(impossible_fails_fast),
        cmocka_unit_test(berlin_spring_forward),
        cmocka_unit_test(berlin_fall_back),
        cmocka_unit_test(new_york_normal_days),
        cmocka_unit_test(unknown_zones),
        cmocka_unit_test(utc_arithmetic_agrees_with_icu),
        cmocka_unit_test(zone_shared_by_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
