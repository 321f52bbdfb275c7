/* Built against an installed evq by tests/install/check.sh. */
#include <evq.h>
#include <stdio.h>

int main(void)
{
    evq_queue *q;
    evq_msg *m;
    evq_event *ev = evq_event_new("install.check", json_true());
    if (!ev || evq_queue_open(&q, "memory://", "install", NULL) != 0 ||
        evq_enqueue(q, ev) != 0 || evq_dequeue(q, &m, 1000) != 0)
        return 1;
    int ok = json_is_true(evq_event_data(evq_msg_event(m)));
    evq_ack(m);
    evq_queue_close(q);
    evq_event_free(ev);
    if (ok)
        printf("installed evq works (%s)\n", EVQ_VERSION_STRING);
    return ok ? 0 : 1;
}
