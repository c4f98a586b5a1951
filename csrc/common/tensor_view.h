// Glue helpers (torch side): map at::Tensor to the torch-free descriptors the kernels read.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "strided.h"

namespace accdump {

// "[4, 8]": a shape for error messages. (Integers are formatted with std::to_string rather than
// streamed: streaming them from extension code crashed against one torch build's libstdc++.)
std::string shape_str(at::IntArrayRef sizes);

// The kernels' dtype for a torch dtype; nullopt when accdump cannot read it.
std::optional<DType> dtype_of(at::ScalarType st);

// Like dtype_of, but raises a clear error naming `op` and `arg` for an unsupported dtype.
DType checked_dtype(const at::Tensor& t, const char* op, const char* arg, bool floating_only);

// A descriptor of `t`. With `any_order`, a dense tensor in any dimension order is read in
// memory order (for order-free reductions). Returns nullopt when the layout needs more than
// kMaxDims dimensions after merging, in which case callers read a contiguous copy.
std::optional<TensorDesc> describe(const at::Tensor& t, DType dtype, bool any_order);

// A joint descriptor of two same-shape tensors walked in logical order.
std::optional<PairDesc> describe_pair(const at::Tensor& a, DType da, const at::Tensor& b,
                                      DType db);

}  // namespace accdump
