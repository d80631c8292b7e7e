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

// Column slice of a row-major [N, N] matrix for column p (the transposed view of load_slice).
template <int N, int SPLIT>
__device__ __forceinline__ void load_col_slice(const float* src, int p, int q, float* x) {
#pragma unroll
  for (int e = 0; e < N / SPLIT; ++e) x[e] = src[(size_t)slice_col<SPLIT>(q, e) * N + p];
}

__device__ __forceinline__ void f4_to(const float4& t, float* o) {
  o[0] = t.x;
  o[1] = t.y;
  o[2] = t.z;
  o[3] = t.w;
}

// Sums each of R values over the SPLIT lanes of a row group; every lane gets all R sums. For two
// rows the first exchange swaps halves (reduce-scatter), so 2 rows cost one shuffle more than 1.
template <int SPLIT, int R>
__device__ __forceinline__ void rows_sum(float (&x)[R]) {
  if constexpr (R == 1) {
    x[0] = lane_sum<SPLIT>(x[0]);
  } else if constexpr (R == 2) {
    const bool hi = threadIdx.x & (SPLIT / 2);
    float keep = hi ? x[1] : x[0];
    keep += __shfl_xor_sync(0xffffffffu, hi ? x[0] : x[1], SPLIT / 2);
#pragma unroll
    for (int o = 1; o < SPLIT / 2; o <<= 1) keep += __shfl_xor_sync(0xffffffffu, keep, o);
    const float other = __shfl_xor_sync(0xffffffffu, keep, SPLIT / 2);
    x[0] = hi ? other : keep;
    x[1] = hi ? keep : other;
  } else {
#pragma unroll
    for (int i = 0; i < R; ++i) x[i] = lane_sum<SPLIT>(x[i]);
  }
}

// out[rr] = X[rr] . v over this lane's slice (partial; rows_sum completes it). Each shared vector
// element is loaded once for all R rows: shared-memory traffic, not FMAs, bounds a step.
template <int N, int SPLIT, int R>
__device__ __forceinline__ void dot_rows(const float (&X)[R][N / SPLIT], const float* sm_row, int q, float (&out)[R]) {
  constexpr int COLS = N / SPLIT;
  float acc[R][4];
#pragma unroll
  for (int rr = 0; rr < R; ++rr) acc[rr][0] = acc[rr][1] = acc[rr][2] = acc[rr][3] = 0.f;
#pragma unroll
  for (int m = 0; m < COLS / 4; ++m) {
    float t[4];
    f4_to(*reinterpret_cast<const float4*>(sm_row + m * 4 * SPLIT + q * 4), t);
#pragma unroll
    for (int rr = 0; rr < R; ++rr)
#pragma unroll
      for (int u = 0; u < 4; ++u) acc[rr][u] += X[rr][4 * m + u] * t[u];
  }
#pragma unroll
  for (int rr = 0; rr < R; ++rr) out[rr] = (acc[rr][0] + acc[rr][1]) + (acc[rr][2] + acc[rr][3]);
}

// ------------------------------------------------------------------------------------------------
// Forward sweep (MODE FWD), or a segment's transition (FWD_TRANS: blockIdx.z&1 == 0 -> offset C from
// a zero state, 1 -> transition P from the identity without v k^T; BWD_TRANS: the same for the
// gradient recurrence X <- (X + dy r^T)(diag(d) + b a^T), walked backwards, v slot = dy).
// A lane group of SPLIT lanes owns R consecutive rows; each lane a COLS-wide slice of them.
template <int N, int SPLIT, int R, int MODE>
__global__ void __launch_bounds__(N / R * SPLIT) fwd_kernel(int T, const int* __restrict__ cu, int H, int seg_len,
                                                            const bf16* r, const bf16* w, const bf16* k,
                                                            const bf16* v, const bf16* a, const bf16* b,
                                                            const float* __restrict__ s_in, bf16* __restrict__ y,
                                                            float* __restrict__ sa_out, float* __restrict__ snaps,
                                                            float* __restrict__ s_out) {
  constexpr int THREADS = N / R * SPLIT, COLS = N / SPLIT;
  constexpr bool TRANS = MODE != FWD;
  constexpr bool REV = MODE == BWD_TRANS;
  const int h = blockIdx.x, seq = blockIdx.y;
  const int nseg = TRANS ? gridDim.z / 2 : gridDim.z;
  const int s = TRANS ? blockIdx.z / 2 : blockIdx.z;
  const int z = TRANS ? (blockIdx.z & 1) : 0;
  if (MODE == FWD_TRANS && s == nseg - 1) return;  // nothing follows the last segment
  if (MODE == BWD_TRANS && s == 0) return;          // nothing precedes the first one
  const int tid = threadIdx.x, row0 = (tid / SPLIT) * R, q = tid % SPLIT;
  int bos, eos;
  seq_range(cu, seq, T, bos, eos);
  const int t0 = seg_len ? min(bos + s * seg_len, eos) : bos;
  const int t1 = seg_len ? min(t0 + seg_len, eos) : eos;
  const size_t NN = (size_t)N * N;

  __shared__ __align__(16) float sm[6][L][N];  // r, d, k, v (or dy), a, b
  __shared__ __align__(16) float sy[L][N], ssa[L][N];

  float X[R][COLS];
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    if (TRANS) {
#pragma unroll
      for (int e = 0; e < COLS; ++e) X[rr][e] = (z == 1 && slice_col<SPLIT>(q, e) == row0 + rr) ? 1.f : 0.f;
    } else if (s_in) {
      load_slice<N, SPLIT>(s_in + ((size_t)(seq * nseg + s) * H + h) * NN + (row0 + rr) * N, q, X[rr]);
    } else {
#pragma unroll
      for (int e = 0; e < COLS; ++e) X[rr][e] = 0.f;
    }
  }
  const bool inject = !(TRANS && z == 1);

  const bf16* const ptrs[6] = {r, w, MODE == BWD_TRANS ? nullptr : k, inject ? v : nullptr, a, b};
  float* const dst[6] = {&sm[0][0][0], &sm[1][0][0], &sm[2][0][0], &sm[3][0][0], &sm[4][0][0], &sm[5][0][0]};
  ChunkPrefetch<N, THREADS, 6> pf;
  const int nc = (t1 - t0 + L - 1) / L;
  auto chunk_start = [&](int ci) { return t0 + (REV ? nc - 1 - ci : ci) * L; };
  auto flush = [&](int c0, int n) {
    for (int it = tid; it < n * N / 2; it += THREADS) {
      const int lt = it / (N / 2), n2 = (it % (N / 2)) * 2;
      const size_t off = ((size_t)(c0 + lt) * H + h) * N + n2;
      *reinterpret_cast<__nv_bfloat162*>(y + off) = __floats2bfloat162_rn(sy[lt][n2], sy[lt][n2 + 1]);
      if (sa_out) *reinterpret_cast<float2*>(sa_out + off) = make_float2(ssa[lt][n2], ssa[lt][n2 + 1]);
    }
  };
  if (nc > 0) {
    const int c0 = chunk_start(0);
    pf.load(ptrs, c0, min(L, t1 - c0), H, h);
  }
  int prev_c0 = 0, prev_n = 0;
  for (int ci = 0; ci < nc; ++ci) {
    const int c0 = chunk_start(ci), n = min(L, t1 - c0);
    __syncthreads();  // the previous chunk is done with sm, sy, ssa
    if (MODE == FWD && ci > 0) flush(prev_c0, prev_n);
    pf.store(dst, 1, nullptr);
    __syncthreads();
    if (ci + 1 < nc) {
      const int nx = chunk_start(ci + 1);
      pf.load(ptrs, nx, min(L, t1 - nx), H, h);
    }
    if (MODE == FWD && snaps) {  // chunk starts are snapshot points (segments are multiples of L)
      const size_t slot = snap_slot(bos, seq, (c0 - bos) / L);
#pragma unroll
      for (int rr = 0; rr < R; ++rr) store_slice<N, SPLIT>(snaps + (slot * H + h) * NN + (row0 + rr) * N, q, X[rr]);
    }
    if (!REV) {
      for (int lt = 0; lt < n; ++lt) {
        float sa[R], vi[R];
        dot_rows<N, SPLIT, R>(X, sm[4][lt], q, sa);
        rows_sum<SPLIT, R>(sa);
#pragma unroll
        for (int rr = 0; rr < R; ++rr) vi[rr] = inject ? sm[3][lt][row0 + rr] : 0.f;
#pragma unroll
        for (int m = 0; m < COLS / 4; ++m) {
          const int c = m * 4 * SPLIT + q * 4;
          float dv[4], bv[4], kv[4];
          f4_to(*reinterpret_cast<const float4*>(&sm[1][lt][c]), dv);
          f4_to(*reinterpret_cast<const float4*>(&sm[5][lt][c]), bv);
          f4_to(*reinterpret_cast<const float4*>(&sm[2][lt][c]), kv);
#pragma unroll
          for (int rr = 0; rr < R; ++rr)
#pragma unroll
            for (int u = 0; u < 4; ++u) X[rr][4 * m + u] = X[rr][4 * m + u] * dv[u] + sa[rr] * bv[u] + vi[rr] * kv[u];
        }
        if (MODE == FWD) {
          float yo[R];
          dot_rows<N, SPLIT, R>(X, sm[0][lt], q, yo);
          rows_sum<SPLIT, R>(yo);
          if (q == 0) {
#pragma unroll
            for (int rr = 0; rr < R; ++rr) {
              sy[lt][row0 + rr] = yo[rr];
              ssa[lt][row0 + rr] = sa[rr];
            }
          }
        }
      }
    } else {
      for (int lt = n - 1; lt >= 0; --lt) {
        float u_[R], sb[R];
#pragma unroll
        for (int rr = 0; rr < R; ++rr) u_[rr] = inject ? sm[3][lt][row0 + rr] : 0.f;  // dy_i
#pragma unroll
        for (int m = 0; m < COLS / 4; ++m) {
          float rv[4];
          f4_to(*reinterpret_cast<const float4*>(&sm[0][lt][m * 4 * SPLIT + q * 4]), rv);
#pragma unroll
          for (int rr = 0; rr < R; ++rr)
#pragma unroll
            for (int u = 0; u < 4; ++u) X[rr][4 * m + u] += u_[rr] * rv[u];
        }
        dot_rows<N, SPLIT, R>(X, sm[5][lt], q, sb);
        rows_sum<SPLIT, R>(sb);
#pragma unroll
        for (int m = 0; m < COLS / 4; ++m) {
          const int c = m * 4 * SPLIT + q * 4;
          float dv[4], av[4];
          f4_to(*reinterpret_cast<const float4*>(&sm[1][lt][c]), dv);
          f4_to(*reinterpret_cast<const float4*>(&sm[4][lt][c]), av);
#pragma unroll
          for (int rr = 0; rr < R; ++rr)
#pragma unroll
            for (int u = 0; u < 4; ++u) X[rr][4 * m + u] = X[rr][4 * m + u] * dv[u] + sb[rr] * av[u];
        }
      }
    }
    prev_c0 = c0;
    prev_n = n;
  }
  if (MODE == FWD) {
    __syncthreads();
    flush(prev_c0, prev_n);
    if (s_out && s == nseg - 1) {
#pragma unroll
      for (int rr = 0; rr < R; ++rr)
        store_slice<N, SPLIT>(s_out + ((size_t)seq * H + h) * NN + (row0 + rr) * N, q, X[rr]);
    }
  } else {
    float* o = s_out + ((((size_t)seq * nseg + s) * 2 + z) * H + h) * NN;  // [seq, seg, {C,P}, H, N, N]
#pragma unroll
    for (int rr = 0; rr < R; ++rr) store_slice<N, SPLIT>(o + (row0 + rr) * N, q, X[rr]);
  }
}

// ------------------------------------------------------------------------------------------------
// Backward over one (sequence, head, segment), walking time downwards. For each of its R indices p
// a lane holds
//   E  = dL/dS_t row p    (slice over columns),  ET = dL/dS_t column p (slice over rows),
//   ST = S_t column p     (slice over rows),
// so every sum over rows or columns is a lane-local dot plus shuffles. S_{t-1} comes from S_t by
// undoing the update (exact up to rounding, d >= 0.545), restarting from a snapshot every L steps.
template <int N, int SPLIT, int R, int MINB>
__global__ void __launch_bounds__(N / R * SPLIT, MINB) bwd_kernel(int T, const int* __restrict__ cu, int H, int seg_len,
                                                            const bf16* r, const bf16* w, const bf16* k,
                                                            const bf16* v, const bf16* a, const bf16* b,
                                                            const bf16* dy, const float* __restrict__ sa_saved,
                                                            const float* __restrict__ snaps,
                                                            const float* __restrict__ s_last,
                                                            const float* __restrict__ ds_in, bf16* __restrict__ dr,
                                                            bf16* __restrict__ dw, bf16* __restrict__ dk,
                                                            bf16* __restrict__ dv, bf16* __restrict__ da,
                                                            bf16* __restrict__ db, float* __restrict__ ds_out) {
  constexpr int THREADS = N / R * SPLIT, COLS = N / SPLIT;
  const int h = blockIdx.x, seq = blockIdx.y, nseg = gridDim.z, s = blockIdx.z;
  const int tid = threadIdx.x, p0 = (tid / SPLIT) * R, q = tid % SPLIT;
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

  float E[R][COLS], ET[R][COLS], ST[R][COLS], SNAP[R][COLS];
  {
    // S at the segment's last step: the final state, or the snapshot taken right after it
    const float* src = (t1 == eos) ? s_last + ((size_t)seq * H + h) * NN
                                   : snaps + (snap_slot(bos, seq, (t1 - bos) / L) * H + h) * NN;
    const float* gsrc = ds_in ? ds_in + ((size_t)(seq * nseg + s) * H + h) * NN : nullptr;
#pragma unroll
    for (int rr = 0; rr < R; ++rr) {
      load_col_slice<N, SPLIT>(src, p0 + rr, q, ST[rr]);
      if (gsrc) {
        load_slice<N, SPLIT>(gsrc + (p0 + rr) * N, q, E[rr]);
        load_col_slice<N, SPLIT>(gsrc, p0 + rr, q, ET[rr]);
      } else {
#pragma unroll
        for (int e = 0; e < COLS; ++e) E[rr][e] = ET[rr][e] = 0.f;
      }
    }
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
    for (int rr = 0; rr < R; ++rr) load_col_slice<N, SPLIT>(src, p0 + rr, q, SNAP[rr]);
  };
  auto flush = [&](int c0, int n) {
    bf16* const outs[6] = {dr, dw, dk, dv, da, db};
    for (int it = tid; it < n * N / 2; it += THREADS) {
      const int lt = it / (N / 2), n2 = (it % (N / 2)) * 2;
      const size_t off = ((size_t)(c0 + lt) * H + h) * N + n2;
      const int so = lt * N + n2;
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
    float SN[R][COLS];
#pragma unroll
    for (int rr = 0; rr < R; ++rr)
#pragma unroll
      for (int e = 0; e < COLS; ++e) SN[rr][e] = SNAP[rr][e];
    __syncthreads();
    if (ci > 0) load_chunk(t0 + (ci - 1) * L, L);

    for (int lt = n - 1; lt >= 0; --lt) {
      const float* rr_ = in_r + lt * N;
      const float* dd = in_d + lt * N;
      const float* kk = in_k + lt * N;
      const float* vv = in_v + lt * N;
      const float* aa = in_a + lt * N;
      const float* bb = in_b + lt * N;
      const float* gy = in_dy + lt * N;
      const float* sa = in_sa + lt * N;
      float dy_p[R], r_p[R], d_p[R], k_p[R], a_p[R], b_p[R];
      float g_dr[R], g_dv[R], g_dsa[R], g_dk[R], g_db[R], g_dd[R], g_da[R];
#pragma unroll
      for (int rr = 0; rr < R; ++rr) {
        const int p = p0 + rr;
        dy_p[rr] = gy[p];
        r_p[rr] = rr_[p];
        d_p[rr] = dd[p];
        k_p[rr] = kk[p];
        a_p[rr] = aa[p];
        b_p[rr] = bb[p];
        g_dr[rr] = g_dv[rr] = g_dsa[rr] = g_dk[rr] = g_db[rr] = g_dd[rr] = g_da[rr] = 0.f;
      }
      float v_s[COLS], sa_s[COLS];  // v_i and (S_{t-1} a)_i over this lane's row slice
#pragma unroll
      for (int m = 0; m < COLS / 4; ++m) {
        const int c = m * 4 * SPLIT + q * 4;
        float dyv[4], rv[4], kv[4], bv[4];
        f4_to(*reinterpret_cast<const float4*>(gy + c), dyv);
        f4_to(*reinterpret_cast<const float4*>(rr_ + c), rv);
        f4_to(*reinterpret_cast<const float4*>(kk + c), kv);
        f4_to(*reinterpret_cast<const float4*>(bb + c), bv);
        f4_to(*reinterpret_cast<const float4*>(vv + c), v_s + 4 * m);
        f4_to(*reinterpret_cast<const float4*>(sa + c), sa_s + 4 * m);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int e = 4 * m + u;
#pragma unroll
          for (int rr = 0; rr < R; ++rr) {
            E[rr][e] += dy_p[rr] * rv[u];
            ET[rr][e] += dyv[u] * r_p[rr];
            g_dr[rr] += ST[rr][e] * dyv[u];
            g_dv[rr] += E[rr][e] * kv[u];
            g_dsa[rr] += E[rr][e] * bv[u];
            g_dk[rr] += ET[rr][e] * v_s[e];
            g_db[rr] += ET[rr][e] * sa_s[e];
          }
        }
      }
      rows_sum<SPLIT, R>(g_dsa);
      if (q == 0) {
#pragma unroll
        for (int rr = 0; rr < R; ++rr) s_dsa[lt * N + p0 + rr] = g_dsa[rr];
      }
      // S_{t-1}: undo this step, or take the snapshot at the chunk's first step
#pragma unroll
      for (int rr = 0; rr < R; ++rr) {
        if (lt == 0) {
#pragma unroll
          for (int e = 0; e < COLS; ++e) ST[rr][e] = SN[rr][e];
        } else {
          const float inv_d = 1.f / d_p[rr];
#pragma unroll
          for (int e = 0; e < COLS; ++e) ST[rr][e] = (ST[rr][e] - sa_s[e] * b_p[rr] - v_s[e] * k_p[rr]) * inv_d;
        }
#pragma unroll
        for (int e = 0; e < COLS; ++e) g_dd[rr] += ET[rr][e] * ST[rr][e];
      }
      rows_sum<SPLIT, R>(g_dr);
      rows_sum<SPLIT, R>(g_dv);
      rows_sum<SPLIT, R>(g_dk);
      rows_sum<SPLIT, R>(g_db);
      rows_sum<SPLIT, R>(g_dd);
      __syncthreads();  // every dsa_i of this step is in shared memory
      const float* dsa = s_dsa + lt * N;
#pragma unroll
      for (int m = 0; m < COLS / 4; ++m) {
        const int c = m * 4 * SPLIT + q * 4;
        float gv[4], dv4[4], av[4];
        f4_to(*reinterpret_cast<const float4*>(dsa + c), gv);
        f4_to(*reinterpret_cast<const float4*>(dd + c), dv4);
        f4_to(*reinterpret_cast<const float4*>(aa + c), av);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int e = 4 * m + u;
#pragma unroll
          for (int rr = 0; rr < R; ++rr) {
            g_da[rr] += ST[rr][e] * gv[u];
            ET[rr][e] = ET[rr][e] * d_p[rr] + gv[u] * a_p[rr];
            E[rr][e] = E[rr][e] * dv4[u] + g_dsa[rr] * av[u];
          }
        }
      }
      rows_sum<SPLIT, R>(g_da);
      if (q == 0) {
#pragma unroll
        for (int rr = 0; rr < R; ++rr) {
          const int o = lt * N + p0 + rr;
          out[0 * L * N + o] = g_dr[rr];
          out[1 * L * N + o] = g_dd[rr] * in_dwf[o];
          out[2 * L * N + o] = g_dk[rr];
          out[3 * L * N + o] = g_dv[rr];
          out[4 * L * N + o] = g_da[rr];
          out[5 * L * N + o] = g_db[rr];
        }
      }
    }
    prev_c0 = c0;
    prev_n = n;
  }
  __syncthreads();
  if (nc > 0) flush(prev_c0, prev_n);
  if (s == 0) {
#pragma unroll
    for (int rr = 0; rr < R; ++rr)
      store_slice<N, SPLIT>(ds_out + ((size_t)seq * H + h) * NN + (p0 + rr) * N, q, E[rr]);
  }
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

template <int N, int SPLIT, int R, int MINB>
static cudaError_t fwd_all(const FwdArgs& g, cudaStream_t st) {
  const dim3 blk(N / R * SPLIT);
  if (g.nseg <= 1) {
    fwd_kernel<N, SPLIT, R, FWD><<<dim3(g.H, g.n_seqs, 1), blk, 0, st>>>(
        g.T, g.cu, g.H, 0, g.r, g.w, g.k, g.v, g.a, g.b, g.s0, g.y, g.sa, g.snaps, g.s_last);
    return cudaGetLastError();
  }
  fwd_kernel<N, SPLIT, R, FWD_TRANS><<<dim3(g.H, g.n_seqs, 2 * g.nseg), blk, 0, st>>>(
      g.T, g.cu, g.H, g.seg_len, g.r, g.w, g.k, g.v, g.a, g.b, nullptr, nullptr, nullptr, nullptr, g.trans);
  combine_kernel<N><<<dim3(g.H, g.n_seqs), 256, 0, st>>>(g.nseg, g.H, 0, g.trans, g.s0, g.seg_state);
  fwd_kernel<N, SPLIT, R, FWD><<<dim3(g.H, g.n_seqs, g.nseg), blk, 0, st>>>(
      g.T, g.cu, g.H, g.seg_len, g.r, g.w, g.k, g.v, g.a, g.b, g.seg_state, g.y, g.sa, g.snaps, g.s_last);
  return cudaGetLastError();
}

template <int N, int SPLIT, int R, int MINB>
static cudaError_t bwd_all(const BwdArgs& g, cudaStream_t st) {
  const dim3 blk(N / R * SPLIT);
  const size_t shm = (size_t)16 * L * N * sizeof(float);
  cudaError_t err =
      cudaFuncSetAttribute(bwd_kernel<N, SPLIT, R, MINB>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm);
  if (err != cudaSuccess) return err;
  const float* ds_in = g.ds_last;
  int seg_len = 0, nseg = 1;
  if (g.nseg > 1) {
    fwd_kernel<N, SPLIT, R, BWD_TRANS><<<dim3(g.H, g.n_seqs, 2 * g.nseg), blk, 0, st>>>(
        g.T, g.cu, g.H, g.seg_len, g.r, g.w, g.k, g.dy, g.a, g.b, nullptr, nullptr, nullptr, nullptr, g.trans);
    combine_kernel<N><<<dim3(g.H, g.n_seqs), 256, 0, st>>>(g.nseg, g.H, 1, g.trans, g.ds_last, g.seg_state);
    ds_in = g.seg_state;
    seg_len = g.seg_len;
    nseg = g.nseg;
  }
  bwd_kernel<N, SPLIT, R, MINB><<<dim3(g.H, g.n_seqs, nseg), blk, shm, st>>>(
      g.T, g.cu, g.H, seg_len, g.r, g.w, g.k, g.v, g.a, g.b, g.dy, g.sa, g.snaps, g.s_last, ds_in, g.dr, g.dw,
      g.dk, g.dv, g.da, g.db, g.ds0);
  return cudaGetLastError();
}

// variant = 100 * (backward blocks per multiprocessor, when more than 1) + 10 * (lanes per row group)
// + (rows per lane group); head size N = 64 only for now. Variant 182 caps the backward kernel's
// registers at 128 (a few bytes spill) so two blocks share a multiprocessor: B*H between 1x and 2x
// the multiprocessor count then runs in one wave instead of two.
#define WKV7_DISPATCH(FN, ARGS, STREAM)                                                   \
  do {                                                                                    \
    if (ARGS.N != 64) return cudaErrorInvalidValue; /* other head sizes: add N here */    \
    switch (ARGS.variant) {                                                               \
      case 41: return FN<64, 4, 1, 1>(ARGS, STREAM);                                      \
      case 82: return FN<64, 8, 2, 1>(ARGS, STREAM);                                      \
      case 182: return FN<64, 8, 2, 2>(ARGS, STREAM);                                     \
      default: return cudaErrorInvalidValue;                                              \
    }                                                                                     \
  } while (0)

cudaError_t launch_forward(const FwdArgs& g, cudaStream_t stream) { WKV7_DISPATCH(fwd_all, g, stream); }
cudaError_t launch_backward(const BwdArgs& g, cudaStream_t stream) { WKV7_DISPATCH(bwd_all, g, stream); }

bool supported(int N, int variant) { return N == 64 && (variant == 41 || variant == 82 || variant == 182); }

}  // namespace wkv7
