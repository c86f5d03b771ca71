// Streaming speed of the decode matvec kernels (codegen/kernels/matvec.h) with no
// Paddle around them: each weight format multiplies one activation row by a
// 200k x 1024 matrix (far larger than the caches) on all threads, next to a
// plain prefetching read of the same memory (the roofline probe's loop). Used to
// pick the software prefetch distance:
//
//   for d in 2048 4096 8192 12288; do
//     g++ -O3 -march=native -fopenmp -std=c++17 -Icodegen/kernels -DCODEGEN_PREFETCH_BYTES=$d \
//         bench/matvec_stream.cc -o /tmp/matvec_stream_$d
//   done
//   for round in 1 2 3 4 5; do for d in 2048 4096 8192 12288; do /tmp/matvec_stream_$d; done; done
//
// The host's memory bandwidth drifts within minutes, so alternate the builds and
// compare medians. Prints one line per format: "<prefetch bytes> <format> <GB/s>".
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "matvec.h"

namespace {

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr int64_t kCols = 1024, kRows = 200 * 1024;
constexpr int kRepeats = 10;

double matvec_rate(kern::WeightFormat format, int64_t bytes_per_weight) {
  std::vector<uint8_t> data(kRows * kCols * bytes_per_weight);
  // small positive bit patterns: valid finite numbers in every format
  for (size_t i = 0; i < data.size(); ++i) data[i] = (i * 2654435761u) >> 24 & 0x3f;
  std::vector<float> scale(kRows, 0.01f), x(kCols, 0.5f), y(kRows);
  const kern::WeightMatrix w{data.data(), format, scale.data(), kRows, kCols};
  kern::MatvecInput in(x.data(), 1, kCols);
  in.prepare(w);
  const kern::RowChunks chunks(kRows, kern::row_bytes(w));
  double best = 1e30;
  for (int r = 0; r < kRepeats; ++r) {
    const double t = seconds();
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks.count(); ++c) kern::matvec_rows(w, in, y.data(), kRows, chunks.begin(c), chunks.end(c));
    best = std::min(best, seconds() - t);
  }
  return data.size() / best / 1e9;
}

double read_rate() {
  std::vector<float> data(kRows * kCols, 1.0f);
  const float* p = data.data();
  const int64_t n = data.size();
  double best = 1e30;
  float sink = 0;
  for (int r = 0; r < kRepeats; ++r) {
    const double t = seconds();
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
      simd::vf acc = simd::zero();
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; i += simd::kLanes) {
        if (i % 64 == 0) kern::prefetch_ahead(p + i, 64 * sizeof(float), p + n);
        acc = simd::add(acc, simd::load(p + i));
      }
      total += simd::sum(acc);
    }
    sink += total;
    best = std::min(best, seconds() - t);
  }
  std::fprintf(stderr, "%s", sink == 0 ? " " : "");
  return n * sizeof(float) / best / 1e9;
}

}  // namespace

int main() {
  const struct {
    const char* name;
    kern::WeightFormat format;
    int64_t bytes;
  } formats[] = {{"fp32", kern::WeightFormat::kFloat32, 4},
                 {"bf16", kern::WeightFormat::kBFloat16, 2},
                 {"fp16", kern::WeightFormat::kFloat16, 2},
                 {"int8", kern::WeightFormat::kInt8, 1}};
  std::printf("%d read %.1f\n", kern::kPrefetchBytes, read_rate());
  for (const auto& f : formats) std::printf("%d %s %.1f\n", kern::kPrefetchBytes, f.name, matvec_rate(f.format, f.bytes));
}
