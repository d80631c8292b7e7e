"""Recurrent ("RNN") mode's runtime: the weight cache laid out for one token at a time, and the
step runners over it (eager, a frozen TorchScript trace, a CUDA-graph replay, optionally of a
torch.compile'd step, and the fused C++ CPU step of engine.model.cpu_ext).

``RecurrentMode`` is mixed into ``engine.model.rwkv7.RWKV7``: the math is the block's
(``Block.step`` over engine.model.block_math), this module only decides how it runs and keeps
what each runner needs alive. Every runner is tested equal to the eager step
(tests/unit/test_model_rnn_trace.py, test_model_cpu_ext.py; the CUDA graph on the GPU).
"""
from __future__ import annotations

import functools
import operator
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.kernels import rnn_triton

from . import cpu_ext
from .block_math import BlockWeights, layer_norm
from .state import RWKVState

_VERSION = operator.attrgetter("_version")  # bumped by every in-place update of a tensor


def auto_rnn_weight_dtype(param_dtype: torch.dtype, device: torch.device, triton_step: bool) -> torch.dtype:
    """What ``model.rnn_weight_dtype = "auto"`` (the default) resolves to: a bf16 weight cache over
    fp32 parameters where the step runs its Triton kernels on CUDA (the default there), the WKV
    state staying fp32; anywhere else the parameters' dtype. Measured on an H100 (bench/results/
    generate.md, round 8): with the Triton step and the GPU sampler the bf16 cache was faster at
    both sizes and every batch; over the plain PyTorch step it was slower (more cast kernels), and
    on the CPU the fused C++ step runs in fp32 only. Its error against fp32 is held to a stated
    tolerance (tests/unit/test_model_rnn_dtype.py)."""
    if torch.device(device).type == "cuda" and triton_step and param_dtype == torch.float32:
        return torch.bfloat16
    return param_dtype


class RecurrentMode:
    """RNN-mode methods of the model (needs ``emb``, ``blocks``, ``ln_out``, ``head``, ``config``)."""

    def init_state(self, batch_size: int = 1) -> RWKVState:
        p = self.emb.weight
        return RWKVState.zeros(self.config.n_layer, batch_size, self.config.n_embd, self.config.head_size, dtype=p.dtype, device=p.device)

    def _rnn_weights(self) -> tuple[torch.Tensor, list[BlockWeights], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(LN0-folded embedding, per-block weights, ln_out w, ln_out b, head as [C, V], DeepEmbed
        table [V, L * C] of all layers or None): the step's weights.

        Without autograd they are a cached copy laid out for matrix-vector products; any
        in-place update of a parameter (optimizer step, load_state_dict) bumps its version and
        a move or dtype change gives new storage, so either rebuilds the cache.
        """
        ln0 = self.blocks[0].ln0
        if torch.is_grad_enabled():
            return (
                layer_norm(self.emb.weight, ln0.weight, ln0.bias),
                [b.weights() for b in self.blocks],
                self.ln_out.weight, self.ln_out.bias, self.head.weight.t(), self._deep_embed_table(),
            )  # fmt: skip
        params = self._param_list
        if params is None:
            params = self._param_list = list(self.parameters())
        cast = self.rnn_weight_cache_dtype()
        cast = None if cast == params[0].dtype else cast
        key = (sum(map(_VERSION, params)), params[0].data_ptr(), params[0].dtype, params[0].device, cast)
        if self._rnn_cache is None or self._rnn_cache[0] != key:
            with torch.no_grad():
                pack = (
                    layer_norm(self.emb.weight, ln0.weight, ln0.bias),  # LN0 folded into the table
                    [b.weights(packed=True, dtype=cast) for b in self.blocks],
                    self.ln_out.weight.detach(), self.ln_out.bias.detach(), self.head.weight.t().contiguous(),
                    self._deep_embed_table(),
                )  # fmt: skip
                if cast is not None:
                    pack = (pack[0].to(cast), pack[1], *(None if t is None else t.to(cast) for t in pack[2:]))
            self._rnn_cache = (key, pack)
            self._rnn_traces = {}
            self._rnn_fused = None
        return self._rnn_cache[1]

    def rnn_weight_cache_dtype(self) -> torch.dtype:
        """The dtype RNN mode's weight cache takes: ``model.rnn_weight_dtype`` resolved, the one
        place that does so. ``"auto"`` (the default): ``auto_rnn_weight_dtype``; ``None``: the
        parameters' dtype; a floating torch dtype: that one (``torch.float32`` chooses fp32 on a GPU)."""
        p = self.emb.weight
        setting = self.rnn_weight_dtype
        if isinstance(setting, str) and setting == "auto":
            return auto_rnn_weight_dtype(p.dtype, p.device, self._triton_step(p.device))
        if setting is None:
            return p.dtype
        if isinstance(setting, torch.dtype) and setting.is_floating_point:
            return setting
        raise ValueError(f"model.rnn_weight_dtype must be 'auto', None (the parameters' dtype) or a floating torch dtype "
                         f"such as torch.float32 or torch.bfloat16, not {setting!r}")

    def _deep_embed_table(self) -> torch.Tensor | None:
        """Every layer's DeepEmbed rows side by side, [V, L * C] ("v8"; None for x070): the step
        looks up a token's rows for all layers in one op instead of one per layer."""
        if not self.config.deep_embed:
            return None
        return torch.cat([b.ffn.enn.weight for b in self.blocks], dim=1)

    def step(self, tokens, state: RWKVState):
        """RNN mode: tokens [B] -> (logits [B, V], new state). ``state`` itself is not modified.

        Without autograd (``torch.no_grad``/``inference_mode``) the step runs as a frozen
        TorchScript trace of ``_step_layers`` over the cached weights (one per batch size; set
        ``model.rnn_trace = False`` for plain eager mode): the same math, minus the Python
        dispatch that dominates a batch-1 step on CPU. On CPU in fp32 at small batch the fused
        C++ step (``engine.model.cpu_ext``, built on first use) runs instead of the trace, unless
        ``model.rnn_fused = False``, ``PIANOMUSE_CPU_EXT=0`` or ``wkv_backend="reference"``.
        """
        emb = self.emb.weight
        if torch.is_autocast_enabled(emb.device.type):
            # the step is defined over the weight cache in the weights' own dtype: autocast would
            # mix dtypes inside it (a bf16 audition of fp32 master weights), so it runs without,
            # and shift states carried over from an autocast prefill are brought to that dtype
            with torch.autocast(emb.device.type, enabled=False):
                return self.step(tokens, state.to(dtype=emb.dtype))
        pack = self._rnn_weights()
        emb = pack[0]
        if state.att_shift.dtype != emb.dtype:  # a weight cache in another dtype (rnn_weight_dtype)
            state = state.to(dtype=emb.dtype)
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=emb.device).view(-1)
        B = tokens.shape[0]
        if state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} sequences but {B} tokens were given")
        run = None
        if self.rnn_trace and not torch.is_grad_enabled():
            if emb.device.type == "cuda" and self.rnn_cuda_graph:
                run = self._graphed_step(pack, tokens, state)
            else:
                # the "reference" backend pins a model to the plain PyTorch math (the tests' oracle)
                fused = self.rnn_fused and self.wkv_backend != "reference"
                run = self._fused_cpu_step(pack, B, state) if fused else None
            if run is None:
                run = self._traced_step(pack, tokens, state)
        if run is None:
            inputs = (pack, tokens, state.att_shift, state.wkv, state.ffn_shift)
            fused = not torch.is_grad_enabled() and self._triton_on(emb.device)
            logits, att, wkv, ffn = self._with_triton_fallback(fused, lambda use: self._step_layers(*inputs, use))
        else:
            logits, att, wkv, ffn = run(tokens, state.att_shift, state.wkv, state.ffn_shift)
        return logits, RWKVState(att, wkv, ffn)

    def _triton_on(self, device: torch.device) -> bool:
        """Whether the step runs each layer's element-wise work as Triton kernels: on CUDA with
        Triton importable, unless ``model.rnn_triton = False`` (never in a TorchScript trace,
        which would not record the launch, nor under autograd: the kernel has no backward)."""
        return self.rnn_triton and device.type == "cuda" and rnn_triton.available(device)

    def _triton_step(self, device: torch.device) -> bool:
        """Whether ``step`` runs the Triton kernels here: the graphed step (not the compiled one,
        which makes its own kernels) or the eager one, never the traced step."""
        return self._triton_on(device) and not self.rnn_compile and (self.rnn_cuda_graph or not self.rnn_trace)

    def _step_layers(self, pack, tokens, att_shift, wkv, ffn_shift, use_triton: bool = False):
        """The recurrent step over all layers on plain tensors: (logits, att_shift, wkv, ffn_shift).
        ``use_triton``: each layer's element-wise work as Triton kernels (``Block.step``)."""
        emb, weights, ln_out_w, ln_out_b, head, deep_embed = pack
        x = F.embedding(tokens, emb)
        L = len(weights)
        scales = F.embedding(tokens, deep_embed).view(tokens.shape[0], L, -1).unbind(1) if deep_embed is not None else (None,) * L
        v_first = None
        att, new_wkv, ffn = [], [], []
        # without autograd every layer writes its new WKV state straight into its slot of one
        # [L, B, H, N, N] tensor: no stack copy of the largest part of the state at the end
        wkv_all = None if torch.is_grad_enabled() else torch.empty_like(wkv)
        wkv_out = wkv_all.unbind(0) if wkv_all is not None else (None,) * L
        layers = zip(self.blocks, weights, scales, att_shift.unbind(0), wkv.unbind(0), ffn_shift.unbind(0), wkv_out)
        for block, W, scale, att_prev, wkv_prev, ffn_prev, out in layers:
            x, v_first, a_s, S, f_s = block.step(W, x, scale, v_first, att_prev, wkv_prev, ffn_prev, out, use_triton)
            att.append(a_s)
            new_wkv.append(S)
            ffn.append(f_s)
        logits = layer_norm(x, ln_out_w, ln_out_b) @ head
        return logits, torch.stack(att), wkv_all if wkv_all is not None else torch.stack(new_wkv), torch.stack(ffn)

    def _cached_runner(self, key, build, failure: str, switch: str):
        """The step runner for ``key`` from the per-cache store, built by ``build()`` on first
        use. A runner that cannot be built warns once and turns its switch (``rnn_trace`` or
        ``rnn_cuda_graph``) off for this model."""
        runners = self._rnn_traces
        if key not in runners:
            if len(runners) >= 8:  # a handful of batch sizes in play at once; don't hoard graphs
                runners.clear()
            try:
                runners[key] = build()
            except (RuntimeError, TypeError) as err:  # pragma: no cover - torch builds without TorchScript/graphs
                warnings.warn(f"{failure}: {err}", RuntimeWarning, stacklevel=4)
                setattr(self, switch, False)
                return None
        return runners[key]

    def _traced_step(self, pack, tokens, state: RWKVState):
        """A frozen trace of ``_step_layers`` for this batch size and state layout, or None.

        Traced over the weight cache ``pack`` (its tensors become graph constants), so it is
        dropped with that cache. A trace that cannot be built turns tracing off for this model.
        """
        inputs = (tokens, state.att_shift, state.wkv, state.ffn_shift)

        def build():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notes on Python ints taken from shapes
                traced = torch.jit.trace(_RecurrentStep(self, pack), inputs, check_trace=False)
                traced = torch.jit.freeze(traced.eval())
                # TorchScript's executor profiles and optimizes over the first calls (tens of
                # ms each): pay that here, not in the first live steps
                for _ in range(3):
                    traced(*inputs)
            return traced

        key = (tokens.shape[0], state.att_shift.dtype, state.wkv.dtype, tokens.device)
        return self._cached_runner(key, build, "RNN step tracing failed, using eager mode", "rnn_trace")

    def _with_triton_fallback(self, use_triton: bool, run):
        """``run(use_triton)``; where the Triton kernels fail (a Triton that cannot compile for
        this GPU), warn once, turn ``rnn_triton`` off for this model and ``run(False)``: the
        PyTorch step, the same math."""
        if not use_triton:
            return run(False)
        try:
            return run(True)
        except Exception as err:  # noqa: BLE001 - any failure of the optional kernels falls back to PyTorch
            warnings.warn(f"the RNN step's Triton kernels failed, using the PyTorch step: {type(err).__name__}: {err}",
                          RuntimeWarning, stacklevel=4)
            self.rnn_triton = False
            return run(False)

    def _graphed_step(self, pack, tokens, state: RWKVState):
        """On CUDA: the eager step over the weight cache captured once per batch size and state
        layout as a CUDA graph, then replayed: one launch per token instead of hundreds (at batch
        1 the step is bound by launch overhead, not by the GPU). Inputs are copied into the
        graph's static buffers and outputs copied out, so callers keep their own states (a
        session's bar snapshots). Dropped with the weight cache; None where capture fails.
        """
        fused = not self.rnn_compile and self._triton_on(tokens.device)  # (torch.compile makes its own kernels)
        key = ("graph", tokens.shape[0], state.att_shift.dtype, state.wkv.dtype, tokens.device, fused, self.rnn_compile)
        return self._cached_runner(key, lambda: self._with_triton_fallback(fused, lambda use: _GraphedStep(self, pack, tokens, state, use)),
                                   "CUDA graph capture of the RNN step failed, using the traced step", "rnn_cuda_graph")

    def _fused_cpu_step(self, pack, batch_size: int, state: RWKVState):
        """The C++ step over the weight cache ``pack`` where it applies (CPU, fp32, small batch), else None."""
        emb = pack[0]
        if (
            emb.device.type != "cpu" or emb.dtype != torch.float32 or batch_size > cpu_ext.MAX_BATCH
            or state.att_shift.dtype != torch.float32 or state.ffn_shift.dtype != torch.float32
            or state.wkv.dtype != torch.float32 or state.wkv.device.type != "cpu" or self.config.head_size > cpu_ext.MAX_HEAD_SIZE
            or not cpu_ext.enabled()
        ):  # fmt: skip
            return None
        if self._rnn_fused is None:
            lib = cpu_ext.library()
            if lib is None:
                self.rnn_fused = False  # warned once; this model keeps the PyTorch step
                return None
            self._rnn_fused = cpu_ext.FusedStep(lib, pack, self.config.n_head, self.config.head_size)
        return self._rnn_fused


class _RecurrentStep(nn.Module):
    """``RWKV7._step_layers`` over one weight cache, as a module to trace (the weights are constants)."""

    def __init__(self, model, pack):
        super().__init__()
        self.step_layers = model._step_layers  # a bound method: the model is not registered as a submodule
        self.pack = pack

    def forward(self, tokens, att_shift, wkv, ffn_shift):
        return self.step_layers(self.pack, tokens, att_shift, wkv, ffn_shift)


class _GraphedStep:
    """``RWKV7._step_layers`` captured as a CUDA graph over static input and output buffers."""

    def __init__(self, model, pack, tokens, state: RWKVState, use_triton: bool = False):
        self.inputs = [tokens.clone(), state.att_shift.clone(), state.wkv.clone(), state.ffn_shift.clone()]
        if model.rnn_compile:
            step = torch.compile(model._step_layers, dynamic=False)
        else:
            step = functools.partial(model._step_layers, use_triton=use_triton)
        side = torch.cuda.Stream(device=tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        with torch.cuda.stream(side):  # warm-up outside the capture (workspace allocation, kernel loads)
            for _ in range(2):
                step(pack, *self.inputs)
        torch.cuda.current_stream(tokens.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(pack, *self.inputs)

    def __call__(self, tokens, att_shift, wkv, ffn_shift):
        for buf, value in zip(self.inputs, (tokens, att_shift, wkv, ffn_shift)):
            buf.copy_(value)
        self.graph.replay()
        return tuple(t.clone() for t in self.outputs)
