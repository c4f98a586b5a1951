// fletcher32: libhdf5's H5_checksum_fletcher32, bit for bit, for chunks read without libhdf5.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdint>
#include <string>

namespace accdump {
namespace {

constexpr int64_t kBlockWords = 360;  // libhdf5 folds both sums after every 360 words

// libhdf5 adds big-endian 16-bit words one at a time (sum2 += sum1 after each) in uint32
// arithmetic and folds after each block. Within a block sum1 cannot wrap, and uint32 addition
// is modular, so a block's effect is sum2 += len * sum1 + sum_j (len - j) w_j and sum1 += sum_j
// w_j, all mod 2^32: the same result, with loops the compiler vectorises.
uint32_t fletcher32(const uint8_t* data, int64_t nbytes) {
  uint32_t sum1 = 0, sum2 = 0;
  int64_t words = nbytes / 2;
  while (words > 0) {
    const int64_t len = words < kBlockWords ? words : kBlockWords;
    uint32_t s = 0, weighted = 0;
    for (int64_t j = 0; j < len; ++j) {
      const uint32_t w = (uint32_t(data[2 * j]) << 8) | uint32_t(data[2 * j + 1]);
      s += w;
      weighted += uint32_t(len - j) * w;
    }
    sum2 += uint32_t(len) * sum1 + weighted;
    sum1 += s;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    data += 2 * len;
    words -= len;
  }
  if (nbytes % 2) {
    sum1 += uint32_t(*data) << 8;
    sum2 += sum1;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  sum1 = (sum1 & 0xffff) + (sum1 >> 16);
  sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  return (sum2 << 16) | sum1;
}

int64_t fletcher32_cpu(const at::Tensor& data) {
  TORCH_CHECK(data.scalar_type() == at::kByte && data.dim() == 1 && data.is_contiguous(),
              "accdump.fletcher32: data must be a contiguous 1-D uint8 tensor, got ",
              c10::toString(data.scalar_type()), " of ", std::to_string(data.dim()), " dimension(s)");
  return int64_t(fletcher32(data.const_data_ptr<uint8_t>(), data.numel()));
}

}  // namespace

TORCH_LIBRARY_IMPL(accdump, CPU, m) { m.impl("fletcher32", &fletcher32_cpu); }

}  // namespace accdump
