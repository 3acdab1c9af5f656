/* One decode step's attention, every row and head at once, on AVX-512 (see decode_attention.py):
 * rotary embedding of this step's q and k, k and v written into the layer's cache, then
 * softmax(q k^T * scale) v over the cached positions. Two versions, for fp32 and for bf16
 * tensors (qkv, rotary table, cache and output all of one type); both compute in fp32.
 *
 * Compiled with -ffp-contract=off so that the rotary embedding rounds exactly as PyTorch's
 * x * cos + swapped(x) * sin in fp32 does, then (bf16) to nearest even as its .to(bfloat16): the
 * cached keys are bit-identical. The dot products and the weighted sum of values use fused
 * multiply-adds in their own order (results within a few fp32 ulps of PyTorch's matmuls).
 */
#include <math.h>

#include "bf16.h"

#define MAX_HEAD_DIM 256

/* e^x for 16 lanes (Cephes' expf: x = n ln 2 + r, a degree-6 polynomial in r, times 2^n), within
 * ~2 ulps of libm's; inputs below -87.3 (where fp32 results turn subnormal) give 0. */
static inline __m512 exp16(__m512 x) {
    const __m512 low = _mm512_set1_ps(-87.33654f);
    __mmask16 zero = _mm512_cmp_ps_mask(x, low, _CMP_LT_OQ);
    x = _mm512_max_ps(x, low);
    __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                    _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps(~zero, _mm512_scalef_ps(y, n));
}

static inline float f32_to_f32(float x) { return x; }

/* fp32 storage: values as they are; bf16 storage: widened exactly, narrowed to nearest even. */
#define DECODE_ATTENTION(NAME, T, LOAD16, WIDEN, NARROW)                                          \
    int NAME(const T *qkv, const T *cos, const T *sin, long rot_stride, T *keys, T *values,      \
             long row_stride, long head_stride, long B, long H, long D, long start,               \
             const uint8_t *mask, float scale, T *out, int threads) {                             \
        if (D % 16 || D > MAX_HEAD_DIM || start < 0) return -1;                                   \
        long S = start + 1;                                                                       \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                         \
        for (long bh = 0; bh < B * H; bh++) {                                                     \
            long b = bh / H, h = bh % H;                                                          \
            const T *q = qkv + (b * 3 * H + h) * D, *k = q + H * D, *v = k + H * D;               \
            const T *c = cos + b * rot_stride, *s = sin + b * rot_stride;                         \
            T *K = keys + b * row_stride + h * head_stride, *V = values + b * row_stride + h * head_stride; \
            long padded = (S + 15) / 16 * 16;                                                     \
            float rotated[MAX_HEAD_DIM], weights[padded];                                         \
            for (long i = 0; i < D; i++) { /* pairs (2j, 2j + 1) turn; sin carries the sign */    \
                float ci = WIDEN(c[i]), si = WIDEN(s[i]);                                         \
                rotated[i] = WIDEN(NARROW(WIDEN(q[i]) * ci + WIDEN(q[i ^ 1]) * si));              \
                K[start * D + i] = NARROW(WIDEN(k[i]) * ci + WIDEN(k[i ^ 1]) * si);               \
                V[start * D + i] = v[i];                                                          \
            }                                                                                     \
            float best = -INFINITY;                                                               \
            const uint8_t *live = mask ? mask + b * S : NULL; /* masked positions are never read */ \
            for (long p = 0; p < S; p++) {                                                        \
                if (live && !live[p]) { weights[p] = -INFINITY; continue; }                       \
                __m512 acc = _mm512_setzero_ps();                                                 \
                for (long i = 0; i < D; i += 16)                                                  \
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(rotated + i), LOAD16(K + p * D + i), acc); \
                weights[p] = _mm512_reduce_add_ps(acc) * scale;                                   \
                best = weights[p] > best ? weights[p] : best;                                     \
            }                                                                                     \
            for (long p = S; p < padded; p++) weights[p] = -INFINITY;                             \
            __m512 sum = _mm512_setzero_ps();                                                     \
            for (long p = 0; p < padded; p += 16) {                                               \
                __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(weights + p), _mm512_set1_ps(best))); \
                _mm512_storeu_ps(weights + p, e);                                                 \
                sum = _mm512_add_ps(sum, e);                                                      \
            }                                                                                     \
            float total = _mm512_reduce_add_ps(sum), result[MAX_HEAD_DIM];                        \
            __m512 acc[MAX_HEAD_DIM / 16];                                                        \
            long chunks = D / 16;                                                                 \
            for (long j = 0; j < chunks; j++) acc[j] = _mm512_setzero_ps();                       \
            for (long p = 0; p < S; p++) {                                                        \
                if (live && !live[p]) continue; /* its weight is 0: skipping it changes no bit */ \
                __m512 w = _mm512_set1_ps(weights[p] / total);                                    \
                for (long j = 0; j < chunks; j++)                                                 \
                    acc[j] = _mm512_fmadd_ps(w, LOAD16(V + p * D + 16 * j), acc[j]);              \
            }                                                                                     \
            for (long j = 0; j < chunks; j++) _mm512_storeu_ps(result + 16 * j, acc[j]);          \
            for (long i = 0; i < D; i++) out[(b * H + h) * D + i] = NARROW(result[i]);            \
        }                                                                                         \
        return 0;                                                                                 \
    }

/* qkv [B, 3, H, D]: this step's q, k, v. cos, sin: row b at b * rot_stride, D values each.
 * keys, values: the layer's cache; row b, head h, position s at b * row_stride + h * head_stride
 * + s * D. This step's k and v go to position `start`; attention covers positions 0 … start,
 * minus those where mask [B, start + 1] (bytes, 0 = masked) is 0; mask may be NULL.
 * out [B, H, D]. Return 0, or -1 for a bad shape. */
DECODE_ATTENTION(decode_attention, float, load_f32, f32_to_f32, f32_to_f32)
DECODE_ATTENTION(decode_attention_bf16, uint16_t, load_bf16, bf16_to_f32, f32_to_bf16)
