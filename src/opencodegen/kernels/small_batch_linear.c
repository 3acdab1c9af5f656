/* y = x @ w^T + bias for 1..8 rows of x on AVX-512, with fp32 or bf16 weights
 * (see small_batch_linear.py).
 *
 * x [M, K] fp32; w [N, K] fp32 or bf16; bias [N] (the weights' type) or NULL; y [M, N] (the
 * weights' type, bf16 rounded to nearest even); all row-major and contiguous; K % 16 == 0.
 * Decoding a few sequences is bound by reading the weights, so each weight row is read from
 * memory exactly once: two rows at a time against all M rows of x (which stay in L1; for one row
 * of x, 8 fp32 or 4 bf16 weight rows at a time, so that more reads are in flight), 16 lanes
 * per fused multiply-add in fp32 (bf16 weights are widened exactly), with a software prefetch a
 * few rows ahead (the hardware prefetcher alone leaves this loop waiting on DRAM). Every output
 * is summed by one thread in a fixed order, so the result does not depend on the thread count.
 */
#include "bf16.h"

#define LANES 16
#define PREFETCH_BYTES 32768 /* ahead of the rows being read: measured best of 1 ... 32 KiB */

#define TWO_ROWS(NAME, T, LOAD, MM)                                                               \
    static void NAME##_##MM(const void *row0, const void *row1, const float *x, long K,          \
                            float *y0, float *y1) {                                               \
        const T *w0 = row0, *w1 = row1;                                                           \
        __m512 a0[MM], a1[MM];                                                                    \
        _Pragma("GCC unroll 8") for (int m = 0; m < MM; m++) {                                    \
            a0[m] = _mm512_setzero_ps();                                                          \
            a1[m] = _mm512_setzero_ps();                                                          \
        }                                                                                         \
        for (long k = 0; k < K; k += LANES) {                                                     \
            _mm_prefetch((const char *)(w0 + k) + PREFETCH_BYTES, _MM_HINT_T0);                   \
            _mm_prefetch((const char *)(w1 + k) + PREFETCH_BYTES, _MM_HINT_T0);                   \
            __m512 v0 = LOAD(w0 + k), v1 = LOAD(w1 + k);                                          \
            _Pragma("GCC unroll 8") for (int m = 0; m < MM; m++) {                                \
                __m512 xv = _mm512_loadu_ps(x + m * K + k);                                       \
                a0[m] = _mm512_fmadd_ps(v0, xv, a0[m]);                                           \
                a1[m] = _mm512_fmadd_ps(v1, xv, a1[m]);                                           \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 8") for (int m = 0; m < MM; m++) {                                    \
            y0[m] = _mm512_reduce_add_ps(a0[m]);                                                  \
            y1[m] = _mm512_reduce_add_ps(a1[m]);                                                  \
        }                                                                                         \
    }
#define ALL_ROWS(NAME, T, LOAD)                                                                   \
    TWO_ROWS(NAME, T, LOAD, 1) TWO_ROWS(NAME, T, LOAD, 2) TWO_ROWS(NAME, T, LOAD, 3)              \
    TWO_ROWS(NAME, T, LOAD, 4) TWO_ROWS(NAME, T, LOAD, 5) TWO_ROWS(NAME, T, LOAD, 6)              \
    TWO_ROWS(NAME, T, LOAD, 7) TWO_ROWS(NAME, T, LOAD, 8)
ALL_ROWS(f32, float, load_f32)
ALL_ROWS(bf16, uint16_t, load_bf16)

typedef void (*two_rows_fn)(const void *, const void *, const float *, long, float *, float *);
static const two_rows_fn F32_ROWS[9] = {0, f32_1, f32_2, f32_3, f32_4, f32_5, f32_6, f32_7, f32_8};
static const two_rows_fn BF16_ROWS[9] = {0, bf16_1, bf16_2, bf16_3, bf16_4, bf16_5, bf16_6, bf16_7, bf16_8};

/* One row of x against R weight rows, two accumulators each (K % 32 == 0): for one row this
 * keeps more reads in flight than two weight rows at a time. */
#define ONE_ROW(NAME, T, LOAD, R)                                                                 \
    static void NAME(const char *w, long row_bytes, long n, long N, const float *x, long K, float *y) { \
        const T *rows[R];                                                                         \
        __m512 a[R][2];                                                                           \
        for (long r = 0; r < R; r++) {                                                            \
            rows[r] = (const T *)(w + (n + r < N ? n + r : n) * row_bytes); /* past N: row n again */ \
            a[r][0] = a[r][1] = _mm512_setzero_ps();                                              \
        }                                                                                         \
        for (long k = 0; k < K; k += 2 * LANES) {                                                 \
            __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + LANES);              \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                                 \
                _mm_prefetch((const char *)(rows[r] + k) + PREFETCH_BYTES, _MM_HINT_T0);          \
                if (sizeof(T) == 4) _mm_prefetch((const char *)(rows[r] + k + LANES) + PREFETCH_BYTES, _MM_HINT_T0); \
                a[r][0] = _mm512_fmadd_ps(LOAD(rows[r] + k), x0, a[r][0]);                        \
                a[r][1] = _mm512_fmadd_ps(LOAD(rows[r] + k + LANES), x1, a[r][1]);                \
            }                                                                                     \
        }                                                                                         \
        for (int r = 0; r < R; r++) y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1])); \
    }
#define F32_ONE_ROW_RUN 8  /* weight rows per call, measured best (paired, 350M layers) */
#define BF16_ONE_ROW_RUN 4
ONE_ROW(f32_one_row, float, load_f32, F32_ONE_ROW_RUN)
ONE_ROW(bf16_one_row, uint16_t, load_bf16, BF16_ONE_ROW_RUN)

static int run(const float *x, const char *w, const void *bias, void *y, long M, long N, long K,
               int threads, int bf16) {
    if (M < 1 || M > 8 || N < 1 || K < LANES || K % LANES != 0 || threads < 1) return -1;
    two_rows_fn two_rows = (bf16 ? BF16_ROWS : F32_ROWS)[M];
    long row_bytes = K * (bf16 ? 2 : 4);
    int one_row = M == 1 && K % (2 * LANES) == 0;
    long step = one_row ? (bf16 ? BF16_ONE_ROW_RUN : F32_ONE_ROW_RUN) : 2; /* weight rows per call */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n += step) {
        float sums[8][8];
        if (one_row) {
            float one[8];
            (bf16 ? bf16_one_row : f32_one_row)(w, row_bytes, n, N, x, K, one);
            for (long r = 0; r < step; r++) sums[r][0] = one[r];
        } else {
            const char *w0 = w + n * row_bytes, *w1 = n + 1 < N ? w0 + row_bytes : w0; /* odd N */
            two_rows(w0, w1, x, K, sums[0], sums[1]);
        }
        for (long j = n; j < n + step && j < N; j++) {
            float b = !bias ? 0.0f : bf16 ? bf16_to_f32(((const uint16_t *)bias)[j]) : ((const float *)bias)[j];
            for (long m = 0; m < M; m++) {
                if (bf16)
                    ((uint16_t *)y)[m * N + j] = f32_to_bf16(sums[j - n][m] + b);
                else
                    ((float *)y)[m * N + j] = sums[j - n][m] + b;
            }
        }
    }
    return 0;
}

/* Both return 0, or -1 (and write nothing) for shapes they do not handle. */
int small_batch_linear(const float *x, const float *w, const float *bias, float *y, long M, long N,
                       long K, int threads) {
    return run(x, (const char *)w, bias, y, M, N, K, threads, 0);
}

int small_batch_linear_bf16(const float *x, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                            long M, long N, long K, int threads) {
    return run(x, (const char *)w, bias, y, M, N, K, threads, 1);
}
