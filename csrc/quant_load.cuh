// Device-side readers of quantized operands shared by the reference-linear kernels: 8-bit codes
// decoded through a shared-memory table, E2M1 nibbles arithmetically, wide loads where aligned.
// No torch headers.
#pragma once
#include "quant.h"

namespace accdump {
namespace quant_load {

__device__ __forceinline__ void fill_lut(float* lut, DType t) {
  if (!is_byte_elem(t)) return;
  for (int i = threadIdx.x; i < 256; i += blockDim.x) lut[i] = decode_byte(t, static_cast<uint8_t>(i));
}

// Elements (r, c0) .. (r, c0 + N - 1) of `q` without their scales, for a run inside the operand.
template <int N>
__device__ __forceinline__ void load_elements(const QuantOperand& q, const float* lut, int64_t r, int64_t c0,
                                              float* v) {
  const char* row = static_cast<const char*>(q.data) + r * q.row_stride;
  if (is_byte_elem(q.elem)) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(row) + c0;
    if (N % 16 == 0 && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
#pragma unroll
      for (int g = 0; g < N / 16; ++g) {
        const uint4 u = reinterpret_cast<const uint4*>(p)[g];
        const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 16; ++j) v[g * 16 + j] = lut[(words[j >> 2] >> (8 * (j & 3))) & 0xff];
      }
    } else if (N % 8 == 0 && (reinterpret_cast<uintptr_t>(p) & 7) == 0) {
#pragma unroll
      for (int g = 0; g < N / 8; ++g) {
        const uint2 u = reinterpret_cast<const uint2*>(p)[g];
#pragma unroll
        for (int j = 0; j < 8; ++j) v[g * 8 + j] = lut[((j < 4 ? u.x : u.y) >> (8 * (j & 3))) & 0xff];
      }
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) v[j] = lut[p[j]];
    }
  } else if (q.elem == DType::kFloat4E2M1FNx2 && (c0 & 1) == 0) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(row) + (c0 >> 1);
    if (N % 16 == 0 && (reinterpret_cast<uintptr_t>(p) & 7) == 0) {
#pragma unroll
      for (int g = 0; g < N / 16; ++g) {
        const uint2 u = reinterpret_cast<const uint2*>(p)[g];
#pragma unroll
        for (int j = 0; j < 16; ++j) v[g * 16 + j] = decode_fp4(((j < 8 ? u.x : u.y) >> (4 * (j & 7))) & 0xf);
      }
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) v[j] = decode_fp4((p[j >> 1] >> (4 * (j & 1))) & 0xf);
    }
  } else if (q.elem == DType::kBFloat16 && N % 8 == 0 &&
             (reinterpret_cast<uintptr_t>(row + 2 * c0) & 15) == 0) {
    const uint4* p = reinterpret_cast<const uint4*>(row + 2 * c0);
#pragma unroll
    for (int g = 0; g < N / 8; ++g) {
      const uint4 u = p[g];
      const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 8; ++j) v[g * 8 + j] = __uint_as_float(((words[j >> 1] >> (16 * (j & 1))) & 0xffff) << 16);
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] = element_at(q, r, c0 + j);
  }
}

// True when the run (r, c0 .. c0 + N - 1) lies in one scale block.
template <int N>
__device__ __forceinline__ bool one_scale(const QuantOperand& q, int64_t c0) {
  return fast_div(q.div_c, static_cast<uint32_t>(c0)) == fast_div(q.div_c, static_cast<uint32_t>(c0 + N - 1));
}

// Values (r, c0) .. (r, c0 + N - 1) of `q`, with their scales when `scaled`; zeros outside the
// operand.
template <int N>
__device__ __forceinline__ void load_values(const QuantOperand& q, const float* lut, int64_t r, int64_t c0,
                                            float* v, bool scaled) {
  if (r >= q.rows || c0 >= q.cols) {
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] = 0.0f;
    return;
  }
  scaled = scaled && q.scale != nullptr;
  if (c0 + N > q.cols) {
#pragma unroll
    for (int j = 0; j < N; ++j)
      v[j] = c0 + j < q.cols ? element_at(q, r, c0 + j) * (scaled ? scale_at(q, r, c0 + j) : 1.0f) : 0.0f;
    return;
  }
  load_elements<N>(q, lut, r, c0, v);
  if (!scaled) return;
  if (one_scale<N>(q, c0)) {
    const float s = scale_at(q, r, c0);
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] *= s;
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] *= scale_at(q, r, c0 + j);
  }
}

template <int N>
__device__ __forceinline__ void load_run(const QuantOperand& q, const float* lut, int64_t r, int64_t c0,
                                         float* v) {
  load_values<N>(q, lut, r, c0, v, true);
}

// float64 sum * global + bias, rounded once to float32.
__device__ __forceinline__ float finish(double acc, const LinearParams& p, int64_t n) {
  double y = acc * p.global;
  if (p.bias != nullptr) y += static_cast<double>(p.bias[n]);
  return static_cast<float>(y);
}

}  // namespace quant_load
}  // namespace accdump
