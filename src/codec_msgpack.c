/*
 * codec_msgpack.c - the CloudEvents envelope in MessagePack.
 *
 * The envelope is a map with the same member names as the JSON format; the
 * JSON payload becomes native MessagePack values under "data", and a binary
 * payload is a MessagePack bin under "data" (a base64 string under
 * "data_base64" is read too).  Extension attributes keep their type (str,
 * int or bool).
 *
 * msgpack-c sizes each container's storage from the count written in the
 * input before reading its elements, so a hostile 5-byte message could ask
 * for gigabytes.  A structural pass first checks that every count fits in the
 * bytes that remain, that nesting stays within the limit and that exactly one
 * object fills the buffer; only then does msgpack-c unpack it.
 */
#include "internal.h"

#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* msgpack-c's unpacker has a fixed stack of this many nested containers
 * (MSGPACK_EMBED_STACK_SIZE, compiled into the library). */
#define MSGPACK_MAX_NEST 32

/* ---- encode -------------------------------------------------------------- */

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_json(msgpack_packer *pk, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        size_t klen;
        json_t *x;
        msgpack_pack_map(pk, json_object_size(v));
        json_object_keylen_foreach((json_t *)v, k, klen, x)
        {
            msgpack_pack_str(pk, klen);
            msgpack_pack_str_body(pk, k, klen);
            pack_json(pk, x);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        msgpack_pack_array(pk, json_array_size(v));
        json_array_foreach(v, i, x) pack_json(pk, x);
        break;
    }
    case JSON_STRING:
        msgpack_pack_str(pk, json_string_length(v));
        msgpack_pack_str_body(pk, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        msgpack_pack_int64(pk, json_integer_value(v));
        break;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(v));
        break;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        break;
    case JSON_NULL:
        msgpack_pack_nil(pk);
        break;
    }
}

static int mp_encode(const evq_event *ev, const evq_codec_limits *lim,
                     unsigned char **out, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    const char *core[][2] = {
        {"specversion", "1.0"},
        {"id", ev->id},
        {"source", ev->source},
        {"type", ev->type},
        {"subject", ev->subject},
        {"time", evq_event_attr(ev, "time")},
        {"datacontenttype", evq_event_datacontenttype(ev)},
        {"dataschema", ev->dataschema},
    };
    size_t n = 0;
    bool has_payload = ev->is_binary || ev->data;

    if (ev->data &&
        evq__json_depth(ev->data, lim->max_depth - 1) > lim->max_depth - 1)
        return evq__err(EVQ_EINVAL, "payload nests deeper than max_depth=%d",
                        lim->max_depth);
    if (ev->data && lim->max_depth > MSGPACK_MAX_NEST &&
        evq__json_depth(ev->data, MSGPACK_MAX_NEST - 1) > MSGPACK_MAX_NEST - 1)
        return evq__err(EVQ_EINVAL,
                        "payload nests deeper than the %d levels MessagePack "
                        "decoding allows",
                        MSGPACK_MAX_NEST);
    for (size_t i = 0; i < sizeof core / sizeof core[0]; i++)
        n += core[i][1] != NULL;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, n + ev->n_ext + (has_payload ? 1 : 0));
    for (size_t i = 0; i < sizeof core / sizeof core[0]; i++) {
        if (core[i][1]) {
            pack_str(&pk, core[i][0]);
            pack_str(&pk, core[i][1]);
        }
    }
    for (size_t i = 0; i < ev->n_ext; i++) {
        const evq__ext *x = &ev->ext[i];
        pack_str(&pk, x->name);
        if (x->kind == EVQ__EXT_INTEGER)
            msgpack_pack_int64(&pk, strtoll(x->value, NULL, 10));
        else if (x->kind == EVQ__EXT_BOOLEAN)
            strcmp(x->value, "true") == 0 ? msgpack_pack_true(&pk)
                                          : msgpack_pack_false(&pk);
        else
            pack_str(&pk, x->value);
    }
    if (ev->is_binary) {
        pack_str(&pk, "data");
        msgpack_pack_bin(&pk, ev->bin_len);
        msgpack_pack_bin_body(&pk, ev->bin, ev->bin_len);
    } else if (ev->data) {
        pack_str(&pk, "data");
        pack_json(&pk, ev->data);
    }
    /* msgpack_sbuffer_write aborts nothing but leaves data NULL on OOM. */
    if (!sb.data) {
        msgpack_sbuffer_destroy(&sb);
        return evq__err(EVQ_ENOMEM, "out of memory encoding an event");
    }
    if (sb.size > lim->max_bytes) {
        size_t size = sb.size;
        msgpack_sbuffer_destroy(&sb);
        return evq__err(EVQ_ETOOBIG,
                        "event %s encodes to %zu bytes, more than "
                        "max_event_bytes=%zu",
                        ev->id, size, lim->max_bytes);
    }
    *len = sb.size;
    *out = (unsigned char *)msgpack_sbuffer_release(&sb);
    return 0;
}

/* ---- structural check ---------------------------------------------------- */

static uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Checks that buf holds exactly one well-formed object whose containers
 * declare no more elements than bytes remain, nested at most max_depth. */
static int mp_check(const unsigned char *buf, size_t len, int max_depth)
{
    uint64_t stack[MSGPACK_MAX_NEST + 1];
    int top = 0;
    size_t pos = 0;

    stack[0] = 1; /* one top-level object */
    while (top >= 0) {
        if (stack[top] == 0) {
            top--;
            continue;
        }
        if (pos >= len)
            return evq__err(EVQ_EDECODE, "truncated MessagePack at byte %zu",
                            pos);
        stack[top]--;
        unsigned c = buf[pos++];
        uint64_t skip = 0, children = 0;
        int lenbytes = 0;

        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
            /* fixint, nil, bool */
        } else if (c >= 0x80 && c <= 0x8f) {
            children = 2 * (uint64_t)(c & 0x0f);
        } else if (c >= 0x90 && c <= 0x9f) {
            children = c & 0x0f;
        } else if (c >= 0xa0 && c <= 0xbf) {
            skip = c & 0x1f;
        } else {
            switch (c) {
            case 0xc4:
            case 0xd9:
                lenbytes = 1;
                break; /* bin8, str8 */
            case 0xc5:
            case 0xda:
                lenbytes = 2;
                break;
            case 0xc6:
            case 0xdb:
                lenbytes = 4;
                break;
            case 0xc7:
                lenbytes = 1;
                skip = 1;
                break; /* ext: + type byte */
            case 0xc8:
                lenbytes = 2;
                skip = 1;
                break;
            case 0xc9:
                lenbytes = 4;
                skip = 1;
                break;
            case 0xca:
                skip = 4;
                break;
            case 0xcb:
                skip = 8;
                break;
            case 0xcc:
            case 0xd0:
                skip = 1;
                break;
            case 0xcd:
            case 0xd1:
                skip = 2;
                break;
            case 0xce:
            case 0xd2:
                skip = 4;
                break;
            case 0xcf:
            case 0xd3:
                skip = 8;
                break;
            case 0xd4:
                skip = 2;
                break;
            case 0xd5:
                skip = 3;
                break;
            case 0xd6:
                skip = 5;
                break;
            case 0xd7:
                skip = 9;
                break;
            case 0xd8:
                skip = 17;
                break;
            case 0xdc:
            case 0xde:
                lenbytes = 2;
                break;
            case 0xdd:
            case 0xdf:
                lenbytes = 4;
                break;
            default:
                return evq__err(EVQ_EDECODE,
                                "invalid MessagePack type byte 0x%02x at byte "
                                "%zu",
                                c, pos - 1);
            }
        }
        if (lenbytes) {
            if (len - pos < (size_t)lenbytes)
                return evq__err(EVQ_EDECODE,
                                "truncated MessagePack at byte %zu", pos);
            uint64_t n = be(buf + pos, lenbytes);
            pos += (size_t)lenbytes;
            if (c == 0xdc || c == 0xdd)
                children = n;
            else if (c == 0xde || c == 0xdf)
                children = 2 * n;
            else
                skip += n;
        }
        if (skip > len - pos)
            return evq__err(EVQ_EDECODE,
                            "truncated MessagePack: %llu bytes declared at "
                            "byte %zu, %zu left",
                            (unsigned long long)skip, pos, len - pos);
        pos += (size_t)skip;
        if (children) {
            if (children > len - pos)
                return evq__err(EVQ_EDECODE,
                                "MessagePack container at byte %zu declares "
                                "%llu elements but only %zu bytes follow",
                                pos, (unsigned long long)children, len - pos);
            if (top + 1 > max_depth)
                return evq__err(EVQ_EDECODE,
                                "message nests deeper than %d levels",
                                max_depth);
            stack[++top] = children;
        }
    }
    if (pos != len)
        return evq__err(EVQ_EDECODE,
                        "%zu bytes of trailing data after the MessagePack "
                        "object",
                        len - pos);
    return 0;
}

/* ---- decode -------------------------------------------------------------- */

static json_t *to_json(const msgpack_object *o, int *rc);

static json_t *str_json(const char *p, uint32_t n, int *rc)
{
    if (!evq__utf8_valid(p, n)) {
        *rc = evq__err(EVQ_EDECODE, "string is not valid UTF-8");
        return NULL;
    }
    json_t *s = json_stringn_nocheck(p, n);
    if (!s)
        *rc = evq__err(EVQ_ENOMEM, "out of memory");
    return s;
}

static json_t *to_json(const msgpack_object *o, int *rc)
{
    json_t *v = NULL;

    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > INT64_MAX) {
            *rc = evq__err(EVQ_EDECODE, "integer %llu does not fit in int64",
                           (unsigned long long)o->via.u64);
            return NULL;
        }
        v = json_integer((json_int_t)o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        v = json_integer(o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64)) {
            *rc = evq__err(EVQ_EDECODE, "NaN and infinity have no JSON form");
            return NULL;
        }
        v = json_real(o->via.f64);
        break;
    case MSGPACK_OBJECT_STR:
        return str_json(o->via.str.ptr, o->via.str.size, rc);
    case MSGPACK_OBJECT_ARRAY:
        v = json_array();
        for (uint32_t i = 0; v && i < o->via.array.size; i++) {
            json_t *x = to_json(&o->via.array.ptr[i], rc);
            if (!x || json_array_append_new(v, x)) {
                json_decref(v);
                if (*rc == 0)
                    *rc = evq__err(EVQ_ENOMEM, "out of memory");
                return NULL;
            }
        }
        break;
    case MSGPACK_OBJECT_MAP:
        v = json_object();
        for (uint32_t i = 0; v && i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            const char *k = kv->key.via.str.ptr;
            uint32_t kn = kv->key.via.str.size;
            if (kv->key.type != MSGPACK_OBJECT_STR || !evq__utf8_valid(k, kn)) {
                *rc = evq__err(EVQ_EDECODE, "map keys must be UTF-8 strings");
                json_decref(v);
                return NULL;
            }
            if (json_object_getn(v, k, kn)) {
                *rc = evq__err(EVQ_EDECODE, "duplicate key '%.*s'",
                               (int)(kn > 40 ? 40 : kn), k);
                json_decref(v);
                return NULL;
            }
            json_t *x = to_json(&kv->val, rc);
            if (!x || json_object_setn_new_nocheck(v, k, kn, x)) {
                json_decref(v);
                if (*rc == 0)
                    *rc = evq__err(EVQ_ENOMEM, "out of memory");
                return NULL;
            }
        }
        break;
    case MSGPACK_OBJECT_BIN:
        *rc = evq__err(EVQ_EDECODE, "binary values are only allowed as the "
                                    "whole payload");
        return NULL;
    default:
        *rc = evq__err(EVQ_EDECODE, "MessagePack extension types are not "
                                    "supported");
        return NULL;
    }
    if (!v && *rc == 0)
        *rc = evq__err(EVQ_ENOMEM, "out of memory");
    return v;
}

static int mp_decode(const void *buf, size_t len, const evq_codec_limits *lim,
                     evq_event **out)
{
    msgpack_unpacked up;
    size_t off = 0;
    json_t *env = NULL, *data = NULL;
    const msgpack_object *bin = NULL;
    evq_event *ev = NULL;
    unsigned char *b64bin = NULL;
    size_t b64len = 0;
    int rc, depth = lim->max_depth < MSGPACK_MAX_NEST ? lim->max_depth
                                                      : MSGPACK_MAX_NEST;

    if (len > lim->max_bytes)
        return evq__err(EVQ_ETOOBIG,
                        "message of %zu bytes is larger than "
                        "max_event_bytes=%zu",
                        len, lim->max_bytes);
    if ((rc = mp_check(buf, len, depth)) != 0)
        return rc;
    msgpack_unpacked_init(&up);
    if (msgpack_unpack_next(&up, buf, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        rc = evq__err(EVQ_EDECODE, "malformed MessagePack");
        goto out;
    }
    if (up.data.type != MSGPACK_OBJECT_MAP) {
        rc = evq__err(EVQ_EDECODE, "a CloudEvent must be a MessagePack map");
        goto out;
    }
    /* The envelope without its payload goes through the same checks as a
     * JSON envelope; the payload is converted on its own. */
    env = json_object();
    if (!env) {
        rc = evq__err(EVQ_ENOMEM, "out of memory");
        goto out;
    }
    const msgpack_object_map *m = &up.data.via.map;
    const msgpack_object *dval = NULL, *b64val = NULL;
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object_kv *kv = &m->ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) {
            rc = evq__err(EVQ_EDECODE, "envelope keys must be strings");
            goto out;
        }
        const char *k = kv->key.via.str.ptr;
        uint32_t kn = kv->key.via.str.size;
        if (!evq__utf8_valid(k, kn)) {
            rc = evq__err(EVQ_EDECODE, "envelope key is not valid UTF-8");
            goto out;
        }
        if (json_object_getn(env, k, kn) ||
            (kn == 4 && memcmp(k, "data", 4) == 0 && dval) ||
            (kn == 11 && memcmp(k, "data_base64", 11) == 0 && b64val)) {
            rc = evq__err(EVQ_EDECODE, "duplicate member '%.*s'",
                          (int)(kn > 40 ? 40 : kn), k);
            goto out;
        }
        if (kn == 4 && memcmp(k, "data", 4) == 0) {
            dval = &kv->val;
            continue;
        }
        if (kn == 11 && memcmp(k, "data_base64", 11) == 0) {
            b64val = &kv->val;
            continue;
        }
        rc = 0;
        json_t *x = to_json(&kv->val, &rc);
        if (!x)
            goto out;
        if (json_object_setn_new_nocheck(env, k, kn, x)) {
            rc = evq__err(EVQ_ENOMEM, "out of memory");
            goto out;
        }
    }
    if (dval && dval->type == MSGPACK_OBJECT_NIL)
        dval = NULL;
    if (b64val && b64val->type == MSGPACK_OBJECT_NIL)
        b64val = NULL;
    if (dval && b64val) {
        rc = evq__err(EVQ_EDECODE, "event has both 'data' and 'data_base64'");
        goto out;
    }
    if (b64val) {
        if (b64val->type != MSGPACK_OBJECT_STR) {
            rc = evq__err(EVQ_EDECODE, "'data_base64' is not a string");
            goto out;
        }
        if ((rc = evq__b64_decode(b64val->via.str.ptr, b64val->via.str.size,
                                  &b64bin, &b64len)) != 0)
            goto out;
    } else if (dval && dval->type == MSGPACK_OBJECT_BIN) {
        bin = dval;
    } else if (dval) {
        rc = 0;
        if (!(data = to_json(dval, &rc)))
            goto out;
    }
    if (!(ev = evq__event_alloc())) {
        rc = evq__err(EVQ_ENOMEM, "out of memory decoding an event");
        goto out;
    }
    if (bin)
        rc = evq__event_from_envelope(ev, env, NULL, true,
                                      (const unsigned char *)bin->via.bin.ptr,
                                      bin->via.bin.size);
    else
        rc = evq__event_from_envelope(ev, env, data, b64bin != NULL, b64bin,
                                      b64len);
out:
    free(b64bin);
    json_decref(data);
    json_decref(env);
    msgpack_unpacked_destroy(&up);
    if (rc) {
        evq_event_free(ev);
        return rc;
    }
    *out = ev;
    return 0;
}

const evq_codec evq__codec_msgpack = {
    .name = "msgpack",
    .content_type = "application/cloudevents+msgpack",
    .encode = mp_encode,
    .decode = mp_decode,
};
