// WKV7 recurrence (rwkv7-spec.md section 2 step 9, section 8): forward, backward, chunk
// transitions for splitting a sequence across blocks, and the batched generation step.
//
// Per head the fp32 state S is [N, N] (row i: value index, column j: key index):
//   S_t = S_{t-1} diag(d_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,   y_t = S_t r_t,
//   d_t = exp(-e^{-1/2} sigmoid(w_t)).
// A block owns one (sequence, head, time segment); N*SPLIT threads, SPLIT adjacent lanes share one
// row of S, so row sums are a few warp shuffles and there is no barrier inside a forward step.
// No torch headers here: this file compiles fast and the binding (wkv7_binding.cpp) stays small.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "wkv7.h"

namespace wkv7 {

typedef __nv_bfloat16 bf16;

constexpr int L = 16;  // steps staged per shared-memory chunk == snapshot interval
constexpr float DECAY_SCALE = 0.60653065971263342f;  // e^{-1/2}

enum Mode { FWD = 0, FWD_TRANS = 1, BWD_TRANS = 2 };

// Column (or row) held by slice element e of lane q: groups of 4 consecutive indices, interleaved
// across the SPLIT lanes so a quarter-warp's 16-byte shared loads hit distinct banks.
template <int SPLIT>
__device__ __forceinline__ int slice_col(int q, int e) {
  return (e >> 2) * (4 * SPLIT) + q * 4 + (e & 3);
}

template <int SPLIT>
__device__ __forceinline__ float lane_sum(float x) {
#pragma unroll
  for (int o = 1; o < SPLIT; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ void seq_range(const int* cu, int n, int T, int& bos, int& eos) {
  if (cu) {
    bos = cu[n];
    eos = cu[n + 1];
  } else {
    bos = n * T;
    eos = bos + T;
  }
}

__device__ __forceinline__ float decay_of(float z) { return __expf(-DECAY_SCALE / (1.f + __expf(-z))); }

// Snapshot slot of chunk c of the sequence starting at bos (n-th sequence). Slots never overlap:
// bos/16 + n + ceil(len/16) <= (bos+len)/16 + n + 1. Total slots: T_total/16 + n_seqs.
__device__ __forceinline__ size_t snap_slot(int bos, int n, int c) { return (size_t)(bos / L + n + c); }

__device__ __forceinline__ void bf16x4_to_f(uint2 u, float out[4]) {
  __nv_bfloat162 lo = *reinterpret_cast<__nv_bfloat162*>(&u.x);
  __nv_bfloat162 hi = *reinterpret_cast<__nv_bfloat162*>(&u.y);
  float2 a = __bfloat1622float2(lo), b = __bfloat1622float2(hi);
  out[0] = a.x;
  out[1] = a.y;
  out[2] = b.x;
  out[3] = b.y;
}

// Registers that hold the next chunk of NA bf16 arrays while the current chunk is computed.
template <int N, int THREADS, int NA>
struct ChunkPrefetch {
  static constexpr int ITEMS = L * N / 4;  // uint2 (4 x bf16) per array per chunk
  static constexpr int PF = (ITEMS + THREADS - 1) / THREADS;
  uint2 buf[NA][PF];

  __device__ __forceinline__ void load(const bf16* const (&ptr)[NA], int c0, int n, int H, int h) {
#pragma unroll
    for (int p = 0; p < PF; ++p) {
      const int it = threadIdx.x + p * THREADS;
      const int lt = it / (N / 4), n4 = it % (N / 4);
      const bool ok = it < ITEMS && lt < n;
      const size_t off = ((size_t)(c0 + lt) * H + h) * N + n4 * 4;
#pragma unroll
      for (int a = 0; a < NA; ++a) {
        buf[a][p] = (ok && ptr[a]) ? __ldg(reinterpret_cast<const uint2*>(ptr[a] + off)) : make_uint2(0, 0);
      }
    }
  }
  // dst[a] points at a [L][N] float array; array `decay_slot` is turned from z into d, and its
  // backward factor dd/dz is written to dwf when given.
  __device__ __forceinline__ void store(float* const (&dst)[NA], int decay_slot, float* dwf) const {
#pragma unroll
    for (int p = 0; p < PF; ++p) {
      const int it = threadIdx.x + p * THREADS;
      if (it >= ITEMS) continue;
      const int idx = it * 4;  // == lt * N + n4 * 4
#pragma unroll
      for (int a = 0; a < NA; ++a) {
        float f[4];
        bf16x4_to_f(buf[a][p], f);
        if (a == decay_slot) {
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const float sg = 1.f / (1.f + __expf(-f[u]));
            const float d = __expf(-DECAY_SCALE * sg);
            if (dwf) dwf[idx + u] = -DECAY_SCALE * sg * (1.f - sg) * d;
            f[u] = d;
          }
        }
        *reinterpret_cast<float4*>(dst[a] + idx) = make_float4(f[0], f[1], f[2], f[3]);
      }
    }
  }
};

template <int N, int SPLIT>
__device__ __forceinline__ void load_slice(const float* src_row, int q, float* x) {
  constexpr int COLS = N / SPLIT;
#pragma unroll
  for (int m = 0; m < COLS / 4; ++m) {
    const float4 t = *reinterpret_cast<const float4*>(src_row + m * 4 * SPLIT + q * 4);
    x[4 * m] = t.x;
    x[4 * m + 1] = t.y;
    x[4 * m + 2] = t.z;
    x[4 * m + 3] = t.w;
  }
}

template <int N, int SPLIT>
__device__ __forceinline__ void store_slice(float* dst_row, int q, const float* x) {
  constexpr int COLS = N / SPLIT;
#pragma unroll
  for (int m = 0; m < COLS / 4; ++m)
    *reinterpret_cast<float4*>(dst_row + m * 4 * SPLIT + q * 4) =
        make_float4(x[4 * m], x[4 * m + 1], x[4 * m + 2], x[4 * m + 3]);
}

template <int N, int SPLIT>
__device__ __forceinline__ float dot_slice(const float* x, const float* sm_row, int q) {
  constexpr int COLS = N / SPLIT;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};  // four chains: the dot product is on the critical path
#pragma unroll
  for (int m = 0; m < COLS / 4; ++m) {
    const float4 t = *reinterpret_cast<const float4*>(sm_row + m * 4 * SPLIT + q * 4);
    acc[0] += x[4 * m] * t.x;
    acc[1] += x[4 * m + 1] * t.y;
    acc[2] += x[4 * m + 2] * t.z;
    acc[3] += x[4 * m + 3] * t.w;
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// ------------------------------------------------------------------------------------------------
// Forward sweep (MODE FWD), or a segment's transition (FWD_TRANS: blockIdx.z&1 == 0 -> offset C from
// a zero state, 1 -> transition P from the identity without v k^T; BWD_TRANS: the same for the
// gradient recurrence X <- (X + dy r^T)(diag(d) + b a^T), walked backwards, v slot = dy).
template <int N, int SPLIT, int MODE>
__global__ void __launch_bounds__(N* SPLIT) fwd_kernel(int T, const int* __restrict__ cu, int H, int seg_len,
                                                       const bf16* r, const bf16* w, const bf16* k,
                                                       const bf16* v, const bf16* a, const bf16* b,
                                                       const float* __restrict__ s_in, bf16* __restrict__ y,
                                                       float* __restrict__ sa_out, float* __restrict__ snaps,
                                                       float* __restrict__ s_out) {
  constexpr int THREADS = N * SPLIT, COLS = N / SPLIT;
  constexpr bool TRANS = MODE != FWD;
  constexpr bool REV = MODE == BWD_TRANS;
  const int h = blockIdx.x, seq = blockIdx.y;
  const int nseg = TRANS ? gridDim.z / 2 : gridDim.z;
  const int s = TRANS ? blockIdx.z / 2 : blockIdx.z;
  const int z = TRANS ? (blockIdx.z & 1) : 0;
  if (MODE == FWD_TRANS && s == nseg - 1) return;  // nothing follows the last segment
  if (MODE == BWD_TRANS && s == 0) return;          // nothing precedes the first one
  const int tid = threadIdx.x, row = tid / SPLIT, q = tid % SPLIT;
  int bos, eos;
  seq_range(cu, seq, T, bos, eos);
  const int t0 = seg_len ? min(bos + s * seg_len, eos) : bos;
  const int t1 = seg_len ? min(t0 + seg_len, eos) : eos;
  const size_t NN = (size_t)N * N;

  __shared__ __align__(16) float sm[6][L][N];  // r, d, k, v (or dy), a, b
  __shared__ __align__(16) float sy[L][N], ssa[L][N];

  float X[COLS];
  if (TRANS) {
#pragma unroll
    for (int e = 0; e < COLS; ++e) X[e] = (z == 1 && slice_col<SPLIT>(q, e) == row) ? 1.f : 0.f;
  } else if (s_in) {
    load_slice<N, SPLIT>(s_in + ((size_t)(seq * nseg + s) * H + h) * NN + row * N, q, X);
  } else {
#pragma unroll
    for (int e = 0; e < COLS; ++e) X[e] = 0.f;
  }
  const bool inject = !(TRANS && z == 1);

  const bf16* const ptrs[6] = {r, w, MODE == BWD_TRANS ? nullptr : k, inject ? v : nullptr, a, b};
  float* const dst[6] = {&sm[0][0][0], &sm[1][0][0], &sm[2][0][0], &sm[3][0][0], &sm[4][0][0], &sm[5][0][0]};
  ChunkPrefetch<N, THREADS, 6> pf;
  const int nc = (t1 - t0 + L - 1) / L;
  auto chunk_start = [&](int ci) { return t0 + (REV ? nc - 1 - ci : ci) * L; };
  if (nc > 0) {
    const int c0 = chunk_start(0);
    pf.load(ptrs, c0, min(L, t1 - c0), H, h);
  }
  int prev_c0 = 0, prev_n = 0;
  for (int ci = 0; ci < nc; ++ci) {
    const int c0 = chunk_start(ci), n = min(L, t1 - c0);
    __syncthreads();  // the previous chunk is done with sm, sy, ssa
    if (MODE == FWD && ci > 0) {
      for (int it = tid; it < prev_n * N / 2; it += THREADS) {
        const int lt = it / (N / 2), n2 = (it % (N / 2)) * 2;
        const size_t off = ((size_t)(prev_c0 + lt) * H + h) * N + n2;
        *reinterpret_cast<__nv_bfloat162*>(y + off) = __floats2bfloat162_rn(sy[lt][n2], sy[lt][n2 + 1]);
        if (sa_out) *reinterpret_cast<float2*>(sa_out + off) = make_float2(ssa[lt][n2], ssa[lt][n2 + 1]);
      }
    }
    pf.store(dst, 1, nullptr);
    __syncthreads();
    if (ci + 1 < nc) {
      const int nx = chunk_start(ci + 1);
      pf.load(ptrs, nx, min(L, t1 - nx), H, h);
    }
    if (MODE == FWD && snaps) {  // chunk starts are snapshot points (segments are multiples of L)
      const size_t slot = snap_slot(bos, seq, (c0 - bos) / L);
      store_slice<N, SPLIT>(snaps + (slot * H + h) * NN + row * N, q, X);
    }
    if (!REV) {
      for (int lt = 0; lt < n; ++lt) {
        const float sa = lane_sum<SPLIT>(dot_slice<N, SPLIT>(X, sm[4][lt], q));
        const float vi = inject ? sm[3][lt][row] : 0.f;
#pragma unroll
        for (int m = 0; m < COLS / 4; ++m) {
          const int c = m * 4 * SPLIT + q * 4;
          const float4 d4 = *reinterpret_cast<const float4*>(&sm[1][lt][c]);
          const float4 b4 = *reinterpret_cast<const float4*>(&sm[5][lt][c]);
          const float4 k4 = *reinterpret_cast<const float4*>(&sm[2][lt][c]);
          X[4 * m] = X[4 * m] * d4.x + sa * b4.x + vi * k4.x;
          X[4 * m + 1] = X[4 * m + 1] * d4.y + sa * b4.y + vi * k4.y;
          X[4 * m + 2] = X[4 * m + 2] * d4.z + sa * b4.z + vi * k4.z;
          X[4 * m + 3] = X[4 * m + 3] * d4.w + sa * b4.w + vi * k4.w;
        }
        if (MODE == FWD) {
          const float yi = lane_sum<SPLIT>(dot_slice<N, SPLIT>(X, sm[0][lt], q));
          if (q == 0) {
            sy[lt][row] = yi;
            ssa[lt][row] = sa;
          }
        }
      }
    } else {
      for (int lt = n - 1; lt >= 0; --lt) {
        const float u = inject ? sm[3][lt][row] : 0.f;  // dy_i
#pragma unroll
        for (int m = 0; m < COLS / 4; ++m) {
          const float4 r4 = *reinterpret_cast<const float4*>(&sm[0][lt][m * 4 * SPLIT + q * 4]);
          X[4 * m] += u * r4.x;
          X[4 * m + 1] += u * r4.y;
          X[4 * m + 2] += u * r4.z;
          X[4 * m + 3] += u * r4.w;
        }
        const float sb = lane_sum<SPLIT>(dot_slice<N, SPLIT>(X, sm[5][lt], q));
#pragma unroll
        for (int m = 0; m < COLS / 4; ++m) {
          const int c = m * 4 * SPLIT + q * 4;
          const float4 d4 = *reinterpret_cast<const float4*>(&sm[1][lt][c]);
          const float4 a4 = *reinterpret_cast<const float4*>(&sm[4][lt][c]);
          X[4 * m] = X[4 * m] * d4.x + sb * a4.x;
          X[4 * m + 1] = X[4 * m + 1] * d4.y + sb * a4.y;
          X[4 * m + 2] = X[4 * m + 2] * d4.z + sb * a4.z;
          X[4 * m + 3] = X[4 * m + 3] * d4.w + sb * a4.w;
        }
      }
    }
    prev_c0 = c0;
    prev_n = n;
  }
  if (MODE == FWD) {
    __syncthreads();
    for (int it = tid; it < prev_n * N / 2; it += THREADS) {
      const int lt = it / (N / 2), n2 = (it % (N / 2)) * 2;
      const size_t off = ((size_t)(prev_c0 + lt) * H + h) * N + n2;
      *reinterpret_cast<__nv_bfloat162*>(y + off) = __floats2bfloat162_rn(sy[lt][n2], sy[lt][n2 + 1]);
      if (sa_out) *reinterpret_cast<float2*>(sa_out + off) = make_float2(ssa[lt][n2], ssa[lt][n2 + 1]);
    }
    if (s_out && s == nseg - 1) store_slice<N, SPLIT>(s_out + ((size_t)seq * H + h) * NN + row * N, q, X);
  } else {
    float* o = s_out + ((((size_t)seq * nseg + s) * 2 + z) * H + h) * NN;  // [seq, seg, {C,P}, H, N, N]
    store_slice<N, SPLIT>(o + row * N, q, X);
  }
}

// ------------------------------------------------------------------------------------------------
// Backward over one (sequence, head, segment), walking time downwards. Lane (p, q) holds
//   E  = dL/dS_t row p    (slice over columns),  ET = dL/dS_t column p (slice over rows),
//   ST = S_t column p     (slice over rows),
// so every sum over rows or columns is a lane-local dot plus shuffles. S_{t-1} comes from S_t by
// undoing the update (exact up to rounding, d >= 0.545), restarting from a snapshot every L steps.
template <int N, int SPLIT>
__global__ void __launch_bounds__(N* SPLIT) bwd_kernel(int T, const int* __restrict__ cu, int H, int seg_len,
                                                       const bf16* r, const bf16* w, const bf16* k,
                                                       const bf16* v, const bf16* a, const bf16* b,
                                                       const bf16* dy, const float* __restrict__ sa_saved,
                                                       const float* __restrict__ snaps,
                                                       const float* __restrict__ s_last,
                                                       const float* __restrict__ ds_in, bf16* __restrict__ dr,
                                                       bf16* __restrict__ dw, bf16* __restrict__ dk,
                                                       bf16* __restrict__ dv, bf16* __restrict__ da,
                                                       bf16* __restrict__ db, float* __restrict__ ds_out) {
  constexpr int THREADS = N * SPLIT, COLS = N / SPLIT;
  const int h = blockIdx.x, seq = blockIdx.y, nseg = gridDim.z, s = blockIdx.z;
  const int tid = threadIdx.x, p = tid / SPLIT, q = tid % SPLIT;
  int bos, eos;
  seq_range(cu, seq, T, bos, eos);
  const int t0 = seg_len ? min(bos + s * seg_len, eos) : bos;
  const int t1 = seg_len ? min(t0 + seg_len, eos) : eos;
  const size_t NN = (size_t)N * N;

  extern __shared__ __align__(16) float smem[];
  // inputs: r d k v a b dy sa dwf | dsa | outputs: dr dw dk dv da db ; each [L][N]
  float* const in_r = smem;
  float* const in_d = smem + 1 * L * N;
  float* const in_k = smem + 2 * L * N;
  float* const in_v = smem + 3 * L * N;
  float* const in_a = smem + 4 * L * N;
  float* const in_b = smem + 5 * L * N;
  float* const in_dy = smem + 6 * L * N;
  float* const in_sa = smem + 7 * L * N;
  float* const in_dwf = smem + 8 * L * N;
  float* const s_dsa = smem + 9 * L * N;
  float* const out = smem + 10 * L * N;  // 6 arrays: dr dw dk dv da db

  float E[COLS], ET[COLS], ST[COLS], SNAP[COLS];
  if (ds_in) {
    const float* src = ds_in + ((size_t)(seq * nseg + s) * H + h) * NN;
    load_slice<N, SPLIT>(src + p * N, q, E);
#pragma unroll
    for (int e = 0; e < COLS; ++e) ET[e] = src[(size_t)slice_col<SPLIT>(q, e) * N + p];
  } else {
#pragma unroll
    for (int e = 0; e < COLS; ++e) E[e] = ET[e] = 0.f;
  }
  {  // S at the segment's last step: the final state, or the snapshot taken right after it
    const float* src = (t1 == eos) ? s_last + ((size_t)seq * H + h) * NN
                                   : snaps + (snap_slot(bos, seq, (t1 - bos) / L) * H + h) * NN;
#pragma unroll
    for (int e = 0; e < COLS; ++e) ST[e] = src[(size_t)slice_col<SPLIT>(q, e) * N + p];
  }

  const bf16* const ptrs[7] = {r, w, k, v, a, b, dy};
  float* const dst[7] = {in_r, in_d, in_k, in_v, in_a, in_b, in_dy};
  ChunkPrefetch<N, THREADS, 7> pf;
  constexpr int SA_ITEMS = L * N / 4, SA_PF = (SA_ITEMS + THREADS - 1) / THREADS;
  float4 sa_buf[SA_PF];
  auto load_chunk = [&](int c0, int n) {
    pf.load(ptrs, c0, n, H, h);
#pragma unroll
    for (int pp = 0; pp < SA_PF; ++pp) {
      const int it = tid + pp * THREADS, lt = it / (N / 4), n4 = it % (N / 4);
      sa_buf[pp] = (it < SA_ITEMS && lt < n)
                       ? __ldg(reinterpret_cast<const float4*>(sa_saved + ((size_t)(c0 + lt) * H + h) * N + n4 * 4))
                       : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    // S_{c0-1}: the snapshot of this chunk (slot 0 of a sequence is its initial state)
    const float* src = snaps + (snap_slot(bos, seq, (c0 - bos) / L) * H + h) * NN;
#pragma unroll
    for (int e = 0; e < COLS; ++e) SNAP[e] = src[(size_t)slice_col<SPLIT>(q, e) * N + p];
  };
  auto flush = [&](int c0, int n) {
    for (int it = tid; it < n * N / 2; it += THREADS) {
      const int lt = it / (N / 2), n2 = (it % (N / 2)) * 2;
      const size_t off = ((size_t)(c0 + lt) * H + h) * N + n2;
      const int so = lt * N + n2;
      bf16* const outs[6] = {dr, dw, dk, dv, da, db};
#pragma unroll
      for (int g = 0; g < 6; ++g)
        *reinterpret_cast<__nv_bfloat162*>(outs[g] + off) =
            __floats2bfloat162_rn(out[g * L * N + so], out[g * L * N + so + 1]);
    }
  };

  const int nc = (t1 - t0 + L - 1) / L;
  if (nc > 0) {
    const int c0 = t0 + (nc - 1) * L;
    load_chunk(c0, min(L, t1 - c0));
  }
  int prev_c0 = 0, prev_n = 0;
  for (int ci = nc - 1; ci >= 0; --ci) {
    const int c0 = t0 + ci * L, n = min(L, t1 - c0);
    __syncthreads();
    if (ci < nc - 1) flush(prev_c0, prev_n);
    pf.store(dst, 1, in_dwf);
#pragma unroll
    for (int pp = 0; pp < SA_PF; ++pp) {
      const int it = tid + pp * THREADS;
      if (it < SA_ITEMS) *reinterpret_cast<float4*>(in_sa + it * 4) = sa_buf[pp];
    }
    float SN[COLS];
#pragma unroll
    for (int e = 0; e < COLS; ++e) SN[e] = SNAP[e];
    __syncthreads();
    if (ci > 0) load_chunk(t0 + (ci - 1) * L, L);

    for (int lt = n - 1; lt >= 0; --lt) {
      const float* rr = in_r + lt * N;
      const float* dd = in_d + lt * N;
      const float* kk = in_k + lt * N;
      const float* vv = in_v + lt * N;
      const float* aa = in_a + lt * N;
      const float* bb = in_b + lt * N;
      const float* gy = in_dy + lt * N;
      const float* sa = in_sa + lt * N;
      const float dy_p = gy[p], r_p = rr[p], d_p = dd[p], k_p = kk[p], a_p = aa[p], b_p = bb[p];
      float g_dr = 0.f, g_dv = 0.f, g_dsa = 0.f, g_dk = 0.f, g_db = 0.f, g_dd = 0.f;
#pragma unroll
      for (int m = 0; m < COLS / 4; ++m) {
        const int c = m * 4 * SPLIT + q * 4;
        const float4 dy4 = *reinterpret_cast<const float4*>(gy + c);
        const float4 r4 = *reinterpret_cast<const float4*>(rr + c);
        const float4 k4 = *reinterpret_cast<const float4*>(kk + c);
        const float4 b4 = *reinterpret_cast<const float4*>(bb + c);
        const float4 v4 = *reinterpret_cast<const float4*>(vv + c);
        const float4 sa4 = *reinterpret_cast<const float4*>(sa + c);
        const float dyv[4] = {dy4.x, dy4.y, dy4.z, dy4.w}, rv[4] = {r4.x, r4.y, r4.z, r4.w};
        const float kv[4] = {k4.x, k4.y, k4.z, k4.w}, bv[4] = {b4.x, b4.y, b4.z, b4.w};
        const float vv4[4] = {v4.x, v4.y, v4.z, v4.w}, sav[4] = {sa4.x, sa4.y, sa4.z, sa4.w};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int e = 4 * m + u;
          E[e] += dy_p * rv[u];
          ET[e] += dyv[u] * r_p;
          g_dr += ST[e] * dyv[u];
          g_dv += E[e] * kv[u];
          g_dsa += E[e] * bv[u];
          g_dk += ET[e] * vv4[u];
          g_db += ET[e] * sav[u];
        }
      }
      g_dsa = lane_sum<SPLIT>(g_dsa);
      if (q == 0) s_dsa[lt * N + p] = g_dsa;
      // S_{t-1}: undo this step, or take the snapshot at the chunk's first step
      if (lt == 0) {
#pragma unroll
        for (int e = 0; e < COLS; ++e) ST[e] = SN[e];
      } else {
        const float inv_d = 1.f / d_p;
#pragma unroll
        for (int m = 0; m < COLS / 4; ++m) {
          const int c = m * 4 * SPLIT + q * 4;
          const float4 v4 = *reinterpret_cast<const float4*>(vv + c);
          const float4 sa4 = *reinterpret_cast<const float4*>(sa + c);
          const float vv4[4] = {v4.x, v4.y, v4.z, v4.w}, sav[4] = {sa4.x, sa4.y, sa4.z, sa4.w};
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const int e = 4 * m + u;
            ST[e] = (ST[e] - sav[u] * b_p - vv4[u] * k_p) * inv_d;
          }
        }
      }
#pragma unroll
      for (int e = 0; e < COLS; ++e) g_dd += ET[e] * ST[e];
      g_dr = lane_sum<SPLIT>(g_dr);
      g_dv = lane_sum<SPLIT>(g_dv);
      g_dk = lane_sum<SPLIT>(g_dk);
      g_db = lane_sum<SPLIT>(g_db);
      g_dd = lane_sum<SPLIT>(g_dd);
      __syncthreads();  // every dsa_i of this step is in shared memory
      float g_da = 0.f;
      const float* dsa = s_dsa + lt * N;
#pragma unroll
      for (int m = 0; m < COLS / 4; ++m) {
        const int c = m * 4 * SPLIT + q * 4;
        const float4 g4 = *reinterpret_cast<const float4*>(dsa + c);
        const float4 d4 = *reinterpret_cast<const float4*>(dd + c);
        const float4 a4 = *reinterpret_cast<const float4*>(aa + c);
        const float gv[4] = {g4.x, g4.y, g4.z, g4.w}, dv4[4] = {d4.x, d4.y, d4.z, d4.w};
        const float av[4] = {a4.x, a4.y, a4.z, a4.w};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int e = 4 * m + u;
          g_da += ST[e] * gv[u];
          ET[e] = ET[e] * d_p + gv[u] * a_p;
          E[e] = E[e] * dv4[u] + g_dsa * av[u];
        }
      }
      g_da = lane_sum<SPLIT>(g_da);
      if (q == 0) {
        const int o = lt * N + p;
        out[0 * L * N + o] = g_dr;
        out[1 * L * N + o] = g_dd * in_dwf[o];
        out[2 * L * N + o] = g_dk;
        out[3 * L * N + o] = g_dv;
        out[4 * L * N + o] = g_da;
        out[5 * L * N + o] = g_db;
      }
    }
    prev_c0 = c0;
    prev_n = n;
  }
  __syncthreads();
  if (nc > 0) flush(prev_c0, prev_n);
  if (s == 0) store_slice<N, SPLIT>(ds_out + ((size_t)seq * H + h) * NN + p * N, q, E);
}

// S_in of every segment from the per-segment (offset, transition) pairs: X <- X P + C, walked
// forwards for the state and backwards for its gradient. One block per (sequence, head).
template <int N>
__global__ void __launch_bounds__(256) combine_kernel(int nseg, int H, int reverse, const float* __restrict__ trans,
                                                      const float* __restrict__ x0, float* __restrict__ x_out) {
  const int h = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x;
  const size_t NN = (size_t)N * N;
  __shared__ float Xs[N][N + 1];
  __shared__ float Ps[N][N + 1];
  for (int i = tid; i < N * N; i += 256) Xs[i / N][i % N] = x0 ? x0[((size_t)seq * H + h) * NN + i] : 0.f;
  for (int si = 0; si < nseg; ++si) {
    const int s = reverse ? nseg - 1 - si : si;
    __syncthreads();
    for (int i = tid; i < N * N; i += 256) x_out[(((size_t)seq * nseg + s) * H + h) * NN + i] = Xs[i / N][i % N];
    if (si == nseg - 1) break;
    const float* Cm = trans + ((((size_t)seq * nseg + s) * 2 + 0) * H + h) * NN;
    const float* Pm = trans + ((((size_t)seq * nseg + s) * 2 + 1) * H + h) * NN;
    for (int i = tid; i < N * N; i += 256) Ps[i / N][i % N] = Pm[i];
    __syncthreads();
    float acc[N * N / 256];
#pragma unroll
    for (int u = 0; u < N * N / 256; ++u) {
      const int i = tid + u * 256, row = i / N, col = i % N;
      float sacc = Cm[i];
#pragma unroll 8
      for (int kk = 0; kk < N; ++kk) sacc += Xs[row][kk] * Ps[kk][col];
      acc[u] = sacc;
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < N * N / 256; ++u) {
      const int i = tid + u * 256;
      Xs[i / N][i % N] = acc[u];
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host launchers (plain pointers; the torch binding validates shapes and allocates).

template <int N, int SPLIT>
static cudaError_t fwd_all(const FwdArgs& g, cudaStream_t st) {
  const dim3 blk(N * SPLIT);
  if (g.nseg <= 1) {
    fwd_kernel<N, SPLIT, FWD><<<dim3(g.H, g.n_seqs, 1), blk, 0, st>>>(g.T, g.cu, g.H, 0, g.r, g.w, g.k, g.v, g.a,
                                                                       g.b, g.s0, g.y, g.sa, g.snaps, g.s_last);
    return cudaGetLastError();
  }
  fwd_kernel<N, SPLIT, FWD_TRANS><<<dim3(g.H, g.n_seqs, 2 * g.nseg), blk, 0, st>>>(
      g.T, g.cu, g.H, g.seg_len, g.r, g.w, g.k, g.v, g.a, g.b, nullptr, nullptr, nullptr, nullptr, g.trans);
  combine_kernel<N><<<dim3(g.H, g.n_seqs), 256, 0, st>>>(g.nseg, g.H, 0, g.trans, g.s0, g.seg_state);
  fwd_kernel<N, SPLIT, FWD><<<dim3(g.H, g.n_seqs, g.nseg), blk, 0, st>>>(
      g.T, g.cu, g.H, g.seg_len, g.r, g.w, g.k, g.v, g.a, g.b, g.seg_state, g.y, g.sa, g.snaps, g.s_last);
  return cudaGetLastError();
}

template <int N, int SPLIT>
static cudaError_t bwd_all(const BwdArgs& g, cudaStream_t st) {
  const dim3 blk(N * SPLIT);
  const size_t shm = (size_t)16 * L * N * sizeof(float);
  cudaError_t err = cudaFuncSetAttribute(bwd_kernel<N, SPLIT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm);
  if (err != cudaSuccess) return err;
  const float* ds_in = g.ds_last;
  int seg_len = 0, nseg = 1;
  if (g.nseg > 1) {
    fwd_kernel<N, SPLIT, BWD_TRANS><<<dim3(g.H, g.n_seqs, 2 * g.nseg), blk, 0, st>>>(
        g.T, g.cu, g.H, g.seg_len, g.r, g.w, g.k, g.dy, g.a, g.b, nullptr, nullptr, nullptr, nullptr, g.trans);
    combine_kernel<N><<<dim3(g.H, g.n_seqs), 256, 0, st>>>(g.nseg, g.H, 1, g.trans, g.ds_last, g.seg_state);
    ds_in = g.seg_state;
    seg_len = g.seg_len;
    nseg = g.nseg;
  }
  bwd_kernel<N, SPLIT><<<dim3(g.H, g.n_seqs, nseg), blk, shm, st>>>(
      g.T, g.cu, g.H, seg_len, g.r, g.w, g.k, g.v, g.a, g.b, g.dy, g.sa, g.snaps, g.s_last, ds_in, g.dr, g.dw,
      g.dk, g.dv, g.da, g.db, g.ds0);
  return cudaGetLastError();
}

#define WKV7_DISPATCH(FN, ARGS, STREAM)                                                   \
  do {                                                                                    \
    if (ARGS.N != 64) return cudaErrorInvalidValue; /* other head sizes: add N here */    \
    switch (ARGS.split) {                                                                 \
      case 4: return FN<64, 4>(ARGS, STREAM);                                             \
      case 8: return FN<64, 8>(ARGS, STREAM);                                             \
      default: return cudaErrorInvalidValue;                                              \
    }                                                                                     \
  } while (0)

cudaError_t launch_forward(const FwdArgs& g, cudaStream_t stream) { WKV7_DISPATCH(fwd_all, g, stream); }
cudaError_t launch_backward(const BwdArgs& g, cudaStream_t stream) { WKV7_DISPATCH(bwd_all, g, stream); }

bool supported(int N, int split) { return N == 64 && (split == 4 || split == 8); }

}  // namespace wkv7
