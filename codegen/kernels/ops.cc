// Paddle custom operators for fast CPU inference.
//
//   codegen_weight_only_linear  y = x @ W^T * scale + bias, W stored fp32/bf16/fp16/int8
//                               (x stays fp32 unless reduced_precision: then as a prompt's GEMMs)
//   codegen_dequantize          W * scale as fp32, for large batches that go to paddle.matmul
//   codegen_pack_weight         a paddle.nn.Linear weight [in, out] -> [out, in] int8/bf16/fp16/fp32
//   codegen_decoder_layer       one whole CodeGen block for a few new tokens, KV cache in place
//   codegeex_decoder_layer      one whole CodeGeeX layer (or its top-query layer), likewise
//   codegen_read_bandwidth      sums a buffer with all threads, prefetching as the matvecs do:
//                               the memory roofline probe
//
// Threads: OpenMP, as many as omp_get_max_threads() (OMP_NUM_THREADS; libgomp's default
// is the CPUs this process may run on). A decode step of a CodeGen layer has three barriers,
// a prompt's seven (a CodeGeeX layer's: five and nine); how long threads spin at them before
// sleeping: codegen/__init__.py.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "gemm.h"
#include "matvec.h"
#include "paddle/extension.h"

namespace {

using kern::WeightFormat;
using kern::WeightMatrix;

WeightFormat format_of(const paddle::Tensor& w) {
  switch (w.dtype()) {
    case paddle::DataType::FLOAT32: return WeightFormat::kFloat32;
    case paddle::DataType::BFLOAT16: return WeightFormat::kBFloat16;
    case paddle::DataType::FLOAT16: return WeightFormat::kFloat16;
    case paddle::DataType::INT8: return WeightFormat::kInt8;
    default: PD_THROW("weights must be float32, bfloat16, float16 or int8, got ", w.dtype());
  }
}

void check_cpu_contiguous(const paddle::Tensor& t, const char* name) {
  PD_CHECK(t.is_cpu(), name, " must be on the CPU");
  PD_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_float32(const paddle::Tensor& t, const char* name) {
  check_cpu_contiguous(t, name);
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, name, " must be float32, got ", t.dtype());
}

WeightMatrix weight_matrix(const paddle::Tensor& w, const paddle::optional<paddle::Tensor>& scale,
                           const char* name) {
  check_cpu_contiguous(w, name);
  PD_CHECK(w.shape().size() == 2, name, " must be 2-D [out, in]");
  WeightMatrix m{w.data(), format_of(w), nullptr, w.shape()[0], w.shape()[1]};
  if (m.format == WeightFormat::kInt8) {
    PD_CHECK(scale.is_initialized(), name, " is int8 and needs its per-row scales");
    check_float32(*scale, name);
    PD_CHECK(scale->numel() == m.rows, name, " has ", m.rows, " rows but ", scale->numel(), " scales");
    m.scale = scale->data<float>();
  }
  return m;
}

// ---- weight-only linear ------------------------------------------------------

// Up to this many activation rows, reading each weight once (matvec) wins; beyond
// it the weights are reused from cache and the register-blocked GEMM wins.
constexpr int64_t kMatvecMaxRows = 16;

std::vector<paddle::Tensor> WeightOnlyLinear(const paddle::Tensor& x, const paddle::Tensor& weight,
                                             const paddle::optional<paddle::Tensor>& scale,
                                             const paddle::optional<paddle::Tensor>& bias, bool reduced_precision) {
  check_float32(x, "x");
  const WeightMatrix w = weight_matrix(weight, scale, "weight");
  const int64_t k = x.shape().back();
  PD_CHECK(k == w.cols, "x has ", k, " features, the weight expects ", w.cols);
  const int64_t num_x = x.numel() / k;
  const float* b = nullptr;
  if (bias) {
    check_float32(*bias, "bias");
    PD_CHECK(bias->numel() == w.rows, "bias has ", bias->numel(), " entries, expected ", w.rows);
    b = bias->data<float>();
  }
  std::vector<int64_t> out_shape = x.shape();
  out_shape.back() = w.rows;
  auto y = paddle::empty(out_shape, paddle::DataType::FLOAT32, x.place());
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  if (num_x <= kMatvecMaxRows) {
    kern::MatvecInput in(xp, num_x, k);
    in.prepare(w);
    const kern::RowChunks chunks(w.rows, kern::row_bytes(w));
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks.count(); ++c) kern::matvec_rows(w, in, yp, w.rows, chunks.begin(c), chunks.end(c));
  } else {
    // alone, the Linear is weight-only (CodeGeeX's int8 promises exactly that): its activations
    // stay fp32 unless asked; the decoder layer's prompt GEMMs do quantise them
    kern::GemmInput in =
        reduced_precision ? kern::GemmInput(xp, num_x, k, {&w}) : kern::GemmInput(xp, num_x, k, {});
#pragma omp parallel
    {
      std::vector<float> scratch(kern::kPanelScratchFloats);
#pragma omp for schedule(static)
      for (int64_t m = 0; m < num_x; ++m) in.prepare_row(m);
#pragma omp for schedule(dynamic, 1)
      for (int64_t p = 0; p < kern::gemm_panel_count(w); ++p) kern::gemm_panel(w, in, yp, w.rows, p, scratch.data());
    }
  }
  if (b)
    for (int64_t m = 0; m < num_x; ++m)
      for (int64_t r = 0; r < w.rows; ++r) yp[m * w.rows + r] += b[r];
  return {y};
}

std::vector<std::vector<int64_t>> WeightOnlyLinearShape(const std::vector<int64_t>& x,
                                                        const std::vector<int64_t>& w,
                                                        const paddle::optional<std::vector<int64_t>>&,
                                                        const paddle::optional<std::vector<int64_t>>&) {
  std::vector<int64_t> out = x;
  out.back() = w[0];
  return {out};
}

// ---- dequantize --------------------------------------------------------------

template <class Fmt>
void dequantize_rows(const WeightMatrix& w, float* out, int64_t r0, int64_t r1) {
  const auto* data = static_cast<const typename Fmt::T*>(w.data);
  for (int64_t r = r0; r < r1; ++r) {
    const float s = w.scale ? w.scale[r] : 1.0f;
    for (int64_t c = 0; c < w.cols; ++c) out[r * w.cols + c] = s * Fmt::scalar(data[r * w.cols + c]);
  }
}

std::vector<paddle::Tensor> Dequantize(const paddle::Tensor& weight, const paddle::optional<paddle::Tensor>& scale) {
  const WeightMatrix w = weight_matrix(weight, scale, "weight");
  auto out = paddle::empty({w.rows, w.cols}, paddle::DataType::FLOAT32, weight.place());
  float* o = out.data<float>();
#pragma omp parallel
  {
    const int threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t r0 = w.rows * id / threads, r1 = w.rows * (id + 1) / threads;
    switch (w.format) {
      case WeightFormat::kFloat32: dequantize_rows<kern::F32>(w, o, r0, r1); break;
      case WeightFormat::kBFloat16: dequantize_rows<kern::BF16>(w, o, r0, r1); break;
      case WeightFormat::kFloat16: dequantize_rows<kern::FP16>(w, o, r0, r1); break;
      case WeightFormat::kInt8: dequantize_rows<kern::I8>(w, o, r0, r1); break;
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> DequantizeShape(const std::vector<int64_t>& w,
                                                  const paddle::optional<std::vector<int64_t>>&) {
  return {w};
}

// ---- packing a paddle.nn.Linear weight -------------------------------------------

uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

// w [in, out] fp32 (paddle's Linear layout) -> [out, in] in `format`, plus per-row
// int8 scales (ones for other formats). Done here rather than with Paddle ops,
// whose full-size temporaries would fragment the heap of a process loading a model.
std::vector<paddle::Tensor> PackWeight(const paddle::Tensor& weight, const std::string& format) {
  check_float32(weight, "weight");
  PD_CHECK(weight.shape().size() == 2, "weight must be 2-D [in, out]");
  const int64_t in = weight.shape()[0], out = weight.shape()[1];
  const paddle::DataType dtype = format == "int8"       ? paddle::DataType::INT8
                                 : format == "bfloat16" ? paddle::DataType::BFLOAT16
                                 : format == "float16"  ? paddle::DataType::FLOAT16
                                 : format == "float32"  ? paddle::DataType::FLOAT32
                                                        : paddle::DataType::UNDEFINED;
  PD_CHECK(dtype != paddle::DataType::UNDEFINED, "format must be int8, bfloat16, float16 or float32, got ", format);
  auto packed = paddle::empty({out, in}, dtype, weight.place());
  auto scale = paddle::empty({out}, paddle::DataType::FLOAT32, weight.place());
  const float* w = weight.data<float>();
  float* sc = scale.data<float>();
  void* dst = packed.data();
  constexpr int64_t kBlock = 64;  // transpose in tiles that stay in L1
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t o0 = 0; o0 < out; o0 += kBlock) {
    const int64_t o1 = std::min(o0 + kBlock, out);
    float row_scale[kBlock];
    for (int64_t o = o0; o < o1; ++o) row_scale[o - o0] = 1.0f;
    if (dtype == paddle::DataType::INT8) {
      float absmax[kBlock] = {};
      for (int64_t i = 0; i < in; ++i)
        for (int64_t o = o0; o < o1; ++o) absmax[o - o0] = std::max(absmax[o - o0], std::fabs(w[i * out + o]));
      // an all-zero row would divide by zero; any scale reproduces its zeros
      for (int64_t o = o0; o < o1; ++o) row_scale[o - o0] = absmax[o - o0] > 0 ? absmax[o - o0] / 127.0f : 1.0f;
    }
    for (int64_t o = o0; o < o1; ++o) sc[o] = row_scale[o - o0];
    for (int64_t i0 = 0; i0 < in; i0 += kBlock) {
      const int64_t i1 = std::min(i0 + kBlock, in);
      for (int64_t o = o0; o < o1; ++o) {
        for (int64_t i = i0; i < i1; ++i) {
          const float v = w[i * out + o];
          const int64_t at = o * in + i;
          switch (dtype) {
            case paddle::DataType::INT8:
              static_cast<int8_t*>(dst)[at] =
                  static_cast<int8_t>(std::max(-127.0f, std::min(127.0f, std::nearbyint(v / row_scale[o - o0]))));
              break;
            case paddle::DataType::BFLOAT16: static_cast<uint16_t*>(dst)[at] = float_to_bf16(v); break;
            case paddle::DataType::FLOAT16: static_cast<uint16_t*>(dst)[at] = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT); break;
            default: static_cast<float*>(dst)[at] = v; break;
          }
        }
      }
    }
  }
  return {packed, scale};
}

// ---- bandwidth probe ---------------------------------------------------------

std::vector<paddle::Tensor> ReadBandwidth(const paddle::Tensor& buffer) {
  check_float32(buffer, "buffer");
  const float* p = buffer.data<float>();
  const int64_t n = buffer.numel() - buffer.numel() % (4 * simd::kLanes);
  float total = 0;
#pragma omp parallel reduction(+ : total)
  {
    simd::vf a = simd::zero(), b = simd::zero(), c = simd::zero(), d = simd::zero();
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; i += 4 * simd::kLanes) {
      kern::prefetch_ahead(p + i, 4 * simd::kLanes * sizeof(float), p + n);
      a = simd::add(a, simd::load(p + i));
      b = simd::add(b, simd::load(p + i + simd::kLanes));
      c = simd::add(c, simd::load(p + i + 2 * simd::kLanes));
      d = simd::add(d, simd::load(p + i + 3 * simd::kLanes));
    }
    total += simd::sum(simd::add(simd::add(a, b), simd::add(c, d)));
  }
  auto out = paddle::empty({1}, paddle::DataType::FLOAT32, buffer.place());
  out.data<float>()[0] = total;
  return {out};
}

// ---- decoder layer -----------------------------------------------------------

// `heads` and `width` (heads * head_dim) are those this process holds: all of them, or a
// tensor-parallel rank's share (whole qkv shards, `mp_num` of them), when less than `embd`.
struct LayerShape {
  int64_t batch, seq, embd, width, inner, heads, head_dim, rotary_dim, mp_num, past, cache_len;
  int64_t tokens() const { return batch * seq; }
  int64_t total() const { return past + seq; }
};

void layer_norm(const float* x, const float* w, const float* b, float eps, int64_t n, float* out) {
  using namespace simd;
  const int64_t n_vec = n - n % kLanes;
  vf acc = zero();
  for (int64_t i = 0; i < n_vec; i += kLanes) acc = add(acc, load(x + i));
  float mean = sum(acc);
  for (int64_t i = n_vec; i < n; ++i) mean += x[i];
  mean /= n;
  const vf mv = set1(mean);
  acc = zero();
  for (int64_t i = 0; i < n_vec; i += kLanes) {
    const vf d = sub(load(x + i), mv);
    acc = fma(d, d, acc);
  }
  float var = sum(acc);
  for (int64_t i = n_vec; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  const float inv = 1.0f / std::sqrt(var / n + eps);
  const vf iv = set1(inv);
  for (int64_t i = 0; i < n_vec; i += kLanes)
    store(out + i, fma(mul(sub(load(x + i), mv), iv), load(w + i), load(b + i)));
  for (int64_t i = n_vec; i < n; ++i) out[i] = (x[i] - mean) * inv * w[i] + b[i];
}

// GPT-J rotary on the first `r` dims: adjacent pairs (2i, 2i+1) turn by angle i
void rotate(const float* src, float* dst, int64_t d, int64_t r, const float* sin, const float* cos) {
  for (int64_t i = 0; i < r / 2; ++i) {
    const float x0 = src[2 * i], x1 = src[2 * i + 1];
    dst[2 * i] = x0 * cos[i] - x1 * sin[i];
    dst[2 * i + 1] = x1 * cos[i] + x0 * sin[i];
  }
  std::memcpy(dst + r, src + r, (d - r) * sizeof(float));
}

// scores[t] = dot(q, keys[t]) * scale for t < n, the keys d floats apart. A lane's worth of keys
// at a time, their products summed across lanes together (simd::sums) instead of one key at a
// time: that reduction was most of a key's cost. Each score is the same bits whatever keys share
// its block, so a query's scores do not depend on the other queries of its step.
void key_scores(const float* q, const float* keys, int64_t n, int64_t d, float scale, float* scores) {
  using namespace simd;
  const int64_t d_vec = d - d % kLanes;
  for (int64_t t0 = 0; t0 < n; t0 += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, n - t0);
    vf acc[kLanes];
    for (int j = 0; j < kLanes; ++j) acc[j] = zero();
    for (int64_t c = 0; c < d_vec; c += kLanes) {
      const vf qv = load(q + c);
      for (int j = 0; j < kLanes; ++j)
        if (j < count) acc[j] = fma(load(keys + (t0 + j) * d + c), qv, acc[j]);
    }
    alignas(64) float block[kLanes];
    store(block, sums(acc));
    for (int64_t j = 0; j < count; ++j) {
      float s = block[j];
      for (int64_t c = d_vec; c < d; ++c) s += q[c] * keys[(t0 + j) * d + c];
      scores[t0 + j] = s * scale;
    }
  }
}

// o[0..d) = the sum over keys t < n with p[t] > 0 of (p[t] * scale) * values[t], each element's
// products added in the order of t, as axpy into a zeroed o would. The sums stay in registers,
// a few vectors of o at a time: axpy loads and stores o once per key.
void weighted_values(const float* p, float scale, const float* values, int64_t n, int64_t d, float* o) {
  using namespace simd;
  constexpr int kRegisters = 4;
  const int64_t d_vec = d - d % kLanes;
  for (int64_t c0 = 0; c0 < d_vec; c0 += kRegisters * kLanes) {
    const int64_t regs = std::min<int64_t>(kRegisters, (d_vec - c0) / kLanes);
    vf acc[kRegisters];
    for (int j = 0; j < kRegisters; ++j) acc[j] = zero();
    for (int64_t t = 0; t < n; ++t) {
      if (!(p[t] > 0.0f)) continue;
      const vf pv = set1(p[t] * scale);
      for (int j = 0; j < kRegisters; ++j)
        if (j < regs) acc[j] = fma(pv, load(values + t * d + c0 + j * kLanes), acc[j]);
    }
    for (int j = 0; j < regs; ++j) store(o + c0 + j * kLanes, acc[j]);
  }
  for (int64_t i = d_vec; i < d; ++i) {
    o[i] = 0.0f;
    for (int64_t t = 0; t < n; ++t)
      if (p[t] > 0.0f) o[i] += p[t] * scale * values[t * d + i];
  }
}

// out += p * v
void axpy(float p, const float* v, float* out, int64_t n) {
  using namespace simd;
  const int64_t n_vec = n - n % kLanes;
  const vf pv = set1(p);
  for (int64_t i = 0; i < n_vec; i += kLanes) store(out + i, fma(pv, load(v + i), load(out + i)));
  for (int64_t i = n_vec; i < n; ++i) out[i] += p * v[i];
}

float max_of(const float* x, int64_t n) {
  using namespace simd;
  const int64_t n_vec = n - n % kLanes;
  float m = -INFINITY;
  if (n_vec) {
    vf v = load(x);
    for (int64_t i = kLanes; i < n_vec; i += kLanes) v = max(v, load(x + i));
    m = hmax(v);
  }
  for (int64_t i = n_vec; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// exp(x - max) in place; returns the sum
float softmax_numerators(float* x, int64_t n, float max) {
  using namespace simd;
  const int64_t n_vec = n - n % kLanes;
  const vf mv = set1(max);
  vf acc = zero();
  for (int64_t i = 0; i < n_vec; i += kLanes) {
    const vf e = exp_neg(sub(load(x + i), mv));
    store(x + i, e);
    acc = add(acc, e);
  }
  float s = sum(acc);
  for (int64_t i = n_vec; i < n; ++i) s += (x[i] = std::exp(x[i] - max));
  return s;
}

// x[0..n) *= scale, or -inf where the mask hides the key; returns the largest. A prompt's
// attention does this for every visible score: unvectorised it cost as much as the scores.
float scale_scores(float* x, int64_t n, float scale, const int64_t* mask) {
  using namespace simd;
  float max = -INFINITY;
  int64_t i = 0;
  if (!mask) {
    const vf sv = set1(scale);
    vf mv = set1(-INFINITY);
    for (; i + kLanes <= n; i += kLanes) {
      const vf v = mul(load(x + i), sv);
      store(x + i, v);
      mv = simd::max(mv, v);
    }
    max = hmax(mv);
  }
  for (; i < n; ++i) {
    x[i] = (mask && !mask[i]) ? -INFINITY : x[i] * scale;
    max = std::max(max, x[i]);
  }
  return max;
}

// One (sequence, head): rotate the new queries/keys, append keys/values to the
// cache, attend. `qkv` rows follow the checkpoints' fused layout: mp_num shards
// of [query | value | key], each holding heads/mp_num heads.
// Per batch row, its mask where it masks something, else null: every key counts, and the row's
// attention takes a vector max. Generation passes a mask with every batch; a layer looks once,
// not each head.
std::vector<const int64_t*> padded_rows(const int64_t* mask, int64_t batch, int64_t total) {
  std::vector<const int64_t*> rows(batch, nullptr);
  for (int64_t b = 0; mask && b < batch; ++b) {
    const int64_t* row = mask + b * total;
    if (std::find(row, row + total, 0) != row + total) rows[b] = row;
  }
  return rows;
}

// `padding`: row b's mask, or null where it masks nothing (padded_rows)
void attend_head(const LayerShape& s, int64_t b, int64_t h, const float* qkv, const int64_t* positions,
                 const int64_t* padding, const float* sin_table, const float* cos_table, float* key_cache,
                 float* value_cache, float* out, std::vector<float>& scratch) {
  const int64_t d = s.head_dim, e = s.width, half = s.rotary_dim / 2, total = s.total();
  const int64_t local = s.heads / s.mp_num, shard = h / local, j = h % local;
  const int64_t q_off = (shard * 3 * local + j) * d;
  const int64_t v_off = (shard * 3 * local + local + j) * d;
  const int64_t k_off = (shard * 3 * local + 2 * local + j) * d;
  float* keys = key_cache + (b * s.heads + h) * s.cache_len * d;
  float* values = value_cache + (b * s.heads + h) * s.cache_len * d;
  scratch.resize(s.seq * d + total);
  float* queries = scratch.data();
  float* scores = queries + s.seq * d;
  for (int64_t i = 0; i < s.seq; ++i) {
    const int64_t m = b * s.seq + i;
    const float* row = qkv + m * 3 * e;
    const float* sn = sin_table + positions[m] * half;
    const float* cs = cos_table + positions[m] * half;
    rotate(row + q_off, queries + i * d, d, s.rotary_dim, sn, cs);
    rotate(row + k_off, keys + (s.past + i) * d, d, s.rotary_dim, sn, cs);
    std::memcpy(values + (s.past + i) * d, row + v_off, d * sizeof(float));
  }
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t i = 0; i < s.seq; ++i) {
    const int64_t last = s.past + i;  // causal: keys 0..last
    float* o = out + (b * s.seq + i) * e + h * d;
    std::memset(o, 0, d * sizeof(float));
    key_scores(queries + i * d, keys, last + 1, d, inv_sqrt_d, scores);
    // a row without padding counts every key: a vector max (the same value, in any order)
    float max = padding ? -INFINITY : max_of(scores, last + 1);
    int64_t seen = padding ? 0 : last + 1;
    for (int64_t t = 0; padding && t <= last; ++t) {
      if (!padding[t]) {
        scores[t] = -INFINITY;
        continue;
      }
      max = std::max(max, scores[t]);
      ++seen;
    }
    if (seen == 0) {
      // a padding query sees nothing; the reference's uniform average keeps it finite
      for (int64_t t = 0; t < total; ++t) axpy(1.0f / total, values + t * d, o, d);
      continue;
    }
    const float denom = softmax_numerators(scores, last + 1, max);
    weighted_values(scores, 1.0f / denom, values, last + 1, d, o);
  }
}

// Queries per block of the blocked attention: the block's scores, [block, visible keys],
// stay within L2 (512 KB at 1,024 keys).
constexpr int64_t kQueryBlock = 128;

// Whether a prompt's attention multiplies bf16 values (fp32 sums) on the CPU's bf16 GEMM
// (AMX tiles where it has them): only beside reduced-precision weights, whose Linears round
// their activations coarser already (int8: 8 bits a value, bf16: the same 8-bit mantissa);
// an fp32 model keeps its fp32 attention. On the 350M model's 1,024-token prompt the two
// products were a third of the int8 prefill's time in fp32 FMAs.
bool bf16_attention(const WeightMatrix& qkv_w) {
  return qkv_w.format != WeightFormat::kFloat32 &&
         kern::gemm_kernel(WeightFormat::kBFloat16) != kern::GemmKernel::kFloat32;
}

// rows [0, n) of x (row-major, ld floats) as bf16 rows of ld_out values
void round_rows_bf16(const float* x, int64_t n, int64_t cols, int64_t ld, uint16_t* out, int64_t ld_out) {
  const kern::RowLayout layout = kern::RowLayout::of(cols, 2, false);
  for (int64_t i = 0; i < n; ++i) kern::round_row_bf16(x + i * ld, cols, layout, out + i * ld_out);
}

// The same for many new tokens (a prompt), a block of queries at a time: the scores and
// the weighted sum of values go through a GEMM (fp32, or bf16 as `bf16_attention` says),
// and a block computes scores only for the keys its last query sees (causal), so the work
// is about half of the full square and the memory one block's rows instead of [seq, total].
void attend_head_blocked(const LayerShape& s, int64_t b, int64_t h, const float* qkv, const int64_t* positions,
                         const int64_t* mask, const float* sin_table, const float* cos_table, float* key_cache,
                         float* value_cache, float* out, std::vector<float>& scratch, bool bf16) {
  const int64_t d = s.head_dim, e = s.width, half = s.rotary_dim / 2, total = s.total(), n = s.seq;
  const int64_t local = s.heads / s.mp_num, shard = h / local, j = h % local;
  const int64_t q_off = (shard * 3 * local + j) * d;
  const int64_t v_off = (shard * 3 * local + local + j) * d;
  const int64_t k_off = (shard * 3 * local + 2 * local + j) * d;
  float* keys = key_cache + (b * s.heads + h) * s.cache_len * d;
  float* values = value_cache + (b * s.heads + h) * s.cache_len * d;
  const int64_t block = std::min(kQueryBlock, n);
  // the bf16 copies of the keys [total][ld_keys] and transposed values [d][ld_values]: bf16
  // rows are padded to whole 4-byte pairs, which an odd number of keys would overrun
  const int64_t ld_keys = kern::round_up(d, 2), ld_values = kern::round_up(total, 2);
  const int64_t bf16_floats = bf16 ? (total * ld_keys + d * ld_values) / 2 : 0;
  scratch.resize(n * d + block * total + d * total + kern::kPanelScratchFloats + bf16_floats);
  float* queries = scratch.data();
  float* scores = queries + n * d;
  float* values_t = scores + block * total;
  float* panel = values_t + d * total;
  auto* keys_bf16 = reinterpret_cast<uint16_t*>(panel + kern::kPanelScratchFloats);
  uint16_t* values_t_bf16 = keys_bf16 + total * ld_keys;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t m = b * n + i;
    const float* row = qkv + m * 3 * e;
    const float* sn = sin_table + positions[m] * half;
    const float* cs = cos_table + positions[m] * half;
    rotate(row + q_off, queries + i * d, d, s.rotary_dim, sn, cs);
    rotate(row + k_off, keys + (s.past + i) * d, d, s.rotary_dim, sn, cs);
    std::memcpy(values + (s.past + i) * d, row + v_off, d * sizeof(float));
  }
  // by 16 keys: the rows of values_t are a multiple of 4 KB apart at 1,024 keys, and one key at
  // a time wrote a line in each, all in one cache set
  for (int64_t t0 = 0; t0 < total; t0 += 16)
    for (int64_t c = 0; c < d; ++c)
      for (int64_t t = t0; t < std::min(total, t0 + 16); ++t) values_t[c * total + t] = values[t * d + c];
  if (bf16) {
    round_rows_bf16(keys, total, d, d, keys_bf16, ld_keys);
    round_rows_bf16(values_t, d, total, total, values_t_bf16, ld_values);
  }
  const WeightFormat format = bf16 ? WeightFormat::kBFloat16 : WeightFormat::kFloat32;
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t i0 = 0; i0 < n; i0 += block) {
    const int64_t rows = std::min(block, n - i0), visible = s.past + i0 + rows;
    const kern::WeightMatrix key_rows{bf16 ? static_cast<const void*>(keys_bf16) : keys, format, nullptr, visible, d,
                                      bf16 ? ld_keys : d};
    if (bf16) {
      kern::GemmInput in(queries + i0 * d, rows, d, {&key_rows});
      for (int64_t i = 0; i < rows; ++i) in.prepare_row(i);
      for (int64_t p = 0; p < kern::gemm_panel_count(key_rows); ++p)
        kern::gemm_panel(key_rows, in, scores, visible, p, panel);
    } else {
      for (int64_t p = 0; p < kern::gemm_panel_count(key_rows); ++p)
        kern::gemm_panel_f32<kern::F32>(key_rows, queries + i0 * d, d, rows, scores, visible, p, panel);
    }
    std::vector<int64_t> sees_nothing;
    for (int64_t i = i0; i < i0 + rows; ++i) {
      float* row = scores + (i - i0) * visible;
      const int64_t last = s.past + i;
      const float max = scale_scores(row, last + 1, inv_sqrt_d, mask ? mask + b * total : nullptr);
      std::fill(row + last + 1, row + visible, 0.0f);
      if (max == -INFINITY) {  // a padding query: written below
        std::fill(row, row + visible, 0.0f);
        sees_nothing.push_back(i);
        continue;
      }
      const float inv = 1.0f / softmax_numerators(row, last + 1, max);
      for (int64_t t = 0; t <= last; ++t) row[t] *= inv;
    }
    const kern::WeightMatrix value_columns{bf16 ? static_cast<const void*>(values_t_bf16) : values_t, format, nullptr,
                                           d, visible, bf16 ? ld_values : total};
    float* o = out + (b * n + i0) * e + h * d;
    if (bf16) {
      kern::GemmInput in(scores, rows, visible, {&value_columns});
      for (int64_t i = 0; i < rows; ++i) in.prepare_row(i);
      for (int64_t p = 0; p < kern::gemm_panel_count(value_columns); ++p)
        kern::gemm_panel(value_columns, in, o, e, p, panel);
    } else {
      for (int64_t p = 0; p < kern::gemm_panel_count(value_columns); ++p)
        kern::gemm_panel_f32<kern::F32>(value_columns, scores, visible, rows, o, e, p, panel);
    }
    // a padding query sees nothing; the reference's uniform average over every key keeps it finite
    for (int64_t i : sees_nothing) {
      float* o = out + (b * n + i) * e + h * d;
      std::memset(o, 0, d * sizeof(float));
      for (int64_t t = 0; t < total; ++t) axpy(1.0f / total, values + t * d, o, d);
    }
  }
}

// A step's intermediate activations: uninitialised and 64-byte aligned. Each element is
// written before it is read, so zero-filling them (tens of MB for a long prompt) was wasted
// work, and whole cache lines let the AMX GEMMs store their rows without reading them first.
class Floats {
 public:
  explicit Floats(int64_t n)
      : p_(static_cast<float*>(std::aligned_alloc(64, std::max<int64_t>(kern::round_up(n * 4, 64), 64))), std::free) {
    PD_CHECK(p_, "out of memory for ", n, " floats");
  }
  float* data() const { return p_.get(); }

 private:
  std::unique_ptr<float, void (*)(void*)> p_;
};

// What one block's step reads and writes; the buffers are [tokens, width] fp32.
struct LayerArgs {
  const LayerShape& s;
  const float* x;
  float* y;
  const float *ln_weight, *ln_bias;
  float eps;
  const WeightMatrix &qkv_w, &out_w, &in_w, &fc_out_w;
  const float *in_bias, *out_bias;
  const int64_t *positions, *mask;
  const float *sin, *cos;
  float *key_cache, *value_cache;
  float *qkv, *inner, *attn, *proj, *mlp;
  bool residual;  // y = x + the block's output; without, the output alone (a tensor-parallel partial sum)
};

// the GELU each architecture was trained with
struct TanhGelu {
  static simd::vf apply(simd::vf x) { return simd::gelu(x); }
  static float apply(float x) { return simd::gelu_scalar(x); }
};
struct SigmoidGelu {
  static simd::vf apply(simd::vf x) { return simd::sigmoid_gelu(x); }
  static float apply(float x) { return simd::sigmoid_gelu_scalar(x); }
};

// p = gelu(p + bias)
template <class Gelu>
void gelu_row(float* p, const float* bias, int64_t n) {
  const int64_t n_vec = n - n % simd::kLanes;
  for (int64_t i = 0; i < n_vec; i += simd::kLanes)
    simd::store(p + i, Gelu::apply(simd::add(simd::load(p + i), simd::load(bias + i))));
  for (int64_t i = n_vec; i < n; ++i) p[i] = Gelu::apply(p[i] + bias[i]);
}

// A few new tokens (decoding): the cost is reading the weights once. The CPU may be
// shared with other processes, and every barrier is a point where a thread waits for one
// the OS has preempted (spinning, by default, on the core the preempted one needs), so
// this step has three: after the QKV/fc_in matvecs, after attention, and the end.
void decode_layer(const LayerArgs& a) {
  const LayerShape& s = a.s;
  const int64_t tokens = s.tokens();
  const std::vector<const int64_t*> padding = padded_rows(a.mask, s.batch, s.total());
#pragma omp parallel
  {
    // every thread normalises the few rows and rounds them for int8 weights itself: a few
    // thousand values, cheaper than the barrier that sharing one copy would need
    std::vector<float> normed(tokens * s.embd);
    for (int64_t m = 0; m < tokens; ++m)
      layer_norm(a.x + m * s.embd, a.ln_weight, a.ln_bias, a.eps, s.embd, normed.data() + m * s.embd);
    kern::MatvecInput normed_in(normed.data(), tokens, s.embd), attn_in(a.attn, tokens, s.width),
        inner_in(a.inner, tokens, s.inner);
    std::vector<float> scratch;

    // attention's QKV and the MLP's fc_in both read the normed input: one pass
    // over their rows taken as one range
    const int64_t qkv_rows = a.qkv_w.rows, in_rows = a.in_w.rows;
    normed_in.prepare(a.qkv_w);
    normed_in.prepare(a.in_w);
    const kern::RowChunks in_chunks(qkv_rows + in_rows, std::max(kern::row_bytes(a.qkv_w), kern::row_bytes(a.in_w)));
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < in_chunks.count(); ++c) {
      const int64_t r0 = in_chunks.begin(c), r1 = in_chunks.end(c);
      if (r0 < qkv_rows) kern::matvec_rows(a.qkv_w, normed_in, a.qkv, qkv_rows, r0, std::min(r1, qkv_rows));
      if (r1 > qkv_rows)
        kern::matvec_rows(a.in_w, normed_in, a.inner, in_rows, std::max(r0, qkv_rows) - qkv_rows, r1 - qkv_rows);
    }

    // GELU needs only fc_in, attention only qkv: no barrier between them
#pragma omp for schedule(static) nowait
    for (int64_t m = 0; m < tokens; ++m) gelu_row<TanhGelu>(a.inner + m * s.inner, a.in_bias, s.inner);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < s.batch * s.heads; ++bh)
      attend_head(s, bh / s.heads, bh % s.heads, a.qkv, a.positions, padding[bh / s.heads], a.sin, a.cos,
                  a.key_cache, a.value_cache, a.attn, scratch);

    // attention output and the MLP output land on the same residual rows, which the
    // chunk that computed them finishes
    attn_in.prepare(a.out_w);
    inner_in.prepare(a.fc_out_w);
    const kern::RowChunks out_chunks(s.embd, kern::row_bytes(a.out_w) + kern::row_bytes(a.fc_out_w));
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t c = 0; c < out_chunks.count(); ++c) {
      const int64_t r0 = out_chunks.begin(c), r1 = out_chunks.end(c);
      kern::matvec_rows(a.out_w, attn_in, a.proj, s.embd, r0, r1);
      kern::matvec_rows(a.fc_out_w, inner_in, a.mlp, s.embd, r0, r1);
      for (int64_t m = 0; m < tokens; ++m)
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t i = m * s.embd + r;
          a.y[i] = (a.residual ? a.x[i] : 0.0f) + a.proj[i] + a.mlp[i] + a.out_bias[r];
        }
    }
  }
}

// y = x + proj + mlp + bias for the row at `i` (x left out without the residual), added in
// that order as decode_layer does
void residual_row(const LayerArgs& a, int64_t i) {
  const int64_t n = a.s.embd, n_vec = n - n % simd::kLanes;
  for (int64_t r = 0; r < n_vec; r += simd::kLanes) {
    const simd::vf x = a.residual ? simd::load(a.x + i + r) : simd::zero();
    simd::store(a.y + i + r, simd::add(simd::add(simd::add(x, simd::load(a.proj + i + r)), simd::load(a.mlp + i + r)),
                                       simd::load(a.out_bias + r)));
  }
  for (int64_t r = n_vec; r < n; ++r)
    a.y[i + r] = (a.residual ? a.x[i + r] : 0.0f) + a.proj[i + r] + a.mlp[i + r] + a.out_bias[r];
}

// A prompt: the GEMMs, with each activation row quantised (int8 weights) or rounded
// (bf16/fp16 weights) once, by the loop that finishes the row.
void prefill_layer(const LayerArgs& a) {
  const LayerShape& s = a.s;
  const int64_t tokens = s.tokens();
  std::vector<float> normed(tokens * s.embd);
  const bool attention_bf16 = bf16_attention(a.qkv_w);
  kern::GemmInput normed_in(normed.data(), tokens, s.embd, {&a.qkv_w, &a.in_w}),
      attn_in(a.attn, tokens, s.width, {&a.out_w}), inner_in(a.inner, tokens, s.inner, {&a.fc_out_w});
#pragma omp parallel
  {
    std::vector<float> scratch, panel(kern::kPanelScratchFloats);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < tokens; ++m) {
      layer_norm(a.x + m * s.embd, a.ln_weight, a.ln_bias, a.eps, s.embd, normed.data() + m * s.embd);
      normed_in.prepare_row(m);
    }
    const int64_t qkv_panels = kern::gemm_panel_count(a.qkv_w);
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < qkv_panels + kern::gemm_panel_count(a.in_w); ++p) {
      if (p < qkv_panels)
        kern::gemm_panel(a.qkv_w, normed_in, a.qkv, a.qkv_w.rows, p, panel.data());
      else
        kern::gemm_panel(a.in_w, normed_in, a.inner, a.in_w.rows, p - qkv_panels, panel.data());
    }
#pragma omp for schedule(static) nowait
    for (int64_t m = 0; m < tokens; ++m) {
      gelu_row<TanhGelu>(a.inner + m * s.inner, a.in_bias, s.inner);
      inner_in.prepare_row(m);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < s.batch * s.heads; ++bh)
      attend_head_blocked(s, bh / s.heads, bh % s.heads, a.qkv, a.positions, a.mask, a.sin, a.cos, a.key_cache,
                          a.value_cache, a.attn, scratch, attention_bf16);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < tokens; ++m) attn_in.prepare_row(m);
    // attention output and the MLP output land on the same residual rows
    const int64_t out_panels = kern::gemm_panel_count(a.out_w);
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < 2 * out_panels; ++p) {
      if (p < out_panels)
        kern::gemm_panel(a.out_w, attn_in, a.proj, s.embd, p, panel.data());
      else
        kern::gemm_panel(a.fc_out_w, inner_in, a.mlp, s.embd, p - out_panels, panel.data());
    }
#pragma omp for schedule(static)
    for (int64_t m = 0; m < tokens; ++m) residual_row(a, m * s.embd);
  }
}

// The shape of a step over x [batch, seq, embd] with caches [batch, heads, max_length, head_dim].
// `width`: the attention's heads * head_dim on this rank (embd unless the model is split)
LayerShape checked_shape(const paddle::Tensor& x, int num_heads, int64_t width, int64_t past,
                         const paddle::Tensor& key_cache, const paddle::Tensor& value_cache) {
  check_float32(x, "x");
  PD_CHECK(x.shape().size() == 3, "x must be [batch, seq, embd]");
  PD_CHECK(num_heads > 0 && width > 0 && width % num_heads == 0,
           "the attention width (qkv_weight rows / 3) must be a positive multiple of num_heads");
  LayerShape s{};
  s.batch = x.shape()[0];
  s.seq = x.shape()[1];
  s.embd = x.shape()[2];
  s.width = width;
  s.heads = num_heads;
  s.head_dim = width / num_heads;
  s.mp_num = 1;
  s.past = past;
  check_float32(key_cache, "key_cache");
  check_float32(value_cache, "value_cache");
  const auto& cs = key_cache.shape();
  PD_CHECK(cs.size() == 4 && cs[0] == s.batch && cs[1] == s.heads && cs[3] == s.head_dim &&
               value_cache.shape() == cs,
           "caches must be [batch, heads, max_length, head_dim] matching x");
  s.cache_len = cs[2];
  PD_CHECK(past >= 0 && s.total() <= s.cache_len, "KV cache holds ", s.cache_len, " positions; this step needs ",
           s.total());
  return s;
}

void check_vector(const paddle::Tensor& t, int64_t n, const char* name) {
  check_float32(t, name);
  PD_CHECK(t.numel() == n, name, " must have ", n, " entries, got ", t.numel());
}

const int64_t* checked_mask(const paddle::optional<paddle::Tensor>& attention_mask, const LayerShape& s) {
  if (!attention_mask) return nullptr;
  check_cpu_contiguous(*attention_mask, "attention_mask");
  PD_CHECK(attention_mask->dtype() == paddle::DataType::INT64, "attention_mask must be int64");
  PD_CHECK(attention_mask->numel() == s.batch * s.total(), "attention_mask must be [batch, past + seq]");
  return attention_mask->data<int64_t>();
}

// positions count only unmasked tokens, so left padding does not shift them
std::vector<int64_t> new_positions(const LayerShape& s, const int64_t* mask) {
  const int64_t total = s.total();
  std::vector<int64_t> positions(s.tokens());
  for (int64_t b = 0; b < s.batch; ++b) {
    int64_t seen = 0;
    for (int64_t t = 0; t < total; ++t) {
      seen += mask ? (mask[b * total + t] != 0) : 1;
      if (t >= s.past) positions[b * s.seq + t - s.past] = std::max<int64_t>(seen - 1, 0);
    }
  }
  return positions;
}

std::vector<paddle::Tensor> DecoderLayer(
    const paddle::Tensor& x, const paddle::Tensor& ln_weight, const paddle::Tensor& ln_bias,
    const paddle::Tensor& qkv_weight, const paddle::optional<paddle::Tensor>& qkv_scale,
    const paddle::Tensor& out_weight, const paddle::optional<paddle::Tensor>& out_scale,
    const paddle::Tensor& fc_in_weight, const paddle::optional<paddle::Tensor>& fc_in_scale,
    const paddle::Tensor& fc_in_bias, const paddle::Tensor& fc_out_weight,
    const paddle::optional<paddle::Tensor>& fc_out_scale, const paddle::Tensor& fc_out_bias,
    const paddle::Tensor& key_cache, const paddle::Tensor& value_cache,
    const paddle::optional<paddle::Tensor>& attention_mask, const paddle::Tensor& sin_table,
    const paddle::Tensor& cos_table, int64_t past, int num_heads, int rotary_dim, int mp_num, float eps,
    bool residual) {
  const WeightMatrix qkv_w = weight_matrix(qkv_weight, qkv_scale, "qkv_weight");
  // a tensor-parallel rank holds only its heads: the attention width comes from qkv_weight
  LayerShape s = checked_shape(x, num_heads, qkv_w.rows / 3, past, key_cache, value_cache);
  s.rotary_dim = rotary_dim;
  s.mp_num = mp_num;
  const WeightMatrix out_w = weight_matrix(out_weight, out_scale, "out_weight");
  const WeightMatrix in_w = weight_matrix(fc_in_weight, fc_in_scale, "fc_in_weight");
  const WeightMatrix fc_out_w = weight_matrix(fc_out_weight, fc_out_scale, "fc_out_weight");
  s.inner = in_w.rows;
  PD_CHECK(mp_num > 0 && num_heads % mp_num == 0 && qkv_w.rows == 3 * s.width && qkv_w.cols == s.embd,
           "qkv_weight must be [3*heads*head_dim, embd] with heads a multiple of mp_num");
  PD_CHECK(out_w.rows == s.embd && out_w.cols == s.width, "out_weight must be [embd, heads*head_dim]");
  PD_CHECK(in_w.cols == s.embd, "fc_in_weight must be [inner, embd]");
  PD_CHECK(fc_out_w.rows == s.embd && fc_out_w.cols == s.inner, "fc_out_weight must be [embd, inner]");
  check_vector(ln_weight, s.embd, "ln_weight");
  check_vector(ln_bias, s.embd, "ln_bias");
  check_vector(fc_out_bias, s.embd, "fc_out_bias");
  check_vector(fc_in_bias, s.inner, "fc_in_bias");
  check_float32(sin_table, "sin_table");
  check_float32(cos_table, "cos_table");
  PD_CHECK(sin_table.shape().size() == 2 && sin_table.shape()[1] == rotary_dim / 2 && cos_table.shape() == sin_table.shape(),
           "rotary tables must be [positions, rotary_dim / 2]");
  const int64_t* mask = checked_mask(attention_mask, s);
  const int64_t tokens = s.tokens();
  const std::vector<int64_t> positions = new_positions(s, mask);
  const int64_t max_position = sin_table.shape()[0];
  for (int64_t p : positions) PD_CHECK(p < max_position, "position ", p, " beyond the rotary table");

  auto out = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  const Floats qkv(tokens * 3 * s.width), inner(tokens * s.inner), attn(tokens * s.width), proj(tokens * s.embd),
      mlp(tokens * s.embd);
  const LayerArgs args{s, x.data<float>(), out.data<float>(), ln_weight.data<float>(), ln_bias.data<float>(), eps,
                       qkv_w, out_w, in_w, fc_out_w, fc_in_bias.data<float>(), fc_out_bias.data<float>(),
                       positions.data(), mask, sin_table.data<float>(), cos_table.data<float>(),
                       const_cast<float*>(key_cache.data<float>()), const_cast<float*>(value_cache.data<float>()),
                       qkv.data(), inner.data(), attn.data(), proj.data(), mlp.data(), residual};
  // a few new tokens read each weight once (matvec); a prompt reuses them (GEMM)
  if (tokens > kMatvecMaxRows)
    prefill_layer(args);
  else
    decode_layer(args);
  return {out};  // the caches are outputs in place: paddle maps them itself
}

std::vector<std::vector<int64_t>> DecoderLayerShape(
    const std::vector<int64_t>& x, const std::vector<int64_t>&, const std::vector<int64_t>&,
    const std::vector<int64_t>&, const paddle::optional<std::vector<int64_t>>&, const std::vector<int64_t>&,
    const paddle::optional<std::vector<int64_t>>&, const std::vector<int64_t>&,
    const paddle::optional<std::vector<int64_t>>&, const std::vector<int64_t>&, const std::vector<int64_t>&,
    const paddle::optional<std::vector<int64_t>>&, const std::vector<int64_t>&, const std::vector<int64_t>& k,
    const std::vector<int64_t>& v, const paddle::optional<std::vector<int64_t>>&, const std::vector<int64_t>&,
    const std::vector<int64_t>&, int64_t, int, int, int, float, bool) {
  return {x, k, v};
}

// ---- CodeGeeX decoder layer --------------------------------------------------
//
// y = x + attn(LN1(x)); out = y + mlp(LN2(y)): attention and MLP in sequence, each with
// biases, the MLP with CodeGeeX's sigmoid GELU, no rotary (positions are learned and
// added to the embeddings before the first layer). Q, K and V come packed into one
// weight [query | value | key] (CodeGen's shard layout with one shard, so the attention
// above serves both) and are read in one pass. The top-query layer passes `query`: its
// queries are computed from the top-query embedding of each position, not from LN1(x).

struct GeexArgs {
  const LayerShape& s;
  const float* x;
  const float* query;  // [tokens, embd]: the top-query layer's query input; null for the others
  float* y;
  const float *ln1_weight, *ln1_bias, *ln2_weight, *ln2_bias;
  float eps;
  const WeightMatrix &qkv_w, &dense_w, &fc1_w, &fc2_w;
  const float *qkv_bias, *dense_bias, *fc1_bias, *fc2_bias;
  const int64_t *positions, *mask;
  float *key_cache, *value_cache;
  float *qkv, *attn, *mid, *inner, *product;  // mid: y above; product: a Linear's output before its residual
};

// Rows [r0, r0 + n) of `w` as a matrix of their own
WeightMatrix rows_of(const WeightMatrix& w, int64_t r0, int64_t n) {
  WeightMatrix part = w;
  part.data = static_cast<const char*>(w.data) + r0 * w.stride() * kern::weight_bytes(w.format);
  part.scale = w.scale ? w.scale + r0 : nullptr;
  part.rows = n;
  return part;
}

// The helpers below finish columns [c0, c1) of a Linear's output for every token, right
// after the chunk or panel that computed them: no pass (and no barrier) of their own.

void add_bias(float* y, int64_t ldy, int64_t tokens, const float* bias, int64_t c0, int64_t c1) {
  for (int64_t m = 0; m < tokens; ++m)
    for (int64_t c = c0; c < c1; ++c) y[m * ldy + c] += bias[c];
}

// out = residual + product + bias, all [tokens, embd]
void add_residual(float* out, const float* residual, const float* product, const float* bias, int64_t embd,
                  int64_t tokens, int64_t c0, int64_t c1) {
  for (int64_t m = 0; m < tokens; ++m)
    for (int64_t c = c0; c < c1; ++c) out[m * embd + c] = residual[m * embd + c] + product[m * embd + c] + bias[c];
}

void sigmoid_gelu_columns(float* inner, int64_t width, int64_t tokens, const float* bias, int64_t c0, int64_t c1) {
  for (int64_t m = 0; m < tokens; ++m) gelu_row<SigmoidGelu>(inner + m * width + c0, bias + c0, c1 - c0);
}

// Decoding: five barriers (after QKV, attention, dense, fc1, and the end), two more than
// CodeGen's parallel block needs, since here the MLP's input is the attention's output.
void codegeex_decode_layer(const GeexArgs& a) {
  const LayerShape& s = a.s;
  const int64_t tokens = s.tokens(), e = s.embd;
  const std::vector<const int64_t*> padding = padded_rows(a.mask, s.batch, s.total());
#pragma omp parallel
  {
    // every thread normalises the few rows itself, as in decode_layer
    std::vector<float> normed(tokens * e);
    for (int64_t m = 0; m < tokens; ++m)
      layer_norm(a.x + m * e, a.ln1_weight, a.ln1_bias, a.eps, e, normed.data() + m * e);
    kern::MatvecInput normed_in(normed.data(), tokens, e), query_in(a.query ? a.query : normed.data(), tokens, e);
    normed_in.prepare(a.qkv_w);
    if (a.query) query_in.prepare(a.qkv_w);
    const kern::MatvecInput& q_in = a.query ? query_in : normed_in;
    std::vector<float> scratch;

    const kern::RowChunks qkv_chunks(3 * e, kern::row_bytes(a.qkv_w));
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < qkv_chunks.count(); ++c) {
      const int64_t r0 = qkv_chunks.begin(c), r1 = qkv_chunks.end(c);
      if (r0 < e) kern::matvec_rows(a.qkv_w, q_in, a.qkv, 3 * e, r0, std::min(r1, e));
      if (r1 > e) kern::matvec_rows(a.qkv_w, normed_in, a.qkv, 3 * e, std::max(r0, e), r1);
      add_bias(a.qkv, 3 * e, tokens, a.qkv_bias, r0, r1);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < s.batch * s.heads; ++bh)
      attend_head(s, bh / s.heads, bh % s.heads, a.qkv, a.positions, padding[bh / s.heads], nullptr, nullptr,
                  a.key_cache, a.value_cache, a.attn, scratch);

    kern::MatvecInput attn_in(a.attn, tokens, e);
    attn_in.prepare(a.dense_w);
    const kern::RowChunks dense_chunks(e, kern::row_bytes(a.dense_w));
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < dense_chunks.count(); ++c) {
      const int64_t r0 = dense_chunks.begin(c), r1 = dense_chunks.end(c);
      kern::matvec_rows(a.dense_w, attn_in, a.product, e, r0, r1);
      add_residual(a.mid, a.x, a.product, a.dense_bias, e, tokens, r0, r1);
    }

    for (int64_t m = 0; m < tokens; ++m)
      layer_norm(a.mid + m * e, a.ln2_weight, a.ln2_bias, a.eps, e, normed.data() + m * e);
    kern::MatvecInput normed2_in(normed.data(), tokens, e);
    normed2_in.prepare(a.fc1_w);
    const kern::RowChunks fc1_chunks(s.inner, kern::row_bytes(a.fc1_w));
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < fc1_chunks.count(); ++c) {
      const int64_t r0 = fc1_chunks.begin(c), r1 = fc1_chunks.end(c);
      kern::matvec_rows(a.fc1_w, normed2_in, a.inner, s.inner, r0, r1);
      sigmoid_gelu_columns(a.inner, s.inner, tokens, a.fc1_bias, r0, r1);
    }

    kern::MatvecInput inner_in(a.inner, tokens, s.inner);
    inner_in.prepare(a.fc2_w);
    const kern::RowChunks fc2_chunks(e, kern::row_bytes(a.fc2_w));
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t c = 0; c < fc2_chunks.count(); ++c) {
      const int64_t r0 = fc2_chunks.begin(c), r1 = fc2_chunks.end(c);
      kern::matvec_rows(a.fc2_w, inner_in, a.product, e, r0, r1);
      add_residual(a.y, a.mid, a.product, a.fc2_bias, e, tokens, r0, r1);
    }
  }
}

// The activations a CodeGeeX prompt GEMM reads. Its int8 is weight-only, as THUDM's: int8
// weights meet fp32 activations (the fp32 kernel), not u8 ones, which flipped 1.2% of a trained
// tiny model's top-1 predictions against 0.4% for the weights alone; bf16/fp16 weights still meet
// bf16 activations.
kern::GemmInput codegeex_gemm_input(const float* x, int64_t rows, int64_t cols, const WeightMatrix& reader) {
  if (reader.format == WeightFormat::kInt8) return kern::GemmInput(x, rows, cols, {});
  return kern::GemmInput(x, rows, cols, {&reader});
}

// A prompt: the GEMMs of prefill_layer, in sequence.
void codegeex_prefill_layer(const GeexArgs& a) {
  const LayerShape& s = a.s;
  const int64_t tokens = s.tokens(), e = s.embd;
  std::vector<float> normed(tokens * e), normed2(tokens * e);
  const WeightMatrix q_w = rows_of(a.qkv_w, 0, e), kv_w = rows_of(a.qkv_w, e, 2 * e);
  kern::GemmInput normed_in = codegeex_gemm_input(normed.data(), tokens, e, a.qkv_w),
                  query_in = codegeex_gemm_input(a.query, a.query ? tokens : 0, e, a.qkv_w),
                  attn_in = codegeex_gemm_input(a.attn, tokens, e, a.dense_w),
                  normed2_in = codegeex_gemm_input(normed2.data(), tokens, e, a.fc1_w),
                  inner_in = codegeex_gemm_input(a.inner, tokens, s.inner, a.fc2_w);
  const kern::GemmInput& q_in = a.query ? query_in : normed_in;
  auto columns = [](const WeightMatrix& w, int64_t p) {
    return std::make_pair(p * kern::kPanel, std::min<int64_t>(w.rows, (p + 1) * kern::kPanel));
  };
#pragma omp parallel
  {
    std::vector<float> scratch, panel(kern::kPanelScratchFloats);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < tokens; ++m) {
      layer_norm(a.x + m * e, a.ln1_weight, a.ln1_bias, a.eps, e, normed.data() + m * e);
      normed_in.prepare_row(m);
      if (a.query) query_in.prepare_row(m);
    }
    const int64_t q_panels = kern::gemm_panel_count(q_w);
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < q_panels + kern::gemm_panel_count(kv_w); ++p) {
      const bool query = p < q_panels;
      const WeightMatrix& w = query ? q_w : kv_w;
      const int64_t offset = query ? 0 : e, panel_index = query ? p : p - q_panels;
      kern::gemm_panel(w, query ? q_in : normed_in, a.qkv + offset, 3 * e, panel_index, panel.data());
      const auto [c0, c1] = columns(w, panel_index);
      add_bias(a.qkv + offset, 3 * e, tokens, a.qkv_bias + offset, c0, c1);
    }
    // fp32 attention, as the fp32 activations its int8 weights meet
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < s.batch * s.heads; ++bh)
      attend_head_blocked(s, bh / s.heads, bh % s.heads, a.qkv, a.positions, a.mask, nullptr, nullptr, a.key_cache,
                          a.value_cache, a.attn, scratch, false);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < tokens; ++m) attn_in.prepare_row(m);
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < kern::gemm_panel_count(a.dense_w); ++p) {
      kern::gemm_panel(a.dense_w, attn_in, a.product, e, p, panel.data());
      const auto [c0, c1] = columns(a.dense_w, p);
      add_residual(a.mid, a.x, a.product, a.dense_bias, e, tokens, c0, c1);
    }
#pragma omp for schedule(static)
    for (int64_t m = 0; m < tokens; ++m) {
      layer_norm(a.mid + m * e, a.ln2_weight, a.ln2_bias, a.eps, e, normed2.data() + m * e);
      normed2_in.prepare_row(m);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < kern::gemm_panel_count(a.fc1_w); ++p) {
      kern::gemm_panel(a.fc1_w, normed2_in, a.inner, s.inner, p, panel.data());
      const auto [c0, c1] = columns(a.fc1_w, p);
      sigmoid_gelu_columns(a.inner, s.inner, tokens, a.fc1_bias, c0, c1);
    }
#pragma omp for schedule(static)
    for (int64_t m = 0; m < tokens; ++m) inner_in.prepare_row(m);
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < kern::gemm_panel_count(a.fc2_w); ++p) {
      kern::gemm_panel(a.fc2_w, inner_in, a.product, e, p, panel.data());
      const auto [c0, c1] = columns(a.fc2_w, p);
      add_residual(a.y, a.mid, a.product, a.fc2_bias, e, tokens, c0, c1);
    }
  }
}

std::vector<paddle::Tensor> CodeGeeXLayer(
    const paddle::Tensor& x, const paddle::optional<paddle::Tensor>& query, const paddle::Tensor& ln1_weight,
    const paddle::Tensor& ln1_bias, const paddle::Tensor& qkv_weight, const paddle::optional<paddle::Tensor>& qkv_scale,
    const paddle::Tensor& qkv_bias, const paddle::Tensor& dense_weight,
    const paddle::optional<paddle::Tensor>& dense_scale, const paddle::Tensor& dense_bias,
    const paddle::Tensor& ln2_weight, const paddle::Tensor& ln2_bias, const paddle::Tensor& fc1_weight,
    const paddle::optional<paddle::Tensor>& fc1_scale, const paddle::Tensor& fc1_bias,
    const paddle::Tensor& fc2_weight, const paddle::optional<paddle::Tensor>& fc2_scale,
    const paddle::Tensor& fc2_bias, const paddle::Tensor& key_cache, const paddle::Tensor& value_cache,
    const paddle::optional<paddle::Tensor>& attention_mask, int64_t past, int num_heads, float eps) {
  const WeightMatrix qkv_w = weight_matrix(qkv_weight, qkv_scale, "qkv_weight");
  LayerShape s = checked_shape(x, num_heads, qkv_w.rows / 3, past, key_cache, value_cache);
  const WeightMatrix dense_w = weight_matrix(dense_weight, dense_scale, "dense_weight");
  const WeightMatrix fc1_w = weight_matrix(fc1_weight, fc1_scale, "fc1_weight");
  const WeightMatrix fc2_w = weight_matrix(fc2_weight, fc2_scale, "fc2_weight");
  s.inner = fc1_w.rows;
  const int64_t e = s.embd;
  PD_CHECK(qkv_w.rows == 3 * e && qkv_w.cols == e, "qkv_weight must be [3*embd, embd]");
  PD_CHECK(dense_w.rows == e && dense_w.cols == e, "dense_weight must be [embd, embd]");
  PD_CHECK(fc1_w.cols == e, "fc1_weight must be [inner, embd]");
  PD_CHECK(fc2_w.rows == e && fc2_w.cols == s.inner, "fc2_weight must be [embd, inner]");
  check_vector(ln1_weight, e, "ln1_weight");
  check_vector(ln1_bias, e, "ln1_bias");
  check_vector(ln2_weight, e, "ln2_weight");
  check_vector(ln2_bias, e, "ln2_bias");
  check_vector(qkv_bias, 3 * e, "qkv_bias");
  check_vector(dense_bias, e, "dense_bias");
  check_vector(fc1_bias, s.inner, "fc1_bias");
  check_vector(fc2_bias, e, "fc2_bias");
  if (query) {
    check_float32(*query, "query");
    PD_CHECK(query->shape() == x.shape(), "query must be [batch, seq, embd] like x");
  }
  const int64_t* mask = checked_mask(attention_mask, s);
  const int64_t tokens = s.tokens();
  const std::vector<int64_t> positions = new_positions(s, mask);  // no rotary: attention reads them for nothing

  auto out = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  std::vector<float> qkv(tokens * 3 * e), attn(tokens * e), mid(tokens * e), inner(tokens * s.inner),
      product(tokens * e);
  const GeexArgs args{s, x.data<float>(), query ? query->data<float>() : nullptr, out.data<float>(),
                      ln1_weight.data<float>(), ln1_bias.data<float>(), ln2_weight.data<float>(),
                      ln2_bias.data<float>(), eps, qkv_w, dense_w, fc1_w, fc2_w, qkv_bias.data<float>(),
                      dense_bias.data<float>(), fc1_bias.data<float>(), fc2_bias.data<float>(), positions.data(),
                      mask, const_cast<float*>(key_cache.data<float>()),
                      const_cast<float*>(value_cache.data<float>()), qkv.data(), attn.data(), mid.data(),
                      inner.data(), product.data()};
  if (tokens > kMatvecMaxRows)
    codegeex_prefill_layer(args);
  else
    codegeex_decode_layer(args);
  return {out};
}

std::vector<std::vector<int64_t>> CodeGeeXLayerShape(
    const std::vector<int64_t>& x, const paddle::optional<std::vector<int64_t>>&, const std::vector<int64_t>&,
    const std::vector<int64_t>&, const std::vector<int64_t>&, const paddle::optional<std::vector<int64_t>>&,
    const std::vector<int64_t>&, const std::vector<int64_t>&, const paddle::optional<std::vector<int64_t>>&,
    const std::vector<int64_t>&, const std::vector<int64_t>&, const std::vector<int64_t>&,
    const std::vector<int64_t>&, const paddle::optional<std::vector<int64_t>>&, const std::vector<int64_t>&,
    const std::vector<int64_t>&, const paddle::optional<std::vector<int64_t>>&, const std::vector<int64_t>&,
    const std::vector<int64_t>& k, const std::vector<int64_t>& v, const paddle::optional<std::vector<int64_t>>&,
    int64_t, int, float) {
  return {x, k, v};
}

}  // namespace

// Plain C entry points, called through ctypes (they take no tensors).
extern "C" {

// The prefill kernels in use, as bits: 1 the int8 one (VNNI), 2 the bf16 one (AVX512-BF16),
// 4 int8 on AMX, 8 bf16 on AMX. With `enable` 0, 1, 2 or 3, first turns the reduced-precision
// kernels off, back to what the CPU supports, to that without AMX, or without AMX for int8
// only (the tests compare them); -1 only reads.
int codegen_prefill_kernels(int enable) {
  kern::GemmSupport& s = kern::gemm_support();
  if (enable >= 0) s = enable ? kern::cpu_gemm_support() : kern::GemmSupport{};
  if (enable == 2) s.amx_int8 = s.amx_bf16 = false;
  if (enable == 3) s.amx_int8 = false;
  return (s.int8 ? 1 : 0) | (s.bf16 ? 2 : 0) | (s.amx_int8 ? 4 : 0) | (s.amx_bf16 ? 8 : 0);
}

// The fewest activation rows (of up to 16) an int8 matvec hands to AMX tiles; 0: never (no
// AMX here, or turned off). With `enable` 0 or 1, first turns them off or back on where
// usable, from `min_rows` rows (0: the default); -1 only reads. The tests compare the kernels.
int codegen_amx_matvec(int enable, int min_rows) {
  if (enable >= 0)
    kern::amx::matvec_min_rows() =
        enable && kern::amx::usable().int8 ? (min_rows > 0 ? min_rows : kern::amx::kDefaultMinRows) : 0;
  return kern::amx::matvec_min_rows();
}

}  // extern "C"

PD_BUILD_OP(codegen_weight_only_linear)
    .Inputs({"X", "Weight", paddle::Optional("Scale"), paddle::Optional("Bias")})
    .Outputs({"Out"})
    .Attrs({"reduced_precision: bool"})
    .SetKernelFn(PD_KERNEL(WeightOnlyLinear))
    .SetInferShapeFn(PD_INFER_SHAPE(WeightOnlyLinearShape));

PD_BUILD_OP(codegen_dequantize)
    .Inputs({"Weight", paddle::Optional("Scale")})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(Dequantize))
    .SetInferShapeFn(PD_INFER_SHAPE(DequantizeShape));

PD_BUILD_OP(codegen_pack_weight)
    .Inputs({"Weight"})
    .Outputs({"Packed", "Scale"})
    .Attrs({"format: std::string"})
    .SetKernelFn(PD_KERNEL(PackWeight));

PD_BUILD_OP(codegen_read_bandwidth)
    .Inputs({"Buffer"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(ReadBandwidth));

PD_BUILD_OP(codegen_decoder_layer)
    .Inputs({"X", "LnWeight", "LnBias", "QkvWeight", paddle::Optional("QkvScale"), "OutWeight",
             paddle::Optional("OutScale"), "FcInWeight", paddle::Optional("FcInScale"), "FcInBias", "FcOutWeight",
             paddle::Optional("FcOutScale"), "FcOutBias", "KeyCache", "ValueCache",
             paddle::Optional("AttentionMask"), "Sin", "Cos"})
    .Outputs({"Out", "KeyCacheOut", "ValueCacheOut"})
    .Attrs({"past: int64_t", "num_heads: int", "rotary_dim: int", "mp_num: int", "eps: float", "residual: bool"})
    .SetInplaceMap({{"KeyCache", "KeyCacheOut"}, {"ValueCache", "ValueCacheOut"}})
    .SetKernelFn(PD_KERNEL(DecoderLayer))
    .SetInferShapeFn(PD_INFER_SHAPE(DecoderLayerShape));

PD_BUILD_OP(codegeex_decoder_layer)
    .Inputs({"X", paddle::Optional("Query"), "Ln1Weight", "Ln1Bias", "QkvWeight", paddle::Optional("QkvScale"),
             "QkvBias", "DenseWeight", paddle::Optional("DenseScale"), "DenseBias", "Ln2Weight", "Ln2Bias",
             "Fc1Weight", paddle::Optional("Fc1Scale"), "Fc1Bias", "Fc2Weight", paddle::Optional("Fc2Scale"),
             "Fc2Bias", "KeyCache", "ValueCache", paddle::Optional("AttentionMask")})
    .Outputs({"Out", "KeyCacheOut", "ValueCacheOut"})
    .Attrs({"past: int64_t", "num_heads: int", "eps: float"})
    .SetInplaceMap({{"KeyCache", "KeyCacheOut"}, {"ValueCache", "ValueCacheOut"}})
    .SetKernelFn(PD_KERNEL(CodeGeeXLayer))
    .SetInferShapeFn(PD_INFER_SHAPE(CodeGeeXLayerShape));
