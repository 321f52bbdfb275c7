/*
 * kafka_broker.c - a Kafka-protocol broker cluster for tests and
 * benchmarks, built on librdkafka's mock cluster: N brokers on loopback
 * that any Kafka client (librdkafka, kcat) talks to.
 *
 *   kafka_broker N DIR
 *
 * Writes the bootstrap address list to DIR/kafka.bootstrap once the
 * brokers listen, then reads commands, one per line, from the FIFO
 * DIR/kafka.ctl (made if missing):
 *
 *   down ID              take broker ID down (connections refused)
 *   up ID                bring it back
 *   topic NAME P R       create topic NAME with P partitions, R replicas
 *   leader NAME P ID     make broker ID the leader of partition P
 *
 * and appends "ok <command>" or "error <command>: <reason>" to
 * DIR/kafka.log after each.  Ends on SIGTERM or SIGINT.
 *
 * Limits of librdkafka 2.0.2's mock: it keeps only about 5 MiB per
 * partition (older data is dropped), answers no Admin API request, and
 * creates a topic on first use.
 */
#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t done;

static void on_signal(int sig)
{
    (void)sig;
    done = 1;
}

/* Appends "ok CMD" or "error CMD: WHY" to DIR/kafka.log. */
static void reply(const char *dir, const char *cmd, const char *why)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/kafka.log", dir);
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    if (why)
        fprintf(f, "error %s: %s\n", cmd, why);
    else
        fprintf(f, "ok %s\n", cmd);
    fclose(f);
}

static void run(rd_kafka_mock_cluster_t *mc, const char *dir, char *line)
{
    char name[512];
    int a = 0, b = 0;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__INVALID_ARG;
    if (sscanf(line, "down %d", &a) == 1)
        err = rd_kafka_mock_broker_set_down(mc, a);
    else if (sscanf(line, "up %d", &a) == 1)
        err = rd_kafka_mock_broker_set_up(mc, a);
    else if (sscanf(line, "topic %511s %d %d", name, &a, &b) == 3)
        err = rd_kafka_mock_topic_create(mc, name, a, b);
    else if (sscanf(line, "leader %511s %d %d", name, &a, &b) == 3)
        err = rd_kafka_mock_partition_set_leader(mc, name, a, b);
    reply(dir, line, err ? rd_kafka_err2str(err) : NULL);
}

int main(int argc, char **argv)
{
    if (argc != 3 || atoi(argv[1]) < 1) {
        fprintf(stderr, "usage: kafka_broker BROKERS DIR\n");
        return 2;
    }
    const char *dir = argv[2];
    char err[512], path[4096], tmp[4096];
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "kafka_broker: %s\n", err);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, atoi(argv[1]));
    if (!mc) {
        fprintf(stderr, "kafka_broker: cannot start the mock cluster\n");
        return 1;
    }

    snprintf(path, sizeof path, "%s/kafka.ctl", dir);
    if (mkfifo(path, 0600) != 0 && errno != EEXIST) {
        fprintf(stderr, "kafka_broker: mkfifo %s: %s\n", path, strerror(errno));
        return 1;
    }
    /* read-write, so the FIFO never reads as closed between writers */
    int ctl = open(path, O_RDWR | O_NONBLOCK);
    if (ctl < 0) {
        fprintf(stderr, "kafka_broker: %s: %s\n", path, strerror(errno));
        return 1;
    }
    snprintf(tmp, sizeof tmp, "%s/kafka.bootstrap.tmp", dir);
    snprintf(path, sizeof path, "%s/kafka.bootstrap", dir);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%s\n", rd_kafka_mock_cluster_bootstraps(mc)) < 0 ||
        fclose(f) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "kafka_broker: cannot write %s\n", path);
        return 1;
    }

    char buf[4096];
    size_t have = 0;
    while (!done) {
        struct pollfd p = {.fd = ctl, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0)
            continue;
        ssize_t r = read(ctl, buf + have, sizeof buf - 1 - have);
        if (r <= 0)
            continue;
        have += (size_t)r;
        buf[have] = '\0';
        char *start = buf, *nl;
        while ((nl = strchr(start, '\n')) != NULL) {
            *nl = '\0';
            if (*start)
                run(mc, dir, start);
            start = nl + 1;
        }
        have = strlen(start);
        memmove(buf, start, have);
        if (have == sizeof buf - 1)
            have = 0; /* a line too long to be a command */
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
