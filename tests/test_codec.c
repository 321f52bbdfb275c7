/* Codecs: every attribute and payload survives both formats; events written
 * by hand by other programs decode; hostile input gets a clean error. */
#include "internal.h"
#include "testutil.h"

#include <float.h>
#include <msgpack.h>

static const char *formats[] = {"json", "msgpack"};

static json_t *awkward_payload(void)
{
    json_t *p = json_pack(
        "{s:s, s:I, s:I, s:f, s:f, s:f, s:f, s:b, s:n, s:[], s:{}, "
        "s:[i, s, {s:[i, i]}], s:s}",
        "unicode", "h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e \xe4\xb8\xad",
        "int64_max", (json_int_t)INT64_MAX, "int64_min", (json_int_t)INT64_MIN,
        "dbl_max", DBL_MAX, "dbl_min", DBL_MIN, "denormal", 5e-324, "negative",
        -1.5e-300, "bool", 1, "null", "empty_array", "empty_object", "nested",
        1, "two", "deep", 2, 3, "empty", "");
    assert_non_null(p);
    return p;
}

static evq_event *full_event(void)
{
    evq_event *ev =
        evq_event_new("com.example.user.created", awkward_payload());
    assert_non_null(ev);
    assert_evq_ok(evq_event_set_attr(ev, "source", "https://example.com/u"));
    assert_evq_ok(evq_event_set_attr(ev, "subject", "users/123"));
    assert_evq_ok(
        evq_event_set_attr(ev, "time", "2026-11-26T11:20:19.123456789Z"));
    assert_evq_ok(evq_event_set_attr(ev, "dataschema",
                                     "https://example.com/schema.json"));
    assert_evq_ok(
        evq_event_set_attr(ev, "datacontenttype", "application/json"));
    assert_evq_ok(evq_event_set_attr(ev, "traceparent", "00-0af7-01"));
    assert_evq_ok(evq__event_set_ext(ev, "count", "-42", EVQ__EXT_INTEGER));
    assert_evq_ok(evq__event_set_ext(ev, "urgent", "true", EVQ__EXT_BOOLEAN));
    return ev;
}

static void assert_same_event(const evq_event *a, const evq_event *b)
{
    static const char *attrs[] = {
        "specversion", "id",   "source",          "type",
        "subject",     "time", "datacontenttype", "dataschema"};
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
        const char *x = evq_event_attr(a, attrs[i]),
                   *y = evq_event_attr(b, attrs[i]);
        if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0))
            fail_msg("attribute %s: '%s' became '%s'", attrs[i],
                     x ? x : "(null)", y ? y : "(null)");
    }
    assert_int_equal(evq_event_time_ns(a), evq_event_time_ns(b));
    assert_int_equal(evq_event_ext_count(a), evq_event_ext_count(b));
    for (size_t i = 0; i < evq_event_ext_count(a); i++) {
        const char *n, *v;
        evq_event_ext_at(a, i, &n, &v);
        assert_non_null(evq_event_attr(b, n));
        assert_string_equal(evq_event_attr(b, n), v);
    }
    if (evq_event_data(a)) {
        assert_non_null(evq_event_data(b));
        if (!json_equal(evq_event_data(a), evq_event_data(b))) {
            char *x = json_dumps(evq_event_data(a), JSON_ENCODE_ANY);
            char *y = json_dumps(evq_event_data(b), JSON_ENCODE_ANY);
            fail_msg("payload %s became %s", x, y);
        }
    } else {
        assert_null(evq_event_data(b));
    }
    size_t la, lb;
    const void *ba = evq_event_binary(a, &la), *bb = evq_event_binary(b, &lb);
    assert_int_equal(ba == NULL, bb == NULL);
    assert_int_equal(la, lb);
    if (la)
        assert_memory_equal(ba, bb, la);
}

static evq_event *round_trip(const evq_event *ev, const char *fmt)
{
    unsigned char *buf;
    size_t len;
    evq_event *back;
    assert_evq_ok(evq_event_encode(ev, fmt, NULL, &buf, &len));
    assert_evq_ok(evq_event_decode(&back, fmt, buf, len, NULL));
    free(buf);
    return back;
}

static void every_attribute_and_payload_round_trips(void **state)
{
    (void)state;
    for (size_t f = 0; f < 2; f++) {
        evq_event *ev = full_event();
        evq_event *back = round_trip(ev, formats[f]);
        assert_same_event(ev, back);
        /* Extension types survive: integers stay integers. */
        unsigned char *buf;
        size_t len;
        assert_evq_ok(evq_event_encode(back, "json", NULL, &buf, &len));
        json_t *o = json_loadb((char *)buf, len, 0, NULL);
        assert_true(json_is_integer(json_object_get(o, "count")));
        assert_true(json_is_true(json_object_get(o, "urgent")));
        assert_true(json_is_string(json_object_get(o, "traceparent")));
        json_decref(o);
        free(buf);
        evq_event_free(back);
        evq_event_free(ev);
    }
}

/* Encodes an event holding `data` (taken) and checks that its payload is
 * byte for byte jansson's compact dump of it. */
static void payload_written_as_jansson(json_t *data)
{
    evq_codec_limits lim = {.max_bytes = 1 << 20, .max_depth = 32};
    assert_non_null(data);
    char *want = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    assert_non_null(want);
    evq_event *ev = evq_event_new("t.payload", data);
    unsigned char *out;
    size_t len;
    assert_evq_ok(evq__codec_json.encode(ev, &lim, &out, &len));
    /* the payload is the last member: ,"data":<payload>} */
    size_t wl = strlen(want);
    assert_true(len > wl + 9);
    if (memcmp(out + len - wl - 1, want, wl) != 0 ||
        memcmp(out + len - wl - 9, ",\"data\":", 8) != 0)
        fail_msg("'%.*s' does not end with '%s'", (int)len, out, want);
    free(out);
    free(want);
    evq_event_free(ev);
}

/* The encoder writes payloads itself: byte for byte what jansson's
 * compact dump writes, for every kind of value. */
/* The simdjson parse (evq__json_parse) takes and refuses what json_loadb
 * with JSON_REJECT_DUPLICATES does (with and without JSON_DECODE_ANY),
 * and builds equal trees: the edges
 * where two JSON parsers tend to differ. */
static void both_json_parsers_agree_on_the_edges(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "{}", "[]", "  {\"a\" : [1, 2.5, -0, -0.0, 1e2, 1E-2, true, false, null]} \n",
        "[-9223372036854775808]", "[9223372036854775807]",
        "[9223372036854775808]", "[18446744073709551616]",
        "[123456789012345678901234567890]", "[1e400]", "[-1e400]",
        "[1e-400]", "[01]", "[1.]", "[.5]", "[+1]", "[0x10]",
        "[\"\\u0000\"]", "{\"a\\u0000b\":1}", "{\"a\":1,\"a\":2}",
        "{\"a\":1,\"b\":{\"a\":2}}", "[\"\\ud800\"]", "[\"\\udc00\"]",
        "[\"\\ud83d\\ude00\"]", "[\"\\u00e9\\n\\t\\\"\\\\\\/\"]",
        "[\"\xc3\xa9\"]", "[\"\xff\"]", "[\"\xc3\"]", "[\"\xed\xa0\x80\"]",
        "\xef\xbb\xbf[1]", "[1] x", "[1],", "", " ", "1", "\"x\"", "null",
        "[\"a\tb\"]", "[\"a\nb\"]", "{\"a\":}", "{,}", "[1,]", "{\"a\" 1}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        "{\"\":\"\"}", "[true,false,nul]", "[tru]", "[\"\\x\"]",
        "[\"\\u12\"]", "[1.5e+3,-2E-3]",
        NULL};
    for (size_t i = 0; texts[i]; i++) {
        char why[128];
        json_error_t jerr;
        size_t n = strlen(texts[i]);
        for (int any = 0; any < 2; any++) {
            json_t *fast = evq__json_parse(texts[i], n, any, why, sizeof why);
            json_t *slow = json_loadb(
                texts[i], n,
                JSON_REJECT_DUPLICATES | (any ? JSON_DECODE_ANY : 0), &jerr);
            if ((fast == NULL) != (slow == NULL) ||
                (fast && !json_equal(fast, slow)))
                fail_msg("'%s' (any=%d): simdjson %s, jansson %s", texts[i],
                         any, fast ? "took it" : why,
                         slow ? "took it" : jerr.text);
            json_decref(fast);
            json_decref(slow);
        }
    }
    /* NUL inside the length (not a terminator): refused by both */
    char why[128];
    assert_null(evq__json_parse("[\"a\0b\"]", 7, true, why, sizeof why));
    /* deeper than simdjson's own limit: refused by simdjson, which the
     * codec then leaves to jansson */
    size_t deep = 3000;
    char *d = malloc(2 * deep);
    memset(d, '[', deep);
    memset(d + deep, ']', deep);
    assert_null(evq__json_parse(d, 2 * deep, true, why, sizeof why));
    free(d);
}

static void payloads_are_written_as_jansson_writes_them(void **state)
{
    (void)state;
    const char *texts[] = {
        "{\"p\":\"plain\"}",
        "{\"z\":1,\"a\":-9223372036854775807,\"m\":[true,false,null,[],{}]}",
        ("{\"s\":\"q\\\"b\\\\ c\\u0001\\u001f\\n\\r\\t\\b\\f / \\u00e9\\u20ac "
         "\\ud83d\\ude00\"}"),
        "{\"nul\":\"a\\u0000b\",\"real\":1.5,\"tiny\":1e-300,\"n\":0.1}",
        "[1,2.0,\"x\",{\"k\\u00e9\\t\":[[[]]]}]",
        "\"just a string\"",
        "-12",
        "{}",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        json_error_t jerr;
        json_t *data =
            json_loads(texts[i], JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (!data)
            fail_msg("text %zu: %s", i, jerr.text);
        payload_written_as_jansson(data);
    }
    /* a long string (room counted, not guessed), escapes throughout */
    char big[3000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = i % 7 == 0 ? '"' : i % 11 == 0 ? '\n' : (char)('a' + i % 26);
    payload_written_as_jansson(json_pack("{s:s#}", "big", big, sizeof big));
}

static void scalar_and_absent_payloads_round_trip(void **state)
{
    (void)state;
    json_t *values[] = {json_string("just text"),
                        json_integer(0),
                        json_real(-0.25),
                        json_true(),
                        json_null(),
                        NULL};
    for (size_t f = 0; f < 2; f++) {
        for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
            evq_event *ev =
                evq_event_new("t", values[i] ? json_incref(values[i]) : NULL);
            evq_event *back = round_trip(ev, formats[f]);
            if (values[i] && json_is_null(values[i]))
                assert_null(evq_event_data(back)); /* null data is absent */
            else
                assert_same_event(ev, back);
            evq_event_free(back);
            evq_event_free(ev);
        }
    }
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        json_decref(values[i]);
}

static void binary_payloads_round_trip(void **state)
{
    (void)state;
    unsigned char bytes[256];
    for (int i = 0; i < 256; i++)
        bytes[i] = (unsigned char)i;
    for (size_t f = 0; f < 2; f++) {
        for (size_t n = 0; n <= 5; n++) { /* every base64 padding case */
            evq_event *ev = evq_event_new("blob", NULL);
            assert_evq_ok(evq_event_set_binary(ev, bytes + 250, n,
                                               "application/octet-stream"));
            evq_event *back = round_trip(ev, formats[f]);
            assert_same_event(ev, back);
            evq_event_free(back);
            evq_event_free(ev);
        }
        evq_event *ev = evq_event_new("blob", NULL);
        assert_evq_ok(evq_event_set_binary(ev, bytes, sizeof bytes, NULL));
        evq_event *back = round_trip(ev, formats[f]);
        assert_same_event(ev, back);
        evq_event_free(back);
        evq_event_free(ev);
    }
}

static char *read_fixture(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", EVQ_TEST_DATA_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 16);
    *len = fread(buf, 1, 1 << 16, f);
    fclose(f);
    return buf;
}

static void decodes_events_written_by_other_programs(void **state)
{
    (void)state;
    size_t len;
    evq_event *ev;
    char *buf = read_fixture("spec-example.json", &len);

    assert_evq_ok(evq_event_decode(&ev, "json", buf, len, NULL));
    assert_string_equal(evq_event_type(ev), "com.github.pull_request.opened");
    assert_string_equal(evq_event_source(ev),
                        "https://github.com/cloudevents/spec/pull");
    assert_string_equal(evq_event_id(ev), "A234-1234-1234");
    assert_string_equal(evq_event_subject(ev), "123");
    assert_string_equal(evq_event_attr(ev, "time"), "2018-04-05T17:31:00Z");
    assert_string_equal(evq_event_attr(ev, "comexampleextension1"), "value");
    assert_string_equal(evq_event_attr(ev, "comexampleothervalue"), "5");
    assert_string_equal(evq_event_datacontenttype(ev), "text/xml");
    assert_string_equal(json_string_value(evq_event_data(ev)),
                        "<much wow=\"xml\"/>");
    evq_event_free(ev);
    free(buf);

    buf = read_fixture("binary.json", &len);
    assert_evq_ok(evq_event_decode(&ev, "json", buf, len, NULL));
    size_t blen;
    const unsigned char *b = evq_event_binary(ev, &blen);
    assert_int_equal(blen, 6);
    assert_memory_equal(b, "\x00\x01\x02\x03\x04\xff", 6);
    assert_string_equal(evq_event_attr(ev, "isimportant"), "true");
    assert_null(evq_event_attr(ev, "unset"));
    assert_string_equal(evq_event_attr(ev, "time"), "2018-04-05T15:31:00.123Z");
    assert_string_equal(evq_event_datacontenttype(ev),
                        "application/vnd.apache.thrift.binary");
    evq_event_free(ev);
    free(buf);

    buf = read_fixture("json-data.json", &len);
    assert_evq_ok(evq_event_decode(&ev, "json", buf, len, NULL));
    assert_string_equal(evq_event_type(ev), "user.created");
    assert_int_equal(
        json_integer_value(json_object_get(evq_event_data(ev), "age")), 42);
    assert_string_equal(evq_event_attr(ev, "dataschema"),
                        "https://example.com/schemas/user.json");
    assert_null(evq_event_attr(ev, "time"));
    evq_event_free(ev);
    free(buf);
}

static void assert_decode_fails(const char *fmt, const void *buf, size_t len,
                                int code, const char *needle)
{
    evq_event *ev = (evq_event *)1;
    int rc = evq_event_decode(&ev, fmt, buf, len, NULL);
    if (rc != code)
        fail_msg("decoding %zu bytes as %s gave %s, expected %s (%s)", len, fmt,
                 rc ? evq_errname(rc) : "0", evq_errname(code), evq_errmsg());
    assert_null(ev);
    if (needle)
        assert_errmsg_has(needle);
}

static void malformed_json_is_refused(void **state)
{
    (void)state;
    const char *base = "\"specversion\":\"1.0\",\"source\":\"s\"";
    char buf[512];
    struct {
        const char *body;
        const char *needle;
    } cases[] = {
        {"{\"specversion\":\"1.0\",\"source\":\"s\",\"type\":\"t\"}", "id"},
        {"{\"specversion\":\"1.0\",\"source\":\"s\",\"id\":\"1\"}", "type"},
        {"{\"specversion\":\"1.0\",\"type\":\"t\",\"id\":\"1\"}", "source"},
        {"{\"source\":\"s\",\"type\":\"t\",\"id\":\"1\",\"specversion\":\"0."
         "3\"}",
         "specversion"},
        {"[1,2,3]", "object"},
        {"{\"type\":\"t\",\"id\":\"1\",\"data\":1,\"data_base64\":\"AA==\",%s}",
         "both"},
        {"{\"type\":\"t\",\"id\":\"1\",\"data_base64\":\"A===\",%s}", "base64"},
        {"{\"type\":\"t\",\"id\":\"1\",\"data_base64\":\"!!!!\",%s}", "base64"},
        {"{\"type\":\"t\",\"id\":\"1\",\"data_base64\":5,%s}", "data_base64"},
        {"{\"type\":\"t\",\"id\":\"\",%s}", "empty"},
        {"{\"type\":7,\"id\":\"1\",%s}", "not a string"},
        {"{\"type\":\"t\",\"id\":\"1\",\"Bad-Name\":\"x\",%s}", "Bad-Name"},
        {"{\"type\":\"t\",\"id\":\"1\",\"ext\":{\"a\":1},%s}", "ext"},
        {"{\"type\":\"t\",\"id\":\"1\",\"time\":\"noon\",%s}", "time"},
        {"{\"type\":\"t\",\"id\":\"1\",\"id\":\"2\",%s}", "duplicate"},
        {"{\"type\":\"t\",\"id\":\"1\",\"x\":\"\xff\",%s}", "0xff"},
        {"{\"type\":\"t\",\"id\":\"1\",\"x\":\"a\\u0000b\",%s}", NULL},
        {"{\"type\":\"t\",\"id\":\"1\",\"data\":18446744073709551616,%s}",
         NULL},
        {"", NULL},
        {"{", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *hole = strstr(cases[i].body, "%s");
        if (hole)
            snprintf(buf, sizeof buf, "%.*s%s%s", (int)(hole - cases[i].body),
                     cases[i].body, base, hole + 2);
        else
            snprintf(buf, sizeof buf, "%s", cases[i].body);
        assert_decode_fails("json", buf, strlen(buf), EVQ_EDECODE,
                            cases[i].needle);
    }
}

static void deep_nesting_is_refused(void **state)
{
    (void)state;
    size_t n = 100000;
    char *buf = malloc(2 * n + 100);
    memset(buf, '[', n);
    assert_decode_fails("json", buf, n, EVQ_EDECODE, NULL);
    memset(buf + n, ']', n);
    assert_decode_fails("json", buf, 2 * n, EVQ_EDECODE, NULL);
    /* Within jansson's own limit but past max_depth. */
    int len =
        sprintf(buf, "{\"specversion\":\"1.0\",\"id\":\"1\",\"type\":\"t\","
                     "\"source\":\"s\",\"data\":");
    for (int i = 0; i < 40; i++)
        buf[len++] = '[';
    for (int i = 0; i < 40; i++)
        buf[len++] = ']';
    buf[len++] = '}';
    assert_decode_fails("json", buf, (size_t)len, EVQ_EDECODE, "max_depth");
    /* MessagePack: 100 000 nested one-element arrays. */
    memset(buf, 0x91, n);
    buf[n] = (char)0xc0;
    assert_decode_fails("msgpack", buf, n + 1, EVQ_EDECODE, "deeper");
    free(buf);
    /* Encoding refuses a payload too deep to decode again. */
    json_t *deep = json_array(), *cur = deep;
    for (int i = 0; i < 100; i++) {
        json_t *inner = json_array();
        json_array_append_new(cur, inner);
        cur = inner;
    }
    evq_event *ev = evq_event_new("t", deep);
    unsigned char *out;
    size_t olen;
    for (size_t f = 0; f < 2; f++) {
        assert_evq_err(evq_event_encode(ev, formats[f], NULL, &out, &olen),
                       EVQ_EINVAL);
        assert_errmsg_has("deeper");
    }
    evq_event_free(ev);
}

static void oversized_events_are_refused(void **state)
{
    (void)state;
    size_t big = 2 * 1024 * 1024;
    char *s = malloc(big + 1);
    memset(s, 'x', big);
    s[big] = '\0';
    evq_event *ev = evq_event_new("t", json_pack("{s:s}", "blob", s));
    unsigned char *out;
    size_t len;
    for (size_t f = 0; f < 2; f++) {
        assert_evq_err(evq_event_encode(ev, formats[f], NULL, &out, &len),
                       EVQ_ETOOBIG);
        assert_errmsg_has("max_event_bytes");
        assert_null(out);
        /* Decoding refuses it before parsing. */
        evq_codec_limits wide = {.max_bytes = 4 * big, .max_depth = 32};
        assert_evq_ok(evq_event_encode(ev, formats[f], &wide, &out, &len));
        assert_decode_fails(formats[f], out, len, EVQ_ETOOBIG,
                            "max_event_bytes");
        free(out);
    }
    evq_event_free(ev);
    free(s);
}

static void truncated_input_is_refused(void **state)
{
    (void)state;
    for (size_t f = 0; f < 2; f++) {
        evq_event *ev = full_event();
        unsigned char *buf;
        size_t len;
        assert_evq_ok(evq_event_encode(ev, formats[f], NULL, &buf, &len));
        for (size_t cut = 0; cut < len; cut++) {
            unsigned char *copy =
                malloc(cut ? cut : 1); /* exact size: ASan catches over-reads */
            memcpy(copy, buf, cut);
            evq_event *back = NULL;
            int rc = evq_event_decode(&back, formats[f], copy, cut, NULL);
            if (rc == 0)
                fail_msg("%s truncated to %zu of %zu bytes decoded", formats[f],
                         cut, len);
            assert_int_equal(rc, EVQ_EDECODE);
            free(copy);
        }
        free(buf);
        evq_event_free(ev);
    }
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void random_bytes_are_refused(void **state)
{
    (void)state;
    for (int i = 0; i < 20000; i++) {
        size_t len = next_rand() % 200;
        unsigned char *buf = malloc(len ? len : 1);
        for (size_t k = 0; k < len; k++)
            buf[k] = (unsigned char)next_rand();
        if (i % 2 && len)
            buf[0] = (unsigned char)(0x80 | (next_rand() & 0x0f)); /* a map */
        for (size_t f = 0; f < 2; f++) {
            evq_event *ev = NULL;
            int rc = evq_event_decode(&ev, formats[f], buf, len, NULL);
            assert_true(rc == EVQ_EDECODE || rc == 0);
            evq_event_free(ev);
        }
        free(buf);
    }
}

static void msgpack_hostile_counts_are_refused(void **state)
{
    (void)state;
    /* array32 and map32 declaring 4 billion elements in 5 bytes */
    assert_decode_fails("msgpack", "\xdd\xff\xff\xff\xff", 5, EVQ_EDECODE,
                        "declares");
    assert_decode_fails("msgpack", "\xdf\xff\xff\xff\xff", 5, EVQ_EDECODE,
                        "declares");
    /* str32 claiming 4 GiB */
    assert_decode_fails("msgpack",
                        "\xdb\xff\xff\xff\xff"
                        "abc",
                        8, EVQ_EDECODE, "truncated");
    assert_decode_fails("msgpack", "\xc1", 1, EVQ_EDECODE, "invalid");
    assert_decode_fails("msgpack", "\x80\x00", 2, EVQ_EDECODE, "trailing");
    assert_decode_fails("msgpack", "\x93\x01\x02\x03", 4, EVQ_EDECODE, "map");
    /* a map with an integer key */
    assert_decode_fails("msgpack", "\x81\x01\x02", 3, EVQ_EDECODE, "keys");
}

static void msgpack_envelope_rules_match_json(void **state)
{
    (void)state;
    /* Built with msgpack-c so the bytes are what another program writes. */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    evq_event *ev;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 6);
    const char *kv[] = {"specversion", "1.0", "id",   "x1",
                        "source",      "/s",  "type", "t"};
    for (int i = 0; i < 8; i++) {
        msgpack_pack_str(&pk, strlen(kv[i]));
        msgpack_pack_str_body(&pk, kv[i], strlen(kv[i]));
    }
    msgpack_pack_str(&pk, 4);
    msgpack_pack_str_body(&pk, "data", 4);
    msgpack_pack_uint64(&pk, 7);
    msgpack_pack_str(&pk, 11);
    msgpack_pack_str_body(&pk, "data_base64", 11);
    msgpack_pack_str(&pk, 4);
    msgpack_pack_str_body(&pk, "AAAA", 4);
    assert_decode_fails("msgpack", sb.data, sb.size, EVQ_EDECODE, "both");
    msgpack_sbuffer_clear(&sb);

    msgpack_pack_map(&pk, 5);
    for (int i = 0; i < 8; i++) {
        msgpack_pack_str(&pk, strlen(kv[i]));
        msgpack_pack_str_body(&pk, kv[i], strlen(kv[i]));
    }
    msgpack_pack_str(&pk, 4);
    msgpack_pack_str_body(&pk, "data", 4);
    msgpack_pack_uint64(&pk, UINT64_MAX);
    assert_decode_fails("msgpack", sb.data, sb.size, EVQ_EDECODE, "int64");
    msgpack_sbuffer_clear(&sb);

    msgpack_pack_map(&pk, 5);
    for (int i = 0; i < 8; i++) {
        msgpack_pack_str(&pk, strlen(kv[i]));
        msgpack_pack_str_body(&pk, kv[i], strlen(kv[i]));
    }
    msgpack_pack_str(&pk, 4);
    msgpack_pack_str_body(&pk, "data", 4);
    msgpack_pack_str(&pk, 2);
    msgpack_pack_str_body(&pk, "\xc3\x28", 2);
    assert_decode_fails("msgpack", sb.data, sb.size, EVQ_EDECODE, "UTF-8");
    msgpack_sbuffer_clear(&sb);

    msgpack_pack_map(&pk, 5);
    for (int i = 0; i < 8; i++) {
        msgpack_pack_str(&pk, strlen(kv[i]));
        msgpack_pack_str_body(&pk, kv[i], strlen(kv[i]));
    }
    msgpack_pack_str(&pk, 4);
    msgpack_pack_str_body(&pk, "data", 4);
    msgpack_pack_float(&pk, 1.5f);
    assert_evq_ok(evq_event_decode(&ev, "msgpack", sb.data, sb.size, NULL));
    assert_true(json_real_value(evq_event_data(ev)) == 1.5);
    assert_string_equal(evq_event_id(ev), "x1");
    evq_event_free(ev);
    msgpack_sbuffer_destroy(&sb);

    /* Missing id, type: every prefix of required attributes is refused. */
    evq_event *full = evq_event_new("t", NULL);
    unsigned char *buf;
    size_t len;
    assert_evq_ok(evq_event_encode(full, "msgpack", NULL, &buf, &len));
    assert_evq_ok(evq_event_decode(&ev, "msgpack", buf, len, NULL));
    evq_event_free(ev);
    free(buf);
    evq_event_free(full);
}

static int upper_encode(const evq_event *ev, const evq_codec_limits *lim,
                        unsigned char **out, size_t *len)
{
    int rc = evq__codec_json.encode(ev, lim, out, len);
    if (rc == 0) {
        unsigned char *p = realloc(*out, *len + 1);
        memmove(p + 1, p, *len);
        p[0] = '!';
        *out = p;
        (*len)++;
    }
    return rc;
}

static int upper_decode(const void *buf, size_t len,
                        const evq_codec_limits *lim, evq_event **out)
{
    if (len == 0 || ((const char *)buf)[0] != '!')
        return EVQ_EDECODE;
    return evq__codec_json.decode((const char *)buf + 1, len - 1, lim, out);
}

static void users_can_register_codecs(void **state)
{
    (void)state;
    static const evq_codec bang = {.name = "bang",
                                   .content_type = "x/bang",
                                   .encode = upper_encode,
                                   .decode = upper_decode};
    static const evq_codec bad = {.name = "bad"};
    assert_evq_ok(evq_codec_register(&bang));
    assert_evq_err(evq_codec_register(&bang), EVQ_EEXIST);
    assert_evq_err(evq_codec_register(&bad), EVQ_EINVAL);
    assert_evq_err(evq_codec_register(NULL), EVQ_EINVAL);
    assert_ptr_equal(evq_codec_find("bang"), &bang);
    assert_null(evq_codec_find("nope"));

    evq_queue *q;
    evq_msg *m;
    evq_event *ev = full_event();
    assert_evq_ok(evq_queue_open(&q, "memory://?format=bang", "bang-q", NULL));
    assert_evq_ok(evq_enqueue(q, ev));
    assert_evq_ok(evq_dequeue(q, &m, 1000));
    assert_same_event(ev, evq_msg_event(m));
    assert_evq_ok(evq_ack(m));
    evq_queue_close(q);
    evq_event_free(ev);

    unsigned char *out;
    size_t len;
    assert_evq_err(evq_event_encode(NULL, "json", NULL, &out, &len),
                   EVQ_EINVAL);
    assert_evq_err(evq_event_decode(NULL, "json", "{}", 2, NULL), EVQ_EINVAL);
    assert_evq_err(evq_event_decode(&ev, "xml", "{}", 2, NULL), EVQ_EINVAL);
    assert_errmsg_has("xml");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_attribute_and_payload_round_trips),
        cmocka_unit_test(scalar_and_absent_payloads_round_trip),
        cmocka_unit_test(payloads_are_written_as_jansson_writes_them),
        cmocka_unit_test(both_json_parsers_agree_on_the_edges),
        cmocka_unit_test(binary_payloads_round_trip),
        cmocka_unit_test(decodes_events_written_by_other_programs),
        cmocka_unit_test(malformed_json_is_refused),
        cmocka_unit_test(deep_nesting_is_refused),
        cmocka_unit_test(oversized_events_are_refused),
        cmocka_unit_test(truncated_input_is_refused),
        cmocka_unit_test(random_bytes_are_refused),
        cmocka_unit_test(msgpack_hostile_counts_are_refused),
        cmocka_unit_test(msgpack_envelope_rules_match_json),
        cmocka_unit_test(users_can_register_codecs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
