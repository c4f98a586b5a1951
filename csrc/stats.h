// tensor_stats / tensor_stats_multi: the accumulator shared by the CPU and CUDA kernels,
// and the CUDA launcher's declaration. No torch headers.
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

// Output columns of tensor_stats; keep in sync with accdump/ops.py STATS_FIELDS.
enum StatsField : int {
  kStatCount = 0,      // values (2 per byte for packed float4)
  kStatNan,
  kStatPosInf,
  kStatNegInf,
  kStatZeros,
  kStatMin,            // min/max/sum/mean/std/absmax/l2 ignore NaN and Inf
  kStatMax,
  kStatSum,
  kStatMean,
  kStatStd,            // population standard deviation (ddof = 0)
  kStatAbsMax,
  kStatL2Norm,
  kStatMinAbsNonzero,  // smallest |x| over finite non-zero values
  kStatsFields
};

// Partial statistics of a range of values. The variance uses a shift (the tensor's first
// finite value) so that sum((x - shift)^2) does not cancel catastrophically when |mean| >> std.
struct StatsAcc {
  double sum, sumsq, s2;
  double min, max, absmax, minabs;
  int64_t finite, nan, pinf, ninf, zeros;

  ACCDUMP_HD void init() {
    sum = sumsq = s2 = 0.0;
    min = INFINITY;
    max = -INFINITY;
    absmax = 0.0;
    minabs = INFINITY;
    finite = nan = pinf = ninf = zeros = 0;
  }

  ACCDUMP_HD void add(double x, double shift) {
    if (x != x) {
      ++nan;
    } else if (x == INFINITY) {
      ++pinf;
    } else if (x == -INFINITY) {
      ++ninf;
    } else {
      ++finite;
      sum += x;
      sumsq += x * x;
      const double d = x - shift;
      s2 += d * d;
      min = x < min ? x : min;
      max = x > max ? x : max;
      const double ax = fabs(x);
      absmax = ax > absmax ? ax : absmax;
      if (ax == 0.0) {
        ++zeros;
      } else if (ax < minabs) {
        minabs = ax;
      }
    }
  }

  ACCDUMP_HD void merge(const StatsAcc& o) {
    sum += o.sum;
    sumsq += o.sumsq;
    s2 += o.s2;
    min = o.min < min ? o.min : min;
    max = o.max > max ? o.max : max;
    absmax = o.absmax > absmax ? o.absmax : absmax;
    minabs = o.minabs < minabs ? o.minabs : minabs;
    finite += o.finite;
    nan += o.nan;
    pinf += o.pinf;
    ninf += o.ninf;
    zeros += o.zeros;
  }
};

// The shift used for the variance: the first value if finite, else 0.
ACCDUMP_HD double stats_shift(double first) { return (first - first == 0.0) ? first : 0.0; }

ACCDUMP_HD void stats_finalize(const StatsAcc& a, int64_t count, double shift, double* out) {
  out[kStatCount] = static_cast<double>(count);
  out[kStatNan] = static_cast<double>(a.nan);
  out[kStatPosInf] = static_cast<double>(a.pinf);
  out[kStatNegInf] = static_cast<double>(a.ninf);
  out[kStatZeros] = static_cast<double>(a.zeros);
  out[kStatSum] = a.sum;
  out[kStatL2Norm] = sqrt(a.sumsq);
  if (a.finite == 0) {
    out[kStatMin] = out[kStatMax] = out[kStatMean] = out[kStatStd] = NAN;
    out[kStatAbsMax] = out[kStatMinAbsNonzero] = NAN;
    return;
  }
  const double n = static_cast<double>(a.finite);
  const double mean = a.sum / n;
  const double s1 = a.sum - n * shift;  // sum of (x - shift)
  const double var = a.s2 / n - (s1 / n) * (s1 / n);
  out[kStatMin] = a.min;
  out[kStatMax] = a.max;
  out[kStatMean] = mean;
  out[kStatStd] = sqrt(var > 0.0 ? var : 0.0);
  out[kStatAbsMax] = a.absmax;
  out[kStatMinAbsNonzero] = a.minabs == INFINITY ? NAN : a.minabs;
}

// Statistics of `n` tensors described in device memory, written to out[n][kStatsFields].
// block_begin[t] .. block_begin[t+1] are the blocks assigned to tensor t and block_tensor[b]
// the tensor of block b (device memory); workspace holds one StatsAcc per block.
// Throws std::runtime_error on a launch error.
void launch_tensor_stats_cuda(const TensorDesc* descs, const int64_t* block_begin, const int32_t* block_tensor,
                              int64_t n, int64_t total_blocks, StatsAcc* workspace, double* out,
                              cudaStream_t stream);

// Single-launch statistics of one tensor into out[kStatsFields]: `workspace` starts with a
// zeroed header of completion counters (kStatsWorkspaceHeader bytes) followed by room for stats_blocks_for(values) partials;
// the last block to finish merges them in fixed order and resets the counter.
void launch_tensor_stats_into_cuda(const TensorDesc& d, void* workspace, double* out, cudaStream_t stream);

// Tensors one tensor_stats_multi_into launch takes: their descriptors travel as kernel
// parameters (no upload, so the launch can be captured into a CUDA graph), within 4 KiB.
constexpr int kStatsMultiInto = 24;

// Statistics of n tensors into out[rows[i]][kStatsFields], in as few launches as the workspace
// allows (each launch: at most kStatsMultiInto tensors and kStatsMaxBlocks blocks). Each tensor
// gets the blocks and merge order of launch_tensor_stats_into_cuda: the same bits.
void launch_tensor_stats_multi_into_cuda(const TensorDesc* descs, const int64_t* rows, int64_t n, void* workspace,
                                         double* out, cudaStream_t stream);

// The fingerprint's mixing of word `w` at word index `i` for one lane (m1, m2): unsigned
// arithmetic wraps exactly like torch's int64 ops; the shift is arithmetic as in torch.
ACCDUMP_HD uint64_t fingerprint_mix(uint64_t w, uint64_t i, uint64_t m1, uint64_t m2) {
  constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
  uint64_t x = w ^ (i * kGolden + m1);
  x *= m2;
  x ^= static_cast<uint64_t>(static_cast<int64_t>(x) >> 29);
  return x * m1;
}
// The two lanes' multipliers (functions rather than arrays so device code can use them).
ACCDUMP_HD constexpr uint64_t fp_m1(int lane) { return lane == 0 ? 0x9E3779B97F4A7C15ull : 0xD1B54A32D192ED03ull; }
ACCDUMP_HD constexpr uint64_t fp_m2(int lane) { return lane == 0 ? 0xBF58476D1CE4E5B9ull : 0x4D5867D53535777Full; }

// Fingerprint of `nbytes` contiguous bytes into out[2] (adds `numel` to each lane).
void launch_fingerprint_cuda(const void* data, int64_t nbytes, int64_t numel, void* workspace, int64_t* out,
                             cudaStream_t stream);

// Tensors one fingerprint multi launch takes (kernel parameters, within 4 KiB).
constexpr int kFingerprintMultiInto = 64;

// Fingerprints of n contiguous byte ranges into out[rows[i]][2], as few launches as the workspace allows.
void launch_fingerprint_multi_into_cuda(const void* const* data, const int64_t* nbytes, const int64_t* numel,
                                        const int64_t* rows, int64_t n, void* workspace, int64_t* out,
                                        cudaStream_t stream);

constexpr int64_t kStatsMaxBlocks = 2048;
constexpr int64_t kStatsWorkspaceHeader = 256;  // one 4-byte completion counter per tensor of a launch
static_assert(kStatsWorkspaceHeader >= 4 * kStatsMultiInto && kStatsWorkspaceHeader >= 4 * kFingerprintMultiInto,
              "a counter per tensor of a multi launch");

// Bytes of the workspace tensor_stats_into needs.
inline int64_t stats_workspace_bytes() {
  return kStatsWorkspaceHeader + kStatsMaxBlocks * static_cast<int64_t>(sizeof(StatsAcc));
}

// Blocks to give a tensor of `values` values on CUDA (fixed by size alone, so results do not
// depend on the device model): 16 values a thread up to 512 blocks (about one wave of 256-thread
// blocks on an H100), then more values a thread. Fewer, fuller blocks: each block's merge and
// the last block's merge of all partials are fixed costs that dominated tensors of a few MB.
inline int64_t stats_blocks_for(int64_t values) {
  constexpr int64_t kValuesPerBlock = 256 * 16;
  constexpr int64_t kMaxBlocksPerTensor = 512;
  static_assert(kMaxBlocksPerTensor <= kStatsMaxBlocks, "a tensor's partials fit the workspace");
  int64_t b = (values + kValuesPerBlock - 1) / kValuesPerBlock;
  return b < 1 ? 1 : (b > kMaxBlocksPerTensor ? kMaxBlocksPerTensor : b);
}

}  // namespace accdump
