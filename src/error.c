/*
 * error.c - the error table and the per-thread detail message.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

#define EVQ__ERRMSG_MAX 512

static _Thread_local char errmsg[EVQ__ERRMSG_MAX] EVQ__TLS;

const char *evq_strerror(int code)
{
    if (code == 0)
        return "success";
    switch (code) {
#define EVQ__ERR_TEXT(name, val, text)                                         \
    case val:                                                                  \
        return text;
        EVQ_ERRNO_MAP(EVQ__ERR_TEXT)
#undef EVQ__ERR_TEXT
    }
    return "unknown error";
}

const char *evq_errname(int code)
{
    switch (code) {
#define EVQ__ERR_NAME(name, val, text)                                         \
    case val:                                                                  \
        return "EVQ_" #name;
        EVQ_ERRNO_MAP(EVQ__ERR_NAME)
#undef EVQ__ERR_NAME
    }
    return NULL;
}

const char *evq_errmsg(void)
{
    return errmsg;
}

int evq__err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    return code;
}

int evq__err_prefix(int code, const char *fmt, ...)
{
    char old[EVQ__ERRMSG_MAX];
    size_t n;
    va_list ap;

    memcpy(old, errmsg, sizeof old);
    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    n = strlen(errmsg);
    if (old[0] != '\0' && n + 2 < sizeof errmsg)
        snprintf(errmsg + n, sizeof errmsg - n, ": %s", old);
    return code;
}

void evq__err_clear(void)
{
    errmsg[0] = '\0';
}

int evq__lease_lost(const char *what)
{
    return evq__err(EVQ_ESTATE,
                    "%s: the lease expired: the event's visibility timeout "
                    "passed and it was, or may be, delivered to another "
                    "consumer (touch it sooner: evq_msg_touch)",
                    what);
}
