/*
 * fuzz_ce_binary.c - libFuzzer target for the CloudEvents binary-mode
 * decoder (ce_* headers and a value, as Kafka carries them).  The input is
 * headers, one "name:value" per line, then an empty line, then the value
 * (bytes, NULs included).  Any input gets an event or a clean error; an
 * event that decodes goes back to headers and decodes to the same id.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    evq__header hs[32];
    char names[32][64];
    size_t n = 0, at = 0;
    while (at < size && n < 32) {
        const uint8_t *nl = memchr(data + at, '\n', size - at);
        size_t end = nl ? (size_t)(nl - data) : size;
        if (end == at) { /* the empty line: the value follows */
            at++;
            break;
        }
        const uint8_t *colon = memchr(data + at, ':', end - at);
        size_t nlen = colon ? (size_t)(colon - (data + at)) : end - at;
        if (nlen >= sizeof names[n])
            nlen = sizeof names[n] - 1;
        memcpy(names[n], data + at, nlen);
        names[n][nlen] = '\0';
        hs[n].name = names[n];
        hs[n].value = colon ? colon + 1 : NULL;
        hs[n].len = colon ? end - (size_t)(colon + 1 - data) : 0;
        n++;
        at = end + 1;
    }
    if (at > size)
        at = size;
    evq_event *ev = NULL, *back = NULL;
    if (evq__ce_from_binary(hs, n, data + at, size - at, NULL, &ev) != 0)
        return 0;
    evq__header out[64];
    size_t m = 64, len = 0;
    char *owned = NULL;
    const void *val = NULL;
    if (evq__ce_to_binary(ev, out, &m, &owned, &val, &len) == 0) {
        if (evq__ce_from_binary(out, m, val, len, NULL, &back) != 0) {
            fprintf(stderr, "headers evq wrote do not decode: %s\n",
                    evq_errmsg());
            abort();
        }
        if (strcmp(evq_event_id(ev), evq_event_id(back)) != 0)
            abort();
        evq_event_free(back);
    }
    free(owned);
    evq_event_free(ev);
    return 0;
}
