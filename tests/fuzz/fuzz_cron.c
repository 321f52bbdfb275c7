/*
 * fuzz_cron.c - libFuzzer target for the cron-expression parser (what
 * evq_schedule_add and `evq schedule --cron` take): any input is parsed
 * or refused with EVQ_EINVAL and a message; what parses gives a next time
 * after a fixed instant that is later than it and on a minute, or says
 * that no time matches.
 */
#include "cron.h"

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
    evq__cron c;
    int rc = evq__cron_parse(s, &c);
    if (rc != 0 && (rc != EVQ_EINVAL || !evq_errmsg()[0]))
        abort();
    if (rc == 0) {
        const int64_t after = 1796083200000LL + 12345; /* 2026-12-01 */
        int64_t slot;
        rc = evq__cron_next(&c, NULL, after, &slot);
        if (rc == 0 && (slot <= after || slot % 60000 != 0))
            abort();
        if (rc != 0 && rc != EVQ_EINVAL)
            abort();
    }
    free(s);
    return 0;
}
