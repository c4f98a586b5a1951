// CPU kernel of block_dequantize: rows in parallel, each value decoded from its bytes.
#include <ATen/Parallel.h>

#include "quant_glue.h"

namespace accdump {

void block_dequantize_cpu_kernel(const QuantOperand& q, double global, float* out) {
  at::parallel_for(0, q.rows, 16, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      float* o = out + r * q.cols;
      for (int64_t c = 0; c < q.cols; ++c) {
        const double v = static_cast<double>(element_at(q, r, c)) * static_cast<double>(scale_at(q, r, c));
        o[c] = static_cast<float>(v * global);
      }
    }
  });
}

}  // namespace accdump
