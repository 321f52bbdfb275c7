/*
 * log_event.h - the seed's LogEventProcessor: prints every event it
 * receives.  Shared by the examples.
 */
#ifndef EVQ_EXAMPLE_LOG_EVENT_H
#define EVQ_EXAMPLE_LOG_EVENT_H

#include <stdio.h>
#include <stdlib.h>

#include <evq.h>

/* An evq_process_fn: prints the event as one CloudEvents JSON line. */
static inline int log_event(const evq_event *ev, void *arg)
{
    unsigned char *json;
    size_t len;
    int rc;

    (void)arg;
    rc = evq_event_encode(ev, "json", NULL, &json, &len);
    if (rc != 0)
        return rc;
    printf("Received event: %.*s\n", (int)len, (const char *)json);
    fflush(stdout);
    free(json);
    return 0;
}

#endif
