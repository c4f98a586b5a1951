// Deterministic block reductions: a fixed tree over shared memory, no atomics.
#pragma once

namespace accdump {

// Merges the block's values of `T` (which has merge()) into element 0 of `smem`.
// Every thread must call it; `smem` holds blockDim.x elements; blockDim.x is a power of two.
template <typename T>
__device__ void block_merge(T* smem, const T& mine) {
  smem[threadIdx.x] = mine;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x].merge(smem[threadIdx.x + s]);
    __syncthreads();
  }
}

}  // namespace accdump
