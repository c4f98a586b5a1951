// CUDA kernels of tensor_stats / tensor_stats_multi: one launch reads every tensor of the list
// (each block works on one tensor), a second merges each tensor's block partials in fixed order.
#include <cuda_runtime.h>

#include "common/block_reduce.cuh"
#include "common/cuda_check.h"
#include "stats.h"

namespace accdump {
namespace {

constexpr int kThreads = 256;

__device__ int64_t find_tensor(const int64_t* block_begin, int64_t n, int64_t block) {
  int64_t lo = 0, hi = n;  // block_begin[lo] <= block < block_begin[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (block_begin[mid] <= block) lo = mid; else hi = mid;
  }
  return lo;
}

template <DType T>
__device__ double first_value(const TensorDesc& d) {
  return d.numel > 0 ? load_value<T>(d.data, 0) : 0.0;
}

template <DType T>
__device__ void accumulate(const TensorDesc& d, int64_t part, int64_t parts, StatsAcc& acc) {
  constexpr int64_t es = element_size(T);
  constexpr int vpe = values_per_element(T);
  const double shift = stats_shift(first_value<T>(d));
  const int64_t tid = part * blockDim.x + threadIdx.x;
  const int64_t stride = parts * blockDim.x;
  int64_t scalar_begin = 0;
  if (d.ndim == 0 && es < 16 && (reinterpret_cast<uintptr_t>(d.data) % 16) == 0) {
    // 16-byte loads, two in flight per iteration.
    constexpr int per_vec = 16 / es;
    const uint4* v = static_cast<const uint4*>(d.data);
    const int64_t nvec = d.numel / per_vec;
    int64_t i = tid;
    for (; i + stride < nvec; i += 2 * stride) {
      const uint4 x0 = v[i];
      const uint4 x1 = v[i + stride];
      const char* p0 = reinterpret_cast<const char*>(&x0);
      const char* p1 = reinterpret_cast<const char*>(&x1);
#pragma unroll
      for (int k = 0; k < per_vec; ++k) {
#pragma unroll
        for (int s = 0; s < vpe; ++s) acc.add(load_value<T>(p0 + k * es, s), shift);
      }
#pragma unroll
      for (int k = 0; k < per_vec; ++k) {
#pragma unroll
        for (int s = 0; s < vpe; ++s) acc.add(load_value<T>(p1 + k * es, s), shift);
      }
    }
    if (i < nvec) {
      const uint4 x0 = v[i];
      const char* p0 = reinterpret_cast<const char*>(&x0);
#pragma unroll
      for (int k = 0; k < per_vec; ++k) {
#pragma unroll
        for (int s = 0; s < vpe; ++s) acc.add(load_value<T>(p0 + k * es, s), shift);
      }
    }
    scalar_begin = nvec * per_vec;
  }
  for (int64_t i = scalar_begin + tid; i < d.numel; i += stride) {
    const char* p = element_ptr(d, i);
    for (int s = 0; s < vpe; ++s) acc.add(load_value<T>(p, s), shift);
  }
}

__global__ void __launch_bounds__(kThreads) stats_partial_kernel(const TensorDesc* descs,
                                                                 const int64_t* block_begin,
                                                                 int64_t n, StatsAcc* workspace) {
  __shared__ StatsAcc smem[kThreads];
  const int64_t block = blockIdx.x;
  const int64_t t = find_tensor(block_begin, n, block);
  const TensorDesc d = descs[t];
  const int64_t part = block - block_begin[t];
  const int64_t parts = block_begin[t + 1] - block_begin[t];
  StatsAcc acc;
  acc.init();
  ACCDUMP_DISPATCH_DTYPE(d.dtype, accumulate<DT>(d, part, parts, acc));
  block_merge(smem, acc);
  if (threadIdx.x == 0) workspace[block] = smem[0];
}

__global__ void __launch_bounds__(kThreads) stats_final_kernel(const TensorDesc* descs,
                                                               const int64_t* block_begin,
                                                               const StatsAcc* workspace,
                                                               double* out) {
  __shared__ StatsAcc smem[kThreads];
  const int64_t t = blockIdx.x;
  const int64_t begin = block_begin[t], end = block_begin[t + 1];
  StatsAcc acc;
  acc.init();
  for (int64_t b = begin + threadIdx.x; b < end; b += blockDim.x) acc.merge(workspace[b]);
  block_merge(smem, acc);
  if (threadIdx.x == 0) {
    const TensorDesc d = descs[t];
    double first = 0.0;
    ACCDUMP_DISPATCH_DTYPE(d.dtype, first = first_value<DT>(d));
    const int64_t count = d.numel * values_per_element(d.dtype);
    stats_finalize(smem[0], count, stats_shift(first), out + t * kStatsFields);
  }
}

}  // namespace

void launch_tensor_stats_cuda(const TensorDesc* descs, const int64_t* block_begin, int64_t n,
                              int64_t total_blocks, StatsAcc* workspace, double* out,
                              cudaStream_t stream) {
  if (n == 0) return;
  stats_partial_kernel<<<static_cast<unsigned>(total_blocks), kThreads, 0, stream>>>(
      descs, block_begin, n, workspace);
  ACCDUMP_LAUNCH_CHECK();
  stats_final_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(descs, block_begin,
                                                                         workspace, out);
  ACCDUMP_LAUNCH_CHECK();
}

}  // namespace accdump
