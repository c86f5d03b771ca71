// SIMD building blocks shared by the kernels: load a run of weights of any
// stored format as fp32 lanes, and the few transcendental functions the
// decoder needs, vectorised.
//
// Two instruction sets: AVX-512 (16 lanes) and AVX2 + FMA + F16C (8 lanes).
// The build uses -march=native, so the best one the machine has is chosen
// at compile time; a machine with neither fails the build and Python falls
// back to the plain path.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "codegen kernels need at least AVX2, FMA and F16C"
#endif

namespace simd {

#if defined(__AVX512F__) && defined(__AVX512BW__)
constexpr int kLanes = 16;
using vf = __m512;
inline vf zero() { return _mm512_setzero_ps(); }
inline vf set1(float x) { return _mm512_set1_ps(x); }
inline vf load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf add(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf div(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf max(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf min(vf a, vf b) { return _mm512_min_ps(a, b); }
inline float sum(vf v) { return _mm512_reduce_add_ps(v); }
// lane j: the sum of v[j]'s lanes, for all 16 at once (halves, then quarters, then within
// 128 bits; a fixed order, so lane j depends on v[j] alone). ~3 instructions a sum, not 8.
inline vf sums(const vf (&v)[kLanes]) {
  vf half[8], quarter[4];
  for (int p = 0; p < 8; ++p)  // [v[2p] lanes 0+2, 1+3 | v[2p+1] lanes 0+2, 1+3] (128-bit lanes)
    half[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                            _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xee));
  for (int j = 0; j < 4; ++j)  // 128-bit lane L: v[4j + L]'s four partial sums
    quarter[j] = _mm512_add_ps(_mm512_shuffle_f32x4(half[2 * j], half[2 * j + 1], 0x88),
                               _mm512_shuffle_f32x4(half[2 * j], half[2 * j + 1], 0xdd));
  const vf a = _mm512_add_ps(_mm512_unpacklo_ps(quarter[0], quarter[1]), _mm512_unpackhi_ps(quarter[0], quarter[1])),
           b = _mm512_add_ps(_mm512_unpacklo_ps(quarter[2], quarter[3]), _mm512_unpackhi_ps(quarter[2], quarter[3]));
  // element 4 L + j holds the sum of v[4 j + L]
  const vf total = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), total);
}
inline float hmax(vf v) { return _mm512_reduce_max_ps(v); }
inline vf abs(vf v) { return _mm512_abs_ps(v); }
// copies the sign of `s` onto the non-negative `v`
inline vf with_sign(vf v, vf s) {
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(s), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v), sign));
}
inline vf round(vf v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// v where x >= limit, else 0
inline vf zero_below(vf v, vf x, float limit) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(limit), _CMP_GE_OQ), v);
}
// 2^n for integral-valued n in the normal exponent range
inline vf pow2(vf n) {
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_castsi512_ps(bits);
}
inline vf load_bf16(const uint16_t* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline vf load_fp16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline vf load_int8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// int16 lanes for the int8 x int16 dot products: twice as many as float lanes
constexpr int kI16Lanes = 32;
using vi = __m512i;
inline vi zero_i() { return _mm512_setzero_si512(); }
inline vi load_i16(const int16_t* p) { return _mm512_loadu_si512(p); }
inline vi load_int8_as_i16(const int8_t* p) {
  return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// acc + a . b: adjacent int16 pairs multiplied and summed into each int32 lane
inline vi dot_i16(vi acc, vi a, vi b) {
#if defined(__AVX512VNNI__)
  return _mm512_dpwssd_epi32(acc, a, b);
#else
  return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}
// the lanes' exact sum
inline int64_t sum_i64(vi v) {
  const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
  const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
  return _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
}
// rounds to nearest and saturates to int16
inline void store_i16(int16_t* p, vf v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(v)));
}
#else
constexpr int kLanes = 8;
using vf = __m256;
inline vf zero() { return _mm256_setzero_ps(); }
inline vf set1(float x) { return _mm256_set1_ps(x); }
inline vf load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf add(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf div(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf max(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf min(vf a, vf b) { return _mm256_min_ps(a, b); }
inline float sum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// lane j: the sum of v[j]'s lanes, for all 8 at once (pairs, then quads, then the two halves)
inline vf sums(const vf (&v)[kLanes]) {
  const vf q0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3])),
           q1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}
inline float hmax(vf v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline vf abs(vf v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
inline vf with_sign(vf v, vf s) { return _mm256_or_ps(v, _mm256_and_ps(s, _mm256_set1_ps(-0.0f))); }
inline vf round(vf v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf zero_below(vf v, vf x, float limit) {
  return _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(limit), _CMP_GE_OQ), v);
}
inline vf pow2(vf n) {
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_castsi256_ps(bits);
}
inline vf load_bf16(const uint16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
inline vf load_fp16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline vf load_int8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

constexpr int kI16Lanes = 16;
using vi = __m256i;
inline vi zero_i() { return _mm256_setzero_si256(); }
inline vi load_i16(const int16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline vi load_int8_as_i16(const int8_t* p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline vi dot_i16(vi acc, vi a, vi b) {
#if defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}
inline int64_t sum_i64(vi v) {
  const __m256i wide = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                        _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
  const __m128i pair = _mm_add_epi64(_mm256_castsi256_si128(wide), _mm256_extracti128_si256(wide, 1));
  return _mm_cvtsi128_si64(pair) + _mm_extract_epi64(pair, 1);
}
inline void store_i16(int16_t* p, vf v) {
  const __m256i i = _mm256_cvtps_epi32(v);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1)));
}
#endif

// exp(x) for x <= 0, flushed to 0 below -87 (and for -inf): 2^n * p(r) with
// r = x - n*ln2 in [-ln2/2, ln2/2] and a degree-6 polynomial, ~2 ulp.
inline vf exp_neg(vf x_in) {
  const vf x = max(x_in, set1(-87.0f));
  const vf n = round(mul(x, set1(1.44269504088896341f)));
  vf r = fma(n, set1(-0.693359375f), x);
  r = fma(n, set1(2.12194440e-4f), r);
  vf p = set1(1.0f / 720);
  p = fma(p, r, set1(1.0f / 120));
  p = fma(p, r, set1(1.0f / 24));
  p = fma(p, r, set1(1.0f / 6));
  p = fma(p, r, set1(0.5f));
  p = fma(p, r, set1(1.0f));
  p = fma(p, r, set1(1.0f));
  return zero_below(mul(p, pow2(n)), x_in, -87.0f);
}

// tanh through exp(-2|x|), which never overflows
inline vf tanh(vf x) {
  const vf e = exp_neg(mul(abs(x), set1(-2.0f)));
  return with_sign(div(sub(set1(1.0f), e), add(set1(1.0f), e)), x);
}

// GELU with the tanh approximation, as CodeGen was trained
inline vf gelu(vf x) {
  const vf inner = mul(set1(0.7978845608028654f), fma(mul(set1(0.044715f), x), mul(x, x), x));
  return mul(mul(set1(0.5f), x), add(set1(1.0f), tanh(inner)));
}

inline float gelu_scalar(float x) {
  return 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

// CodeGeeX's "fast GELU", x * sigmoid(1.702 x) (MindSpore's), as 0.5 x (1 + tanh(0.851 x)):
// sigmoid(z) = (1 + tanh(z / 2)) / 2, and tanh above never overflows
inline vf sigmoid_gelu(vf x) {
  return mul(mul(set1(0.5f), x), add(set1(1.0f), tanh(mul(set1(0.851f), x))));
}

inline float sigmoid_gelu_scalar(float x) { return 0.5f * x * (1.0f + std::tanh(0.851f * x)); }

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float fp16_to_float(uint16_t h) { return _cvtsh_ss(h); }

}  // namespace simd
