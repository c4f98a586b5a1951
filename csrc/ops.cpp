// The whole native API of accdump: every op's schema, in one place.
// Kernels register per backend in <family>.cpp (CPU) and <family>_cuda_glue.cpp (CUDA).
#include <Python.h>
#include <torch/library.h>

#include "capture.h"
namespace accdump {
const char* cpu_stats_path();  // stats_cpu.cpp
}

namespace {
PyObject* cpu_stats_path(PyObject* /*self*/, PyObject* /*unused*/) {
  return PyUnicode_FromString(accdump::cpu_stats_path());
}
PyMethodDef module_methods[] = {
    {"cpu_stats_path", cpu_stats_path, METH_NOARGS,
     "the loop dense CPU statistics take here: 'avx2' or 'portable' (the same bits)"},
    {nullptr, nullptr, 0, nullptr}};
}  // namespace

extern "C" {
// `import accdump._C` loads this library so that the registrations below run; the module
// itself holds the recorder's native hot path: StepCapture, CallSite and CallFrame.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, module_methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && (accdump_add_capture_type(module) < 0 || accdump_add_call_types(module) < 0)) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

int64_t accdump_stats_workspace_size();

TORCH_LIBRARY(accdump, m) {
  // Statistics of one tensor in one pass, float64[13]: count, nan, +inf, -inf, zeros, min, max,
  // sum, mean, std (ddof 0), absmax, l2 norm, min |x| over non-zero finite values.
  // NaN/Inf are counted and excluded from the rest. Packed float4 counts two values per byte.
  m.def("tensor_stats(Tensor x) -> Tensor");
  // The same statistics for a list of tensors of any sizes and dtypes, float64[N, 13];
  // on CUDA one launch reads every tensor (plus one small launch that merges partials).
  m.def("tensor_stats_multi(Tensor[] xs) -> Tensor");
  // The statistics of x written into out[row] (float64 [R, 13]) with a single kernel launch.
  // `workspace` (uint8, stats_workspace_size() bytes, zero-filled once, then reused on one
  // stream) holds block partials and a completion counter; without it the extension keeps one
  // per (device, stream). The recorder's hot path; with a workspace it allocates nothing and is
  // safe inside CUDA graph capture.
  m.def("tensor_stats_into(Tensor x, Tensor(a!) out, int row, Tensor(b!)? workspace=None) -> ()");
  m.def("stats_workspace_size() -> int", &accdump_stats_workspace_size);
  // tensor_stats_into for many tensors: xs[i] into out[rows[i]], in one launch per 24 tensors
  // (descriptors passed as kernel parameters: nothing uploaded, safe inside CUDA graph capture),
  // bit-identical to tensor_stats_into of each. The recorder's path inside CUDA graphs.
  m.def("tensor_stats_multi_into(Tensor[] xs, Tensor(a!) out, int[] rows, Tensor(b!)? workspace=None) -> ()");
  // A 128-bit fingerprint of x's bytes in logical order into out[row] (int64 [R, 2]), for
  // bit-exactness checks between runs: lane k = numel + sum over 8-byte words w_i (zero-padded) of
  // mix_k(w_i, i) with wrap-around; the same function as accdump.capture.fingerprint.
  m.def("tensor_fingerprint_into(Tensor x, Tensor(a!) out, int row) -> ()");
  // tensor_fingerprint_into for many tensors: xs[i] into out[rows[i]], one launch per 64 tensors
  // (kernel parameters only: safe inside CUDA graph capture), the same fingerprints.
  m.def("tensor_fingerprint_multi_into(Tensor[] xs, Tensor(a!) out, int[] rows) -> ()");
  // Pairwise metrics of two same-shape floating tensors (dtypes may differ), float64[14]:
  // count, dot, sum a^2, sum b^2, max|a-b|, its flat index, sum|a-b|, sum (a-b)^2,
  // max |a-b|/max(|a|,eps), allclose failures (|a-b| > atol + rtol|b|), NaN mismatches,
  // Inf mismatches, non-finite positions, unequal positions.
  m.def("compare_metrics(Tensor a, Tensor b, float atol, float rtol, float eps) -> Tensor");
  // Per row over the last dimension, float64[R, 3]: cosine, max|a-b|, ||a-b|| / ||a||.
  m.def("rowwise_metrics(Tensor a, Tensor b) -> Tensor");
  // libhdf5's Fletcher-32 of a contiguous uint8 CPU tensor, bit for bit (the checksum its
  // fletcher32 filter stores after each chunk), so that dump chunks read directly are verified.
  m.def("fletcher32(Tensor data) -> int");
  // Block-scaled quantized tensors (shared/quant_formats.md). `element` names how q's bytes are
  // read (auto: from its dtype; e4m3fn, e4m3fnuz, e5m2, e5m2fnuz, e2m1 packed low nibble first,
  // u8 / i8 as integers, f64, f32, f16, bf16), `scale_format` likewise for the scales (adds e8m0).
  // float32 [R, C] with out[r, c] = q(r, c) * scale[r // block_rows, c // block_cols] * global_scale.
  m.def("block_dequantize(Tensor q, str element, Tensor? scale, str scale_format, int block_rows, "
        "int block_cols, float global_scale) -> Tensor");
  // Reference linear y = global_scale * x @ w^T + bias, float32 [M, N], with x [M, K] scaled per
  // 1 x x_block block and w [N, K] per block_rows x block_cols block. Each operand value is
  // element * scale rounded to float32; products and sums in float32 inside 128-wide chunks of K,
  // chunk sums accumulated in float64 in a fixed order (no TF32, deterministic). On CUDA (sm_80+,
  // M > 8) the products run on bf16 tensor cores wherever they stay exact (quant_mma.cu).
  m.def("block_scaled_linear(Tensor x, str x_element, Tensor? x_scale, str x_scale_format, int x_block, "
        "Tensor w, str w_element, Tensor? w_scale, str w_scale_format, int w_block_rows, int w_block_cols, "
        "float global_scale, Tensor? bias) -> Tensor");
}

// Statistics and metrics are not differentiable: let calls skip the autograd layer (and the
// boxing it would cost a 512-tensor list).
TORCH_LIBRARY_IMPL(accdump, Autograd, m) {
  m.impl("tensor_stats", torch::CppFunction::makeFallthrough());
  m.impl("tensor_stats_multi", torch::CppFunction::makeFallthrough());
  m.impl("tensor_stats_into", torch::CppFunction::makeFallthrough());
  m.impl("tensor_fingerprint_into", torch::CppFunction::makeFallthrough());
  m.impl("compare_metrics", torch::CppFunction::makeFallthrough());
  m.impl("rowwise_metrics", torch::CppFunction::makeFallthrough());
  m.impl("fletcher32", torch::CppFunction::makeFallthrough());
  m.impl("block_dequantize", torch::CppFunction::makeFallthrough());
  m.impl("block_scaled_linear", torch::CppFunction::makeFallthrough());
}
