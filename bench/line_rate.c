/*
 * line_rate.c - the rate at which lines arrive on standard input, timed
 * from the first line to the last, so a consumer's start (connecting,
 * reading metadata) is left out as it is from evq bench's drain:
 *
 *   kcat -C ... -f '%o\n' | line_rate
 *
 * prints "LINES lines, RATE per second".
 */
#include <stdio.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(void)
{
    char buf[65536];
    long lines = 0;
    double first = 0, last = 0;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        for (size_t i = 0; i < n; i++) {
            if (buf[i] != '\n')
                continue;
            last = now_s();
            if (lines++ == 0)
                first = last;
        }
    }
    if (lines < 2 || last <= first) {
        fprintf(stderr, "line_rate: %ld lines, too few to time\n", lines);
        return 1;
    }
    printf("%ld lines, %.0f per second\n", lines,
           (double)(lines - 1) / (last - first));
    return 0;
}
