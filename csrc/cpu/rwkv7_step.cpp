// The whole RWKV-7 / "v8" recurrent (RNN-mode) step on CPU in fp32, as plain loops.
//
// A fast path for RWKV7.step at small batch: the PyTorch step spends most of a batch-1 token in
// per-op dispatch (~1,200 aten calls), not arithmetic, so this runs the same math
// (engine/model/rwkv7.py: time_mix_project, wkv7_step, time_mix_finish, channel_mix) in one call.
// No torch headers: it is called through ctypes with raw pointers, which keeps the JIT build to
// seconds. IEEE semantics (no -ffast-math) so exp/tanh/sigmoid match PyTorch to ~1e-7.
//
// Weight pointers per layer, in this order (as engine/model/cpu_ext.py FusedStep passes them from the
// RNN weight cache; the low-rank matrices unpadded, copied out of its stacks):
//   0 ln1_w [C]  1 ln1_b  2 ln2_w  3 ln2_b  4 mix [6, C] (r, k, v, a, g, w)  5 RKV [3, C, C]
//   6 w0 [C]  7 w1 [C, Dw]  8 w2 [Dw, C]  9 a0  10 a1 [C, Da]  11 a2 [Da, C]
//   12 v0  13 v1 [C, Dv]  14 v2 [Dv, C]  15 g1 [C, Dg]  16 g2 [Dg, C]
//   17 k_k  18 k_a  19 one_minus_k_a  20 r_k [C]  21 O [C, C]  22 ln_x w  23 ln_x b
//   24 ffn x_k [C]  25 ffn K [C, F]  26 ffn V [F, C]  27 enn [Vocab, C] or null
// followed by: emb (LN0 folded) [Vocab, C], ln_out w, ln_out b, head [C, Vocab].
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kPerLayer = 28;
constexpr float kDecayScale = 0.60653065971263342f;  // exp(-0.5), as DECAY_SCALE
constexpr float kLnEps = 1e-5f;
constexpr float kGroupNormEps = 64e-5f;

// y[b, :] = x[b, :] @ W for B rows; W is [in, out] row-major. Each weight row is read once for all
// batch rows (it stays in L1 across them): at batch 1 this is the weight-streaming floor.
void matmul_rows(const float* __restrict x, const float* __restrict W, int B, int in, int out,
                 float* __restrict y) {
  std::memset(y, 0, sizeof(float) * B * out);
  int i = 0;
  for (; i + 4 <= in; i += 4) {
    const float* w0 = W + (int64_t)i * out;
    const float* w1 = w0 + out;
    const float* w2 = w1 + out;
    const float* w3 = w2 + out;
    for (int b = 0; b < B; ++b) {
      const float x0 = x[b * in + i], x1 = x[b * in + i + 1], x2 = x[b * in + i + 2], x3 = x[b * in + i + 3];
      float* __restrict yb = y + b * out;
#pragma omp simd
      for (int j = 0; j < out; ++j) yb[j] += x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j];
    }
  }
  for (; i < in; ++i) {
    const float* wi = W + (int64_t)i * out;
    for (int b = 0; b < B; ++b) {
      const float xi = x[b * in + i];
      float* __restrict yb = y + b * out;
#pragma omp simd
      for (int j = 0; j < out; ++j) yb[j] += xi * wi[j];
    }
  }
}

void layer_norm(const float* x, const float* w, const float* bias, int C, float eps, float* out) {
  double mean = 0.0;
  for (int c = 0; c < C; ++c) mean += x[c];
  mean /= C;
  double var = 0.0;
  for (int c = 0; c < C; ++c) {
    const double d = x[c] - mean;
    var += d * d;
  }
  var /= C;
  const float m = (float)mean, rstd = (float)(1.0 / std::sqrt(var + eps));
  for (int c = 0; c < C; ++c) out[c] = (x[c] - m) * rstd * w[c] + bias[c];
}

inline float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

}  // namespace

extern "C" {

// dims: L, C, H, N, Vocab, Dw, Da, Dv, Dg, F. weights: L * 28 + 4 pointers (see above).
// The new state goes to the *_out buffers (the inputs are not modified); logits [B, Vocab].
int pianomuse_rwkv7_step(const int64_t* dims, const float* const* weights, int B, const int64_t* tokens,
                         const float* att_shift, const float* wkv, const float* ffn_shift, float* logits,
                         float* att_out, float* wkv_out, float* ffn_out) {
  const int L = dims[0], C = dims[1], H = dims[2], N = dims[3], V = dims[4];
  const int Dw = dims[5], Da = dims[6], Dv = dims[7], Dg = dims[8], F = dims[9];
  const float* const* tail = weights + (int64_t)L * kPerLayer;
  const float* emb = tail[0];
  for (int b = 0; b < B; ++b)
    if (tokens[b] < 0 || tokens[b] >= V) return 1;

  int Dmax = Dw;
  if (Da > Dmax) Dmax = Da;
  if (Dv > Dmax) Dmax = Dv;
  if (Dg > Dmax) Dmax = Dg;
  // scratch: x, xa, mixed (6 rows), r, k, v, v_first, z, iclr, g, kappa, y, tmp, low-rank, ffn hidden
  std::vector<float> buf((size_t)B * (C * 18 + Dmax + F));
  float* x = buf.data();
  float* xa = x + B * C;
  float* mixed = xa + B * C;  // [6, B, C]
  float* r = mixed + 6 * B * C;
  float* k = r + B * C;
  float* v = k + B * C;
  float* v_first = v + B * C;
  float* z = v_first + B * C;
  float* iclr = z + B * C;
  float* g = iclr + B * C;
  float* kappa = g + B * C;
  float* y = kappa + B * C;
  float* tmp = y + B * C;
  float* low = tmp + B * C;  // [B, Dmax]
  float* hidden = low + B * Dmax;  // [B, F]

  for (int b = 0; b < B; ++b) std::memcpy(x + b * C, emb + tokens[b] * (int64_t)C, sizeof(float) * C);

  for (int l = 0; l < L; ++l) {
    const float* const* W = weights + (int64_t)l * kPerLayer;
    const float* att_prev = att_shift + (int64_t)l * B * C;
    const float* ffn_prev = ffn_shift + (int64_t)l * B * C;
    const float* S_in = wkv + (int64_t)l * B * H * N * N;
    float* S_out = wkv_out + (int64_t)l * B * H * N * N;
    const float* mix = W[4];

    // ---- TimeMix: LN1, token shift mixes, projections
    for (int b = 0; b < B; ++b) {
      layer_norm(x + b * C, W[0], W[1], C, kLnEps, xa + b * C);
      std::memcpy(att_out + ((int64_t)l * B + b) * C, xa + b * C, sizeof(float) * C);
      for (int m = 0; m < 6; ++m) {
        const float* mu = mix + m * C;
        float* out = mixed + (m * B + b) * C;
        const float* cur = xa + b * C;
        const float* prev = att_prev + b * C;
        for (int c = 0; c < C; ++c) out[c] = cur[c] + (prev[c] - cur[c]) * mu[c];
      }
    }
    const float* xr = mixed;
    const float* xk = mixed + B * C;
    const float* xv = mixed + 2 * B * C;
    const float* xa_ = mixed + 3 * B * C;
    const float* xg = mixed + 4 * B * C;
    const float* xw = mixed + 5 * B * C;
    matmul_rows(xr, W[5], B, C, C, r);
    matmul_rows(xk, W[5] + (int64_t)C * C, B, C, C, k);
    matmul_rows(xv, W[5] + 2 * (int64_t)C * C, B, C, C, v);

    // decay pre-activation z = w0 + tanh(xw @ w1) @ w2
    matmul_rows(xw, W[7], B, C, Dw, low);
    for (int i = 0; i < B * Dw; ++i) low[i] = std::tanh(low[i]);
    matmul_rows(low, W[8], B, Dw, C, z);
    for (int b = 0; b < B; ++b)
      for (int c = 0; c < C; ++c) z[b * C + c] += W[6][c];
    // in-context learning rate a = sigmoid(a0 + (xa @ a1) @ a2)
    matmul_rows(xa_, W[10], B, C, Da, low);
    matmul_rows(low, W[11], B, Da, C, iclr);
    for (int b = 0; b < B; ++b)
      for (int c = 0; c < C; ++c) iclr[b * C + c] = sigmoid(W[9][c] + iclr[b * C + c]);
    // gate g = sigmoid(xg @ g1) @ g2
    matmul_rows(xg, W[15], B, C, Dg, low);
    for (int i = 0; i < B * Dg; ++i) low[i] = sigmoid(low[i]);
    matmul_rows(low, W[16], B, Dg, C, g);
    // value residual (layer 0 defines v_first)
    if (l == 0) {
      std::memcpy(v_first, v, sizeof(float) * B * C);
    } else {
      matmul_rows(xv, W[13], B, C, Dv, low);
      matmul_rows(low, W[14], B, Dv, C, tmp);
      for (int b = 0; b < B; ++b)
        for (int c = 0; c < C; ++c) {
          const int i = b * C + c;
          const float s = sigmoid(W[12][c] + tmp[i]);
          v[i] = v[i] + s * (v_first[i] - v[i]);
        }
    }
    // kappa = normalize(k * k_k) per head; k <- k * (1 + (a - 1) k_a)
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        const int o = b * C + h * N;
        float ss = 0.0f;
        for (int j = 0; j < N; ++j) {
          const float kk = k[o + j] * W[17][h * N + j];
          kappa[o + j] = kk;
          ss += kk * kk;
        }
        float norm = std::sqrt(ss);
        if (norm < 1e-12f) norm = 1e-12f;
        for (int j = 0; j < N; ++j) kappa[o + j] = kappa[o + j] / norm;
      }
    for (int i = 0; i < B * C; ++i) {
      const int c = i % C;
      k[i] = k[i] * (W[19][c] + iclr[i] * W[18][c]);
    }

    // ---- WKV7: S <- S diag(d) - (S kappa) (kappa iclr)^T + v k^T; y = S r (per head, O(N^2))
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        const int o = b * C + h * N;
        const float* S0 = S_in + ((int64_t)b * H + h) * N * N;
        float* S1 = S_out + ((int64_t)b * H + h) * N * N;
        float d[1024], bb[1024];  // N <= 1024 (head sizes are 64 in practice)
        for (int j = 0; j < N; ++j) {
          d[j] = std::exp(sigmoid(z[o + j]) * -kDecayScale);
          bb[j] = kappa[o + j] * iclr[o + j];
        }
        const float* kap = kappa + o;
        const float* kv = k + o;
        const float* rv = r + o;
        for (int i = 0; i < N; ++i) {
          const float* row = S0 + (int64_t)i * N;
          float* nrow = S1 + (int64_t)i * N;
          float sa = 0.0f;
#pragma omp simd reduction(+ : sa)
          for (int j = 0; j < N; ++j) sa += row[j] * kap[j];
          const float vi = v[o + i];
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int j = 0; j < N; ++j) {
            const float s = row[j] * d[j] - sa * bb[j] + vi * kv[j];
            nrow[j] = s;
            acc += s * rv[j];
          }
          y[o + i] = acc;
        }
      }

    // ---- GroupNorm per head, bonus term, gate, output projection, residual
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        const int o = b * C + h * N;
        double mean = 0.0, var = 0.0;
        for (int j = 0; j < N; ++j) mean += y[o + j];
        mean /= N;
        for (int j = 0; j < N; ++j) {
          const double dlt = y[o + j] - mean;
          var += dlt * dlt;
        }
        var /= N;
        const float m = (float)mean, rstd = (float)(1.0 / std::sqrt(var + kGroupNormEps));
        float bonus = 0.0f;
        for (int j = 0; j < N; ++j) bonus += r[o + j] * k[o + j] * W[20][h * N + j];
        for (int j = 0; j < N; ++j) {
          const int c = h * N + j;
          const float yn = (y[o + j] - m) * rstd * W[22][c] + W[23][c];
          tmp[o + j] = (yn + bonus * v[o + j]) * g[o + j];
        }
      }
    matmul_rows(tmp, W[21], B, C, C, y);
    for (int i = 0; i < B * C; ++i) x[i] += y[i];

    // ---- ChannelMix: LN2, shift mix, relu^2 MLP, DeepEmbed scale ("v8"), residual
    for (int b = 0; b < B; ++b) {
      float* xf = xa + b * C;
      layer_norm(x + b * C, W[2], W[3], C, kLnEps, xf);
      std::memcpy(ffn_out + ((int64_t)l * B + b) * C, xf, sizeof(float) * C);
      const float* prev = ffn_prev + b * C;
      for (int c = 0; c < C; ++c) tmp[b * C + c] = xf[c] + (prev[c] - xf[c]) * W[24][c];
    }
    matmul_rows(tmp, W[25], B, C, F, hidden);
    for (int i = 0; i < B * F; ++i) {
      const float hv = hidden[i] > 0.0f ? hidden[i] : 0.0f;
      hidden[i] = hv * hv;
    }
    matmul_rows(hidden, W[26], B, F, C, y);
    const float* enn = W[27];
    for (int b = 0; b < B; ++b) {
      const float* scale = enn != nullptr ? enn + tokens[b] * (int64_t)C : nullptr;
      for (int c = 0; c < C; ++c) x[b * C + c] += scale != nullptr ? y[b * C + c] * scale[c] : y[b * C + c];
    }
  }

  // ---- ln_out and head
  for (int b = 0; b < B; ++b) layer_norm(x + b * C, tail[1], tail[2], C, kLnEps, xa + b * C);
  matmul_rows(xa, tail[3], B, C, V, logits);
  return 0;
}

}  // extern "C"
