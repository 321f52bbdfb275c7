/*
 * codec_json.c - the CloudEvents 1.0 JSON event format (structured mode).
 * https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md
 *
 * Encoding writes the envelope and the payload's tree straight into one
 * buffer (see put_json); decoding parses with simdjson into a jansson tree
 * (json_parse.cpp) and then checks every member against the CloudEvents
 * rules.
 */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* The envelope is written directly: attribute values are already checked
 * UTF-8, so writing them needs only JSON string escaping, and the payload's
 * tree is walked into the same buffer.  No intermediate jansson object per
 * event. */

/* Appends s[0..n) as a JSON string (quotes included), escaped as jansson
 * escapes: the quote, the backslash and control characters (NUL as
 * \u0000).  Room is made once; runs of plain bytes are copied whole. */
static int put_string_n(evq__buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    /* short strings: room for the worst; long ones: counted, so a large
     * payload does not hold six times its size */
    size_t room = 6 * n + 2;
    if (n > 256) {
        room = n + 2;
        for (const unsigned char *q = p; q < end; q++)
            if (*q < 0x20 || *q == '"' || *q == '\\')
                room += 5;
    }
    if (evq__buf_reserve(b, room))
        return EVQ_ENOMEM;
    unsigned char *o = b->p + b->len;
    *o++ = '"';
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && *p >= 0x20 && *p != '"' && *p != '\\')
            p++;
        memcpy(o, run, (size_t)(p - run));
        o += p - run;
        if (p == end)
            break;
        unsigned char c = *p++;
        *o++ = '\\';
        switch (c) {
        case '"':
        case '\\':
            *o++ = c;
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            memcpy(o, "u00", 3);
            o[3] = (unsigned char)hex[c >> 4];
            o[4] = (unsigned char)hex[c & 15];
            o += 5;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return 0;
}

static int put_string(evq__buf *b, const char *s)
{
    return put_string_n(b, s, strlen(s));
}

/* Appends ,"name":"value" (or the opening member when first). */
static int put_member(evq__buf *b, const char *name, const char *value,
                      bool quoted)
{
    if (!value)
        return 0;
    size_t nl = strlen(name), vl = strlen(value);
    if (evq__buf_reserve(b, nl + vl + 5))
        return EVQ_ENOMEM;
    unsigned char *o = b->p + b->len;
    if (b->len > 1)
        *o++ = ',';
    *o++ = '"';
    memcpy(o, name, nl);
    o += nl;
    *o++ = '"';
    *o++ = ':';
    b->len = (size_t)(o - b->p);
    return quoted ? put_string_n(b, value, vl) : evq__buf_append(b, value, vl);
}

static int dump_cb(const char *buffer, size_t size, void *data)
{
    return evq__buf_append(data, buffer, size) ? -1 : 0;
}

/* Appends the payload v as jansson's compact dump would write it: objects
 * in their order, strings escaped alike, integers in decimal; a real (its
 * shortest form is jansson's to choose) and a string jansson would refuse
 * or escape otherwise (not UTF-8, or holding NUL) are dumped by jansson
 * itself.  The tree was checked against max_depth.  A dump through
 * jansson's callbacks costs about ten times this per event. */
static int put_json(evq__buf *b, json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *m;
        bool first = true;
        if (evq__buf_append(b, "{", 1))
            return EVQ_ENOMEM;
        json_object_foreach(v, key, m)
        {
            if ((!first && evq__buf_append(b, ",", 1)) || put_string(b, key) ||
                evq__buf_append(b, ":", 1) || put_json(b, m))
                return EVQ_ENOMEM;
            first = false;
        }
        return evq__buf_append(b, "}", 1);
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (evq__buf_append(b, "[", 1))
            return EVQ_ENOMEM;
        for (size_t i = 0; i < n; i++)
            if ((i && evq__buf_append(b, ",", 1)) ||
                put_json(b, json_array_get(v, i)))
                return EVQ_ENOMEM;
        return evq__buf_append(b, "]", 1);
    }
    case JSON_STRING: {
        const char *str = json_string_value(v);
        size_t n = json_string_length(v);
        if (evq__utf8_valid(str, n))
            return put_string_n(b, str, n);
        break;
    }
    case JSON_INTEGER: {
        char num[32];
        int n = snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT,
                         json_integer_value(v));
        return evq__buf_append(b, num, (size_t)n);
    }
    case JSON_TRUE:
        return evq__buf_append(b, "true", 4);
    case JSON_FALSE:
        return evq__buf_append(b, "false", 5);
    case JSON_NULL:
        return evq__buf_append(b, "null", 4);
    default:
        break;
    }
    return json_dump_callback(v, dump_cb, b,
                              JSON_COMPACT | JSON_ENCODE_ANY) != 0
               ? EVQ_ENOMEM
               : 0;
}

static int json_encode(const evq_event *ev, const evq_codec_limits *lim,
                       unsigned char **out, size_t *len)
{
    evq__buf b = {0};
    int rc = 0;
    char time_buf[EVQ__TIME_BUF];

    if (ev->data &&
        evq__json_depth(ev->data, lim->max_depth - 1) > lim->max_depth - 1)
        return evq__err(EVQ_EINVAL, "payload nests deeper than max_depth=%d",
                        lim->max_depth);
    if (ev->has_time)
        evq__time_format(ev->time_ns, time_buf);
    /* One allocation for the common case: attributes plus a small payload. */
    if (evq__buf_reserve(&b, 1024))
        goto oom;
    if (evq__buf_append(&b, "{", 1) ||
        put_member(&b, "specversion", "1.0", true) ||
        put_member(&b, "id", ev->id, true) ||
        put_member(&b, "source", ev->source, true) ||
        put_member(&b, "type", ev->type, true) ||
        put_member(&b, "subject", ev->subject, true) ||
        put_member(&b, "time", ev->has_time ? time_buf : NULL, true) ||
        put_member(&b, "datacontenttype", evq_event_datacontenttype(ev),
                   true) ||
        put_member(&b, "dataschema", ev->dataschema, true))
        goto oom;
    for (size_t i = 0; i < ev->n_ext; i++) {
        const evq__ext *x = &ev->ext[i];
        if (put_member(&b, x->name, x->value, x->kind == EVQ__EXT_STRING))
            goto oom;
    }
    if (ev->is_binary) {
        char *b64 = evq__b64_encode(ev->bin, ev->bin_len, NULL);
        if (!b64 || put_member(&b, "data_base64", b64, true)) {
            free(b64);
            goto oom;
        }
        free(b64);
    } else if (ev->data) {
        if (evq__buf_append(&b, ",\"data\":", 8) || put_json(&b, ev->data))
            goto oom;
    }
    if (evq__buf_append(&b, "}", 1))
        goto oom;
    if (b.len > lim->max_bytes) {
        rc = evq__err(EVQ_ETOOBIG,
                      "event %s encodes to %zu bytes, more than "
                      "max_event_bytes=%zu",
                      ev->id, b.len, lim->max_bytes);
        free(b.p);
        return rc;
    }
    *out = b.p;
    *len = b.len;
    return 0;
oom:
    free(b.p);
    return evq__err(EVQ_ENOMEM, "out of memory encoding an event");
}

/* Reads a string-valued context attribute; null counts as absent. */
static int get_attr(json_t *v, const char *name, const char **s)
{
    *s = NULL;
    if (json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return evq__err(EVQ_EDECODE, "attribute '%s' is not a string", name);
    if (json_string_length(v) > EVQ_MAX_ATTR_BYTES)
        return evq__err(EVQ_EDECODE, "attribute '%s' is longer than %d bytes",
                        name, EVQ_MAX_ATTR_BYTES);
    *s = json_string_value(v);
    return 0;
}

int evq__event_from_envelope(evq_event *ev, json_t *env, json_t *data,
                             bool data_is_binary, const unsigned char *bin,
                             size_t bin_len)
{
    const char *key;
    json_t *v;
    int rc;

    json_object_foreach(env, key, v)
    {
        const char *s;
        if (strcmp(key, "data") == 0 || strcmp(key, "data_base64") == 0)
            continue; /* the payload was taken out by the caller */
        if (strcmp(key, "specversion") == 0) {
            if (!json_is_string(v) || strcmp(json_string_value(v), "1.0") != 0)
                return evq__err(EVQ_EDECODE,
                                "unsupported specversion (evq reads 1.0)");
            continue;
        }
        if (strcmp(key, "id") == 0 || strcmp(key, "source") == 0 ||
            strcmp(key, "type") == 0 || strcmp(key, "subject") == 0 ||
            strcmp(key, "time") == 0 || strcmp(key, "datacontenttype") == 0 ||
            strcmp(key, "dataschema") == 0) {
            if ((rc = get_attr(v, key, &s)) != 0)
                return rc;
            if (!s)
                continue;
            if ((strcmp(key, "id") == 0 || strcmp(key, "source") == 0 ||
                 strcmp(key, "type") == 0) &&
                s[0] == '\0')
                return evq__err(EVQ_EDECODE, "attribute '%s' is empty", key);
            if ((rc = evq_event_set_attr(ev, key, s)) != 0)
                return evq__err_prefix(EVQ_EDECODE, "bad attribute '%s'", key);
            continue;
        }
        if (!evq__ext_name_valid(key))
            return evq__err(EVQ_EDECODE,
                            "member '%.40s' is not a valid CloudEvents "
                            "attribute name",
                            key);
        if (json_is_null(v))
            continue;
        if (json_is_string(v)) {
            if ((rc = get_attr(v, key, &s)) != 0)
                return rc;
            rc = evq__event_set_ext(ev, key, s, EVQ__EXT_STRING);
        } else if (json_is_integer(v)) {
            char num[32];
            snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT,
                     json_integer_value(v));
            rc = evq__event_set_ext(ev, key, num, EVQ__EXT_INTEGER);
        } else if (json_is_boolean(v)) {
            rc = evq__event_set_ext(ev, key, json_is_true(v) ? "true" : "false",
                                    EVQ__EXT_BOOLEAN);
        } else {
            return evq__err(EVQ_EDECODE,
                            "extension attribute '%s' must be a string, an "
                            "integer or a boolean",
                            key);
        }
        if (rc)
            return evq__err_prefix(EVQ_EDECODE, "bad attribute '%s'", key);
    }
    if ((rc = evq__event_validate(ev)) != 0)
        return rc;
    if (data_is_binary) {
        if ((rc = evq_event_set_binary(ev, bin, bin_len, NULL)) != 0)
            return rc;
    } else if (data) {
        evq_event_set_data(ev, json_incref(data));
    }
    return 0;
}

static int json_decode(const void *buf, size_t len, const evq_codec_limits *lim,
                       evq_event **out)
{
    json_error_t jerr;
    json_t *env, *data, *b64;
    evq_event *ev = NULL;
    unsigned char *bin = NULL;
    size_t bin_len = 0;
    int rc;

    if (len > lim->max_bytes)
        return evq__err(EVQ_ETOOBIG,
                        "message of %zu bytes is larger than "
                        "max_event_bytes=%zu",
                        len, lim->max_bytes);
    env = evq__json_load(buf, len, false, &jerr);
    if (!env)
        return evq__err(EVQ_EDECODE, "invalid JSON at line %d column %d: %s",
                        jerr.line, jerr.column, jerr.text);
    if (!json_is_object(env)) {
        rc = evq__err(EVQ_EDECODE, "a CloudEvent must be a JSON object");
        goto out;
    }
    if (evq__json_depth(env, lim->max_depth) > lim->max_depth) {
        rc = evq__err(EVQ_EDECODE, "message nests deeper than max_depth=%d",
                      lim->max_depth);
        goto out;
    }
    data = json_object_get(env, "data");
    if (json_is_null(data))
        data = NULL; /* null members are absent (CloudEvents JSON format) */
    b64 = json_object_get(env, "data_base64");
    if (json_is_null(b64))
        b64 = NULL;
    if (data && b64) {
        rc = evq__err(EVQ_EDECODE, "event has both 'data' and 'data_base64'");
        goto out;
    }
    if (b64) {
        if (!json_is_string(b64)) {
            rc = evq__err(EVQ_EDECODE, "'data_base64' is not a string");
            goto out;
        }
        if ((rc = evq__b64_decode(json_string_value(b64),
                                  json_string_length(b64), &bin, &bin_len)))
            goto out;
    }
    ev = evq__event_alloc();
    if (!ev) {
        rc = evq__err(EVQ_ENOMEM, "out of memory decoding an event");
        goto out;
    }
    rc = evq__event_from_envelope(ev, env, data, bin != NULL, bin, bin_len);
out:
    free(bin);
    json_decref(env);
    if (rc) {
        evq_event_free(ev);
        return rc;
    }
    *out = ev;
    return 0;
}

const evq_codec evq__codec_json = {
    .name = "json",
    .content_type = "application/cloudevents+json",
    .encode = json_encode,
    .decode = json_decode,
};
