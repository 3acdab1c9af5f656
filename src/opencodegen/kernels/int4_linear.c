/* y = x @ dequant(w)^T + bias with 4-bit weights, on AVX-512 VNNI (see int4_linear.py).
 *
 * Weights: groups of 32 consecutive inputs share one fp16 scale d; a weight is d * (q - 8) with
 * q in 0 … 15. A block of 128 inputs (4 groups) is 64 bytes: byte 16 g + p holds q of input
 * 32 g + p in its low nibble and of input 32 g + 16 + p in its high nibble (g < 4, p < 16).
 * w [N, K/128, 64] bytes; scales [N, K/32] fp16; K % 128 == 0.
 * Activations are quantized per call to int8, one scale per row (s = max|x| / 127, x ≈ s *
 * round(x / s)), so each group's dot product is exact in int32 (vpdpbusd: unsigned weight nibbles
 * times signed activations, minus 8 times the activations' sum); the groups' d * dot are summed
 * in fp32 (16 lanes, reduced in a fixed order: the result does not depend on the thread count)
 * and scaled by s at the end. Decoding reads each weight byte once: 4.5 bits per weight.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define GROUP 32
#define BLOCK 128            /* inputs per 64-byte weight block */
#define MAX_ROWS 8           /* activation rows multiplied with one pass over the weights */
#define PREFETCH_BYTES 4096  /* read ahead of the weight row being multiplied */
#define COLUMN_TILE 32       /* output columns per unit of work */

typedef struct {   /* one activation row's block, laid out like a weight block */
    int8_t low[64];   /* inputs 32 g + p (g < 4, p < 16) at 16 g + p */
    int8_t high[64];  /* inputs 32 g + 16 + p */
    __m512i correction;  /* per lane: -8 times the sum of the 8 activations its nibbles meet */
} act_block;

/* One row of x as int8 with one scale (returned): max|x| / 127. Rounds to nearest even (the
 * default rounding mode), as torch.round does. */
static float quantize_row(const float *x, long K, act_block *out) {
    __m512 amax = _mm512_setzero_ps();
    for (long k = 0; k < K; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    float top = _mm512_reduce_max_ps(amax);
    const __m512 inv = _mm512_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
    const __m512i eights = _mm512_set1_epi8(8);
    for (long b = 0; b < K / BLOCK; b++) {
        act_block *a = out + b;
        for (int g = 0; g < 4; g++) {
            const float *v = x + b * BLOCK + g * GROUP;
            _mm_storeu_si128((__m128i *)(a->low + 16 * g),
                             _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v), inv))));
            _mm_storeu_si128((__m128i *)(a->high + 16 * g),
                             _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + 16), inv))));
        }
        __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), eights, _mm512_loadu_si512(a->low));
        sum = _mm512_dpbusd_epi32(sum, eights, _mm512_loadu_si512(a->high));
        a->correction = _mm512_sub_epi32(_mm512_setzero_si512(), sum);
    }
    return top / 127.0f;
}

static const int32_t SPREAD[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};

/* rows r0 … r0 + MM of y, output column n */
#define ONE_COLUMN(MM)                                                                           \
    static void column_##MM(const uint8_t *w, const uint16_t *d, const act_block *act, long blocks, \
                            float *out) {                                                        \
        const __m512i nibble = _mm512_set1_epi8(0x0F), spread = _mm512_loadu_si512(SPREAD);      \
        __m512 acc[MM];                                                                          \
        _Pragma("GCC unroll 8") for (int m = 0; m < MM; m++) acc[m] = _mm512_setzero_ps();       \
        for (long b = 0; b < blocks; b++) {                                                      \
            _mm_prefetch((const char *)(w + 64 * b) + PREFETCH_BYTES, _MM_HINT_T0);              \
            __m512i q = _mm512_loadu_si512(w + 64 * b);                                          \
            __m512i low = _mm512_and_si512(q, nibble);                                           \
            __m512i high = _mm512_and_si512(_mm512_srli_epi16(q, 4), nibble);                    \
            __m128 d4 = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(d + 4 * b)));             \
            __m512 dw = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(d4));               \
            _Pragma("GCC unroll 8") for (int m = 0; m < MM; m++) {                               \
                const act_block *a = act + m * blocks + b;                                       \
                __m512i dot = _mm512_dpbusd_epi32(a->correction, low, _mm512_loadu_si512(a->low)); \
                dot = _mm512_dpbusd_epi32(dot, high, _mm512_loadu_si512(a->high));               \
                acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), dw, acc[m]);                   \
            }                                                                                    \
        }                                                                                        \
        _Pragma("GCC unroll 8") for (int m = 0; m < MM; m++) out[m] = _mm512_reduce_add_ps(acc[m]); \
    }
ONE_COLUMN(1)
ONE_COLUMN(2)
ONE_COLUMN(3)
ONE_COLUMN(4)
ONE_COLUMN(5)
ONE_COLUMN(6)
ONE_COLUMN(7)
ONE_COLUMN(8)

typedef void (*column_fn)(const uint8_t *, const uint16_t *, const act_block *, long, float *);
static const column_fn COLUMNS[MAX_ROWS + 1] = {0,        column_1, column_2, column_3, column_4,
                                                column_5, column_6, column_7, column_8};

/* x [M, K] fp32, w and scales as above, bias [N] fp32 or NULL, y [M, N] fp32.
 * Columns are shared out to the threads in tiles of COLUMN_TILE; a tile's weights (at most
 * 64 KiB for K = 4096) stay in cache while every MAX_ROWS rows of activations pass over them.
 * Returns 0, or -1 for a bad shape, -2 when out of memory. */
int int4_linear(const float *x, const uint8_t *w, const uint16_t *scales, const float *bias, float *y,
                long M, long N, long K, int threads) {
    if (M < 1 || N < 1 || K < BLOCK || K % BLOCK) return -1;
    long blocks = K / BLOCK, tiles = (N + COLUMN_TILE - 1) / COLUMN_TILE;
    act_block *act = aligned_alloc(64, sizeof(act_block) * M * blocks);
    float *row_scale = malloc(sizeof(float) * M);
    if (!act || !row_scale) {
        free(act);
        free(row_scale);
        return -2;
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (M > 1)
    for (long m = 0; m < M; m++) row_scale[m] = quantize_row(x + m * K, K, act + m * blocks);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long t = 0; t < tiles; t++) {
        long n_end = (t + 1) * COLUMN_TILE < N ? (t + 1) * COLUMN_TILE : N;
        float out[MAX_ROWS];
        for (long r0 = 0; r0 < M; r0 += MAX_ROWS) {
            long mm = M - r0 < MAX_ROWS ? M - r0 : MAX_ROWS;
            for (long n = t * COLUMN_TILE; n < n_end; n++) {
                COLUMNS[mm](w + n * blocks * 64, scales + n * (K / GROUP), act + r0 * blocks, blocks, out);
                for (long m = 0; m < mm; m++) y[(r0 + m) * N + n] = out[m] * row_scale[r0 + m] + (bias ? bias[n] : 0.0f);
            }
        }
    }
    free(act);
    free(row_scale);
    return 0;
}

/* The packed weights as bf16 [N, K] in input order (each d * (q - 8) rounded to nearest even),
 * for a bf16 matrix multiply when many rows share the weights (prefill, large batches). */
int int4_dequantize_bf16(const uint8_t *w, const uint16_t *scales, uint16_t *out, long N, long K, int threads) {
    if (N < 1 || K < BLOCK || K % BLOCK) return -1;
    long blocks = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        const __m512 eight = _mm512_set1_ps(8.0f);
        for (long b = 0; b < blocks; b++) {
            const uint8_t *q = w + (n * blocks + b) * 64;
            for (int g = 0; g < 4; g++) {
                __m512 d = _mm512_set1_ps(_cvtsh_ss(scales[n * (K / GROUP) + 4 * b + g]));
                __m128i bytes = _mm_loadu_si128((const __m128i *)(q + 16 * g));
                __m512i low = _mm512_cvtepu8_epi32(_mm_and_si128(bytes, _mm_set1_epi8(0x0F)));
                __m512i high = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F)));
                __m512 lo = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(low), eight), d);
                __m512 hi = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(high), eight), d);
                uint16_t *o = out + n * K + b * BLOCK + g * GROUP;
                _mm256_storeu_si256((__m256i *)o, (__m256i)_mm512_cvtneps_pbh(lo));
                _mm256_storeu_si256((__m256i *)(o + 16), (__m256i)_mm512_cvtneps_pbh(hi));
            }
        }
    }
    return 0;
}
