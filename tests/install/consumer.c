/* Built against an installed evq by tests/install/check.sh. */
#include <evq.h>
#include <stdio.h>
#include <string.h>

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
    /* the library it runs with is the one it was built against here */
    ok = ok && strcmp(evq_version(), EVQ_VERSION_STRING) == 0;
    if (ok)
        printf("installed evq works (%s)\n", evq_version());
    return ok ? 0 : 1;
}
