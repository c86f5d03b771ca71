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
//
// What still separates 9 rows from 1 (the vector kernel), one core, 9 rows of 1,024: with the
// weights in L3 (the 350M model's 327 MB mostly are, one thread) AMX streams ~24 GB/s against
// ~28; from memory ~12 against ~13.5. The tile loop alone (no epilogue, one long call) reads
// memory at 14.2 GB/s; what is left is the epilogue (Results) and the per-chunk calls (~3%).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "amx.h"

namespace kern::amx {

constexpr int kTileRows = 16;   // weight rows per A tile; also the most activation rows (B columns)
constexpr int kTileCols = 64;   // int8 weights per A tile row

// Below this many activation rows the vector kernel is as fast or faster: a tile multiply
// costs the same for 1 or 16 rows, and tiles load 16 rows' streams at once. One thread,
// 300 MB of int8 rows of 1,024: 1 row vector 21.6 ms, AMX 24; 3 rows vector 25.4, AMX 24.2;
// 9 rows vector 42.8, AMX 26.9. The 350M model's forward pass (one thread) leans the other
// way: 3 tokens vector 27.3 ms, AMX 28.6; 4 tokens about even (29.0, 28.6). (Measured before
// the 16-row steps and aligned activation tiles below made AMX ~20% faster; not measured again.)
constexpr int kDefaultMinRows = 4;

// Process-wide: the fewest activation rows an int8 matvec hands to AMX; 0: none (AMX not
// usable here, or turned off: the tests compare with the vector kernel).
inline int& matvec_min_rows() {
  static int rows = usable().int8 ? kDefaultMinRows : 0;
  return rows;
}

// Turns r[i] (16 floats each) into r[m] = (r[0][m], ..., r[15][m]).
KERN_TARGET_AMX inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // r[4 i + j]'s 128-bit lane L: column 4 L + j of rows 4 i .. 4 i + 3
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  // then a 4 x 4 transpose of those lanes among r[j], r[4 + j], r[8 + j], r[12 + j]
  for (int j = 0; j < 4; ++j) {
    const __m512 s0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88), s1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd),
                 s2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88),
                 s3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
    t[j] = _mm512_shuffle_f32x4(s0, s2, 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(s1, s3, 0x88);
    t[8 + j] = _mm512_shuffle_f32x4(s0, s2, 0xdd);
    t[12 + j] = _mm512_shuffle_f32x4(s1, s3, 0xdd);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// The int16 activation rows as B tiles, one pair (low bytes, high bytes) per 64
// columns. A B tile holds the 64 columns as 16 rows of 4 consecutive values per
// activation row (its columns): tile t's row j, column n is
// x[n][64 t + 4 j .. 64 t + 4 j + 3]. Columns past the last whole 64 are left to
// `dot_rows`' tail.
//
// A tile row starts `row_bytes` after the one before: 4 x rows rounded up to a power of two,
// so no row straddles two cache lines. Packed tight (36 bytes for 9 rows), most rows did, and
// a tile load split them: a step's two B loads took longer than its multiplies; with the
// weights in L1, a step of 9 rows and 32 weight rows took 46-61 ns, aligned 25 (its four
// multiplies alone 20).
struct PackedActivations {
  int64_t rows = 0, cols = 0, row_bytes = 0;

  int64_t tile_bytes() const { return kTileRows * row_bytes; }
  // tile t's low bytes of the int16 values; its high bytes (their sign) follow at `hi`
  const uint8_t* lo(int64_t t) const { return base() + 2 * t * tile_bytes(); }
  const int8_t* hi(int64_t t) const { return reinterpret_cast<const int8_t*>(lo(t) + tile_bytes()); }

  // A tile's B operand is a 16 x 16 transpose of 4-byte groups: for each activation row n,
  // its 64 values' low (high) bytes are 16 groups, which become column n of the tile.
  KERN_TARGET_AMX void pack(const int16_t* x, int64_t x_rows, int64_t x_cols) {
    rows = x_rows;
    cols = x_cols;
    row_bytes = 4;
    while (row_bytes < 4 * rows) row_bytes *= 2;
    const int64_t tiles = cols / kTileCols;
    const int64_t size = 2 * tiles * tile_bytes() + 64;
    // uninitialised: pack writes every byte a tile load reads (the padding past 4 x rows it reads not)
    if (size > capacity_) bytes_.reset(new uint8_t[capacity_ = size]);
    const __mmask16 columns = static_cast<__mmask16>((1u << rows) - 1);
    for (int64_t t = 0; t < tiles; ++t) {
      __m512 l[kTileRows], h[kTileRows];
      for (int64_t n = 0; n < kTileRows; ++n) {
        if (n >= rows) {
          l[n] = h[n] = _mm512_setzero_ps();
          continue;
        }
        const int16_t* p = x + n * cols + t * kTileCols;
        const __m512i a = _mm512_loadu_si512(p), b = _mm512_loadu_si512(p + 32);
        l[n] = _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(a)),
                                                      _mm512_cvtepi16_epi8(b), 1));
        h[n] = _mm512_castsi512_ps(
            _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(_mm512_srai_epi16(a, 8))),
                               _mm512_cvtepi16_epi8(_mm512_srai_epi16(b, 8)), 1));
      }
      transpose16(l);
      transpose16(h);
      uint8_t* out = base() + 2 * t * tile_bytes();
      for (int g = 0; g < kTileRows; ++g) {
        _mm512_mask_storeu_ps(out + g * row_bytes, columns, l[g]);
        _mm512_mask_storeu_ps(out + tile_bytes() + g * row_bytes, columns, h[g]);
      }
    }
  }

 private:
  std::unique_ptr<uint8_t[]> bytes_;  // the tiles from its first 64-byte boundary on
  int64_t capacity_ = 0;
  uint8_t* base() { return bytes_.get() + (-reinterpret_cast<uintptr_t>(bytes_.get()) & 63); }
  const uint8_t* base() const { return const_cast<PackedActivations*>(this)->base(); }
};

// Tile 0 sums the lo products, 1 the hi ones, 2 holds weights, 3 and 4 the lo and hi activations.
inline TileConfig matvec_config(int64_t activation_rows) {
  TileConfig c;
  for (int t = 0; t < 5; ++t) {
    c.rows[t] = kTileRows;
    c.bytes_per_row[t] = t == 2 ? kTileCols : static_cast<uint16_t>(4 * activation_rows);
  }
  return c;
}

// A tile's int32 sums may wrap: a lo sum adds up to kBlockCols products of at most
// 128 * 255 (2^15 - 128): 32,768 of them stay below 2^30 + 2^22 < 2^31, the hi
// sums (at most 128 * 128 each) far below. Longer rows are summed a block at a time.
constexpr int64_t kBlockCols = 32768;

// The lo and hi sums of the accumulator tiles, stored
struct TileSums {
  alignas(64) int32_t lo[kTileRows][kTileRows], hi[kTileRows][kTileRows];
};

// dots[i * kTileRows + m] += hi[i][m] * 256 + lo[i][m], in int64 (the join needs more than 32 bits)
KERN_TARGET_AMX inline void add_tile_sums(const TileSums& sums, int64_t* dots) {
  const auto& [lo, hi] = sums;
  for (int i = 0; i < kTileRows; ++i) {
    const __m512i l = _mm512_load_si512(lo[i]), h = _mm512_load_si512(hi[i]);
    for (int half = 0; half < 2; ++half) {
      const __m256i l8 = half ? _mm512_extracti64x4_epi64(l, 1) : _mm512_castsi512_si256(l),
                    h8 = half ? _mm512_extracti64x4_epi64(h, 1) : _mm512_castsi512_si256(h);
      const __m512i sum = _mm512_add_epi64(_mm512_slli_epi64(_mm512_cvtepi32_epi64(h8), 8), _mm512_cvtepi32_epi64(l8));
      int64_t* d = dots + i * kTileRows + 8 * half;
      _mm512_storeu_si512(d, _mm512_add_epi64(_mm512_loadu_si512(d), sum));
    }
  }
}

// How many 64-column blocks ahead dot_rows prefetches its weight lines, into L1. A tile load
// that misses L1 holds up the tile multiplies queued behind it, so reading memory and
// multiplying took turns: on one core tile loads alone streamed ~15 GB/s, the multiplies on
// weights in L2 ~25 GB/s, the two together ~10. Prefetching the next block of rows into L2
// (32 KB ahead) did not change that; 3 column blocks ahead into L1 took 9 rows from 31 to
// 27 ms per 300 MB of weights on one thread (2 to 10 tried; 2 to 6 about even).
constexpr int64_t kPrefetchTiles = 3;

// Whether dot_rows needs a carry for rows of `cols`
inline bool needs_carry(int64_t cols) { return cols > kBlockCols || cols % kTileCols; }

// The results of 16 weight rows: y[m * ldy + r0 + i] = w_scale[r0 + i] * xs[m] * float(dot) for
// i < count and m < n, the exact dot of weight row i with activation row m as dot_rows left it
// in `sums` (+ `carry`) (int8_dot_result in matvec.h, 16 activation rows at a time, in the same
// order of operations), transposed into one contiguous run of y per activation row. The sums are
// joined here, not first stored as int64 and read back (that was ~10% of a 9-row matvec of
// weights in L2).
//
// The next 16 rows' dot_rows scales one weight row's results per tile step (`scale_row`), in
// the shadow of its tile loads: done all at once between two blocks of rows, the epilogue held
// up the weights' prefetches, and a core streamed 9 rows from memory at 12.7 GB/s against 14.2
// for the tile loop alone. In the 350M model's verify pass it took 9 tokens from 1.37-1.43x one
// token to 1.32-1.35x (two threads), 1.34 to 1.27x (one).
struct Results {
  const float* w_scale;
  __m512 x_scale;
  int64_t n;
  float* y;
  int64_t ldy;
  const TileSums* sums = nullptr;  // null: none pending
  const int64_t* carry = nullptr;
  int64_t r0 = 0, count = 0;
  int scaled = kTileRows;  // weight rows whose results are in v
  __m512 v[kTileRows];

  void start(const TileSums& pending, const int64_t* pending_carry, int64_t first_row, int64_t rows) {
    sums = &pending;
    carry = pending_carry;
    r0 = first_row;
    count = rows;
    scaled = 0;
  }

  KERN_TARGET_AMX void scale_row() {
    if (scaled == kTileRows) return;
    const int i = scaled++;
    const __m512 ws = _mm512_set1_ps(i < count ? w_scale[r0 + i] : 0.0f);
    const __m512i l = _mm512_load_si512(sums->lo[i]), h = _mm512_load_si512(sums->hi[i]);
    __m256 dot[2];
    for (int half = 0; half < 2; ++half) {
      const __m256i l8 = half ? _mm512_extracti64x4_epi64(l, 1) : _mm512_castsi512_si256(l),
                    h8 = half ? _mm512_extracti64x4_epi64(h, 1) : _mm512_castsi512_si256(h);
      __m512i d = _mm512_add_epi64(_mm512_slli_epi64(_mm512_cvtepi32_epi64(h8), 8), _mm512_cvtepi32_epi64(l8));
      if (carry) d = _mm512_add_epi64(d, _mm512_loadu_si512(carry + i * kTileRows + 8 * half));
      dot[half] = _mm512_cvtepi64_ps(d);
    }
    v[i] = _mm512_mul_ps(_mm512_mul_ps(ws, x_scale), _mm512_insertf32x8(_mm512_castps256_ps512(dot[0]), dot[1], 1));
  }

  // scales the rows not scaled yet and stores them all; none pending after
  KERN_TARGET_AMX void store() {
    if (!sums) return;
    while (scaled < kTileRows) scale_row();
    transpose16(v);
    const __mmask16 rows = count >= kTileRows ? 0xffff : (1u << count) - 1;
    for (int64_t m = 0; m < n; ++m) _mm512_mask_storeu_ps(y + m * ldy + r0, rows, v[m]);
    sums = nullptr;
  }
};

// The exact dot of weight row i (< 16) with activation row m is hi[i][m] * 256 + lo[i][m] of
// `sums`, plus carry[i * kTileRows + m] when there is a carry: the int64 sums of the column
// blocks before the last and of the columns past the last whole tile (rows of 1,024 or 4,096
// have neither: `carry` null, as `needs_carry` says). `x16` is the unpacked int16 form, for
// those columns. Scales `previous`' results as it goes (Results). Needs
// `Tiles(matvec_config(x.rows))` on this thread.
//
// One tile of 16 weight rows a step, not two sharing the activation tiles: the rows are a
// row's length apart, 1 KB for most of the 350M model's, so a step's lines all fall in 4 of
// L1's 64 sets; with 32 rows, 8 lines a set each step (prefetched 3 steps ahead) beside the
// activation tiles' share of the set overflowed its 12 ways. 16 rows were 18% faster (9 rows
// of weights in L3: 20 -> 24 GB/s a core; in L2 31 -> 39; from memory the same, ~11).
KERN_TARGET_AMX inline void dot_rows(const int8_t* w, int64_t stride, const PackedActivations& x, const int16_t* x16,
                                     TileSums& sums, int64_t* carry, const char* prefetch_end, Results& previous) {
  const int64_t k = x.cols, tiles = k / kTileCols, n = x.rows, b_stride = x.row_bytes;
  if (tiles == 0) sums = TileSums{};  // rows shorter than a tile
  for (int64_t t0 = 0; t0 < tiles; t0 += kBlockCols / kTileCols) {
    const int64_t t1 = std::min(tiles, t0 + kBlockCols / kTileCols);
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t t = t0; t < t1; ++t) {
      // the lines of the column block kPrefetchTiles on (past the last: into the next 16 rows,
      // int8_matvec walks them in order), into L1: see kPrefetchTiles
      const int64_t ta = t + kPrefetchTiles;
      const char* ahead = reinterpret_cast<const char*>(w) + ta / tiles * kTileRows * stride + ta % tiles * kTileCols;
      for (int i = 0; i < kTileRows; ++i)
        if (ahead + i * stride < prefetch_end) _mm_prefetch(ahead + i * stride, _MM_HINT_T0);
      _tile_loadd(3, x.lo(t), b_stride);
      _tile_loadd(4, x.hi(t), b_stride);
      _tile_loadd(2, w + t * kTileCols, stride);
      _tile_dpbsud(0, 2, 3);
      _tile_dpbssd(1, 2, 4);
      previous.scale_row();
    }
    _tile_stored(0, sums.lo, sizeof sums.lo[0]);
    _tile_stored(1, sums.hi, sizeof sums.hi[0]);
    if (t1 < tiles) add_tile_sums(sums, carry);
  }
  if (tiles * kTileCols == k) return;
  for (int i = 0; i < kTileRows; ++i)
    for (int64_t m = 0; m < n; ++m) {
      int64_t tail = 0;
      for (int64_t j = tiles * kTileCols; j < k; ++j) tail += int64_t{w[i * stride + j]} * x16[m * k + j];
      carry[i * kTileRows + m] += tail;
    }
}

// y[m * ldy + r] = int8_dot_result(w_scale[r], x_scale[m], exact dot of weight row r with x16's
// row m) for rows [row_begin, row_end) of `w` ([rows, x.cols], `stride` bytes from row to
// row) and m < x.rows.
KERN_TARGET_AMX inline void int8_matvec(const int8_t* w, int64_t stride, const float* w_scale, int64_t row_begin,
                                 int64_t row_end, const PackedActivations& x, const int16_t* x16,
                                 const float* x_scale, float* y, int64_t ldy) {
  const Tiles tiles(matvec_config(x.rows));
  const char* end = reinterpret_cast<const char*>(w + row_end * stride);
  float xs[kTileRows] = {};
  std::copy(x_scale, x_scale + x.rows, xs);
  TileSums sums[2];  // these 16 rows' and the previous 16's, whose results are pending
  int64_t carry_sums[2][kTileRows * kTileRows];
  const bool with_carry = needs_carry(x.cols);
  Results previous{w_scale, _mm512_loadu_ps(xs), x.rows, y, ldy};
  for (int64_t r = row_begin; r < row_end; r += kTileRows) {
    const int b = (r - row_begin) / kTileRows % 2;
    int64_t* carry = with_carry ? carry_sums[b] : nullptr;
    if (carry) std::fill(carry, carry + kTileRows * kTileRows, 0);
    if (r + kTileRows <= row_end) {
      dot_rows(w + r * stride, stride, x, x16, sums[b], carry, end, previous);
    } else {
      // the last few rows, zero-padded to a whole tile
      thread_local std::vector<int8_t> padded;
      padded.assign(kTileRows * x.cols, 0);
      for (int64_t i = 0; r + i < row_end; ++i) std::memcpy(&padded[i * x.cols], w + (r + i) * stride, x.cols);
      dot_rows(padded.data(), x.cols, x, x16, sums[b], carry, nullptr, previous);
    }
    previous.store();
    previous.start(sums[b], carry, r, std::min<int64_t>(kTileRows, row_end - r));
  }
  previous.store();
}

}  // namespace kern::amx
