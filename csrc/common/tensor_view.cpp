#include "tensor_view.h"

#include <vector>

namespace accdump {

std::optional<DType> dtype_of(at::ScalarType st) {
  switch (st) {
    case at::kDouble: return DType::kFloat64;
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat8_e4m3fn: return DType::kFloat8E4M3FN;
    case at::kFloat8_e5m2: return DType::kFloat8E5M2;
    case at::kFloat8_e4m3fnuz: return DType::kFloat8E4M3FNUZ;
    case at::kFloat8_e5m2fnuz: return DType::kFloat8E5M2FNUZ;
    case at::kFloat8_e8m0fnu: return DType::kFloat8E8M0FNU;
    case at::kFloat4_e2m1fn_x2: return DType::kFloat4E2M1FNx2;
    case at::kBool: return DType::kBool;
    case at::kByte: return DType::kUInt8;
    case at::kChar: return DType::kInt8;
    case at::kShort: return DType::kInt16;
    case at::kInt: return DType::kInt32;
    case at::kLong: return DType::kInt64;
    case at::kUInt16: return DType::kUInt16;
    case at::kUInt32: return DType::kUInt32;
    case at::kUInt64: return DType::kUInt64;
    default: return std::nullopt;
  }
}

std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t k = 0; k < sizes.size(); ++k) s += (k ? ", " : "") + std::to_string(sizes[k]);
  return s + "]";
}

static bool is_floating(DType d) {
  switch (d) {
    case DType::kFloat64:
    case DType::kFloat32:
    case DType::kFloat16:
    case DType::kBFloat16:
    case DType::kFloat8E4M3FN:
    case DType::kFloat8E5M2:
    case DType::kFloat8E4M3FNUZ:
    case DType::kFloat8E5M2FNUZ:
      return true;
    default:
      return false;
  }
}

DType checked_dtype(const at::Tensor& t, const char* op, const char* arg, bool floating_only) {
  const auto d = dtype_of(t.scalar_type());
  TORCH_CHECK(d.has_value() && (!floating_only || is_floating(*d)), "accdump.", op, ": ", arg,
              " has dtype ", c10::toString(t.scalar_type()), ", expected ",
              floating_only ? "a floating dtype (float64, float32, float16, bfloat16, float8_*)"
                            : "a real floating, float8, float4, integer or bool dtype");
  return *d;
}

namespace {

struct Dims {
  std::vector<int64_t> sizes;
  std::vector<std::vector<int64_t>> strides;  // one stride list per tensor
};

// Drops size-1 dimensions and merges neighbours that are contiguous in every tensor.
Dims coalesce(at::IntArrayRef sizes, const std::vector<at::IntArrayRef>& strides) {
  Dims out;
  out.strides.resize(strides.size());
  for (size_t k = 0; k < sizes.size(); ++k) {
    if (sizes[k] == 1) continue;
    bool merge = !out.sizes.empty();
    for (size_t t = 0; merge && t < strides.size(); ++t) {
      merge = out.strides[t].back() == strides[t][k] * sizes[k];
    }
    if (merge) {
      out.sizes.back() *= sizes[k];
      for (size_t t = 0; t < strides.size(); ++t) out.strides[t].back() = strides[t][k];
    } else {
      out.sizes.push_back(sizes[k]);
      for (size_t t = 0; t < strides.size(); ++t) out.strides[t].push_back(strides[t][k]);
    }
  }
  return out;
}

}  // namespace

std::optional<TensorDesc> describe(const at::Tensor& t, DType dtype, bool any_order) {
  TensorDesc d{};
  d.data = t.const_data_ptr();
  d.numel = t.numel();
  d.dtype = dtype;
  d.ndim = 0;
  if (t.numel() <= 1 || t.is_contiguous() || (any_order && t.is_non_overlapping_and_dense())) {
    return d;
  }
  const Dims dims = coalesce(t.sizes(), {t.strides()});
  if (dims.sizes.size() > static_cast<size_t>(kMaxDims)) return std::nullopt;
  d.ndim = static_cast<int32_t>(dims.sizes.size());
  for (int k = 0; k < d.ndim; ++k) {
    d.sizes[k] = dims.sizes[k];
    d.strides[k] = dims.strides[0][k];
  }
  if (d.ndim == 1 && d.strides[0] == 1) d.ndim = 0;
  return d;
}

std::optional<PairDesc> describe_pair(const at::Tensor& a, DType da, const at::Tensor& b,
                                      DType db) {
  PairDesc d{};
  d.a = a.const_data_ptr();
  d.b = b.const_data_ptr();
  d.numel = a.numel();
  d.a_dtype = da;
  d.b_dtype = db;
  d.row_len = a.dim() == 0 ? 1 : a.size(-1);
  d.ndim = 0;
  if (a.numel() <= 1 || (a.is_contiguous() && b.is_contiguous())) return d;
  const Dims dims = coalesce(a.sizes(), {a.strides(), b.strides()});
  if (dims.sizes.size() > static_cast<size_t>(kMaxDims)) return std::nullopt;
  d.ndim = static_cast<int32_t>(dims.sizes.size());
  for (int k = 0; k < d.ndim; ++k) {
    d.sizes[k] = dims.sizes[k];
    d.a_strides[k] = dims.strides[0][k];
    d.b_strides[k] = dims.strides[1][k];
  }
  if (d.ndim == 1 && d.a_strides[0] == 1 && d.b_strides[0] == 1) d.ndim = 0;
  return d;
}

}  // namespace accdump
