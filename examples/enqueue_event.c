/* Enqueueing an event (the seed's "dispatching an event to the queue"). */
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
    evq_event *ev =
        evq_event_new("user.created", json_pack("{s:s, s:s}", "userId", "123",
                                                "name", "John Doe"));
    rc = ev ? evq_enqueue(queue, ev) : EVQ_ENOMEM;
    if (rc != 0)
        fprintf(stderr, "enqueue: %s: %s\n", evq_strerror(rc), evq_errmsg());
    else
        printf("enqueued %s %s\n", evq_event_type(ev), evq_event_id(ev));
    evq_event_free(ev);
    evq_queue_close(queue);
    return rc == 0 ? 0 : 1;
}
