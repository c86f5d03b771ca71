// Matrix-times-few-vectors with weights stored as fp32, bf16, fp16 or int8.
//
// Decoding multiplies each weight matrix by one activation row per sequence,
// so the cost is reading the weights once: the weights are stored one output
// row per line ([out, in], the transpose of paddle.nn.Linear) so each output
// is a contiguous dot product, converted to fp32 in registers and never
// written back. Activations and accumulation stay fp32. int8 rows carry one
// symmetric scale each, applied once to the finished dot product.
#pragma once

#include <algorithm>
#include <cstdint>

#include "simd.h"

namespace kern {

enum class WeightFormat { kFloat32, kBFloat16, kFloat16, kInt8 };

struct WeightMatrix {
  const void* data;
  WeightFormat format;
  const float* scale;  // per output row; int8 only
  int64_t rows;        // outputs
  int64_t cols;        // inputs
};

struct F32 {
  using T = float;
  static simd::vf load(const T* p) { return simd::load(p); }
  static float scalar(T w) { return w; }
};
struct BF16 {
  using T = uint16_t;
  static simd::vf load(const T* p) { return simd::load_bf16(p); }
  static float scalar(T w) { return simd::bf16_to_float(w); }
};
struct FP16 {
  using T = uint16_t;
  static simd::vf load(const T* p) { return simd::load_fp16(p); }
  static float scalar(T w) { return simd::fp16_to_float(w); }
};
struct I8 {
  using T = int8_t;
  static simd::vf load(const T* p) { return simd::load_int8(p); }
  static float scalar(T w) { return static_cast<float>(w); }
};

#ifndef CODEGEN_PREFETCH_BYTES
#define CODEGEN_PREFETCH_BYTES 2048
#endif
constexpr int kPrefetchBytes = CODEGEN_PREFETCH_BYTES;

// out[m] = dot(w, x row m) for one weight row and M <= 4 activation rows.
// The weight vector is loaded once and used M times. Each activation row gets
// U independent sums so the FMA latency is hidden even when M is 1.
template <class Fmt, int M>
inline void dot_row(const typename Fmt::T* w, const float* x, int64_t ldx, int64_t k, float* out) {
  using namespace simd;
  constexpr int U = M >= 4 ? 1 : 4 / M;
  vf acc[U][M];
  for (int u = 0; u < U; ++u)
    for (int m = 0; m < M; ++m) acc[u][m] = zero();
  int64_t i = 0;
  for (; i + U * kLanes <= k; i += U * kLanes) {
    // the hardware prefetcher alone lets the cores idle on narrow formats, whose
    // conversion work then cannot overlap the memory traffic
    constexpr int kStepBytes = U * kLanes * sizeof(typename Fmt::T);
    for (int b = 0; b < kStepBytes; b += 64)
      _mm_prefetch(reinterpret_cast<const char*>(w + i) + kPrefetchBytes + b, _MM_HINT_T0);
    for (int u = 0; u < U; ++u) {
      const vf wv = Fmt::load(w + i + u * kLanes);
      for (int m = 0; m < M; ++m) acc[u][m] = fma(wv, load(x + m * ldx + i + u * kLanes), acc[u][m]);
    }
  }
  for (; i + kLanes <= k; i += kLanes) {
    const vf wv = Fmt::load(w + i);
    for (int m = 0; m < M; ++m) acc[0][m] = fma(wv, load(x + m * ldx + i), acc[0][m]);
  }
  for (int m = 0; m < M; ++m) {
    for (int u = 1; u < U; ++u) acc[0][m] = add(acc[0][m], acc[u][m]);
    float s = sum(acc[0][m]);
    for (int64_t j = i; j < k; ++j) s += Fmt::scalar(w[j]) * x[m * ldx + j];
    out[m] = s;
  }
}

constexpr int kVecTile = 4;

// y[m * ldy + r] = scale[r] * dot(w row r, x row m) for rows [row_begin, row_end)
// and all m < num_x. Rows are walked in order, one sequential stream; a row
// stays in L1 while successive groups of kVecTile activation rows reuse it.
template <class Fmt>
void matvec_rows(const WeightMatrix& w, const float* x, int64_t num_x, float* y, int64_t ldy,
                 int64_t row_begin, int64_t row_end) {
  const auto* data = static_cast<const typename Fmt::T*>(w.data);
  const int64_t k = w.cols;
  float dots[kVecTile];
  for (int64_t r = row_begin; r < row_end; ++r) {
    const auto* wr = data + r * k;
    const float s = w.scale ? w.scale[r] : 1.0f;
    for (int64_t m0 = 0; m0 < num_x; m0 += kVecTile) {
      const float* xm = x + m0 * k;
      const int64_t ms = std::min<int64_t>(kVecTile, num_x - m0);
      switch (ms) {
        case 1: dot_row<Fmt, 1>(wr, xm, k, k, dots); break;
        case 2: dot_row<Fmt, 2>(wr, xm, k, k, dots); break;
        case 3: dot_row<Fmt, 3>(wr, xm, k, k, dots); break;
        default: dot_row<Fmt, 4>(wr, xm, k, k, dots); break;
      }
      for (int64_t m = 0; m < ms; ++m) y[(m0 + m) * ldy + r] = s * dots[m];
    }
  }
}

inline void matvec_rows(const WeightMatrix& w, const float* x, int64_t num_x, float* y, int64_t ldy,
                        int64_t row_begin, int64_t row_end) {
  switch (w.format) {
    case WeightFormat::kFloat32: matvec_rows<F32>(w, x, num_x, y, ldy, row_begin, row_end); break;
    case WeightFormat::kBFloat16: matvec_rows<BF16>(w, x, num_x, y, ldy, row_begin, row_end); break;
    case WeightFormat::kFloat16: matvec_rows<FP16>(w, x, num_x, y, ldy, row_begin, row_end); break;
    case WeightFormat::kInt8: matvec_rows<I8>(w, x, num_x, y, ldy, row_begin, row_end); break;
  }
}

// Threads take rows kChunkRows at a time, dynamically: a chunk is long enough
// for the prefetchers, and a thread that the OS preempts (the cores are shared)
// delays the others by at most one chunk instead of its whole share.
constexpr int64_t kChunkRows = 64;

inline int64_t row_chunks(int64_t rows) { return (rows + kChunkRows - 1) / kChunkRows; }

}  // namespace kern
