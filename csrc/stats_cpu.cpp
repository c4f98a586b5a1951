// CPU kernel of the stats ops: fixed-size chunks in parallel, merged in chunk order, so the
// result does not depend on the number of threads. Dense float32 / bfloat16 / float16 chunks
// take a fast path: blocks of 16 values, extrema in float, four float64 lanes per sum.
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "stats_glue.h"

namespace accdump {

namespace {
constexpr int64_t kChunk = 1 << 16;
constexpr int kBlock = 16;
constexpr int kLanes = 4;

template <DType T>
constexpr bool kFastCpu = T == DType::kFloat32 || T == DType::kBFloat16 || T == DType::kFloat16;

template <DType T>
inline float load_float(const char* p) {
  if constexpr (T == DType::kFloat32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  } else {
    return static_cast<float>(load_value<T>(p));
  }
}

// Dense values [begin, end) of a fast type into acc.
template <DType T>
void accumulate_dense_fast(const char* base, int64_t begin, int64_t end, double shift, StatsAcc& acc) {
  constexpr int64_t es = element_size(T);
  double sum[kLanes] = {}, sumsq[kLanes] = {}, s2[kLanes] = {};
  float mn = INFINITY, mx = -INFINITY, amax = 0.0f, mina = INFINITY;
  int64_t finite = 0, zeros = 0;
  int64_t i = begin;
  for (; i + kBlock <= end; i += kBlock) {
    float v[kBlock];
    bool bad = false;
    for (int k = 0; k < kBlock; ++k) {
      v[k] = load_float<T>(base + (i + k) * es);
      bad |= !(v[k] - v[k] == 0.0f);
    }
    if (bad) {
      for (int k = 0; k < kBlock; ++k) acc.add(static_cast<double>(v[k]), shift);
      continue;
    }
    for (int k = 0; k < kBlock; ++k) {
      const double x = v[k];
      const double d = x - shift;
      sum[k % kLanes] += x;
      sumsq[k % kLanes] += x * x;
      s2[k % kLanes] += d * d;
      const float a = v[k] < 0 ? -v[k] : v[k];
      mn = v[k] < mn ? v[k] : mn;
      mx = v[k] > mx ? v[k] : mx;
      amax = a > amax ? a : amax;
      const float nz = a == 0.0f ? INFINITY : a;
      mina = nz < mina ? nz : mina;
      zeros += a == 0.0f;
    }
    finite += kBlock;
  }
  for (; i < end; ++i) acc.add(load_value<T>(base + i * es), shift);
  for (int l = 0; l < kLanes; ++l) {
    acc.sum += sum[l];
    acc.sumsq += sumsq[l];
    acc.s2 += s2[l];
  }
  if (finite) {
    acc.min = std::min(acc.min, static_cast<double>(mn));
    acc.max = std::max(acc.max, static_cast<double>(mx));
    acc.absmax = std::max(acc.absmax, static_cast<double>(amax));
    acc.minabs = std::min(acc.minabs, static_cast<double>(mina));
    acc.finite += finite;
    acc.zeros += zeros;
  }
}

template <DType T>
void stats_chunks(const TensorDesc& d, double shift, std::vector<StatsAcc>& parts) {
  constexpr int vpe = values_per_element(T);
  at::parallel_for(0, static_cast<int64_t>(parts.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      StatsAcc acc;
      acc.init();
      const int64_t begin = c * kChunk;
      const int64_t end = std::min(d.numel, begin + kChunk);
      if constexpr (kFastCpu<T>) {
        if (d.ndim == 0) {
          accumulate_dense_fast<T>(static_cast<const char*>(d.data), begin, end, shift, acc);
          parts[c] = acc;
          continue;
        }
      }
      for_each_element(d, begin, end, [&](const char* p) {
        for (int s = 0; s < vpe; ++s) acc.add(load_value<T>(p, s), shift);
      });
      parts[c] = acc;
    }
  });
}
}  // namespace

void tensor_stats_cpu_kernel(const TensorDesc& d, double* out) {
  const int64_t chunks = (d.numel + kChunk - 1) / kChunk;
  double first = 0.0;
  if (d.numel > 0) {
    ACCDUMP_DISPATCH_DTYPE(d.dtype, first = load_value<DT>(d.data, 0));
  }
  const double shift = stats_shift(first);
  StatsAcc total;
  total.init();
  if (chunks == 1) {  // the common small tensor: no partials vector
    std::vector<StatsAcc> one(1);
    ACCDUMP_DISPATCH_DTYPE(d.dtype, stats_chunks<DT>(d, shift, one));
    total = one[0];
  } else if (chunks > 1) {
    std::vector<StatsAcc> parts(static_cast<size_t>(chunks));
    ACCDUMP_DISPATCH_DTYPE(d.dtype, stats_chunks<DT>(d, shift, parts));
    for (const StatsAcc& p : parts) total.merge(p);
  }
  stats_finalize(total, d.numel * values_per_element(d.dtype), shift, out);
}

}  // namespace accdump
