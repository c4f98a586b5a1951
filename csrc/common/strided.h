// A view of a tensor's memory for kernels: pointer, dtype, logical shape and element strides.
// No torch headers: filled by the .cpp glue, read by CPU and CUDA kernels.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace accdump {

constexpr int kMaxDims = 8;  // after merging compatible dimensions; more falls back to a copy

struct TensorDesc {
  const void* data;
  int64_t numel;  // stored elements
  int64_t sizes[kMaxDims];
  int64_t strides[kMaxDims];  // in elements
  int32_t ndim;  // 0: dense, element i lives at data + i * element_size
  DType dtype;
};

// Byte address of logical element `i` (row-major order over sizes).
ACCDUMP_HD const char* element_ptr(const TensorDesc& d, int64_t i) {
  const char* base = static_cast<const char*>(d.data);
  const int64_t es = element_size(d.dtype);
  if (d.ndim == 0) return base + i * es;
  int64_t off = 0;
  for (int k = d.ndim - 1; k >= 0; --k) {
    const int64_t size = d.sizes[k];
    off += (i % size) * d.strides[k];
    i /= size;
  }
  return base + off * es;
}

// Two same-shape tensors walked together in logical order (pairwise metrics).
struct PairDesc {
  const void* a;
  const void* b;
  int64_t numel;
  int64_t sizes[kMaxDims];
  int64_t a_strides[kMaxDims];
  int64_t b_strides[kMaxDims];
  int32_t ndim;  // 0: both contiguous
  DType a_dtype;
  DType b_dtype;
  int64_t row_len;  // last-dimension length, for row-wise metrics
};

ACCDUMP_HD void pair_offsets(const PairDesc& d, int64_t i, int64_t* oa, int64_t* ob) {
  if (d.ndim == 0) {
    *oa = i;
    *ob = i;
    return;
  }
  int64_t a = 0, b = 0;
  for (int k = d.ndim - 1; k >= 0; --k) {
    const int64_t size = d.sizes[k];
    const int64_t idx = i % size;
    a += idx * d.a_strides[k];
    b += idx * d.b_strides[k];
    i /= size;
  }
  *oa = a;
  *ob = b;
}

}  // namespace accdump

namespace accdump {

// Calls f(pointer to element) for logical elements [begin, end) of `d` on the host, computing
// the full offset once per innermost row rather than once per element.
template <typename F>
inline void for_each_element(const TensorDesc& d, int64_t begin, int64_t end, F&& f) {
  const int64_t es = element_size(d.dtype);
  const char* base = static_cast<const char*>(d.data);
  if (d.ndim == 0) {
    for (int64_t i = begin; i < end; ++i) f(base + i * es);
    return;
  }
  const int64_t row = d.sizes[d.ndim - 1];
  const int64_t step = d.strides[d.ndim - 1] * es;
  int64_t i = begin;
  while (i < end) {
    const int64_t stop = ((i / row) + 1) * row < end ? ((i / row) + 1) * row : end;
    const char* p = element_ptr(d, i);
    for (; i < stop; ++i, p += step) f(p);
  }
}

// Same for two tensors walked together: f(pointer into a, pointer into b, logical index).
template <typename F>
inline void for_each_pair(const PairDesc& d, int64_t begin, int64_t end, F&& f) {
  const int64_t ea = element_size(d.a_dtype), eb = element_size(d.b_dtype);
  const char* a = static_cast<const char*>(d.a);
  const char* b = static_cast<const char*>(d.b);
  if (d.ndim == 0) {
    for (int64_t i = begin; i < end; ++i) f(a + i * ea, b + i * eb, i);
    return;
  }
  const int64_t row = d.sizes[d.ndim - 1];
  const int64_t sa = d.a_strides[d.ndim - 1] * ea, sb = d.b_strides[d.ndim - 1] * eb;
  int64_t i = begin;
  while (i < end) {
    const int64_t stop = ((i / row) + 1) * row < end ? ((i / row) + 1) * row : end;
    int64_t oa, ob;
    pair_offsets(d, i, &oa, &ob);
    const char* pa = a + oa * ea;
    const char* pb = b + ob * eb;
    for (; i < stop; ++i, pa += sa, pb += sb) f(pa, pb, i);
  }
}

}  // namespace accdump
