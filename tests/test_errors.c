/* Errors: one table, names and texts, the per-thread detail message, and
 * passwords that never reach a message. */
#include "testutil.h"

#include <pthread.h>

static const int codes[] = {
#define X(name, val, text) EVQ_##name,
    EVQ_ERRNO_MAP(X)
#undef X
};

static void every_code_has_a_distinct_name_and_text(void **state)
{
    (void)state;
    size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        assert_true(codes[i] < 0);
        assert_non_null(evq_errname(codes[i]));
        assert_string_not_equal(evq_strerror(codes[i]), "unknown error");
        for (size_t j = 0; j < i; j++) {
            assert_int_not_equal(codes[i], codes[j]);
            assert_string_not_equal(evq_strerror(codes[i]),
                                    evq_strerror(codes[j]));
        }
    }
    assert_string_equal(evq_errname(EVQ_ETIMEDOUT), "EVQ_ETIMEDOUT");
    assert_string_equal(evq_strerror(0), "success");
    assert_string_equal(evq_strerror(12345), "unknown error");
    assert_null(evq_errname(-9999));
}

static void *fail_in_thread(void *arg)
{
    evq_queue *q;
    (void)arg;
    evq_queue_open(&q, "memory://?capacity=0", "other-thread", NULL);
    return NULL;
}

static void errmsg_is_per_thread(void **state)
{
    (void)state;
    evq_queue *q;
    pthread_t t;

    assert_evq_err(evq_queue_open(&q, "memory://?bogus=1", "q", NULL),
                   EVQ_EINVAL);
    assert_errmsg_has("bogus");
    pthread_create(&t, NULL, fail_in_thread, NULL);
    pthread_join(t, NULL);
    /* The other thread's failure (about capacity) did not replace ours. */
    assert_errmsg_has("bogus");
    assert_null(strstr(evq_errmsg(), "capacity"));
}

static void passwords_never_appear_in_messages(void **state)
{
    (void)state;
    static const char *urls[] = {
        "memory://alice:Hunter2pw@host",
        "redis://alice:Hunter2pw@host:99999",
        "redis://alice:Hunter2pw@host:abc/0",
        "redis://alice:Hunter2pw@[::1/0",
        "redis://alice:Hunter2pw@host:6379/%zz",
        "redis://alice:Hunter2pw@host:6379/?a=%",
        "redis://alice:Hunter2pw@host:6379/?nokey",
        "foo://alice:Hunter2pw@host:1",
        "nats://alice:Hunter2pw%@host:4222",
        "memory://alice:Hunter2pw@?capacity=abc",
        "memory://alice:Hunter2pw@?unknown=1",
    };
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        evq_queue *q = (evq_queue *)1;
        int rc = evq_queue_open(&q, urls[i], "q", NULL);
        assert_int_not_equal(rc, 0);
        assert_null(q);
        assert_true(strlen(evq_errmsg()) > 0);
        if (strstr(evq_errmsg(), "Hunter2pw"))
            fail_msg("password leaked for %s: %s", urls[i], evq_errmsg());
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_code_has_a_distinct_name_and_text),
        cmocka_unit_test(errmsg_is_per_thread),
        cmocka_unit_test(passwords_never_appear_in_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
