// compare_metrics / rowwise_metrics: accumulators shared by the CPU and CUDA kernels and the
// CUDA launchers' declarations. No torch headers.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/strided.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#else
typedef struct CUstream_st* cudaStream_t;
#endif

namespace accdump {

// Output columns of compare_metrics; keep in sync with accdump/ops.py METRICS_FIELDS.
enum MetricsField : int {
  kMetCount = 0,
  kMetDot,            // sums and maxima below are over positions where both values are finite
  kMetSumSqA,
  kMetSumSqB,
  kMetMaxAbsDiff,
  kMetArgMaxAbsDiff,  // smallest flat (row-major) index reaching max |a-b|; -1 if none
  kMetSumAbsDiff,
  kMetSumSqDiff,
  kMetMaxRelDiff,     // max |a-b| / max(|a|, eps)
  kMetAllcloseFail,   // |a-b| > atol + rtol*|b|; NaN==NaN and equal infinities pass
  kMetNanMismatch,    // NaN in exactly one of a, b
  kMetInfMismatch,    // an infinity in one and not the same infinity in the other
  kMetNonFinite,      // positions where a or b is not finite
  kMetNotEqual,       // a != b (NaN == NaN counts as equal)
  kMetricsFields
};

// Output columns of rowwise_metrics.
enum RowField : int { kRowCosine = 0, kRowMaxAbsDiff, kRowRelL2, kRowFields };

struct MetricsParams {
  double atol, rtol, eps;
};

// Rounded (never fused) multiply and add, so allclose decisions match torch / NumPy exactly.
ACCDUMP_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
ACCDUMP_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

struct MetricsAcc {
  double dot, sa, sb, sum_abs, sum_sq, max_abs;
  double rel_num, rel_den;  // the largest |a-b| / max(|a|, eps) seen, kept as a fraction (no division per element)
  int64_t argmax, fail, nan_mm, inf_mm, nonfinite, noteq;

  ACCDUMP_HD void init() {
    dot = sa = sb = sum_abs = sum_sq = 0.0;
    max_abs = -1.0;
    rel_num = 0.0;
    rel_den = 1.0;
    argmax = -1;
    fail = nan_mm = inf_mm = nonfinite = noteq = 0;
  }

  // A pair where both values are finite; indices arrive in increasing order per accumulator.
  ACCDUMP_HD void add_finite(double x, double y, int64_t idx, const MetricsParams& p) {
    const double diff = x - y;
    const double d = fabs(diff);
    dot += x * y;
    sa += x * x;
    sb += y * y;
    sum_abs += d;
    sum_sq += diff * diff;
    noteq += x != y;
    if (d > max_abs) {
      max_abs = d;
      argmax = idx;
    }
    const double ax = fabs(x);
    const double den = ax > p.eps ? ax : p.eps;
    if (mul_rn(d, rel_den) > mul_rn(rel_num, den)) {
      rel_num = d;
      rel_den = den;
    }
    fail += d > add_rn(p.atol, mul_rn(p.rtol, fabs(y)));
  }

  ACCDUMP_HD void add(double x, double y, int64_t idx, const MetricsParams& p) {
    const bool xn = x != x, yn = y != y;
    const bool xi = x == INFINITY || x == -INFINITY, yi = y == INFINITY || y == -INFINITY;
    if (!(xn || yn || xi || yi)) {
      add_finite(x, y, idx, p);
      return;
    }
    if (x != y && !(xn && yn)) ++noteq;
    if (xn != yn) ++nan_mm;
    if (xi != yi || (xi && yi && x != y)) ++inf_mm;
    ++nonfinite;
    if (!(xn && yn) && x != y) ++fail;
  }

  ACCDUMP_HD void merge(const MetricsAcc& o) {
    dot += o.dot;
    sa += o.sa;
    sb += o.sb;
    sum_abs += o.sum_abs;
    sum_sq += o.sum_sq;
    if (o.max_abs > max_abs || (o.max_abs == max_abs && o.argmax >= 0 && (argmax < 0 || o.argmax < argmax))) {
      max_abs = o.max_abs;
      argmax = o.argmax;
    }
    if (mul_rn(o.rel_num, rel_den) > mul_rn(rel_num, o.rel_den)) {
      rel_num = o.rel_num;
      rel_den = o.rel_den;
    }
    fail += o.fail;
    nan_mm += o.nan_mm;
    inf_mm += o.inf_mm;
    nonfinite += o.nonfinite;
    noteq += o.noteq;
  }
};

ACCDUMP_HD void metrics_finalize(const MetricsAcc& a, int64_t count, double* out) {
  out[kMetCount] = static_cast<double>(count);
  out[kMetDot] = a.dot;
  out[kMetSumSqA] = a.sa;
  out[kMetSumSqB] = a.sb;
  out[kMetMaxAbsDiff] = a.argmax < 0 ? 0.0 : a.max_abs;
  out[kMetArgMaxAbsDiff] = static_cast<double>(a.argmax);
  out[kMetSumAbsDiff] = a.sum_abs;
  out[kMetSumSqDiff] = a.sum_sq;
  out[kMetMaxRelDiff] = a.rel_num / a.rel_den;
  out[kMetAllcloseFail] = static_cast<double>(a.fail);
  out[kMetNanMismatch] = static_cast<double>(a.nan_mm);
  out[kMetInfMismatch] = static_cast<double>(a.inf_mm);
  out[kMetNonFinite] = static_cast<double>(a.nonfinite);
  out[kMetNotEqual] = static_cast<double>(a.noteq);
}

// Per-row sums of one row of rowwise_metrics; NaN and Inf propagate into the row's results.
struct RowAcc {
  double dot, sa, sb, sd, max_abs;
  ACCDUMP_HD void init() { dot = sa = sb = sd = max_abs = 0.0; }
  ACCDUMP_HD void add(double x, double y) {
    dot += x * y;
    sa += x * x;
    sb += y * y;
    const double d = x - y;
    sd += d * d;
    const double ad = fabs(d);
    max_abs = (ad > max_abs || ad != ad) ? ad : max_abs;  // keeps a NaN once seen
  }
  ACCDUMP_HD void merge(const RowAcc& o) {
    dot += o.dot;
    sa += o.sa;
    sb += o.sb;
    sd += o.sd;
    if (max_abs == max_abs && (o.max_abs != o.max_abs || o.max_abs > max_abs)) max_abs = o.max_abs;
  }
};

// Cosine of two vectors from their sums: 1 when both are zero, 0 when exactly one is.
ACCDUMP_HD double cosine_from_sums(double dot, double sa, double sb) {
  if (sa == 0.0 && sb == 0.0) return 1.0;
  if (sa == 0.0 || sb == 0.0) return 0.0;
  const double c = dot / (sqrt(sa) * sqrt(sb));
  return c > 1.0 ? 1.0 : (c < -1.0 ? -1.0 : c);  // NaN passes through
}

// ||a-b|| / ||a||: 0 when both are zero, +Inf when only a is zero.
ACCDUMP_HD double rel_l2_from_sums(double sd, double sa) {
  if (sa == 0.0) return sd == 0.0 ? 0.0 : INFINITY;
  return sqrt(sd) / sqrt(sa);
}

ACCDUMP_HD void row_finalize(const RowAcc& r, double* out) {
  out[kRowCosine] = cosine_from_sums(r.dot, r.sa, r.sb);
  out[kRowMaxAbsDiff] = r.max_abs;
  out[kRowRelL2] = rel_l2_from_sums(r.sd, r.sa);
}

void launch_compare_metrics_cuda(const PairDesc& d, const MetricsParams& p, MetricsAcc* workspace,
                                 int64_t blocks, double* out, cudaStream_t stream);
void launch_rowwise_metrics_cuda(const PairDesc& d, int64_t rows, double* out, cudaStream_t stream);

// Blocks for compare_metrics on CUDA, fixed by size alone (device-independent results).
inline int64_t metrics_blocks_for(int64_t numel) {
  constexpr int64_t kPerBlock = 256 * 16;
  constexpr int64_t kMaxBlocks = 2048;
  int64_t b = (numel + kPerBlock - 1) / kPerBlock;
  return b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b);
}

}  // namespace accdump
