// Matrix-times-few-vectors with weights stored as fp32, bf16, fp16 or int8.
//
// Decoding multiplies each weight matrix by one activation row per sequence,
// so the cost is reading the weights once: the weights are stored one output
// row per line ([out, in], the transpose of paddle.nn.Linear) so each output
// is a contiguous dot product. Float formats are converted to fp32 in
// registers and never written back; activations and accumulation stay fp32.
//
// int8 rows carry one symmetric scale each, applied once to the finished dot
// product. They meet the activations rounded to int16 (one scale per row,
// absmax / 32767) in integer multiply-adds, 32 weights an instruction: turning
// each int8 weight into fp32 first took three instructions per 16 weights,
// more than two cores could do at the speed memory delivers them. The
// activations' rounding error, 2^-16 of their largest value, is far below the
// weights' own (2^-8 of theirs).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "amx_matvec.h"
#include "simd.h"

namespace kern {

enum class WeightFormat { kFloat32, kBFloat16, kFloat16, kInt8 };

struct WeightMatrix {
  const void* data;
  WeightFormat format;
  const float* scale;  // per output row; int8 only
  int64_t rows;        // outputs
  int64_t cols;        // inputs
  int64_t ld = 0;      // elements from one row to the next; 0: cols (attention's blocks set it)
  int64_t stride() const { return ld ? ld : cols; }
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

// Software prefetch into L2, this far ahead of the loads, stopping at `end`
// (the end of the thread's chunk: lines past it are another thread's). The
// hardware prefetchers alone keep too few lines in flight for a core to reach
// the memory bandwidth; prefetching into L1 2 KB ahead left bf16/fp16 at ~60%
// of it, and into L2 8 KB ahead serves the narrow formats best (the sweep is in
// bench/generation.md, made with bench/matvec_stream.cc, which sets
// CODEGEN_PREFETCH_BYTES).
#ifndef CODEGEN_PREFETCH_BYTES
#define CODEGEN_PREFETCH_BYTES 8192
#endif
constexpr int kPrefetchBytes = CODEGEN_PREFETCH_BYTES;

inline void prefetch_ahead(const void* p, int bytes, const void* end) {
  const char* ahead = static_cast<const char*>(p) + kPrefetchBytes;
  for (int b = 0; b < bytes; b += 64)
    if (ahead + b < end) _mm_prefetch(ahead + b, _MM_HINT_T1);
}

// out[m] = dot(w, x row m) for one weight row and M <= 4 activation rows.
// The weight vector is loaded once and used M times. Each activation row gets
// U independent sums so the FMA latency is hidden even when M is 1.
template <class Fmt, int M>
inline void dot_row(const typename Fmt::T* w, const float* x, int64_t ldx, int64_t k, float* out,
                    const void* prefetch_end) {
  using namespace simd;
  constexpr int U = M >= 4 ? 1 : 4 / M;
  vf acc[U][M];
  for (int u = 0; u < U; ++u)
    for (int m = 0; m < M; ++m) acc[u][m] = zero();
  int64_t i = 0;
  for (; i + U * kLanes <= k; i += U * kLanes) {
    prefetch_ahead(w + i, U * kLanes * sizeof(typename Fmt::T), prefetch_end);
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

// out[m] = dot(w, x row m) in int32 lanes for int8 weights and int16 activations.
template <int M>
inline void dot_row_int8(const int8_t* w, const int16_t* x, int64_t ldx, int64_t k, float* out,
                         const void* prefetch_end) {
  using namespace simd;
  constexpr int U = M >= 4 ? 1 : 4 / M;
  constexpr int kStep = U * kI16Lanes;
  // a block's int32 lane, its U sums added, holds 2 * kBlock / kI16Lanes
  // products of at most 127 * 32767: at most 512 of them (AVX2), 2.13e9 < 2^31.
  // Converting to float every kBlock columns keeps long rows from overflowing.
  constexpr int64_t kBlock = 4096;
  static_assert(kBlock % kStep == 0, "blocks hold whole steps");
  vf total[M];
  for (int m = 0; m < M; ++m) total[m] = zero();
  const int64_t k_vec = k - k % kStep;
  int64_t i = 0;
  while (i < k_vec) {
    const int64_t block_end = std::min(k_vec, i + kBlock);
    vi acc[U][M];
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < M; ++m) acc[u][m] = zero_i();
    for (; i < block_end; i += kStep) {
      prefetch_ahead(w + i, kStep, prefetch_end);
      for (int u = 0; u < U; ++u) {
        const vi wv = load_int8_as_i16(w + i + u * kI16Lanes);
        for (int m = 0; m < M; ++m) acc[u][m] = dot_i16(acc[u][m], wv, load_i16(x + m * ldx + i + u * kI16Lanes));
      }
    }
    for (int m = 0; m < M; ++m) {
      for (int u = 1; u < U; ++u) acc[0][m] = add_i(acc[0][m], acc[u][m]);
      total[m] = add(total[m], int32_to_float(acc[0][m]));
    }
  }
  for (int m = 0; m < M; ++m) {
    int64_t tail = 0;
    for (int64_t j = k_vec; j < k; ++j) tail += int64_t{w[j]} * x[m * ldx + j];
    out[m] = sum(total[m]) + static_cast<float>(tail);
  }
}

// The activation rows a matvec reads: fp32, plus their int16 rounding once an
// int8 weight needs it, as AMX tiles too where they are used (`prepare` it
// before any thread reads it).
struct MatvecInput {
  const float* x;
  int64_t rows, cols;
  std::vector<int16_t> int16;   // [rows, cols]
  std::vector<float> int16_scale;
  amx::PackedActivations int16_tiles;  // empty (rows 0) unless AMX takes these rows

  MatvecInput(const float* x, int64_t rows, int64_t cols) : x(x), rows(rows), cols(cols) {}

  void prepare(const WeightMatrix& w) {
    if (w.format == WeightFormat::kInt8 && int16.empty()) {
      round_to_int16();
      const int amx_rows = amx::matvec_min_rows();
      if (amx_rows && rows >= amx_rows && rows <= amx::kTileRows) int16_tiles.pack(int16.data(), rows, cols);
    }
  }

  void round_to_int16() {
    using namespace simd;
    int16.resize(rows * cols);
    int16_scale.resize(rows);
    const int64_t n_vec = cols - cols % kLanes;
    for (int64_t m = 0; m < rows; ++m) {
      const float* xr = x + m * cols;
      int16_t* qr = int16.data() + m * cols;
      vf vmax = zero();
      for (int64_t i = 0; i < n_vec; i += kLanes) vmax = max(vmax, abs(load(xr + i)));
      float absmax = hmax(vmax);
      for (int64_t i = n_vec; i < cols; ++i) absmax = std::max(absmax, std::fabs(xr[i]));
      // an all-zero row keeps scale 0 and rounds to zeros
      const float scale = absmax / 32767.0f, inv = absmax > 0.0f ? 32767.0f / absmax : 0.0f;
      int16_scale[m] = scale;
      const vf iv = set1(inv);
      for (int64_t i = 0; i < n_vec; i += kLanes) store_i16(qr + i, mul(load(xr + i), iv));
      for (int64_t i = n_vec; i < cols; ++i) qr[i] = static_cast<int16_t>(std::nearbyint(xr[i] * inv));
    }
  }
};

constexpr int kVecTile = 4;

// The int8 matvec contract: `dot` is the exact integer dot product of an int8 weight row
// with an int16-rounded activation row, so every kernel gives the same bits.
inline float int8_dot_result(float w_scale, float x_scale, int64_t dot) {
  return w_scale * x_scale * static_cast<float>(dot);
}

// y[m * ldy + r] = scale[r] * dot(w row r, x row m) for rows [row_begin, row_end)
// and all m < num_x. Rows are walked in order, one sequential stream; a row
// stays in L1 while successive groups of kVecTile activation rows reuse it.
template <class Fmt>
void matvec_rows(const WeightMatrix& w, const MatvecInput& in, float* y, int64_t ldy, int64_t row_begin,
                 int64_t row_end) {
  const auto* data = static_cast<const typename Fmt::T*>(w.data);
  const int64_t k = w.cols;
  const void* end = data + row_end * k;
  if constexpr (std::is_same_v<Fmt, I8>) {
    if (in.int16_tiles.rows) {
      amx::int8_matvec(data, w.stride(), w.scale, row_begin, row_end, in.int16_tiles, in.int16.data(),
                       in.int16_scale.data(), y, ldy,
                       [](float w_scale, float x_scale, int64_t dot) { return int8_dot_result(w_scale, x_scale, dot); });
      return;
    }
  }
  float dots[kVecTile];
  for (int64_t r = row_begin; r < row_end; ++r) {
    const auto* wr = data + r * k;
    const float s = w.scale ? w.scale[r] : 1.0f;
    for (int64_t m0 = 0; m0 < in.rows; m0 += kVecTile) {
      const int64_t ms = std::min<int64_t>(kVecTile, in.rows - m0);
      if constexpr (std::is_same_v<Fmt, I8>) {
        const int16_t* xm = in.int16.data() + m0 * k;
        switch (ms) {
          case 1: dot_row_int8<1>(wr, xm, k, k, dots, end); break;
          case 2: dot_row_int8<2>(wr, xm, k, k, dots, end); break;
          case 3: dot_row_int8<3>(wr, xm, k, k, dots, end); break;
          default: dot_row_int8<4>(wr, xm, k, k, dots, end); break;
        }
        for (int64_t m = 0; m < ms; ++m) y[(m0 + m) * ldy + r] = s * in.int16_scale[m0 + m] * dots[m];
      } else {
        const float* xm = in.x + m0 * k;
        switch (ms) {
          case 1: dot_row<Fmt, 1>(wr, xm, k, k, dots, end); break;
          case 2: dot_row<Fmt, 2>(wr, xm, k, k, dots, end); break;
          case 3: dot_row<Fmt, 3>(wr, xm, k, k, dots, end); break;
          default: dot_row<Fmt, 4>(wr, xm, k, k, dots, end); break;
        }
        for (int64_t m = 0; m < ms; ++m) y[(m0 + m) * ldy + r] = s * dots[m];
      }
    }
  }
}

// `in` must have been prepared for `w`
inline void matvec_rows(const WeightMatrix& w, const MatvecInput& in, float* y, int64_t ldy, int64_t row_begin,
                        int64_t row_end) {
  switch (w.format) {
    case WeightFormat::kFloat32: matvec_rows<F32>(w, in, y, ldy, row_begin, row_end); break;
    case WeightFormat::kBFloat16: matvec_rows<BF16>(w, in, y, ldy, row_begin, row_end); break;
    case WeightFormat::kFloat16: matvec_rows<FP16>(w, in, y, ldy, row_begin, row_end); break;
    case WeightFormat::kInt8: matvec_rows<I8>(w, in, y, ldy, row_begin, row_end); break;
  }
}

// Threads take rows a chunk of about kChunkBytes at a time, dynamically: long
// enough that the prefetches cut off at its end cost little, and a thread that
// the OS preempts (the cores are shared) delays the others by at most one chunk
// instead of its whole share.
constexpr int64_t kChunkBytes = 256 << 10;

inline int64_t weight_bytes(WeightFormat f) {
  switch (f) {
    case WeightFormat::kFloat32: return 4;
    case WeightFormat::kInt8: return 1;
    default: return 2;
  }
}

inline int64_t row_bytes(const WeightMatrix& w) { return w.cols * weight_bytes(w.format); }

struct RowChunks {
  int64_t rows, per_chunk;
  // `bytes_per_row`: the weight bytes a chunk's row stands for (its row in each matrix it covers)
  // the nearest whole number of 32-row blocks (AMX takes weights 16 rows a tile, two tiles at a time)
  RowChunks(int64_t rows, int64_t bytes_per_row)
      : rows(rows),
        per_chunk(std::max<int64_t>(16, (kChunkBytes / std::max<int64_t>(1, bytes_per_row) + 16) / 32 * 32)) {}
  int64_t count() const { return (rows + per_chunk - 1) / per_chunk; }
  int64_t begin(int64_t c) const { return c * per_chunk; }
  int64_t end(int64_t c) const { return std::min(rows, (c + 1) * per_chunk); }
};

}  // namespace kern
