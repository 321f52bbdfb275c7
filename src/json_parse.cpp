/*
 * json_parse.cpp - JSON text to a jansson tree, parsed by simdjson.
 *
 * jansson's own parser reads a byte at a time through a stream of
 * callbacks: about 5.5 us for a 300-byte CloudEvent here, most of a
 * consumer's time per event.  simdjson (Debian's libsimdjson) parses the
 * same text in about 0.15 us with the CPU's vector unit (chosen at run
 * time); the tree is then built with jansson's constructors, so everything
 * after the parse sees what json_loadb would have given.
 *
 * Accepted and refused exactly as json_loadb(..., JSON_REJECT_DUPLICATES)
 * accepts and refuses, and with `any` as it does with JSON_DECODE_ANY too
 * (tests/fuzz/fuzz_codec.c compares the two on every input): an object or
 * an array at the top (any value with `any`), no duplicate keys, no NUL in a
 * string or key (\u0000), integers that fit json_int_t (larger ones are an
 * error, as in jansson), everything UTF-8, nothing after the value.
 */
#include <jansson.h>
#include <simdjson.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

/* Declared for C in internal.h (which C++ cannot include: C11 atomics). */
extern "C" json_t *evq__json_parse(const void *text, size_t len, bool any,
                                   char *err, size_t errcap);
extern "C" json_t *evq__json_load(const void *text, size_t len, bool any,
                                  json_error_t *jerr);

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

/* Building the tree stops at the first thing jansson refuses and simdjson
 * takes, or at memory: *why says which. */
json_t *build(element v, const char **why);

bool has_nul(std::string_view s)
{
    return std::memchr(s.data(), 0, s.size()) != nullptr;
}

json_t *build_object(simdjson::dom::object o, const char **why)
{
    json_t *obj = json_object();
    if (!obj) {
        *why = "out of memory";
        return nullptr;
    }
    for (simdjson::dom::key_value_pair kv : o) {
        if (has_nul(kv.key)) {
            *why = "NUL byte in object key not supported";
            json_decref(obj);
            return nullptr;
        }
        if (json_object_getn(obj, kv.key.data(), kv.key.size())) {
            *why = "duplicate object key";
            json_decref(obj);
            return nullptr;
        }
        json_t *m = build(kv.value, why);
        if (!m ||
            json_object_setn_new_nocheck(obj, kv.key.data(), kv.key.size(),
                                         m) != 0) {
            if (m)
                *why = "out of memory";
            json_decref(obj);
            return nullptr;
        }
    }
    return obj;
}

json_t *build_array(simdjson::dom::array a, const char **why)
{
    json_t *arr = json_array();
    if (!arr) {
        *why = "out of memory";
        return nullptr;
    }
    for (element e : a) {
        json_t *m = build(e, why);
        if (!m || json_array_append_new(arr, m) != 0) {
            if (m)
                *why = "out of memory";
            json_decref(arr);
            return nullptr;
        }
    }
    return arr;
}

json_t *build(element v, const char **why)
{
    json_t *out = nullptr;
    bool typed = false; /* the element read as its own type */
    switch (v.type()) {
    case element_type::OBJECT: {
        simdjson::dom::object o;
        if (!v.get_object().get(o))
            return build_object(o, why);
        break;
    }
    case element_type::ARRAY: {
        simdjson::dom::array a;
        if (!v.get_array().get(a))
            return build_array(a, why);
        break;
    }
    case element_type::STRING: {
        std::string_view s;
        if ((typed = !v.get_string().get(s))) {
            if (has_nul(s)) {
                *why = "\\u0000 is not allowed without JSON_ALLOW_NUL";
                return nullptr;
            }
            out = json_stringn_nocheck(s.data(), s.size()); /* UTF-8 checked */
        }
        break;
    }
    case element_type::INT64: {
        int64_t i = 0;
        if ((typed = !v.get_int64().get(i)))
            out = json_integer((json_int_t)i);
        break;
    }
    case element_type::UINT64: /* past json_int_t: jansson refuses it */
        *why = "too big integer";
        return nullptr;
    case element_type::DOUBLE: {
        double d = 0;
        if ((typed = !v.get_double().get(d)))
            out = json_real(d);
        break;
    }
    case element_type::BOOL: {
        bool b = false;
        if ((typed = !v.get_bool().get(b)))
            out = json_boolean(b);
        break;
    }
    case element_type::NULL_VALUE:
        typed = true;
        out = json_null();
        break;
    }
    if (!out)
        *why = typed ? "out of memory" : "unreadable value";
    return out;
}

/* Each thread's parser and padded copy of the input, kept for the next
 * call; a document larger than KEEP_BYTES gets ones of its own, so a
 * thread does not hold a large one's memory afterwards. */
constexpr size_t KEEP_BYTES = 64 * 1024;

struct scratch {
    simdjson::dom::parser parser;
    char *buf = nullptr;
    size_t cap = 0;
    ~scratch() { std::free(buf); }
};

thread_local scratch tls_scratch;

json_t *parse_with(scratch &s, const char *text, size_t len, bool any,
                   char *err, size_t errcap)
{
    size_t need = len + simdjson::SIMDJSON_PADDING;
    if (s.cap < need) {
        char *b = static_cast<char *>(std::realloc(s.buf, need));
        if (!b) {
            std::snprintf(err, errcap, "out of memory");
            return nullptr;
        }
        s.buf = b;
        s.cap = need;
    }
    std::memcpy(s.buf, text, len);
    std::memset(s.buf + len, 0, simdjson::SIMDJSON_PADDING);
    element root;
    simdjson::error_code e = s.parser.parse(s.buf, len, false).get(root);
    if (e) {
        std::snprintf(err, errcap, "%s", simdjson::error_message(e));
        return nullptr;
    }
    if (!any && root.type() != element_type::OBJECT &&
        root.type() != element_type::ARRAY) {
        std::snprintf(err, errcap, "'[' or '{' expected");
        return nullptr;
    }
    const char *why = "";
    json_t *tree = build(root, &why);
    if (!tree)
        std::snprintf(err, errcap, "%s", why);
    return tree;
}

} // namespace

extern "C" json_t *evq__json_parse(const void *text, size_t len, bool any,
                                   char *err, size_t errcap)
{
    const char *t = static_cast<const char *>(text);
    if (len <= KEEP_BYTES)
        return parse_with(tls_scratch, t, len, any, err, errcap);
    scratch once;
    return parse_with(once, t, len, any, err, errcap);
}

extern "C" json_t *evq__json_load(const void *text, size_t len, bool any,
                                  json_error_t *jerr)
{
    char why[128];
    json_t *tree = evq__json_parse(text, len, any, why, sizeof why);
    if (tree)
        return tree;
    return json_loadb(static_cast<const char *>(text), len,
                      JSON_REJECT_DUPLICATES | (any ? JSON_DECODE_ANY : 0),
                      jerr);
}
