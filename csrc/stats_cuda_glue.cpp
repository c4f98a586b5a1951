// tensor_stats / tensor_stats_multi on CUDA: descriptors to the device, launch on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <ATen/ops/zeros.h>

#include <algorithm>
#include <map>
#include <mutex>

#include "common/device_upload.h"
#include "stats_glue.h"

namespace accdump {
namespace {

at::Tensor stats_cuda(at::TensorList xs, const char* op) {
  std::vector<at::Tensor> keep;
  const auto descs = describe_stats_inputs(xs, op, keep);
  const auto n = static_cast<int64_t>(descs.size());
  const at::Device device = xs[0].device();
  const c10::cuda::CUDAGuard guard(device);
  at::Tensor out = at::empty({n, kStatsFields}, at::TensorOptions().dtype(at::kDouble).device(device));
  if (n == 0) return out;
  std::vector<int64_t> block_begin(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    block_begin[i + 1] = block_begin[i] + stats_blocks_for(descs[i].numel * values_per_element(descs[i].dtype));
  }
  const int64_t total_blocks = block_begin[n];
  std::vector<int32_t> block_tensor(static_cast<size_t>(total_blocks));
  for (int64_t i = 0; i < n; ++i) {
    std::fill(block_tensor.begin() + block_begin[i], block_tensor.begin() + block_begin[i + 1], static_cast<int32_t>(i));
  }
  std::vector<size_t> offsets;
  at::Tensor meta = upload_to_device({{descs.data(), descs.size() * sizeof(TensorDesc)},
                                      {block_begin.data(), block_begin.size() * sizeof(int64_t)},
                                      {block_tensor.data(), block_tensor.size() * sizeof(int32_t)}},
                                     device, offsets);
  at::Tensor workspace = at::empty({static_cast<int64_t>(total_blocks * sizeof(StatsAcc))},
                                   at::TensorOptions().dtype(at::kByte).device(device));
  const char* m = static_cast<const char*>(meta.const_data_ptr());
  launch_tensor_stats_cuda(reinterpret_cast<const TensorDesc*>(m + offsets[0]),
                           reinterpret_cast<const int64_t*>(m + offsets[1]),
                           reinterpret_cast<const int32_t*>(m + offsets[2]), n, total_blocks,
                           static_cast<StatsAcc*>(workspace.data_ptr()), out.data_ptr<double>(),
                           at::cuda::getCurrentCUDAStream(device.index()).stream());
  return out;
}

// One zero-filled workspace per (device, stream), kept for the life of the process.
void* stream_workspace(const at::Device& device, const c10::cuda::CUDAStream& stream) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, at::Tensor> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_pair(static_cast<int>(device.index()), stream.stream());
  auto it = cache.find(key);
  if (it == cache.end()) {
    at::Tensor ws = at::zeros({stats_workspace_bytes()}, at::TensorOptions().dtype(at::kByte).device(device));
    it = cache.emplace(key, ws).first;
  }
  return it->second.data_ptr();
}

void tensor_stats_into_cuda(const at::Tensor& x, at::Tensor& out, int64_t row,
                            const std::optional<at::Tensor>& workspace) {
  at::Tensor keep;
  const TensorDesc d = check_stats_into(x, out, row, workspace, keep);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = at::cuda::getCurrentCUDAStream(x.device().index());
  void* ws = workspace ? workspace->data_ptr() : stream_workspace(x.device(), stream);
  launch_tensor_stats_into_cuda(d, ws, out.data_ptr<double>() + row * kStatsFields, stream.stream());
}

void tensor_stats_multi_into_cuda(at::TensorList xs, at::Tensor& out, at::IntArrayRef rows,
                                  const std::optional<at::Tensor>& workspace) {
  std::vector<at::Tensor> keep;
  const auto descs = check_stats_multi_into(xs, out, rows, workspace, keep);
  if (descs.empty()) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const auto stream = at::cuda::getCurrentCUDAStream(out.device().index());
  void* ws = workspace ? workspace->data_ptr() : stream_workspace(out.device(), stream);
  launch_tensor_stats_multi_into_cuda(descs.data(), rows.data(), static_cast<int64_t>(descs.size()), ws,
                                      out.data_ptr<double>(), stream.stream());
}

void tensor_fingerprint_into_cuda(const at::Tensor& x, at::Tensor& out, int64_t row) {
  const at::Tensor c = check_fingerprint_into(x, out, row);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = at::cuda::getCurrentCUDAStream(x.device().index());
  launch_fingerprint_cuda(c.const_data_ptr(), c.numel() * static_cast<int64_t>(c.element_size()), x.numel(),
                          stream_workspace(x.device(), stream), out.data_ptr<int64_t>() + row * 2, stream.stream());
}

void tensor_fingerprint_multi_into_cuda(at::TensorList xs, at::Tensor& out, at::IntArrayRef rows) {
  const auto bytes = check_fingerprint_multi_into(xs, out, rows);
  if (bytes.empty()) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const auto stream = at::cuda::getCurrentCUDAStream(out.device().index());
  std::vector<const void*> data;
  std::vector<int64_t> nbytes, numel;
  for (size_t i = 0; i < bytes.size(); ++i) {
    data.push_back(bytes[i].const_data_ptr());
    nbytes.push_back(bytes[i].numel() * static_cast<int64_t>(bytes[i].element_size()));
    numel.push_back(xs[i].numel());
  }
  launch_fingerprint_multi_into_cuda(data.data(), nbytes.data(), numel.data(), rows.data(),
                                     static_cast<int64_t>(bytes.size()), stream_workspace(out.device(), stream),
                                     out.data_ptr<int64_t>(), stream.stream());
}

at::Tensor tensor_stats_multi_cuda(at::TensorList xs) { return stats_cuda(xs, "tensor_stats_multi"); }

at::Tensor tensor_stats_cuda(const at::Tensor& x) { return stats_cuda({x}, "tensor_stats").squeeze(0); }

// Makes the CUDA kernels reachable from the recorder's native capture (stats_glue.h).
const bool registered_stats_into_row = [] {
  stats_into_row_cuda = [](const at::Tensor& x, at::Tensor& out, int64_t row) {
    tensor_stats_into_cuda(x, out, row, std::nullopt);
  };
  stats_multi_into_rows_cuda = [](at::TensorList xs, at::Tensor& out, at::IntArrayRef rows) {
    tensor_stats_multi_into_cuda(xs, out, rows, std::nullopt);
  };
  return true;
}();

}  // namespace

TORCH_LIBRARY_IMPL(accdump, CUDA, m) {
  m.impl("tensor_stats", &tensor_stats_cuda);
  m.impl("tensor_stats_multi", &tensor_stats_multi_cuda);
  m.impl("tensor_stats_into", &tensor_stats_into_cuda);
  m.impl("tensor_stats_multi_into", &tensor_stats_multi_into_cuda);
  m.impl("tensor_fingerprint_into", &tensor_fingerprint_into_cuda);
  m.impl("tensor_fingerprint_multi_into", &tensor_fingerprint_multi_into_cuda);
}

}  // namespace accdump
