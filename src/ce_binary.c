/*
 * ce_binary.c - CloudEvents binary content mode, as the Kafka protocol
 * binding defines it: each attribute is a header "ce_<name>", the data is
 * the message value, and datacontenttype is the "content-type" header.
 *
 * Decoding builds the same envelope a structured message would have and
 * hands it to evq__event_from_envelope, so both modes obey one set of
 * CloudEvents rules.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool is_json_type(const char *ct)
{
    if (!ct)
        return true; /* no content-type: CloudEvents defaults to JSON */
    size_t n = strcspn(ct, ";");
    while (n > 0 && ct[n - 1] == ' ')
        n--;
    return (n == 16 && strncmp(ct, "application/json", 16) == 0) ||
           (n == 9 && strncmp(ct, "text/json", 9) == 0) ||
           (n > 5 && strncmp(ct + n - 5, "+json", 5) == 0);
}

int evq__ce_from_binary(const evq__header *h, size_t n, const void *val,
                        size_t len, const evq_codec_limits *lim,
                        evq_event **out)
{
    evq_codec_limits defaults;
    if (!lim) {
        evq__limits_default(&defaults);
        lim = &defaults;
    }
    *out = NULL;
    bool binary_mode = false;
    for (size_t i = 0; i < n && !binary_mode; i++)
        binary_mode = strncmp(h[i].name, "ce_", 3) == 0;
    if (!binary_mode)
        return EVQ_ENOENT; /* no error message: not a binary-mode message */

    size_t total = len;
    for (size_t i = 0; i < n; i++)
        total += h[i].len;
    if (total > lim->max_bytes)
        return evq__err(EVQ_ETOOBIG,
                        "message of %zu bytes is larger than "
                        "max_event_bytes=%zu",
                        total, lim->max_bytes);
    json_t *env = json_object(), *data = NULL;
    evq_event *ev = NULL;
    int rc = 0;
    const char *ct = NULL;
    if (!env)
        return evq__err(EVQ_ENOMEM, "out of memory decoding an event");
    for (size_t i = 0; i < n && !rc; i++) {
        const char *name = NULL;
        if (strncmp(h[i].name, "ce_", 3) == 0)
            name = h[i].name + 3;
        else if (strcmp(h[i].name, "content-type") == 0)
            name = "datacontenttype";
        else
            continue; /* not an attribute (evq_attempt, a user's header) */
        if (!h[i].value && h[i].len > 0) {
            rc =
                evq__err(EVQ_EDECODE, "header '%.40s' has no value", h[i].name);
            break;
        }
        if (h[i].len > 0 && memchr(h[i].value, '\0', h[i].len)) {
            rc = evq__err(EVQ_EDECODE, "header '%.40s' holds a NUL byte",
                          h[i].name);
            break;
        }
        if (strcmp(name, "data") == 0 || strcmp(name, "data_base64") == 0) {
            rc = evq__err(EVQ_EDECODE, "header '%.40s' is no attribute",
                          h[i].name);
            break;
        }
        /* the last of a name wins, as Kafka's headers are read */
        json_t *v = json_stringn(h[i].value ? h[i].value : "", h[i].len);
        if (!v)
            rc = evq__err(EVQ_EDECODE, "header '%.40s' is not valid UTF-8",
                          h[i].name);
        else if (json_object_set_new(env, name, v) != 0)
            rc = evq__err(EVQ_ENOMEM, "out of memory decoding an event");
    }
    if (!rc) {
        json_t *c = json_object_get(env, "datacontenttype");
        ct = c ? json_string_value(c) : NULL;
    }
    bool json = is_json_type(ct);
    if (!rc && len > 0 && json) {
        json_error_t jerr;
        data = evq__json_load(val, len, true, &jerr);
        if (!data)
            rc = evq__err(EVQ_EDECODE,
                          "data is not JSON (line %d column %d: %s)", jerr.line,
                          jerr.column, jerr.text);
        else if (evq__json_depth(data, lim->max_depth) >= lim->max_depth)
            rc = evq__err(EVQ_EDECODE, "data nests deeper than max_depth=%d",
                          lim->max_depth);
    }
    if (!rc && !(ev = evq__event_alloc()))
        rc = evq__err(EVQ_ENOMEM, "out of memory decoding an event");
    if (!rc)
        rc =
            evq__event_from_envelope(ev, env, data, len > 0 && !json, val, len);
    json_decref(data);
    json_decref(env);
    if (rc) {
        evq_event_free(ev);
        return rc;
    }
    *out = ev;
    return 0;
}

int evq__ce_to_binary(const evq_event *ev, evq__header *h, size_t *n,
                      char **owned, const void **val, size_t *len)
{
    static const char *const names[] = {
        "ce_specversion", "ce_id",   "ce_source",     "ce_type",
        "ce_subject",     "ce_time", "ce_dataschema", NULL};
    size_t k = 0;
    *owned = NULL;
    for (int i = 0; names[i]; i++) {
        const char *v = evq_event_attr(ev, names[i] + 3);
        if (v)
            h[k++] = (evq__header){names[i], v, strlen(v), ""};
    }
    size_t n_ext = evq_event_ext_count(ev);
    for (size_t i = 0; i < n_ext && k + 1 < *n; i++) {
        const char *name, *value;
        if (evq_event_ext_at(ev, i, &name, &value) != 0)
            continue;
        snprintf(h[k].buf, sizeof h[k].buf, "ce_%s", name);
        h[k].name = h[k].buf;
        h[k].value = value;
        h[k++].len = strlen(value);
    }
    if (k + 1 > *n)
        return evq__err(EVQ_EINVAL, "too many attributes for binary mode");
    const char *ct = evq_event_datacontenttype(ev);
    size_t blen = 0;
    const void *bin = evq_event_binary(ev, &blen);
    json_t *data = evq_event_data(ev);
    if (bin) {
        *val = bin;
        *len = blen;
    } else if (data) {
        *owned = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!*owned)
            return evq__err(EVQ_ENOMEM, "out of memory encoding data");
        *val = *owned;
        *len = strlen(*owned);
    } else {
        *val = NULL;
        *len = 0;
    }
    if (ct || bin || data) {
        const char *c = ct    ? ct
                        : bin ? "application/octet-stream"
                              : "application/json";
        h[k++] = (evq__header){"content-type", c, strlen(c), ""};
    }
    *n = k;
    return 0;
}
