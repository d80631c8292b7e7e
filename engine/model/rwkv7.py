"""The RWKV-7 ("x070") and "v8" ("x080", x070 + DeepEmbed) model, in parallel and recurrent mode.

One implementation of the block math (docs/rwkv7-spec.md sections 1-3) serves both modes: the
token mixes, projections, decay, value residual, GroupNorm, bonus term and ChannelMix are the
same functions; only the WKV recurrence differs. Parallel ("GPT") mode hands [B, T, H, N] tensors
to the WKV7 operator (engine.kernels.wkv7, chunk-wise on CPU); recurrent ("RNN") mode runs the
same functions on one token per sequence ([B, C]) and updates the fp32 state in O(H N^2).

The block math lives in engine.model.block_math and RNN mode's runtime in engine.model.recurrent;
this module holds the layers. Module and parameter names are the official checkpoint keys (spec section 5), so
``state_dict()`` is an official RWKV-7 state_dict.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from engine.kernels.wkv7 import wkv7, wkv7_step

from .block_math import (
    LN_X_EPS,
    BlockWeights,
    ChannelMixWeights,
    TimeMixWeights,
    _as_dtype,
    _cast_weights,
    _compiled_parts,
    block_finish,
    block_step_fused,
    block_time_mix_in,
    channel_mix,
    last_token,
    layer_norm,
    shift_plan,
    stack_low_rank,
    time_mix_finish,
    time_mix_project,
)
from .config import ModelConfig, check_head_size_env
from .recurrent import RecurrentMode
from .state import RWKVState


# ---------------------------------------------------------------------------------------------
# the layers: parameters under their official names


class TimeMix(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        C, H, N = config.n_embd, config.n_head, config.head_size
        self.layer_id = layer_id

        def vec():
            return nn.Parameter(torch.empty(1, 1, C))

        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vec() for _ in range(6))
        self.w0, self.w1, self.w2 = vec(), nn.Parameter(torch.empty(C, config.dim_w)), nn.Parameter(torch.empty(config.dim_w, C))
        self.a0, self.a1, self.a2 = vec(), nn.Parameter(torch.empty(C, config.dim_a)), nn.Parameter(torch.empty(config.dim_a, C))
        # layer 0's v0/v1/v2 are unused (it defines v_first) but kept: released checkpoints carry them
        self.v0, self.v1, self.v2 = vec(), nn.Parameter(torch.empty(C, config.dim_v)), nn.Parameter(torch.empty(config.dim_v, C))
        self.g1, self.g2 = nn.Parameter(torch.empty(C, config.dim_g)), nn.Parameter(torch.empty(config.dim_g, C))
        self.k_k, self.k_a = vec(), vec()
        self.r_k = nn.Parameter(torch.empty(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)

    def weights(self, packed: bool = False) -> TimeMixWeights:
        """The parameters as the math functions take them.

        Parallel mode (``packed=False``) gets views and small stacks that autograd flows
        through; RNN mode (``packed=True``) gets contiguous copies laid out for [B, C] inputs.
        """
        C = self.x_r.shape[-1]
        H, N = self.r_k.shape
        mix = torch.cat([self.x_r, self.x_k, self.x_v, self.x_a, self.x_g, self.x_w]).view(6, C)
        RKV = torch.stack([self.receptance.weight.t(), self.key.weight.t(), self.value.weight.t()])
        # layer 0 defines v_first: its v0/v1/v2 stay out of the graph (zeros in their rows)
        v1, v2, v0 = (self.v1, self.v2, self.v0.reshape(C)) if self.layer_id else (
            self.v1.new_zeros(self.v1.shape), self.v2.new_zeros(self.v2.shape), None)
        # RNN mode's cache is in one dtype: the decay's w0 joins the biases (one op less a token)
        w0 = self.w0.reshape(C)
        down, up, bias = stack_low_rank((v1, self.a1, self.g1, self.w1), (v2, self.a2, self.g2, self.w2),
                                        (v0, self.a0.reshape(C), None, w0 if packed else None))
        k_a = self.k_a.reshape(C)
        W = TimeMixWeights(
            mix=mix, RKV=RKV, w0=None if packed else w0, lora_down=down, lora_up=up, lora_bias=bias,
            k_k=self.k_k.reshape(C), k_a=k_a, one_minus_k_a=1 - k_a, r_k=self.r_k.view(H, N, 1),
            O=self.output.weight.t(), ln_w=self.ln_x.weight, ln_b=self.ln_x.bias,
            lora_ranks=(self.v1.shape[1], self.a1.shape[1], self.g1.shape[1], self.w1.shape[1]),
        )  # fmt: skip
        if packed:
            for name in TimeMixWeights.__slots__:
                t = getattr(W, name)
                if isinstance(t, torch.Tensor):
                    setattr(W, name, t.detach().contiguous().clone())
        return W


class ChannelMix(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        C = config.n_embd
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, 4 * C, bias=False)
        self.value = nn.Linear(4 * C, C, bias=False)
        # "v8" DeepEmbed: a per-layer, per-token scale on the ChannelMix output
        self.enn = nn.Embedding(config.vocab_size, C) if config.deep_embed else None

    def weights(self, packed: bool = False) -> ChannelMixWeights:
        copy = (lambda t: t.contiguous().clone()) if packed else (lambda t: t)
        return ChannelMixWeights(
            x_k=copy(self.x_k.reshape(-1)),
            K=copy(self.key.weight.t()),
            V=copy(self.value.weight.t()),
            enn=(self.enn.weight.detach() if packed else self.enn.weight) if self.enn is not None else None,
        )


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        C = config.n_embd
        self.layer_id = layer_id
        self.n_head, self.head_size = config.n_head, config.head_size
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config, layer_id)
        self.compiled = False  # RWKV7.compile_blocks(): the parts around the WKV operator through torch.compile
        self.wkv_recompute = False  # RWKV7.set_wkv_recompute(): the WKV operator saves only its inputs

    def weights(self, packed: bool = False, dtype: torch.dtype | None = None) -> BlockWeights:
        """The block's parameters as the math functions take them.

        ``dtype`` casts them for a reduced-precision forward (autograd flows through the casts
        to the fp32 masters), all but ``att.w0``: the decay pre-activation stays fp32.
        """
        ln = (self.ln1.weight, self.ln1.bias, self.ln2.weight, self.ln2.bias)
        if packed:  # the RNN cache holds no autograd leaves (a traced step takes them as constants)
            ln = tuple(t.detach() for t in ln)
        W = BlockWeights(*ln, self.att.weights(packed), self.ffn.weights(packed))
        if dtype is not None:
            W = _cast_weights(W, dtype)
        return W

    def forward(self, x, idx, v_first, prev, cu_seqlens=None, want_state=False, backend="auto", plan=None):
        """Parallel mode over x [B, T, C]; ``prev`` = (att_shift, wkv, ffn_shift) or Nones.

        Under autocast the block runs in the autocast dtype throughout (weights cast once, the
        residual stream and every activation in that dtype, LayerNorm/GroupNorm statistics in
        fp32 inside their kernels), rather than autocast's mix of bf16 products and fp32
        element-wise work: half the activation memory and traffic, the same functions.
        ``plan`` is ``shift_plan(cu_seqlens, T)``, shared by the layers.
        """
        if self.layer_id == 0:
            x = self.ln0(x)
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):
                return self._forward(x.to(dtype), idx, v_first, prev, cu_seqlens, want_state, backend, plan, dtype)
        return self._forward(x, idx, v_first, prev, cu_seqlens, want_state, backend, plan, None)

    def _forward(self, x, idx, v_first, prev, cu_seqlens, want_state, backend, plan, dtype):
        W = self.weights(dtype=dtype)
        att_prev, wkv_prev, ffn_prev = prev
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        if cu_seqlens is not None and plan is None:
            plan = shift_plan(cu_seqlens, T)
        time_mix_in, block_out = (_compiled_parts() if self.compiled else (block_time_mix_in, block_finish))
        xa, r, z, k, v, a, b, g, v_first = time_mix_in(W, x, att_prev, v_first, plan, self.layer_id == 0, H, N)
        y, wkv_state = wkv7(
            *(t.view(B, T, H, N) for t in (r, z, k, v, a, b)),
            initial_state=wkv_prev,
            output_final_state=want_state,
            cu_seqlens=cu_seqlens,
            backend=backend,
            recompute=self.wkv_recompute,
        )
        x, xf = block_out(W, x, y.view(B, T, C), r, k, v, g, idx, ffn_prev, plan, H, N)
        if not want_state:
            return x, v_first, None
        return x, v_first, (last_token(xa, att_prev, cu_seqlens), wkv_state, last_token(xf, ffn_prev, cu_seqlens))

    def step(self, W: BlockWeights, x, deep_embed, v_first, att_prev, wkv_prev, ffn_prev, wkv_out=None, use_triton=False):
        """Recurrent mode: the same math on x [B, C] for one token per sequence (new WKV state into
        ``wkv_out``). ``deep_embed`` is the tokens' DeepEmbed rows for this layer ("v8") or None.
        ``use_triton``: the element-wise work as five Triton kernels (``block_step_fused``; the
        GPU step's default where Triton imports)."""
        H, N = self.n_head, self.head_size
        if use_triton:
            return block_step_fused(W, x, deep_embed, v_first if self.layer_id else None, att_prev, wkv_prev, ffn_prev, H, N, wkv_out)
        xa = layer_norm(x, W.ln1_w, W.ln1_b)
        r, z, k, v, kappa, b, g, v_first = time_mix_project(W.att, xa, att_prev, v_first, self.layer_id, H, N)
        y, wkv_state = wkv7_step(wkv_prev, r, z, k, v, kappa, b, H, N, wkv_out)
        x = time_mix_finish(W.att, x, _as_dtype(y, x.dtype), r, k, v, g, H, N)
        xf = layer_norm(x, W.ln2_w, W.ln2_b)
        x = channel_mix(W.ffn, x, xf, ffn_prev, deep_embed)
        return x, v_first, xa, wkv_state, xf


class RWKV7(RecurrentMode, nn.Module):
    """RWKV-7 / "v8" language model. ``wkv_backend`` picks the WKV7 operator for parallel mode."""

    def __init__(self, config: ModelConfig, *, init: bool = True, wkv_backend: str = "auto"):
        super().__init__()
        check_head_size_env(config.head_size)
        self.config = config
        self.wkv_backend = wkv_backend
        C, V = config.n_embd, config.vocab_size
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList(Block(config, l) for l in range(config.n_layer))
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)  # model.head(h): logits from hidden states
        self._rnn_cache = None  # (key, weights laid out for RNN mode); see _rnn_weights
        self._rnn_traces = {}  # (batch, dtypes, device) -> frozen trace of the step over that cache
        self.rnn_trace = True
        self.rnn_fused = True  # the C++ CPU step (engine.model.cpu_ext) instead of the trace, where it applies
        self._rnn_fused = None  # that step bound to the current weight cache
        # on CUDA: replay the step from a captured CUDA graph (_graphed_step); measured against the
        # traced step in bench/decode_gpu.py and checked in tests/integration/test_model_gpu.py
        self.rnn_cuda_graph = True
        # on CUDA with Triton: each layer's element-wise work as five kernels (engine.kernels.rnn_triton:
        # LN + token-shift mixes twice, the low-rank activations, the TimeMix tail from the decay
        # to the gate with the WKV update, relu^2), in the graphed and eager steps; False keeps
        # the plain PyTorch step
        self.rnn_triton = True
        # the graphed step built from a torch.compile'd step (element-wise work fused: fewer,
        # larger kernels per replay); opt-in: its first use compiles for tens of seconds
        self.rnn_compile = False
        # RNN mode's weight cache dtype (torch.bfloat16 over fp32 parameters: half the weight bytes a
        # step reads); the WKV state stays fp32, the shift states and logits take this dtype.
        # "auto": bf16 on CUDA with the Triton step, else the parameters' dtype (resolved in
        # recurrent.auto_rnn_weight_dtype); None: the parameters' dtype; or a dtype
        # (torch.float32 chooses fp32 on a GPU). bench/decode_gpu.py --rnn-dtype measures it
        self.rnn_weight_dtype = "auto"
        self._param_list = None
        if init:
            from .init import init_parameters

            init_parameters(self)

    # ---- parallel mode ----------------------------------------------------------------------

    def hidden(self, idx, state: RWKVState | None = None, cu_seqlens=None, return_state: bool = True):
        """idx [B, T] -> (h [B, T, C] after ln_out, final RWKVState or None).

        ``state`` continues earlier text (chunked prefill, long-sequence training). With
        ``cu_seqlens`` (B == 1, packed documents) every document starts fresh (or from its row of
        ``state``) and the returned state has one row per document.
        """
        if idx.dim() != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {tuple(idx.shape)}")
        B, T = idx.shape
        rows = B
        if cu_seqlens is not None:
            if B != 1:
                raise ValueError("packed sequences (cu_seqlens) need batch size 1")
            cu_seqlens = torch.as_tensor(cu_seqlens, dtype=torch.long, device=idx.device)
            if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T:
                raise ValueError(f"cu_seqlens must start at 0 and end at T={T}, got {cu_seqlens.tolist()}")
            rows = cu_seqlens.numel() - 1
        if state is not None and state.batch_size != rows:
            raise ValueError(f"state holds {state.batch_size} sequences but the input has {rows}")
        x = self.emb(idx)  # layer 0 applies ln0 (Block.forward): its parameters live with that block
        v_first = None
        layer_states = []
        plan = shift_plan(cu_seqlens, T) if cu_seqlens is not None else None
        for l, block in enumerate(self.blocks):
            prev = state.layer(l) if state is not None else (None, None, None)
            x, v_first, layer_state = block(x, idx, v_first, prev, cu_seqlens, return_state, self.wkv_backend, plan)
            layer_states.append(layer_state)
        h = self.ln_out(x)
        if not return_state:
            return h, None
        return h, RWKVState(
            torch.stack([s[0] for s in layer_states]),
            torch.stack([s[1] for s in layer_states]).float(),
            torch.stack([s[2] for s in layer_states]),
        )

    def forward(self, idx, state: RWKVState | None = None, return_state: bool = False, cu_seqlens=None):
        h, new_state = self.hidden(idx, state=state, cu_seqlens=cu_seqlens, return_state=return_state)
        logits = self.head(h)
        return (logits, new_state) if return_state else logits

    # ---- recurrent mode ---------------------------------------------------------------------

    def compile_blocks(self, enabled: bool = True) -> "RWKV7":
        """Run each block's parts around the WKV operator through ``torch.compile`` (parallel mode).

        Inductor fuses the element-wise work (token-shift mixes, gates, key normalisation,
        GroupNorm with the bonus term, the residuals and ChannelMix) and recomputes cheap
        element-wise results in backward instead of saving them. Same functions, same math;
        the first forward of each shape pays the compile.
        """
        for block in self.blocks:
            block.compiled = enabled
        return self

    def set_wkv_recompute(self, enabled: bool = True) -> "RWKV7":
        """Training: each layer's WKV operator keeps only its inputs and reruns its forward in
        backward (engine.kernels.wkv7, ``recompute``): less memory for one more WKV forward."""
        for block in self.blocks:
            block.wkv_recompute = enabled
        return self

    # ---- bookkeeping ------------------------------------------------------------------------

    def _drop_rnn_cache(self) -> None:
        self._rnn_cache = None
        self._rnn_traces = {}
        self._rnn_fused = None
        self._param_list = None

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), .cuda(), ...: parameters may be new objects
        self._drop_rnn_cache()
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._drop_rnn_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"{self.config.describe()}, wkv_backend={self.wkv_backend!r}"
