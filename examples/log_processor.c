/* Creating an event processor that logs events to the console (the seed's
 * second example): the processor is log_event() in log_event.h. */
#include "log_event.h"

int main(void)
{
    evq_event *ev =
        evq_event_new("user.created", json_pack("{s:s, s:s}", "userId", "123",
                                                "name", "John Doe"));
    if (!ev) {
        fprintf(stderr, "event: %s\n", evq_errmsg());
        return 1;
    }
    int rc = log_event(ev, NULL);
    evq_event_free(ev);
    return rc == 0 ? 0 : 1;
}
