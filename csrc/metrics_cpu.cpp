// CPU kernels of the metrics ops: fixed-size chunks (rows) in parallel, merged in order.
#include <ATen/Parallel.h>

#include <vector>

#include "metrics_glue.h"

namespace accdump {

namespace {
constexpr int64_t kChunk = 1 << 16;

double load_float(DType t, const char* p) {
  double v = 0.0;
  ACCDUMP_DISPATCH_DTYPE(t, v = load_value<DT>(p));
  return v;
}

template <DType A, DType B>
void metrics_chunks(const PairDesc& d, const MetricsParams& p, std::vector<MetricsAcc>& parts) {
  at::parallel_for(0, static_cast<int64_t>(parts.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      MetricsAcc acc;
      acc.init();
      const int64_t begin = c * kChunk, end = std::min(d.numel, begin + kChunk);
      for_each_pair(d, begin, end, [&](const char* pa, const char* pb, int64_t i) {
        double x, y;
        if constexpr (A == DType::kBool) x = load_float(d.a_dtype, pa); else x = load_value<A>(pa);
        if constexpr (B == DType::kBool) y = load_float(d.b_dtype, pb); else y = load_value<B>(pb);
        acc.add(x, y, i, p);
      });
      parts[c] = acc;
    }
  });
}
}  // namespace

void compare_metrics_cpu_kernel(const PairDesc& d, const MetricsParams& p, double* out) {
  std::vector<MetricsAcc> parts(static_cast<size_t>((d.numel + kChunk - 1) / kChunk));
  // Same-dtype pairs get a specialised loop; mixed pairs decode the second operand at run time
  // (kBool stands for "run-time dtype" here: it is never a metrics input).
  if (d.a_dtype == d.b_dtype) {
    ACCDUMP_DISPATCH_DTYPE(d.a_dtype, metrics_chunks<DT, DT>(d, p, parts));
  } else {
    ACCDUMP_DISPATCH_DTYPE(d.a_dtype, metrics_chunks<DT, DType::kBool>(d, p, parts));
  }
  MetricsAcc total;
  total.init();
  for (const MetricsAcc& m : parts) total.merge(m);
  metrics_finalize(total, d.numel, out);
}

void rowwise_metrics_cpu_kernel(const PairDesc& d, int64_t rows, double* out) {
  at::parallel_for(0, rows, 64, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      RowAcc acc;
      acc.init();
      for_each_pair(d, r * d.row_len, (r + 1) * d.row_len, [&](const char* pa, const char* pb, int64_t) {
        acc.add(load_float(d.a_dtype, pa), load_float(d.b_dtype, pb));
      });
      row_finalize(acc, out + r * kRowFields);
    }
  });
}

}  // namespace accdump
