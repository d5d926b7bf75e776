// Whether two threads get two cores' worth of vector arithmetic: 16 independent
// chains of 512-bit multiplies and adds (no memory), run on one thread and then on
// two at once. On two separate cores each thread keeps its one-thread rate; on two
// hyperthreads of one core (or a host that runs both virtual CPUs on one) it halves.
//
//   gcc -O2 -mavx512f -pthread benches/probes/cores.c -o target/cores && target/cores 1 && target/cores 2
//
// x86-64 with AVX-512 only (the loop is written in assembly so that no compiler can
// merge or drop its chains).
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static const long ROUNDS = 100000000;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *chains(void *unused) {
    (void)unused;
    long n = ROUNDS;
    __asm__ volatile(
        // Every register the chains use starts at zero (a leftover denormal could slow
        // the first rounds on some CPUs).
        "vxorps %%zmm0,%%zmm0,%%zmm0\n vxorps %%zmm1,%%zmm1,%%zmm1\n"
        "vxorps %%zmm2,%%zmm2,%%zmm2\n vxorps %%zmm3,%%zmm3,%%zmm3\n"
        "vxorps %%zmm4,%%zmm4,%%zmm4\n vxorps %%zmm5,%%zmm5,%%zmm5\n"
        "vxorps %%zmm6,%%zmm6,%%zmm6\n vxorps %%zmm7,%%zmm7,%%zmm7\n"
        "vxorps %%zmm8,%%zmm8,%%zmm8\n vxorps %%zmm9,%%zmm9,%%zmm9\n"
        "vxorps %%zmm10,%%zmm10,%%zmm10\n vxorps %%zmm11,%%zmm11,%%zmm11\n"
        "vxorps %%zmm12,%%zmm12,%%zmm12\n vxorps %%zmm13,%%zmm13,%%zmm13\n"
        "vxorps %%zmm14,%%zmm14,%%zmm14\n vxorps %%zmm15,%%zmm15,%%zmm15\n"
        "vxorps %%zmm16,%%zmm16,%%zmm16\n"
        "1:\n"
        "vmulps %%zmm16,%%zmm0,%%zmm0\n vaddps %%zmm16,%%zmm1,%%zmm1\n"
        "vmulps %%zmm16,%%zmm2,%%zmm2\n vaddps %%zmm16,%%zmm3,%%zmm3\n"
        "vmulps %%zmm16,%%zmm4,%%zmm4\n vaddps %%zmm16,%%zmm5,%%zmm5\n"
        "vmulps %%zmm16,%%zmm6,%%zmm6\n vaddps %%zmm16,%%zmm7,%%zmm7\n"
        "vmulps %%zmm16,%%zmm8,%%zmm8\n vaddps %%zmm16,%%zmm9,%%zmm9\n"
        "vmulps %%zmm16,%%zmm10,%%zmm10\n vaddps %%zmm16,%%zmm11,%%zmm11\n"
        "vmulps %%zmm16,%%zmm12,%%zmm12\n vaddps %%zmm16,%%zmm13,%%zmm13\n"
        "vmulps %%zmm16,%%zmm14,%%zmm14\n vaddps %%zmm16,%%zmm15,%%zmm15\n"
        "dec %0\n jnz 1b\n"
        : "+r"(n)
        :
        : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16");
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 64) {
        fprintf(stderr, "usage: cores THREADS (1 to 64)\n");
        return 2;
    }
    pthread_t ids[64];
    double start = now();
    for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, chains, NULL);
    for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    double seconds = now() - start;
    printf("%d thread(s): %.3f s, %.2f G 512-bit multiplies and adds a second per thread\n",
           threads, seconds, ROUNDS * 16.0 / seconds / 1e9);
    return 0;
}
