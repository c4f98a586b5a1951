// Element types accdump kernels read, and exact decoding of each to double.
// No torch headers: shared by the CPU kernels and the CUDA kernels.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define ACCDUMP_HD __host__ __device__ __forceinline__
#else
#define ACCDUMP_HD inline
#endif

namespace accdump {

enum class DType : int32_t {
  kFloat64 = 0,
  kFloat32,
  kFloat16,
  kBFloat16,
  kFloat8E4M3FN,
  kFloat8E5M2,
  kFloat8E4M3FNUZ,
  kFloat8E5M2FNUZ,
  kFloat8E8M0FNU,
  kFloat4E2M1FNx2,  // two values per byte: element 2i in the low nibble
  kBool,
  kUInt8,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUInt16,
  kUInt32,
  kUInt64,
};

// Values per stored element: 2 for packed float4, 1 otherwise.
ACCDUMP_HD constexpr int values_per_element(DType t) { return t == DType::kFloat4E2M1FNx2 ? 2 : 1; }

// 2^k as a double, exact for -1022 <= k <= 1023, built from its bits (no libm call on the device).
ACCDUMP_HD double pow2(int k) {
  const uint64_t u = static_cast<uint64_t>(k + 1023) << 52;
  double d;
  memcpy(&d, &u, sizeof(d));
  return d;
}

ACCDUMP_HD double decode_half_bits(uint16_t h) {
  const int exp = (h >> 10) & 0x1f;
  const int man = h & 0x3ff;
  double v;
  if (exp == 0) {
    v = static_cast<double>(man) * pow2(-24);
  } else if (exp == 31) {
    v = man ? NAN : INFINITY;
  } else {
    v = static_cast<double>(man | 0x400) * pow2(exp - 25);
  }
  return (h & 0x8000) ? -v : v;
}

ACCDUMP_HD double decode_bf16_bits(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  memcpy(&f, &u, sizeof(f));
  return static_cast<double>(f);
}

// Generic small-float decode: `ebits` exponent bits, `mbits` mantissa bits, exponent `bias`.
// Special values are handled by the callers, which know their format's rules.
ACCDUMP_HD double decode_minifloat(uint32_t bits, int ebits, int mbits, int bias) {
  const int sign = (bits >> (ebits + mbits)) & 1;
  const int exp = (bits >> mbits) & ((1 << ebits) - 1);
  const int man = bits & ((1 << mbits) - 1);
  const double v = exp == 0 ? static_cast<double>(man) * pow2(1 - bias - mbits)
                            : static_cast<double>(man | (1 << mbits)) * pow2(exp - bias - mbits);
  return sign ? -v : v;
}

// OCP FP8 E4M3 "fn": bias 7, no infinities, S.1111.111 is NaN.
ACCDUMP_HD double decode_e4m3fn(uint8_t b) {
  if ((b & 0x7f) == 0x7f) return NAN;
  return decode_minifloat(b, 4, 3, 7);
}

// OCP FP8 E5M2: IEEE-like, bias 15, exponent 31 holds Inf and NaN.
ACCDUMP_HD double decode_e5m2(uint8_t b) {
  if (((b >> 2) & 0x1f) == 0x1f) {
    if (b & 0x3) return NAN;
    return (b & 0x80) ? -INFINITY : INFINITY;
  }
  return decode_minifloat(b, 5, 2, 15);
}

// "fnuz" variants (AMD): bias one larger, 0x80 is the only NaN, no negative zero, no Inf.
ACCDUMP_HD double decode_e4m3fnuz(uint8_t b) { return b == 0x80 ? NAN : decode_minifloat(b, 4, 3, 8); }
ACCDUMP_HD double decode_e5m2fnuz(uint8_t b) { return b == 0x80 ? NAN : decode_minifloat(b, 5, 2, 16); }

// E8M0 (MX scales): 2^(e-127), 0xFF is NaN.
ACCDUMP_HD double decode_e8m0(uint8_t b) { return b == 0xff ? NAN : pow2(static_cast<int>(b) - 127); }

// E2M1 (FP4): values {0, 0.5, 1, 1.5, 2, 3, 4, 6} with a sign bit; no NaN or Inf.
ACCDUMP_HD double decode_e2m1(uint8_t nibble) { return decode_minifloat(nibble & 0xf, 2, 1, 1); }

// Element size in bytes as stored.
ACCDUMP_HD constexpr int64_t element_size(DType t) {
  switch (t) {
    case DType::kFloat64:
    case DType::kInt64:
    case DType::kUInt64:
      return 8;
    case DType::kFloat32:
    case DType::kInt32:
    case DType::kUInt32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
    case DType::kInt16:
    case DType::kUInt16:
      return 2;
    default:
      return 1;
  }
}

// Decodes value `sub` (0 or 1 for packed float4, else 0) of the element at `p`.
template <DType T>
ACCDUMP_HD double load_value(const void* p, int sub = 0) {
  if constexpr (T == DType::kFloat64) {
    return *static_cast<const double*>(p);
  } else if constexpr (T == DType::kFloat32) {
    return static_cast<double>(*static_cast<const float*>(p));
  } else if constexpr (T == DType::kFloat16) {
    return decode_half_bits(*static_cast<const uint16_t*>(p));
  } else if constexpr (T == DType::kBFloat16) {
    return decode_bf16_bits(*static_cast<const uint16_t*>(p));
  } else if constexpr (T == DType::kFloat8E4M3FN) {
    return decode_e4m3fn(*static_cast<const uint8_t*>(p));
  } else if constexpr (T == DType::kFloat8E5M2) {
    return decode_e5m2(*static_cast<const uint8_t*>(p));
  } else if constexpr (T == DType::kFloat8E4M3FNUZ) {
    return decode_e4m3fnuz(*static_cast<const uint8_t*>(p));
  } else if constexpr (T == DType::kFloat8E5M2FNUZ) {
    return decode_e5m2fnuz(*static_cast<const uint8_t*>(p));
  } else if constexpr (T == DType::kFloat8E8M0FNU) {
    return decode_e8m0(*static_cast<const uint8_t*>(p));
  } else if constexpr (T == DType::kFloat4E2M1FNx2) {
    const uint8_t b = *static_cast<const uint8_t*>(p);
    return decode_e2m1(sub ? (b >> 4) : (b & 0xf));
  } else if constexpr (T == DType::kBool) {
    return *static_cast<const uint8_t*>(p) ? 1.0 : 0.0;
  } else if constexpr (T == DType::kUInt8) {
    return static_cast<double>(*static_cast<const uint8_t*>(p));
  } else if constexpr (T == DType::kInt8) {
    return static_cast<double>(*static_cast<const int8_t*>(p));
  } else if constexpr (T == DType::kInt16) {
    return static_cast<double>(*static_cast<const int16_t*>(p));
  } else if constexpr (T == DType::kInt32) {
    return static_cast<double>(*static_cast<const int32_t*>(p));
  } else if constexpr (T == DType::kInt64) {
    return static_cast<double>(*static_cast<const int64_t*>(p));
  } else if constexpr (T == DType::kUInt16) {
    return static_cast<double>(*static_cast<const uint16_t*>(p));
  } else if constexpr (T == DType::kUInt32) {
    return static_cast<double>(*static_cast<const uint32_t*>(p));
  } else {
    return static_cast<double>(*static_cast<const uint64_t*>(p));
  }
}

}  // namespace accdump

// Calls `body` with a compile-time DType constant named DT for the run-time value `dt`.
#define ACCDUMP_DISPATCH_DTYPE(dt, ...)                                                  \
  switch (dt) {                                                                         \
    case ::accdump::DType::kFloat64: { constexpr auto DT = ::accdump::DType::kFloat64; __VA_ARGS__; break; } \
    case ::accdump::DType::kFloat32: { constexpr auto DT = ::accdump::DType::kFloat32; __VA_ARGS__; break; } \
    case ::accdump::DType::kFloat16: { constexpr auto DT = ::accdump::DType::kFloat16; __VA_ARGS__; break; } \
    case ::accdump::DType::kBFloat16: { constexpr auto DT = ::accdump::DType::kBFloat16; __VA_ARGS__; break; } \
    case ::accdump::DType::kFloat8E4M3FN: { constexpr auto DT = ::accdump::DType::kFloat8E4M3FN; __VA_ARGS__; break; } \
    case ::accdump::DType::kFloat8E5M2: { constexpr auto DT = ::accdump::DType::kFloat8E5M2; __VA_ARGS__; break; } \
    case ::accdump::DType::kFloat8E4M3FNUZ: { constexpr auto DT = ::accdump::DType::kFloat8E4M3FNUZ; __VA_ARGS__; break; } \
    case ::accdump::DType::kFloat8E5M2FNUZ: { constexpr auto DT = ::accdump::DType::kFloat8E5M2FNUZ; __VA_ARGS__; break; } \
    case ::accdump::DType::kFloat8E8M0FNU: { constexpr auto DT = ::accdump::DType::kFloat8E8M0FNU; __VA_ARGS__; break; } \
    case ::accdump::DType::kFloat4E2M1FNx2: { constexpr auto DT = ::accdump::DType::kFloat4E2M1FNx2; __VA_ARGS__; break; } \
    case ::accdump::DType::kBool: { constexpr auto DT = ::accdump::DType::kBool; __VA_ARGS__; break; } \
    case ::accdump::DType::kUInt8: { constexpr auto DT = ::accdump::DType::kUInt8; __VA_ARGS__; break; } \
    case ::accdump::DType::kInt8: { constexpr auto DT = ::accdump::DType::kInt8; __VA_ARGS__; break; } \
    case ::accdump::DType::kInt16: { constexpr auto DT = ::accdump::DType::kInt16; __VA_ARGS__; break; } \
    case ::accdump::DType::kInt32: { constexpr auto DT = ::accdump::DType::kInt32; __VA_ARGS__; break; } \
    case ::accdump::DType::kInt64: { constexpr auto DT = ::accdump::DType::kInt64; __VA_ARGS__; break; } \
    case ::accdump::DType::kUInt16: { constexpr auto DT = ::accdump::DType::kUInt16; __VA_ARGS__; break; } \
    case ::accdump::DType::kUInt32: { constexpr auto DT = ::accdump::DType::kUInt32; __VA_ARGS__; break; } \
    case ::accdump::DType::kUInt64: { constexpr auto DT = ::accdump::DType::kUInt64; __VA_ARGS__; break; } \
  }
