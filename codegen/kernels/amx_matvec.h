// int8 weights times up to 16 int16 activation rows on AMX, as exact integers.
//
// Verifying drafts multiplies each weight by up to 16 activation rows. With
// vpmaddwd every row costs the instructions one row does, and past a few rows
// the matvec stops being bound by memory. A tile multiply does a 16-row x
// 64-column block of weights against up to 16 activation rows in the same
// time whatever their number, so the weights are again read at memory speed.
//
// AMX multiplies bytes, the activations are int16: each is split as
// x = 256 * hi + lo, hi the signed high byte and lo the unsigned low one, and
// two multiplies (tdpbssd for hi, tdpbsud for lo) give two int32 sums joined in
// int64. The dot products are exact, so the result does not depend on how many
// activation rows came in one call (the int8 matvec contract, matvec.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "amx.h"

namespace kern::amx {

constexpr int kTileRows = 16;   // weight rows per A tile; also the most activation rows (B columns)
constexpr int kTileCols = 64;   // int8 weights per A tile row

// Process-wide: whether int8 matvecs of this many activation rows use AMX (where usable).
// Tests turn it off to compare with the vector kernel.
inline bool& matvec_enabled() {
  static bool enabled = usable().int8;
  return enabled;
}

// The int16 activation rows as B tiles, one tile per 64 columns. A B tile holds
// the 64 columns as 16 rows of 4 consecutive values per activation row (its
// columns): tile t's row j, column n is x[n][64 t + 4 j .. 64 t + 4 j + 3].
// Columns past the last whole 64 are left to `dot_rows`' tail.
struct PackedActivations {
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> lo;  // low bytes of the int16 values
  std::vector<int8_t> hi;   // high bytes (the value's sign)

  int64_t tile_bytes() const { return kTileRows * 4 * rows; }

  void pack(const int16_t* x, int64_t x_rows, int64_t x_cols) {
    rows = x_rows;
    cols = x_cols;
    const int64_t tiles = cols / kTileCols, groups = tiles * kTileRows;  // groups of 4 columns
    lo.assign(groups * rows * 4, 0);
    hi.assign(groups * rows * 4, 0);
    for (int64_t n = 0; n < rows; ++n) {
      const int16_t* xr = x + n * cols;
      for (int64_t g = 0; g < groups; ++g) {
        uint8_t* l = lo.data() + (g * rows + n) * 4;
        int8_t* h = hi.data() + (g * rows + n) * 4;
        for (int b = 0; b < 4; ++b) {
          const int16_t v = xr[g * 4 + b];
          l[b] = static_cast<uint8_t>(v & 0xff);
          h[b] = static_cast<int8_t>(v >> 8);
        }
      }
    }
  }
};

// Tiles 0-3 accumulate (lo and hi sums of two 16-row groups), 4-5 hold weights, 6-7 activations.
inline TileConfig matvec_config(int64_t activation_rows) {
  TileConfig c;
  const uint16_t b_bytes = static_cast<uint16_t>(4 * activation_rows);
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = kTileRows;
    c.bytes_per_row[t] = (t == 4 || t == 5) ? kTileCols : b_bytes;
  }
  return c;
}

// A tile's int32 sums may wrap: a lo sum adds up to kBlockCols products of at most
// 128 * 255 (2^15 - 128): 32,768 of them stay below 2^30 + 2^22 < 2^31, the hi
// sums (at most 128 * 128 each) far below. Longer rows are summed a block at a time.
constexpr int64_t kBlockCols = 32768;

// dots[i * kTileRows + n] += exact dot of weight row i (< G * 16) with activation row n.
// `x16` is the unpacked int16 form, for the columns past the last whole tile. Needs
// `Tiles(matvec_config(x.rows))` on this thread.
template <int G>
KERN_TARGET_AMX void dot_rows(const int8_t* w, int64_t stride, const PackedActivations& x, const int16_t* x16,
                              int64_t* dots, const char* prefetch_end) {
  static_assert(G == 1 || G == 2, "two 16-row groups fill the eight tiles");
  const int64_t k = x.cols, tiles = k / kTileCols, n = x.rows, b_stride = 4 * n;
  alignas(64) int32_t lo[kTileRows][kTileRows], hi[kTileRows][kTileRows];
  for (int64_t t0 = 0; t0 < tiles; t0 += kBlockCols / kTileCols) {
    const int64_t t1 = std::min(tiles, t0 + kBlockCols / kTileCols);
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (G == 2) {
      _tile_zero(2);
      _tile_zero(3);
    }
    for (int64_t t = t0; t < t1; ++t) {
      const int8_t* wt = w + t * kTileCols;
      // the lines this column block will need one block of rows later (see matvec_rows)
      const char* ahead = reinterpret_cast<const char*>(wt) + G * kTileRows * stride;
      for (int i = 0; i < G * kTileRows; ++i)
        if (ahead + i * stride < prefetch_end) _mm_prefetch(ahead + i * stride, _MM_HINT_T1);
      _tile_loadd(6, x.lo.data() + t * x.tile_bytes(), b_stride);
      _tile_loadd(7, x.hi.data() + t * x.tile_bytes(), b_stride);
      _tile_loadd(4, wt, stride);
      _tile_dpbsud(0, 4, 6);
      _tile_dpbssd(1, 4, 7);
      if constexpr (G == 2) {
        _tile_loadd(5, wt + kTileRows * stride, stride);
        _tile_dpbsud(2, 5, 6);
        _tile_dpbssd(3, 5, 7);
      }
    }
    for (int g = 0; g < G; ++g) {
      if (g == 0) {
        _tile_stored(0, lo, sizeof lo[0]);
        _tile_stored(1, hi, sizeof hi[0]);
      } else {
        _tile_stored(2, lo, sizeof lo[0]);
        _tile_stored(3, hi, sizeof hi[0]);
      }
      for (int i = 0; i < kTileRows; ++i)
        for (int64_t m = 0; m < n; ++m)
          dots[(g * kTileRows + i) * kTileRows + m] += int64_t{hi[i][m]} * 256 + lo[i][m];
    }
  }
  for (int i = 0; i < G * kTileRows; ++i)
    for (int64_t m = 0; m < n; ++m) {
      int64_t tail = 0;
      for (int64_t j = tiles * kTileCols; j < k; ++j) tail += int64_t{w[i * stride + j]} * x16[m * k + j];
      dots[i * kTileRows + m] += tail;
    }
}

// For weight rows [row_begin, row_end) of `w` ([rows, x.cols], `stride` bytes from row to
// row) and every activation row m: emit(r, m, exact dot of row r with x16's row m).
template <class Emit>
KERN_TARGET_AMX void int8_matvec(const int8_t* w, int64_t stride, int64_t row_begin, int64_t row_end,
                                 const PackedActivations& x, const int16_t* x16, Emit emit) {
  const Tiles tiles(matvec_config(x.rows));
  const char* end = reinterpret_cast<const char*>(w + row_end * stride);
  int64_t dots[2 * kTileRows * kTileRows];
  auto finish = [&](int64_t r0, int64_t count) {
    for (int64_t i = 0; i < count; ++i)
      for (int64_t m = 0; m < x.rows; ++m) emit(r0 + i, m, dots[i * kTileRows + m]);
  };
  int64_t r = row_begin;
  for (; r + 2 * kTileRows <= row_end; r += 2 * kTileRows) {
    std::fill(std::begin(dots), std::end(dots), 0);
    dot_rows<2>(w + r * stride, stride, x, x16, dots, end);
    finish(r, 2 * kTileRows);
  }
  for (; r + kTileRows <= row_end; r += kTileRows) {
    std::fill(std::begin(dots), std::end(dots), 0);
    dot_rows<1>(w + r * stride, stride, x, x16, dots, end);
    finish(r, kTileRows);
  }
  if (r < row_end) {
    // the last few rows, zero-padded to a whole tile
    thread_local std::vector<int8_t> padded;
    padded.assign(kTileRows * x.cols, 0);
    for (int64_t i = 0; r + i < row_end; ++i) std::memcpy(&padded[i * x.cols], w + (r + i) * stride, x.cols);
    std::fill(std::begin(dots), std::end(dots), 0);
    dot_rows<1>(padded.data(), x.cols, x, x16, dots, nullptr);
    finish(r, row_end - r);
  }
}

}  // namespace kern::amx
