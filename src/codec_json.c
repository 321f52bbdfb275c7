/*
 * codec_json.c - the CloudEvents 1.0 JSON event format (structured mode).
 * https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md
 *
 * Encoding builds the envelope as a jansson object that borrows the payload
 * (a reference, not a copy); decoding parses with jansson and then checks
 * every member against the CloudEvents rules.
 */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static int put_str(json_t *o, const char *k, const char *v)
{
    if (!v)
        return 0;
    return json_object_set_new_nocheck(o, k, json_string_nocheck(v));
}

static int json_encode(const evq_event *ev, const evq_codec_limits *lim,
                       unsigned char **out, size_t *len)
{
    json_t *o;
    int rc = 0;
    char *text = NULL;

    if (ev->data &&
        evq__json_depth(ev->data, lim->max_depth - 1) > lim->max_depth - 1)
        return evq__err(EVQ_EINVAL, "payload nests deeper than max_depth=%d",
                        lim->max_depth);
    o = json_object();
    if (!o)
        return evq__err(EVQ_ENOMEM, "out of memory encoding an event");
    if (put_str(o, "specversion", "1.0") || put_str(o, "id", ev->id) ||
        put_str(o, "source", ev->source) || put_str(o, "type", ev->type) ||
        put_str(o, "subject", ev->subject) ||
        put_str(o, "time", evq_event_attr(ev, "time")) ||
        put_str(o, "datacontenttype", evq_event_datacontenttype(ev)) ||
        put_str(o, "dataschema", ev->dataschema))
        goto oom;
    for (size_t i = 0; i < ev->n_ext; i++) {
        const evq__ext *x = &ev->ext[i];
        json_t *v;
        switch (x->kind) {
        case EVQ__EXT_INTEGER:
            v = json_integer(strtoll(x->value, NULL, 10));
            break;
        case EVQ__EXT_BOOLEAN:
            v = json_boolean(strcmp(x->value, "true") == 0);
            break;
        default:
            v = json_string_nocheck(x->value);
        }
        if (json_object_set_new_nocheck(o, x->name, v))
            goto oom;
    }
    if (ev->is_binary) {
        char *b64 = evq__b64_encode(ev->bin, ev->bin_len, NULL);
        if (!b64 || json_object_set_new_nocheck(o, "data_base64",
                                                json_string_nocheck(b64))) {
            free(b64);
            goto oom;
        }
        free(b64);
    } else if (ev->data && json_object_set_nocheck(o, "data", ev->data)) {
        goto oom;
    }
    text = json_dumps(o, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        goto oom;
    *len = strlen(text);
    if (*len > lim->max_bytes) {
        rc = evq__err(EVQ_ETOOBIG,
                      "event %s encodes to %zu bytes, more than "
                      "max_event_bytes=%zu",
                      ev->id, *len, lim->max_bytes);
        free(text);
        text = NULL;
        *len = 0;
    }
    json_decref(o);
    *out = (unsigned char *)text;
    return rc;
oom:
    json_decref(o);
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
    env = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
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
