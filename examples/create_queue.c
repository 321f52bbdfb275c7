/* Creating a queue (the seed's first example), on the in-process backend.
 * With a broker the URL changes, e.g. "redis://localhost:6379". */
#include <stdio.h>

#include <evq.h>

int main(void)
{
    evq_queue *queue;
    int rc = evq_queue_open(&queue, "memory://", "my-queue", NULL);
    if (rc != 0) {
        fprintf(stderr, "open: %s: %s\n", evq_strerror(rc), evq_errmsg());
        return 1;
    }
    printf("opened queue %s on %s://\n", evq_queue_name(queue),
           evq_queue_scheme(queue));
    evq_queue_close(queue);
    return 0;
}
