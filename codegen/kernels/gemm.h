// Matrix-matrix product for prefill: Y[M, N] = X[M, K] . W[N, K]^T with W in
// any stored format, fp32 accumulation.
//
// Paddle's CPU matmul (MKL as shipped) runs far below this CPU's peak, so
// long prompts get their own blocked kernel: a panel of kPanel weight rows and
// kDepth columns is dequantised once into an fp32 buffer laid out [k][n] (it
// stays in L2), then an kRows x kPanel register tile of Y accumulates
// broadcast X values times panel vectors. Threads split the weight panels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "matvec.h"

namespace kern {

constexpr int kPanel = 2 * simd::kLanes;  // weight rows per panel: two vectors
constexpr int kRows = 8;                  // Y rows per register tile (16 accumulators)
constexpr int64_t kDepth = 256;           // k per packed panel

// panel[k][j] = scale[n0 + j] * W[n0 + j][k0 + k] for j < rows (zero beyond)
template <class Fmt>
void pack_panel(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t depth, float* panel) {
  const auto* data = static_cast<const typename Fmt::T*>(w.data);
  for (int64_t j = 0; j < kPanel; ++j) {
    if (j >= rows) {
      for (int64_t k = 0; k < depth; ++k) panel[k * kPanel + j] = 0.0f;
      continue;
    }
    const auto* row = data + (n0 + j) * w.cols + k0;
    const float s = w.scale ? w.scale[n0 + j] : 1.0f;
    for (int64_t k = 0; k < depth; ++k) panel[k * kPanel + j] = s * Fmt::scalar(row[k]);
  }
}

// y[i][0..kPanel) (+)= x[i][0..depth) . panel for R rows of x
template <int R>
void tile(const float* x, int64_t ldx, const float* panel, int64_t depth, float* y, int64_t ldy, int64_t cols,
          bool accumulate) {
  using namespace simd;
  vf acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = zero();
  for (int64_t k = 0; k < depth; ++k) {
    const vf b0 = load(panel + k * kPanel), b1 = load(panel + k * kPanel + kLanes);
    for (int r = 0; r < R; ++r) {
      const vf a = set1(x[r * ldx + k]);
      acc[r][0] = fma(a, b0, acc[r][0]);
      acc[r][1] = fma(a, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float out[kPanel];
    store(out, acc[r][0]);
    store(out + kLanes, acc[r][1]);
    float* yr = y + r * ldy;
    for (int64_t j = 0; j < cols; ++j) yr[j] = accumulate ? yr[j] + out[j] : out[j];
  }
}

template <int R = kRows>
void tile_rows(int64_t rows, const float* x, int64_t ldx, const float* panel, int64_t depth, float* y, int64_t ldy,
               int64_t cols, bool accumulate) {
  if constexpr (R > 0) {
    if (rows == R) return tile<R>(x, ldx, panel, depth, y, ldy, cols, accumulate);
    return tile_rows<R - 1>(rows, x, ldx, panel, depth, y, ldy, cols, accumulate);
  }
}

// Y = X . W^T for the weight panels [panel_begin, panel_end); call from every
// thread of a parallel region with its own `panel` buffer (kDepth * kPanel floats).
template <class Fmt>
void gemm_panels(const WeightMatrix& w, const float* x, int64_t m, float* y, int64_t ldy, int64_t p, float* panel) {
  const int64_t n0 = p * kPanel, cols = std::min<int64_t>(kPanel, w.rows - n0);
  for (int64_t k0 = 0; k0 < w.cols; k0 += kDepth) {
    const int64_t depth = std::min(kDepth, w.cols - k0);
    pack_panel<Fmt>(w, n0, cols, k0, depth, panel);
    for (int64_t i = 0; i < m; i += kRows)
      tile_rows(std::min<int64_t>(kRows, m - i), x + i * w.cols + k0, w.cols, panel, depth, y + i * ldy + n0, ldy,
                cols, k0 > 0);
  }
}

inline int64_t gemm_panel_count(const WeightMatrix& w) { return (w.rows + kPanel - 1) / kPanel; }

inline void gemm_panel(const WeightMatrix& w, const float* x, int64_t m, float* y, int64_t ldy, int64_t p,
                       float* panel) {
  switch (w.format) {
    case WeightFormat::kFloat32: gemm_panels<F32>(w, x, m, y, ldy, p, panel); break;
    case WeightFormat::kBFloat16: gemm_panels<BF16>(w, x, m, y, ldy, p, panel); break;
    case WeightFormat::kFloat16: gemm_panels<FP16>(w, x, m, y, ldy, p, panel); break;
    case WeightFormat::kInt8: gemm_panels<I8>(w, x, m, y, ldy, p, panel); break;
  }
}

}  // namespace kern
