/* URLs: every part parsed and decoded; each malformed part named. */
#include "internal.h"
#include "testutil.h"

/* The printable URL has no password, token or secret option value. */
static void secrets_are_redacted(void **state)
{
    (void)state;
    struct {
        const char *url, *want;
    } cases[] = {
        {"nats://tok3n@h:4222", "nats://***@h:4222"},
        {"redis://:pw@h/1", "redis://:***@h/1"},
        {"kafka://h:9092?rdkafka.sasl.password=pw&kafka.group=g",
         "kafka://h:9092?rdkafka.sasl.password=***&kafka.group=g"},
        {"kafka://h?rdkafka.SASL.JAAS.config=x&rdkafka.ssl.key.pem=y#f",
         "kafka://h?rdkafka.SASL.JAAS.config=***&rdkafka.ssl.key.pem=***#f"},
        {"nats://u:p@h?nats.nkey_seed=/s&x.token=t&format=json",
         "nats://u:***@h?nats.nkey_seed=***&x.token=***&format=json"},
        {"memory://?capacity=5", "memory://?capacity=5"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        evq__url u;
        assert_evq_ok(evq__url_parse(cases[i].url, &u));
        assert_string_equal(u.redacted, cases[i].want);
        evq__url_free(&u);
    }
}

static void parses_every_part(void **state)
{
    (void)state;
    evq__url u;
    assert_evq_ok(evq__url_parse("REDIS://al%69ce:p%40ss:w@rd@cache.local:6380/"
                                 "2?redis.maxlen=100&a=b%20c",
                                 &u));
    assert_string_equal(u.scheme, "redis");
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.password, "p@ss:w@rd");
    assert_int_equal(u.n_hosts, 1);
    assert_string_equal(u.hosts[0].host, "cache.local");
    assert_int_equal(u.hosts[0].port, 6380);
    assert_string_equal(u.path, "/2");
    assert_int_equal(u.n_params, 2);
    assert_string_equal(u.params[0].key, "redis.maxlen");
    assert_string_equal(u.params[0].value, "100");
    assert_string_equal(u.params[1].value, "b c");
    assert_null(strstr(u.redacted, "p%40ss"));
    assert_non_null(strstr(u.redacted, "al%69ce:***@cache.local"));
    evq__url_free(&u);
}

static void parses_host_lists(void **state)
{
    (void)state;
    evq__url u;
    assert_evq_ok(
        evq__url_parse("kafka://a:9092,b:9093,[::1]:9094,[2001:db8::7]", &u));
    assert_int_equal(u.n_hosts, 4);
    assert_string_equal(u.hosts[0].host, "a");
    assert_int_equal(u.hosts[1].port, 9093);
    assert_string_equal(u.hosts[2].host, "::1");
    assert_int_equal(u.hosts[2].port, 9094);
    assert_string_equal(u.hosts[3].host, "2001:db8::7");
    assert_int_equal(u.hosts[3].port, 0);
    assert_null(u.user);
    evq__url_free(&u);
}

static void parses_file_and_empty_urls(void **state)
{
    (void)state;
    evq__url u;
    assert_evq_ok(evq__url_parse("sqlite:///var/lib/my%20app/evq.db?x=1", &u));
    assert_int_equal(u.n_hosts, 0);
    assert_string_equal(u.path, "/var/lib/my app/evq.db");
    evq__url_free(&u);
    assert_evq_ok(evq__url_parse("sqlite://evq.db", &u));
    assert_string_equal(u.hosts[0].host, "evq.db");
    assert_string_equal(u.path, "");
    evq__url_free(&u);
    assert_evq_ok(evq__url_parse("memory://", &u));
    assert_int_equal(u.n_hosts, 0);
    assert_int_equal(u.n_params, 0);
    evq__url_free(&u);
    assert_evq_ok(evq__url_parse("memory://?capacity=5#frag", &u));
    assert_int_equal(u.n_params, 1);
    assert_string_equal(u.params[0].value, "5");
    evq__url_free(&u);
}

static void malformed_urls_name_the_bad_part(void **state)
{
    (void)state;
    struct {
        const char *url, *needle;
    } cases[] = {
        {"localhost:6379", "scheme"},
        {"://x", "scheme"},
        {"re dis://x", "space"},
        {"redis://host:99999", "99999"},
        {"redis://host:0", "out of range"},
        {"redis://host:65536", "out of range"},
        {"redis://host:12a", "not a number"},
        {"redis://host:", "empty port"},
        {"redis://my host:6379", "space"},
        {"redis://host\t:6379", "control"},
        {"redis://host/%", "'%'"},
        {"redis://host/%4", "'%'"},
        {"redis://host/%zz", "'%'"},
        {"redis://host/%00", "NUL"},
        {"redis://host/%ff", "UTF-8"},
        {"redis://[::1:6379", "unclosed"},
        {"redis://[xyz]:1", "IPv6"},
        {"redis://[::1]x", "port"},
        {"redis://[]:1", "empty"},
        {"redis://ho]st:1", "bracket"},
        {"kafka://a:1,,b:2", "empty host"},
        {"kafka://a:1,", "empty host"},
        {"memory://?capacity", "no '=value'"},
        {"memory://?=5", "no name"},
        {"memory://?a=1&a=2", "twice"},
        {"memory://?a=%G1", "query parameter value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        evq__url u;
        int rc = evq__url_parse(cases[i].url, &u);
        if (rc != EVQ_EINVAL)
            fail_msg("'%s' gave %d", cases[i].url, rc);
        if (!strstr(evq_errmsg(), cases[i].needle))
            fail_msg("'%s': message \"%s\" lacks \"%s\"", cases[i].url,
                     evq_errmsg(), cases[i].needle);
    }
    evq__url u;
    assert_evq_err(evq__url_parse(NULL, &u), EVQ_EINVAL);
    char *huge = malloc(10000);
    memset(huge, 'a', 9999);
    memcpy(huge, "memory://", 9);
    huge[9999] = '\0';
    assert_evq_err(evq__url_parse(huge, &u), EVQ_EINVAL);
    free(huge);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_every_part),
        cmocka_unit_test(secrets_are_redacted),
        cmocka_unit_test(parses_host_lists),
        cmocka_unit_test(parses_file_and_empty_urls),
        cmocka_unit_test(malformed_urls_name_the_bad_part),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
