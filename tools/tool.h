/* What the evq tool's files share (tools/evq.c, tools/bench.c): the
 * helpers every command uses.  The tool uses the library's public API
 * only (evq.h). */
#ifndef EVQ_TOOL_H
#define EVQ_TOOL_H

#include <stdbool.h>
#include <stdint.h>

#include <evq.h>

#define EXIT_USAGE 2

extern const char *prog; /* "evq" */

/* Prints "evq WHAT: message (error)" for a library failure; EXIT_FAILURE. */
int fail(const char *what, int rc);
/* Prints a usage error of command `cmd` and a hint; EXIT_USAGE. */
int usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int64_t mono_ns(void);
int64_t real_ns(void);
/* Parses a whole decimal number in [min, max]. */
bool parse_long(const char *s, long min, long max, long *out);
/* -o key=value, collected into *o (made on first use). */
int add_opt(evq_opts **o, const char *cmd, const char *kv);
/* The flags every command shares: -o KEY=VALUE and --help, and unknown
 * ones.  Sets *done when the command must return the result now. */
int common_flag(int c, const char *cmd, const char *help, evq_opts **opts,
                bool *done);
/* Prints why opening a queue on `url` failed; EXIT_USAGE when the URL or
 * an option was wrong (EVQ_EINVAL, or EVQ_ENOTSUP: a backend this build
 * has not), with a hint to 'evq options', else EXIT_FAILURE. */
int open_failed(const char *url, int rc);
/* Opens URL QUEUE with the -o options, which it frees; prints why on
 * failure and returns the exit status (0 on success). */
int open_queue(const char *url, const char *name, evq_opts *opts,
               evq_queue **q);

/* The cases of a command's getopt switch for the shared flags; the
 * command's options are in `opts`. */
#define COMMON_FLAGS(cmd, help)                                                \
    default: {                                                                 \
        bool done_;                                                            \
        int r_ = common_flag(c, cmd, help, &opts, &done_);                     \
        if (done_) {                                                           \
            evq_opts_free(opts);                                               \
            return r_;                                                         \
        }                                                                      \
        break;                                                                 \
    }

/* evq bench (tools/bench.c) */
extern const char bench_help[];
int cmd_bench(int argc, char **argv);

#endif
