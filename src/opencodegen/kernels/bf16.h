/* bf16 <-> fp32 for the CPU kernels, with AVX-512F only (no AVX-512 BF16 instructions needed).
 * bf16 is the upper half of an fp32: widening is exact; narrowing rounds to nearest even, as
 * PyTorch's .to(torch.bfloat16) does. */
#ifndef OPENCODEGEN_BF16_H
#define OPENCODEGEN_BF16_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even; NaN stays NaN */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

static inline __m512 load_f32(const float *p) { return _mm512_loadu_ps(p); }

static inline __m512 load_bf16(const uint16_t *p) { /* 16 bf16 -> fp32: the same bits, 16 zeros below */
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

#endif
