/* Registering an event handler for events of type "user.created" (the
 * seed's third example). */
#include "log_event.h"

int main(void)
{
    evq_events *events = evq_events_new();
    if (!events)
        return 1;
    int rc = evq_register_handler(events, "user.created", log_event, NULL);
    if (rc != 0) {
        fprintf(stderr, "register: %s: %s\n", evq_strerror(rc), evq_errmsg());
        evq_events_free(events);
        return 1;
    }
    printf("%zu handler registered for user.created\n",
           evq_events_count(events));
    evq_events_free(events);
    return 0;
}
