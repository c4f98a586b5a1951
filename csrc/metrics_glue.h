// Shared glue of the metrics ops: input checks and descriptors (torch side).
#pragma once
#include <ATen/core/Tensor.h>

#include "common/tensor_view.h"
#include "metrics.h"

namespace accdump {

// Checks `a` and `b` (same shape, same device, floating dtypes) and describes them; layouts
// the kernels cannot walk are read from contiguous copies held in `ka` / `kb`.
PairDesc describe_metrics_inputs(const at::Tensor& a, const at::Tensor& b, const char* op,
                                 at::Tensor& ka, at::Tensor& kb);

// Number of rows of rowwise_metrics: elements over the last dimension (a 0-d tensor is one row).
int64_t row_count(const at::Tensor& a);

void compare_metrics_cpu_kernel(const PairDesc& d, const MetricsParams& p, double* out);
void rowwise_metrics_cpu_kernel(const PairDesc& d, int64_t rows, double* out);

}  // namespace accdump
