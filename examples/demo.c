/* The seed's example end to end on the embedded default: a logging
 * processor registered for "user.created", the event enqueued, then
 * consumed, dispatched to its handler and acknowledged. */
#include "log_event.h"

static int fail(const char *what, int rc)
{
    fprintf(stderr, "%s: %s: %s\n", what, evq_strerror(rc), evq_errmsg());
    return 1;
}

int main(void)
{
    evq_queue *queue;
    evq_events *events = evq_events_new();
    evq_msg *msg;
    int rc;

    if ((rc = evq_queue_open(&queue, "memory://", "my-queue", NULL)) != 0)
        return fail("open", rc);
    if ((rc = evq_register_handler(events, "user.created", log_event, NULL)))
        return fail("register", rc);

    evq_event *ev =
        evq_event_new("user.created", json_pack("{s:s, s:s}", "userId", "123",
                                                "name", "John Doe"));
    if ((rc = evq_enqueue(queue, ev)) != 0)
        return fail("enqueue", rc);
    evq_event_free(ev);

    if ((rc = evq_dequeue(queue, &msg, 5000)) != 0)
        return fail("dequeue", rc);
    rc = evq_dispatch(events, evq_msg_event(msg));
    if (rc == 0)
        evq_ack(msg);
    else
        evq_nack(msg, 1000);

    evq_queue_close(queue);
    evq_events_free(events);
    return rc == 0 ? 0 : fail("dispatch", rc);
}
