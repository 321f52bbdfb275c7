/*
 * baseline_ring.c - the yardstick for the memory backend: a plain bounded
 * ring buffer of pointers guarded by one mutex and two condition variables,
 * one producer thread and one consumer thread, the way most programs would
 * write an in-process queue.  Prints pointers per second.
 *
 *   baseline_ring [count] [capacity]     (defaults 4000000 and 65536)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct ring {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    void **slots;
    size_t cap, head, n;
};

static struct ring r;
static long count;

static void put(void *p)
{
    pthread_mutex_lock(&r.mu);
    while (r.n == r.cap)
        pthread_cond_wait(&r.not_full, &r.mu);
    r.slots[(r.head + r.n++) % r.cap] = p;
    pthread_cond_signal(&r.not_empty);
    pthread_mutex_unlock(&r.mu);
}

static void *take(void)
{
    pthread_mutex_lock(&r.mu);
    while (r.n == 0)
        pthread_cond_wait(&r.not_empty, &r.mu);
    void *p = r.slots[r.head];
    r.head = (r.head + 1) % r.cap;
    r.n--;
    pthread_cond_signal(&r.not_full);
    pthread_mutex_unlock(&r.mu);
    return p;
}

static void *producer(void *arg)
{
    (void)arg;
    for (long i = 1; i <= count; i++)
        put((void *)(uintptr_t)i);
    return NULL;
}

int main(int argc, char **argv)
{
    count = argc > 1 ? atol(argv[1]) : 4000000;
    r.cap = argc > 2 ? (size_t)atol(argv[2]) : 65536;
    if (count <= 0 || r.cap == 0) {
        fprintf(stderr, "usage: baseline_ring [count] [capacity]\n");
        return 2;
    }
    r.slots = malloc(r.cap * sizeof *r.slots);
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.not_empty, NULL);
    pthread_cond_init(&r.not_full, NULL);

    struct timespec a, b;
    pthread_t t;
    uintptr_t sum = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pthread_create(&t, NULL, producer, NULL);
    for (long i = 0; i < count; i++)
        sum += (uintptr_t)take();
    pthread_join(t, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    if (sum != (uintptr_t)count * (uintptr_t)(count + 1) / 2) {
        fprintf(stderr, "baseline_ring: lost pointers\n");
        return 1;
    }
    printf("{\"baseline_ring_per_s\": %.0f}\n", (double)count / s);
    free(r.slots);
    return 0;
}
