/*
 * fuzz_codec.c - libFuzzer target for a codec's decoder (EVQ_FUZZ_FORMAT:
 * "json" or "msgpack", set at build time).  Any input gets an event or a
 * clean error; an event that decodes encodes again and decodes to the
 * same id, type and source (else abort: a finding).
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const char *what, const char *a, const char *b)
{
    if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0)) {
        fprintf(stderr, "round trip changed %s: '%s' -> '%s'\n", what,
                a ? a : "(null)", b ? b : "(null)");
        abort();
    }
}

/* simdjson's parse agrees with json_loadb's (JSON_REJECT_DUPLICATES). */
static void parsers_agree(const uint8_t *data, size_t size)
{
    char why[128];
    json_error_t jerr;
    bool any = size > 0 && (data[0] & 1); /* both modes, by the input */
    json_t *fast = evq__json_parse(data, size, any, why, sizeof why);
    json_t *slow = json_loadb((const char *)data, size,
                              JSON_REJECT_DUPLICATES |
                                  (any ? JSON_DECODE_ANY : 0),
                              &jerr);
    /* simdjson may refuse more (nesting past 1024): the codec then asks
     * jansson, so only taking what jansson refuses, or another tree, is
     * a finding */
    if (fast && (!slow || !json_equal(fast, slow))) {
        fprintf(stderr, "the JSON parsers disagree: simdjson %s, jansson %s\n",
                fast ? "took it" : why, slow ? "took it" : jerr.text);
        abort();
    }
    json_decref(fast);
    json_decref(slow);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    evq_event *ev = NULL, *back = NULL;
    if (strcmp(EVQ_FUZZ_FORMAT, "json") == 0)
        parsers_agree(data, size);
    if (evq_event_decode(&ev, EVQ_FUZZ_FORMAT, data, size, NULL) != 0)
        return 0;
    unsigned char *buf = NULL;
    size_t len = 0;
    if (evq_event_encode(ev, EVQ_FUZZ_FORMAT, NULL, &buf, &len) == 0) {
        if (evq_event_decode(&back, EVQ_FUZZ_FORMAT, buf, len, NULL) != 0) {
            fprintf(stderr, "an encoded event does not decode: %s\n",
                    evq_errmsg());
            abort();
        }
        same("id", evq_event_id(ev), evq_event_id(back));
        same("type", evq_event_type(ev), evq_event_type(back));
        same("source", evq_event_source(ev), evq_event_source(back));
        same("subject", evq_event_attr(ev, "subject"),
             evq_event_attr(back, "subject"));
        evq_event_free(back);
        free(buf);
    }
    evq_event_free(ev);
    return 0;
}
