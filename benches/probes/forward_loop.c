// The sparse forward's inner loop, alone, on real MNIST images: for each nonzero pixel
// (a "term"), z += (pixel·scale·coef[col])·W[col], with W 784×128 floats (401 KB, so in
// the level-2 cache and not the level-1). The same instructions as the AVX-512 version
// of `forward_one` in src/cpu/sparse.rs (one 128-wide row in 8 registers, a multiply and
// an add for each 16 lanes), so that variants can be timed without a Rust build:
//
//   as trained      the loop as the trainer runs it
//   loads + adds    the same rows read and added, no multiply: the time of reading them
//   fused           one fused multiply-add instead (other bits: for comparison only)
//   columns         the same sums from the batch transposed in tiles of 64 images: each
//                   kernel row read once a tile into registers, each image's 128 sums
//                   loaded, added to and stored back for every pixel (the same bits,
//                   which it checks; the transpose itself is not timed)
//
// On one thread the first three run twice: with the kernel's rows as they are, then
// confined to its first 64 rows (32 KB, in the level-1 cache; wrong results, for timing
// only); "columns" runs with the rows as they are, and a line says how much two images'
// nonzero pixels overlap (the union of consecutive pairs' pixels against the sum of their
// counts). On two threads, each thread runs "as trained" on its half of the batch, after
// (with ADAM=1) writing its half of W's rows, as Adam does in the training step, so that
// half of the rows each thread reads were last written by the other core.
//
//   gcc -O3 -ffp-contract=off -mavx512f -pthread benches/probes/forward_loop.c -o target/forward_loop
//   zcat assets/mnist/train-images-idx3-ubyte.gz | target/forward_loop 128 1
//   zcat assets/mnist/train-images-idx3-ubyte.gz | target/forward_loop 128 2 1
//
// Prints ns per term, the fastest and the median of 300 repetitions. x86-64 with
// AVX-512 only.
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N 128
#define PIXELS 784
#define IMAGES 60000
#define REPS 300
#define FIRST_IMAGE 1000

static uint16_t cols[IMAGES * PIXELS / 2];
static uint8_t vals[IMAGES * PIXELS / 2];
static uint32_t starts[IMAGES + 1];
static float *W, coef[PIXELS], row[N], z[4096 * N];
static int batch, threads, adam;
static pthread_barrier_t barrier;
static double times[2][REPS];
static long terms[2];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float term(uint32_t k, float scale) { return (float)vals[k] * scale * coef[cols[k]]; }

// An image's 128 sums in 8 registers: they start at the folded row, and end in ReLU.
static inline void start_sums(__m512 acc[8]) {
    for (int i = 0; i < 8; i++) acc[i] = _mm512_loadu_ps(row + 16 * i);
}

static inline void finish_sums(const __m512 acc[8], float *out) {
    for (int i = 0; i < 8; i++) _mm512_storeu_ps(out + 16 * i, _mm512_max_ps(acc[i], _mm512_setzero_ps()));
}

static void as_trained(int image, float scale, float *out) {
    __m512 acc[8];
    start_sums(acc);
    for (uint32_t k = starts[image]; k < starts[image + 1]; k++) {
        __m512 a = _mm512_set1_ps(term(k, scale));
        const float *w = W + cols[k] * N;
        for (int i = 0; i < 8; i++)
            acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(a, _mm512_load_ps(w + 16 * i)));
    }
    finish_sums(acc, out);
}

static void loads_and_adds(int image, float scale, float *out) {
    (void)scale;
    __m512 acc[8];
    start_sums(acc);
    for (uint32_t k = starts[image]; k < starts[image + 1]; k++) {
        const float *w = W + cols[k] * N;
        for (int i = 0; i < 8; i++) acc[i] = _mm512_add_ps(acc[i], _mm512_load_ps(w + 16 * i));
    }
    finish_sums(acc, out);
}

static void fused(int image, float scale, float *out) {
    __m512 acc[8];
    start_sums(acc);
    for (uint32_t k = starts[image]; k < starts[image + 1]; k++) {
        __m512 a = _mm512_set1_ps(term(k, scale));
        const float *w = W + cols[k] * N;
        for (int i = 0; i < 8; i++) acc[i] = _mm512_fmadd_ps(a, _mm512_load_ps(w + 16 * i), acc[i]);
    }
    finish_sums(acc, out);
}

// The batch transposed in tiles of TILE images: for tile t, pixel column j's entries
// (image in the tile << 8 | value) are tile_entries[t][tile_starts[t][j]..[j + 1]].
#define TILE 64
static uint32_t tile_starts[4096 / TILE][PIXELS + 1];
static uint16_t tile_entries[4096 / TILE][TILE * PIXELS];

static void transpose_batch(void) {
    for (int t = 0; t * TILE < batch; t++) {
        int images = batch - t * TILE < TILE ? batch - t * TILE : TILE;
        uint32_t count[PIXELS + 1] = {0}, at[PIXELS];
        for (int b = 0; b < images; b++)
            for (uint32_t k = starts[FIRST_IMAGE + t * TILE + b]; k < starts[FIRST_IMAGE + t * TILE + b + 1]; k++)
                count[cols[k] + 1]++;
        for (int j = 0; j < PIXELS; j++) tile_starts[t][j + 1] = tile_starts[t][j] + count[j + 1];
        for (int j = 0; j < PIXELS; j++) at[j] = tile_starts[t][j];
        for (int b = 0; b < images; b++)
            for (uint32_t k = starts[FIRST_IMAGE + t * TILE + b]; k < starts[FIRST_IMAGE + t * TILE + b + 1]; k++)
                tile_entries[t][at[cols[k]]++] = (uint16_t)(b << 8 | vals[k]);
    }
}

// The whole batch (not one image) from the transposed tiles, into z.
static void columns(float scale) {
    for (int t = 0; t * TILE < batch; t++) {
        int images = batch - t * TILE < TILE ? batch - t * TILE : TILE;
        float *tile = z + t * TILE * N;
        for (int b = 0; b < images; b++)
            for (int i = 0; i < 8; i++) _mm512_storeu_ps(tile + b * N + 16 * i, _mm512_loadu_ps(row + 16 * i));
        for (int j = 0; j < PIXELS; j++) {
            uint32_t first = tile_starts[t][j], end = tile_starts[t][j + 1];
            if (first == end) continue;
            __m512 w[8];
            for (int i = 0; i < 8; i++) w[i] = _mm512_load_ps(W + j * N + 16 * i);
            for (uint32_t k = first; k < end; k++) {
                uint16_t entry = tile_entries[t][k];
                float *out = tile + (entry >> 8) * N;
                __m512 a = _mm512_set1_ps((float)(entry & 255) * scale * coef[j]);
                for (int i = 0; i < 8; i++)
                    _mm512_storeu_ps(out + 16 * i, _mm512_add_ps(_mm512_loadu_ps(out + 16 * i), _mm512_mul_ps(a, w[i])));
            }
        }
        for (int b = 0; b < images * N; b += 16)
            _mm512_storeu_ps(tile + b, _mm512_max_ps(_mm512_loadu_ps(tile + b), _mm512_setzero_ps()));
    }
}

typedef void (*variant)(int, float, float *);

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint8_t *dense;

// Reads the IDX images from stdin.
static void read_images(void) {
    uint8_t header[16];
    dense = malloc((size_t)IMAGES * PIXELS);
    if (fread(header, 1, 16, stdin) != 16 || fread(dense, PIXELS, IMAGES, stdin) != IMAGES) {
        fprintf(stderr, "expected the 60,000 training images (IDX) on stdin\n");
        exit(1);
    }
}

// The images in sparse rows; with `rows_kept` < 784, every pixel's row is taken modulo it.
static void sparse_rows(int rows_kept) {
    uint32_t nonzero = 0;
    for (int i = 0; i < IMAGES; i++) {
        starts[i] = nonzero;
        if (nonzero + PIXELS > sizeof cols / sizeof cols[0]) {
            fprintf(stderr, "more nonzero pixels than MNIST's: not the training images?\n");
            exit(1);
        }
        for (int j = 0; j < PIXELS; j++)
            if (dense[i * PIXELS + j]) cols[nonzero] = j % rows_kept, vals[nonzero++] = dense[i * PIXELS + j];
    }
    starts[IMAGES] = nonzero;
}

static void *run_share(void *arg) {
    long t = (long)arg;
    int share = batch / threads, first = FIRST_IMAGE + t * share;
    terms[t] = starts[first + share] - starts[first];
    for (int rep = 0; rep < REPS; rep++) {
        if (adam)
            for (long i = (long)t * PIXELS / threads * N; i < (long)(t + 1) * PIXELS / threads * N; i++)
                W[i] = W[i] * 0.99999f + 1e-7f;
        if (threads > 1) pthread_barrier_wait(&barrier);
        double start = now();
        for (int b = 0; b < share; b++) as_trained(first + b, 1.0f / 255, z + (t * share + b) * N);
        times[t][rep] = now() - start;
        if (threads > 1) pthread_barrier_wait(&barrier);
    }
    qsort(times[t], REPS, sizeof(double), by_value);
    return NULL;
}

// Sorts the repetitions' times and prints the fastest and the median per term.
static void report(const char *name, const char *rows, double all[REPS], long count, const char *note) {
    qsort(all, REPS, sizeof(double), by_value);
    printf("%-13s rows %-9s fastest %.2f, median %.2f ns a term%s\n", name, rows, all[0] * 1e9 / count,
           all[REPS / 2] * 1e9 / count, note);
}

static void time_variants(const char *rows) {
    variant variants[] = {as_trained, loads_and_adds, fused};
    const char *names[] = {"as trained", "loads + adds", "fused"};
    long count = starts[FIRST_IMAGE + batch] - starts[FIRST_IMAGE];
    for (int v = 0; v < 3; v++) {
        double all[REPS];
        for (int rep = 0; rep < REPS; rep++) {
            double start = now();
            for (int b = 0; b < batch; b++) variants[v](FIRST_IMAGE + b, 1.0f / 255, z + b * N);
            all[rep] = now() - start;
        }
        report(names[v], rows, all, count, "");
    }
}

// How much two images' nonzero pixels overlap: the size of the union of consecutive
// pairs' pixel sets against the sum of their sizes, over the first 10,000 pairs.
static void pair_overlap(void) {
    double union_size = 0, sizes = 0;
    for (int i = 0; i < 20000; i += 2) {
        for (int j = 0; j < PIXELS; j++) {
            int a = dense[i * PIXELS + j] != 0, b = dense[(i + 1) * PIXELS + j] != 0;
            union_size += a || b;
            sizes += a + b;
        }
    }
    printf("two images' nonzero pixels: their union is %.3f of the two counts\n", union_size / sizes);
}

// The columns variant against as_trained: its time, and whether its bits are the same.
static void time_columns(void) {
    static float expected[4096 * N];
    long count = starts[FIRST_IMAGE + batch] - starts[FIRST_IMAGE];
    for (int b = 0; b < batch; b++) as_trained(FIRST_IMAGE + b, 1.0f / 255, expected + b * N);
    transpose_batch();
    double all[REPS];
    for (int rep = 0; rep < REPS; rep++) {
        double start = now();
        columns(1.0f / 255);
        all[rep] = now() - start;
    }
    int same = memcmp(expected, z, (size_t)batch * N * sizeof(float)) == 0;
    report("columns", "all", all, count, same ? " (the same bits)" : " (OTHER bits)");
}

int main(int argc, char **argv) {
    batch = argc > 1 ? atoi(argv[1]) : 128;
    threads = argc > 2 ? atoi(argv[2]) : 1;
    adam = argc > 3 ? atoi(argv[3]) : 0;
    if (batch < 2 || batch > 4096 || threads < 1 || threads > 2) {
        fprintf(stderr, "usage: forward_loop BATCH (2 to 4096) THREADS (1 or 2) [ADAM 0 or 1] < IDX images\n");
        return 2;
    }
    W = aligned_alloc(64, PIXELS * N * sizeof(float));
    for (int i = 0; i < PIXELS * N; i++) W[i] = (rand() % 1000) / 1000.0f - 0.5f;
    for (int j = 0; j < PIXELS; j++) coef[j] = 1.0f + j * 1e-3f;
    read_images();
    sparse_rows(PIXELS);
    printf("batch %d, %d thread(s)%s\n", batch, threads, adam ? ", each writing its half of W first" : "");
    if (threads == 1 && !adam) {
        time_variants("all");
        time_columns();
        pair_overlap();
        sparse_rows(64);
        time_variants("first 64");
        return 0;
    }
    pthread_barrier_init(&barrier, NULL, threads);
    pthread_t ids[2];
    for (long t = 0; t < threads; t++) pthread_create(&ids[t], NULL, run_share, (void *)t);
    for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    for (int t = 0; t < threads; t++)
        printf("as trained, thread %d: fastest %.2f, median %.2f ns a term\n", t,
               times[t][0] * 1e9 / terms[t], times[t][REPS / 2] * 1e9 / terms[t]);
    return 0;
}
