// Matrix-matrix products for prefill: Y[M, N] = X[M, K] . W[N, K]^T with W in
// any stored format.
//
// Paddle's CPU matmul (MKL as shipped) runs far below this CPU's peak, so long
// prompts get their own blocked kernels. All three share one shape: a panel of
// kPanel weight rows and a block of K is packed once into a small buffer (it
// stays in L1/L2) laid out for the dot-product instruction, then register
// tiles of up to kRows rows x kPanel columns of Y accumulate broadcast X values
// times panel vectors. Threads split the weight panels.
//
//   fp32   any weight format, dequantised to fp32 in the panel; fp32 FMAs.
//          The reference, and the path on CPUs without the instructions below.
//   int8   int8 weights x activations quantised per row to u8 with a zero
//          point (AVX512-VNNI vpdpbusd: 64 multiply-adds an instruction, 4x fp32).
//   bf16   bf16 weights, and fp16 ones converted to bf16 in the panel, x
//          activations rounded to bf16 (AVX512-BF16 vdpbf16ps: 2x fp32).
//
// The build uses -march=native, but the int8 and bf16 kernels carry their own
// target attributes and are chosen by CPUID at run time, so the same source
// builds and runs on a CPU with AVX2 only (which then takes the fp32 path).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "matvec.h"

#define KERN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define KERN_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define KERN_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace kern {

constexpr int kPanel = 32;  // weight rows per panel: two AVX-512 vectors (four AVX2 ones)
constexpr int kRows = 8;    // Y rows per int8/bf16 register tile: 16 of the 32 vector registers
// AVX2 has 16 registers: its fp32 tile of 4 vectors per row takes 3 rows
constexpr int kRowsF32 = simd::kLanes == 16 ? 8 : 3;
constexpr int64_t kDepth = 256;  // k per packed fp32 panel (32 KB)
// int8 and bf16 panels hold 4 / 2 values of k per 32-bit lane; both are 16 KB
constexpr int64_t kDepthInt8 = 512;
constexpr int64_t kDepthBf16 = 256;
// one per-thread scratch buffer serves every kernel: the fp32 panel is the largest
constexpr int64_t kPanelScratchFloats = kDepth * kPanel;

// ---- choosing a kernel ----------------------------------------------------------------

enum class GemmKernel { kFloat32, kInt8, kBFloat16 };

struct GemmSupport {
  bool int8 = false, bf16 = false;
};

// What this CPU can run, read once from CPUID.
inline GemmSupport cpu_gemm_support() {
  static const GemmSupport support = [] {
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl");
    return GemmSupport{avx512 && __builtin_cpu_supports("avx512vnni"), avx512 && __builtin_cpu_supports("avx512bf16")};
  }();
  return support;
}

// What the prefill uses: the CPU's support unless turned off (the tests compare with the fp32 path)
inline GemmSupport& gemm_support() {
  static GemmSupport enabled = cpu_gemm_support();
  return enabled;
}

inline GemmKernel gemm_kernel(WeightFormat f) {
  if (f == WeightFormat::kInt8 && gemm_support().int8) return GemmKernel::kInt8;
  if ((f == WeightFormat::kBFloat16 || f == WeightFormat::kFloat16) && gemm_support().bf16)
    return GemmKernel::kBFloat16;
  return GemmKernel::kFloat32;
}

// ---- the activations, in the forms the kernels read ------------------------------------

inline int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// A run of n activations as u8 with a zero point, x ~= scale * (u8 - zero). Each row is
// quantised in runs of kDepthInt8 columns, one per block of K the kernel accumulates
// separately: a per-run scale costs nothing there, and an outlier coarsens only its run.
// The range always holds 0, so
// zero is exact and a constant row does not divide by zero. Asymmetric rather than
// absmax / 127: GELU outputs are nearly all >= 0 and would waste half the codes.
// Padding up to `ld` (a multiple of 4) is zero.
KERN_TARGET_VNNI inline void quantize_u8(const float* x, int64_t n, int64_t ld, uint8_t* out, float* scale,
                                         int32_t* zero) {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(mask, x + i);  // masked lanes read as 0, inside the range
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
  }
  const float min = _mm512_reduce_min_ps(lo), max = _mm512_reduce_max_ps(hi);
  const float s = max > min ? (max - min) / 255.0f : 1.0f;
  const int32_t z = std::clamp(static_cast<int32_t>(std::nearbyint(-min / s)), 0, 255);
  *scale = s;
  *zero = z;
  const __m512 inv = _mm512_set1_ps(1.0f / s), zv = _mm512_set1_ps(static_cast<float>(z));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512i q = _mm512_cvtps_epi32(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + i), inv, zv));
    const __m512i clamped = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_setzero_si512()), _mm512_set1_epi32(255));
    _mm512_mask_cvtusepi32_storeu_epi8(out + i, mask, clamped);
  }
  std::memset(out + n, 0, ld - n);
}

// Row m as bf16, rounded to nearest even; padding up to `ld` (even) is zero.
KERN_TARGET_BF16 inline void round_row_bf16(const float* x, int64_t n, int64_t ld, uint16_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + i));
    _mm256_mask_storeu_epi16(out + i, mask, reinterpret_cast<const __m256i&>(b));
  }
  std::memset(out + n, 0, (ld - n) * sizeof(uint16_t));
}

// The activation rows a GEMM reads: fp32, plus the u8 or bf16 copy its weights' kernel
// needs. Construct it (single-threaded) naming the weights that will read it, then fill
// every row with `prepare_row` (rows are independent: threads may split them) before
// any GEMM reads it.
struct GemmInput {
  const float* x;
  int64_t rows, cols;
  int64_t u8_ld = 0, u8_groups = 0, bf16_ld = 0;
  std::vector<uint8_t> u8;
  std::vector<float> u8_scale;
  std::vector<int32_t> u8_zero;
  std::vector<uint16_t> bf16;

  GemmInput(const float* x, int64_t rows, int64_t cols, std::initializer_list<const WeightMatrix*> readers)
      : x(x), rows(rows), cols(cols) {
    for (const WeightMatrix* w : readers) {
      const GemmKernel kernel = gemm_kernel(w->format);
      if (kernel == GemmKernel::kInt8 && u8.empty()) {
        u8_ld = round_up(cols, 4);
        u8_groups = (cols + kDepthInt8 - 1) / kDepthInt8;
        u8.resize(rows * u8_ld);
        u8_scale.resize(rows * u8_groups);
        u8_zero.resize(rows * u8_groups);
      } else if (kernel == GemmKernel::kBFloat16 && bf16.empty()) {
        bf16_ld = round_up(cols, 2);
        bf16.resize(rows * bf16_ld);
      }
    }
  }

  void prepare_row(int64_t m) {
    for (int64_t g = 0; g < (u8.empty() ? 0 : u8_groups); ++g) {
      const int64_t k0 = g * kDepthInt8, n = std::min(kDepthInt8, cols - k0);
      quantize_u8(x + m * cols + k0, n, g + 1 < u8_groups ? n : u8_ld - k0, u8.data() + m * u8_ld + k0,
                  &u8_scale[m * u8_groups + g], &u8_zero[m * u8_groups + g]);
    }
    if (!bf16.empty()) round_row_bf16(x + m * cols, cols, bf16_ld, bf16.data() + m * bf16_ld);
  }
};

// stores v (+ y when accumulating) into the first `cols` floats of y
KERN_TARGET_AVX512 inline void store_masked(float* y, __m512 v0, __m512 v1, int64_t cols, bool accumulate) {
  const __mmask16 m0 = cols >= 16 ? 0xffff : static_cast<__mmask16>((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : static_cast<__mmask16>((1u << (cols - 16)) - 1);
  if (accumulate) {
    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, y));
    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, y + 16));
  }
  _mm512_mask_storeu_ps(y, m0, v0);
  _mm512_mask_storeu_ps(y + 16, m1, v1);
}

inline int32_t load_u32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// ---- fp32: any weight format, fp32 FMAs ----------------------------------------------

// panel[k][j] = scale[n0 + j] * W[n0 + j][k0 + k] for j < rows (zero beyond)
template <class Fmt>
void pack_panel(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t depth, float* panel) {
  const auto* data = static_cast<const typename Fmt::T*>(w.data);
  for (int64_t j = 0; j < kPanel; ++j) {
    if (j >= rows) {
      for (int64_t k = 0; k < depth; ++k) panel[k * kPanel + j] = 0.0f;
      continue;
    }
    const auto* row = data + (n0 + j) * w.stride() + k0;
    const float s = w.scale ? w.scale[n0 + j] : 1.0f;
    for (int64_t k = 0; k < depth; ++k) panel[k * kPanel + j] = s * Fmt::scalar(row[k]);
  }
}

// y[i][0..kPanel) (+)= x[i][0..depth) . panel for R rows of x
template <int R>
void tile(const float* x, int64_t ldx, const float* panel, int64_t depth, float* y, int64_t ldy, int64_t cols,
          bool accumulate) {
  using namespace simd;
  constexpr int V = kPanel / kLanes;
  vf acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = zero();
  for (int64_t k = 0; k < depth; ++k) {
    vf b[V];
    for (int v = 0; v < V; ++v) b[v] = load(panel + k * kPanel + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const vf a = set1(x[r * ldx + k]);
      for (int v = 0; v < V; ++v) acc[r][v] = fma(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    if constexpr (V == 2) {  // AVX-512: masked stores (attention's short K makes a scalar epilogue show)
      store_masked(y + r * ldy, acc[r][0], acc[r][1], cols, accumulate);
      continue;
    }
    float out[kPanel];
    for (int v = 0; v < V; ++v) store(out + v * kLanes, acc[r][v]);
    float* yr = y + r * ldy;
    for (int64_t j = 0; j < cols; ++j) yr[j] = accumulate ? yr[j] + out[j] : out[j];
  }
}

template <int R = kRowsF32>
void tile_rows(int64_t rows, const float* x, int64_t ldx, const float* panel, int64_t depth, float* y, int64_t ldy,
               int64_t cols, bool accumulate) {
  if constexpr (R > 0) {
    if (rows == R) return tile<R>(x, ldx, panel, depth, y, ldy, cols, accumulate);
    return tile_rows<R - 1>(rows, x, ldx, panel, depth, y, ldy, cols, accumulate);
  }
}

template <class Fmt>
void gemm_panel_f32(const WeightMatrix& w, const float* x, int64_t ldx, int64_t m, float* y, int64_t ldy, int64_t p,
                    float* panel) {
  const int64_t n0 = p * kPanel, cols = std::min<int64_t>(kPanel, w.rows - n0);
  for (int64_t k0 = 0; k0 < w.cols; k0 += kDepth) {
    const int64_t depth = std::min(kDepth, w.cols - k0);
    pack_panel<Fmt>(w, n0, cols, k0, depth, panel);
    for (int64_t i = 0; i < m; i += kRowsF32)
      tile_rows(std::min<int64_t>(kRowsF32, m - i), x + i * ldx + k0, ldx, panel, depth, y + i * ldy + n0, ldy, cols,
                k0 > 0);
  }
}

// ---- int8: u8 activations x s8 weights, vpdpbusd ------------------------------------------
//
// With x ~= sx * (u - zx) per activation row and w = sw * q per weight row,
//   x . w = sx * sw * (sum u * q  -  zx * sum q),
// so the integer dot products need one correction per output: the zero point times the
// weight row's sum. The sums come with the packing (per panel and block of K), where the
// panel is in registers anyway: no per-model state to keep in step with the weights.
// int32 sums cannot overflow: a block adds at most 512 products of 255 * 127.

// panel[s][j][0..4) = W[n0 + j][k0 + 4s .. 4s + 4), zero past `depth` and past `rows`;
// row_sum[j] = the sum of row j's block; scale[j] its scale (0 past `rows`)
inline void pack_panel_int8(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t depth,
                            int8_t* panel, int32_t* row_sum, float* scale) {
  const int64_t steps = (depth + 3) / 4;
  const auto* data = static_cast<const int8_t*>(w.data);
  for (int64_t j = 0; j < kPanel; ++j) {
    int8_t* column = panel + j * 4;
    if (j >= rows) {
      for (int64_t s = 0; s < steps; ++s) std::memset(column + s * kPanel * 4, 0, 4);
      row_sum[j] = 0;
      scale[j] = 0.0f;
      continue;
    }
    const int8_t* row = data + (n0 + j) * w.stride() + k0;
    int32_t sum = 0;
    for (int64_t k = 0; k < depth; ++k) sum += row[k];
    row_sum[j] = sum;
    scale[j] = w.scale[n0 + j];
    for (int64_t s = 0; s < depth / 4; ++s) std::memcpy(column + s * kPanel * 4, row + 4 * s, 4);
    if (depth % 4) {
      int8_t last[4] = {};
      std::memcpy(last, row + depth / 4 * 4, depth % 4);
      std::memcpy(column + (steps - 1) * kPanel * 4, last, 4);
    }
  }
}

template <int R>
KERN_TARGET_VNNI void tile_int8(const uint8_t* x, int64_t ldx, const float* x_scale, const int32_t* x_zero, int64_t ldq,
                                const int8_t* panel, int64_t steps, const int32_t* row_sum, const float* w_scale,
                                float* y, int64_t ldy, int64_t cols, bool accumulate) {
  __m512i acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
  for (int64_t s = 0; s < steps; ++s) {
    const __m512i b0 = _mm512_loadu_si512(panel + s * kPanel * 4);
    const __m512i b1 = _mm512_loadu_si512(panel + s * kPanel * 4 + 64);
    for (int r = 0; r < R; ++r) {
      const __m512i a = _mm512_set1_epi32(load_u32(x + r * ldx + 4 * s));  // 4 values of k, every lane
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, b1);
    }
  }
  const __m512i sum0 = _mm512_loadu_si512(row_sum), sum1 = _mm512_loadu_si512(row_sum + 16);
  const __m512 ws0 = _mm512_loadu_ps(w_scale), ws1 = _mm512_loadu_ps(w_scale + 16);
  for (int r = 0; r < R; ++r) {
    const __m512i z = _mm512_set1_epi32(x_zero[r * ldq]);
    const __m512 sx = _mm512_set1_ps(x_scale[r * ldq]);
    const __m512 v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][0], _mm512_mullo_epi32(z, sum0))),
                                    _mm512_mul_ps(sx, ws0));
    const __m512 v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][1], _mm512_mullo_epi32(z, sum1))),
                                    _mm512_mul_ps(sx, ws1));
    store_masked(y + r * ldy, v0, v1, cols, accumulate);
  }
}

template <int R = kRows>
KERN_TARGET_VNNI void tile_rows_int8(int64_t rows, const uint8_t* x, int64_t ldx, const float* x_scale,
                                     const int32_t* x_zero, int64_t ldq, const int8_t* panel, int64_t steps,
                                     const int32_t* row_sum, const float* w_scale, float* y, int64_t ldy,
                                     int64_t cols, bool accumulate) {
  if constexpr (R > 0) {
    if (rows == R)
      return tile_int8<R>(x, ldx, x_scale, x_zero, ldq, panel, steps, row_sum, w_scale, y, ldy, cols, accumulate);
    return tile_rows_int8<R - 1>(rows, x, ldx, x_scale, x_zero, ldq, panel, steps, row_sum, w_scale, y, ldy, cols,
                                 accumulate);
  }
}

KERN_TARGET_VNNI inline void gemm_panel_int8(const WeightMatrix& w, const GemmInput& in, int64_t m, float* y,
                                             int64_t ldy, int64_t p, void* scratch) {
  const int64_t n0 = p * kPanel, cols = std::min<int64_t>(kPanel, w.rows - n0);
  auto* panel = static_cast<int8_t*>(scratch);
  alignas(64) int32_t row_sum[kPanel];
  alignas(64) float scale[kPanel];
  for (int64_t k0 = 0; k0 < w.cols; k0 += kDepthInt8) {
    const int64_t depth = std::min(kDepthInt8, w.cols - k0);
    pack_panel_int8(w, n0, cols, k0, depth, panel, row_sum, scale);
    for (int64_t i = 0; i < m; i += kRows)
      tile_rows_int8(std::min<int64_t>(kRows, m - i), in.u8.data() + i * in.u8_ld + k0, in.u8_ld,
                     in.u8_scale.data() + i * in.u8_groups + k0 / kDepthInt8,
                     in.u8_zero.data() + i * in.u8_groups + k0 / kDepthInt8, in.u8_groups, panel, (depth + 3) / 4,
                     row_sum, scale,
                     y + i * ldy + n0, ldy, cols, k0 > 0);
  }
}

// ---- bf16: bf16 activations x bf16 weights (fp16 ones converted), vdpbf16ps ---------------

// panel[s][j][0..2) = W[n0 + j][k0 + 2s .. 2s + 2) as bf16, zero past `depth` and `rows`.
// fp16 weights are converted here, once per panel and block, with round to nearest even.
template <class Fmt>
KERN_TARGET_BF16 void pack_panel_bf16(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t depth,
                                      uint16_t* panel) {
  const int64_t steps = (depth + 1) / 2;
  alignas(64) uint16_t converted[kDepthBf16 + 16];
  for (int64_t j = 0; j < kPanel; ++j) {
    uint16_t* column = panel + j * 2;
    if (j >= rows) {
      for (int64_t s = 0; s < steps; ++s) std::memset(column + s * kPanel * 2, 0, 4);
      continue;
    }
    const uint16_t* row = static_cast<const uint16_t*>(w.data) + (n0 + j) * w.stride() + k0;
    if constexpr (std::is_same_v<Fmt, FP16>) {
      for (int64_t k = 0; k < depth; k += 16) {
        const __mmask16 mask = depth - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (depth - k)) - 1);
        const __m512 f = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, row + k));
        const __m256bh b = _mm512_cvtneps_pbh(f);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(converted + k), reinterpret_cast<const __m256i&>(b));
      }
      row = converted;
    }
    for (int64_t s = 0; s < depth / 2; ++s) std::memcpy(column + s * kPanel * 2, row + 2 * s, 4);
    if (depth % 2) {
      const uint16_t last[2] = {row[depth - 1], 0};
      std::memcpy(column + (steps - 1) * kPanel * 2, last, 4);
    }
  }
}

template <int R>
KERN_TARGET_BF16 void tile_bf16(const uint16_t* x, int64_t ldx, const uint16_t* panel, int64_t steps, float* y,
                                int64_t ldy, int64_t cols, bool accumulate) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t s = 0; s < steps; ++s) {
    const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(panel + s * kPanel * 2));
    const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(panel + s * kPanel * 2 + 32));
    for (int r = 0; r < R; ++r) {
      const __m512bh a = reinterpret_cast<__m512bh>(_mm512_set1_epi32(load_u32(x + r * ldx + 2 * s)));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
    }
  }
  for (int r = 0; r < R; ++r) store_masked(y + r * ldy, acc[r][0], acc[r][1], cols, accumulate);
}

template <int R = kRows>
KERN_TARGET_BF16 void tile_rows_bf16(int64_t rows, const uint16_t* x, int64_t ldx, const uint16_t* panel,
                                     int64_t steps, float* y, int64_t ldy, int64_t cols, bool accumulate) {
  if constexpr (R > 0) {
    if (rows == R) return tile_bf16<R>(x, ldx, panel, steps, y, ldy, cols, accumulate);
    return tile_rows_bf16<R - 1>(rows, x, ldx, panel, steps, y, ldy, cols, accumulate);
  }
}

template <class Fmt>
KERN_TARGET_BF16 void gemm_panel_bf16(const WeightMatrix& w, const GemmInput& in, int64_t m, float* y, int64_t ldy,
                                      int64_t p, void* scratch) {
  const int64_t n0 = p * kPanel, cols = std::min<int64_t>(kPanel, w.rows - n0);
  auto* panel = static_cast<uint16_t*>(scratch);
  for (int64_t k0 = 0; k0 < w.cols; k0 += kDepthBf16) {
    const int64_t depth = std::min(kDepthBf16, w.cols - k0);
    pack_panel_bf16<Fmt>(w, n0, cols, k0, depth, panel);
    for (int64_t i = 0; i < m; i += kRows)
      tile_rows_bf16(std::min<int64_t>(kRows, m - i), in.bf16.data() + i * in.bf16_ld + k0, in.bf16_ld, panel,
                     (depth + 1) / 2, y + i * ldy + n0, ldy, cols, k0 > 0);
  }
}

// ---- entry points ------------------------------------------------------------------------

inline int64_t gemm_panel_count(const WeightMatrix& w) { return (w.rows + kPanel - 1) / kPanel; }

// Y[:, panel p] = X . W^T for weight panel p of `w` (bf16/fp16 weights carry no scale);
// call from every thread of a parallel region with its own `scratch` of
// kPanelScratchFloats floats. `in` must have been prepared for `w`.
inline void gemm_panel(const WeightMatrix& w, const GemmInput& in, float* y, int64_t ldy, int64_t p, float* scratch) {
  // an input prepared while the reduced kernels were off has no u8/bf16 copy: it takes fp32
  switch (gemm_kernel(w.format)) {
    case GemmKernel::kInt8:
      if (in.u8.empty()) break;
      return gemm_panel_int8(w, in, in.rows, y, ldy, p, scratch);
    case GemmKernel::kBFloat16:
      if (in.bf16.empty()) break;
      if (w.format == WeightFormat::kFloat16) return gemm_panel_bf16<FP16>(w, in, in.rows, y, ldy, p, scratch);
      return gemm_panel_bf16<BF16>(w, in, in.rows, y, ldy, p, scratch);
    case GemmKernel::kFloat32: break;
  }
  switch (w.format) {
    case WeightFormat::kFloat32: gemm_panel_f32<F32>(w, in.x, in.cols, in.rows, y, ldy, p, scratch); break;
    case WeightFormat::kBFloat16: gemm_panel_f32<BF16>(w, in.x, in.cols, in.rows, y, ldy, p, scratch); break;
    case WeightFormat::kFloat16: gemm_panel_f32<FP16>(w, in.x, in.cols, in.rows, y, ldy, p, scratch); break;
    case WeightFormat::kInt8: gemm_panel_f32<I8>(w, in.x, in.cols, in.rows, y, ldy, p, scratch); break;
  }
}

}  // namespace kern
