// How often the machine takes a core away from a running thread, and for how long:
// each thread, pinned to its own CPU, reads the clock in a tight loop for a few
// seconds and counts the gaps between two reads. A gap is time the thread did not run:
// an interrupt, or (in a virtual machine) the host running something else on that
// core, which the guest does not always see as "steal" time. A training step on two
// threads waits at every join for the later thread, so a gap on either core delays the
// whole step; on one thread only that core's gaps count.
//
//   gcc -O2 -Wall -Wextra -pthread benches/probes/gaps.c -o target/gaps -lm && target/gaps 2 5
//
// Arguments: threads (default 2, each pinned to one of the CPUs this process may use, in
// order) and seconds (default 5). Linux only (it pins threads with
// pthread_setaffinity_np).
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

// Gap thresholds in microseconds; a gap counts under every threshold it exceeds.
#define BINS 5
static const double LIMITS_US[BINS] = {5, 10, 20, 50, 100};
#define MAX_THREADS 64

// One thread's CPU and, once it has run, what it saw.
struct watch {
    int cpu;
    long count[BINS];
    double lost; // seconds in gaps over the first threshold
};

static double seconds = 5;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *watch(void *arg) {
    struct watch *w = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        fprintf(stderr, "cannot pin a thread to CPU %d\n", w->cpu);
        exit(1);
    }
    double last = now(), end = last + seconds;
    while (last < end) {
        double t = now(), gap_us = (t - last) * 1e6;
        for (int i = 0; i < BINS && gap_us > LIMITS_US[i]; i++) {
            w->count[i]++;
        }
        if (gap_us > LIMITS_US[0]) {
            w->lost += t - last;
        }
        last = t;
    }
    return NULL;
}

int main(int argc, char **argv) {
    long threads = argc > 1 ? atol(argv[1]) : 2;
    seconds = argc > 2 ? atof(argv[2]) : 5;
    if (threads < 1 || threads > MAX_THREADS || !(seconds > 0) || !isfinite(seconds)) {
        fprintf(stderr, "usage: gaps [threads 1-%d] [seconds]\n", MAX_THREADS);
        return 1;
    }
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || CPU_COUNT(&allowed) < threads) {
        fprintf(stderr, "this process may not use %ld CPUs\n", threads);
        return 1;
    }
    struct watch watches[MAX_THREADS] = {0};
    pthread_t ids[MAX_THREADS];
    for (int cpu = 0, t = 0; t < threads; cpu++) {
        if (CPU_ISSET(cpu, &allowed)) {
            watches[t].cpu = cpu;
            if (pthread_create(&ids[t], NULL, watch, &watches[t]) != 0) {
                fprintf(stderr, "cannot start thread %d\n", t);
                return 1;
            }
            t++;
        }
    }
    for (long t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
    }
    for (long t = 0; t < threads; t++) {
        const struct watch *w = &watches[t];
        printf("CPU %d: gaps a second", w->cpu);
        for (int i = 0; i < BINS; i++) {
            printf(", over %.0f us %.1f", LIMITS_US[i], w->count[i] / seconds);
        }
        printf("; time lost in gaps over %.0f us: %.2f%%\n", LIMITS_US[0], w->lost / seconds * 100);
    }
    return 0;
}
