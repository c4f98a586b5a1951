// block_dequantize / block_scaled_linear: argument checks, descriptors and the CPU registration.
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "quant_glue.h"

namespace accdump {

namespace {

std::optional<DType> element_named(const std::string& name) {
  if (name == "e4m3fn") return DType::kFloat8E4M3FN;
  if (name == "e4m3fnuz") return DType::kFloat8E4M3FNUZ;
  if (name == "e5m2") return DType::kFloat8E5M2;
  if (name == "e5m2fnuz") return DType::kFloat8E5M2FNUZ;
  if (name == "e8m0") return DType::kFloat8E8M0FNU;
  if (name == "e2m1") return DType::kFloat4E2M1FNx2;
  if (name == "u8") return DType::kUInt8;
  if (name == "i8") return DType::kInt8;
  if (name == "f64") return DType::kFloat64;
  if (name == "f32") return DType::kFloat32;
  if (name == "f16") return DType::kFloat16;
  if (name == "bf16") return DType::kBFloat16;
  return std::nullopt;
}

const char* kElementNames = "auto, e4m3fn, e4m3fnuz, e5m2, e5m2fnuz, e8m0, e2m1, u8, i8, f64, f32, f16, bf16";

// How the bytes of `t` are read: the named format, or (for "auto") the format of its dtype.
DType read_as(const at::Tensor& t, const std::string& name, const char* op, const char* arg) {
  std::optional<DType> d;
  if (name == "auto") {
    d = dtype_of(t.scalar_type());
    TORCH_CHECK(d.has_value() && *d != DType::kUInt8 && *d != DType::kInt8 && *d != DType::kBool &&
                    element_size(*d) <= 8 && (*d == DType::kFloat64 || *d == DType::kFloat32 ||
                                              *d == DType::kFloat16 || *d == DType::kBFloat16 ||
                                              element_size(*d) == 1),
                "accdump.", op, ": cannot tell how to read ", arg, " of dtype ",
                c10::toString(t.scalar_type()), "; name its format (one of ", kElementNames, ")");
    return *d;
  }
  d = element_named(name);
  TORCH_CHECK(d.has_value(), "accdump.", op, ": unknown format '", name, "' for ", arg,
              "; expected one of ", kElementNames);
  TORCH_CHECK(t.element_size() == element_size(*d), "accdump.", op, ": ", arg, " holds ",
              std::to_string(t.element_size()), "-byte elements (", c10::toString(t.scalar_type()),
              "), which cannot be read as ", name);
  return *d;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

QuantOperand describe_quant_operand(const at::Tensor& q, const std::string& element,
                                    const std::optional<at::Tensor>& scale,
                                    const std::string& scale_format, int64_t block_rows,
                                    int64_t block_cols, const char* op, const char* arg,
                                    at::Tensor& kq) {
  TORCH_CHECK(q.dim() == 2, "accdump.", op, ": ", arg, " must be 2-D, got shape ", shape_str(q.sizes()));
  QuantOperand d{};
  d.elem = read_as(q, element, op, arg);
  TORCH_CHECK(d.elem != DType::kFloat8E8M0FNU, "accdump.", op, ": e8m0 is a scale format, not an element format");
  kq = q.stride(1) == 1 || q.size(1) <= 1 ? q : q.contiguous();
  d.data = kq.data_ptr();
  d.rows = kq.size(0);
  d.cols = kq.size(1) * (d.elem == DType::kFloat4E2M1FNx2 ? 2 : 1);
  d.row_stride = (kq.size(0) > 1 ? kq.stride(0) : kq.size(1)) * kq.element_size();
  constexpr int64_t kMax = (int64_t{1} << 31) - 1;
  TORCH_CHECK(d.rows <= kMax && d.cols <= kMax, "accdump.", op, ": ", arg, " has ", std::to_string(d.rows),
              " x ", std::to_string(d.cols), " values; at most 2^31 - 1 per dimension are supported");
  d.block_r = d.block_c = 1;
  d.div_r = d.div_c = make_fast_div(1);
  if (!scale.has_value()) return d;
  const at::Tensor& s = *scale;
  const std::string sarg = std::string(arg) + " scale";
  TORCH_CHECK(s.device() == q.device(), "accdump.", op, ": ", sarg, " is on ", s.device().str(),
              " but ", arg, " is on ", q.device().str());
  TORCH_CHECK(block_rows > 0 && block_cols > 0 && block_rows <= kMax && block_cols <= kMax, "accdump.", op,
              ": block sizes must be between 1 and 2^31 - 1, got ",
              std::to_string(block_rows), " x ", std::to_string(block_cols));
  TORCH_CHECK(s.dim() == 2, "accdump.", op, ": ", sarg, " must be 2-D, got shape ", shape_str(s.sizes()));
  const int64_t want_r = ceil_div(d.rows, block_rows), want_c = ceil_div(d.cols, block_cols);
  TORCH_CHECK(s.size(0) == want_r && s.size(1) == want_c, "accdump.", op, ": ", sarg, " has shape ",
              shape_str(s.sizes()), " but ", std::to_string(d.rows), " x ", std::to_string(d.cols),
              " values in blocks of ", std::to_string(block_rows), " x ", std::to_string(block_cols),
              " need [", std::to_string(want_r), ", ", std::to_string(want_c), "]");
  d.scale_dtype = read_as(s, scale_format, op, sarg.c_str());
  TORCH_CHECK(d.scale_dtype != DType::kFloat4E2M1FNx2, "accdump.", op, ": e2m1 is not a scale format");
  d.scale = s.data_ptr();
  d.scale_rows = want_r;
  d.scale_cols = want_c;
  d.scale_s0 = s.stride(0);
  d.scale_s1 = s.stride(1);
  d.block_r = block_rows;
  d.block_c = block_cols;
  d.div_r = make_fast_div(static_cast<uint32_t>(block_rows));
  d.div_c = make_fast_div(static_cast<uint32_t>(block_cols));
  return d;
}

void check_linear_args(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                       const QuantOperand& dx, const QuantOperand& dw) {
  TORCH_CHECK(x.device() == w.device(), "accdump.block_scaled_linear: x is on ", x.device().str(),
              " but w is on ", w.device().str());
  TORCH_CHECK(dx.cols == dw.cols, "accdump.block_scaled_linear: x has ", std::to_string(dx.cols),
              " values per row but w has ", std::to_string(dw.cols));
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == dw.rows, "accdump.block_scaled_linear: bias must have shape [",
              std::to_string(dw.rows), "], got ", shape_str(bias->sizes()));
  TORCH_CHECK(bias->device() == w.device(), "accdump.block_scaled_linear: bias is on ",
              bias->device().str(), " but w is on ", w.device().str());
  TORCH_CHECK(at::isFloatingType(bias->scalar_type()), "accdump.block_scaled_linear: bias must be floating, got ",
              c10::toString(bias->scalar_type()));
}

namespace {

at::Tensor block_dequantize_cpu(const at::Tensor& q, const std::string& element,
                                const std::optional<at::Tensor>& scale, const std::string& scale_format,
                                int64_t block_rows, int64_t block_cols, double global_scale) {
  at::Tensor kq;
  const QuantOperand d = describe_quant_operand(q, element, scale, scale_format, block_rows, block_cols,
                                                "block_dequantize", "q", kq);
  at::Tensor out = at::empty({d.rows, d.cols}, at::kFloat);
  block_dequantize_cpu_kernel(d, global_scale, out.data_ptr<float>());
  return out;
}

// Decodes both operands to float32, multiplies 128-wide chunks of K with float32 matmuls and sums
// the chunk products in float64 (the same accumulation contract as the CUDA kernels).
at::Tensor block_scaled_linear_cpu(const at::Tensor& x, const std::string& x_element,
                                   const std::optional<at::Tensor>& x_scale, const std::string& x_scale_format,
                                   int64_t x_block, const at::Tensor& w, const std::string& w_element,
                                   const std::optional<at::Tensor>& w_scale, const std::string& w_scale_format,
                                   int64_t w_block_rows, int64_t w_block_cols, double global_scale,
                                   const std::optional<at::Tensor>& bias) {
  at::Tensor kx, kw;
  const QuantOperand dx = describe_quant_operand(x, x_element, x_scale, x_scale_format, 1, x_block,
                                                 "block_scaled_linear", "x", kx);
  const QuantOperand dw = describe_quant_operand(w, w_element, w_scale, w_scale_format, w_block_rows,
                                                 w_block_cols, "block_scaled_linear", "w", kw);
  check_linear_args(x, w, bias, dx, dw);
  at::Tensor xf = at::empty({dx.rows, dx.cols}, at::kFloat);
  at::Tensor wf = at::empty({dw.rows, dw.cols}, at::kFloat);
  block_dequantize_cpu_kernel(dx, 1.0, xf.data_ptr<float>());
  block_dequantize_cpu_kernel(dw, 1.0, wf.data_ptr<float>());
  at::Tensor acc = at::zeros({dx.rows, dw.rows}, at::kDouble);
  for (int64_t k0 = 0; k0 < dx.cols; k0 += kLinearChunk) {
    const int64_t len = std::min(kLinearChunk, dx.cols - k0);
    acc.add_(at::mm(xf.narrow(1, k0, len), wf.narrow(1, k0, len).t()).to(at::kDouble));
  }
  acc.mul_(global_scale);
  if (bias.has_value()) acc.add_(bias->to(at::kDouble));
  return acc.to(at::kFloat);
}

}  // namespace

TORCH_LIBRARY_IMPL(accdump, CPU, m) {
  m.impl("block_dequantize", &block_dequantize_cpu);
  m.impl("block_scaled_linear", &block_scaled_linear_cpu);
}

}  // namespace accdump
