/*
 * trace.c - W3C trace context (https://www.w3.org/TR/trace-context/) on
 * events, as the CloudEvents distributed-tracing extension carries it,
 * and each thread's current context.
 *
 * The current context is two pointers: into the thread's own copies (set
 * by evq_trace_set) or, while an event is dispatched, into the event's
 * attributes (borrowed: the event outlives its dispatch).
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static _Thread_local char own_tp[EVQ__TP_MAX + 1], own_ts[EVQ__TS_MAX + 1];
static _Thread_local const char *cur_tp, *cur_ts;

static bool lhex(const char *s, size_t n, bool *nonzero)
{
    *nonzero = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        *nonzero |= c != '0';
    }
    return true;
}

bool evq__traceparent_valid(const char *tp)
{
    size_t n = tp ? strlen(tp) : 0;
    bool nz;
    if (n < 55 || n > EVQ__TP_MAX || !lhex(tp, 2, &nz) ||
        (tp[0] == 'f' && tp[1] == 'f'))
        return false;
    if (tp[2] != '-' || tp[35] != '-' || tp[52] != '-')
        return false;
    if (!lhex(tp + 3, 32, &nz) || !nz || !lhex(tp + 36, 16, &nz) || !nz ||
        !lhex(tp + 53, 2, &nz))
        return false;
    /* version 00 is exactly 55 characters; a later one may go on after a
     * '-' (read as 00, as the spec says) */
    if (tp[0] == '0' && tp[1] == '0')
        return n == 55;
    return n == 55 || tp[55] == '-';
}

static int check(const char *tp, const char *ts)
{
    if (tp && !evq__traceparent_valid(tp))
        return evq__err(EVQ_EINVAL,
                        "traceparent '%.80s' is not "
                        "VERSION-TRACEID-PARENTID-FLAGS in lower-case hex "
                        "(W3C trace context)",
                        tp);
    if (ts) {
        size_t n = strlen(ts);
        if (n > EVQ__TS_MAX)
            return evq__err(EVQ_EINVAL,
                            "tracestate is %zu bytes, more than %d", n,
                            EVQ__TS_MAX);
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)ts[i] < 0x20 || (unsigned char)ts[i] > 0x7e)
                return evq__err(EVQ_EINVAL,
                                "tracestate has a byte 0x%02x at %zu: "
                                "printable ASCII only",
                                (unsigned char)ts[i], i);
    }
    return 0;
}

int evq_trace_set(const char *traceparent, const char *tracestate)
{
    if (!traceparent) {
        cur_tp = cur_ts = NULL;
        return 0;
    }
    int rc = check(traceparent, tracestate);
    if (rc)
        return rc;
    /* memmove: the arguments may be the thread's own copies */
    memmove(own_tp, traceparent, strlen(traceparent) + 1);
    cur_tp = own_tp;
    if (tracestate) {
        memmove(own_ts, tracestate, strlen(tracestate) + 1);
        cur_ts = own_ts;
    } else {
        cur_ts = NULL;
    }
    return 0;
}

const char *evq_trace_current(void)
{
    return cur_tp;
}

const char *evq_trace_current_state(void)
{
    return cur_tp ? cur_ts : NULL;
}

int evq_event_set_trace(evq_event *ev, const char *traceparent,
                        const char *tracestate)
{
    if (!ev)
        return evq__err(EVQ_EINVAL, "evq_event_set_trace: ev is NULL");
    if (!traceparent) {
        if (!cur_tp)
            return evq__err(EVQ_ENOENT,
                            "evq_event_set_trace: this thread has no trace "
                            "context (evq_trace_set)");
        traceparent = cur_tp;
        tracestate = cur_ts;
    }
    int rc = check(traceparent, tracestate);
    /* copies first: the thread's context may be this event's own */
    char tp[EVQ__TP_MAX + 1], ts[EVQ__TS_MAX + 1];
    if (!rc) {
        snprintf(tp, sizeof tp, "%s", traceparent);
        snprintf(ts, sizeof ts, "%s", tracestate ? tracestate : "");
        rc = evq_event_set_attr(ev, "tracestate", tracestate ? ts : NULL);
    }
    /* (only running out of memory fails after the checks: then the
     * tracestate may be new beside the old traceparent) */
    if (!rc)
        rc = evq_event_set_attr(ev, "traceparent", tp);
    return rc;
}

const char *evq_event_traceparent(const evq_event *ev)
{
    const char *tp = ev ? evq_event_attr(ev, "traceparent") : NULL;
    return evq__traceparent_valid(tp) ? tp : NULL;
}

const char *evq_event_tracestate(const evq_event *ev)
{
    return ev ? evq_event_attr(ev, "tracestate") : NULL;
}

void evq__trace_enter(const evq_event *ev, evq__trace_saved *saved)
{
    saved->tp = cur_tp;
    saved->ts = cur_ts;
    saved->copied = false;
    /* the thread's own copies could be overwritten by a handler's
     * evq_trace_set: keep them aside (a worker's threads have none) */
    if (cur_tp == own_tp) {
        saved->copied = true;
        memcpy(saved->own_tp, own_tp, sizeof own_tp);
        memcpy(saved->own_ts, own_ts, sizeof own_ts);
    }
    const char *tp = evq_event_traceparent(ev);
    cur_tp = tp;
    cur_ts = tp ? evq_event_tracestate(ev) : NULL;
}

void evq__trace_leave(evq__trace_saved *saved)
{
    if (saved->copied) {
        memcpy(own_tp, saved->own_tp, sizeof own_tp);
        memcpy(own_ts, saved->own_ts, sizeof own_ts);
    }
    cur_tp = saved->tp;
    cur_ts = saved->ts;
}
