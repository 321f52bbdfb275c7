/* Options: the evq_opts container, validation at open against the tables,
 * URL parameters and evq_opts together, help text from the same tables. */
#include "internal.h"
#include "testutil.h"

static void opts_hold_copies_and_replace(void **state)
{
    (void)state;
    evq_opts *o = evq_opts_new();
    char key[16] = "capacity", val[16] = "10";
    assert_evq_ok(evq_opts_set(o, key, val));
    strcpy(val, "XX");
    assert_string_equal(evq_opts_get(o, "capacity"), "10");
    assert_evq_ok(evq_opts_set(o, "capacity", "20"));
    assert_string_equal(evq_opts_get(o, "capacity"), "20");
    assert_null(evq_opts_get(o, "other"));
    assert_evq_err(evq_opts_set(o, "", "1"), EVQ_EINVAL);
    assert_evq_err(evq_opts_set(o, NULL, "1"), EVQ_EINVAL);
    assert_evq_err(evq_opts_set(o, "k", NULL), EVQ_EINVAL);
    assert_evq_err(evq_opts_set(NULL, "k", "v"), EVQ_EINVAL);
    assert_null(evq_opts_get(NULL, "k"));
    evq_opts_free(o);
    evq_opts_free(NULL);
}

/* A backend's table fills its typed struct: defaults, values given,
 * an enum as its index, a former name winning when given, and the core's
 * options in the set's own struct. */
typedef struct tcfg {
    int64_t n, timeout_ms;
    bool flag;
    const char *name, *unset;
    int mode;
} tcfg;

static const evq__opt_spec test_tab[] = {
    {"t.n", EVQ__OPT_INT, "7", 0, 100, NULL, "a number", EVQ__AT(tcfg, n)},
    {"t.flag", EVQ__OPT_BOOL, "true", 0, 0, NULL, "a flag",
     EVQ__AT(tcfg, flag)},
    {"t.name", EVQ__OPT_STRING, "dflt", 0, 0, NULL, "a name",
     EVQ__AT(tcfg, name)},
    {"t.unset", EVQ__OPT_STRING, NULL, 0, 0, NULL, "no default",
     EVQ__AT(tcfg, unset)},
    {"t.mode", EVQ__OPT_ENUM, "a", 0, 0, "a|bb|c", "a choice",
     EVQ__AT(tcfg, mode)},
    {"timeout_ms", EVQ__OPT_INT, "10", 1, 1000, NULL, "the current name",
     EVQ__AT(tcfg, timeout_ms)},
    {"t.timeout_ms", EVQ__OPT_INT, NULL, 1, 1000, NULL, "its former name",
     EVQ__AT(tcfg, timeout_ms)},
    {0},
};

static void typed_structs_are_filled_from_the_tables(void **state)
{
    (void)state;
    const char *urls[] = {
        "memory://",
        ("memory://?t.n=42&t.flag=false&t.name=given&t.mode=c&timeout_ms=99"
         "&format=msgpack&overflow=error&create=false"),
        "memory://?timeout_ms=99&t.timeout_ms=5&t.mode=bb"};
    for (int i = 0; i < 3; i++) {
        evq__url u;
        evq__optset set;
        tcfg c;
        memset(&c, 0xab, sizeof c);
        assert_evq_ok(evq__url_parse(urls[i], &u));
        assert_evq_ok(evq__optset_build(&set, &u, NULL, test_tab));
        evq__opts_read(&set, test_tab, &c);
        assert_null(c.unset);
        if (i == 0) {
            assert_int_equal(c.n, 7);
            assert_true(c.flag);
            assert_string_equal(c.name, "dflt");
            assert_int_equal(c.mode, 0);
            assert_int_equal(c.timeout_ms, 10);
            assert_null(set.core.format);
            assert_int_equal(set.core.max_event_bytes, 1048576);
            assert_int_equal(set.core.overflow, EVQ__OVERFLOW_BLOCK);
            assert_true(set.core.create);
        } else if (i == 1) {
            assert_int_equal(c.n, 42);
            assert_false(c.flag);
            assert_string_equal(c.name, "given");
            assert_int_equal(c.mode, 2);
            assert_int_equal(c.timeout_ms, 99);
            assert_string_equal(set.core.format, "msgpack");
            assert_int_equal(set.core.overflow, EVQ__OVERFLOW_ERROR);
            assert_false(set.core.create);
        } else {
            assert_int_equal(c.mode, 1);
            assert_int_equal(c.timeout_ms, 5); /* the former name, given */
        }
        evq__optset_free(&set);
        evq__url_free(&u);
    }
}

static void assert_open_fails(const char *url, const evq_opts *o, int code,
                              const char *needle)
{
    evq_queue *q = (evq_queue *)1;
    int rc = evq_queue_open(&q, url, "opts-q", o);
    if (rc != code)
        fail_msg("open %s gave %s, expected %s (%s)", url,
                 rc ? evq_errname(rc) : "0", evq_errname(code), evq_errmsg());
    assert_null(q);
    if (!strstr(evq_errmsg(), needle))
        fail_msg("open %s: \"%s\" lacks \"%s\"", url, evq_errmsg(), needle);
}

static void bad_options_are_named(void **state)
{
    (void)state;
    assert_open_fails("memory://?capacity=0", NULL, EVQ_EINVAL, "capacity");
    assert_open_fails("memory://?capacity=-1", NULL, EVQ_EINVAL,
                      "out of range");
    assert_open_fails("memory://?capacity=abc", NULL, EVQ_EINVAL,
                      "not an integer");
    assert_open_fails("memory://?capacity=", NULL, EVQ_EINVAL, "capacity");
    assert_open_fails("memory://?capacity=99999999999999999999", NULL,
                      EVQ_EINVAL, "capacity");
    assert_open_fails("memory://?colour=red", NULL, EVQ_EINVAL,
                      "unknown option 'colour'");
    assert_open_fails("memory://?overflow=maybe", NULL, EVQ_EINVAL,
                      "block|error");
    assert_open_fails("memory://?format=xml", NULL, EVQ_EINVAL, "format");
    assert_open_fails("memory://?max_event_bytes=1", NULL, EVQ_EINVAL,
                      "max_event_bytes");
    assert_open_fails("memory://?max_depth=100000", NULL, EVQ_EINVAL,
                      "max_depth");
    assert_open_fails("foo://x", NULL, EVQ_EINVAL, "scheme 'foo'");
    assert_open_fails("redis://host:99999", NULL, EVQ_EINVAL, "99999");
    assert_open_fails("memory://a b", NULL, EVQ_EINVAL, "space");
    assert_open_fails("memory://?x=%", NULL, EVQ_EINVAL, "'%'");
    assert_open_fails("memory://somehost", NULL, EVQ_EINVAL, "no host");

    evq_opts *o = evq_opts_new();
    evq_opts_set(o, "capacty", "5");
    assert_open_fails("memory://", o, EVQ_EINVAL, "unknown option 'capacty'");
    evq_opts_free(o);
    o = evq_opts_new();
    evq_opts_set(o, "capacity", "0");
    assert_open_fails("memory://?capacity=5", o, EVQ_EINVAL, "capacity");
    evq_opts_free(o);
}

static void opts_override_url_parameters(void **state)
{
    (void)state;
    evq_opts *o = evq_opts_new();
    evq_queue *q;
    evq_event *ev = evq_event_new("t", NULL);

    /* The URL says error-on-full with room for 1; evq_opts raises it to 2. */
    evq_opts_set(o, "capacity", "2");
    assert_evq_ok(evq_queue_open(&q, "memory://?capacity=1&overflow=error",
                                 "override-q", o));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_err(evq_enqueue(q, ev), EVQ_EFULL);
    evq_queue_close(q);
    evq_opts_free(o);
    evq_event_free(ev);
}

static void help_text_comes_from_the_tables(void **state)
{
    (void)state;
    char *help = evq_options_help("memory");
    assert_non_null(help);
    assert_non_null(strstr(help, "capacity"));
    assert_non_null(strstr(help, "65536"));
    assert_non_null(strstr(help, "overflow"));
    assert_non_null(strstr(help, "format"));
    assert_non_null(strstr(help, "max_event_bytes"));
    free(help);
    assert_null(evq_options_help("gopher"));
    assert_errmsg_has("gopher");
    assert_null(evq_options_help(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(opts_hold_copies_and_replace),
        cmocka_unit_test(typed_structs_are_filled_from_the_tables),
        cmocka_unit_test(bad_options_are_named),
        cmocka_unit_test(opts_override_url_parameters),
        cmocka_unit_test(help_text_comes_from_the_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
