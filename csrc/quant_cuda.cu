// CUDA kernels of block_dequantize and block_scaled_linear. No torch headers.
//
// The linear is a reference, not a production GEMM: operands are decoded to float32 on the fly
// (8-bit codes through a shared-memory table, E2M1 nibbles arithmetically), multiplied with
// float32 FMAs inside chunks of at most 128 values of K, and the chunk sums are accumulated in
// float64 in a fixed order. Two shapes of kernel here (the tensor-core one is in quant_mma.cu):
//  - skinny (M <= 8): each warp streams 4 weight rows with 16-byte loads and reuses every
//    decoded activation from shared memory for them (weight-bandwidth bound);
//  - tiled (M > 8, operands the tensor-core kernel cannot take exactly, or before sm_80): 64 x 128 or 128 x 128 output tiles, 16-wide K steps through double-buffered
//    shared memory, 4 x 8 or 8 x 8 outputs per thread; split along K (in 128-aligned ranges)
//    when the tiles alone cannot fill the GPU, the float64 partials then summed in split order by
//    a second kernel.
#include <algorithm>

#include "common/cuda_check.h"
#include "quant.h"
#include "quant_load.cuh"

namespace accdump {
namespace {

using namespace quant_load;


// Runs of 16 values per thread: one 16-byte (FP8) or 8-byte (FP4) load, four 16-byte stores.
// Each value is element * scale * global in float64, rounded once (as the CPU kernel does).
__global__ void dequantize_kernel(QuantOperand q, double global, float* out) {
  __shared__ float lut[256];
  fill_lut(lut, q.elem);
  __syncthreads();
  const int64_t runs_per_row = (q.cols + 15) / 16;
  const int64_t total = q.rows * runs_per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / runs_per_row, c0 = (i - r * runs_per_row) * 16;
    float* o = out + r * q.cols + c0;
    if (c0 + 16 > q.cols) {
      for (int64_t c = c0; c < q.cols; ++c)
        o[c - c0] = static_cast<float>(static_cast<double>(element_at(q, r, c)) *
                                       static_cast<double>(scale_at(q, r, c)) * global);
      continue;
    }
    float v[16];
    load_elements<16>(q, lut, r, c0, v);
    double s[16];
    if (q.scale == nullptr || one_scale<16>(q, c0)) {
      const double s0 = static_cast<double>(scale_at(q, r, c0));
#pragma unroll
      for (int j = 0; j < 16; ++j) s[j] = s0;
    } else {
#pragma unroll
      for (int j = 0; j < 16; ++j) s[j] = static_cast<double>(scale_at(q, r, c0 + j));
    }
    float res[16];
#pragma unroll
    for (int j = 0; j < 16; ++j) res[j] = static_cast<float>(static_cast<double>(v[j]) * s[j] * global);
    if ((reinterpret_cast<uintptr_t>(o) & 15) == 0) {
#pragma unroll
      for (int g = 0; g < 4; ++g)
        reinterpret_cast<float4*>(o)[g] = make_float4(res[4 * g], res[4 * g + 1], res[4 * g + 2], res[4 * g + 3]);
    } else {
#pragma unroll
      for (int j = 0; j < 16; ++j) o[j] = res[j];
    }
  }
}

// --- skinny: M <= 8 --------------------------------------------------------------------------
constexpr int kSkWarps = 4;
constexpr int kSkRows = 4;  // weight rows per warp
constexpr int kSkBytes = 24 * 1024;  // shared memory for one step's decoded activations

// K values per step: as many as fit in kSkBytes for MR rows, in groups of 16 (one group per lane
// per pass); each group padded to 17 floats so that lanes read distinct banks.
template <int MR>
constexpr int sk_chunk() { return kSkBytes / (4 * MR) / 17 * 16 / 512 * 512; }

template <int MR>
__global__ void __launch_bounds__(kSkWarps * 32) linear_skinny_kernel(QuantOperand x, QuantOperand w,
                                                                      LinearParams p, float* out) {
  constexpr int kChunk = sk_chunk<MR>();
  constexpr int kPasses = kChunk / 512;  // 32 lanes x 16 values per pass
  __shared__ float xs[MR][kChunk / 16 * 17];
  __shared__ float lut_x[256], lut_w[256];
  fill_lut(lut_x, x.elem);
  fill_lut(lut_w, w.elem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kSkWarps + warp) * kSkRows;
  double acc[kSkRows][MR];
#pragma unroll
  for (int r = 0; r < kSkRows; ++r)
#pragma unroll
    for (int m = 0; m < MR; ++m) acc[r][m] = 0.0;
  for (int64_t k0 = 0; k0 < x.cols; k0 += kChunk) {
    __syncthreads();  // the previous step's activations are consumed (and the tables filled)
    for (int run = threadIdx.x; run < MR * (kChunk / 8); run += blockDim.x) {
      const int m = run / (kChunk / 8), c = (run % (kChunk / 8)) * 8;
      float v[8];
      load_run<8>(x, lut_x, m, k0 + c, v);
      float* dst = &xs[m][(c / 16) * 17 + (c % 16)];
#pragma unroll
      for (int j = 0; j < 8; ++j) dst[j] = v[j];
    }
    __syncthreads();
#pragma unroll 2
    for (int pass = 0; pass < kPasses; ++pass) {
      const int group = pass * 32 + lane;
      if (k0 + group * 16 >= x.cols) break;
      float wv[kSkRows][16];
#pragma unroll
      for (int r = 0; r < kSkRows; ++r) load_run<16>(w, lut_w, n0 + r, k0 + group * 16, wv[r]);
      float part[kSkRows][MR];
#pragma unroll
      for (int r = 0; r < kSkRows; ++r)
#pragma unroll
        for (int m = 0; m < MR; ++m) part[r][m] = 0.0f;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
#pragma unroll
        for (int m = 0; m < MR; ++m) {
          const float xv = xs[m][group * 17 + j];
#pragma unroll
          for (int r = 0; r < kSkRows; ++r) part[r][m] = fmaf(wv[r][j], xv, part[r][m]);
        }
      }
#pragma unroll
      for (int r = 0; r < kSkRows; ++r)
#pragma unroll
        for (int m = 0; m < MR; ++m) acc[r][m] += static_cast<double>(part[r][m]);
    }
  }
#pragma unroll
  for (int r = 0; r < kSkRows; ++r)
#pragma unroll
    for (int m = 0; m < MR; ++m)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[r][m] += __shfl_down_sync(0xffffffffu, acc[r][m], off);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kSkRows; ++r) {
      const int64_t n = n0 + r;
      if (n >= w.rows) break;
#pragma unroll
      for (int m = 0; m < MR; ++m)
        if (m < x.rows) out[m * w.rows + n] = finish(acc[r][m], p, n);
    }
  }
}

// --- tiled: M > 8 ----------------------------------------------------------------------------
// Tile BM x 128 with BM = 16 * TM; 256 threads, each TM x 8 outputs; K in steps of 16 through
// double-buffered shared memory (the next step's global loads are in flight during the math).
constexpr int kBN = 128, kBK = 16, kTiledThreads = 256;

template <int TM>
__global__ void __launch_bounds__(kTiledThreads) linear_tiled_kernel(QuantOperand x, QuantOperand w,
                                                                     LinearParams p, int64_t k_per_split,
                                                                     double* partials, float* out) {
  constexpr int kBM = 16 * TM;
  constexpr int kXThreadsPerRow = kBK / TM;  // activations: TM consecutive values per thread
  __shared__ __align__(16) float as[2][kBK][kBM + 4];
  __shared__ __align__(16) float bs[2][kBK][kBN + 4];
  __shared__ float lut_x[256], lut_w[256];
  fill_lut(lut_x, x.elem);
  fill_lut(lut_w, w.elem);
  __syncthreads();
  const int tid = threadIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM, n0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const int64_t kb = static_cast<int64_t>(blockIdx.z) * k_per_split;
  const int64_t ke = min(x.cols, kb + k_per_split);
  const int xr = tid / kXThreadsPerRow, xc = (tid % kXThreadsPerRow) * TM;
  const int wr = tid / 2, wc = (tid % 2) * 8;  // weights: 128 rows x 16, 8 per thread
  const int ty = tid / 16, tx = tid % 16;      // outputs: rows ty*TM.., columns tx*4.. and 64+tx*4..
  float acc[TM][8];
  double acc64[TM][8];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f, acc64[i][j] = 0.0;
  float xv[TM], wv[8];
  auto load = [&](int64_t k0) {
    load_run<TM>(x, lut_x, m0 + xr, k0 + xc, xv);
    load_run<8>(w, lut_w, n0 + wr, k0 + wc, wv);
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int j = 0; j < TM; ++j) as[buf][xc + j][xr] = xv[j];
#pragma unroll
    for (int j = 0; j < 8; ++j) bs[buf][wc + j][wr] = wv[j];
  };
  int steps = 0, buf = 0;
  if (kb < ke) {
    load(kb);
    store(0);
  }
  __syncthreads();
  for (int64_t k0 = kb; k0 < ke; k0 += kBK) {
    const bool more = k0 + kBK < ke;
    if (more) load(k0 + kBK);
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float av[TM];
#pragma unroll
      for (int i = 0; i < TM; i += 4) {
        const float4 a = *reinterpret_cast<const float4*>(&as[buf][kk][ty * TM + i]);
        av[i] = a.x, av[i + 1] = a.y, av[i + 2] = a.z, av[i + 3] = a.w;
      }
      const float4 b0 = *reinterpret_cast<const float4*>(&bs[buf][kk][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&bs[buf][kk][64 + tx * 4]);
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    if (more) store(buf ^ 1);
    __syncthreads();
    buf ^= 1;
    if (++steps == kLinearChunk / kBK || !more) {
      steps = 0;
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc64[i][j] += static_cast<double>(acc[i][j]), acc[i][j] = 0.0f;
    }
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + ty * TM + i;
    if (m >= x.rows) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t n = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + (j - 4));
      if (n >= w.rows) continue;
      if (partials != nullptr) {
        partials[(static_cast<int64_t>(blockIdx.z) * x.rows + m) * w.rows + n] = acc64[i][j];
      } else {
        out[m * w.rows + n] = finish(acc64[i][j], p, n);
      }
    }
  }
}

__global__ void sum_splits_kernel(const double* partials, int64_t splits, int64_t m, int64_t n,
                                  LinearParams p, float* out) {
  const int64_t total = m * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double s = 0.0;
    for (int64_t z = 0; z < splits; ++z) s += partials[z * total + i];
    out[i] = finish(s, p, i % n);
  }
}

int grid_for(int64_t total, int threads) {
  return static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 65535 * 8));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

void launch_block_dequantize_cuda(const QuantOperand& q, double global, float* out, cudaStream_t stream) {
  const int64_t runs = q.rows * ((q.cols + 15) / 16);
  if (runs == 0) return;
  dequantize_kernel<<<grid_for(runs, 256), 256, 0, stream>>>(q, global, out);
  ACCDUMP_LAUNCH_CHECK();
}

// Rows per tile of the tiled kernel for M rows: 128 once M fills them, else 64.
int tile_rows(int64_t m) { return m >= 128 ? 128 : 64; }

int64_t linear_splits_cuda(const QuantOperand& x, const QuantOperand& w, int sm_count, int cc_major) {
  const int64_t m = x.rows, n = w.rows, k = x.cols;
  if (m <= kSkinnyMaxRows) return 1;
  const int64_t rows = linear_uses_mma(x, w, cc_major) ? mma_tile_rows() : tile_rows(m);
  const int64_t tiles = ceil_div(m, rows) * ceil_div(n, kBN);
  const int64_t want = ceil_div(2 * static_cast<int64_t>(sm_count), tiles);
  const int64_t most = std::max<int64_t>(1, k / 512);  // every split keeps >= 512 values of K
  const int64_t splits = std::max<int64_t>(1, std::min(want, most));
  const int64_t per = ceil_div(ceil_div(k, splits), kLinearChunk) * kLinearChunk;
  return std::max<int64_t>(1, ceil_div(k, std::max<int64_t>(per, 1)));
}

void launch_block_scaled_linear_cuda(const QuantOperand& x, const QuantOperand& w, const LinearParams& p,
                                     int cc_major, int64_t splits, double* workspace, void* planes, float* out,
                                     cudaStream_t stream) {
  const int64_t m = x.rows, n = w.rows, k = x.cols;
  if (m == 0 || n == 0) return;
  if (m <= kSkinnyMaxRows) {
    const dim3 grid(static_cast<unsigned>(ceil_div(n, kSkWarps * kSkRows)));
    const int threads = kSkWarps * 32;
    if (m == 1) linear_skinny_kernel<1><<<grid, threads, 0, stream>>>(x, w, p, out);
    else if (m == 2) linear_skinny_kernel<2><<<grid, threads, 0, stream>>>(x, w, p, out);
    else if (m <= 4) linear_skinny_kernel<4><<<grid, threads, 0, stream>>>(x, w, p, out);
    else linear_skinny_kernel<8><<<grid, threads, 0, stream>>>(x, w, p, out);
    ACCDUMP_LAUNCH_CHECK();
    return;
  }
  if (linear_uses_mma(x, w, cc_major)) {
    launch_block_scaled_linear_mma(x, w, p, cc_major, splits, workspace, planes, out, stream);
  } else {
    const int64_t per = splits > 1 ? ceil_div(ceil_div(k, splits), kLinearChunk) * kLinearChunk : std::max<int64_t>(k, 1);
    const int bm = tile_rows(m);
    const dim3 grid(static_cast<unsigned>(ceil_div(n, kBN)), static_cast<unsigned>(ceil_div(m, bm)),
                    static_cast<unsigned>(splits));
    double* partials = splits > 1 ? workspace : nullptr;
    if (bm == 128) linear_tiled_kernel<8><<<grid, kTiledThreads, 0, stream>>>(x, w, p, per, partials, out);
    else linear_tiled_kernel<4><<<grid, kTiledThreads, 0, stream>>>(x, w, p, per, partials, out);
    ACCDUMP_LAUNCH_CHECK();
  }
  if (splits > 1) {
    sum_splits_kernel<<<grid_for(m * n, 256), 256, 0, stream>>>(workspace, splits, m, n, p, out);
    ACCDUMP_LAUNCH_CHECK();
  }
}

}  // namespace accdump
