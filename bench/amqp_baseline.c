/*
 * amqp_baseline.c - what a plain librabbitmq program does on the same
 * broker with the same messages, for bench/amqp.sh to set evq's amqp://
 * figures against:
 *
 *   amqp_baseline HOST PORT publish N SIZE WINDOW   N persistent messages
 *                                                    of SIZE bytes to the
 *                                                    quorum queue
 *                                                    "bench-base" with
 *                                                    publisher confirms,
 *                                                    at most WINDOW out
 *                                                    unconfirmed
 *   amqp_baseline HOST PORT consume N PREFETCH       basic.consume with
 *                                                    basic.qos PREFETCH,
 *                                                    each message acked,
 *                                                    until N came
 *
 * publish declares the queue (and empties it first).  Prints one JSON
 * object.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "amqp_baseline: %s\n", what);
    exit(1);
}

static void ok(amqp_connection_state_t c, const char *what)
{
    if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL)
        die(what);
}

static amqp_connection_state_t connect_to(const char *host, int port)
{
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    if (!s || amqp_socket_open(s, host, port) != AMQP_STATUS_OK)
        die("cannot connect");
    if (amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest",
                   "guest")
            .reply_type != AMQP_RESPONSE_NORMAL)
        die("login refused");
    amqp_channel_open(c, 1);
    ok(c, "channel.open");
    return c;
}

static const amqp_bytes_t *queue_name(void)
{
    static amqp_bytes_t q;
    q = amqp_cstring_bytes("bench-base");
    return &q;
}

/* Reads confirms until at most `window` are out. */
static void confirms(amqp_connection_state_t c, uint64_t sent,
                     uint64_t *confirmed, uint64_t window)
{
    while (sent - *confirmed > window) {
        amqp_frame_t f;
        if (amqp_simple_wait_frame(c, &f) != AMQP_STATUS_OK)
            die("lost the connection");
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        if (f.payload.method.id == AMQP_BASIC_NACK_METHOD)
            die("a message was nacked");
        if (f.payload.method.id != AMQP_BASIC_ACK_METHOD)
            continue;
        amqp_basic_ack_t *a = f.payload.method.decoded;
        /* the broker confirms in order on one queue */
        if (a->delivery_tag > *confirmed)
            *confirmed = a->delivery_tag;
    }
}

static int publish(amqp_connection_state_t c, long n, int size, long window)
{
    amqp_table_entry_t e = {amqp_cstring_bytes("x-queue-type"),
                            {AMQP_FIELD_KIND_UTF8,
                             {.bytes = amqp_cstring_bytes("quorum")}}};
    amqp_table_t args = {1, &e};
    amqp_queue_declare(c, 1, *queue_name(), 0, 1, 0, 0, args);
    ok(c, "queue.declare");
    amqp_queue_purge(c, 1, *queue_name());
    ok(c, "queue.purge");
    amqp_confirm_select(c, 1);
    ok(c, "confirm.select");
    char *body = malloc((size_t)size);
    memset(body, 'x', (size_t)size);
    amqp_basic_properties_t p = {
        ._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG,
        .delivery_mode = AMQP_DELIVERY_PERSISTENT,
        .content_type = amqp_cstring_bytes("application/cloudevents+json"),
    };
    uint64_t confirmed = 0;
    double t0 = now_s();
    for (long i = 1; i <= n; i++) {
        if (amqp_basic_publish(c, 1, amqp_cstring_bytes(""), *queue_name(), 1,
                               0, &p, (amqp_bytes_t){(size_t)size, body}) !=
            AMQP_STATUS_OK)
            die("publish failed");
        confirms(c, (uint64_t)i, &confirmed, (uint64_t)window);
    }
    confirms(c, (uint64_t)n, &confirmed, 0);
    double dt = now_s() - t0;
    printf("{\"amqp_publish_per_s\": %.0f, \"events\": %ld, \"bytes\": %d, "
           "\"window\": %ld}\n",
           (double)n / dt, n, size, window);
    free(body);
    return 0;
}

static int consume(amqp_connection_state_t c, long n, int prefetch)
{
    amqp_basic_qos(c, 1, 0, (uint16_t)prefetch, 0);
    ok(c, "basic.qos");
    amqp_basic_consume(c, 1, *queue_name(), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    ok(c, "basic.consume");
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(c);
        if (amqp_consume_message(c, &env, NULL, 0).reply_type !=
            AMQP_RESPONSE_NORMAL)
            die("consume failed");
        if (amqp_basic_ack(c, 1, env.delivery_tag, 0) != AMQP_STATUS_OK)
            die("ack failed");
        amqp_destroy_envelope(&env);
    }
    double dt = now_s() - t0;
    printf("{\"amqp_consume_per_s\": %.0f, \"events\": %ld, \"prefetch\": "
           "%d}\n",
           (double)n / dt, n, prefetch);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: amqp_baseline HOST PORT publish N SIZE WINDOW"
                        " | consume N PREFETCH\n");
        return 2;
    }
    amqp_connection_state_t c = connect_to(argv[1], atoi(argv[2]));
    int rc = 0;
    if (strcmp(argv[3], "publish") == 0 && argc >= 7)
        rc = publish(c, atol(argv[4]), atoi(argv[5]), atol(argv[6]));
    else if (strcmp(argv[3], "consume") == 0)
        rc = consume(c, atol(argv[4]), atoi(argv[5]));
    else
        die("unknown command");
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return rc;
}
