// CUDA kernels of compare_metrics (grid-wide reduction, partials merged in fixed order by a
// second launch) and rowwise_metrics (one warp per row).
#include <cuda_runtime.h>

#include "common/block_reduce.cuh"
#include "common/cuda_check.h"
#include "metrics.h"

namespace accdump {
namespace {

constexpr int kThreads = 256;

// Decodes a value whose dtype is known only at run time (mixed-dtype pairs).
__device__ __forceinline__ double load_any(DType t, const char* p) {
  switch (t) {
    case DType::kFloat64: return load_value<DType::kFloat64>(p);
    case DType::kFloat32: return load_value<DType::kFloat32>(p);
    case DType::kFloat16: return load_value<DType::kFloat16>(p);
    case DType::kBFloat16: return load_value<DType::kBFloat16>(p);
    case DType::kFloat8E4M3FN: return load_value<DType::kFloat8E4M3FN>(p);
    case DType::kFloat8E5M2: return load_value<DType::kFloat8E5M2>(p);
    case DType::kFloat8E4M3FNUZ: return load_value<DType::kFloat8E4M3FNUZ>(p);
    default: return load_value<DType::kFloat8E5M2FNUZ>(p);
  }
}

// Same-dtype pairs are compiled per dtype; `kAny` marks the generic run-time-dtype version.
constexpr DType kAny = DType::kBool;

template <DType T>
__device__ __forceinline__ double load_pair_value(DType rt, const char* p) {
  if constexpr (T == kAny) {
    return load_any(rt, p);
  } else {
    return load_value<T>(p);
  }
}

template <DType T>
__global__ void __launch_bounds__(kThreads) metrics_partial_kernel(const PairDesc d, const MetricsParams p,
                                                                   MetricsAcc* workspace) {
  __shared__ MetricsAcc smem[kThreads];
  MetricsAcc acc;
  acc.init();
  const char* a = static_cast<const char*>(d.a);
  const char* b = static_cast<const char*>(d.b);
  const int64_t ea = element_size(d.a_dtype), eb = element_size(d.b_dtype);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d.ndim == 0) {
    // Two elements of each tensor in flight per iteration.
    for (; i + stride < d.numel; i += 2 * stride) {
      const double x0 = load_pair_value<T>(d.a_dtype, a + i * ea);
      const double y0 = load_pair_value<T>(d.b_dtype, b + i * eb);
      const double x1 = load_pair_value<T>(d.a_dtype, a + (i + stride) * ea);
      const double y1 = load_pair_value<T>(d.b_dtype, b + (i + stride) * eb);
      acc.add(x0, y0, i, p);
      acc.add(x1, y1, i + stride, p);
    }
  }
  for (; i < d.numel; i += stride) {
    int64_t oa, ob;
    pair_offsets(d, i, &oa, &ob);
    acc.add(load_pair_value<T>(d.a_dtype, a + oa * ea), load_pair_value<T>(d.b_dtype, b + ob * eb), i, p);
  }
  block_merge(smem, acc);
  if (threadIdx.x == 0) workspace[blockIdx.x] = smem[0];
}

__global__ void __launch_bounds__(kThreads) metrics_final_kernel(const MetricsAcc* workspace, int64_t blocks,
                                                                 int64_t count, double* out) {
  __shared__ MetricsAcc smem[kThreads];
  MetricsAcc acc;
  acc.init();
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) acc.merge(workspace[b]);
  block_merge(smem, acc);
  if (threadIdx.x == 0) metrics_finalize(smem[0], count, out);
}

template <DType T>
__global__ void __launch_bounds__(kThreads) rowwise_kernel(const PairDesc d, int64_t rows, double* out) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const char* a = static_cast<const char*>(d.a);
  const char* b = static_cast<const char*>(d.b);
  const int64_t ea = element_size(d.a_dtype), eb = element_size(d.b_dtype);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    RowAcc acc;
    acc.init();
    const int64_t base = r * d.row_len;
    for (int64_t j = lane; j < d.row_len; j += 32) {
      int64_t oa, ob;
      pair_offsets(d, base + j, &oa, &ob);
      acc.add(load_pair_value<T>(d.a_dtype, a + oa * ea), load_pair_value<T>(d.b_dtype, b + ob * eb));
    }
    for (int off = 16; off > 0; off >>= 1) {
      RowAcc o;
      o.dot = __shfl_down_sync(0xffffffffu, acc.dot, off);
      o.sa = __shfl_down_sync(0xffffffffu, acc.sa, off);
      o.sb = __shfl_down_sync(0xffffffffu, acc.sb, off);
      o.sd = __shfl_down_sync(0xffffffffu, acc.sd, off);
      o.max_abs = __shfl_down_sync(0xffffffffu, acc.max_abs, off);
      acc.merge(o);
    }
    if (lane == 0) row_finalize(acc, out + r * kRowFields);
  }
}

template <DType T>
void launch_partial(const PairDesc& d, const MetricsParams& p, MetricsAcc* ws, int64_t blocks, cudaStream_t s) {
  metrics_partial_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(d, p, ws);
}

template <DType T>
void launch_rows(const PairDesc& d, int64_t rows, double* out, cudaStream_t s) {
  const int64_t warps_per_block = kThreads / 32;
  int64_t blocks = (rows + warps_per_block - 1) / warps_per_block;
  blocks = blocks > 65535 * 16 ? 65535 * 16 : blocks;
  rowwise_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(d, rows, out);
}

#define ACCDUMP_DISPATCH_PAIR(d, CALL)                                         \
  if ((d).a_dtype != (d).b_dtype) {                                           \
    constexpr DType PT = kAny;                                                \
    CALL;                                                                     \
  } else {                                                                    \
    switch ((d).a_dtype) {                                                    \
      case DType::kFloat32: { constexpr DType PT = DType::kFloat32; CALL; break; }   \
      case DType::kFloat16: { constexpr DType PT = DType::kFloat16; CALL; break; }   \
      case DType::kBFloat16: { constexpr DType PT = DType::kBFloat16; CALL; break; } \
      case DType::kFloat64: { constexpr DType PT = DType::kFloat64; CALL; break; }   \
      default: { constexpr DType PT = kAny; CALL; break; }                    \
    }                                                                         \
  }

}  // namespace

void launch_compare_metrics_cuda(const PairDesc& d, const MetricsParams& p, MetricsAcc* workspace,
                                 int64_t blocks, double* out, cudaStream_t stream) {
  ACCDUMP_DISPATCH_PAIR(d, launch_partial<PT>(d, p, workspace, blocks, stream));
  ACCDUMP_LAUNCH_CHECK();
  metrics_final_kernel<<<1, kThreads, 0, stream>>>(workspace, blocks, d.numel, out);
  ACCDUMP_LAUNCH_CHECK();
}

void launch_rowwise_metrics_cuda(const PairDesc& d, int64_t rows, double* out, cudaStream_t stream) {
  if (rows == 0) return;
  ACCDUMP_DISPATCH_PAIR(d, launch_rows<PT>(d, rows, out, stream));
  ACCDUMP_LAUNCH_CHECK();
}

}  // namespace accdump
