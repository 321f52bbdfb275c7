/*
 * codec.c - the codec registry and helpers shared by the codecs.
 */
#include "internal.h"

#include <pthread.h>
#include <string.h>

#define EVQ__MAX_CODECS 32

static pthread_mutex_t codec_lock = PTHREAD_MUTEX_INITIALIZER;
static const evq_codec *codecs[EVQ__MAX_CODECS] = {&evq__codec_json,
                                                   &evq__codec_msgpack};
static size_t n_codecs = 2;

int evq_codec_register(const evq_codec *c)
{
    int rc = 0;

    if (!c || !c->name || !c->name[0] || !c->encode || !c->decode)
        return evq__err(
            EVQ_EINVAL,
            "a codec needs a name, an encode and a decode function");
    pthread_mutex_lock(&codec_lock);
    for (size_t i = 0; i < n_codecs; i++) {
        if (strcmp(codecs[i]->name, c->name) == 0) {
            rc = evq__err(EVQ_EEXIST, "codec '%s' is already registered",
                          c->name);
            goto out;
        }
    }
    if (n_codecs == EVQ__MAX_CODECS) {
        rc = evq__err(EVQ_ENOMEM, "no room for more than %d codecs",
                      EVQ__MAX_CODECS);
        goto out;
    }
    codecs[n_codecs++] = c;
out:
    pthread_mutex_unlock(&codec_lock);
    return rc;
}

const evq_codec *evq_codec_find(const char *name)
{
    const evq_codec *found = NULL;

    if (!name)
        return NULL;
    pthread_mutex_lock(&codec_lock);
    for (size_t i = 0; i < n_codecs && !found; i++) {
        if (strcmp(codecs[i]->name, name) == 0)
            found = codecs[i];
    }
    pthread_mutex_unlock(&codec_lock);
    return found;
}

void evq__limits_default(evq_codec_limits *lim)
{
    lim->max_bytes = EVQ_DEFAULT_MAX_EVENT_BYTES;
    lim->max_depth = EVQ_DEFAULT_MAX_DEPTH;
}

static const evq_codec *codec_or_err(const char *format)
{
    const evq_codec *c = evq_codec_find(format ? format : "json");
    if (!c)
        evq__err(EVQ_EINVAL, "unknown format '%.64s'", format);
    return c;
}

int evq_event_encode(const evq_event *ev, const char *format,
                     const evq_codec_limits *lim, unsigned char **out,
                     size_t *len)
{
    evq_codec_limits def;
    const evq_codec *c;

    if (!ev || !out || !len)
        return evq__err(EVQ_EINVAL, "evq_event_encode: NULL argument");
    *out = NULL;
    *len = 0;
    if (!(c = codec_or_err(format)))
        return EVQ_EINVAL;
    if (!lim) {
        evq__limits_default(&def);
        lim = &def;
    }
    return c->encode(ev, lim, out, len);
}

int evq_event_decode(evq_event **out, const char *format, const void *buf,
                     size_t len, const evq_codec_limits *lim)
{
    evq_codec_limits def;
    const evq_codec *c;

    if (!out)
        return evq__err(EVQ_EINVAL, "evq_event_decode: NULL argument");
    *out = NULL;
    if (!buf && len)
        return evq__err(EVQ_EINVAL, "evq_event_decode: NULL buffer");
    if (!(c = codec_or_err(format)))
        return EVQ_EINVAL;
    if (!lim) {
        evq__limits_default(&def);
        lim = &def;
    }
    return c->decode(buf ? buf : "", len, lim, out);
}

/* Iterative walk would need a stack as deep as the value; recursion is
 * bounded by `limit`, which callers keep small, because it stops descending
 * once the limit is passed. */
int evq__json_depth(const json_t *v, int limit)
{
    int max = 0;

    if (limit < 0)
        return 1;
    if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            int d = evq__json_depth(x, limit - 1);
            if (d > max)
                max = d;
            if (max > limit)
                break;
        }
        return max + 1;
    }
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            int d = evq__json_depth(x, limit - 1);
            if (d > max)
                max = d;
            if (max > limit)
                break;
        }
        return max + 1;
    }
    return 0;
}
