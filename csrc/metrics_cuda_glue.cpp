// compare_metrics / rowwise_metrics on CUDA: launch on the current stream, no host sync.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "metrics_glue.h"

namespace accdump {
namespace {

at::Tensor compare_metrics_cuda(const at::Tensor& a, const at::Tensor& b, double atol, double rtol,
                                double eps) {
  at::Tensor ka, kb;
  const PairDesc d = describe_metrics_inputs(a, b, "compare_metrics", ka, kb);
  const c10::cuda::CUDAGuard guard(a.device());
  const auto opts = at::TensorOptions().device(a.device());
  at::Tensor out = at::empty({kMetricsFields}, opts.dtype(at::kDouble));
  const int64_t blocks = metrics_blocks_for(d.numel);
  at::Tensor ws = at::empty({static_cast<int64_t>(blocks * sizeof(MetricsAcc))}, opts.dtype(at::kByte));
  launch_compare_metrics_cuda(d, MetricsParams{atol, rtol, eps}, static_cast<MetricsAcc*>(ws.data_ptr()),
                              blocks, out.data_ptr<double>(), at::cuda::getCurrentCUDAStream().stream());
  return out;
}

at::Tensor rowwise_metrics_cuda(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor ka, kb;
  const PairDesc d = describe_metrics_inputs(a, b, "rowwise_metrics", ka, kb);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t rows = row_count(a);
  at::Tensor out = at::empty({rows, kRowFields}, at::TensorOptions().device(a.device()).dtype(at::kDouble));
  launch_rowwise_metrics_cuda(d, rows, out.data_ptr<double>(), at::cuda::getCurrentCUDAStream().stream());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(accdump, CUDA, m) {
  m.impl("compare_metrics", &compare_metrics_cuda);
  m.impl("rowwise_metrics", &rowwise_metrics_cuda);
}

}  // namespace accdump
