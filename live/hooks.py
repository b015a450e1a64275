"""Routing hooks on the sparse-MoE blocks of a Hugging Face model: record the routing, or force it.

Written against transformers 5.x, where every supported model (OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE)
has a sparse block `mlp` with a router `gate` returning `(logits, top_k_weights, top_k_index)` and a
fused `experts` module called as `experts(hidden, top_k_index, top_k_weights)`. A forward hook on the
router sees every token's choice and may replace it, so forcing a trace's routing changes which
experts run and nothing else (the weights come from the model's own router probabilities).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emu.errors import EmuError
from emu.trace import RoutingTrace
from emu.trace.routing_trace import PHASE_DECODE, PHASE_PREFILL


def sparse_blocks(model: Any) -> list[Any]:
    """The sparse-MoE blocks in layer order; dense layers (Qwen `mlp_only_layers`) are skipped."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise EmuError(f"{type(model).__name__} has no decoder `layers`; expected a transformers MoE model")
    blocks = [layer.mlp for layer in layers if _is_sparse_block(getattr(layer, "mlp", None))]
    if not blocks:
        raise EmuError(f"{type(model).__name__}: no sparse-MoE block with a router `gate` (top_k, weight) and an "
                       f"`experts` module; transformers 5.x layout expected")
    return blocks


def _is_sparse_block(mlp: Any) -> bool:
    gate = getattr(mlp, "gate", None)
    return (gate is not None and hasattr(mlp, "experts") and hasattr(gate, "top_k")
            and getattr(getattr(gate, "weight", None), "ndim", 0) == 2)


def _first_sparse_layer(model: Any) -> Any:
    inner = getattr(model, "model", model)
    return next(layer for layer in inner.layers if _is_sparse_block(getattr(layer, "mlp", None)))


def _normalizes(gate: Any) -> bool:
    """Mixtral's router always renormalizes the top-k; OLMoE and Qwen follow `norm_topk_prob`."""
    return bool(getattr(gate, "norm_topk_prob", True))


def forced_output(gate: Any, logits: Any, scores: Any, forced: Any) -> tuple[Any, Any, Any]:
    """The router's output with `forced` experts: their weights are the router's own probabilities."""
    import torch

    probs = torch.nn.functional.softmax(logits.float(), dim=-1)
    weights = probs.gather(1, forced)
    if _normalizes(gate):
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return logits, weights.to(scores.dtype), forced


def _device_routing(trace: RoutingTrace, device: Any) -> Any:
    """The trace's expert ids on the model's device, layer-major (each layer's slice of a pass contiguous).

    Uploaded once, before any measured pass: an upload per layer from the router hook would be a synchronous
    host-to-device copy, which a CUDA copy engine runs after every copy submitted before it, so the forward
    thread would block behind the runtime's prefetches in flight (a cost no real serving stack pays)."""
    import torch

    ids = np.ascontiguousarray(trace.experts.transpose(1, 0, 2), dtype=np.int64)
    return torch.from_numpy(ids).to(device)


class RoutingHooks:
    """Records (and optionally forces) the routing of every pass; `trace()` gives an emu RoutingTrace.

    The runner brackets each forward pass with `begin_pass` / `end_pass`: a prefill is one pass, each
    decode step another. With `speculate`, the prediction for layer l is layer l's gate applied to the
    hidden state entering layer l-1's MoE block (for layer 0: the input of its decoder layer), the
    next-layer speculator of SpecMD. With `logits` (and `record`) the router's full logits of every token are
    kept too (`n_experts` values per token and layer: off by default, it is n_experts / top_k times the
    routing's size), for SpecMD's cache-aware routing (`history = 1`); with `force` they are the model's own
    router logits, not those of the forced routing.
    """

    def __init__(self, model: Any, *, record: bool = True, speculate: bool = True,
                 force: RoutingTrace | None = None, static: bool = False, logits: bool = False) -> None:
        self.blocks = sparse_blocks(model)
        self.gates = [b.gate for b in self.blocks]
        self.n_layers = len(self.blocks)
        self.top_k = int(self.gates[0].top_k)
        self.n_experts = int(self.gates[0].weight.shape[0])
        self.record = record
        self.logits = logits
        self.speculate = speculate
        self.force = force
        self._forced: Any = None
        if force is not None:
            force.check_fits(self.n_layers, self.n_experts, self.top_k)
            self._forced = _device_routing(force, self.gates[0].weight.device)
        # static: the forced routing of a pass is copied into a buffer of fixed address per token count
        # (`_forced_now`), so a CUDA graph captured through these hooks reads each replayed pass's own
        self.static = static
        self._forced_now: dict[int, Any] = {}
        self._model = model
        self._handles: list[Any] = []
        self.install()
        self._in_pass = False
        self._force_pass: int | None = None
        self._cur_ids: list[Any] = []
        self._cur_scores: list[Any] = []
        self._cur_pred: list[Any] = []
        self._cur_logits: list[Any] = []
        self._passes: list[tuple[int, np.ndarray, np.ndarray]] = []  # phase, request, position
        self._ids: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._pred: list[np.ndarray] = []
        self._logits: list[np.ndarray] = []

    # --- pass structure ----------------------------------------------------------------------------
    def begin_pass(self, phase: int, requests: np.ndarray, positions: np.ndarray,
                   force_pass: int | None = None) -> None:
        if phase not in (PHASE_PREFILL, PHASE_DECODE):
            raise EmuError(f"expected phase 0 (prefill) or 1 (decode), got {phase}")
        if force_pass is not None and self.force is None:
            raise EmuError("force_pass given but the hooks were built without a trace to force")
        self._in_pass = True
        self._force_pass = force_pass
        if self.static and force_pass is not None:
            self._stage_forced(force_pass, len(requests))
        self._cur_ids = [None] * self.n_layers
        self._cur_scores = [None] * self.n_layers
        self._cur_pred = [None] * self.n_layers
        self._cur_logits = [None] * self.n_layers
        self._passes.append((phase, np.asarray(requests, np.int32), np.asarray(positions, np.int32)))

    def end_pass(self) -> None:
        if not self._in_pass:
            raise EmuError("end_pass without begin_pass")
        self._in_pass = False
        if not self.record:
            return
        missing = [i for i, x in enumerate(self._cur_ids) if x is None]
        if missing:
            raise EmuError(f"the pass ran no router at MoE layers {missing}; was the model called?")
        ids = np.stack([x.cpu().numpy() for x in self._cur_ids], axis=1).astype(np.int16)
        n_tok = self._passes[-1][1].shape[0]
        if ids.shape[0] != n_tok:
            raise EmuError(f"the pass routed {ids.shape[0]} tokens but begin_pass named {n_tok}")
        self._ids.append(ids)
        self._scores.append(np.stack([x.float().cpu().numpy() for x in self._cur_scores], axis=1).astype(np.float16))
        if self.speculate:
            self._pred.append(np.stack([x.cpu().numpy() for x in self._cur_pred], axis=1).astype(np.int16))
        if self.logits:
            # float16: the trace's logits dtype (routers compute them in bf16, which float16 holds exactly)
            self._logits.append(np.stack([x.float().cpu().numpy() for x in self._cur_logits], axis=1)
                                .astype(np.float16))

    def discard_pass(self) -> None:
        """End the current pass without recording it (a CUDA graph's capture pass, which computes nothing)."""
        if not self._in_pass:
            raise EmuError("discard_pass without begin_pass")
        self._in_pass = False
        self._passes.pop()

    def _stage_forced(self, p: int, n_tok: int) -> None:
        import torch

        t0, t1 = self._forced_span(p, n_tok)
        buf = self._forced_now.get(n_tok)
        if buf is None:
            buf = self._forced_now[n_tok] = torch.empty((self.n_layers, n_tok, self.top_k), dtype=torch.int64,
                                                        device=self._forced.device)
        torch.add(self._forced[:, t0:t1], 0, out=buf)  # a kernel: no copy engine, no host sync

    def current_tensors(self) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """This pass's per-layer routing, scores, prediction and logits tensors (those of a captured graph)."""
        return list(self._cur_ids), list(self._cur_scores), list(self._cur_pred), list(self._cur_logits)

    def adopt_tensors(self, tensors: tuple[list[Any], list[Any], list[Any], list[Any]]) -> None:
        """A replayed pass: its routing is in the captured graph's tensors (the hooks' Python did not run)."""
        self._cur_ids, self._cur_scores, self._cur_pred, self._cur_logits = (list(t) for t in tensors)

    def install(self) -> None:
        """Hook the routers (done at construction; again after `remove`, e.g. once another request's passes
        with their own hooks ran in between: what was recorded so far is kept)."""
        if self._handles:
            return
        for layer, gate in enumerate(self.gates):
            self._handles.append(gate.register_forward_hook(self._make_hook(layer)))
        if self.speculate:
            first = _first_sparse_layer(self._model)
            self._handles.append(first.register_forward_pre_hook(self._layer0_input, with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # --- hooks -------------------------------------------------------------------------------------
    def _layer0_input(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._in_pass:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        self._predict(0, hidden)

    def _predict(self, layer: int, hidden: Any) -> None:
        import torch

        gate = self.gates[layer]
        x = hidden.reshape(-1, gate.weight.shape[1])
        with torch.no_grad():
            logits = torch.nn.functional.linear(x.to(gate.weight.dtype), gate.weight)
            self._cur_pred[layer] = torch.topk(logits, self.top_k, dim=-1).indices

    def _make_hook(self, layer: int) -> Any:
        def hook(gate: Any, args: tuple[Any, ...], output: tuple[Any, Any, Any]) -> Any:
            if not self._in_pass:
                return None
            logits, scores, index = output
            if self._force_pass is not None:
                index = self._forced_index(layer, index)
                logits, scores, index = forced_output(gate, logits, scores, index)
            if self.record:
                self._cur_ids[layer] = index
                self._cur_scores[layer] = scores
                if self.logits:
                    self._cur_logits[layer] = logits
            if self.speculate and layer + 1 < self.n_layers:
                self._predict(layer + 1, args[0])
            return (logits, scores, index) if self._force_pass is not None else None
        return hook

    def _forced_index(self, layer: int, index: Any) -> Any:
        assert self.force is not None and self._force_pass is not None
        if self.static:
            return self._forced_now[index.shape[0]][layer]
        t0, t1 = self._forced_span(self._force_pass, index.shape[0])
        return self._forced[layer, t0:t1]

    def _forced_span(self, p: int, n_tok: int) -> tuple[int, int]:
        """Trace pass p's token range, checked against the `n_tok` tokens the model routes in this pass."""
        assert self.force is not None
        if not 0 <= p < self.force.n_passes:
            raise EmuError(f"force_pass {p} outside the trace's {self.force.n_passes} passes", key="workload.trace")
        t0, t1 = int(self.force.pass_offsets[p]), int(self.force.pass_offsets[p + 1])
        if t1 - t0 != n_tok:
            raise EmuError(f"trace pass {p} has {t1 - t0} tokens but the model routed {n_tok}", key="workload.trace")
        return t0, t1

    # --- result ------------------------------------------------------------------------------------
    def trace(self, model_name: str = "", meta: dict[str, Any] | None = None) -> RoutingTrace:
        """The recorded passes as an emu RoutingTrace (validated)."""
        if not self.record:
            raise EmuError("these hooks were built with record=False")
        if not self._ids:
            raise EmuError("no pass recorded")
        sizes = [ids.shape[0] for ids in self._ids]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        phases = np.array([p[0] for p in self._passes[: len(self._ids)]], np.int8)
        return RoutingTrace(
            experts=np.concatenate(self._ids), pass_offsets=offsets, pass_phase=phases,
            token_request=np.concatenate([p[1] for p in self._passes[: len(self._ids)]]),
            token_position=np.concatenate([p[2] for p in self._passes[: len(self._ids)]]),
            scores=np.concatenate(self._scores),
            predicted=np.concatenate(self._pred) if self.speculate else None,
            logits=np.concatenate(self._logits) if self.logits else None,
            n_experts=self.n_experts, model=model_name, meta=dict(meta or {}, source="live")).validate()
