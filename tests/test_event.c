/* Events: CloudEvents attributes, UUIDv7 ids, payloads, attribute rules. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

static evq_event *user_created(void)
{
    evq_event *ev =
        evq_event_new("user.created", json_pack("{s:s, s:s}", "userId", "123",
                                                "name", "John Doe"));
    assert_non_null(ev);
    return ev;
}

static bool is_uuid7(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash != (s[i] == '-'))
            return false;
        if (!dash && !strchr("0123456789abcdef", s[i]))
            return false;
    }
    return s[14] == '7' && strchr("89ab", s[19]) != NULL;
}

static void new_event_has_required_attributes(void **state)
{
    (void)state;
    int64_t before = evq__now_real_ns();
    evq_event *ev = user_created();
    int64_t after = evq__now_real_ns();

    assert_string_equal(evq_event_type(ev), "user.created");
    assert_true(is_uuid7(evq_event_id(ev)));
    assert_string_equal(evq_event_attr(ev, "specversion"), "1.0");
    assert_string_equal(evq_event_source(ev), "evq");
    assert_true(evq_event_time_ns(ev) >= before);
    assert_true(evq_event_time_ns(ev) <= after);
    assert_string_equal(evq_event_datacontenttype(ev), "application/json");
    assert_null(evq_event_subject(ev));
    assert_int_equal(evq_event_attempt(ev), 0);
    assert_string_equal(
        json_string_value(json_object_get(evq_event_data(ev), "name")),
        "John Doe");
    /* The id's millisecond prefix is the event time's. */
    char hex[13];
    memcpy(hex, evq_event_id(ev), 8);
    memcpy(hex + 8, evq_event_id(ev) + 9, 4);
    hex[12] = '\0';
    int64_t ms = strtoll(hex, NULL, 16);
    assert_true(ms >= before / 1000000 && ms <= after / 1000000 + 1);
    evq_event_free(ev);
}

static void ids_increase_within_a_process(void **state)
{
    (void)state;
    char prev[40] = "", cur[40];
    for (int i = 0; i < 100000; i++) {
        evq__uuid7(cur);
        assert_true(is_uuid7(cur));
        if (strcmp(prev, cur) >= 0)
            fail_msg("id %d not increasing: %s then %s", i, prev, cur);
        strcpy(prev, cur);
    }
}

#define PER_THREAD 20000
#define THREADS    4

static void *make_ids(void *arg)
{
    char(*ids)[40] = arg;
    for (int i = 0; i < PER_THREAD; i++)
        evq__uuid7(ids[i]);
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void ids_are_unique_across_threads_and_processes(void **state)
{
    (void)state;
    size_t total = THREADS * PER_THREAD * 2;
    char(*ids)[40] = calloc(total, 40);
    pthread_t t[THREADS];
    int fds[2];

    assert_non_null(ids);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, make_ids, ids[i * PER_THREAD]);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    /* A forked child makes as many ids at the same moment. */
    assert_int_equal(pipe(fds), 0);
    evq__uuid7(ids[0]); /* make sure the parent's generator is seeded */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char id[40];
        for (int i = 0; i < THREADS * PER_THREAD; i++) {
            evq__uuid7(id);
            if (write(fds[1], id, 40) != 40)
                _exit(1);
        }
        _exit(0);
    }
    close(fds[1]);
    size_t got = 0;
    char *dst = ids[THREADS * PER_THREAD];
    ssize_t n;
    while ((n = read(fds[0], dst + got,
                     (size_t)THREADS * PER_THREAD * 40 - got)) > 0)
        got += (size_t)n;
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    assert_int_equal(got, (size_t)THREADS * PER_THREAD * 40);
    qsort(ids, total, 40, cmp_id);
    for (size_t i = 1; i < total; i++) {
        if (strcmp(ids[i - 1], ids[i]) == 0)
            fail_msg("duplicate id %s", ids[i]);
    }
    free(ids);
}

static void bad_types_are_refused(void **state)
{
    (void)state;
    char *big = malloc(10 * 1024 + 1);
    memset(big, 'a', 10 * 1024);
    big[10 * 1024] = '\0';

    assert_null(evq_event_new(NULL, json_object()));
    assert_errmsg_has("NULL");
    assert_null(evq_event_new("", NULL));
    assert_errmsg_has("empty");
    assert_null(evq_event_new(big, json_integer(1)));
    assert_errmsg_has("more than");
    assert_null(evq_event_new("bad\xff\xfe", NULL));
    assert_errmsg_has("UTF-8");
    free(big);
}

static void attribute_names_follow_cloudevents_rules(void **state)
{
    (void)state;
    evq_event *ev = user_created();
    static const char *bad[] = {"Foo", "a-b",       "a_b",
                                "",    "data",      "abcdefghijklmnopqrstu",
                                "é",   "with space"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_evq_err(evq_event_set_attr(ev, bad[i], "v"), EVQ_EINVAL);
        assert_errmsg_has("invalid");
    }
    assert_evq_err(evq_event_set_attr(ev, NULL, "v"), EVQ_EINVAL);
    assert_evq_err(evq_event_set_attr(NULL, "a", "v"), EVQ_EINVAL);
    assert_evq_ok(evq_event_set_attr(ev, "abcdefghijklmnopqrst", "twenty"));
    assert_evq_ok(evq_event_set_attr(ev, "traceparent", "00-abc"));
    assert_string_equal(evq_event_attr(ev, "traceparent"), "00-abc");
    assert_evq_ok(evq_event_set_attr(ev, "traceparent", "00-def"));
    assert_string_equal(evq_event_attr(ev, "traceparent"), "00-def");
    assert_int_equal(evq_event_ext_count(ev), 2);
    const char *n, *v;
    assert_evq_ok(evq_event_ext_at(ev, 1, &n, &v));
    assert_string_equal(n, "traceparent");
    assert_evq_err(evq_event_ext_at(ev, 2, &n, &v), EVQ_ENOENT);
    assert_evq_ok(evq_event_set_attr(ev, "traceparent", NULL));
    assert_null(evq_event_attr(ev, "traceparent"));
    assert_int_equal(evq_event_ext_count(ev), 1);
    assert_evq_err(evq_event_set_attr(ev, "ext", "bad\xc0\x80"), EVQ_EINVAL);
    evq_event_free(ev);
}

static void context_attributes_are_checked(void **state)
{
    (void)state;
    evq_event *ev = user_created();

    assert_evq_err(evq_event_set_attr(ev, "specversion", "0.3"), EVQ_EINVAL);
    assert_evq_ok(evq_event_set_attr(ev, "specversion", "1.0"));
    assert_evq_err(evq_event_set_attr(ev, "id", ""), EVQ_EINVAL);
    assert_evq_err(evq_event_set_attr(ev, "id", NULL), EVQ_EINVAL);
    assert_evq_err(evq_event_set_attr(ev, "type", NULL), EVQ_EINVAL);
    assert_evq_err(evq_event_set_attr(ev, "source", ""), EVQ_EINVAL);
    assert_evq_err(evq_event_set_attr(ev, "time", "yesterday"), EVQ_EINVAL);
    assert_evq_err(evq_event_set_attr(ev, "time", "2018-02-30T00:00:00Z"),
                   EVQ_EINVAL);
    assert_evq_err(evq_event_set_attr(ev, "time", "2018-04-05T17:31:00"),
                   EVQ_EINVAL);

    assert_evq_ok(evq_event_set_attr(ev, "id",
                                     "a-much-longer-identifier-than-"
                                     "fits-in-the-inline-buffer"));
    assert_string_equal(evq_event_id(ev), "a-much-longer-identifier-than-"
                                          "fits-in-the-inline-buffer");
    assert_evq_ok(evq_event_set_attr(ev, "id", "short"));
    assert_string_equal(evq_event_id(ev), "short");
    assert_evq_ok(evq_event_set_attr(ev, "source", "/users"));
    assert_string_equal(evq_event_source(ev), "/users");
    assert_evq_ok(evq_event_set_attr(ev, "subject", "123"));
    assert_string_equal(evq_event_subject(ev), "123");
    assert_evq_ok(evq_event_set_attr(ev, "subject", NULL));
    assert_null(evq_event_subject(ev));
    assert_evq_ok(
        evq_event_set_attr(ev, "time", "2018-04-05T19:31:00.5+02:00"));
    assert_int_equal(evq_event_time_ns(ev), 1522949460500000000LL);
    assert_string_equal(evq_event_attr(ev, "time"), "2018-04-05T17:31:00.500Z");
    assert_evq_ok(
        evq_event_set_attr(ev, "time", "1969-12-31T23:59:59.000000001Z"));
    assert_int_equal(evq_event_time_ns(ev), -999999999LL);
    assert_string_equal(evq_event_attr(ev, "time"),
                        "1969-12-31T23:59:59.000000001Z");
    assert_evq_ok(evq_event_set_attr(ev, "time", NULL));
    assert_int_equal(evq_event_time_ns(ev), 0);
    assert_null(evq_event_attr(ev, "time"));
    evq_event_free(ev);
}

static void payloads_json_and_binary(void **state)
{
    (void)state;
    evq_event *ev = evq_event_new("blob.stored", NULL);
    size_t len;

    assert_null(evq_event_data(ev));
    assert_null(evq_event_datacontenttype(ev));
    assert_evq_ok(evq_event_set_binary(ev, "\0\1\2", 3, "application/x-bin"));
    const unsigned char *b = evq_event_binary(ev, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(b, "\0\1\2", 3);
    assert_null(evq_event_data(ev));
    assert_string_equal(evq_event_datacontenttype(ev), "application/x-bin");
    assert_evq_ok(evq_event_set_data(ev, json_integer(5)));
    assert_null(evq_event_binary(ev, &len));
    assert_int_equal(json_integer_value(evq_event_data(ev)), 5);
    assert_evq_err(evq_event_set_binary(ev, NULL, 4, NULL), EVQ_EINVAL);
    evq_event_free(ev);
    evq_event_free(NULL);
}

static void dup_is_deep_and_equal(void **state)
{
    (void)state;
    evq_event *ev = user_created();
    assert_evq_ok(evq_event_set_attr(ev, "subject", "s"));
    assert_evq_ok(evq_event_set_attr(ev, "partitionkey", "k1"));
    evq_event *cp = evq_event_dup(ev);
    assert_non_null(cp);
    assert_string_equal(evq_event_id(cp), evq_event_id(ev));
    assert_string_equal(evq_event_subject(cp), "s");
    assert_string_equal(evq_event_attr(cp, "partitionkey"), "k1");
    assert_int_equal(evq_event_time_ns(cp), evq_event_time_ns(ev));
    assert_true(json_equal(evq_event_data(cp), evq_event_data(ev)));
    assert_ptr_not_equal(evq_event_data(cp), evq_event_data(ev));
    evq_event_free(ev);
    assert_string_equal(evq_event_attr(cp, "partitionkey"), "k1");
    evq_event_free(cp);
    assert_null(evq_event_dup(NULL));
}

static void shared_event_refuses_changes(void **state)
{
    (void)state;
    evq_queue *q;
    evq_msg *m;
    evq_event *ev = user_created();

    assert_evq_ok(evq_queue_open(&q, "memory://", "shared-event", NULL));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_err(evq_event_set_attr(ev, "subject", "x"), EVQ_EBUSY);
    assert_evq_err(evq_event_set_data(ev, json_null()), EVQ_EBUSY);
    assert_evq_ok(evq_dequeue(q, &m, 0));
    assert_evq_ok(evq_ack(m));
    assert_evq_ok(evq_event_set_attr(ev, "subject", "x"));
    evq_event_free(ev);
    evq_queue_close(q);
}

static void utf8_validation_edges(void **state)
{
    (void)state;
    struct {
        const char *s;
        size_t len;
        bool ok;
    } cases[] = {
        {"plain ascii text longer than eight", 34, true},
        {"abcdefg\0hijklmno", 16, false},      /* NUL inside a word */
        {"abcdefghijklmno\xc3\xa9", 17, true}, /* two-byte after ASCII */
        {"abcdefgh\xc3", 9, false},            /* truncated sequence */
        {"\xe2\x82\xac\xf0\x9d\x84\x9e", 7, true},
        {"\xc0\xaf", 2, false},         /* overlong */
        {"\xed\xa0\x80", 3, false},     /* surrogate */
        {"\xf4\x90\x80\x80", 4, false}, /* past U+10FFFF */
        {"\xff", 1, false},
        {"", 0, true},
        {"12345678\x80", 9, false}, /* stray continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (evq__utf8_valid(cases[i].s, cases[i].len) != cases[i].ok)
            fail_msg("case %zu: expected %s", i,
                     cases[i].ok ? "valid" : "invalid");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(new_event_has_required_attributes),
        cmocka_unit_test(ids_increase_within_a_process),
        cmocka_unit_test(ids_are_unique_across_threads_and_processes),
        cmocka_unit_test(bad_types_are_refused),
        cmocka_unit_test(attribute_names_follow_cloudevents_rules),
        cmocka_unit_test(context_attributes_are_checked),
        cmocka_unit_test(payloads_json_and_binary),
        cmocka_unit_test(dup_is_deep_and_equal),
        cmocka_unit_test(shared_event_refuses_changes),
        cmocka_unit_test(utf8_validation_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
