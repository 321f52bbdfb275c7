/* A consumer that crashes holding an event, for the tests of what becomes
 * of it:
 *
 *   consume_and_die URL QUEUE
 *
 * opens QUEUE at URL, takes one event (waiting up to 5 s) and kills itself
 * with SIGKILL before settling it.  Exits 1 if it could not take one.  A
 * program of its own, started with posix_spawn, so a test that runs it
 * never forks a process that then starts threads (ThreadSanitizer cannot
 * follow that). */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "evq.h"

int main(int argc, char **argv)
{
    evq_queue *q;
    evq_msg *m;
    if (argc != 3) {
        fprintf(stderr, "usage: consume_and_die URL QUEUE\n");
        return 2;
    }
    if (evq_queue_open(&q, argv[1], argv[2], NULL) ||
        evq_dequeue(q, &m, 5000)) {
        fprintf(stderr, "consume_and_die: %s\n", evq_errmsg());
        return 1;
    }
    kill(getpid(), SIGKILL);
    return 3;
}
