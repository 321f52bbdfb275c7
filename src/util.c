/*
 * util.c - clocks, strings, UTF-8, base64, RFC 3339 time, byte buffers.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t evq__now_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t evq__now_real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t evq__hdr_int(const void *value, size_t len)
{
    const char *s = value;
    int64_t v = 0;
    if (!s || len == 0 || len > 18)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int64_t evq__deadline_ns(int64_t timeout_ms)
{
    int64_t now = evq__now_mono_ns();
    /* past about 31 years is no limit: the deadline stays far from
     * INT64_MAX, so it can also be moved onto the realtime clock */
    if (timeout_ms < 0 || timeout_ms > 1000000000000LL)
        return INT64_MAX;
    return now + timeout_ms * 1000000;
}

int evq__sized_in(void *dst, size_t dst_size, const void *src, const char *what)
{
    size_t size;
    memcpy(&size, src, sizeof size);
    if (size < sizeof size)
        return evq__err(EVQ_EINVAL,
                        "%s.size is %zu: fill the options with %s_init "
                        "before setting them",
                        what, size, what);
    if (size > dst_size)
        return evq__err(EVQ_EINVAL,
                        "%s of %zu bytes: this libevq %s knows %zu (the "
                        "program was built against a newer evq.h)",
                        what, size, EVQ_VERSION_STRING, dst_size);
    memcpy(dst, src, size);
    memcpy(dst, &dst_size, sizeof dst_size);
    return 0;
}

void evq__sized_out(void *dst, size_t dst_size, const void *src,
                    size_t src_size)
{
    size_t n = dst_size < src_size ? dst_size : src_size;
    memcpy(dst, src, n);
    if (dst_size > n)
        memset((char *)dst + n, 0, dst_size - n);
}

void evq__sized_init(void *dst, size_t size, const void *defaults,
                     size_t src_size)
{
    if (!dst || size < sizeof size)
        return;
    evq__sized_out(dst, size, defaults, src_size);
    memcpy(dst, &size, sizeof size);
}

struct timespec evq__ts_from_ns(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return ts;
}

char *evq__strndup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

char *evq__strdup(const char *s)
{
    return s ? evq__strndup(s, strlen(s)) : NULL;
}

/* Accepts well-formed UTF-8 only: no overlong forms, no surrogates, nothing
 * past U+10FFFF, no NUL. */
bool evq__utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;

    while (i < len) {
        /* Eight ASCII bytes without a NUL at a time: the common case. */
        while (len - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ull) ||
                ((w - 0x0101010101010101ull) & ~w & 0x8080808080808080ull))
                break;
            i += 8;
        }
        if (i >= len)
            break;
        unsigned c = s[i];
        size_t n;
        unsigned cp;

        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i - 1 < n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *evq__b64_encode(const unsigned char *in, size_t len, size_t *outlen)
{
    size_t n = 4 * ((len + 2) / 3);
    char *out = malloc(n + 1);
    size_t i, o = 0;

    if (!out)
        return NULL;
    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v =
            (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64chars[v >> 18];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = b64chars[(v >> 6) & 63];
        out[o++] = b64chars[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        out[o++] = b64chars[v >> 18];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64chars[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    if (outlen)
        *outlen = o;
    return out;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int evq__b64_decode(const char *in, size_t len, unsigned char **out,
                    size_t *outlen)
{
    unsigned char *p;
    size_t o = 0, pad = 0;

    if (len % 4 != 0)
        return evq__err(EVQ_EDECODE, "base64 length %zu is not a multiple of 4",
                        len);
    if (len >= 1 && in[len - 1] == '=')
        pad++;
    if (len >= 2 && in[len - 2] == '=')
        pad++;
    p = malloc(len / 4 * 3 + 1);
    if (!p)
        return evq__err(EVQ_ENOMEM, "out of memory decoding base64");
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        bool last = i + 4 == len;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in[i + k];
            if (c == '=' && last && k >= 4 - (int)pad) {
                v[k] = 0;
                continue;
            }
            v[k] = b64val(c);
            if (v[k] < 0) {
                free(p);
                return evq__err(EVQ_EDECODE,
                                "invalid base64 character at offset %zu",
                                i + (size_t)k);
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 |
                     (uint32_t)v[2] << 6 | (uint32_t)v[3];
        p[o++] = (unsigned char)(w >> 16);
        if (!(last && pad >= 2))
            p[o++] = (unsigned char)(w >> 8);
        if (!(last && pad >= 1))
            p[o++] = (unsigned char)w;
    }
    *out = p;
    *outlen = o;
    return 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t yy = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yy + (*m <= 2));
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int evq__time_parse(const char *s, int64_t *ns)
{
    int Y, M, D, h, m, sec, oh = 0, om = 0;
    int64_t frac = 0;
    size_t len = strlen(s);
    const char *p;
    static const unsigned char mdays[] = {31, 29, 31, 30, 31, 30,
                                          31, 31, 30, 31, 30, 31};

    if (len < 20 || digits(s, 4, &Y) || s[4] != '-' || digits(s + 5, 2, &M) ||
        s[7] != '-' || digits(s + 8, 2, &D) ||
        (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &m) ||
        s[16] != ':' || digits(s + 17, 2, &sec))
        goto bad;
    if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || h > 23 || m > 59 ||
        sec > 60)
        goto bad;
    if (M == 2 && D == 29 && !(Y % 4 == 0 && (Y % 100 != 0 || Y % 400 == 0)))
        goto bad;
    if (sec == 60) /* a leap second reads as the next second's start */
        sec = 59;
    p = s + 19;
    if (*p == '.') {
        int nd = 0;
        p++;
        while (*p >= '0' && *p <= '9') {
            if (nd < 9) {
                frac = frac * 10 + (*p - '0');
                nd++;
            }
            p++;
        }
        if (nd == 0)
            goto bad;
        for (; nd < 9; nd++)
            frac *= 10;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        if (strlen(p) != 6 || digits(p + 1, 2, &oh) || p[3] != ':' ||
            digits(p + 4, 2, &om) || oh > 23 || om > 59)
            goto bad;
        oh *= sign;
        om *= sign;
        p += 6;
    } else {
        goto bad;
    }
    if (*p != '\0')
        goto bad;
    int64_t secs = days_from_civil(Y, (unsigned)M, (unsigned)D) * 86400 +
                   h * 3600 + m * 60 + sec - (oh * 3600 + om * 60);
    /* Representable range of int64 nanoseconds: years 1678 to 2262. */
    if (secs > INT64_MAX / 1000000000 - 1 || secs < INT64_MIN / 1000000000 + 1)
        return evq__err(EVQ_EINVAL, "time '%.40s' is out of range", s);
    *ns = secs * 1000000000 + frac;
    return 0;
bad:
    return evq__err(EVQ_EINVAL, "time '%.40s' is not an RFC 3339 timestamp", s);
}

/* Writes n decimal digits of v, zero-padded. */
static char *put_digits(char *p, unsigned long long v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + n;
}

/* By hand rather than snprintf: every encoded event carries a time, and
 * formatting it was a tenth of the cost of encoding one. */
void evq__time_format(int64_t ns, char *buf)
{
    int64_t secs = ns / 1000000000;
    int64_t frac = ns % 1000000000;
    int y;
    unsigned mo, d;

    if (frac < 0) {
        frac += 1000000000;
        secs--;
    }
    int64_t days = secs / 86400, rem = secs % 86400;
    if (rem < 0) {
        rem += 86400;
        days--;
    }
    civil_from_days(days, &y, &mo, &d);
    /* int64 nanoseconds span the years 1677 to 2262: always four digits */
    char *p = put_digits(buf, (unsigned)y, 4);
    *p++ = '-';
    p = put_digits(p, mo, 2);
    *p++ = '-';
    p = put_digits(p, d, 2);
    *p++ = 'T';
    p = put_digits(p, (unsigned long long)(rem / 3600), 2);
    *p++ = ':';
    p = put_digits(p, (unsigned long long)(rem / 60 % 60), 2);
    *p++ = ':';
    p = put_digits(p, (unsigned long long)(rem % 60), 2);
    if (frac) {
        int w = 9;
        while (frac % 1000 == 0) {
            frac /= 1000;
            w -= 3;
        }
        *p++ = '.';
        p = put_digits(p, (unsigned long long)frac, w);
    }
    *p++ = 'Z';
    *p = '\0';
}

bool evq__flush_due(size_t pending, int64_t oldest_ms, int64_t now_ms,
                    int flush_ms, bool interrupted)
{
    return pending > 0 && (flush_ms == 0 || pending >= 256 ||
                           now_ms - oldest_ms >= flush_ms || interrupted);
}

static void *flusher_main(void *arg)
{
    evq__flusher *f = arg;
    pthread_setname_np(pthread_self(), "evq-flusher");
    pthread_mutex_lock(&f->mu);
    while (!f->stop) {
        if (f->due_ns == INT64_MAX) {
            pthread_cond_wait(&f->cv, &f->mu);
            continue;
        }
        if (evq__now_mono_ns() < f->due_ns) {
            struct timespec ts = evq__ts_from_ns(f->due_ns);
            pthread_cond_timedwait(&f->cv, &f->mu, &ts);
            continue;
        }
        f->due_ns = INT64_MAX;
        pthread_mutex_unlock(&f->mu);
        f->fn(f->arg);
        pthread_mutex_lock(&f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

void evq__cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
}

void evq__flusher_init(evq__flusher *f, void (*fn)(void *), void *arg)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    evq__cond_init_mono(&f->cv);
    f->due_ns = INT64_MAX;
    f->fn = fn;
    f->arg = arg;
}

void evq__flusher_arm(evq__flusher *f, int64_t due_ns)
{
    pthread_mutex_lock(&f->mu);
    /* A thread that cannot start now is tried again at the next arm; the
     * handle's own calls flush meanwhile. */
    if (!f->running && !f->stop &&
        pthread_create(&f->tid, NULL, flusher_main, f) == 0)
        f->running = true;
    if (due_ns < f->due_ns) {
        f->due_ns = due_ns;
        pthread_cond_signal(&f->cv);
    }
    pthread_mutex_unlock(&f->mu);
}

void evq__flusher_destroy(evq__flusher *f)
{
    pthread_mutex_lock(&f->mu);
    f->stop = true;
    bool join = f->running;
    f->running = false;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    if (join)
        pthread_join(f->tid, NULL);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
}

size_t evq__slot_lock(void *slots, size_t n, size_t elem, size_t mu_off)
{
    static atomic_uint threads;
    static _Thread_local unsigned slot = UINT_MAX;
    if (slot == UINT_MAX)
        slot = atomic_fetch_add(&threads, 1);
    unsigned char *base = slots;
    size_t own = slot % n;
    for (size_t i = 0; i < n; i++) {
        size_t k = (own + i) % n;
        if (pthread_mutex_trylock(
                (pthread_mutex_t *)(base + k * elem + mu_off)) == 0)
            return k;
    }
    pthread_mutex_lock((pthread_mutex_t *)(base + own * elem + mu_off));
    return own;
}

int evq__grow(void *arrayp, size_t *cap, size_t n, size_t elem)
{
    void **array = arrayp;
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    if (ncap <= n)
        ncap = n + 1;
    if (ncap > SIZE_MAX / elem)
        return evq__err(EVQ_ENOMEM, "array too large");
    void *p = realloc(*array, ncap * elem);
    if (!p)
        return evq__err(EVQ_ENOMEM, "out of memory");
    *array = p;
    *cap = ncap;
    return 0;
}

int evq__buf_reserve(evq__buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            return evq__err(EVQ_ENOMEM, "buffer too large");
        cap *= 2;
    }
    unsigned char *p = realloc(b->p, cap);
    if (!p)
        return evq__err(EVQ_ENOMEM, "out of memory");
    b->p = p;
    b->cap = cap;
    return 0;
}

int evq__buf_append(evq__buf *b, const void *p, size_t n)
{
    int rc = evq__buf_reserve(b, n);
    if (rc)
        return rc;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

/* ---- ticks --------------------------------------------------------------- *
 * The worker times every handler; two CLOCK_MONOTONIC reads cost about as
 * much as the rest of its bookkeeping, so on x86-64 with an invariant
 * time-stamp counter (constant_tsc and nonstop_tsc in /proc/cpuinfo) it
 * reads the TSC instead and converts with a factor calibrated once against
 * CLOCK_MONOTONIC.  Elsewhere ticks are nanoseconds. */

static pthread_once_t ticks_once = PTHREAD_ONCE_INIT;
static bool use_tsc;
static double ns_per_tick = 1.0;

static inline uint64_t rdtsc(void)
{
#if defined(__x86_64__)
    unsigned lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
#else
    return 0;
#endif
}

static void ticks_setup(void)
{
#if defined(__x86_64__)
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[4096];
    bool constant = false, nonstop = false;
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        constant = strstr(line, " constant_tsc") != NULL;
        nonstop = strstr(line, " nonstop_tsc") != NULL;
        break;
    }
    if (f)
        fclose(f);
    if (!constant || !nonstop)
        return;
    /* Calibrate over 5 ms. */
    int64_t n0 = evq__now_mono_ns();
    uint64_t t0 = rdtsc();
    int64_t n1;
    do {
        n1 = evq__now_mono_ns();
    } while (n1 - n0 < 5000000);
    uint64_t t1 = rdtsc();
    if (t1 > t0) {
        ns_per_tick = (double)(n1 - n0) / (double)(t1 - t0);
        use_tsc = true;
    }
#endif
}

void evq__ticks_init(void)
{
    pthread_once(&ticks_once, ticks_setup);
}

uint64_t evq__ticks(void)
{
    return use_tsc ? rdtsc() : (uint64_t)evq__now_mono_ns();
}

double evq__ns_per_tick(void)
{
    return ns_per_tick;
}

const char *evq_version(void)
{
    return EVQ_VERSION_STRING;
}
