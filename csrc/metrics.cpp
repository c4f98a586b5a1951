// compare_metrics / rowwise_metrics: input checks and the CPU registration.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "metrics_glue.h"

namespace accdump {

PairDesc describe_metrics_inputs(const at::Tensor& a, const at::Tensor& b, const char* op,
                                 at::Tensor& ka, at::Tensor& kb) {
  TORCH_CHECK(a.sizes() == b.sizes(), "accdump.", op, ": a and b must have the same shape, got ",
              shape_str(a.sizes()), " and ", shape_str(b.sizes()));
  TORCH_CHECK(a.device() == b.device(), "accdump.", op, ": a and b must be on the same device, got ",
              a.device().str(), " and ", b.device().str());
  const DType da = checked_dtype(a, op, "a", true);
  const DType db = checked_dtype(b, op, "b", true);
  ka = a;
  kb = b;
  auto d = describe_pair(ka, da, kb, db);
  if (!d) {
    ka = a.contiguous();
    kb = b.contiguous();
    d = describe_pair(ka, da, kb, db);
  }
  return *d;
}

int64_t row_count(const at::Tensor& a) {
  int64_t rows = 1;
  for (int64_t k = 0; k + 1 < a.dim(); ++k) rows *= a.size(k);
  return rows;
}

namespace {

at::Tensor compare_metrics_cpu(const at::Tensor& a, const at::Tensor& b, double atol, double rtol,
                               double eps) {
  at::Tensor ka, kb;
  const PairDesc d = describe_metrics_inputs(a, b, "compare_metrics", ka, kb);
  at::Tensor out = at::empty({kMetricsFields}, at::kDouble);
  compare_metrics_cpu_kernel(d, MetricsParams{atol, rtol, eps}, out.data_ptr<double>());
  return out;
}

at::Tensor rowwise_metrics_cpu(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor ka, kb;
  const PairDesc d = describe_metrics_inputs(a, b, "rowwise_metrics", ka, kb);
  const int64_t rows = row_count(a);
  at::Tensor out = at::empty({rows, kRowFields}, at::kDouble);
  rowwise_metrics_cpu_kernel(d, rows, out.data_ptr<double>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(accdump, CPU, m) {
  m.impl("compare_metrics", &compare_metrics_cpu);
  m.impl("rowwise_metrics", &rowwise_metrics_cpu);
}

}  // namespace accdump
