// How often the machine takes a core away from a running thread, and for how long:
// each thread, pinned to its own CPU, reads the clock in a tight loop for a few
// seconds and counts the gaps between two reads. A gap is time the thread did not run:
// an interrupt, or (in a virtual machine) the host running something else on that
// core, which the guest does not always see as "steal" time. A training step on two
// threads waits at every join for the later thread, so a gap on either core delays the
// whole step; on one thread only that core's gaps count.
//
//   gcc -O2 -Wall -Wextra -pthread benches/probes/gaps.c -o target/gaps && target/gaps 2 5
//
// Arguments: threads (default 2, one per CPU from CPU 0) and seconds (default 5). Linux
// only (it pins threads with pthread_setaffinity_np).
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

// Gap thresholds in microseconds; a gap counts under every threshold it exceeds.
#define BINS 5
static const double LIMITS_US[BINS] = {5, 10, 20, 50, 100};
static double seconds = 5;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *watch(void *arg) {
    long cpu = (long)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        fprintf(stderr, "cannot pin a thread to CPU %ld\n", cpu);
        exit(1);
    }
    long count[BINS] = {0};
    double lost = 0; // seconds in gaps over the first threshold
    double last = now(), end = last + seconds;
    while (last < end) {
        double t = now(), gap_us = (t - last) * 1e6;
        for (int i = 0; i < BINS && gap_us > LIMITS_US[i]; i++) {
            count[i]++;
        }
        if (gap_us > LIMITS_US[0]) {
            lost += t - last;
        }
        last = t;
    }
    printf("CPU %ld: gaps a second", cpu);
    for (int i = 0; i < BINS; i++) {
        printf(", over %.0f us %.0f", LIMITS_US[i], count[i] / seconds);
    }
    printf("; time lost in gaps over %.0f us: %.2f%%\n", LIMITS_US[0], lost / seconds * 100);
    return NULL;
}

int main(int argc, char **argv) {
    long threads = argc > 1 ? atol(argv[1]) : 2;
    seconds = argc > 2 ? atof(argv[2]) : 5;
    if (threads < 1 || threads > 64 || !(seconds > 0)) {
        fprintf(stderr, "usage: gaps [threads 1-64] [seconds]\n");
        return 1;
    }
    pthread_t ids[64];
    for (long t = 0; t < threads; t++) {
        pthread_create(&ids[t], NULL, watch, (void *)t);
    }
    for (long t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
    }
    return 0;
}
