// Shared glue of the stats ops: input checks and descriptors (torch side).
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

#include "common/tensor_view.h"
#include "stats.h"

namespace accdump {

// Descriptors for `xs`; layouts the kernels cannot walk are read from contiguous copies kept
// alive in `keep`. Checks dtypes and that all tensors share one device.
std::vector<TensorDesc> describe_stats_inputs(at::TensorList xs, const char* op,
                                              std::vector<at::Tensor>& keep);

// Checks the arguments of tensor_stats_into and describes x (copies it when needed, into keep).
TensorDesc check_stats_into(const at::Tensor& x, const at::Tensor& out, int64_t row,
                            const std::optional<at::Tensor>& workspace, at::Tensor& keep);

// Checks the arguments of tensor_stats_multi_into and describes each tensor (copies in keep).
std::vector<TensorDesc> check_stats_multi_into(at::TensorList xs, const at::Tensor& out, at::IntArrayRef rows,
                                               const std::optional<at::Tensor>& workspace,
                                               std::vector<at::Tensor>& keep);

// Checks the arguments of tensor_fingerprint_into; returns x contiguous (logical byte order).
at::Tensor check_fingerprint_into(const at::Tensor& x, const at::Tensor& out, int64_t row);

// Checks the arguments of tensor_fingerprint_multi_into; returns each x contiguous.
std::vector<at::Tensor> check_fingerprint_multi_into(at::TensorList xs, const at::Tensor& out, at::IntArrayRef rows);

// CPU statistics of one described tensor into out[kStatsFields].
void tensor_stats_cpu_kernel(const TensorDesc& d, double* out);
// The loop dense CPU statistics take in this process: "avx2" or "portable" (the same bits).
const char* cpu_stats_path();

// tensor_stats_into without the dispatcher, for the recorder's native capture (capture.cpp):
// the statistics of x into out[row] on x's device (CUDA: one launch on the current stream).
using StatsIntoRow = void (*)(const at::Tensor& x, at::Tensor& out, int64_t row);
void stats_into_row_cpu(const at::Tensor& x, at::Tensor& out, int64_t row);
// Set by the CUDA glue when the extension is built with CUDA; null otherwise.
extern StatsIntoRow stats_into_row_cuda;

// tensor_stats_multi_into without the dispatcher (the capture's deferred statistics): each x[i]
// into out[rows[i]], on out's device (CUDA: as few launches as the workspace allows, on the
// current stream; the same bits as one stats_into_row call per tensor).
using StatsMultiIntoRows = void (*)(at::TensorList xs, at::Tensor& out, at::IntArrayRef rows);
void stats_multi_into_rows_cpu(at::TensorList xs, at::Tensor& out, at::IntArrayRef rows);
extern StatsMultiIntoRows stats_multi_into_rows_cuda;

}  // namespace accdump
