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

// ---- register tiles -------------------------------------------------------------------
//
// A tile multiplies R weight rows by M activation rows: each step loads (and widens)
// R weight vectors once and uses each for all M rows, so the rows of a pass (up to 13,
// below) read and convert the weights once. Each (weight row, activation row) pair has exactly one chain of
// sums, whatever R and M are: lane j adds columns j, j + lanes, ... in order, then the
// lanes are summed, then the columns past the last whole vector one by one. So a row's
// result is the same bits whether it is computed alone or with 15 others, and a
// forward pass of n tokens gives the logits of n one-token steps. With one activation
// row the R weight rows' chains are what keep several FMAs in flight.

constexpr int kVectorRegisters = simd::kLanes == 16 ? 32 : 16;
constexpr int kMaxTileRows = 4;

// weight rows per tile: its R x M sums, R weight vectors and one activation vector fit
// the registers with two to spare
constexpr int tile_rows(int m) { return std::clamp((kVectorRegisters - 3) / (m + 1), 1, kMaxTileRows); }

// Activation rows one pass over the weights takes: as many as leave registers for two
// weight rows (13 with AVX-512, 5 with AVX2). More rows take two passes, the second
// reading the chunk's weights again from L2: a tile of one weight row loads one
// activation vector per FMA, more than L1 serves once 16 rows outgrow it (16 rows as
// two passes of 8 took 0.55x the time of one pass of 16).
constexpr int max_pass_rows(int m = 1) { return tile_rows(m + 1) >= 2 ? max_pass_rows(m + 1) : m; }
constexpr int kMaxPassRows = max_pass_rows();

// steps of `lanes` elements of T that make one 64-byte line: the loops prefetch once per line
template <class T>
constexpr int steps_per_line(int lanes) {
  return std::max<int>(1, 64 / (lanes * static_cast<int>(sizeof(T))));
}

// The software prefetch of a tile: kPrefetchBytes of the tile's reading ahead. Its R rows
// are read side by side, so that is a line of each row kPrefetchBytes / R further along
// it, or past the row's end as far into the rows of the next tiles (prefetching
// kPrefetchBytes ahead in each row would fetch the tile's own next row, being read now).
template <class T, int R>
class TilePrefetch {
 public:
  TilePrefetch(const T* w, int64_t ldw, int64_t k, const void* end) : ldw_(ldw), k_(k), end_(end) {
    const int64_t ahead = kPrefetchBytes / (R * static_cast<int64_t>(sizeof(T)));
    col_ = ahead % k;
    next_ = w + ahead / k * R * ldw + col_;
  }
  // prefetches the next line of each row
  void next_line() {
    const T* p = next_;
    for (int r = 0; r < R; ++r, p += ldw_)
      if (p < end_) _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1);
    constexpr int64_t kLine = 64 / sizeof(T);
    next_ += kLine;
    for (col_ += kLine; col_ >= k_; col_ -= k_) next_ += R * ldw_ - k_;
  }

 private:
  int64_t ldw_, k_, col_;
  const void* end_;
  const T* next_;  // row 0's next line
};

// y[m * ldy + r] = scale[r] * dot(w row r, x row m) for R rows of w (ldw apart) and M
// rows of x; no scale: 1 (float formats have none, or ones)
template <class Fmt, int R, int M>
inline void dot_tile(const typename Fmt::T* w, int64_t ldw, const float* scale, const float* x, int64_t ldx,
                     int64_t k, float* y, int64_t ldy, const void* prefetch_end) {
  using namespace simd;
  using T = typename Fmt::T;
  constexpr int kLine = steps_per_line<T>(kLanes);
  vf acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = zero();
  const auto step = [&](int64_t i) {
    vf wv[R];
    for (int r = 0; r < R; ++r) wv[r] = Fmt::load(w + r * ldw + i);
    for (int m = 0; m < M; ++m) {
      const vf xv = load(x + m * ldx + i);
      for (int r = 0; r < R; ++r) acc[r][m] = fma(wv[r], xv, acc[r][m]);
    }
  };
  TilePrefetch<T, R> prefetch(w, ldw, k, prefetch_end);
  int64_t i = 0;
  for (; i + kLine * kLanes <= k; i += kLine * kLanes) {
    prefetch.next_line();
    for (int s = 0; s < kLine; ++s) step(i + s * kLanes);
  }
  for (; i + kLanes <= k; i += kLanes) step(i);
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      float s = sum(acc[r][m]);
      for (int64_t j = i; j < k; ++j) s = std::fma(Fmt::scalar(w[r * ldw + j]), x[m * ldx + j], s);
      y[m * ldy + r] = scale ? scale[r] * s : s;
    }
}

// As dot_tile for int8 weights and int16 activations, exactly: y[m * ldy + r] is the
// integer dot product. Products go into int32 lanes a block of columns at a time, then
// into int64.
template <int R, int M>
inline void dot_tile_int8(const int8_t* w, int64_t ldw, const int16_t* x, int64_t ldx, int64_t k, int64_t* y,
                          int64_t ldy, const void* prefetch_end) {
  using namespace simd;
  constexpr int kLine = steps_per_line<int8_t>(kI16Lanes);
  // a block puts 2 * kBlock / kI16Lanes = 512 products into each int32 lane, each at most
  // 128 * 32767 in size (rounding keeps activations within +-32767): 2,147,418,112 < 2^31
  constexpr int64_t kBlock = 256 * kI16Lanes;
  static_assert(kBlock % (kLine * kI16Lanes) == 0, "blocks hold whole lines");
  int64_t total[R][M] = {};
  const auto step = [&](int64_t i, vi (&acc)[R][M]) {
    vi wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load_int8_as_i16(w + r * ldw + i);
    for (int m = 0; m < M; ++m) {
      const vi xv = load_i16(x + m * ldx + i);
      for (int r = 0; r < R; ++r) acc[r][m] = dot_i16(acc[r][m], wv[r], xv);
    }
  };
  TilePrefetch<int8_t, R> prefetch(w, ldw, k, prefetch_end);
  const int64_t k_vec = k - k % kI16Lanes;
  for (int64_t i = 0; i < k_vec;) {
    const int64_t block_end = std::min(k_vec, i + kBlock);
    vi acc[R][M];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) acc[r][m] = zero_i();
    for (; i + kLine * kI16Lanes <= block_end; i += kLine * kI16Lanes) {
      prefetch.next_line();
      for (int s = 0; s < kLine; ++s) step(i + s * kI16Lanes, acc);
    }
    for (; i < block_end; i += kI16Lanes) step(i, acc);
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) total[r][m] += sum_i64(acc[r][m]);
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      int64_t tail = 0;
      for (int64_t j = k_vec; j < k; ++j) tail += int64_t{w[r * ldw + j]} * x[m * ldx + j];
      y[m * ldy + r] = total[r][m] + tail;
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

// calls f(std::integral_constant<int, M>) for M = n, 1 <= n <= kMaxPassRows
template <int M = 1, class F>
inline void with_rows(int64_t n, F&& f) {
  if constexpr (M < kMaxPassRows) {
    if (n != M) return with_rows<M + 1>(n, f);
  }
  f(std::integral_constant<int, M>{});
}

// What an int8 matvec outputs for a weight row (scale w_scale) and an activation row
// (rounded to int16 with scale x_scale) whose integer dot product is `dot`: the same
// bits whatever kernel computed the exact `dot`.
inline float int8_dot_result(float w_scale, float x_scale, int64_t dot) {
  return w_scale * x_scale * static_cast<float>(dot);
}

// y[m * ldy + r] = scale[r] * dot(w row r, x row m) for rows [row_begin, row_end) and
// all activation rows: tiles of weight rows in order (one sequential stream per tile
// row), each multiplied by all the activation rows of a pass.
template <class Fmt>
void matvec_rows(const WeightMatrix& w, const MatvecInput& in, float* y, int64_t ldy, int64_t row_begin,
                 int64_t row_end) {
  const auto* data = static_cast<const typename Fmt::T*>(w.data);
  const int64_t k = w.cols, ld = w.stride();
  const void* end = data + row_end * ld;
  if constexpr (std::is_same_v<Fmt, I8>) {
    if (in.int16_tiles.rows) {
      amx::int8_matvec(data, ld, w.scale, row_begin, row_end, in.int16_tiles, in.int16.data(),
                       in.int16_scale.data(), y, ldy);
      return;
    }
  }
  const int64_t passes = (in.rows + kMaxPassRows - 1) / kMaxPassRows;
  for (int64_t p = 0; p < passes; ++p) {
    const int64_t m0 = in.rows * p / passes, rows = in.rows * (p + 1) / passes - m0;
    with_rows(rows, [&](auto m_rows) {
      constexpr int M = decltype(m_rows)::value, R = tile_rows(M);
      if constexpr (std::is_same_v<Fmt, I8>) {
        int64_t dots[M * R];
        const int16_t* xm = in.int16.data() + m0 * k;
        const auto finish = [&](int64_t r0, int rows_done) {
          for (int m = 0; m < M; ++m)
            for (int r = 0; r < rows_done; ++r)
              y[(m0 + m) * ldy + r0 + r] = int8_dot_result(w.scale[r0 + r], in.int16_scale[m0 + m], dots[m * R + r]);
        };
        int64_t r = row_begin;
        for (; r + R <= row_end; r += R) {
          dot_tile_int8<R, M>(data + r * ld, ld, xm, k, k, dots, R, end);
          finish(r, R);
        }
        for (; r < row_end; ++r) {
          dot_tile_int8<1, M>(data + r * ld, ld, xm, k, k, dots, R, end);
          finish(r, 1);
        }
      } else {
        const float* xm = in.x + m0 * k;
        float* ym = y + m0 * ldy;
        const auto scale = [&](int64_t r) { return w.scale ? w.scale + r : nullptr; };
        int64_t r = row_begin;
        for (; r + R <= row_end; r += R) dot_tile<Fmt, R, M>(data + r * ld, ld, scale(r), xm, k, k, ym + r, ldy, end);
        for (; r < row_end; ++r) dot_tile<Fmt, 1, M>(data + r * ld, ld, scale(r), xm, k, k, ym + r, ldy, end);
      }
    });
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
  // the nearest whole number of 32-row blocks (a multiple of the 16 rows of an AMX weight tile)
  RowChunks(int64_t rows, int64_t bytes_per_row)
      : rows(rows),
        per_chunk(std::max<int64_t>(16, (kChunkBytes / std::max<int64_t>(1, bytes_per_row) + 16) / 32 * 32)) {}
  int64_t count() const { return (rows + per_chunk - 1) / per_chunk; }
  int64_t begin(int64_t c) const { return c * per_chunk; }
  int64_t end(int64_t c) const { return std::min(rows, (c + 1) * per_chunk); }
};

}  // namespace kern
