// Shared glue of the quantization ops: argument checks and descriptors (torch side).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "common/tensor_view.h"
#include "quant.h"

namespace accdump {

// Checks a quantized operand (2-D `q` read as `element`, optional 2-D `scale` read as
// `scale_format`, one scale per block_rows x block_cols block) and describes it. Layouts the
// kernels cannot walk are read from contiguous copies held in `kq`.
QuantOperand describe_quant_operand(const at::Tensor& q, const std::string& element,
                                    const std::optional<at::Tensor>& scale,
                                    const std::string& scale_format, int64_t block_rows,
                                    int64_t block_cols, const char* op, const char* arg,
                                    at::Tensor& kq);

// Devices, K and the bias of block_scaled_linear.
void check_linear_args(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                       const QuantOperand& dx, const QuantOperand& dw);

void block_dequantize_cpu_kernel(const QuantOperand& q, double global, float* out);

}  // namespace accdump
