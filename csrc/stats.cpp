// tensor_stats / tensor_stats_multi: input checks and the CPU registration.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

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

TensorDesc check_stats_into(const at::Tensor& x, const at::Tensor& out, int64_t row,
                            const std::optional<at::Tensor>& workspace, at::Tensor& keep) {
  const char* op = "accdump.tensor_stats_into: ";
  TORCH_CHECK(out.scalar_type() == at::kDouble && out.dim() == 2 && out.size(1) == kStatsFields && out.is_contiguous(),
              op, "out must be a contiguous float64 tensor [rows, ", std::to_string(kStatsFields), "], got ",
              c10::toString(out.scalar_type()), " ", shape_str(out.sizes()));
  TORCH_CHECK(row >= 0 && row < out.size(0), op, "row ", std::to_string(row), " is outside out's ",
              std::to_string(out.size(0)), " rows");
  TORCH_CHECK(out.device() == x.device(), op, "out is on ", out.device().str(), " but x is on ", x.device().str());
  TORCH_CHECK(!workspace || (workspace->device() == x.device() && workspace->scalar_type() == at::kByte &&
                                workspace->is_contiguous() && workspace->numel() >= stats_workspace_bytes()),
              op, "workspace must be a contiguous uint8 tensor of at least ", std::to_string(stats_workspace_bytes()),
              " bytes on x's device");
  // the kernels read the partials in the workspace with 16-byte loads
  TORCH_CHECK(!workspace || reinterpret_cast<uintptr_t>(workspace->const_data_ptr()) % 16 == 0, op,
              "workspace must start on a 16-byte boundary (stats_workspace() gives one; a slice of it may not)");
  const DType dt = checked_dtype(x, "tensor_stats_into", "x", false);
  auto d = describe(x, dt, /*any_order=*/true);
  if (!d) {
    keep = x.contiguous();
    d = describe(keep, dt, true);
  }
  return *d;
}

namespace {

// Runs check(i) for each tensor of a multi op, naming the tensor in the error ("xs[i]: ...").
template <typename Check>
void check_each(size_t n, size_t rows, const std::string& multi_op, const std::string& single_op, Check check) {
  TORCH_CHECK(n == rows, "accdump.", multi_op, ": ", std::to_string(n), " tensors but ", std::to_string(rows),
              " rows");
  for (size_t i = 0; i < n; ++i) {
    try {
      check(i);
    } catch (const c10::Error& e) {
      std::string msg = e.what_without_backtrace();
      const std::string prefix = "accdump." + single_op + ": ";
      if (msg.rfind(prefix, 0) == 0) msg = msg.substr(prefix.size());
      TORCH_CHECK(false, "accdump.", multi_op, ": xs[", std::to_string(i), "]: ", msg);
    }
  }
}

}  // namespace

std::vector<TensorDesc> check_stats_multi_into(at::TensorList xs, const at::Tensor& out, at::IntArrayRef rows,
                                               const std::optional<at::Tensor>& workspace,
                                               std::vector<at::Tensor>& keep) {
  std::vector<TensorDesc> descs;
  descs.reserve(xs.size());
  keep.resize(xs.size());
  check_each(xs.size(), rows.size(), "tensor_stats_multi_into", "tensor_stats_into",
             [&](size_t i) { descs.push_back(check_stats_into(xs[i], out, rows[i], workspace, keep[i])); });
  return descs;
}

std::vector<at::Tensor> check_fingerprint_multi_into(at::TensorList xs, const at::Tensor& out, at::IntArrayRef rows) {
  std::vector<at::Tensor> bytes;
  bytes.reserve(xs.size());
  check_each(xs.size(), rows.size(), "tensor_fingerprint_multi_into", "tensor_fingerprint_into",
             [&](size_t i) { bytes.push_back(check_fingerprint_into(xs[i], out, rows[i])); });
  return bytes;
}

at::Tensor check_fingerprint_into(const at::Tensor& x, const at::Tensor& out, int64_t row) {
  const char* op = "accdump.tensor_fingerprint_into: ";
  TORCH_CHECK(out.scalar_type() == at::kLong && out.dim() == 2 && out.size(1) == 2 && out.is_contiguous(), op,
              "out must be a contiguous int64 tensor [rows, 2], got ", c10::toString(out.scalar_type()), " ",
              shape_str(out.sizes()));
  TORCH_CHECK(row >= 0 && row < out.size(0), op, "row ", std::to_string(row), " is outside out's ",
              std::to_string(out.size(0)), " rows");
  TORCH_CHECK(out.device() == x.device(), op, "out is on ", out.device().str(), " but x is on ", x.device().str());
  TORCH_CHECK(x.layout() == at::kStrided, op, "x must be a strided (dense) tensor");
  return x.contiguous();  // the fingerprint is of the values in logical order
}

namespace {

void tensor_stats_into_cpu(const at::Tensor& x, at::Tensor& out, int64_t row,
                           const std::optional<at::Tensor>& workspace) {
  at::Tensor keep;
  const TensorDesc d = check_stats_into(x, out, row, workspace, keep);
  tensor_stats_cpu_kernel(d, out.data_ptr<double>() + row * kStatsFields);
}

void tensor_stats_multi_into_cpu(at::TensorList xs, at::Tensor& out, at::IntArrayRef rows,
                                 const std::optional<at::Tensor>& workspace) {
  std::vector<at::Tensor> keep;
  const auto descs = check_stats_multi_into(xs, out, rows, workspace, keep);
  for (size_t i = 0; i < descs.size(); ++i) tensor_stats_cpu_kernel(descs[i], out.data_ptr<double>() + rows[i] * kStatsFields);
}

void tensor_fingerprint_into_cpu(const at::Tensor& x, at::Tensor& out, int64_t row) {
  const at::Tensor c = check_fingerprint_into(x, out, row);
  const auto* data = static_cast<const unsigned char*>(c.const_data_ptr());
  const int64_t nbytes = c.numel() * static_cast<int64_t>(c.element_size());
  uint64_t total[2] = {static_cast<uint64_t>(x.numel()), static_cast<uint64_t>(x.numel())};
  for (int64_t i = 0; i * 8 < nbytes; ++i) {
    uint64_t w = 0;
    const int64_t n = std::min<int64_t>(8, nbytes - i * 8);
    std::memcpy(&w, data + i * 8, static_cast<size_t>(n));  // little-endian, zero-padded
    for (int k = 0; k < 2; ++k) total[k] += fingerprint_mix(w, static_cast<uint64_t>(i), fp_m1(k), fp_m2(k));
  }
  int64_t* o = out.data_ptr<int64_t>() + row * 2;
  o[0] = static_cast<int64_t>(total[0]);
  o[1] = static_cast<int64_t>(total[1]);
}

void tensor_fingerprint_multi_into_cpu(at::TensorList xs, at::Tensor& out, at::IntArrayRef rows) {
  check_fingerprint_multi_into(xs, out, rows);
  for (size_t i = 0; i < xs.size(); ++i) tensor_fingerprint_into_cpu(xs[i], out, rows[i]);
}

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

StatsIntoRow stats_into_row_cuda = nullptr;

void stats_into_row_cpu(const at::Tensor& x, at::Tensor& out, int64_t row) {
  tensor_stats_into_cpu(x, out, row, std::nullopt);
}

StatsMultiIntoRows stats_multi_into_rows_cuda = nullptr;

void stats_multi_into_rows_cpu(at::TensorList xs, at::Tensor& out, at::IntArrayRef rows) {
  tensor_stats_multi_into_cpu(xs, out, rows, std::nullopt);
}

TORCH_LIBRARY_IMPL(accdump, CPU, m) {
  m.impl("tensor_stats", &tensor_stats_cpu);
  m.impl("tensor_stats_multi", &tensor_stats_multi_cpu);
  m.impl("tensor_stats_into", &tensor_stats_into_cpu);
  m.impl("tensor_stats_multi_into", &tensor_stats_multi_into_cpu);
  m.impl("tensor_fingerprint_into", &tensor_fingerprint_into_cpu);
  m.impl("tensor_fingerprint_multi_into", &tensor_fingerprint_multi_into_cpu);
}

}  // namespace accdump

int64_t accdump_stats_workspace_size() { return accdump::stats_workspace_bytes(); }
