// tensor_stats / tensor_stats_multi: input checks and the CPU registration.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "stats_glue.h"

namespace accdump {

std::vector<TensorDesc> describe_stats_inputs(at::TensorList xs, const char* op,
                                              std::vector<at::Tensor>& keep) {
  std::vector<TensorDesc> descs;
  descs.reserve(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const at::Tensor& x = xs[i];
    TORCH_CHECK(x.device() == xs[0].device(), "accdump.", op, ": all tensors must be on one device, got ",
                xs[0].device().str(), " (tensor 0) and ", x.device().str(), " (tensor ", std::to_string(i), ")");
    const bool single = std::string(op) == "tensor_stats";
    const std::string arg = single ? std::string("x") : "xs[" + std::to_string(i) + "]";
    const DType dt = checked_dtype(x, op, arg.c_str(), false);
    auto d = describe(x, dt, /*any_order=*/true);
    if (!d) {
      keep.push_back(x.contiguous());
      d = describe(keep.back(), dt, true);
    }
    descs.push_back(*d);
  }
  return descs;
}

namespace {

at::Tensor stats_cpu(at::TensorList xs, const char* op) {
  std::vector<at::Tensor> keep;
  const auto descs = describe_stats_inputs(xs, op, keep);
  at::Tensor out = at::empty({static_cast<int64_t>(xs.size()), kStatsFields}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (size_t i = 0; i < descs.size(); ++i) tensor_stats_cpu_kernel(descs[i], o + i * kStatsFields);
  return out;
}

at::Tensor tensor_stats_multi_cpu(at::TensorList xs) { return stats_cpu(xs, "tensor_stats_multi"); }

at::Tensor tensor_stats_cpu(const at::Tensor& x) { return stats_cpu({x}, "tensor_stats").squeeze(0); }

}  // namespace

TORCH_LIBRARY_IMPL(accdump, CPU, m) {
  m.impl("tensor_stats", &tensor_stats_cpu);
  m.impl("tensor_stats_multi", &tensor_stats_multi_cpu);
}

}  // namespace accdump
