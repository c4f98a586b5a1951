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

// One 16-byte vector of each tensor (same dtype T, contiguous, aligned): `base` is the flat
// index of its first element.
template <DType T>
__device__ __forceinline__ void add_vector_pair(const uint4& ra, const uint4& rb, int64_t base, const MetricsParams& p,
                                                MetricsAcc& acc) {
  constexpr int es = static_cast<int>(element_size(T));
  constexpr int n = 16 / es;
  const char* pa = reinterpret_cast<const char*>(&ra);
  const char* pb = reinterpret_cast<const char*>(&rb);
  double x[n], y[n];
  bool bad = false;
#pragma unroll
  for (int k = 0; k < n; ++k) {
    x[k] = load_value<T>(pa + k * es);
    y[k] = load_value<T>(pb + k * es);
    bad |= !(x[k] - x[k] == 0.0) || !(y[k] - y[k] == 0.0);
  }
  if (bad) {
#pragma unroll
    for (int k = 0; k < n; ++k) acc.add(x[k], y[k], base + k, p);
    return;
  }
#pragma unroll
  for (int k = 0; k < n; ++k) acc.add_finite(x[k], y[k], base + k, p);
}

template <DType T>
__global__ void __launch_bounds__(kThreads) metrics_partial_kernel(const PairDesc d, const MetricsParams p,
                                                                   MetricsAcc* workspace) {
  __shared__ MetricsAcc smem[32];
  MetricsAcc acc;
  acc.init();
  const char* a = static_cast<const char*>(d.a);
  const char* b = static_cast<const char*>(d.b);
  const int64_t ea = element_size(d.a_dtype), eb = element_size(d.b_dtype);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_begin = 0;
  if constexpr (T != kAny) {
    constexpr int64_t es = element_size(T);
    if (d.ndim == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0) {
      constexpr int64_t per_vec = 16 / es;
      const uint4* va = reinterpret_cast<const uint4*>(a);
      const uint4* vb = reinterpret_cast<const uint4*>(b);
      const int64_t nvec = d.numel / per_vec;
      for (int64_t i = tid; i < nvec; i += stride) add_vector_pair<T>(va[i], vb[i], i * per_vec, p, acc);
      scalar_begin = nvec * per_vec;
    }
  }
  for (int64_t i = scalar_begin + tid; i < d.numel; i += stride) {
    int64_t oa, ob;
    pair_offsets(d, i, &oa, &ob);
    acc.add(load_pair_value<T>(d.a_dtype, a + oa * ea), load_pair_value<T>(d.b_dtype, b + ob * eb), i, p);
  }
  block_merge(acc, smem);
  if (threadIdx.x == 0) workspace[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kThreads) metrics_final_kernel(const MetricsAcc* workspace, int64_t blocks,
                                                                 int64_t count, double* out) {
  __shared__ MetricsAcc smem[32];
  MetricsAcc acc;
  acc.init();
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) acc.merge(workspace[b]);
  block_merge(acc, smem);
  if (threadIdx.x == 0) metrics_finalize(acc, count, out);
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
    int64_t first_scalar = 0;
    if constexpr (T != kAny) {
      // 16-byte loads when both rows start 16-byte aligned (same dtype, contiguous)
      constexpr int64_t es = element_size(T);
      constexpr int per_vec = static_cast<int>(16 / es);
      const char* ra = a + base * es;
      const char* rb = b + base * es;
      if (d.ndim == 0 && reinterpret_cast<uintptr_t>(ra) % 16 == 0 && reinterpret_cast<uintptr_t>(rb) % 16 == 0) {
        const int64_t nvec = d.row_len / per_vec;
        for (int64_t v = lane; v < nvec; v += 32) {
          const uint4 xa = reinterpret_cast<const uint4*>(ra)[v];
          const uint4 xb = reinterpret_cast<const uint4*>(rb)[v];
          const char* pa = reinterpret_cast<const char*>(&xa);
          const char* pb = reinterpret_cast<const char*>(&xb);
#pragma unroll
          for (int k = 0; k < per_vec; ++k) acc.add(load_value<T>(pa + k * es), load_value<T>(pb + k * es));
        }
        first_scalar = nvec * per_vec;
      }
    }
    for (int64_t j = first_scalar + lane; j < d.row_len; j += 32) {
      int64_t oa, ob;
      pair_offsets(d, base + j, &oa, &ob);
      acc.add(load_pair_value<T>(d.a_dtype, a + oa * ea), load_pair_value<T>(d.b_dtype, b + ob * eb));
    }
    warp_merge(acc);
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
      case DType::kFloat8E4M3FN: { constexpr DType PT = DType::kFloat8E4M3FN; CALL; break; } \
      case DType::kFloat8E5M2: { constexpr DType PT = DType::kFloat8E5M2; CALL; break; } \
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
