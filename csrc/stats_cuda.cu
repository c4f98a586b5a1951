// CUDA kernels of tensor_stats / tensor_stats_multi: one launch reads every tensor of the list
// (each block works on one tensor), a second merges each tensor's block partials in fixed order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <type_traits>
#include <vector>

#include "common/block_reduce.cuh"
#include "common/cuda_check.h"
#include "stats.h"

namespace accdump {
namespace {

constexpr int kThreads = 256;

// Types whose values are exact in float32 and that have a cheap float decode: their dense
// path keeps min/max/zero tests in float and only the three sums in float64.
template <DType T>
constexpr bool kFastFloat = T == DType::kBFloat16 || T == DType::kFloat16 || T == DType::kFloat8E4M3FN ||
                            T == DType::kFloat8E5M2;

template <DType T>
__device__ __forceinline__ float load_f32(const char* p) {
  if constexpr (T == DType::kBFloat16) {
    return __uint_as_float(static_cast<unsigned>(*reinterpret_cast<const unsigned short*>(p)) << 16);
  } else if constexpr (T == DType::kFloat16) {
    return __half2float(*reinterpret_cast<const __half*>(p));
  } else if constexpr (T == DType::kFloat8E4M3FN) {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw(*reinterpret_cast<const __nv_fp8_storage_t*>(p), __NV_E4M3)));
  } else {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw(*reinterpret_cast<const __nv_fp8_storage_t*>(p), __NV_E5M2)));
  }
}

// Running float32 extrema of finite values, folded into the float64 accumulator at the end.
struct FloatExtrema {
  float min = INFINITY, max = -INFINITY, absmax = 0.0f, minabs = INFINITY;
  int64_t finite = 0;
  unsigned zeros = 0;  // per thread: far below 2^32
  __device__ void fold_into(StatsAcc& acc) const {
    acc.min = fmin(acc.min, static_cast<double>(min));
    acc.max = fmax(acc.max, static_cast<double>(max));
    acc.absmax = fmax(acc.absmax, static_cast<double>(absmax));
    acc.minabs = fmin(acc.minabs, static_cast<double>(minabs));
    acc.finite += finite;
    acc.zeros += zeros;
  }
};

// bf16 and fp16: the extrema, the zero count and the finite test on pairs of values (one packed
// instruction for two values), kept as pairs until the end. The statistics kernel is bound by
// instructions issued, not by memory, with these done one value at a time in float.
template <DType T>
constexpr bool kPacked16 = T == DType::kBFloat16 || T == DType::kFloat16;

template <DType T>
struct PackedExtrema {
  using Pair = std::conditional_t<T == DType::kBFloat16, __nv_bfloat162, __half2>;
  static constexpr unsigned kInf = T == DType::kBFloat16 ? 0x7F807F80u : 0x7C007C00u;  // +inf, both halves
  static constexpr unsigned kExpOne = T == DType::kBFloat16 ? 0x00800080u : 0x04000400u;  // lowest exponent bit

  static __device__ __forceinline__ Pair pair(unsigned bits) {
    Pair p;
    memcpy(&p, &bits, sizeof(p));
    return p;
  }

  Pair min = pair(kInf), max = pair(kInf | 0x80008000u), absmax = pair(0u), minabs = pair(kInf);
  int64_t finite = 0;
  unsigned zero_bits = 0;  // 16 per zero (popc of __heq2_mask); per thread far below 2^32

  // Whether any of the four pairs holds an Inf or NaN: an all-ones exponent plus its lowest bit
  // carries into the half's sign bit, and no further.
  static __device__ __forceinline__ bool any_nonfinite(const uint4& raw) {
    const unsigned e = kInf;
    const unsigned c = ((raw.x & e) + kExpOne) | ((raw.y & e) + kExpOne) | ((raw.z & e) + kExpOne) |
                       ((raw.w & e) + kExpOne);
    return (c & 0x80008000u) != 0;
  }

  __device__ __forceinline__ void add(unsigned bits) {
    const Pair v = pair(bits);
    const unsigned abs_bits = bits & 0x7FFF7FFFu;
    const Pair a = pair(abs_bits);
    const unsigned zero = __heq2_mask(a, pair(0u));
    zero_bits += __popc(zero);
    min = __hmin2(min, v);
    max = __hmax2(max, v);
    absmax = __hmax2(absmax, a);
    minabs = __hmin2(minabs, pair(abs_bits | (zero & kInf)));  // zeros count as +inf here
  }

  __device__ void fold_into(StatsAcc& acc) const {
    const float2 mn = to_float2(min), mx = to_float2(max), am = to_float2(absmax), ma = to_float2(minabs);
    acc.min = fmin(acc.min, static_cast<double>(fminf(mn.x, mn.y)));
    acc.max = fmax(acc.max, static_cast<double>(fmaxf(mx.x, mx.y)));
    acc.absmax = fmax(acc.absmax, static_cast<double>(fmaxf(am.x, am.y)));
    acc.minabs = fmin(acc.minabs, static_cast<double>(fminf(ma.x, ma.y)));
    acc.finite += finite;
    acc.zeros += zero_bits / 16;
  }

  static __device__ __forceinline__ float2 to_float2(const Pair& p) {
    if constexpr (T == DType::kBFloat16) {
      return __bfloat1622float2(p);
    } else {
      return __half22float2(p);
    }
  }
};

template <DType T>
using Extrema = std::conditional_t<kPacked16<T>, PackedExtrema<T>, FloatExtrema>;

// The three float64 sums of finite values (the same operations, in the same order, for every type).
__device__ __forceinline__ void add_sums(float v, double shift, StatsAcc& acc) {
  const double x = v;
  acc.sum += x;
  acc.sumsq = fma(x, x, acc.sumsq);
  const double d = x - shift;
  acc.s2 = fma(d, d, acc.s2);
}

template <DType T>
__device__ __forceinline__ void add_vector_packed(const uint4& raw, double shift, StatsAcc& acc,
                                                  PackedExtrema<T>& ex) {
  const char* p = reinterpret_cast<const char*>(&raw);
  if (PackedExtrema<T>::any_nonfinite(raw)) {
#pragma unroll
    for (int k = 0; k < 8; ++k) acc.add(static_cast<double>(load_f32<T>(p + 2 * k)), shift);
    return;
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) add_sums(load_f32<T>(p + 2 * k), shift, acc);
  ex.add(raw.x);
  ex.add(raw.y);
  ex.add(raw.z);
  ex.add(raw.w);
  ex.finite += 8;
}

template <DType T>
__device__ __forceinline__ void add_vector_fast(const uint4& raw, double shift, StatsAcc& acc, FloatExtrema& ex) {
  constexpr int es = static_cast<int>(element_size(T));
  constexpr int n = 16 / es;
  const char* p = reinterpret_cast<const char*>(&raw);
  float v[n];
  bool bad = false;
#pragma unroll
  for (int k = 0; k < n; ++k) {
    v[k] = load_f32<T>(p + k * es);
    bad |= !(v[k] - v[k] == 0.0f);  // NaN or Inf
  }
  if (bad) {
#pragma unroll
    for (int k = 0; k < n; ++k) acc.add(static_cast<double>(v[k]), shift);
    return;
  }
#pragma unroll
  for (int k = 0; k < n; ++k) {
    add_sums(v[k], shift, acc);
    const float a = fabsf(v[k]);
    ex.min = fminf(ex.min, v[k]);
    ex.max = fmaxf(ex.max, v[k]);
    ex.absmax = fmaxf(ex.absmax, a);
    ex.minabs = fminf(ex.minabs, a == 0.0f ? INFINITY : a);
    ex.zeros += a == 0.0f;
  }
  ex.finite += n;
}

template <DType T>
__device__ __forceinline__ void add_vector(const uint4& raw, double shift, StatsAcc& acc, Extrema<T>& ex) {
  if constexpr (kPacked16<T>) {
    add_vector_packed<T>(raw, shift, acc, ex);
  } else if constexpr (kFastFloat<T>) {
    add_vector_fast<T>(raw, shift, acc, ex);
  } else {
    constexpr int es = static_cast<int>(element_size(T));
    const char* p = reinterpret_cast<const char*>(&raw);
#pragma unroll
    for (int k = 0; k < 16 / es; ++k) {
#pragma unroll
      for (int s = 0; s < values_per_element(T); ++s) acc.add(load_value<T>(p + k * es, s), shift);
    }
  }
}

template <DType T>
__device__ double first_value(const TensorDesc& d) {
  return d.numel > 0 ? load_value<T>(d.data, 0) : 0.0;
}

template <DType T>
__device__ void accumulate(const TensorDesc& d, int64_t part, int64_t parts, double shift, StatsAcc& acc) {
  constexpr int64_t es = element_size(T);
  constexpr int vpe = values_per_element(T);
  const int64_t tid = part * blockDim.x + threadIdx.x;
  const int64_t stride = parts * blockDim.x;
  int64_t scalar_begin = 0;
  if (d.ndim == 0 && es < 16 && (reinterpret_cast<uintptr_t>(d.data) % 16) == 0) {
    constexpr int64_t per_vec = 16 / es;
    const uint4* v = static_cast<const uint4*>(d.data);
    const int64_t nvec = d.numel / per_vec;
    Extrema<T> ex;
    // Four loads in flight per thread: a tensor of a few MB gives each block's threads only a
    // few vectors, whose latency two at a time left unhidden.
    int64_t i = tid;
    for (; i + 3 * stride < nvec; i += 4 * stride) {
      const uint4 x0 = v[i];
      const uint4 x1 = v[i + stride];
      const uint4 x2 = v[i + 2 * stride];
      const uint4 x3 = v[i + 3 * stride];
      add_vector<T>(x0, shift, acc, ex);
      add_vector<T>(x1, shift, acc, ex);
      add_vector<T>(x2, shift, acc, ex);
      add_vector<T>(x3, shift, acc, ex);
    }
    if (i + stride < nvec) {  // two left (a thread of a tensor below the block cap has two bf16 vectors)
      const uint4 x0 = v[i];
      const uint4 x1 = v[i + stride];
      add_vector<T>(x0, shift, acc, ex);
      add_vector<T>(x1, shift, acc, ex);
      i += 2 * stride;
    }
    for (; i < nvec; i += stride) add_vector<T>(v[i], shift, acc, ex);
    ex.fold_into(acc);
    scalar_begin = nvec * per_vec;
  }
  for (int64_t i = scalar_begin + tid; i < d.numel; i += stride) {
    const char* p = element_ptr(d, i);
    for (int s = 0; s < vpe; ++s) acc.add(load_value<T>(p, s), shift);
  }
}

__global__ void __launch_bounds__(kThreads) stats_partial_kernel(const TensorDesc* descs,
                                                                 const int64_t* block_begin,
                                                                 const int32_t* block_tensor,
                                                                 StatsAcc* workspace) {
  __shared__ StatsAcc smem[32];
  const int64_t block = blockIdx.x;
  const int32_t t = block_tensor[block];
  const TensorDesc d = descs[t];
  const int64_t part = block - block_begin[t];
  const int64_t parts = block_begin[t + 1] - block_begin[t];
  StatsAcc acc;
  acc.init();
  ACCDUMP_DISPATCH_DTYPE(d.dtype, accumulate<DT>(d, part, parts, stats_shift(first_value<DT>(d)), acc));
  block_merge(acc, smem);
  if (threadIdx.x == 0) workspace[block] = acc;
}

// One block per tensor: merges its block partials in the order stats_into_kernel's last block
// does (thread i takes partials i, i + 256, ..., then block_merge), so tensor_stats gives the
// bits tensor_stats_into gives.
__global__ void __launch_bounds__(kThreads) stats_final_kernel(const TensorDesc* descs,
                                                               const int64_t* block_begin, int64_t n,
                                                               const StatsAcc* workspace, double* out) {
  __shared__ StatsAcc smem[32];
  const int64_t t = blockIdx.x;
  const int64_t parts = block_begin[t + 1] - block_begin[t];
  StatsAcc acc;
  acc.init();
  if (parts == 1) {
    acc = workspace[block_begin[t]];  // stats_into_kernel finalizes a single block's own merge
  } else {
    for (int64_t b = threadIdx.x; b < parts; b += blockDim.x) acc.merge(workspace[block_begin[t] + b]);
    block_merge(acc, smem);
  }
  if (threadIdx.x == 0) {
    const TensorDesc d = descs[t];
    double first = 0.0;
    ACCDUMP_DISPATCH_DTYPE(d.dtype, first = first_value<DT>(d));
    stats_finalize(acc, d.numel * values_per_element(d.dtype), stats_shift(first), out + t * kStatsFields);
  }
}

// Reads a partial written by another block of this grid (bypassing L1, after its fence).
__device__ StatsAcc load_partial(const StatsAcc* p) {
  static_assert(sizeof(StatsAcc) % 16 == 0 && kStatsWorkspaceHeader % 16 == 0, "partials are 16-byte aligned");
  StatsAcc out;
  const auto* src = reinterpret_cast<const uint4*>(p);
  auto* dst = reinterpret_cast<uint4*>(&out);
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(StatsAcc) / 16); ++i) dst[i] = __ldcg(src + i);
  return out;
}

template <DType T>
__device__ void finalize_tensor(const TensorDesc& d, const StatsAcc& acc, double shift, double* out) {
  stats_finalize(acc, d.numel * values_per_element(T), shift, out);
}

// One kernel per dtype (the launch picks it): a kernel switching over every dtype gets the
// registers of its largest path, which cost the common float ones a block per SM.
template <DType T>
__global__ void __launch_bounds__(kThreads, 4) stats_into_kernel(const TensorDesc d, unsigned* counter,
                                                              StatsAcc* partials, double* out) {
  __shared__ StatsAcc smem[32];
  __shared__ bool is_last;
  // the shift is read once, here, and kept for the merge (one dependent load less at the end)
  const double shift = stats_shift(first_value<T>(d));
  StatsAcc acc;
  acc.init();
  accumulate<T>(d, blockIdx.x, gridDim.x, shift, acc);
  block_merge(acc, smem);
  if (gridDim.x == 1) {
    if (threadIdx.x == 0) finalize_tensor<T>(d, acc, shift, out);
    return;
  }
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = acc;
    __threadfence();
    is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  StatsAcc total;
  total.init();
  for (unsigned b = threadIdx.x; b < gridDim.x; b += blockDim.x) total.merge(load_partial(partials + b));
  block_merge(total, smem);
  if (threadIdx.x == 0) {
    finalize_tensor<T>(d, total, shift, out);
    *counter = 0;  // ready for the next launch on this stream
  }
}

}  // namespace

void launch_tensor_stats_into_cuda(const TensorDesc& d, void* workspace, double* out, cudaStream_t stream) {
  const int64_t blocks = stats_blocks_for(d.numel * values_per_element(d.dtype));
  auto* counter = static_cast<unsigned*>(workspace);
  auto* partials = reinterpret_cast<StatsAcc*>(static_cast<char*>(workspace) + kStatsWorkspaceHeader);
  ACCDUMP_DISPATCH_DTYPE(
      d.dtype, stats_into_kernel<DT><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(d, counter, partials, out));
  ACCDUMP_LAUNCH_CHECK();
}

void launch_tensor_stats_cuda(const TensorDesc* descs, const int64_t* block_begin, const int32_t* block_tensor,
                              int64_t n, int64_t total_blocks, StatsAcc* workspace, double* out,
                              cudaStream_t stream) {
  if (n == 0) return;
  stats_partial_kernel<<<static_cast<unsigned>(total_blocks), kThreads, 0, stream>>>(descs, block_begin,
                                                                                     block_tensor, workspace);
  ACCDUMP_LAUNCH_CHECK();
  stats_final_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(descs, block_begin, n, workspace, out);
  ACCDUMP_LAUNCH_CHECK();
}

}  // namespace accdump

namespace accdump {
namespace {

struct MultiIntoParams {
  TensorDesc desc[kStatsMultiInto];
  int32_t row[kStatsMultiInto];
  int32_t begin[kStatsMultiInto + 1];  // blocks begin[t] .. begin[t+1] read tensor t
};
static_assert(sizeof(MultiIntoParams) <= 4000, "kernel parameters stay within 4 KiB");

// Like stats_into_kernel, for several tensors of one dtype at once: each block finds its tensor,
// the last block of a tensor merges that tensor's partials (same blocks, same order: the same
// bits). One dtype per launch keeps the kernel as lean as stats_into_kernel (a dtype switch
// inside it cost registers, a stack frame and half its bandwidth).
template <DType T>
__global__ void __launch_bounds__(kThreads, 4)
    stats_multi_into_kernel(const __grid_constant__ MultiIntoParams p, unsigned* counters, StatsAcc* partials,
                            double* out) {
  __shared__ StatsAcc smem[32];
  __shared__ bool is_last;
  int t = 0;
  while (static_cast<int32_t>(blockIdx.x) >= p.begin[t + 1]) ++t;
  const TensorDesc& d = p.desc[t];
  const int32_t part = static_cast<int32_t>(blockIdx.x) - p.begin[t];
  const int32_t parts = p.begin[t + 1] - p.begin[t];
  double* o = out + static_cast<int64_t>(p.row[t]) * kStatsFields;
  const int64_t values = d.numel * values_per_element(d.dtype);
  const double shift = stats_shift(first_value<T>(d));
  StatsAcc acc;
  acc.init();
  accumulate<T>(d, part, parts, shift, acc);
  block_merge(acc, smem);
  if (parts == 1) {
    if (threadIdx.x == 0) stats_finalize(acc, values, shift, o);
    return;
  }
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = acc;
    __threadfence();
    is_last = atomicAdd(counters + t, 1u) == static_cast<unsigned>(parts - 1);
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  StatsAcc total;
  total.init();
  for (int32_t b = threadIdx.x; b < parts; b += blockDim.x) total.merge(load_partial(partials + p.begin[t] + b));
  block_merge(total, smem);
  if (threadIdx.x == 0) {
    stats_finalize(total, values, shift, o);
    counters[t] = 0;  // ready for the next launch on this stream
  }
}

}  // namespace

void launch_tensor_stats_multi_into_cuda(const TensorDesc* descs, const int64_t* rows, int64_t n, void* workspace,
                                         double* out, cudaStream_t stream) {
  auto* counters = static_cast<unsigned*>(workspace);
  auto* partials = reinterpret_cast<StatsAcc*>(static_cast<char*>(workspace) + kStatsWorkspaceHeader);
  MultiIntoParams p{};
  int k = 0;
  DType dtype = DType::kFloat32;
  auto launch = [&]() {
    if (k == 0) return;
    ACCDUMP_DISPATCH_DTYPE(dtype, stats_multi_into_kernel<DT><<<static_cast<unsigned>(p.begin[k]), kThreads, 0, stream>>>(
                                      p, counters, partials, out));
    ACCDUMP_LAUNCH_CHECK();
    k = 0;
  };
  // one dtype at a time, in order of first appearance (a batch rarely holds more than two)
  std::vector<bool> done(static_cast<size_t>(n), false);
  for (int64_t first = 0; first < n; ++first) {
    if (done[first]) continue;
    dtype = descs[first].dtype;
    for (int64_t i = first; i < n; ++i) {
      if (done[i] || descs[i].dtype != dtype) continue;
      done[i] = true;
      const auto blocks = static_cast<int32_t>(stats_blocks_for(descs[i].numel * values_per_element(dtype)));
      if (k == kStatsMultiInto || (k > 0 && p.begin[k] + blocks > kStatsMaxBlocks)) launch();
      if (k == 0) p.begin[0] = 0;
      p.desc[k] = descs[i];
      p.row[k] = static_cast<int32_t>(rows[i]);
      p.begin[k + 1] = p.begin[k] + blocks;
      ++k;
    }
    launch();
  }
}

}  // namespace accdump

namespace accdump {
namespace {

// The fingerprint of `data` over `parts` blocks, this block being `part`: each block sums its
// words' mixes into partials[part]; the last one to finish adds them up (integer sums: any order
// gives the same bits) and resets the counter.
__device__ void fingerprint_part(const unsigned char* data, int64_t nbytes, int64_t numel, int64_t part,
                                 int64_t parts, unsigned* counter, unsigned long long* partials, int64_t* out) {
  __shared__ unsigned long long smem[2][32];
  __shared__ bool is_last;
  const int64_t nwords = (nbytes + 7) / 8;
  const bool aligned = reinterpret_cast<uintptr_t>(data) % 8 == 0;
  unsigned long long acc[2] = {0, 0};
  for (int64_t i = part * blockDim.x + threadIdx.x; i < nwords; i += parts * blockDim.x) {
    uint64_t w = 0;
    if (aligned && (i + 1) * 8 <= nbytes) {
      w = reinterpret_cast<const uint64_t*>(data)[i];
    } else {
      for (int b = 0; b < 8 && i * 8 + b < nbytes; ++b) w |= static_cast<uint64_t>(data[i * 8 + b]) << (8 * b);
    }
    for (int k = 0; k < 2; ++k) acc[k] += fingerprint_mix(w, static_cast<uint64_t>(i), fp_m1(k), fp_m2(k));
  }
  for (int k = 0; k < 2; ++k) {
    for (int off = 16; off > 0; off >>= 1) acc[k] += __shfl_down_sync(0xffffffffu, acc[k], off);
    if (threadIdx.x % 32 == 0) smem[k][threadIdx.x / 32] = acc[k];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long total[2] = {0, 0};
    for (int k = 0; k < 2; ++k)
      for (unsigned wp = 0; wp < blockDim.x / 32; ++wp) total[k] += smem[k][wp];
    partials[2 * part] = total[0];
    partials[2 * part + 1] = total[1];
    __threadfence();
    is_last = atomicAdd(counter, 1u) == static_cast<unsigned>(parts - 1);
  }
  __syncthreads();
  if (is_last && threadIdx.x == 0) {
    __threadfence();
    unsigned long long total[2] = {static_cast<unsigned long long>(numel), static_cast<unsigned long long>(numel)};
    for (int64_t b = 0; b < parts; ++b) {
      total[0] += __ldcg(partials + 2 * b);
      total[1] += __ldcg(partials + 2 * b + 1);
    }
    out[0] = static_cast<int64_t>(total[0]);
    out[1] = static_cast<int64_t>(total[1]);
    *counter = 0;
  }
}

__global__ void __launch_bounds__(kThreads) fingerprint_kernel(const unsigned char* data, int64_t nbytes,
                                                               int64_t numel, unsigned* counter,
                                                               unsigned long long* partials, int64_t* out) {
  fingerprint_part(data, nbytes, numel, blockIdx.x, gridDim.x, counter, partials, out);
}

struct FingerprintMultiParams {
  const unsigned char* data[kFingerprintMultiInto];
  int64_t nbytes[kFingerprintMultiInto];
  int64_t numel[kFingerprintMultiInto];
  int32_t row[kFingerprintMultiInto];
  int32_t begin[kFingerprintMultiInto + 1];
};
static_assert(sizeof(FingerprintMultiParams) <= 4000, "kernel parameters stay within 4 KiB");

__global__ void __launch_bounds__(kThreads) fingerprint_multi_kernel(const __grid_constant__ FingerprintMultiParams p,
                                                                     unsigned* counters,
                                                                     unsigned long long* partials, int64_t* out) {
  int t = 0;
  while (static_cast<int32_t>(blockIdx.x) >= p.begin[t + 1]) ++t;
  fingerprint_part(p.data[t], p.nbytes[t], p.numel[t], blockIdx.x - p.begin[t], p.begin[t + 1] - p.begin[t],
                   counters + t, partials + 2 * p.begin[t], out + 2 * static_cast<int64_t>(p.row[t]));
}

int64_t fingerprint_blocks_for(int64_t nbytes) {
  const int64_t nwords = (nbytes + 7) / 8;
  const int64_t blocks = (nwords + kThreads * 8 - 1) / (kThreads * 8);
  return blocks < 1 ? 1 : (blocks > kStatsMaxBlocks ? kStatsMaxBlocks : blocks);
}
}  // namespace

void launch_fingerprint_cuda(const void* data, int64_t nbytes, int64_t numel, void* workspace, int64_t* out,
                             cudaStream_t stream) {
  const int64_t blocks = fingerprint_blocks_for(nbytes);
  auto* counter = static_cast<unsigned*>(workspace);
  auto* partials =
      reinterpret_cast<unsigned long long*>(static_cast<char*>(workspace) + kStatsWorkspaceHeader);
  fingerprint_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const unsigned char*>(data), nbytes, numel, counter, partials, out);
  ACCDUMP_LAUNCH_CHECK();
}

void launch_fingerprint_multi_into_cuda(const void* const* data, const int64_t* nbytes, const int64_t* numel,
                                        const int64_t* rows, int64_t n, void* workspace, int64_t* out,
                                        cudaStream_t stream) {
  auto* counters = static_cast<unsigned*>(workspace);
  auto* partials =
      reinterpret_cast<unsigned long long*>(static_cast<char*>(workspace) + kStatsWorkspaceHeader);
  FingerprintMultiParams p{};
  int k = 0;
  auto launch = [&]() {
    if (k == 0) return;
    fingerprint_multi_kernel<<<static_cast<unsigned>(p.begin[k]), kThreads, 0, stream>>>(p, counters, partials, out);
    ACCDUMP_LAUNCH_CHECK();
    k = 0;
  };
  for (int64_t i = 0; i < n; ++i) {
    const auto blocks = static_cast<int32_t>(fingerprint_blocks_for(nbytes[i]));
    // partials hold 2 words per block: the stats workspace has room for 2 * kStatsMaxBlocks blocks' worth
    if (k == kFingerprintMultiInto || (k > 0 && p.begin[k] + blocks > kStatsMaxBlocks)) launch();
    if (k == 0) p.begin[0] = 0;
    p.data[k] = static_cast<const unsigned char*>(data[i]);
    p.nbytes[k] = nbytes[i];
    p.numel[k] = numel[i];
    p.row[k] = static_cast<int32_t>(rows[i]);
    p.begin[k + 1] = p.begin[k] + blocks;
    ++k;
  }
  launch();
}

}  // namespace accdump
