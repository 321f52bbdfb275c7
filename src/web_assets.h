/*
 * web_assets.h - the dashboard's files (src/web/), built into the library
 * by cmake/embed.cmake, so evq serve fetches nothing from elsewhere.
 */
#ifndef EVQ_WEB_ASSETS_H
#define EVQ_WEB_ASSETS_H

#include <stddef.h>

typedef struct evq__web_file {
    const char *name; /* "index.html" */
    const char *type; /* its Content-Type */
    const unsigned char *data;
    size_t len;
} evq__web_file;

extern const evq__web_file evq__web[];
extern const size_t evq__web_count;

#endif
