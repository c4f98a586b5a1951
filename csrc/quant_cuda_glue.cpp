// block_dequantize / block_scaled_linear on CUDA: launch on the current stream, no host sync.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "quant_glue.h"

namespace accdump {
namespace {

at::Tensor block_dequantize_cuda(const at::Tensor& q, const std::string& element,
                                 const std::optional<at::Tensor>& scale, const std::string& scale_format,
                                 int64_t block_rows, int64_t block_cols, double global_scale) {
  at::Tensor kq;
  const QuantOperand d = describe_quant_operand(q, element, scale, scale_format, block_rows, block_cols,
                                                "block_dequantize", "q", kq);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({d.rows, d.cols}, at::TensorOptions().device(q.device()).dtype(at::kFloat));
  launch_block_dequantize_cuda(d, global_scale, out.data_ptr<float>(), at::cuda::getCurrentCUDAStream().stream());
  return out;
}

at::Tensor block_scaled_linear_cuda(const at::Tensor& x, const std::string& x_element,
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
  const c10::cuda::CUDAGuard guard(x.device());
  const auto opts = at::TensorOptions().device(x.device());
  at::Tensor kbias;
  if (bias.has_value()) kbias = bias->to(at::kFloat).contiguous();
  at::Tensor out = at::empty({dx.rows, dw.rows}, opts.dtype(at::kFloat));
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t splits = linear_splits_cuda(dx, dw, prop->multiProcessorCount, prop->major);
  at::Tensor ws, planes;
  if (splits > 1) ws = at::empty({splits, dx.rows, dw.rows}, opts.dtype(at::kDouble));
  const int64_t plane_bytes = linear_planes_bytes(dx, dw, prop->major);
  if (plane_bytes > 0) planes = at::empty({plane_bytes}, opts.dtype(at::kByte));
  const LinearParams p{global_scale, kbias.defined() ? kbias.data_ptr<float>() : nullptr};
  launch_block_scaled_linear_cuda(dx, dw, p, prop->major, splits, ws.defined() ? ws.data_ptr<double>() : nullptr,
                                  planes.defined() ? planes.data_ptr() : nullptr, out.data_ptr<float>(),
                                  at::cuda::getCurrentCUDAStream().stream());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(accdump, CUDA, m) {
  m.impl("block_dequantize", &block_dequantize_cuda);
  m.impl("block_scaled_linear", &block_scaled_linear_cuda);
}

}  // namespace accdump
