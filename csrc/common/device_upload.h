// Copies small host arrays (kernel descriptors) to the device in one transfer on the current
// stream, from pinned memory so the copy is asynchronous.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstring>
#include <vector>

namespace accdump {

// Packs the given byte ranges one after another (each 16-byte aligned) into one device buffer.
// Returns the buffer and the offset of each range in it.
at::Tensor upload_to_device(const std::vector<std::pair<const void*, size_t>>& parts,
                            const at::Device& device, std::vector<size_t>& offsets);

}  // namespace accdump
