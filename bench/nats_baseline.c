/*
 * nats_baseline.c - what plain libnats does on the same server, for
 * bench/nats.sh to set evq's nats:// figures against:
 *
 *   nats_baseline URL publish N     JetStream async publish of N 100-byte
 *                                   messages, waiting for every ack
 *   nats_baseline URL consume N     fetch (batches of 64) and ack N
 *   nats_baseline URL core N        core publish of N, flushed at the end
 *
 * publish and consume use the stream BASE (subject "base", work-queue
 * retention, file storage: what evq creates) and its durable pull
 * consumer; run publish before consume.  Prints one JSON object.
 */
#include <nats/nats.h>
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

static void check(natsStatus s, const char *what)
{
    if (s != NATS_OK) {
        fprintf(stderr, "nats_baseline: %s: %s\n", what,
                nats_GetLastError(NULL));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: nats_baseline URL publish|consume|core N\n");
        return 2;
    }
    const char *mode = argv[2];
    long n = atol(argv[3]);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    char body[100];
    memset(body, 'x', sizeof body);
    check(natsConnection_ConnectTo(&nc, argv[1]), "connect");

    if (strcmp(mode, "core") == 0) {
        double t0 = now_s();
        for (long i = 0; i < n; i++)
            check(natsConnection_Publish(nc, "base.core", body, sizeof body),
                  "publish");
        check(natsConnection_Flush(nc), "flush");
        printf("{\"core_publish_per_s\":%.0f}\n", (double)n / (now_s() - t0));
        natsConnection_Destroy(nc);
        return 0;
    }

    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 4096;
    check(natsConnection_JetStream(&js, nc, &jo), "JetStream");
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subjects[1] = {"base"};
    sc.Name = "BASE";
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Retention = js_WorkQueuePolicy;
    sc.Storage = js_FileStorage;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    if (js_GetStreamInfo(&si, js, "BASE", NULL, &jerr) == NATS_OK)
        jsStreamInfo_Destroy(si);
    else
        check(js_AddStream(NULL, js, &sc, NULL, NULL), "add stream");

    if (strcmp(mode, "publish") == 0) {
        double t0 = now_s();
        for (long i = 0; i < n; i++)
            check(js_PublishAsync(js, "base", body, sizeof body, NULL),
                  "publish");
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 60000;
        check(js_PublishAsyncComplete(js, &po), "publish complete");
        printf("{\"js_publish_per_s\":%.0f}\n", (double)n / (now_s() - t0));
    } else {
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Config.AckPolicy = js_AckExplicit;
        so.Config.MaxAckPending = 20000;
        natsSubscription *sub = NULL;
        check(js_PullSubscribe(&sub, js, "base", "base", NULL, &so, NULL),
              "pull subscribe");
        long got = 0;
        double t0 = now_s();
        while (got < n) {
            natsMsgList list = {0};
            natsStatus s = natsSubscription_Fetch(&list, sub, 64, 5000, NULL);
            if (s == NATS_TIMEOUT)
                break;
            check(s, "fetch");
            for (int i = 0; i < list.Count; i++)
                check(natsMsg_Ack(list.Msgs[i], NULL), "ack");
            got += list.Count;
            natsMsgList_Destroy(&list);
        }
        check(natsConnection_Flush(nc), "flush");
        printf("{\"js_fetch_ack_per_s\":%.0f,\"consumed\":%ld}\n",
               (double)got / (now_s() - t0), got);
        natsSubscription_Unsubscribe(sub); /* deletes the consumer */
        natsSubscription_Destroy(sub);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return 0;
}
