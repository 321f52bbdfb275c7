/* Consuming events from the queue (the seed's last example): dequeue,
 * process, then acknowledge; a failed event is handed back for a retry.
 * The in-process queue starts empty, so this program first enqueues the
 * seed's event, and stops once the queue stays empty for a second. */
#include "log_event.h"

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
    if (!ev || evq_enqueue(queue, ev) != 0)
        return 1;
    evq_event_free(ev);

    for (;;) {
        evq_msg *msg;
        rc = evq_dequeue(queue, &msg, 1000);
        if (rc == EVQ_ETIMEDOUT)
            break;
        if (rc != 0) {
            fprintf(stderr, "dequeue: %s: %s\n", evq_strerror(rc),
                    evq_errmsg());
            break;
        }
        if (log_event(evq_msg_event(msg), NULL) == 0)
            evq_ack(msg);
        else
            evq_nack(msg, 1000);
    }
    evq_queue_close(queue);
    return rc == EVQ_ETIMEDOUT ? 0 : 1;
}
