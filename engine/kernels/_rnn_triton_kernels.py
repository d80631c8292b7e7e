"""The Triton sources of engine.kernels.rnn_triton's kernels (imported only where Triton is
installed; Triton reads TRITON_INTERPRET when this module is imported)."""
import triton
import triton.language as tl


@triton.jit
def time_mix_tail_kernel(
    rkv, up, v_first, s_in, s_out, out,
    k_k, k_a, one_minus_k_a, r_k, ln_w, ln_b,
    plane, log2_decay_base, eps,
    H: tl.constexpr, N: tl.constexpr, FIRST: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)  # one program per (sequence b, head h)
    b = pid // H
    h = pid % H
    C = H * N
    i = tl.arange(0, N)
    row = b * C + h * N + i  # this head's slice of a [B, C] row
    col = h * N + i  # ... of a [C] weight
    r = tl.load(rkv + row).to(tl.float32)
    k = tl.load(rkv + plane + row).to(tl.float32)
    v = tl.load(rkv + 2 * plane + row).to(tl.float32)
    vgate = tl.load(up + row).to(tl.float32)
    iclr = tl.sigmoid(tl.load(up + plane + row).to(tl.float32))
    g = tl.load(up + 2 * plane + row).to(tl.float32)
    z = tl.load(up + 3 * plane + row).to(tl.float32)
    # kappa = normalised k * k_k; the removal key k * (1 - k_a + iclr k_a)
    kk = k * tl.load(k_k + col).to(tl.float32)
    kappa = kk / tl.maximum(tl.sqrt(tl.sum(kk * kk, axis=0)), 1e-12)
    k = k * (tl.load(one_minus_k_a + col).to(tl.float32) + iclr * tl.load(k_a + col).to(tl.float32))
    if not FIRST:  # the value residual: v lerped toward layer 0's value by sigmoid(gate)
        vf = tl.load(v_first + row).to(tl.float32)
        v = v + tl.sigmoid(vgate) * (vf - v)
    d = tl.exp2(log2_decay_base * tl.sigmoid(z))  # DECAY_BASE ** sigmoid(z)
    # S [N, N] (rows: value i, columns: key j): S diag(d) - (S kappa) (kappa iclr)^T + v k^T
    ij = (pid * N + i)[:, None] * N + i[None, :]
    S = tl.load(s_in + ij)
    s_kappa = tl.sum(S * kappa[None, :], axis=1)
    S = S * d[None, :] - s_kappa[:, None] * (kappa * iclr)[None, :] + v[:, None] * k[None, :]
    tl.store(s_out + ij, S)
    y = tl.sum(S * r[None, :], axis=1)
    # GroupNorm over the head, the bonus (sum_j r_j k_j r_k[h, j]) v, the gate
    mean = tl.sum(y, axis=0) / N
    centred = y - mean
    var = tl.sum(centred * centred, axis=0) / N
    y = centred / tl.sqrt(var + eps) * tl.load(ln_w + col).to(tl.float32) + tl.load(ln_b + col).to(tl.float32)
    bonus = tl.sum(r * k * tl.load(r_k + col).to(tl.float32), axis=0)
    tl.store(out + row, ((y + bonus * v) * g).to(out.dtype.element_ty))


@triton.jit
def layer_norm_mix_kernel(
    x, prev, w, b, mix, xa_out, mixed_out,
    rows, C, eps,
    K: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)  # one program per sequence
    i = tl.arange(0, BLOCK)
    m = i < C
    xv = tl.load(x + row * C + i, mask=m, other=0.0).to(tl.float32)
    centred = tl.where(m, xv - tl.sum(xv, axis=0) / C, 0.0)
    var = tl.sum(centred * centred, axis=0) / C
    w_ = tl.load(w + i, mask=m, other=0.0).to(tl.float32)
    b_ = tl.load(b + i, mask=m, other=0.0).to(tl.float32)
    xa = (centred / tl.sqrt(var + eps) * w_ + b_).to(xa_out.dtype.element_ty)
    tl.store(xa_out + row * C + i, xa, mask=m)
    xa = xa.to(tl.float32)  # the mixes start from the LN output as the shift state keeps it
    p = tl.load(prev + row * C + i, mask=m, other=0.0).to(tl.float32)
    for k in tl.static_range(K):  # lerp(xa, prev, mu_k) for each of the K mixes
        mu = tl.load(mix + k * C + i, mask=m, other=0.0).to(tl.float32)
        tl.store(mixed_out + (k * rows + row) * C + i, (xa + mu * (p - xa)).to(mixed_out.dtype.element_ty), mask=m)


@triton.jit
def low_rank_activations_kernel(low, n, BLOCK: tl.constexpr):
    # in place on rows g and w of the [4, rows, R] down-projections (the n = rows * R values of each
    # start at low): sigmoid on g, tanh on w (as 2 sigmoid(2x) - 1)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < 2 * n
    v = tl.load(low + i, mask=m, other=0.0).to(tl.float32)
    out = tl.where(i < n, tl.sigmoid(v), 2.0 * tl.sigmoid(2.0 * v) - 1.0)
    tl.store(low + i, out.to(low.dtype.element_ty), mask=m)


@triton.jit
def relu_square_kernel(h, n, BLOCK: tl.constexpr):
    # in place: relu(h)^2, the ChannelMix's activation
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    v = tl.maximum(tl.load(h + i, mask=m, other=0.0).to(tl.float32), 0.0)
    tl.store(h + i, (v * v).to(h.dtype.element_ty), mask=m)
