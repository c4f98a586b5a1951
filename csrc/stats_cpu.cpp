// CPU kernel of the stats ops: fixed-size chunks in parallel, merged in chunk order, so the
// result does not depend on the number of threads.
#include <ATen/Parallel.h>

#include <vector>

#include "stats_glue.h"

namespace accdump {

namespace {
constexpr int64_t kChunk = 1 << 16;

template <DType T>
void stats_chunks(const TensorDesc& d, double shift, std::vector<StatsAcc>& parts) {
  constexpr int vpe = values_per_element(T);
  at::parallel_for(0, static_cast<int64_t>(parts.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      StatsAcc acc;
      acc.init();
      const int64_t begin = c * kChunk;
      const int64_t end = std::min(d.numel, begin + kChunk);
      for_each_element(d, begin, end, [&](const char* p) {
        for (int s = 0; s < vpe; ++s) acc.add(load_value<T>(p, s), shift);
      });
      parts[c] = acc;
    }
  });
}
}  // namespace

void tensor_stats_cpu_kernel(const TensorDesc& d, double* out) {
  const int64_t chunks = (d.numel + kChunk - 1) / kChunk;
  std::vector<StatsAcc> parts(static_cast<size_t>(chunks));
  double first = 0.0;
  if (d.numel > 0) {
    ACCDUMP_DISPATCH_DTYPE(d.dtype, first = load_value<DT>(d.data, 0));
  }
  const double shift = stats_shift(first);
  ACCDUMP_DISPATCH_DTYPE(d.dtype, stats_chunks<DT>(d, shift, parts));
  StatsAcc total;
  total.init();
  for (const StatsAcc& p : parts) total.merge(p);
  stats_finalize(total, d.numel * values_per_element(d.dtype), shift, out);
}

}  // namespace accdump
