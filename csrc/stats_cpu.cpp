// CPU kernel of the stats ops: fixed-size chunks in parallel, merged in chunk order, so the
// result does not depend on the number of threads. Dense float32 / bfloat16 / float16 chunks
// take a fast path: blocks of 16 values, extrema in float, a float64 lane per value of a block
// for each sum; with AVX2 (checked at run time) on vectors, else in a portable loop that gives
// the same bits (with the build's -ffp-contract=off, on other architectures too).
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "stats_glue.h"

namespace accdump {

namespace {
constexpr int64_t kChunk = 1 << 16;
constexpr int kBlock = 16;  // values a block; each value index in a block has its own lane

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

// Per-lane partial sums and extrema of the finite blocks of a dense range. The SIMD and the
// portable loops fill the same lanes with the same operations (sums of squares by fused
// multiply-add) and reduce them in the same order, so results do not depend on the CPU.
struct Lanes {
  double sum[kBlock], sumsq[kBlock], s2[kBlock];
  float mn[kBlock], mx[kBlock], amax[kBlock], mina[kBlock];
  int64_t finite = 0, zeros = 0;

  Lanes() {
    for (int k = 0; k < kBlock; ++k) {
      sum[k] = sumsq[k] = s2[k] = 0.0;
      mn[k] = mina[k] = INFINITY;
      mx[k] = -INFINITY;
      amax[k] = 0.0f;
    }
  }

  // Lanes 0..15 into acc, in order (v < m ? v : m keeps the first of equal values, as MINPS does).
  void reduce_into(StatsAcc& acc) const {
    float lo = INFINITY, hi = -INFINITY, am = 0.0f, mi = INFINITY;
    for (int k = 0; k < kBlock; ++k) {
      acc.sum += sum[k];
      acc.sumsq += sumsq[k];
      acc.s2 += s2[k];
      lo = mn[k] < lo ? mn[k] : lo;
      hi = mx[k] > hi ? mx[k] : hi;
      am = amax[k] > am ? amax[k] : am;
      mi = mina[k] < mi ? mina[k] : mi;
    }
    if (finite) {
      acc.min = std::min(acc.min, static_cast<double>(lo));
      acc.max = std::max(acc.max, static_cast<double>(hi));
      acc.absmax = std::max(acc.absmax, static_cast<double>(am));
      acc.minabs = std::min(acc.minabs, static_cast<double>(mi));
      acc.finite += finite;
      acc.zeros += zeros;
    }
  }
};

// Values [begin, end) one by one (a block holding NaN or Inf, a range's tail). Never inlined, so
// the SIMD and portable loops run the same code here.
template <DType T>
__attribute__((noinline)) void add_values(const char* base, int64_t begin, int64_t end, double shift,
                                          StatsAcc& acc) {
  constexpr int64_t es = element_size(T);
  for (int64_t i = begin; i < end; ++i) acc.add(load_value<T>(base + i * es), shift);
}

// Dense values [begin, end) of a fast type into acc: blocks of 16 finite values into lanes,
// other blocks and the tail value by value.
template <DType T>
void accumulate_dense_portable(const char* base, int64_t begin, int64_t end, double shift, StatsAcc& acc) {
  constexpr int64_t es = element_size(T);
  Lanes l;
  int64_t i = begin;
  for (; i + kBlock <= end; i += kBlock) {
    float v[kBlock];
    bool bad = false;
    for (int k = 0; k < kBlock; ++k) {
      v[k] = load_float<T>(base + (i + k) * es);
      bad |= !(v[k] - v[k] == 0.0f);
    }
    if (bad) {
      add_values<T>(base, i, i + kBlock, shift, acc);
      continue;
    }
    for (int k = 0; k < kBlock; ++k) {
      const double x = v[k];
      l.sum[k] += x;
      l.sumsq[k] = std::fma(x, x, l.sumsq[k]);
      const double d = x - shift;
      l.s2[k] = std::fma(d, d, l.s2[k]);
      const float a = std::fabs(v[k]);
      l.mn[k] = v[k] < l.mn[k] ? v[k] : l.mn[k];
      l.mx[k] = v[k] > l.mx[k] ? v[k] : l.mx[k];
      l.amax[k] = a > l.amax[k] ? a : l.amax[k];
      const float nz = a == 0.0f ? INFINITY : a;
      l.mina[k] = nz < l.mina[k] ? nz : l.mina[k];
      l.zeros += a == 0.0f;
    }
    l.finite += kBlock;
  }
  add_values<T>(base, i, end, shift, acc);
  l.reduce_into(acc);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define ACCDUMP_STATS_AVX2 1

// Eight values at p as floats (bf16: the upper half of a float; fp16 through F16C).
template <DType T>
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const char* p) {
  if constexpr (T == DType::kFloat32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  } else if constexpr (T == DType::kBFloat16) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
}

// accumulate_dense_portable with AVX2: lanes 0-7 and 8-15 of a block are two float vectors,
// lanes 4j..4j+3 one double vector each (the same lanes, the same operations, the same bits).
template <DType T>
__attribute__((target("avx2,fma,f16c"))) void accumulate_dense_avx2(const char* base, int64_t begin, int64_t end,
                                                                     double shift, StatsAcc& acc) {
  constexpr int64_t es = element_size(T);
  __m256d sum[4], sumsq[4], s2[4];
  for (int j = 0; j < 4; ++j) sum[j] = sumsq[j] = s2[j] = _mm256_setzero_pd();
  __m256 mn[2], mx[2], amax[2], mina[2];
  const __m256 inf = _mm256_set1_ps(INFINITY), zero = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256d shift4 = _mm256_set1_pd(shift);
  for (int h = 0; h < 2; ++h) mn[h] = mina[h] = inf, mx[h] = _mm256_set1_ps(-INFINITY), amax[h] = zero;
  int64_t finite = 0, zeros = 0;
  int64_t i = begin;
  for (; i + kBlock <= end; i += kBlock) {
    const __m256 v[2] = {load8<T>(base + i * es), load8<T>(base + (i + 8) * es)};
    // v - v == 0 for finite v only (NaN and Inf give NaN)
    const int ok = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(v[0], v[0]), zero, _CMP_EQ_OQ)) &
                   _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(v[1], v[1]), zero, _CMP_EQ_OQ));
    if (ok != 0xff) {
      add_values<T>(base, i, i + kBlock, shift, acc);
      continue;
    }
    for (int h = 0; h < 2; ++h) {
      const __m256d x[2] = {_mm256_cvtps_pd(_mm256_castps256_ps128(v[h])), _mm256_cvtps_pd(_mm256_extractf128_ps(v[h], 1))};
      for (int q = 0; q < 2; ++q) {
        const int j = 2 * h + q;
        sum[j] = _mm256_add_pd(sum[j], x[q]);
        sumsq[j] = _mm256_fmadd_pd(x[q], x[q], sumsq[j]);
        const __m256d d = _mm256_sub_pd(x[q], shift4);
        s2[j] = _mm256_fmadd_pd(d, d, s2[j]);
      }
      const __m256 a = _mm256_andnot_ps(sign, v[h]);
      mn[h] = _mm256_min_ps(v[h], mn[h]);  // v < mn ? v : mn
      mx[h] = _mm256_max_ps(v[h], mx[h]);  // v > mx ? v : mx
      amax[h] = _mm256_max_ps(a, amax[h]);
      const __m256 is_zero = _mm256_cmp_ps(a, zero, _CMP_EQ_OQ);
      mina[h] = _mm256_min_ps(_mm256_blendv_ps(a, inf, is_zero), mina[h]);
      zeros += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(is_zero)));
    }
    finite += kBlock;
  }
  add_values<T>(base, i, end, shift, acc);
  Lanes l;
  for (int j = 0; j < 4; ++j) {
    _mm256_storeu_pd(l.sum + 4 * j, sum[j]);
    _mm256_storeu_pd(l.sumsq + 4 * j, sumsq[j]);
    _mm256_storeu_pd(l.s2 + 4 * j, s2[j]);
  }
  for (int h = 0; h < 2; ++h) {
    _mm256_storeu_ps(l.mn + 8 * h, mn[h]);
    _mm256_storeu_ps(l.mx + 8 * h, mx[h]);
    _mm256_storeu_ps(l.amax + 8 * h, amax[h]);
    _mm256_storeu_ps(l.mina + 8 * h, mina[h]);
  }
  l.finite = finite, l.zeros = zeros;
  l.reduce_into(acc);
}

// ACCDUMP_STATS_PORTABLE=1 takes the portable loop on any CPU (tests compare the two paths' bits).
bool portable_stats_forced() {
  static const bool yes = [] {
    const char* v = std::getenv("ACCDUMP_STATS_PORTABLE");
    return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
  }();
  return yes;
}

bool has_avx2() {
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;  // F16C by CPUID: clang before 18 has no "f16c" for the builtin
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}
#endif

template <DType T>
void accumulate_dense_fast(const char* base, int64_t begin, int64_t end, double shift, StatsAcc& acc) {
#ifdef ACCDUMP_STATS_AVX2
  if (has_avx2() && !portable_stats_forced()) return accumulate_dense_avx2<T>(base, begin, end, shift, acc);
#endif
  accumulate_dense_portable<T>(base, begin, end, shift, acc);
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

const char* cpu_stats_path() {
#ifdef ACCDUMP_STATS_AVX2
  if (has_avx2() && !portable_stats_forced()) return "avx2";
#endif
  return "portable";
}

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
