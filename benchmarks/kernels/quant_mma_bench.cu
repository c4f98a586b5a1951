// Standalone timing of the tensor-core reference linear (csrc/quant_mma.cu) without PyTorch:
// builds FP8 128x128-block and NVFP4 weights of random codes, runs
// launch_block_scaled_linear_mma with its bf16 planes, checks sampled outputs against a float64
// sum on the host (relative error, quant.h's contract), and prints milliseconds and TFLOP/s.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -Icsrc benchmarks/kernels/quant_mma_bench.cu csrc/quant_mma.cu \
//        -o /tmp/quant_mma_bench && /tmp/quant_mma_bench [M N K [REPS [FLOAT32_X]]]
//
// It times the kernels alone (CUDA events around repeated launches), so it isolates changes to
// the GEMM from the host; benchmarks/bench_quant.py compares the whole op with PyTorch.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "quant.h"

using namespace accdump;

#define CHECK(call)                                                                          \
  do {                                                                                       \
    const cudaError_t e = (call);                                                            \
    if (e != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

namespace {

struct HostOperand {
  std::vector<uint8_t> data, scale;
  QuantOperand q{};
};

template <typename T>
void* upload(const std::vector<T>& v) {
  void* p = nullptr;
  CHECK(cudaMalloc(&p, v.size() * sizeof(T)));
  CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

uint8_t random_e4m3(std::mt19937& g) {
  for (;;) {
    const uint8_t b = static_cast<uint8_t>(g());
    if ((b & 0x7f) != 0x7f) return b;  // not NaN
  }
}

// x: values of a normal distribution, as bf16 (one plane in the GEMM) or float32 (three planes).
HostOperand make_x(int64_t m, int64_t k, bool float32, std::mt19937& g) {
  HostOperand h;
  std::normal_distribution<float> n;
  const int size = float32 ? 4 : 2;
  h.data.resize(m * k * size);
  for (int64_t i = 0; i < m * k; ++i) {
    const float f = n(g);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if (!float32) bits = ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);  // round to nearest even
    std::memcpy(&h.data[i * size], &bits, size);  // little-endian: the low half is the bf16
  }
  h.q.rows = m, h.q.cols = k, h.q.row_stride = k * size;
  h.q.elem = float32 ? DType::kFloat32 : DType::kBFloat16;
  h.q.scale = nullptr;
  h.q.block_r = h.q.block_c = 1;
  h.q.div_r = h.q.div_c = make_fast_div(1);
  return h;
}

// FP8 e4m3 codes with float32 scales per 128 x 128 block (DeepSeek's weight_scale_inv).
HostOperand make_fp8_block(int64_t n, int64_t k, std::mt19937& g) {
  HostOperand h;
  h.data.resize(n * k);
  for (auto& b : h.data) b = random_e4m3(g);
  const int64_t sr = (n + 127) / 128, sc = (k + 127) / 128;
  std::vector<float> s(sr * sc);
  std::uniform_real_distribution<float> u(1e-3f, 1e-2f);
  for (auto& v : s) v = u(g);
  h.scale.resize(s.size() * 4);
  std::memcpy(h.scale.data(), s.data(), h.scale.size());
  h.q.rows = n, h.q.cols = k, h.q.row_stride = k, h.q.elem = DType::kFloat8E4M3FN;
  h.q.scale_dtype = DType::kFloat32, h.q.scale_rows = sr, h.q.scale_cols = sc, h.q.scale_s0 = sc, h.q.scale_s1 = 1;
  h.q.block_r = h.q.block_c = 128;
  h.q.div_r = h.q.div_c = make_fast_div(128);
  return h;
}

// NVFP4: E2M1 pairs, an e4m3 scale per 16 values (plain row-major scales).
HostOperand make_nvfp4(int64_t n, int64_t k, std::mt19937& g) {
  HostOperand h;
  h.data.resize(n * k / 2);
  for (auto& b : h.data) b = static_cast<uint8_t>(g());
  h.scale.resize(n * (k / 16));
  for (auto& b : h.scale) b = random_e4m3(g) & 0x7f;
  h.q.rows = n, h.q.cols = k, h.q.row_stride = k / 2, h.q.elem = DType::kFloat4E2M1FNx2;
  h.q.scale_dtype = DType::kFloat8E4M3FN, h.q.scale_rows = n, h.q.scale_cols = k / 16;
  h.q.scale_s0 = k / 16, h.q.scale_s1 = 1, h.q.block_r = 1, h.q.block_c = 16;
  h.q.div_r = make_fast_div(1), h.q.div_c = make_fast_div(16);
  return h;
}

QuantOperand on_host(const HostOperand& h) {
  QuantOperand q = h.q;
  q.data = h.data.data();
  q.scale = h.scale.empty() ? nullptr : h.scale.data();
  return q;
}

QuantOperand on_device(const HostOperand& h) {
  QuantOperand q = h.q;
  q.data = upload(h.data);
  q.scale = h.scale.empty() ? nullptr : upload(h.scale);
  return q;
}

void run(const char* name, const HostOperand& hx, const HostOperand& hw, int reps) {
  const QuantOperand x = on_device(hx), w = on_device(hw);
  const int64_t m = x.rows, n = w.rows, k = x.cols;
  float* out = nullptr;
  void* planes = nullptr;
  CHECK(cudaMalloc(&out, m * n * sizeof(float)));
  const int64_t planes_bytes = linear_planes_bytes(x, w, 9);
  if (planes_bytes > 0) CHECK(cudaMalloc(&planes, planes_bytes));
  const LinearParams p{1.0, nullptr};
  auto once = [&] { launch_block_scaled_linear_mma(x, w, p, 9, 1, nullptr, planes, out, nullptr); };
  once();
  CHECK(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  CHECK(cudaEventRecord(a));
  for (int i = 0; i < reps; ++i) once();
  CHECK(cudaEventRecord(b));
  CHECK(cudaEventSynchronize(b));
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, a, b));
  ms /= reps;

  std::vector<float> y(m * n);
  CHECK(cudaMemcpy(y.data(), out, y.size() * sizeof(float), cudaMemcpyDeviceToHost));
  const QuantOperand xh = on_host(hx), wh = on_host(hw);
  std::mt19937 g(7);
  double err2 = 0, ref2 = 0;
  for (int s = 0; s < 256; ++s) {
    const int64_t i = g() % m, j = g() % n;
    double ref = 0;
    for (int64_t c = 0; c < k; ++c) ref += static_cast<double>(dequant_at(xh, i, c)) * dequant_at(wh, j, c);
    const double d = y[i * n + j] - ref;
    err2 += d * d, ref2 += ref * ref;
  }
  std::printf("%-10s M=%lld N=%lld K=%lld  %.3f ms  %.1f TFLOP/s  rel err %.2e (256 sampled outputs)\n", name,
              static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), ms,
              2.0 * m * n * k / (ms * 1e-3) / 1e12, std::sqrt(err2 / ref2));
  CHECK(cudaFree(out));
  if (planes) CHECK(cudaFree(planes));
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t m = argc > 1 ? std::atoll(argv[1]) : 2048, n = argc > 2 ? std::atoll(argv[2]) : 18432,
                k = argc > 3 ? std::atoll(argv[3]) : 7168;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 10;
  std::mt19937 g(1234);
  const HostOperand x = make_x(m, k, false, g), fp8 = make_fp8_block(n, k, g);
  run("fp8 block", x, fp8, reps);
  run("nvfp4", x, make_nvfp4(n, k, g), reps);
  if (argc <= 5 || std::atoi(argv[5]) != 0) run("fp8, x f32", make_x(m, k, true, g), fp8, reps);
  return 0;
}
