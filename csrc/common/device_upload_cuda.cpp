#include "device_upload.h"

#include <ATen/ops/empty.h>

namespace accdump {

at::Tensor upload_to_device(const std::vector<std::pair<const void*, size_t>>& parts,
                            const at::Device& device, std::vector<size_t>& offsets) {
  size_t total = 0;
  offsets.clear();
  for (const auto& p : parts) {
    offsets.push_back(total);
    total += (p.second + 15) / 16 * 16;
  }
  at::Tensor host = at::empty({static_cast<int64_t>(total)},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* dst = static_cast<char*>(host.data_ptr());
  for (size_t i = 0; i < parts.size(); ++i) std::memcpy(dst + offsets[i], parts[i].first, parts[i].second);
  // non_blocking from pinned memory: the caching host allocator keeps `host` alive until the copy ran.
  return host.to(device, /*non_blocking=*/true);
}

}  // namespace accdump
