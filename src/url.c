/*
 * url.c - queue URLs:
 *   scheme://[user[:password]@]host[:port][,host[:port]...][/path][?k=v&...]
 * Hosts may be IPv6 literals in brackets; every part may be percent-encoded.
 * Error messages name the bad part but never repeat the userinfo, so a
 * password cannot leak through evq_errmsg().
 */
#include "internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes s[0..n) into a new string; "+" stays "+" (this is not a form).
 * Fails on a bad escape, an encoded NUL or invalid UTF-8. */
static int pct_decode(const char *s, size_t n, const char *what, char **out)
{
    char *o = malloc(n + 1), *p = o;

    if (!o)
        return evq__err(EVQ_ENOMEM, "out of memory parsing a URL");
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *p++ = s[i];
            continue;
        }
        int a = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
        int b = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
        if (a < 0 || b < 0) {
            free(o);
            return evq__err(EVQ_EINVAL,
                            "URL %s has a '%%' not followed by two hex digits",
                            what);
        }
        if (a == 0 && b == 0) {
            free(o);
            return evq__err(EVQ_EINVAL, "URL %s contains an encoded NUL", what);
        }
        *p++ = (char)(a << 4 | b);
        i += 2;
    }
    *p = '\0';
    if (!evq__utf8_valid(o, (size_t)(p - o))) {
        free(o);
        return evq__err(EVQ_EINVAL, "URL %s is not valid UTF-8 once decoded",
                        what);
    }
    *out = o;
    return 0;
}

void evq__url_free(evq__url *u)
{
    if (!u)
        return;
    free(u->scheme);
    free(u->user);
    free(u->password);
    for (size_t i = 0; i < u->n_hosts; i++)
        free(u->hosts[i].host);
    free(u->hosts);
    free(u->path);
    for (size_t i = 0; i < u->n_params; i++) {
        free(u->params[i].key);
        free(u->params[i].value);
    }
    free(u->params);
    free(u->redacted);
    memset(u, 0, sizeof *u);
}

static int parse_port(const char *s, size_t n, const char *hostpart, int *port)
{
    long v = 0;

    if (n == 0)
        return evq__err(EVQ_EINVAL, "URL host '%.*s' has an empty port",
                        (int)strlen(hostpart), hostpart);
    if (n > 6)
        goto range;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return evq__err(EVQ_EINVAL, "URL port '%.*s' is not a number",
                            (int)n, s);
        v = v * 10 + (s[i] - '0');
    }
    if (v >= 1 && v <= 65535) {
        *port = (int)v;
        return 0;
    }
range:
    return evq__err(EVQ_EINVAL, "URL port '%.*s' is out of range (1-65535)",
                    (int)(n > 12 ? 12 : n), s);
}

/* One "host[:port]" or "[v6]:port" of the authority. */
static int parse_host(const char *s, size_t n, evq__host *h)
{
    const char *colon;
    char part[300];
    int rc;

    snprintf(part, sizeof part, "%.*s", (int)(n > 200 ? 200 : n), s);
    h->port = 0;
    if (n && s[0] == '[') {
        const char *end = memchr(s, ']', n);
        if (!end)
            return evq__err(EVQ_EINVAL, "URL host '%s' has an unclosed '['",
                            part);
        for (const char *p = s + 1; p < end; p++) {
            if (!isxdigit((unsigned char)*p) && *p != ':' && *p != '.')
                return evq__err(EVQ_EINVAL,
                                "URL host '%s' is not an IPv6 address", part);
        }
        if (end == s + 1)
            return evq__err(EVQ_EINVAL, "URL host '%s' is empty", part);
        h->host = evq__strndup(s + 1, (size_t)(end - s - 1));
        if (!h->host)
            return evq__err(EVQ_ENOMEM, "out of memory");
        size_t rest = n - (size_t)(end + 1 - s);
        if (rest == 0)
            return 0;
        if (end[1] != ':')
            return evq__err(EVQ_EINVAL,
                            "URL host '%s' has text after ']' that is not a "
                            "port",
                            part);
        return parse_port(end + 2, rest - 1, part, &h->port);
    }
    colon = memchr(s, ':', n);
    size_t hn = colon ? (size_t)(colon - s) : n;
    for (size_t i = 0; i < hn; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '[' || c == ']')
            return evq__err(EVQ_EINVAL,
                            "URL host '%s' has a bracket outside an IPv6 "
                            "literal",
                            part);
    }
    if ((rc = pct_decode(s, hn, "host", &h->host)) != 0)
        return rc;
    if (colon)
        return parse_port(colon + 1, n - hn - 1, part, &h->port);
    return 0;
}

/* Whether an option's value is a secret, not to be printed: its name
 * holds password, secret, token, jaas (SASL JAAS config), seed or
 * oauthbearer, or it is an inline PEM. */
bool evq__opt_is_secret(const char *key, size_t len)
{
    static const char *const words[] = {"password",    "passwd", "secret",
                                        "token",       "jaas",   "seed",
                                        "oauthbearer", ".pem",   NULL};
    for (int w = 0; words[w]; w++) {
        size_t wl = strlen(words[w]);
        for (size_t i = 0; i + wl <= len; i++)
            if (strncasecmp(key + i, words[w], wl) == 0)
                return true;
    }
    return false;
}

/* The URL safe to print: a password (or a userinfo without ':', which
 * some servers take as a token) and the values of secret options become
 * "***". */
static int build_redacted(evq__url *u, const char *s, const char *userinfo,
                          size_t ui_len)
{
    size_t n = strlen(s);
    char *out = malloc(2 * n + 8), *o = out;
    if (!out)
        return evq__err(EVQ_ENOMEM, "out of memory");
    const char *p = s;
    if (userinfo) {
        const char *pw = memchr(userinfo, ':', ui_len);
        const char *keep_to = pw ? pw + 1 : userinfo;
        memcpy(o, s, (size_t)(keep_to - s));
        o += keep_to - s;
        memcpy(o, "***", 3);
        o += 3;
        p = userinfo + ui_len;
    }
    const char *q = strchr(p, '?');
    size_t head = q ? (size_t)(q + 1 - p) : strlen(p);
    memcpy(o, p, head);
    o += head;
    p += head;
    while (q && *p) {
        size_t plen = strcspn(p, "&#");
        const char *eq = memchr(p, '=', plen);
        if (eq && evq__opt_is_secret(p, (size_t)(eq - p))) {
            memcpy(o, p, (size_t)(eq + 1 - p));
            o += eq + 1 - p;
            memcpy(o, "***", 3);
            o += 3;
        } else {
            memcpy(o, p, plen);
            o += plen;
        }
        p += plen;
        if (*p == '#') {
            strcpy(o, p);
            o += strlen(p);
            break;
        }
        if (*p == '&')
            *o++ = *p++;
    }
    *o = '\0';
    u->redacted = out;
    return 0;
}

int evq__url_parse(const char *s, evq__url *u)
{
    const char *p, *auth, *auth_end, *at, *path, *query;
    const char *userinfo = NULL;
    size_t ui_len = 0;
    int rc;

    memset(u, 0, sizeof *u);
    if (!s)
        return evq__err(EVQ_EINVAL, "URL is NULL");
    if (strlen(s) > 8192)
        return evq__err(EVQ_EINVAL, "URL is longer than 8192 bytes");
    /* Spaces and control characters must be percent-encoded. */
    for (p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c == 0x7f)
            return evq__err(
                EVQ_EINVAL, "URL has %s at offset %zu (percent-encode it)",
                c == ' ' ? "a space" : "a control character", (size_t)(p - s));
    }
    p = strstr(s, "://");
    if (!p || p == s)
        return evq__err(EVQ_EINVAL,
                        "URL has no scheme (expected e.g. memory:// or "
                        "redis://host:6379)");
    for (const char *c = s; c < p; c++) {
        if (!isalnum((unsigned char)*c) && *c != '+' && *c != '-' && *c != '.')
            return evq__err(EVQ_EINVAL, "URL scheme '%.*s' is malformed",
                            (int)(p - s > 32 ? 32 : p - s), s);
    }
    if (!(u->scheme = evq__strndup(s, (size_t)(p - s))))
        goto oom;
    for (char *c = u->scheme; *c; c++)
        *c = (char)tolower((unsigned char)*c);

    auth = p + 3;
    auth_end = auth + strcspn(auth, "/?#");
    /* The userinfo ends at the last '@' of the authority (passwords may
     * contain an unencoded '@'). */
    at = NULL;
    for (const char *c = auth; c < auth_end; c++) {
        if (*c == '@')
            at = c;
    }
    if (at) {
        userinfo = auth;
        ui_len = (size_t)(at - auth);
    }
    if ((rc = build_redacted(u, s, userinfo, ui_len)) != 0)
        goto fail;
    if (userinfo) {
        const char *colon = memchr(userinfo, ':', ui_len);
        size_t un = colon ? (size_t)(colon - userinfo) : ui_len;
        if ((rc = pct_decode(userinfo, un, "user name", &u->user)) != 0)
            goto fail;
        if (colon && (rc = pct_decode(colon + 1, ui_len - un - 1, "password",
                                      &u->password)) != 0)
            goto fail;
        auth = at + 1;
    }
    /* Hosts, comma separated. */
    if (auth < auth_end) {
        size_t cap = 1;
        for (const char *c = auth; c < auth_end; c++)
            cap += *c == ',';
        u->hosts = calloc(cap, sizeof *u->hosts);
        if (!u->hosts)
            goto oom;
        const char *h = auth;
        while (h <= auth_end) {
            const char *comma = memchr(h, ',', (size_t)(auth_end - h));
            const char *e = comma ? comma : auth_end;
            if (e == h && (cap > 1 || comma)) {
                rc = evq__err(EVQ_EINVAL, "URL has an empty host in its host "
                                          "list");
                goto fail;
            }
            /* Counted before checking, so a host parsed before its bad port
             * is freed with the rest. */
            rc = parse_host(h, (size_t)(e - h), &u->hosts[u->n_hosts++]);
            if (rc)
                goto fail;
            if (!comma)
                break;
            h = comma + 1;
        }
    }
    path = auth_end;
    query = path + strcspn(path, "?#");
    if ((rc = pct_decode(path, (size_t)(query - path), "path", &u->path)))
        goto fail;
    if (*query == '?') {
        const char *q = query + 1, *qend = q + strcspn(q, "#");
        while (q < qend) {
            const char *amp = memchr(q, '&', (size_t)(qend - q));
            const char *e = amp ? amp : qend;
            if (e > q) {
                const char *eq = memchr(q, '=', (size_t)(e - q));
                evq__param *np =
                    realloc(u->params, (u->n_params + 1) * sizeof *np);
                if (!np)
                    goto oom;
                u->params = np;
                evq__param *kv = &u->params[u->n_params];
                kv->key = kv->value = NULL;
                u->n_params++;
                if (!eq) {
                    rc = evq__err(EVQ_EINVAL,
                                  "URL query parameter '%.*s' has no '=value'",
                                  (int)(e - q > 64 ? 64 : e - q), q);
                    goto fail;
                }
                if ((rc = pct_decode(q, (size_t)(eq - q),
                                     "query parameter "
                                     "name",
                                     &kv->key)) ||
                    (rc = pct_decode(eq + 1, (size_t)(e - eq - 1),
                                     "query parameter value", &kv->value)))
                    goto fail;
                if (kv->key[0] == '\0') {
                    rc = evq__err(EVQ_EINVAL,
                                  "URL query has a parameter with no name");
                    goto fail;
                }
                for (size_t i = 0; i + 1 < u->n_params; i++) {
                    if (strcmp(u->params[i].key, kv->key) == 0) {
                        rc = evq__err(EVQ_EINVAL,
                                      "URL query parameter '%.64s' is given "
                                      "twice",
                                      kv->key);
                        goto fail;
                    }
                }
            }
            q = e + 1;
        }
    }
    return 0;
oom:
    rc = evq__err(EVQ_ENOMEM, "out of memory parsing a URL");
fail:
    evq__url_free(u);
    return rc;
}
