// torch binding for the WKV7 kernels: shape checks, allocation, and TORCH_LIBRARY registration as
// torch.ops.pianomuse_wkv7.{fwd,bwd,step}. The autograd wiring lives in engine/kernels/wkv7/cuda.py.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "wkv7.h"

namespace {

using at::Tensor;
typedef __nv_bfloat16 bf16;

const bf16* bp(const Tensor& t) { return reinterpret_cast<const bf16*>(t.data_ptr<at::BFloat16>()); }
bf16* bp_mut(Tensor& t) { return reinterpret_cast<bf16*>(t.data_ptr<at::BFloat16>()); }

void check_input(const Tensor& t, const char* name, const Tensor& like) {
  TORCH_CHECK(t.is_cuda(), "wkv7: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, "wkv7: ", name, " must be bfloat16");
  TORCH_CHECK(t.is_contiguous(), "wkv7: ", name, " must be contiguous");
  TORCH_CHECK(t.sizes() == like.sizes(), "wkv7: ", name, " has shape ", t.sizes(), ", expected ", like.sizes());
}

void check_state(const Tensor& s, const char* name, int64_t n, int64_t H, int64_t N) {
  TORCH_CHECK(s.is_cuda() && s.scalar_type() == at::kFloat && s.is_contiguous(), "wkv7: ", name,
              " must be a contiguous float32 CUDA tensor");
  TORCH_CHECK(s.dim() == 4 && s.size(0) == n && s.size(1) == H && s.size(2) == N && s.size(3) == N, "wkv7: ", name,
              " must have shape [", n, ", ", H, ", ", N, ", ", N, "], got ", s.sizes());
}

// Segments per sequence (uniform-length batches only) and their length, a multiple of 16.
void plan_segments(int64_t T, int64_t want, bool packed, int& nseg, int& seg_len) {
  nseg = 1;
  seg_len = 0;
  if (packed || want <= 1 || T <= 16) return;
  const int64_t per = (T + want - 1) / want;
  const int64_t len = (per + 15) / 16 * 16;
  const int64_t n = (T + len - 1) / len;
  if (n > 1) {
    nseg = (int)n;
    seg_len = (int)len;
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> wkv7_fwd(const Tensor& r, const Tensor& w, const Tensor& k,
                                                    const Tensor& v, const Tensor& a, const Tensor& b,
                                                    const c10::optional<Tensor>& s0,
                                                    const c10::optional<Tensor>& cu_seqlens, int64_t nseg_want,
                                                    int64_t variant, bool save) {
  TORCH_CHECK(r.dim() == 4, "wkv7: inputs must be [B, T, H, N]");
  for (auto& [t, n] : {std::pair<const Tensor&, const char*>{r, "r"}, {w, "w"}, {k, "k"}, {v, "v"}, {a, "a"}, {b, "b"}})
    check_input(t, n, r);
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  TORCH_CHECK(wkv7::supported((int)N, (int)variant), "wkv7: head size ", N, " with variant ", variant,
              " is not compiled (add it to the dispatch in csrc/wkv7.cu)");
  const bool packed = cu_seqlens.has_value();
  if (packed) {
    TORCH_CHECK(B == 1, "wkv7: cu_seqlens needs batch size 1");
    TORCH_CHECK(cu_seqlens->is_cuda() && cu_seqlens->scalar_type() == at::kInt && cu_seqlens->dim() == 1,
                "wkv7: cu_seqlens must be a 1-D int32 CUDA tensor");
  }
  const int64_t n_seqs = packed ? cu_seqlens->numel() - 1 : B;
  if (s0) check_state(*s0, "initial_state", n_seqs, H, N);
  c10::cuda::CUDAGuard guard(r.device());
  auto f32 = r.options().dtype(at::kFloat);
  Tensor y = at::empty_like(r);
  Tensor s_last = at::empty({n_seqs, H, N, N}, f32);
  Tensor sa = save ? at::empty({B, T, H, N}, f32) : at::empty({0}, f32);
  Tensor snaps = save ? at::empty({B * T / 16 + n_seqs, H, N, N}, f32) : at::empty({0}, f32);
  int nseg, seg_len;
  plan_segments(T, nseg_want, packed, nseg, seg_len);
  Tensor trans, seg_state;
  if (nseg > 1) {
    trans = at::empty({n_seqs, nseg, 2, H, N, N}, f32);
    seg_state = at::empty({n_seqs, nseg, H, N, N}, f32);
  }
  wkv7::FwdArgs g{};
  g.T = (int)T;
  g.H = (int)H;
  g.N = (int)N;
  g.n_seqs = (int)n_seqs;
  g.nseg = nseg;
  g.seg_len = seg_len;
  g.variant = (int)variant;
  g.cu = packed ? cu_seqlens->data_ptr<int>() : nullptr;
  g.r = bp(r);
  g.w = bp(w);
  g.k = bp(k);
  g.v = bp(v);
  g.a = bp(a);
  g.b = bp(b);
  g.s0 = s0 ? s0->data_ptr<float>() : nullptr;
  g.y = bp_mut(y);
  g.sa = save ? sa.data_ptr<float>() : nullptr;
  g.snaps = save ? snaps.data_ptr<float>() : nullptr;
  g.s_last = s_last.data_ptr<float>();
  g.trans = nseg > 1 ? trans.data_ptr<float>() : nullptr;
  g.seg_state = nseg > 1 ? seg_state.data_ptr<float>() : nullptr;
  cudaError_t err = wkv7::launch_forward(g, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "wkv7 forward launch failed: ", cudaGetErrorString(err));
  return {y, s_last, sa, snaps};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv7_bwd(
    const Tensor& r, const Tensor& w, const Tensor& k, const Tensor& v, const Tensor& a, const Tensor& b,
    const Tensor& dy, const c10::optional<Tensor>& ds_last, const Tensor& sa, const Tensor& snaps,
    const Tensor& s_last, const c10::optional<Tensor>& cu_seqlens, int64_t nseg_want, int64_t variant) {
  for (auto& [t, n] :
       {std::pair<const Tensor&, const char*>{r, "r"}, {w, "w"}, {k, "k"}, {v, "v"}, {a, "a"}, {b, "b"}, {dy, "dy"}})
    check_input(t, n, r);
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  TORCH_CHECK(wkv7::supported((int)N, (int)variant), "wkv7: head size ", N, " with variant ", variant, " is not compiled");
  const bool packed = cu_seqlens.has_value();
  const int64_t n_seqs = packed ? cu_seqlens->numel() - 1 : B;
  check_state(s_last, "saved final state", n_seqs, H, N);
  if (ds_last) check_state(*ds_last, "final state gradient", n_seqs, H, N);
  TORCH_CHECK(sa.numel() == B * T * H * N && snaps.numel() == (B * T / 16 + n_seqs) * H * N * N,
              "wkv7 backward: the forward did not save its activations (was it run under no_grad?)");
  c10::cuda::CUDAGuard guard(r.device());
  auto f32 = r.options().dtype(at::kFloat);
  Tensor dr = at::empty_like(r), dw = at::empty_like(r), dk = at::empty_like(r), dv = at::empty_like(r),
         da = at::empty_like(r), db = at::empty_like(r);
  Tensor ds0 = at::empty({n_seqs, H, N, N}, f32);
  int nseg, seg_len;
  plan_segments(T, nseg_want, packed, nseg, seg_len);
  Tensor trans, seg_state;
  if (nseg > 1) {
    trans = at::empty({n_seqs, nseg, 2, H, N, N}, f32);
    seg_state = at::empty({n_seqs, nseg, H, N, N}, f32);
  }
  wkv7::BwdArgs g{};
  g.T = (int)T;
  g.H = (int)H;
  g.N = (int)N;
  g.n_seqs = (int)n_seqs;
  g.nseg = nseg;
  g.seg_len = seg_len;
  g.variant = (int)variant;
  g.cu = packed ? cu_seqlens->data_ptr<int>() : nullptr;
  g.r = bp(r);
  g.w = bp(w);
  g.k = bp(k);
  g.v = bp(v);
  g.a = bp(a);
  g.b = bp(b);
  g.dy = bp(dy);
  g.sa = sa.data_ptr<float>();
  g.snaps = snaps.data_ptr<float>();
  g.s_last = s_last.data_ptr<float>();
  g.ds_last = ds_last ? ds_last->data_ptr<float>() : nullptr;
  g.trans = nseg > 1 ? trans.data_ptr<float>() : nullptr;
  g.seg_state = nseg > 1 ? seg_state.data_ptr<float>() : nullptr;
  g.dr = bp_mut(dr);
  g.dw = bp_mut(dw);
  g.dk = bp_mut(dk);
  g.dv = bp_mut(dv);
  g.da = bp_mut(da);
  g.db = bp_mut(db);
  g.ds0 = ds0.data_ptr<float>();
  cudaError_t err = wkv7::launch_backward(g, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "wkv7 backward launch failed: ", cudaGetErrorString(err));
  return {dr, dw, dk, dv, da, db, ds0};
}

// One token for each of B sequences; `state` [B, H, N, N] is updated in place.
Tensor wkv7_step(const Tensor& r, const Tensor& w, const Tensor& k, const Tensor& v, const Tensor& a,
                 const Tensor& b, Tensor state, int64_t variant) {
  TORCH_CHECK(r.dim() == 3, "wkv7 step: inputs must be [B, H, N]");
  const int64_t B = r.size(0), H = r.size(1), N = r.size(2);
  check_state(state, "state", B, H, N);
  TORCH_CHECK(wkv7::supported((int)N, (int)variant), "wkv7: head size ", N, " is not compiled");
  c10::cuda::CUDAGuard guard(r.device());
  auto as4 = [&](const Tensor& t, const char* name) {
    check_input(t, name, r);
    return t.view({B, 1, H, N});
  };
  Tensor r4 = as4(r, "r"), w4 = as4(w, "w"), k4 = as4(k, "k"), v4 = as4(v, "v"), a4 = as4(a, "a"), b4 = as4(b, "b");
  Tensor y = at::empty_like(r4);
  wkv7::FwdArgs g{};
  g.T = 1;
  g.H = (int)H;
  g.N = (int)N;
  g.n_seqs = (int)B;
  g.nseg = 1;
  g.variant = (int)variant;
  g.r = bp(r4);
  g.w = bp(w4);
  g.k = bp(k4);
  g.v = bp(v4);
  g.a = bp(a4);
  g.b = bp(b4);
  g.s0 = state.data_ptr<float>();  // each lane reads its slice, then writes the same slice back
  g.s_last = state.data_ptr<float>();
  g.y = bp_mut(y);
  cudaError_t err = wkv7::launch_forward(g, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "wkv7 step launch failed: ", cudaGetErrorString(err));
  return y.view({B, H, N});
}

}  // namespace

TORCH_LIBRARY(pianomuse_wkv7, m) {
  m.def(
      "fwd(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor? s0, Tensor? cu_seqlens, "
      "int nseg, int variant, bool save) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bwd(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor dy, Tensor? ds_last, Tensor sa, "
      "Tensor snaps, Tensor s_last, Tensor? cu_seqlens, int nseg, int variant) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("step(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor(s!) state, int variant) -> Tensor");
}

TORCH_LIBRARY_IMPL(pianomuse_wkv7, CUDA, m) {
  m.impl("fwd", &wkv7_fwd);
  m.impl("bwd", &wkv7_bwd);
  m.impl("step", &wkv7_step);
}
