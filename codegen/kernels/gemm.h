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
// Where the CPU and OS allow AMX (amx.h), int8 and bf16 take the same panels and the
// same activations through tile instructions instead (16x the multiply-adds of one
// vpdpbusd / vdpbf16ps): see "AMX" below.
//
// The build uses -march=native, but the int8, bf16 and AMX kernels carry their own
// target attributes and are chosen by CPUID at run time, so the same source
// builds and runs on a CPU with AVX2 only (which then takes the fp32 path).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <utility>
#include <vector>

#include "amx.h"
#include "matvec.h"

#define KERN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define KERN_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define KERN_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
// every AMX CPU has AVX512-VNNI and -BF16: the AMX kernels call the packing of both
#define KERN_TARGET_AMX_GEMM \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,amx-tile,amx-int8,amx-bf16")))

namespace kern {

constexpr int kPanel = 32;  // weight rows per panel: two AVX-512 vectors (four AVX2 ones)
constexpr int kRows = 8;    // Y rows per int8/bf16 register tile: 16 of the 32 vector registers
// AVX2 has 16 registers: its fp32 tile of 4 vectors per row takes 3 rows
constexpr int kRowsF32 = simd::kLanes == 16 ? 8 : 3;
constexpr int64_t kDepth = 256;  // k per packed fp32 panel (32 KB)
// int8 and bf16 panels hold 4 / 2 values of k per 32-bit lane; both are 16 KB
constexpr int64_t kDepthInt8 = 512;
constexpr int64_t kDepthBf16 = 256;
// one per-thread scratch buffer serves every kernel: the AMX ones need the most (see there)
constexpr int64_t kPanelScratchFloats = 2 * kDepth * kPanel;

// ---- choosing a kernel ----------------------------------------------------------------

enum class GemmKernel { kFloat32, kInt8, kBFloat16, kInt8Amx, kBFloat16Amx };

struct GemmSupport {
  bool int8 = false, bf16 = false, amx_int8 = false, amx_bf16 = false;
};

// What this CPU (and, for AMX, the OS) lets the process run, found once.
inline GemmSupport cpu_gemm_support() {
  static const GemmSupport support = [] {
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl");
    const bool int8 = avx512 && __builtin_cpu_supports("avx512vnni");
    const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
    const amx::Support tiles = int8 && bf16 ? amx::usable() : amx::Support{};
    return GemmSupport{int8, bf16, tiles.int8, tiles.bf16};
  }();
  return support;
}

// What the prefill uses: the CPU's support unless turned off (the tests compare the kernels)
inline GemmSupport& gemm_support() {
  static GemmSupport enabled = cpu_gemm_support();
  return enabled;
}

inline GemmKernel gemm_kernel(WeightFormat f) {
  const GemmSupport& s = gemm_support();
  if (f == WeightFormat::kInt8) return s.amx_int8 ? GemmKernel::kInt8Amx : s.int8 ? GemmKernel::kInt8 : GemmKernel::kFloat32;
  if (f == WeightFormat::kBFloat16 || f == WeightFormat::kFloat16)
    return s.amx_bf16 ? GemmKernel::kBFloat16Amx : s.bf16 ? GemmKernel::kBFloat16 : GemmKernel::kFloat32;
  return GemmKernel::kFloat32;
}

// ---- the activations, in the forms the kernels read ------------------------------------

inline int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// Activation rows an AMX step reads: two A tiles of 16. An AMX kernel's input has its rows
// padded to a multiple of this and each row to a whole tile row (64 bytes), zero-filled, and
// is stored as whole tiles, [16 rows][64-byte column][16][64]: each tile load reads 1 KB in
// one piece (rows a power-of-two apart fell in few cache sets and kept the tiles waiting).
constexpr int64_t kAmxTokens = 32;
constexpr int64_t kAmxRowBytes = 64;

// Where an activation copy keeps its rows: element i of row m is at
// row(m) + i / chunk * chunk_stride + i % chunk for chunks of 64 bytes; row-major rows are
// the case chunk_stride == chunk.
struct RowLayout {
  int64_t ld = 0;  // elements a row holds, padding included
  int64_t chunk = 1, chunk_stride = 1;
  int64_t row(int64_t m) const { return chunk_stride == chunk ? m * ld : m / 16 * 16 * ld + m % 16 * chunk; }
  int64_t at(int64_t i) const { return i / chunk * chunk_stride + i % chunk; }
  static RowLayout of(int64_t cols, int64_t bytes, bool tiles) {
    const int64_t chunk = kAmxRowBytes / bytes;
    return tiles ? RowLayout{round_up(cols, chunk), chunk, 16 * chunk} : RowLayout{round_up(cols, 4 / bytes), chunk, chunk};
  }
};

// zeroes elements [n, end) of a row laid out as `layout`
template <class T>
void zero_row_tail(T* row, int64_t n, int64_t end, const RowLayout& layout) {
  for (int64_t i = n; i < end;) {
    const int64_t stop = std::min(end, (i / layout.chunk + 1) * layout.chunk);
    std::memset(row + layout.at(i), 0, (stop - i) * sizeof(T));
    i = stop;
  }
}

// A run of n activations as u8 with a zero point, x ~= scale * (u8 - zero). Each row is
// quantised in runs of kDepthInt8 columns, one per block of K the kernel accumulates
// separately: a per-run scale costs nothing there, and an outlier coarsens only its run.
// The range always holds 0, so
// zero is exact and a constant row does not divide by zero. Asymmetric rather than
// absmax / 127: GELU outputs are nearly all >= 0 and would waste half the codes.
// Padding up to `end` is zero. `out` is the run's first element in `layout`.
KERN_TARGET_VNNI inline void quantize_u8(const float* x, int64_t n, int64_t end, const RowLayout& layout,
                                         uint8_t* out, float* scale, int32_t* zero) {
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
    _mm512_mask_cvtusepi32_storeu_epi8(out + layout.at(i), mask, clamped);  // 16 never straddle a chunk
  }
  zero_row_tail(out, n, end, layout);
}

// Row m as bf16, rounded to nearest even; padding up to layout.ld is zero.
KERN_TARGET_BF16 inline void round_row_bf16(const float* x, int64_t n, const RowLayout& layout, uint16_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + i));
    _mm256_mask_storeu_epi16(out + layout.at(i), mask, reinterpret_cast<const __m256i&>(b));
  }
  zero_row_tail(out, n, layout.ld, layout);
}

// A std::vector whose resize leaves new elements uninitialised: the activation copies below
// have every element the kernels use written before it is read (an AMX kernel also reads the
// padding rows, whose results it never stores), and zero-filling them first was ~2.5% of a
// 1,024-token prompt's forward (attention's copies of each block's probabilities the most).
template <class T>
struct Uninitialised : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = Uninitialised<U>;
  };
  Uninitialised() = default;
  template <class U>
  Uninitialised(const Uninitialised<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
template <class T>
using UninitialisedVector = std::vector<T, Uninitialised<T>>;

// The activation rows a GEMM reads: fp32, plus the u8 or bf16 copy its weights' kernel
// needs. Construct it (single-threaded) naming the weights that will read it, then fill
// every row with `prepare_row` (rows are independent: threads may split them) before
// any GEMM reads it. The kernels int8 and bf16/fp16 weights take are chosen here, once:
// the copies are laid out for them.
struct GemmInput {
  const float* x;
  int64_t rows, cols;
  GemmKernel int8_kernel = GemmKernel::kFloat32, bf16_kernel = GemmKernel::kFloat32;
  RowLayout u8_layout, bf16_layout;
  int64_t u8_groups = 0;
  UninitialisedVector<uint8_t> u8;
  UninitialisedVector<float> u8_scale;
  UninitialisedVector<int32_t> u8_zero;
  UninitialisedVector<uint16_t> bf16;

  GemmInput(const float* x, int64_t rows, int64_t cols, std::initializer_list<const WeightMatrix*> readers)
      : x(x), rows(rows), cols(cols) {
    for (const WeightMatrix* w : readers) {
      const GemmKernel kernel = gemm_kernel(w->format);
      const bool amx = kernel == GemmKernel::kInt8Amx || kernel == GemmKernel::kBFloat16Amx;
      const int64_t stored_rows = amx ? round_up(rows, kAmxTokens) : rows;
      if ((kernel == GemmKernel::kInt8 || kernel == GemmKernel::kInt8Amx) && u8.empty()) {
        int8_kernel = kernel;
        u8_layout = RowLayout::of(cols, 1, amx);
        u8_groups = (cols + kDepthInt8 - 1) / kDepthInt8;
        u8.resize(stored_rows * u8_layout.ld);
        u8_scale.resize(rows * u8_groups);
        u8_zero.resize(rows * u8_groups);
      } else if ((kernel == GemmKernel::kBFloat16 || kernel == GemmKernel::kBFloat16Amx) && bf16.empty()) {
        bf16_kernel = kernel;
        bf16_layout = RowLayout::of(cols, 2, amx);
        bf16.resize(stored_rows * bf16_layout.ld);
      }
    }
  }

  void prepare_row(int64_t m) {
    for (int64_t g = 0; g < (u8.empty() ? 0 : u8_groups); ++g) {
      const int64_t k0 = g * kDepthInt8, n = std::min(kDepthInt8, cols - k0);
      quantize_u8(x + m * cols + k0, n, g + 1 < u8_groups ? n : u8_layout.ld - k0, u8_layout,
                  u8.data() + u8_layout.row(m) + u8_layout.at(k0), &u8_scale[m * u8_groups + g],
                  &u8_zero[m * u8_groups + g]);
    }
    if (!bf16.empty()) round_row_bf16(x + m * cols, cols, bf16_layout, bf16.data() + bf16_layout.row(m));
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

// One activation row's 32 integer dot products with a panel, corrected for the row's zero
// point and scaled: the one place this arithmetic is written, so the VNNI and AMX kernels
// round alike. Not inlined: inlined, the compiler may fuse its multiply with the caller's
// add (an FMA rounds once) in one kernel and not the other.
__attribute__((noinline)) KERN_TARGET_VNNI inline void store_int8_row(__m512i acc0, __m512i acc1, int32_t x_zero, float x_scale,
                                            const int32_t* row_sum, const float* w_scale, float* y, int64_t cols,
                                            bool accumulate) {
  const __m512i z = _mm512_set1_epi32(x_zero);
  const __m512 sx = _mm512_set1_ps(x_scale);
  const __m512i sum0 = _mm512_loadu_si512(row_sum), sum1 = _mm512_loadu_si512(row_sum + 16);
  const __m512 v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc0, _mm512_mullo_epi32(z, sum0))),
                                  _mm512_mul_ps(sx, _mm512_loadu_ps(w_scale)));
  const __m512 v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc1, _mm512_mullo_epi32(z, sum1))),
                                  _mm512_mul_ps(sx, _mm512_loadu_ps(w_scale + 16)));
  store_masked(y, v0, v1, cols, accumulate);
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
  for (int r = 0; r < R; ++r)
    store_int8_row(acc[r][0], acc[r][1], x_zero[r * ldq], x_scale[r * ldq], row_sum, w_scale, y + r * ldy, cols,
                   accumulate);
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
      tile_rows_int8(std::min<int64_t>(kRows, m - i), in.u8.data() + i * in.u8_layout.ld + k0, in.u8_layout.ld,
                     in.u8_scale.data() + i * in.u8_groups + k0 / kDepthInt8,
                     in.u8_zero.data() + i * in.u8_groups + k0 / kDepthInt8, in.u8_groups, panel, (depth + 3) / 4,
                     row_sum, scale,
                     y + i * ldy + n0, ldy, cols, k0 > 0);
  }
}

// ---- bf16: bf16 activations x bf16 weights (fp16 ones converted), vdpbf16ps ---------------

// out[0..n) = fp16 in[0..n) as bf16, rounded to nearest even; writes whole 16s (zero past n)
KERN_TARGET_BF16 inline void fp16_to_bf16(const uint16_t* in, int64_t n, uint16_t* out) {
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 mask = n - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - k)) - 1);
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, in + k)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), reinterpret_cast<const __m256i&>(b));
  }
}

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
      fp16_to_bf16(row, depth, converted);
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
      tile_rows_bf16(std::min<int64_t>(kRows, m - i), in.bf16.data() + i * in.bf16_layout.ld + k0, in.bf16_layout.ld, panel,
                     (depth + 1) / 2, y + i * ldy + n0, ldy, cols, k0 > 0);
  }
}

// ---- AMX: the int8 and bf16 products in tiles --------------------------------------------
//
// A tile instruction adds A . B into C[16][16] for A = 16 rows of 64 bytes and B = 16 rows
// of 16 32-bit elements, each holding 4 (int8) or 2 (bf16) consecutive values of k. The
// activations are A, loaded from the input's u8 / bf16 copy, which GemmInput stores as
// whole tiles for these kernels (RowLayout); the weights are B, packed per panel and block
// of K in the layout of the VNNI and BF16 kernels' panels, [k step][32 rows][4 bytes]: two
// B tiles side by side. So C holds 16 tokens x 16 outputs, the layout of the VNNI kernel's
// registers, and the int8 kernel stores through the same `store_int8_row` per block of
// 512: its integer sums being exact, its output is bit-identical to the VNNI kernel's. Two
// A and two B tiles feed four C tiles.
//
// Around the tiles: packing is a dword transpose of the panel, once per block and pass of
// 256 tokens (1/16 of that pass's tile work), and the epilogue of 32 tokens runs on the
// vector units while the tiles compute the next 32. Measured on one core of the 2-vCPU
// Xeon (shared, so rough): the 350M model's four Linears on 1,024 tokens ran at ~300-550
// GMAC/s for int8, ~2x the VNNI kernel, and ~180-360 for bf16, ~4x the AVX512-BF16 one; the
// tiles' own peak is ~3,000. What remains is mostly the loads of A from L2 (each 1 KB tile
// serves two products) and the per-block epilogue the per-run activation scales require.

// tiles 0-3: C[token tile][output half]; 4-5: A (token tiles); 6-7: B (output halves)
inline const amx::TileConfig& amx_tile_config() {
  static const amx::TileConfig config = [] {
    amx::TileConfig c;
    for (int t = 0; t < 8; ++t) {
      c.rows[t] = 16;
      c.bytes_per_row[t] = kAmxRowBytes;
    }
    return c;
  }();
  return config;
}

constexpr int64_t kAmxPanelRowBytes = kPanel * 4;                   // one k step of a packed panel
constexpr int64_t kAmxPanelBytes = kDepthInt8 / 4 * kAmxPanelRowBytes;  // 16 KB (bf16: 256 / 2 steps, the same)
constexpr int64_t kAmxCBytes = 4 * 16 * 16 * 4;                     // the four C tiles
constexpr int64_t kAmxSpareBytes = 16 * kDepthBf16 * 2;             // 16 fp16 rows of a block, as bf16
// Tokens per pass over K: their outputs for the panel (32 KB) accumulate in the scratch, not in
// Y, whose rows are a multiple of 4 KB apart in the big GEMMs: there 1,024 rows of one panel
// fall in a few cache sets, and every block's read-modify-write missed to L3 (3x slower).
constexpr int64_t kAmxChunk = 256;
constexpr int64_t kAmxOutBytes = kAmxChunk * kPanel * 4;
static_assert(kAmxPanelBytes + 2 * kAmxCBytes + kAmxSpareBytes + kAmxOutBytes <= kPanelScratchFloats * 4,
              "fits the scratch");

// r[j][i] = r[i][j] for 16 rows of 16 dwords: 4x4 transposes within 128-bit lanes, then of
// the lanes themselves
KERN_TARGET_AVX512 inline void transpose_dwords(__m512i r[16]) {
  __m512i t[16];
  for (int g = 0; g < 16; g += 4) {
    const __m512i a = _mm512_unpacklo_epi32(r[g], r[g + 1]), b = _mm512_unpackhi_epi32(r[g], r[g + 1]);
    const __m512i c = _mm512_unpacklo_epi32(r[g + 2], r[g + 3]), d = _mm512_unpackhi_epi32(r[g + 2], r[g + 3]);
    // t[g + e], lane L: rows g..g+3 of column 4L + e
    t[g] = _mm512_unpacklo_epi64(a, c);
    t[g + 1] = _mm512_unpackhi_epi64(a, c);
    t[g + 2] = _mm512_unpacklo_epi64(b, d);
    t[g + 3] = _mm512_unpackhi_epi64(b, d);
  }
  for (int e = 0; e < 4; ++e) {
    const __m512i p0 = _mm512_shuffle_i32x4(t[e], t[4 + e], 0x88), p1 = _mm512_shuffle_i32x4(t[e], t[4 + e], 0xDD);
    const __m512i q0 = _mm512_shuffle_i32x4(t[8 + e], t[12 + e], 0x88);
    const __m512i q1 = _mm512_shuffle_i32x4(t[8 + e], t[12 + e], 0xDD);
    r[e] = _mm512_shuffle_i32x4(p0, q0, 0x88);
    r[4 + e] = _mm512_shuffle_i32x4(p1, q1, 0x88);
    r[8 + e] = _mm512_shuffle_i32x4(p0, q0, 0xDD);
    r[12 + e] = _mm512_shuffle_i32x4(p1, q1, 0xDD);
  }
}

// One output half of a packed panel: panel[s][half * 16 + j][0..4) = bytes 4s..4s+4 of row j
// (at base + j * stride) for j < rows and 4s < bytes, zero elsewhere, for `steps` steps (whole
// tiles). Returns each row's sum of its bytes as int8 (meaningless for bf16), counted as they pass.
KERN_TARGET_AMX_GEMM inline __m512i pack_half_panel(const char* base, int64_t stride, int64_t rows, int64_t bytes,
                                                    int64_t steps, int64_t half, char* panel) {
  __m512i sums = _mm512_setzero_si512();
  for (int64_t b0 = 0; b0 < steps * 4; b0 += 64) {
    const int64_t n = std::clamp<int64_t>(bytes - b0, 0, 64);
    const __mmask64 mask = n == 64 ? ~0ull : (1ull << n) - 1;
    __m512i r[16];
    for (int64_t j = 0; j < 16; ++j)
      r[j] = j < rows ? _mm512_maskz_loadu_epi8(mask, base + j * stride + b0) : _mm512_setzero_si512();
    transpose_dwords(r);
    for (int64_t c = 0; c < 16; ++c) {
      _mm512_storeu_si512(panel + (b0 / 4 + c) * kAmxPanelRowBytes + half * 64, r[c]);
      sums = _mm512_dpbusd_epi32(sums, _mm512_set1_epi8(1), r[c]);
    }
  }
  return sums;
}

// C tiles 0-3 into `c` as [token tile][output half][16][16] 32-bit values
KERN_TARGET_AMX_GEMM inline void store_c_tiles(char* c) {
  _tile_stored(0, c, kAmxRowBytes);
  _tile_stored(1, c + 1024, kAmxRowBytes);
  _tile_stored(2, c + 2048, kAmxRowBytes);
  _tile_stored(3, c + 3072, kAmxRowBytes);
}

// u8 activations x s8 weights (tdpbusd), corrected and scaled per block as the VNNI kernel
struct AmxInt8 {
  static constexpr int64_t kDepth = kDepthInt8, kValueBytes = 1;
  struct Block {
    alignas(64) int32_t row_sum[kPanel];
    alignas(64) float scale[kPanel];
    int64_t group;
  };
  static const char* x(const GemmInput& in) { return reinterpret_cast<const char*>(in.u8.data()); }
  static int64_t ld(const GemmInput& in) { return in.u8_layout.ld; }

  // the panel, and each row's sum over the block (the zero-point correction)
  KERN_TARGET_AMX_GEMM static void pack(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t depth,
                                        int64_t steps, char* panel, char*, Block& b) {
    const auto* data = static_cast<const char*>(w.data) + n0 * w.stride() + k0;
    for (int64_t h = 0; h < kPanel / 16; ++h)
      _mm512_store_si512(b.row_sum + h * 16, pack_half_panel(data + h * 16 * w.stride(), w.stride(), rows - h * 16,
                                                             depth, steps, h, panel));
    for (int64_t j = 0; j < kPanel; ++j) b.scale[j] = j < rows ? w.scale[n0 + j] : 0.0f;
    b.group = k0 / kDepthInt8;
  }

  KERN_TARGET_AMX_GEMM static void products() {
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 4, 7);
    _tile_dpbusd(2, 5, 6);
    _tile_dpbusd(3, 5, 7);
  }

  KERN_TARGET_AMX_GEMM static void store(const Block& b, const GemmInput& in, const char* c, int64_t i, int64_t rows,
                                         float* y, int64_t ldy, int64_t cols, bool accumulate) {
    for (int64_t r = 0; r < rows; ++r) {
      const auto* row = reinterpret_cast<const int32_t*>(c) + (r / 16) * 512 + (r % 16) * 16;
      const int64_t q = (i + r) * in.u8_groups + b.group;
      store_int8_row(_mm512_loadu_si512(row), _mm512_loadu_si512(row + 256), in.u8_zero[q], in.u8_scale[q],
                     b.row_sum, b.scale, y + r * ldy, cols, accumulate);
    }
  }
};

// bf16 activations x bf16 weights (fp16 ones converted), tdpbf16ps
template <class Fmt>
struct AmxBf16 {
  static constexpr int64_t kDepth = kDepthBf16, kValueBytes = 2;
  struct Block {};
  static const char* x(const GemmInput& in) { return reinterpret_cast<const char*>(in.bf16.data()); }
  static int64_t ld(const GemmInput& in) { return in.bf16_layout.ld * 2; }

  KERN_TARGET_AMX_GEMM static void pack(const WeightMatrix& w, int64_t n0, int64_t rows, int64_t k0, int64_t depth,
                                        int64_t steps, char* panel, char* spare, Block&) {
    const auto* data = static_cast<const uint16_t*>(w.data) + n0 * w.stride() + k0;
    for (int64_t h = 0; h < kPanel / 16; ++h) {
      const uint16_t* half = data + h * 16 * w.stride();
      const int64_t half_rows = std::clamp<int64_t>(rows - h * 16, 0, 16);
      if constexpr (std::is_same_v<Fmt, FP16>) {
        auto* converted = reinterpret_cast<uint16_t*>(spare);
        for (int64_t j = 0; j < half_rows; ++j) fp16_to_bf16(half + j * w.stride(), depth, converted + j * kDepthBf16);
        pack_half_panel(spare, kDepthBf16 * 2, half_rows, depth * 2, steps, h, panel);
      } else {
        pack_half_panel(reinterpret_cast<const char*>(half), w.stride() * 2, half_rows, depth * 2, steps, h, panel);
      }
    }
  }

  KERN_TARGET_AMX_GEMM static void products() {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }

  KERN_TARGET_AMX_GEMM static void store(const Block&, const GemmInput&, const char* c, int64_t, int64_t rows,
                                         float* y, int64_t ldy, int64_t cols, bool accumulate) {
    for (int64_t r = 0; r < rows; ++r) {
      const auto* row = reinterpret_cast<const float*>(c) + (r / 16) * 512 + (r % 16) * 16;
      store_masked(y + r * ldy, _mm512_loadu_ps(row), _mm512_loadu_ps(row + 256), cols, accumulate);
    }
  }
};

template <class Kind>
KERN_TARGET_AMX_GEMM void gemm_panel_amx(const WeightMatrix& w, const GemmInput& in, int64_t m, float* y, int64_t ldy,
                                         int64_t p, void* scratch) {
  const int64_t n0 = p * kPanel, cols = std::min<int64_t>(kPanel, w.rows - n0);
  char* panel = static_cast<char*>(scratch);
  char* c = panel + kAmxPanelBytes;  // two sets of C tiles: one being stored while the other fills
  char* spare = c + 2 * kAmxCBytes;
  auto* out = reinterpret_cast<float*>(spare + kAmxSpareBytes);  // [kAmxChunk][kPanel]
  const int64_t ld = Kind::ld(in);
  typename Kind::Block block;
  amx::Tiles tiles(amx_tile_config());
  for (int64_t t0 = 0; t0 < m; t0 += kAmxChunk) {
    const int64_t end = std::min(m, t0 + kAmxChunk);
    for (int64_t k0 = 0; k0 < w.cols; k0 += Kind::kDepth) {
      const int64_t depth = std::min(Kind::kDepth, w.cols - k0);
      const int64_t steps = round_up((depth * Kind::kValueBytes + 3) / 4, 16);
      Kind::pack(w, n0, cols, k0, depth, steps, panel, spare, block);
      // the block's first tile of each 16 tokens; the next 64 bytes of K are 1 KB on (RowLayout)
      const char* x = Kind::x(in) + k0 * Kind::kValueBytes * 16;
      const auto store = [&](int64_t i) {
        Kind::store(block, in, c + (i / kAmxTokens % 2) * kAmxCBytes, i, std::min(kAmxTokens, end - i),
                    out + (i - t0) * kPanel, kPanel, cols, k0 > 0);
      };
      for (int64_t i = t0; i < end; i += kAmxTokens) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t s = 0; s < steps; s += 16) {
          _tile_loadd(4, x + i * ld + 64 * s, kAmxRowBytes);
          _tile_loadd(5, x + (i + 16) * ld + 64 * s, kAmxRowBytes);
          _tile_loadd(6, panel + s * kAmxPanelRowBytes, kAmxPanelRowBytes);
          _tile_loadd(7, panel + s * kAmxPanelRowBytes + 64, kAmxPanelRowBytes);
          Kind::products();
        }
        if (i > t0) store(i - kAmxTokens);  // the previous tokens, while these compute
        store_c_tiles(c + (i / kAmxTokens % 2) * kAmxCBytes);
      }
      store(t0 + round_up(end - t0, kAmxTokens) - kAmxTokens);
    }
    for (int64_t i = t0; i < end; ++i) {
      float* dst = y + i * ldy + n0;
      const float* src = out + (i - t0) * kPanel;
      if (cols == kPanel && reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
        _mm512_stream_ps(dst, _mm512_loadu_ps(src));
        _mm512_stream_ps(dst + 16, _mm512_loadu_ps(src + 16));
      } else {
        std::memcpy(dst, src, cols * sizeof(float));
      }
    }
  }
}

// ---- entry points ------------------------------------------------------------------------

inline int64_t gemm_panel_count(const WeightMatrix& w) { return (w.rows + kPanel - 1) / kPanel; }

// Y[:, panel p] = X . W^T for weight panel p of `w` (bf16/fp16 weights carry no scale);
// call from every thread of a parallel region with its own `scratch` of
// kPanelScratchFloats floats. `in` must have been prepared for `w`.
inline void gemm_panel(const WeightMatrix& w, const GemmInput& in, float* y, int64_t ldy, int64_t p, float* scratch) {
  // the input chose the kernel (its copies are laid out for it); one prepared while the
  // reduced kernels were off, or for weights of another format, has none: fp32
  const bool fp16 = w.format == WeightFormat::kFloat16;
  switch (w.format == WeightFormat::kInt8 ? in.int8_kernel : fp16 || w.format == WeightFormat::kBFloat16
                                                                  ? in.bf16_kernel
                                                                  : GemmKernel::kFloat32) {
    case GemmKernel::kInt8Amx: return gemm_panel_amx<AmxInt8>(w, in, in.rows, y, ldy, p, scratch);
    case GemmKernel::kInt8: return gemm_panel_int8(w, in, in.rows, y, ldy, p, scratch);
    case GemmKernel::kBFloat16Amx:
      if (fp16) return gemm_panel_amx<AmxBf16<FP16>>(w, in, in.rows, y, ldy, p, scratch);
      return gemm_panel_amx<AmxBf16<BF16>>(w, in, in.rows, y, ldy, p, scratch);
    case GemmKernel::kBFloat16:
      if (fp16) return gemm_panel_bf16<FP16>(w, in, in.rows, y, ldy, p, scratch);
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
