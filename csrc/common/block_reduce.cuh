// Deterministic reductions of accumulator structs (which have init() and merge()): warp
// shuffles, then one warp over the per-warp results. Fixed order, no atomics.
#pragma once

namespace accdump {

template <typename T>
__device__ __forceinline__ T shfl_down_struct(const T& v, int offset) {
  static_assert(sizeof(T) % 8 == 0, "accumulators are made of 8-byte fields");
  constexpr int kWords = sizeof(T) / 8;
  T out;
  const auto* src = reinterpret_cast<const unsigned long long*>(&v);
  auto* dst = reinterpret_cast<unsigned long long*>(&out);
#pragma unroll
  for (int i = 0; i < kWords; ++i) dst[i] = __shfl_down_sync(0xffffffffu, src[i], offset);
  return out;
}

// Lane 0 ends with the merge of the warp's 32 values (other lanes hold partial garbage).
template <typename T>
__device__ __forceinline__ void warp_merge(T& acc) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) acc.merge(shfl_down_struct(acc, offset));
}

// Thread 0 ends with the merge of the block's values. `smem` holds 32 elements; every thread
// of the block (a multiple of 32 threads) must call it.
template <typename T>
__device__ __forceinline__ void block_merge(T& acc, T* smem) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  warp_merge(acc);
  if (lane == 0) smem[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    if (lane < static_cast<int>(blockDim.x / 32)) {
      acc = smem[lane];
    } else {
      acc.init();
    }
    warp_merge(acc);
  }
}

}  // namespace accdump
