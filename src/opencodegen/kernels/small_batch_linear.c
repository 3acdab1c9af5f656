/* y = x @ w^T + bias for 2..8 rows of x, fp32, AVX-512 (see small_batch_linear.py).
 *
 * x [M, K], w [N, K], y [M, N], all row-major and contiguous; bias [N] or NULL; K % 16 == 0.
 * Decoding a few sequences is bound by reading the weights, so each weight row is read from
 * memory exactly once: two rows at a time against all M rows of x (which stay in L1), 16 lanes
 * per fused multiply-add, with a software prefetch a few rows ahead (the hardware prefetcher
 * alone leaves this loop waiting on DRAM). Every output is summed by one thread in a fixed
 * order, so the result does not depend on the number of threads.
 */
#include <immintrin.h>

#define LANES 16
#define PREFETCH_AHEAD 8192 /* floats (32 KiB): measured best of 256 ... 8192 on a 2-core Xeon */

#define TWO_ROWS(MM)                                                                              \
    static void two_rows_##MM(const float *w0, const float *w1, const float *x, long K,          \
                              float *y0, float *y1) {                                             \
        __m512 a0[MM], a1[MM];                                                                    \
        _Pragma("GCC unroll 8") for (int m = 0; m < MM; m++) {                                    \
            a0[m] = _mm512_setzero_ps();                                                          \
            a1[m] = _mm512_setzero_ps();                                                          \
        }                                                                                         \
        for (long k = 0; k < K; k += LANES) {                                                     \
            _mm_prefetch((const char *)(w0 + k + PREFETCH_AHEAD), _MM_HINT_T0);                   \
            _mm_prefetch((const char *)(w1 + k + PREFETCH_AHEAD), _MM_HINT_T0);                   \
            __m512 v0 = _mm512_loadu_ps(w0 + k), v1 = _mm512_loadu_ps(w1 + k);                    \
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

TWO_ROWS(2)
TWO_ROWS(3)
TWO_ROWS(4)
TWO_ROWS(5)
TWO_ROWS(6)
TWO_ROWS(7)
TWO_ROWS(8)

typedef void (*two_rows_fn)(const float *, const float *, const float *, long, float *, float *);
static const two_rows_fn TWO_ROWS_OF[9] = {0, 0, two_rows_2, two_rows_3, two_rows_4,
                                           two_rows_5, two_rows_6, two_rows_7, two_rows_8};

/* Returns 0, or -1 (and writes nothing) for shapes it does not handle. */
int small_batch_linear(const float *x, const float *w, const float *bias, float *y, long M, long N,
                       long K, int threads) {
    if (M < 2 || M > 8 || N < 1 || K < LANES || K % LANES != 0 || threads < 1) return -1;
    two_rows_fn two_rows = TWO_ROWS_OF[M];
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n += 2) {
        const float *w0 = w + n * K, *w1 = n + 1 < N ? w0 + K : w0; /* odd N: the last row twice */
        float y0[8], y1[8];
        two_rows(w0, w1, x, K, y0, y1);
        float b0 = bias ? bias[n] : 0.0f, b1 = bias && n + 1 < N ? bias[n + 1] : 0.0f;
        for (long m = 0; m < M; m++) {
            y[m * N + n] = y0[m] + b0;
            if (n + 1 < N) y[m * N + n + 1] = y1[m] + b1;
        }
    }
    return 0;
}
