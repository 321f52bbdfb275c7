/*
 * opts.c - string options, their tables, validation and help text.
 *
 * Every option a queue accepts is declared once, in the core's table below
 * or in its backend's table, with its type, default and description; the same
 * tables validate values at open and write evq_options_help().
 */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct evq_opts {
    evq__param *kv;
    size_t n, cap;
};

const evq__opt_spec evq__core_opts[] = {
    {"format", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "wire format: json (CloudEvents JSON) or msgpack, or a registered codec; "
     "memory:// passes events by reference when unset",
     EVQ__AT(evq__core_cfg, format)},
    {"max_event_bytes", EVQ__OPT_INT, "1048576", 64, 256 * 1024 * 1024, NULL,
     "largest encoded event accepted or decoded, in bytes",
     EVQ__AT(evq__core_cfg, max_event_bytes)},
    {"max_depth", EVQ__OPT_INT, "32", 2, 1000, NULL,
     "deepest nesting of a message's JSON or MessagePack structure",
     EVQ__AT(evq__core_cfg, max_depth)},
    {"dead_letter", EVQ__OPT_STRING, NULL, 0, 0, NULL,
     "queue (same backend and URL) that receives what cannot be decoded or "
     "processed; default <name>.dead",
     EVQ__AT(evq__core_cfg, dead_letter)},
    {"max_in_flight", EVQ__OPT_INT, "10000", 1, 10000000, NULL,
     "events accepted by evq_enqueue_async and not yet reported to their "
     "done callback; a producer past it waits (or fails, overflow=error)",
     EVQ__AT(evq__core_cfg, max_in_flight)},
    {"overflow", EVQ__OPT_ENUM, "block", 0, 0, "block|error",
     "when the queue (memory://) or max_in_flight is full: block the "
     "producer, or fail with EVQ_EFULL",
     EVQ__AT(evq__core_cfg, overflow)},
    {"reconnect_initial_ms", EVQ__OPT_INT, "50", 1, 600000, NULL,
     "first pause before a connection to the server is tried again; each "
     "failure doubles it",
     EVQ__AT(evq__core_cfg, reconnect_initial_ms)},
    {"reconnect_max_ms", EVQ__OPT_INT, "2000", 1, 3600000, NULL,
     "longest pause between tries to reach the server",
     EVQ__AT(evq__core_cfg, reconnect_max_ms)},
    {"create", EVQ__OPT_BOOL, "true", 0, 0, NULL,
     "create what the queue needs (file, tables, stream, consumer, topic) "
     "when missing; false: a missing queue is an error (EVQ_ENOENT), and "
     "nothing is created",
     EVQ__AT(evq__core_cfg, create)},
    {"unique_ttl_ms", EVQ__OPT_INT, "0", 0, 30LL * 86400000, NULL,
     "how long the key of an event with evquniquekey stays taken, for "
     "events without evquniquettl; 0: such events need evquniquettl",
     EVQ__AT(evq__core_cfg, unique_ttl_ms)},
    {"unique", EVQ__OPT_ENUM, "reject", 0, 0, "reject|merge",
     "an event whose unique key is taken: fail with EVQ_EEXIST, or drop it "
     "and report success",
     EVQ__AT(evq__core_cfg, unique)},
    {"unique_until", EVQ__OPT_ENUM, "ttl", 0, 0, "ttl|done",
     "a unique key is freed when its TTL ends, or also once its event is "
     "finished (acked or dead-lettered)",
     EVQ__AT(evq__core_cfg, unique_until)},
    {0},
};

evq_opts *evq_opts_new(void)
{
    evq_opts *o = calloc(1, sizeof *o);
    if (!o)
        evq__err(EVQ_ENOMEM, "out of memory");
    return o;
}

void evq_opts_free(evq_opts *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->n; i++) {
        free(o->kv[i].key);
        free(o->kv[i].value);
    }
    free(o->kv);
    free(o);
}

int evq_opts_set(evq_opts *o, const char *key, const char *value)
{
    char *v;

    if (!o || !key || !value)
        return evq__err(EVQ_EINVAL, "evq_opts_set: NULL argument");
    if (!key[0])
        return evq__err(EVQ_EINVAL, "option name is empty");
    if (!(v = evq__strdup(value)))
        return evq__err(EVQ_ENOMEM, "out of memory");
    for (size_t i = 0; i < o->n; i++) {
        if (strcmp(o->kv[i].key, key) == 0) {
            free(o->kv[i].value);
            o->kv[i].value = v;
            return 0;
        }
    }
    if (evq__grow(&o->kv, &o->cap, o->n, sizeof *o->kv)) {
        free(v);
        return EVQ_ENOMEM;
    }
    if (!(o->kv[o->n].key = evq__strdup(key))) {
        free(v);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    o->kv[o->n++].value = v;
    return 0;
}

const char *evq_opts_get(const evq_opts *o, const char *key)
{
    if (!o || !key)
        return NULL;
    for (size_t i = 0; i < o->n; i++) {
        if (strcmp(o->kv[i].key, key) == 0)
            return o->kv[i].value;
    }
    return NULL;
}

static const evq__opt_spec *spec_find(const evq__opt_spec *tab,
                                      const char *name)
{
    for (; tab && tab->name; tab++) {
        if (tab->type == EVQ__OPT_PREFIX
                ? strncmp(name, tab->name, strlen(tab->name)) == 0 &&
                      name[strlen(tab->name)] != '\0'
                : strcmp(name, tab->name) == 0)
            return tab;
    }
    return NULL;
}

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!s[0] || *end || errno)
        return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *yes[] = {"1", "true", "yes", "on"};
    static const char *no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* The index of v among choices ("a|b|c"), or -1. */
static int choice_index(const char *choices, const char *v)
{
    size_t n = strlen(v);
    int i = 0;
    for (const char *c = choices; *c; i++) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        if (len == n && strncmp(c, v, n) == 0)
            return i;
        if (!bar)
            break;
        c = bar + 1;
    }
    return -1;
}

static bool enum_has(const char *choices, const char *v)
{
    return choice_index(choices, v) >= 0;
}

static int check_value(const evq__opt_spec *sp, const char *key, const char *v)
{
    int64_t i;
    bool b;

    switch (sp->type) {
    case EVQ__OPT_INT:
        if (parse_int(v, &i))
            return evq__err(EVQ_EINVAL,
                            "option '%s': value '%.64s' is not an integer", key,
                            v);
        if (i < sp->min || i > sp->max)
            return evq__err(EVQ_EINVAL,
                            "option '%s': value %" PRId64
                            " is out of range (%" PRId64 " to %" PRId64 ")",
                            key, i, sp->min, sp->max);
        return 0;
    case EVQ__OPT_BOOL:
        if (parse_bool(v, &b))
            return evq__err(EVQ_EINVAL,
                            "option '%s': value '%.64s' is not a boolean "
                            "(true/false)",
                            key, v);
        return 0;
    case EVQ__OPT_ENUM:
        if (!enum_has(sp->choices, v))
            return evq__err(EVQ_EINVAL,
                            "option '%s': value '%.64s' is not one of %s", key,
                            v, sp->choices);
        return 0;
    case EVQ__OPT_STRING:
    case EVQ__OPT_PREFIX:
        if (!v[0])
            return evq__err(EVQ_EINVAL, "option '%s' has an empty value", key);
        if (strcmp(key, "format") == 0 && !evq_codec_find(v))
            return evq__err(EVQ_EINVAL,
                            "option 'format': unknown format '%.64s' (json, "
                            "msgpack or a registered codec)",
                            v);
        return 0;
    }
    return 0;
}

static int set_put(evq__optset *set, const char *k, const char *v)
{
    char *nv = evq__strdup(v);
    if (!nv)
        return evq__err(EVQ_ENOMEM, "out of memory");
    for (size_t i = 0; i < set->n; i++) {
        if (strcmp(set->kv[i].key, k) == 0) {
            free(set->kv[i].value);
            set->kv[i].value = nv;
            return 0;
        }
    }
    evq__param *kv = realloc(set->kv, (set->n + 1) * sizeof *kv);
    if (!kv) {
        free(nv);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    set->kv = kv;
    if (!(kv[set->n].key = evq__strdup(k))) {
        free(nv);
        return evq__err(EVQ_ENOMEM, "out of memory");
    }
    kv[set->n++].value = nv;
    return 0;
}

static int add_checked(evq__optset *set, const char *scheme,
                       const evq__opt_spec *backend, const char *k,
                       const char *v)
{
    const evq__opt_spec *sp = spec_find(evq__core_opts, k);
    int rc;

    if (!sp)
        sp = spec_find(backend, k);
    if (!sp)
        return evq__err(EVQ_EINVAL, "unknown option '%.64s' for %s:// queues",
                        k, scheme);
    if ((rc = check_value(sp, k, v)) != 0)
        return rc;
    return set_put(set, k, v);
}

int evq__optset_build(evq__optset *set, const evq__url *url,
                      const evq_opts *opts, const evq__opt_spec *backend)
{
    int rc = 0;

    memset(set, 0, sizeof *set);
    for (size_t i = 0; i < url->n_params && !rc; i++)
        rc = add_checked(set, url->scheme, backend, url->params[i].key,
                         url->params[i].value);
    for (size_t i = 0; opts && i < opts->n && !rc; i++)
        rc = add_checked(set, url->scheme, backend, opts->kv[i].key,
                         opts->kv[i].value);
    if (rc)
        evq__optset_free(set);
    else
        evq__opts_read(set, evq__core_opts, &set->core);
    return rc;
}

void evq__optset_free(evq__optset *set)
{
    for (size_t i = 0; i < set->n; i++) {
        free(set->kv[i].key);
        free(set->kv[i].value);
    }
    free(set->kv);
    memset(set, 0, sizeof *set);
}

static const char *lookup(const evq__optset *set, const evq__opt_spec *tab,
                          const char *name)
{
    for (size_t i = 0; i < set->n; i++) {
        if (strcmp(set->kv[i].key, name) == 0)
            return set->kv[i].value;
    }
    const evq__opt_spec *sp = spec_find(evq__core_opts, name);
    if (!sp)
        sp = spec_find(tab, name);
    return sp ? sp->def : NULL;
}

int64_t evq__opt_int(const evq__optset *set, const evq__opt_spec *tab,
                     const char *name)
{
    const char *v = lookup(set, tab, name);
    int64_t i = 0;
    if (v)
        parse_int(v, &i);
    return i;
}


static void put_field(const evq__opt_spec *sp, const char *v, void *cfg)
{
    char *f = (char *)cfg + sp->at - 1;
    switch (sp->type) {
    case EVQ__OPT_INT: {
        int64_t i = 0;
        if (v)
            parse_int(v, &i);
        memcpy(f, &i, sizeof i);
        break;
    }
    case EVQ__OPT_BOOL: {
        bool b = false;
        if (v)
            parse_bool(v, &b);
        memcpy(f, &b, sizeof b);
        break;
    }
    case EVQ__OPT_ENUM: {
        int i = v ? choice_index(sp->choices, v) : 0;
        i = i < 0 ? 0 : i; /* values were checked */
        memcpy(f, &i, sizeof i);
        break;
    }
    case EVQ__OPT_STRING:
        memcpy(f, &v, sizeof v);
        break;
    case EVQ__OPT_PREFIX:
        break;
    }
}

/* A row naming a field an earlier row already names. */
static bool former_name(const evq__opt_spec *tab, const evq__opt_spec *sp)
{
    for (const evq__opt_spec *o = tab; o != sp; o++)
        if (o->at == sp->at)
            return true;
    return false;
}

void evq__opts_read(const evq__optset *set, const evq__opt_spec *tab,
                    void *cfg)
{
    /* defaults first (a former name's row leaves the field to the current
     * name's), then what was given, later rows winning */
    for (const evq__opt_spec *sp = tab; sp->name; sp++)
        if (sp->at && !former_name(tab, sp))
            put_field(sp, sp->def, cfg);
    for (const evq__opt_spec *sp = tab; sp->name; sp++) {
        if (!sp->at)
            continue;
        for (size_t i = 0; i < set->n; i++)
            if (strcmp(set->kv[i].key, sp->name) == 0)
                put_field(sp, set->kv[i].value, cfg);
    }
}

static int help_lines(evq__buf *b, const evq__opt_spec *tab)
{
    static const char *types[] = {"int", "bool", "string", "enum", "prefix"};
    char line[640];
    int rc = 0;

    for (; tab->name && !rc; tab++) {
        char kind[96];
        if (tab->type == EVQ__OPT_INT)
            snprintf(kind, sizeof kind, "int %" PRId64 "..%" PRId64, tab->min,
                     tab->max);
        else if (tab->type == EVQ__OPT_ENUM)
            snprintf(kind, sizeof kind, "%s", tab->choices);
        else
            snprintf(kind, sizeof kind, "%s", types[tab->type]);
        int n = snprintf(line, sizeof line, "  %s%s  (%s%s%s)\n      %s\n",
                         tab->name, tab->type == EVQ__OPT_PREFIX ? "<key>" : "",
                         kind, tab->def ? ", default " : "",
                         tab->def ? tab->def : "", tab->help);
        rc = evq__buf_append(
            b, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    }
    return rc;
}

char *evq_options_help(const char *scheme)
{
    const struct evq_backend_ops *ops =
        scheme ? evq__backend_find(scheme) : NULL;
    evq__buf b = {0};
    char head[128];
    int n;

    if (!ops) {
        if (scheme)
            evq__scheme_unknown(scheme);
        else
            evq__err(EVQ_EINVAL, "evq_options_help: scheme is NULL");
        return NULL;
    }
    n = snprintf(head, sizeof head, "Options of %s:// queues:\n", ops->scheme);
    if (evq__buf_append(&b, head, (size_t)n) ||
        (ops->opts && help_lines(&b, ops->opts)) ||
        evq__buf_append(&b, "Options of every queue:\n", 24) ||
        help_lines(&b, evq__core_opts) || evq__buf_append(&b, "", 1)) {
        free(b.p);
        return NULL;
    }
    return (char *)b.p;
}
