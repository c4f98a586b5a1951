// Tensor-core reference linear for M > 8 (no torch headers).
//
// The tensor cores (mma.sync m16n8k16, bf16 inputs, float32 accumulation) only ever see bf16
// numbers whose products are exact, so the result keeps the contract of the SIMT kernels:
//  - FP8, FP4 and 8-bit integer elements are exact in bf16. A block scale is folded into them
//    where the product stays exact (E4M3 scales of FP8/FP4 elements: at most 8 significant bits,
//    inside bf16's range: NVFP4), and is otherwise applied after the tensor cores ("promotion":
//    the float32 sums of each scale group of K are multiplied by the group's scales; FP8 with
//    float32 block scales, MX with E8M0 scales, 1 x 128 FP8 activation groups).
//  - Other activations (float32, float16, float64, or scaled where neither of the above applies)
//    are first rounded to float32 exactly as the SIMT kernels round them, then split into three
//    bf16 planes hi + mid + lo that sum to that float32 exactly; each plane is multiplied.
// Sums over at most 128 values of K stay float32; they are added to float64 accumulators (in
// registers where they fit, the rest in shared memory) in a fixed order, so results are
// deterministic and as accurate as the SIMT kernels' (quant_formats.md §6; quant.h).
//
// Tiles: 64 x 128 outputs per block of 8 warps (2 x 4), 32 x 32 per warp; K in steps of 32;
// blocks take the row tiles of a group first, so the blocks resident together share L2. Two
// ways of feeding them: below kPlanesMinRows rows, operands are decoded to bf16 on their way into
// double-buffered shared memory (weight-bandwidth bound at small M); from there on, both operands
// are decoded once into bf16 planes and a cp.async ring streams the planes (decoding inside the
// tiles would repeat it for every 64 rows and leave the kernel issue-bound).
#include <cuda_bf16.h>

#include <algorithm>
#include <numeric>

#include "common/cuda_check.h"
#include "quant.h"
#include "quant_load.cuh"

namespace accdump {
namespace {

using namespace quant_load;

constexpr int kBM = 64, kBN = 128, kBK = 32, kThreads = 256;
constexpr int kRow = kBK + 8;  // bf16 per shared row: 80 bytes, so ldmatrix's 8 rows hit 8 distinct bank groups
constexpr int kOuts = 32;      // outputs per thread

// How each operand reaches the tensor cores (chosen on the host by plan_mma).
struct MmaPlan {
  bool x_promote, w_promote;  // scale applied to the float32 sums of each group of K
  int group;                  // K values per promotion: 16..128, a power of two
};

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ldmatrix at an address in the shared window.
__device__ __forceinline__ void ldmatrix_x4_at(uint32_t (&r)[4], uint32_t a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#endif
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p) {
  ldmatrix_x4_at(r, shared_address(p));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// v = hi + mid + lo exactly (8 + 8 + 8 significant bits, each step truncating so nothing
// overflows); NaN and infinities go to hi alone.
__device__ __forceinline__ void split3(float v, float& hi, float& mid, float& lo) {
  if (!isfinite(v)) {
    hi = v, mid = 0.0f, lo = 0.0f;
    return;
  }
  hi = __bfloat162float(__float2bfloat16_rz(v));
  const float r = v - hi;
  mid = __bfloat162float(__float2bfloat16_rz(r));
  lo = r - mid;
}

// Values v[0 .. 2N) as bf16 pairs: one plane (exact by plan_mma), or three planes that sum to them.
template <int XS, int N>
__device__ __forceinline__ void pack_planes(const float* v, uint32_t (&u)[XS][N]) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if constexpr (XS == 1) {
      u[0][j] = pack_bf16(v[2 * j], v[2 * j + 1]);
    } else {
      float a[3], b[3];
      split3(v[2 * j], a[0], a[1], a[2]);
      split3(v[2 * j + 1], b[0], b[1], b[2]);
#pragma unroll
      for (int s = 0; s < 3; ++s) u[s][j] = pack_bf16(a[s], b[s]);
    }
  }
}

// Runs f(mi, nj, c) for each of this thread's 32 outputs of its warp's 32 x 32 (2 x 4 mma tiles of
// 16 x 8, 4 values each): row mi * 16 + 8 (c >> 1), column nj * 8 + (c & 1) from its first.
template <typename F>
__device__ __forceinline__ void for_each_output(F f) {
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int nj = 0; nj < 4; ++nj)
#pragma unroll
      for (int c = 0; c < 4; ++c) f(mi, nj, c);
}

// This thread's share of its warp's outputs: float32 sums of the current 128 values of K
// (promoted, if scaled) and, with kPromote, of the current scale group; every 128 values the sums
// go to float64 accumulators: the first kHeld outputs' in registers, the others' in
// acc64[kOuts - kHeld][kThreads] in shared memory. How many fit depends on the kernel (see
// planes_held): all in shared memory, the planes GEMM's updates of them were 40% of its
// shared-memory traffic, which bounded it; more registers than two blocks an SM allow ran 1.27x
// slower.
template <bool kPromote, int kHeld = 0>
struct WarpSums {
  float acc[2][4][4];
  float tmp[kPromote ? 2 : 1][4][4];
  double held[kHeld > 0 ? kHeld : 1];

  __device__ __forceinline__ void zero() {
    for_each_output([&](int mi, int nj, int c) {
      acc[mi][nj][c] = 0.0f;
      if constexpr (kPromote) tmp[mi][nj][c] = 0.0f;
    });
#pragma unroll
    for (int i = 0; i < kHeld; ++i) held[i] = 0.0;
  }

  // The float64 sum of output i = (mi * 4 + nj) * 4 + c.
  __device__ __forceinline__ double total(const double* acc64, int tid, int i) const {
    return i < kHeld ? held[i] : acc64[(i - kHeld) * kThreads + tid];
  }

  template <int XS>
  __device__ __forceinline__ void multiply(const uint32_t (&a)[XS][2][4], const uint32_t (&b)[4][2]) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int nj = 0; nj < 4; ++nj)
#pragma unroll
        for (int s = 0; s < XS; ++s) {
          if constexpr (kPromote) mma_bf16(tmp[mi][nj], a[s][mi], b[nj][0], b[nj][1]);
          else mma_bf16(acc[mi][nj], a[s][mi], b[nj][0], b[nj][1]);
        }
  }

  // The scale of output (mi, nj, c): sx at this thread's rows, sw at its columns, both staged in
  // shared memory, `stride` floats a row.
  static __device__ __forceinline__ float scale_of(const float* sx, const float* sw, int stride, int mi, int nj,
                                                   int c) {
    return sx[(mi * 16 + 8 * (c >> 1)) * stride] * sw[(nj * 8 + (c & 1)) * stride];
  }

  // Adds the group's sums times its scales.
  __device__ __forceinline__ void promote(const float* sx, const float* sw, int stride = 1) {
    if constexpr (kPromote) {
      for_each_output([&](int mi, int nj, int c) {
        acc[mi][nj][c] = fmaf(tmp[mi][nj][c], scale_of(sx, sw, stride, mi, nj, c), acc[mi][nj][c]);
        tmp[mi][nj][c] = 0.0f;
      });
    }
  }

  // Adds the group's sums unscaled (its scales were folded into the codes).
  __device__ __forceinline__ void absorb() {
    if constexpr (kPromote) {
      for_each_output([&](int mi, int nj, int c) { acc[mi][nj][c] += tmp[mi][nj][c], tmp[mi][nj][c] = 0.0f; });
    }
  }

  __device__ __forceinline__ void add64(double* acc64, int tid, int mi, int nj, int c, float v) {
    const int i = (mi * 4 + nj) * 4 + c;
    if (i < kHeld) held[i] += static_cast<double>(v);
    else acc64[(i - kHeld) * kThreads + tid] += static_cast<double>(v);
    acc[mi][nj][c] = 0.0f;
  }

  __device__ __forceinline__ void flush(double* acc64, int tid) {
    for_each_output([&](int mi, int nj, int c) { add64(acc64, tid, mi, nj, c, acc[mi][nj][c]); });
  }

  // flush() of sums that are one whole scale group: each times its scales first (in float32, as
  // promote() would round it), so no separate group sums are kept.
  __device__ __forceinline__ void flush_scaled(double* acc64, int tid, const float* sx, const float* sw, int stride) {
    for_each_output([&](int mi, int nj, int c) {
      add64(acc64, tid, mi, nj, c, acc[mi][nj][c] * scale_of(sx, sw, stride, mi, nj, c));
    });
  }
};

// The warp's mma fragments of one 16-value step of K: a_row(s, mi) and b_row(pair) give the shared
// address this lane hands ldmatrix for plane s, m tile mi / for n tiles 2 pair and 2 pair + 1.
template <int XS, typename ARow, typename BRow>
__device__ __forceinline__ void load_fragments(uint32_t (&a)[XS][2][4], uint32_t (&b)[4][2], ARow a_row, BRow b_row) {
#pragma unroll
  for (int s = 0; s < XS; ++s)
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) ldmatrix_x4(a[s][mi], a_row(s, mi));
#pragma unroll
  for (int pair = 0; pair < 2; ++pair) {
    uint32_t r[4];
    ldmatrix_x4(r, b_row(pair));
    b[2 * pair][0] = r[0], b[2 * pair][1] = r[1], b[2 * pair + 1][0] = r[2], b[2 * pair + 1][1] = r[3];
  }
}

constexpr int kGroupTiles = 16;  // row tiles a group of blocks walks first (4, 16 and 32 measured the same)

// The first output row and column of this block's tile. Blocks run in launch order, so
// consecutive blocks take the row tiles of a group of kGroupTiles first and then the next column
// tile: the blocks resident at one time share their x and w strips in L2 (row-major order over
// 144 column tiles made every block fetch its own w strip from DRAM: 55% of DRAM bandwidth and
// 29% L2 hits at M = 2048).
__device__ __forceinline__ void tile_origin(int64_t rows, int64_t cols, int64_t& m0, int64_t& n0) {
  const int tm = static_cast<int>((rows + kBM - 1) / kBM), tn = static_cast<int>((cols + kBN - 1) / kBN);
  const int pid = static_cast<int>(blockIdx.x), per_group = kGroupTiles * tn;
  const int first = pid / per_group * kGroupTiles, in_group = pid % per_group;
  const int size = min(tm - first, kGroupTiles);
  m0 = static_cast<int64_t>(first + in_group % size) * kBM;
  n0 = static_cast<int64_t>(in_group / size) * kBN;
}

// The float64 sums of this thread's outputs (rows m0 + mi * 16 + 8 h, columns n0 + nj * 8 + c) to
// `out`, or to this split's partials.
template <typename Sums>
__device__ __forceinline__ void write_outputs(const Sums& sums, const double* acc64, int tid, int64_t m0, int64_t n0,
                                              int64_t rows, int64_t cols, const LinearParams& p, double* partials,
                                              float* out) {
  for_each_output([&](int mi, int nj, int c) {
    const int64_t m = m0 + mi * 16 + 8 * (c >> 1), n = n0 + nj * 8 + (c & 1);
    if (m >= rows || n >= cols) return;
    const double v = sums.total(acc64, tid, (mi * 4 + nj) * 4 + c);
    if (partials != nullptr) partials[(static_cast<int64_t>(blockIdx.z) * rows + m) * cols + n] = v;
    else out[m * cols + n] = finish(v, p, n);
  });
}

template <int XS, bool kPromote>
__global__ void __launch_bounds__(kThreads, XS == 1 ? 2 : 1)
    linear_mma_kernel(QuantOperand x, QuantOperand w, LinearParams p, MmaPlan plan, int64_t k_per_split,
                      double* partials, float* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(16) unsigned char smem[];
  double* acc64 = reinterpret_cast<double*>(smem);  // [kOuts][kThreads]
  __nv_bfloat16* as = reinterpret_cast<__nv_bfloat16*>(acc64 + kOuts * kThreads);  // [2][XS][kBM][kRow]
  __nv_bfloat16* bs = as + 2 * XS * kBM * kRow;                                     // [2][kBN][kRow]
  float* lut_x = reinterpret_cast<float*>(bs + 2 * kBN * kRow);
  float* lut_w = lut_x + 256;
  float* sxs = lut_w + 256;           // kPromote: [2][2][kBM] x scales of each 16 values of a K step
  float* sws = sxs + 2 * 2 * kBM;     //           [2][2][kBN] w scales
  fill_lut(lut_x, x.elem);
  fill_lut(lut_w, w.elem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
#pragma unroll
  for (int i = 0; i < kOuts; ++i) acc64[i * kThreads + tid] = 0.0;
  __syncthreads();

  int64_t m0, n0;
  tile_origin(x.rows, w.rows, m0, n0);
  const int64_t kb = static_cast<int64_t>(blockIdx.z) * k_per_split;
  const int64_t ke = min(x.cols, kb + k_per_split);
  const int wm = (warp >> 2) * 32, wn = (warp & 3) * 32;  // this warp's 32 x 32 outputs
  const int g = lane >> 2, t = lane & 3;                   // mma fragment row and column pair
  const int xr = tid >> 2, xc = (tid & 3) * 8;              // loads: x 64 x 32, 8 values a thread
  const int wr = tid >> 1, wc = (tid & 1) * 16;             //        w 128 x 32, 16 values a thread

  // The next step's operands, already packed as bf16 pairs (few registers held across the math).
  uint32_t xp[XS][4], wp[8];
  float sx_next = 1.0f, sw_next = 1.0f;  // kPromote: this thread's share of the step's scales
  auto load = [&](int64_t k0) {
    if constexpr (kPromote) {
      const int64_t c = min(k0 + (tid & 1) * 16, x.cols - 1);
      if (plan.x_promote && tid < 2 * kBM) sx_next = scale_at(x, min(m0 + (tid >> 1), x.rows - 1), c);
      if (plan.w_promote) sw_next = scale_at(w, min(n0 + (tid >> 1), w.rows - 1), c);
    }
    float v[16];
    load_values<8>(x, lut_x, m0 + xr, k0 + xc, v, !plan.x_promote);
    pack_planes<XS, 4>(v, xp);
    load_values<16>(w, lut_w, n0 + wr, k0 + wc, v, !plan.w_promote);
#pragma unroll
    for (int j = 0; j < 8; ++j) wp[j] = pack_bf16(v[2 * j], v[2 * j + 1]);
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int s = 0; s < XS; ++s)
      *reinterpret_cast<uint4*>(as + ((buf * XS + s) * kBM + xr) * kRow + xc) =
          make_uint4(xp[s][0], xp[s][1], xp[s][2], xp[s][3]);
    uint4* dst = reinterpret_cast<uint4*>(bs + (buf * kBN + wr) * kRow + wc);
    dst[0] = make_uint4(wp[0], wp[1], wp[2], wp[3]);
    dst[1] = make_uint4(wp[4], wp[5], wp[6], wp[7]);
    if constexpr (kPromote) {
      if (tid < 2 * kBM) sxs[(buf * 2 + (tid & 1)) * kBM + (tid >> 1)] = sx_next;
      sws[(buf * 2 + (tid & 1)) * kBN + (tid >> 1)] = sw_next;
    }
  };

  WarpSums<kPromote> sums;
  sums.zero();

  int buf = 0;
  if (kb < ke) {
    load(kb);
    store(0);
  }
  __syncthreads();
  const int64_t group_mask = plan.group - 1;
  for (int64_t k0 = kb; k0 < ke; k0 += kBK) {
    const bool more = k0 + kBK < ke;
    if (more) load(k0 + kBK);
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      const int64_t k = k0 + ks * 16;
      if (k >= ke) break;
      uint32_t a[XS][2][4], b[4][2];
      load_fragments<XS>(
          a, b,
          [&](int s, int mi) {
            return as + ((buf * XS + s) * kBM + wm + mi * 16 + (lane & 15)) * kRow + ks * 16 + (lane >> 4) * 8;
          },
          [&](int pair) {
            return bs + (buf * kBN + wn + pair * 16 + (lane & 7) + ((lane >> 4) << 3)) * kRow + ks * 16 +
                   ((lane >> 3) & 1) * 8;
          });
      sums.multiply<XS>(a, b);
      const int64_t kn = k + 16;
      const bool last = kn >= ke;
      if (last || (kn & group_mask) == 0)
        sums.promote(sxs + (buf * 2 + ks) * kBM + wm + g, sws + (buf * 2 + ks) * kBN + wn + 2 * t);
      if (last || (kn & 127) == 0) sums.flush(acc64, tid);
    }
    if (more) store(buf ^ 1);
    __syncthreads();
    buf ^= 1;
  }

  write_outputs(sums, acc64, tid, m0 + wm + g, n0 + wn + 2 * t, x.rows, w.rows, p, partials, out);
#else
  __trap();  // plan_mma never chooses this kernel below sm_80
#endif
}

// --- two passes, for many rows (M >= kPlanesMinRows) ---------------------------------------------
// Decoding inside the tiles above costs ~75 instructions per mma. With many rows each weight value
// would be decoded ceil(M / 64) times, so both operands are first decoded once into zero-padded
// bf16 planes (rows padded to the tiles, K to 128), exactly as the tiles would hold them, and a
// plain bf16 GEMM streams the planes through a cp.async ring with no per-value work.
constexpr int kGStages = 3;

// Offset (in bf16) of 8-value piece `chunk` of row `row` in an unpadded 32-wide tile: the pieces
// are XOR-swizzled so that ldmatrix's 8 rows fall in 8 distinct bank groups (padding instead would
// not leave room for two blocks per SM).
__device__ __forceinline__ int swz(int row, int chunk) { return row * kBK + ((chunk ^ ((row >> 1) & 3)) << 3); }

__device__ __forceinline__ void cp_async16_at(uint32_t d, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
#endif
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) { cp_async16_at(shared_address(dst), src); }
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Planes [planes][rows_p][kp] of `q`: values (scaled unless `promoted` and not `*folded`) as one
// bf16 plane, or split into three; zeros past the operand. 16 values a thread.
template <int XS>
__global__ void decode_planes_kernel(QuantOperand q, bool promoted, const int* folded, int64_t rows_p, int64_t kp,
                                     __nv_bfloat16* out) {
  if (folded != nullptr && *folded) promoted = false;
  __shared__ float lut[256];
  fill_lut(lut, q.elem);
  __syncthreads();
  const int64_t runs_per_row = kp / 16, total = rows_p * runs_per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / runs_per_row, c0 = (i - r * runs_per_row) * 16;
    float v[16];
    load_values<16>(q, lut, r, c0, v, !promoted);
    uint32_t u[XS][8];
    pack_planes<XS, 8>(v, u);
#pragma unroll
    for (int s = 0; s < XS; ++s) {
      uint4* dst = reinterpret_cast<uint4*>(out + (s * rows_p + r) * kp + c0);
      dst[0] = make_uint4(u[s][0], u[s][1], u[s][2], u[s][3]);
      dst[1] = make_uint4(u[s][4], u[s][5], u[s][6], u[s][7]);
    }
  }
}

// Sets *folded to 0 when a power-of-two (E8M0) scale byte of `q` lies outside [lo, hi]: folding it
// into the codes could then leave bf16's range. NaN scales (0xff) fold as well as they promote.
__global__ void e8m0_fold_check_kernel(QuantOperand q, int lo, int hi, int* folded) {
  const int64_t total = q.scale_rows * q.scale_cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / q.scale_cols, c = i - r * q.scale_cols;
    const int b = static_cast<const uint8_t*>(q.scale)[r * q.scale_s0 + c * q.scale_s1];
    if (b != 0xff && (b < lo || b > hi)) *folded = 0;
  }
}

struct Planes {
  const __nv_bfloat16* a;  // [XS][mp][kp]
  const __nv_bfloat16* b;  // [np][kp]
  // scales applied after the tensor cores, as planes [kp / 32][mp or np][2]: the scale of each 16
  // values of K of each row, a K step's contiguous (copied with the tiles); nullptr: none
  const float* sx;
  const float* sw;
  int64_t mp, np, kp;
  const int* folded;       // non-null: *folded != 0 when w's scales were folded into its plane
  int run_if_folded;       // -1: always run; 0 / 1: only when *folded is 0 / not 0
};

// How the planes GEMM applies scales that stay out of the planes.
enum PlanesMode : int {
  kPlain = 0,          // none (folded into the planes, or none at all)
  kPromoteGroups = 1,  // each scale group's float32 sums times its scales (groups under 128)
  kScaledFlush = 2,    // groups of 128: the sums flushed every 128 values of K are the group's
};

// Outputs of its 32 a thread of the planes GEMM sums in float64 registers (the rest in shared
// memory), by x planes and PlanesMode. With one plane of x, two blocks an SM leave 128 registers
// a thread: all 32 fit with kScaledFlush, 24 with kPlain (all 32 spilled a little and ran 7%
// slower), 8 with kPromoteGroups (its group sums take registers too). Three planes run one block
// an SM and hold them all.
__host__ __device__ constexpr int planes_held(int xs, int mode) {
  return xs != 1 ? 32 : mode == kPlain ? 24 : mode == kPromoteGroups ? 8 : 32;
}

// Scale planes (see Planes) of `q`: one scale per 16 values of K and row, rows and K padded (the
// padding repeats the last scale: its values are zeros).
__global__ void scale_planes_kernel(QuantOperand q, int64_t rows_p, int64_t kp, float* out) {
  const int64_t total = rows_p * (kp / 16);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = i & 1, r = (i >> 1) % rows_p, step = (i >> 1) / rows_p;
    const int64_t c = min(step * kBK + h * 16, q.cols - 1);
    out[i] = scale_at(q, min(r, q.rows - 1), c);
  }
}

template <int XS, int kMode>
__global__ void __launch_bounds__(kThreads, XS == 1 ? 2 : 1)
    linear_planes_kernel(Planes pl, QuantOperand x, QuantOperand w, LinearParams p, MmaPlan plan,
                         int64_t k_per_split, double* partials, float* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr bool kPromote = kMode == kPromoteGroups, kScales = kMode != kPlain;
  constexpr int kHeld = planes_held(XS, kMode);
  // One slot of the ring: XS planes of x (kBM rows each), then kBN rows of w, kBK values a row.
  constexpr int kSlotRows = XS * kBM + kBN;
  constexpr uint32_t kSlotBytes = kSlotRows * kBK * sizeof(__nv_bfloat16);
  constexpr uint32_t kPlaneBytes = kBM * kBK * sizeof(__nv_bfloat16);
  constexpr int kPieces = kSlotRows * (kBK / 8) / kThreads;  // 16-byte copies a thread per step
  static_assert(kSlotRows * (kBK / 8) % kThreads == 0 && kThreads / 4 == kBM, "piece j of a thread is x's iff j < XS");
  static_assert(kBM % 8 == 0 && kBN % 8 == 0, "planes and slots start on rows where swz() starts over");
  // MX weights whose fold is decided on the device: two launches, one of which returns here
  if (pl.run_if_folded >= 0 && (pl.folded != nullptr && *pl.folded ? 1 : 0) != pl.run_if_folded) return;
  extern __shared__ __align__(16) unsigned char smem[];
  double* acc64 = reinterpret_cast<double*>(smem);  // [kOuts - kHeld][kThreads]
  __nv_bfloat16* ring = reinterpret_cast<__nv_bfloat16*>(acc64 + (kOuts - kHeld) * kThreads);  // [S][kSlotRows][kBK]
  float* sxs = reinterpret_cast<float*>(ring + kGStages * kSlotRows * kBK);          // [S][kBM][2]
  float* sws = sxs + kGStages * 2 * kBM;                                              // [S][kBN][2]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
#pragma unroll
  for (int i = 0; i < kOuts - kHeld; ++i) acc64[i * kThreads + tid] = 0.0;
  if constexpr (kScales) {  // an operand without scales multiplies by ones
    if (pl.sx == nullptr)
      for (int i = tid; i < kGStages * 2 * kBM; i += kThreads) sxs[i] = 1.0f;
    if (pl.sw == nullptr)
      for (int i = tid; i < kGStages * 2 * kBN; i += kThreads) sws[i] = 1.0f;
  }

  int64_t m0, n0;
  tile_origin(x.rows, w.rows, m0, n0);
  const int64_t kb = static_cast<int64_t>(blockIdx.z) * k_per_split;
  const int64_t ke = min(x.cols, kb + k_per_split);
  const int64_t steps = (ke - kb + kBK - 1) / kBK;
  const int wm = (warp >> 2) * 32, wn = (warp & 3) * 32;
  const int g = lane >> 2, t = lane & 3;
  const bool folded = pl.folded != nullptr && *pl.folded;

  // Addresses are worked out once (the loop is issue-bound; recomputing them every step took more
  // instructions than the mma themselves): each thread copies the same pieces of every step, so
  // the sources advance by kBK values and the (swizzled) destinations are fixed offsets in a
  // slot; the swizzle depends on the row modulo 8 only, so planes and slots shift by constants.
  const uint32_t ring_base = shared_address(ring);
  const __nv_bfloat16* src[kPieces];
  uint32_t dst[kPieces];
#pragma unroll
  for (int j = 0; j < kPieces; ++j) {
    const int row = (tid >> 2) + j * kBM, chunk = tid & 3;
    if (j < XS) src[j] = pl.a + (j * pl.mp + m0 + (tid >> 2)) * pl.kp + kb + chunk * 8;
    else src[j] = pl.b + (n0 + row - XS * kBM) * pl.kp + kb + chunk * 8;
    dst[j] = static_cast<uint32_t>(swz(row, chunk) * sizeof(__nv_bfloat16));
  }
  uint32_t a_off[2][kBK / 16], b_off[2][kBK / 16];  // ldmatrix rows of this lane: m tile / n tile pair, K step
#pragma unroll
  for (int ks = 0; ks < kBK / 16; ++ks)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      a_off[i][ks] = static_cast<uint32_t>(swz(wm + i * 16 + (lane & 15), ks * 2 + (lane >> 4)) * sizeof(__nv_bfloat16));
      b_off[i][ks] = static_cast<uint32_t>(
          swz(XS * kBM + wn + i * 16 + (lane & 7) + ((lane >> 4) << 3), ks * 2 + ((lane >> 3) & 1)) *
          sizeof(__nv_bfloat16));
    }
  // the threads that copy scales: x's first kBM / 2, w's last kBN / 2 (two rows each)
  const bool copies_sx = pl.sx != nullptr && tid < kBM / 2, copies_sw = pl.sw != nullptr && tid >= kThreads - kBN / 2;
  const float* sx_src = copies_sx ? pl.sx + (kb / kBK * pl.mp + m0 + tid * 2) * 2 : nullptr;
  const float* sw_src = copies_sw ? pl.sw + (kb / kBK * pl.np + n0 + (tid - (kThreads - kBN / 2)) * 2) * 2 : nullptr;

  auto issue = [&](int64_t step, int slot) {
    if (step < steps) {
      const uint32_t base = ring_base + slot * kSlotBytes;
      const int64_t dk = step * kBK;
#pragma unroll
      for (int j = 0; j < kPieces; ++j) cp_async16_at(base + dst[j], src[j] + dk);
      if constexpr (kScales) {  // the step's scales: 2 a row, 2 rows a piece
        if (copies_sx) cp_async16(sxs + (slot * kBM + tid * 2) * 2, sx_src + step * pl.mp * 2);
        if (copies_sw) cp_async16(sws + (slot * kBN + (tid - (kThreads - kBN / 2)) * 2) * 2, sw_src + step * pl.np * 2);
      }
    }
    cp_async_commit();  // empty groups past the end keep the wait count uniform
  };

  WarpSums<kPromote, kHeld> sums;
  sums.zero();

#pragma unroll
  for (int s = 0; s < kGStages - 1; ++s) issue(s, s);
  const int64_t group_mask = plan.group - 1;
  int slot = 0;
  for (int64_t step = 0; step < steps; ++step) {
    cp_async_wait<kGStages - 2>();
    __syncthreads();  // this step's tiles are in; the slot refilled below has been consumed
    issue(step + kGStages - 1, slot == 0 ? kGStages - 1 : slot - 1);
    const uint32_t base = ring_base + slot * kSlotBytes;
    const int64_t k0 = kb + step * kBK;
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      const int64_t k = k0 + ks * 16;
      if (k >= ke) break;
      uint32_t a[XS][2][4], b[4][2];
#pragma unroll
      for (int s = 0; s < XS; ++s)
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) ldmatrix_x4_at(a[s][mi], base + s * kPlaneBytes + a_off[mi][ks]);
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        uint32_t r[4];
        ldmatrix_x4_at(r, base + b_off[pair][ks]);
        b[2 * pair][0] = r[0], b[2 * pair][1] = r[1], b[2 * pair + 1][0] = r[2], b[2 * pair + 1][1] = r[3];
      }
      sums.multiply<XS>(a, b);
      const int64_t kn = k + 16;
      const bool last = kn >= ke;
      const float* sx = sxs + (slot * kBM + wm + g) * 2 + ks;
      const float* sw = sws + (slot * kBN + wn + 2 * t) * 2 + ks;
      if constexpr (kPromote) {
        if (last || (kn & group_mask) == 0) {
          if (folded) sums.absorb();
          else sums.promote(sx, sw, 2);
        }
      }
      if (last || (kn & 127) == 0) {
        if constexpr (kMode == kScaledFlush) sums.flush_scaled(acc64, tid, sx, sw, 2);
        else sums.flush(acc64, tid);
      }
    }
    slot = slot + 1 == kGStages ? 0 : slot + 1;
  }
  cp_async_wait<0>();

  write_outputs(sums, acc64, tid, m0 + wm + g, n0 + wn + 2 * t, x.rows, w.rows, p, partials, out);
#else
  __trap();
#endif
}

bool exact_in_bf16(DType t) {
  switch (t) {
    case DType::kFloat8E4M3FN:
    case DType::kFloat8E4M3FNUZ:
    case DType::kFloat8E5M2:
    case DType::kFloat8E5M2FNUZ:
    case DType::kFloat4E2M1FNx2:
    case DType::kUInt8:
    case DType::kInt8:
    case DType::kBFloat16: return true;
    default: return false;
  }
}

// An E4M3 scale times an FP8 or FP4 element has at most 4 + 4 significant bits and stays inside
// bf16's normal range, so folding it into the element keeps the value exact.
bool folds_exactly(const QuantOperand& q) {
  const bool short_float = q.elem == DType::kFloat8E4M3FN || q.elem == DType::kFloat8E4M3FNUZ ||
                           q.elem == DType::kFloat8E5M2 || q.elem == DType::kFloat8E5M2FNUZ ||
                           q.elem == DType::kFloat4E2M1FNx2;
  return short_float && (q.scale_dtype == DType::kFloat8E4M3FN || q.scale_dtype == DType::kFloat8E4M3FNUZ);
}

// K values per promotion that keep one scale per group: 0 when the block is not a multiple of 16.
int promotion_group(const QuantOperand& q) {
  if (q.scale_cols <= 1) return 128;
  const int g = static_cast<int>(std::gcd<int64_t>(q.block_c, 128));
  return g % 16 == 0 ? g : 0;
}

// Whether the tensor-core kernel computes this linear exactly, and how; x_splits is 1 or 3.
bool plan_mma(const QuantOperand& x, const QuantOperand& w, int cc_major, MmaPlan& plan, int& x_splits) {
  if (cc_major < 8 || x.rows <= kSkinnyMaxRows) return false;
  plan = MmaPlan{false, false, 128};
  x_splits = 1;
  if (!exact_in_bf16(w.elem)) return false;
  if (w.scale != nullptr && !folds_exactly(w)) {
    const int gw = promotion_group(w);
    if (gw == 0) return false;
    plan.w_promote = true;
    plan.group = gw;
  }
  if (!exact_in_bf16(x.elem)) {
    x_splits = 3;
  } else if (x.scale != nullptr && !folds_exactly(x)) {
    const int gx = promotion_group(x);
    if (gx == 0) {
      x_splits = 3;  // the float32 value element * scale, split exactly
    } else {
      plan.x_promote = true;
      plan.group = std::min(plan.group, gx);
    }
  }
  return true;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t split_length(int64_t k, int64_t splits) {
  return splits > 1 ? ceil_div(ceil_div(k, splits), kLinearChunk) * kLinearChunk : std::max<int64_t>(k, 1);
}

dim3 grid_of(const QuantOperand& x, const QuantOperand& w, int64_t splits) {
  return dim3(static_cast<unsigned>(ceil_div(w.rows, kBN) * ceil_div(x.rows, kBM)), 1, static_cast<unsigned>(splits));
}

template <int XS, bool kPromote>
void launch(const QuantOperand& x, const QuantOperand& w, const LinearParams& p, const MmaPlan& plan,
            int64_t splits, double* workspace, float* out, cudaStream_t stream) {
  const size_t smem = sizeof(double) * kOuts * kThreads + sizeof(uint16_t) * (2 * XS * kBM + 2 * kBN) * kRow +
                      sizeof(float) * (512 + 4 * (kBM + kBN));
  ACCDUMP_CUDA_CHECK(cudaFuncSetAttribute(linear_mma_kernel<XS, kPromote>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  linear_mma_kernel<XS, kPromote><<<grid_of(x, w, splits), kThreads, smem, stream>>>(
      x, w, p, plan, split_length(x.cols, splits), splits > 1 ? workspace : nullptr, out);
  ACCDUMP_LAUNCH_CHECK();
}

int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

struct PlaneDims {
  int64_t mp, np, kp;
};

PlaneDims plane_dims(const QuantOperand& x, const QuantOperand& w) {
  return PlaneDims{round_up(x.rows, kBM), round_up(w.rows, kBN), round_up(x.cols, kLinearChunk)};
}

template <int XS>
void decode_planes(const QuantOperand& q, bool promoted, const int* folded, int64_t rows_p, int64_t kp,
                   __nv_bfloat16* out, cudaStream_t stream) {
  const int64_t runs = rows_p * (kp / 16);
  if (runs == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(runs, 256), 65535 * 8));
  decode_planes_kernel<XS><<<blocks, 256, 0, stream>>>(q, promoted, folded, rows_p, kp, out);
  ACCDUMP_LAUNCH_CHECK();
}

// E8M0 scale bytes for which element * scale stays a normal bf16 (or zero) for every code of the
// element format, so the scale folds into the codes exactly; false for formats not folded.
bool e8m0_fold_range(DType elem, int& lo, int& hi) {
  switch (elem) {
    case DType::kFloat4E2M1FNx2: lo = 2, hi = 252; return true;    // 0.5 .. 6
    case DType::kFloat8E4M3FN: lo = 10, hi = 246; return true;     // 2^-9 .. 448
    case DType::kFloat8E4M3FNUZ: lo = 11, hi = 247; return true;   // 2^-10 .. 240
    case DType::kFloat8E5M2: lo = 17, hi = 239; return true;       // 2^-16 .. 57344
    case DType::kFloat8E5M2FNUZ: lo = 18, hi = 239; return true;   // 2^-17 .. 57344
    default: return false;
  }
}

template <int XS, int kMode>
void run_planes_kernel(const Planes& pl, const QuantOperand& x, const QuantOperand& w, const LinearParams& p,
                       const MmaPlan& plan, int64_t splits, double* workspace, float* out, cudaStream_t stream) {
  const size_t smem = sizeof(double) * (kOuts - planes_held(XS, kMode)) * kThreads +
                      sizeof(uint16_t) * kGStages * (XS * kBM + kBN) * kBK + sizeof(float) * kGStages * 2 * (kBM + kBN);
  ACCDUMP_CUDA_CHECK(cudaFuncSetAttribute(linear_planes_kernel<XS, kMode>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  linear_planes_kernel<XS, kMode><<<grid_of(x, w, splits), kThreads, smem, stream>>>(
      pl, x, w, p, plan, split_length(x.cols, splits), splits > 1 ? workspace : nullptr, out);
  ACCDUMP_LAUNCH_CHECK();
}

void scale_planes(const QuantOperand& q, int64_t rows_p, int64_t kp, float* out, cudaStream_t stream) {
  const int64_t n = rows_p * (kp / 16);
  if (n == 0) return;
  scale_planes_kernel<<<static_cast<int>(std::min<int64_t>(ceil_div(n, 256), 65535 * 8)), 256, 0, stream>>>(q, rows_p, kp,
                                                                                                         out);
  ACCDUMP_LAUNCH_CHECK();
}

template <int XS>
void launch_planes(const QuantOperand& x, const QuantOperand& w, const LinearParams& p, const MmaPlan& plan,
                   int64_t splits, double* workspace, void* planes, float* out, cudaStream_t stream) {
  const PlaneDims d = plane_dims(x, w);
  __nv_bfloat16* a = static_cast<__nv_bfloat16*>(planes);
  __nv_bfloat16* b = a + XS * d.mp * d.kp;
  // MX weights: their power-of-two scales fold into the codes when every scale is in range (checked
  // on the device, so no host sync); the GEMM then skips the promotions.
  int* folded = nullptr;
  int lo, hi;
  if (plan.w_promote && !plan.x_promote && w.scale_dtype == DType::kFloat8E8M0FNU && e8m0_fold_range(w.elem, lo, hi)) {
    folded = reinterpret_cast<int*>(b + d.np * d.kp);
    ACCDUMP_CUDA_CHECK(cudaMemsetAsync(folded, 1, sizeof(int), stream));
    const int64_t n = w.scale_rows * w.scale_cols;
    if (n > 0) {
      e8m0_fold_check_kernel<<<static_cast<int>(std::min<int64_t>(ceil_div(n, 256), 4096)), 256, 0, stream>>>(w, lo, hi,
                                                                                                               folded);
      ACCDUMP_LAUNCH_CHECK();
    }
  }
  decode_planes<XS>(x, plan.x_promote, nullptr, d.mp, d.kp, a, stream);
  decode_planes<1>(w, plan.w_promote, folded, d.np, d.kp, b, stream);
  // the scales left out of the planes, as planes of their own after the fold flag's 16 bytes
  float* scales = reinterpret_cast<float*>(reinterpret_cast<char*>(b + d.np * d.kp) + 16);
  float* sx = plan.x_promote ? scales : nullptr;
  float* sw = plan.w_promote ? scales + (plan.x_promote ? d.mp * (d.kp / 16) : 0) : nullptr;
  if (sx != nullptr) scale_planes(x, d.mp, d.kp, sx, stream);
  if (sw != nullptr) scale_planes(w, d.np, d.kp, sw, stream);
  Planes pl{a, b, sx, sw, d.mp, d.np, d.kp, folded, -1};
  if (!plan.x_promote && !plan.w_promote) {
    run_planes_kernel<XS, kPlain>(pl, x, w, p, plan, splits, workspace, out, stream);
  } else if (folded != nullptr) {
    // the fold is known on the device only: a plain GEMM that runs if it held and the promoting one
    // otherwise; the other returns at once (a few microseconds)
    pl.run_if_folded = 1;
    run_planes_kernel<XS, kPlain>(pl, x, w, p, plan, splits, workspace, out, stream);
    pl.run_if_folded = 0;
    run_planes_kernel<XS, kPromoteGroups>(pl, x, w, p, plan, splits, workspace, out, stream);
  } else if (plan.group == 128) {
    run_planes_kernel<XS, kScaledFlush>(pl, x, w, p, plan, splits, workspace, out, stream);
  } else {
    run_planes_kernel<XS, kPromoteGroups>(pl, x, w, p, plan, splits, workspace, out, stream);
  }
}

}  // namespace

bool linear_uses_mma(const QuantOperand& x, const QuantOperand& w, int cc_major) {
  MmaPlan plan;
  int x_splits;
  return plan_mma(x, w, cc_major, plan, x_splits);
}

int64_t mma_tile_rows() { return kBM; }

int64_t linear_planes_bytes(const QuantOperand& x, const QuantOperand& w, int cc_major) {
  MmaPlan plan;
  int xs;
  if (x.rows < kPlanesMinRows || !plan_mma(x, w, cc_major, plan, xs)) return 0;
  const PlaneDims d = plane_dims(x, w);
  const int64_t scale_rows = (plan.x_promote ? d.mp : 0) + (plan.w_promote ? d.np : 0);
  // bf16 planes, the fold flag (16 bytes), float32 scale planes
  return static_cast<int64_t>(sizeof(uint16_t)) * (xs * d.mp + d.np) * d.kp + 16 +
         static_cast<int64_t>(sizeof(float)) * scale_rows * (d.kp / 16);
}

void launch_block_scaled_linear_mma(const QuantOperand& x, const QuantOperand& w, const LinearParams& p,
                                    int cc_major, int64_t splits, double* workspace, void* planes, float* out,
                                    cudaStream_t stream) {
  MmaPlan plan;
  int xs;
  if (!plan_mma(x, w, cc_major, plan, xs)) throw std::logic_error("accdump: tensor-core linear chosen for operands it cannot take");
  const bool promote = plan.x_promote || plan.w_promote;
  if (planes != nullptr) {
    if (xs == 1) launch_planes<1>(x, w, p, plan, splits, workspace, planes, out, stream);
    else launch_planes<3>(x, w, p, plan, splits, workspace, planes, out, stream);
  } else if (xs == 1 && promote) {
    launch<1, true>(x, w, p, plan, splits, workspace, out, stream);
  } else if (xs == 1) {
    launch<1, false>(x, w, p, plan, splits, workspace, out, stream);
  } else if (promote) {
    launch<3, true>(x, w, p, plan, splits, workspace, out, stream);
  } else {
    launch<3, false>(x, w, p, plan, splits, workspace, out, stream);
  }
}

}  // namespace accdump
