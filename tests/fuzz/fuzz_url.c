/*
 * fuzz_url.c - libFuzzer target for the URL parser and the options
 * checker: the input is a queue URL; whatever parses is checked against
 * the option table of every backend built.  Any input gets a result or a clean
 * error.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    evq__url url;
    if (evq__url_parse(s, &url) == 0) {
        const char *schemes[16];
        size_t n = evq_backends(schemes, 16);
        for (size_t i = 0; i < n && i < 16; i++) {
            evq__optset set;
            const struct evq_backend_ops *ops = evq__backend_find(schemes[i]);
            if (evq__optset_build(&set, &url, NULL, ops->opts) == 0) {
                /* every value of a known option reads back */
                for (size_t k = 0; k < set.n; k++)
                    if (!set.kv[k].key || !set.kv[k].value)
                        abort();
                evq__optset_free(&set);
            }
        }
        evq__url_free(&url);
    }
    free(s);
    return 0;
}
