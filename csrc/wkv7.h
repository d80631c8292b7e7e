// Launch interface between the CUDA kernels (wkv7.cu) and the torch binding (wkv7_binding.cpp).
// Plain pointers only, so the .cu file compiles without torch headers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace wkv7 {

// Tensors are [T_total, H, N] (batch folded into time; sequence n spans cu[n]..cu[n+1], or n*T..n*T+T
// when cu is null). States are [n_seqs, H, N, N] fp32, row = value index, column = key index.
struct FwdArgs {
  int T, H, N, n_seqs, nseg, seg_len, variant;  // variant: see WKV7_DISPATCH
  const int* cu;
  const __nv_bfloat16 *r, *w, *k, *v, *a, *b;
  const float* s0;    // initial state or null (zeros)
  __nv_bfloat16* y;
  float* sa;          // S_{t-1} a_t per step, kept for backward (null: inference)
  float* snaps;       // state every 16 steps, kept for backward (null: inference)
  float* s_last;      // final state (may equal s0 for the in-place generation step)
  float* trans;       // nseg > 1: [n_seqs, nseg, 2, H, N, N] scratch
  float* seg_state;   // nseg > 1: [n_seqs, nseg, H, N, N] scratch
};

struct BwdArgs {
  int T, H, N, n_seqs, nseg, seg_len, variant;  // variant: see WKV7_DISPATCH
  const int* cu;
  const __nv_bfloat16 *r, *w, *k, *v, *a, *b, *dy;
  const float *sa, *snaps, *s_last;
  const float* ds_last;  // gradient of the final state or null
  float* trans;
  float* seg_state;
  __nv_bfloat16 *dr, *dw, *dk, *dv, *da, *db;
  float* ds0;            // gradient of the initial state [n_seqs, H, N, N]
};

cudaError_t launch_forward(const FwdArgs& args, cudaStream_t stream);
cudaError_t launch_backward(const BwdArgs& args, cudaStream_t stream);
bool supported(int N, int variant);

}  // namespace wkv7
