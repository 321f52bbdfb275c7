/* CloudEvents binary content mode (src/ce_binary.c): an event goes to
 * ce_* headers and a value and comes back the same; a message that breaks
 * the CloudEvents rules gets a clean error. */
#include "internal.h"
#include "testutil.h"

#define H(n, v) ((evq__header){(n), (v), sizeof(v) - 1, ""})

static evq_event *round_trip(const evq_event *ev)
{
    evq__header hs[64];
    size_t n = 64, len = 0;
    char *owned = NULL;
    const void *val = NULL;
    assert_evq_ok(evq__ce_to_binary(ev, hs, &n, &owned, &val, &len));
    evq_event *back = NULL;
    assert_evq_ok(evq__ce_from_binary(hs, n, val, len, NULL, &back));
    free(owned);
    return back;
}

static void every_attribute_survives(void **state)
{
    (void)state;
    evq_event *ev =
        evq_event_new("order.placed", json_pack("{s:[i,s]}", "lines", 1, "é"));
    assert_evq_ok(evq_event_set_attr(ev, "source", "/shop"));
    assert_evq_ok(evq_event_set_attr(ev, "subject", "order-9"));
    assert_evq_ok(evq_event_set_attr(ev, "dataschema", "https://x/s.json"));
    assert_evq_ok(evq_event_set_attr(ev, "partitionkey", "customer-4"));
    assert_evq_ok(evq_event_set_attr(ev, "traceparent", "00-ab-01"));
    evq_event *back = round_trip(ev);
    const char *names[] = {"id",          "source",       "type",
                           "subject",     "time",         "dataschema",
                           "specversion", "partitionkey", "traceparent"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        assert_string_equal(evq_event_attr(back, names[i]),
                            evq_event_attr(ev, names[i]));
    assert_true(json_equal(evq_event_data(back), evq_event_data(ev)));
    evq_event_free(back);
    evq_event_free(ev);
}

static void bytes_stay_bytes(void **state)
{
    (void)state;
    evq_event *ev = evq_event_new("blob", NULL);
    const unsigned char bin[] = {0, 1, 2, 255, '{'};
    assert_evq_ok(evq_event_set_binary(ev, bin, sizeof bin, "image/png"));
    evq_event *back = round_trip(ev);
    size_t len = 0;
    const unsigned char *got = evq_event_binary(back, &len);
    assert_int_equal(len, sizeof bin);
    assert_memory_equal(got, bin, sizeof bin);
    assert_string_equal(evq_event_datacontenttype(back), "image/png");
    evq_event_free(back);
    evq_event_free(ev);

    /* no data at all: no value, no content-type */
    ev = evq_event_new("empty", NULL);
    back = round_trip(ev);
    assert_null(evq_event_data(back));
    assert_null(evq_event_binary(back, &len));
    evq_event_free(back);
    evq_event_free(ev);
}

static void not_binary_mode_is_enoent(void **state)
{
    (void)state;
    evq__header hs[] = {H("content-type", "application/cloudevents+json"),
                        H("evq_attempt", "2")};
    evq_event *ev = NULL;
    assert_int_equal(evq__ce_from_binary(hs, 2, "{}", 2, NULL, &ev),
                     EVQ_ENOENT);
    assert_null(ev);
}

/* Each case: headers, value, expected error. */
static void broken_messages_are_refused(void **state)
{
    (void)state;
    struct {
        evq__header h[6];
        size_t n;
        const char *val;
        int code;
        const char *says;
    } cases[] = {
        {{H("ce_specversion", "1.0"), H("ce_id", "1"), H("ce_source", "/s")},
         3,
         "",
         EVQ_EDECODE,
         "type"},
        {{H("ce_specversion", "0.3"), H("ce_id", "1"), H("ce_source", "/s"),
          H("ce_type", "t")},
         4,
         "",
         EVQ_EDECODE,
         "specversion"},
        {{H("ce_specversion", "1.0"), H("ce_id", ""), H("ce_source", "/s"),
          H("ce_type", "t")},
         4,
         "",
         EVQ_EDECODE,
         "empty"},
        {{H("ce_specversion", "1.0"), H("ce_id", "1"), H("ce_source", "/s"),
          H("ce_type", "t\xff")},
         4,
         "",
         EVQ_EDECODE,
         "UTF-8"},
        {{H("ce_specversion", "1.0"),
          H("ce_id", "1"),
          H("ce_source", "/s"),
          {"ce_type", "a\0b", 3, ""}},
         4,
         "",
         EVQ_EDECODE,
         "NUL"},
        {{H("ce_specversion", "1.0"), H("ce_id", "1"), H("ce_source", "/s"),
          H("ce_type", "t"), H("content-type", "application/json")},
         5,
         "{not json",
         EVQ_EDECODE,
         "not JSON"},
        {{H("ce_specversion", "1.0"), H("ce_id", "1"), H("ce_source", "/s"),
          H("ce_type", "t"), H("ce_Bad-Name", "x")},
         5,
         "",
         EVQ_EDECODE,
         "attribute name"},
        {{H("ce_specversion", "1.0"), H("ce_id", "1"), H("ce_source", "/s"),
          H("ce_type", "t"), H("ce_data", "x")},
         5,
         "",
         EVQ_EDECODE,
         "no attribute"},
        {{H("ce_specversion", "1.0"), H("ce_id", "1"), H("ce_source", "/s"),
          H("ce_type", "t"), H("ce_time", "yesterday")},
         5,
         "",
         EVQ_EDECODE,
         "time"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        evq_event *ev = NULL;
        int rc = evq__ce_from_binary(cases[i].h, cases[i].n, cases[i].val,
                                     strlen(cases[i].val), NULL, &ev);
        if (rc != cases[i].code || !strstr(evq_errmsg(), cases[i].says))
            fail_msg("case %zu: %d '%s', wanted %d '%s'", i, rc, evq_errmsg(),
                     cases[i].code, cases[i].says);
        assert_null(ev);
    }
}

static void limits_hold(void **state)
{
    (void)state;
    evq__header hs[] = {H("ce_specversion", "1.0"), H("ce_id", "1"),
                        H("ce_source", "/s"), H("ce_type", "t")};
    evq_codec_limits lim = {.max_bytes = 64, .max_depth = 4};
    char big[100];
    memset(big, ' ', sizeof big);
    big[0] = '1';
    evq_event *ev = NULL;
    assert_evq_err(evq__ce_from_binary(hs, 4, big, sizeof big, &lim, &ev),
                   EVQ_ETOOBIG);
    const char *deep = "[[[[[1]]]]]";
    assert_evq_err(evq__ce_from_binary(hs, 4, deep, strlen(deep), &lim, &ev),
                   EVQ_EDECODE);
    const char *ok = "[[[1]]]";
    assert_evq_ok(evq__ce_from_binary(hs, 4, ok, strlen(ok), &lim, &ev));
    evq_event_free(ev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_attribute_survives),
        cmocka_unit_test(bytes_stay_bytes),
        cmocka_unit_test(not_binary_mode_is_enoent),
        cmocka_unit_test(broken_messages_are_refused),
        cmocka_unit_test(limits_hold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
