"""Chunk-wise WKV7 in plain PyTorch: the CPU backend (and the fallback wherever CUDA is off).

Same contract as ``reference.wkv7_reference``. Per head, with state S [N_v, N_k]:

    S_t = S_{t-1} (diag(d_t) + a_t b_t^T) + v_t k_t^T,      y_t = S_t r_t.

Inside a chunk of L tokens, with D_t = prod_{s<=t} d_s (per key channel, from the chunk start)
and u_t = S_{t-1} a_t, unrolling gives

    S_t = (S_0 + sum_{s<=t} u_s (b_s/D_s)^T + v_s (k_s/D_s)^T) diag(D_t),
    u_t = S_0 (D_{t-1} a_t) + sum_{s<t} u_s <D_{t-1} a_t, b_s/D_s> + v_s <D_{t-1} a_t, k_s/D_s>.

So U (rows u_t) solves a unit lower-triangular L x L system: U = W S_0^T + U0 with
W = (I - M_ab)^{-1} (D_prev * a) and U0 = (I - M_ab)^{-1} M_ak V (the WY / UT form of the product
of the rank-1-plus-diagonal transitions; the inverse is formed explicitly, one small triangular
solve per chunk and head). Everything that does not involve S_0 is computed for all
chunks at once with batched matrix products; what remains is the chunk merge of the spec
(section 8), S_out = S_in P + C, a short sequential loop over chunks, and y = Q S_in^T + Y0.

Numerics: decays lie in (0.545, 1), so over a chunk of 64 the cumulative decay stays above 1e-17
and its inverse below 1e17, well inside fp32 range. Every pairwise factor D_t / D_s is formed as
a product of two such numbers, which keeps full relative precision (no subtraction is involved).
The cumulative log-decays are summed and exponentiated in fp64 so they carry no rounding drift;
in fp32 the result is as close to an fp64 run as the fp32 reference loop is.

Any T and packed sequences (cu_seqlens) use one layout in which no chunk crosses a sequence end:
each sequence's last chunk is padded with identity steps (log-decay 0 and 1/D zeroed, so their
k, v, a, b never reach the state), and the padded outputs are never read back.
Chunks are ordered step-major over segments sorted by length, so at loop step k the segments still
running are a prefix of the batch and the state tensor just shrinks.

Backward is PyTorch autograd through these operations.
"""
from __future__ import annotations

import torch

from .reference import DECAY_SCALE, compute_dtype

# 32 balances the L x L work (grows with L) against the per-chunk N x N work and the length of
# the sequential loop (shrink with L) at N = 64; it measured fastest or on par in
# bench/wkv7_cpu.py --chunk-sizes 16,32,64. Anything up to 64 is numerically safe (see above).
CHUNK_SIZE = 32
MAX_CHUNK_SIZE = 64


def _preview(values: list, limit: int = 8) -> str:
    return str(values) if len(values) <= limit else f"{values[:limit]} ... ({len(values)} values)"


def _segments(B: int, T: int, cu_seqlens, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Start offsets and lengths (in the flattened B*T token axis) of each independent sequence."""
    if cu_seqlens is None:
        starts = torch.arange(B, device=device, dtype=torch.long) * T
        return starts, torch.full((B,), T, device=device, dtype=torch.long)
    if B != 1:
        raise ValueError("wkv7 with cu_seqlens needs batch size 1 (sequences packed along T)")
    cu = torch.as_tensor(cu_seqlens, device=device).long().flatten()
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != T or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(
            f"cu_seqlens must rise from 0 to the packed length {T} (got {_preview(cu.tolist())}); "
            "build it as the cumulative sum of the sequence lengths with a leading 0"
        )
    return cu[:-1], cu[1:] - cu[:-1]


def _chunk_layout(starts, lengths, L: int):
    """Which token fills each chunk slot, step-major over segments sorted by chunk count.

    Returns (token [n_chunks, L], valid [n_chunks, L], steps, order): ``steps[k]`` is how many
    segments have a k-th chunk (the first ``steps[k]`` of ``order``). Slots past a segment's end
    are padding: ``valid`` is False there and ``token`` points at the segment start (any real row
    would do; padding is neutralised later, not read as zeros).
    """
    n_chunks = (lengths + L - 1) // L
    order = torch.argsort(n_chunks, descending=True, stable=True)
    n_sorted, starts_s, lengths_s = n_chunks[order], starts[order], lengths[order]
    max_k = int(n_sorted[0]) if n_sorted.numel() else 0
    k_grid = torch.arange(max_k, device=lengths.device)
    live = n_sorted[None, :] > k_grid[:, None]  # [max_k, n_seqs]; rows are prefixes
    k_idx, seg = live.nonzero(as_tuple=True)  # row-major = step-major
    pos = k_idx[:, None] * L + torch.arange(L, device=lengths.device)[None, :]
    valid = pos < lengths_s[seg, None]
    token = starts_s[seg, None] + torch.where(valid, pos, 0)
    steps = live.sum(1).tolist()
    return token, valid, steps, order


def _intra_chunk(r, k, v, a, b, logd, valid):
    """All state-independent chunk quantities; inputs [n_chunks * H, L, N], ``valid`` [.., L, 1] or None.

    Returns Q, Y0 ([.., L, N]) for y = Q S_in^T + Y0 and P, C ([.., N, N]) for S_out = S_in P + C.
    ``valid`` (1 for real tokens, 0 for padding, or None when there is none) turns padding slots
    into identity steps: log-decay 0, and 1/D_t zeroed so their k and b (hence v and a too) never
    reach the state. Plain 3-D bmm throughout (matmul on 4-D tensors copies transposed operands)
    and no concatenations: on CPU these small kernels are bound by memory passes, not flops.
    """
    cdt = r.dtype
    L, N = r.shape[-2:]
    if valid is not None:
        logd = logd * valid
    # The cumulative sum and its exp in fp64: they carry the only error that could grow with L.
    # The rest derives from D_t with single roundings (1/D_t, D_t / d_t with 1/d_t in (1, 1.84)).
    decay_in = torch.exp(logd.to(torch.float64).cumsum(1)).to(cdt)  # D_t
    inv_decay = torch.reciprocal(decay_in)
    if valid is not None:
        inv_decay = inv_decay * valid
    decay_prev = decay_in * torch.exp(-logd)  # D_{t-1}
    decay_total = decay_in[:, -1:, :]  # D_L

    r_hat = r * decay_in
    a_hat = a * decay_prev
    b_tilde = b * inv_decay
    k_tilde = k * inv_decay
    # Causal masks as float multipliers (cheaper than where); strict for the a rows (u_t uses
    # s < t), inclusive for the r rows (y_t reads the updated state).
    ones = torch.ones(L, L, dtype=cdt, device=r.device)
    strict, incl = torch.tril(ones, -1), torch.tril(ones)
    m_ab = torch.bmm(a_hat, b_tilde.transpose(1, 2)) * strict
    m_ak = torch.bmm(a_hat, k_tilde.transpose(1, 2)) * strict
    m_rb = torch.bmm(r_hat, b_tilde.transpose(1, 2)) * incl
    m_rk = torch.bmm(r_hat, k_tilde.transpose(1, 2)) * incl

    # (I - M_ab)^{-1} explicitly: an L x L right-hand side is cheaper than [a_hat | M_ak V], and
    # the inverse of this unit-triangular matrix stays small (it is a product of transitions).
    eye = torch.eye(L, dtype=cdt, device=r.device).expand_as(m_ab)
    inv = torch.linalg.solve_triangular(-m_ab, eye, upper=False, unitriangular=True)
    w_wy = torch.bmm(inv, a_hat)
    u0 = torch.bmm(inv, torch.bmm(m_ak, v))

    q = torch.baddbmm(r_hat, m_rb, w_wy)  # R_hat + M_rb W
    # In-place accumulation into fresh bmm outputs (bmm does not save its output for backward).
    y0 = torch.bmm(m_rk, v).baddbmm_(m_rb, u0)  # M_rb U0 + M_rk V
    b_end = b_tilde * decay_total  # b D_L / D_t
    p = torch.bmm(w_wy.transpose(1, 2), b_end)
    p.diagonal(dim1=1, dim2=2).add_(decay_total[:, 0, :])
    c_off = torch.bmm(u0.transpose(1, 2), b_end).baddbmm_(v.transpose(1, 2), k_tilde * decay_total)
    return q, y0, p, c_off


def wkv7_chunked(
    r, w, k, v, a, b, initial_state=None, output_final_state=False, cu_seqlens=None, chunk_size=CHUNK_SIZE
):
    """WKV7 forward, chunk-wise; see the module docstring. Returns (y, final_state or None)."""
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}, got {chunk_size}")
    B, T, H, N = r.shape
    cdt = compute_dtype(r.dtype)
    dev = r.device
    starts, lengths = _segments(B, T, cu_seqlens, dev)
    n_seqs = starts.numel()
    if initial_state is not None and tuple(initial_state.shape) != (n_seqs, H, N, N):
        raise ValueError(
            f"initial_state must have shape {(n_seqs, H, N, N)} (one [H, N, N] state per sequence), "
            f"got {tuple(initial_state.shape)}"
        )
    state = (
        initial_state.to(cdt) if initial_state is not None else torch.zeros(n_seqs, H, N, N, dtype=cdt, device=dev)
    )

    L = chunk_size
    token, valid, steps, order = _chunk_layout(starts, lengths, L)
    n_chunks = token.shape[0]
    # Gather rows of the flat (token, head) axis straight into the [n_chunks * H, L, N] layout.
    row = (token[:, None, :] * H + torch.arange(H, device=dev)[None, :, None]).flatten()

    def to_chunks(x):
        return x.reshape(B * T * H, N).index_select(0, row).view(n_chunks * H, L, N).to(cdt)

    r_c, k_c, v_c, a_c, b_c = (to_chunks(x) for x in (r, k, v, a, b))
    logd_c = -DECAY_SCALE * torch.sigmoid(to_chunks(w))
    valid_rows = valid.repeat_interleave(H, 0)[..., None]
    padded = not bool(valid.all())
    mask = valid_rows.to(cdt) if padded else None
    q, y0, p, c_off = _intra_chunk(r_c, k_c, v_c, a_c, b_c, logd_c, mask)

    # Batch and head share one leading axis from here on: [sequences * H, N, N].
    state = state.index_select(0, order).reshape(n_seqs * H, N, N)
    # split (not slicing in the loop) so autograd joins the pieces once instead of once per step;
    # the read-out happens in the loop so the per-chunk input states are never concatenated.
    rows = [m * H for m in steps]
    ys, finished = [], []
    for n, p_k, c_k, q_k, y0_k in zip(rows, p.split(rows), c_off.split(rows), q.split(rows), y0.split(rows)):
        if n < state.shape[0]:
            finished.append(state[n:])
            state = state[:n]
        ys.append(torch.baddbmm(y0_k, q_k, state.transpose(1, 2)))
        state = torch.baddbmm(c_k, state, p_k)
    finished.append(state)

    if n_chunks:
        y_c = torch.cat(ys).view(n_chunks * H * L, N)
        # Back from chunk slots to (token, head) rows: each real row sits in exactly one slot.
        real = valid_rows.flatten()
        slot = torch.empty(B * T * H, dtype=torch.long, device=dev)
        slot[row[real]] = real.nonzero().flatten()
        y = y_c.index_select(0, slot).view(B, T, H, N)
    else:
        y = r.new_zeros(B, T, H, N, dtype=cdt)

    final = None
    if output_final_state:
        final_sorted = torch.cat(finished[::-1]).view(n_seqs, H, N, N)
        final = final_sorted.index_select(0, torch.argsort(order))
    return y.to(r.dtype), final
