// Block-scaled quantized operands (FP8 block / channel / tensor scales, NVFP4, MXFP4, MXFP8):
// the descriptor the dequantize and reference-linear kernels read, and exact element decoding.
// Formats: shared/quant_formats.md (§1 encodings, §2 FP8 block, §4 MX and NVFP4, §6 recipe).
// No torch headers: shared by the CPU kernels and the CUDA kernels.
#pragma once
#include <cstdint>

#include "common/dtype.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#else
typedef struct CUstream_st* cudaStream_t;
#endif

namespace accdump {

// Division by a run-time constant d >= 1 of n < 2^31 with a multiply and a shift (Granlund and
// Montgomery): the kernels divide every index by a block size, and a 64-bit division costs
// more than the arithmetic it serves.
struct FastDiv {
  uint32_t d, m, s;
};

inline FastDiv make_fast_div(uint32_t d) {
  uint32_t s = 0;
  while ((uint64_t{1} << s) < d) ++s;
  const uint64_t m = ((uint64_t{1} << 32) * ((uint64_t{1} << s) - d)) / d + 1;
  return FastDiv{d, static_cast<uint32_t>(m), s};
}

ACCDUMP_HD uint32_t fast_div(const FastDiv& f, uint32_t n) {
#if defined(__CUDA_ARCH__)
  const uint32_t t = __umulhi(n, f.m);
#else
  const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(n) * f.m) >> 32);
#endif
  return (t + n) >> f.s;
}

// One quantized 2-D operand: value(r, c) = element(r, c) * scale[r / block_r, c / block_c].
// Elements are read from raw bytes with the decoding of `elem` (quant_formats.md §0 rule 1),
// whatever torch dtype holds them; packed E2M1 keeps element 2i in the low nibble (§1.5).
// A global (per-tensor) scale is not part of the operand: callers apply it once, at the end.
struct QuantOperand {
  const void* data;
  int64_t rows, cols;   // logical values; for packed E2M1 a row holds cols / 2 bytes
  int64_t row_stride;   // bytes between rows; elements inside a row are contiguous
  DType elem;           // kUInt8 reads bytes as integers (the ".to() instead of .view()" bug)
  const void* scale;    // nullptr: no block scale
  DType scale_dtype;    // kFloat32/64/16, kBFloat16, kFloat8E8M0FNU, kFloat8E4M3FN(UZ), kUInt8
  int64_t scale_rows, scale_cols;
  int64_t scale_s0, scale_s1;  // scale strides in elements (a transposed view is fine)
  int64_t block_r, block_c;
  FastDiv div_r, div_c;  // by block_r and block_c; rows and cols are below 2^31
};

// An 8-bit element or scale byte decoded to float (exact: every such value fits in float).
ACCDUMP_HD float decode_byte(DType t, uint8_t b) {
  switch (t) {
    case DType::kFloat8E4M3FN: return static_cast<float>(decode_e4m3fn(b));
    case DType::kFloat8E4M3FNUZ: return static_cast<float>(decode_e4m3fnuz(b));
    case DType::kFloat8E5M2: return static_cast<float>(decode_e5m2(b));
    case DType::kFloat8E5M2FNUZ: return static_cast<float>(decode_e5m2fnuz(b));
    case DType::kFloat8E8M0FNU: return static_cast<float>(decode_e8m0(b));
    case DType::kInt8: return static_cast<float>(static_cast<int8_t>(b));
    default: return static_cast<float>(b);  // kUInt8: the byte as a number
  }
}

ACCDUMP_HD bool is_byte_elem(DType t) {
  return t != DType::kFloat64 && t != DType::kFloat32 && t != DType::kFloat16 &&
         t != DType::kBFloat16 && t != DType::kFloat4E2M1FNx2;
}

// E2M1 code (4 bits) to float: sign * {0, .5, 1, 1.5, 2, 3, 4, 6}[code & 7] (§1.5).
// Built from bits (no table, so no local memory on the device).
ACCDUMP_HD float decode_fp4(uint32_t code) {
  const uint32_t e = (code >> 1) & 3, m = code & 1;
  const uint32_t mag = e ? (((e + 126) << 23) | (m << 22)) : (m ? 0x3f000000u : 0u);
  const uint32_t bits = mag | ((code & 8u) << 28);
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

// The element at (r, c) without its scale.
ACCDUMP_HD float element_at(const QuantOperand& q, int64_t r, int64_t c) {
  const char* row = static_cast<const char*>(q.data) + r * q.row_stride;
  switch (q.elem) {
    case DType::kFloat64: return static_cast<float>(reinterpret_cast<const double*>(row)[c]);
    case DType::kFloat32: return reinterpret_cast<const float*>(row)[c];
    case DType::kFloat16: return static_cast<float>(decode_half_bits(reinterpret_cast<const uint16_t*>(row)[c]));
    case DType::kBFloat16: return static_cast<float>(decode_bf16_bits(reinterpret_cast<const uint16_t*>(row)[c]));
    case DType::kFloat4E2M1FNx2: {
      const uint8_t b = reinterpret_cast<const uint8_t*>(row)[c >> 1];
      return decode_fp4((c & 1) ? (b >> 4) : (b & 0xf));
    }
    default: return decode_byte(q.elem, reinterpret_cast<const uint8_t*>(row)[c]);
  }
}

// The block scale of (r, c); 1 without scales.
ACCDUMP_HD float scale_at(const QuantOperand& q, int64_t r, int64_t c) {
  if (q.scale == nullptr) return 1.0f;
  const int64_t i = static_cast<int64_t>(fast_div(q.div_r, static_cast<uint32_t>(r))) * q.scale_s0 +
                    static_cast<int64_t>(fast_div(q.div_c, static_cast<uint32_t>(c))) * q.scale_s1;
  switch (q.scale_dtype) {
    case DType::kFloat32: return static_cast<const float*>(q.scale)[i];
    case DType::kFloat64: return static_cast<float>(static_cast<const double*>(q.scale)[i]);
    case DType::kFloat16: return static_cast<float>(decode_half_bits(static_cast<const uint16_t*>(q.scale)[i]));
    case DType::kBFloat16: return static_cast<float>(decode_bf16_bits(static_cast<const uint16_t*>(q.scale)[i]));
    default: return decode_byte(q.scale_dtype, static_cast<const uint8_t*>(q.scale)[i]);
  }
}

// element * scale, rounded once to float (exact when the scale is a power of two or both have
// short mantissas, as FP8/FP4 elements with E8M0/E4M3 scales do).
ACCDUMP_HD float dequant_at(const QuantOperand& q, int64_t r, int64_t c) {
  return element_at(q, r, c) * scale_at(q, r, c);
}

// Reference linear: out[m, n] = global * sum_k x(m, k) * w(n, k) + bias[n], float32 [M, N].
// Products and sums inside chunks of at most 128 values of K in float32, chunks summed in float64.
struct LinearParams {
  double global;
  const float* bias;  // nullptr: none
};

constexpr int64_t kLinearChunk = 128;

void launch_block_dequantize_cuda(const QuantOperand& q, double global, float* out, cudaStream_t stream);

// The CUDA linear runs one of three kernels: skinny SIMT for M <= kSkinnyMaxRows (weight-bandwidth
// bound), tensor cores with exact bf16 products where the operands allow (quant_mma.cu; needs
// compute capability 8.0), tiled SIMT otherwise.
constexpr int64_t kSkinnyMaxRows = 8;
bool linear_uses_mma(const QuantOperand& x, const QuantOperand& w, int cc_major);
int64_t mma_tile_rows();
// From kPlanesMinRows rows on, the tensor-core linear first decodes both operands once into bf16
// planes in a workspace of this many bytes (0: decodes inside its tiles, no workspace).
constexpr int64_t kPlanesMinRows = 256;
int64_t linear_planes_bytes(const QuantOperand& x, const QuantOperand& w, int cc_major);
// How many ranges of K the CUDA linear splits into; > 1 needs a float64 workspace of
// splits * M * N values.
int64_t linear_splits_cuda(const QuantOperand& x, const QuantOperand& w, int sm_count, int cc_major);
void launch_block_scaled_linear_cuda(const QuantOperand& x, const QuantOperand& w, const LinearParams& p,
                                     int cc_major, int64_t splits, double* workspace, void* planes, float* out,
                                     cudaStream_t stream);
void launch_block_scaled_linear_mma(const QuantOperand& x, const QuantOperand& w, const LinearParams& p,
                                    int cc_major, int64_t splits, double* workspace, void* planes, float* out,
                                    cudaStream_t stream);

}  // namespace accdump
