"""The device-paced decode: each decode pass replayed from CUDA graphs, the offloaded experts run between them.

A decode pass of a transformers MoE model is captured once, with a static KV cache, as one CUDA graph per
stretch between two sparse-MoE blocks' experts calls: segment 0 runs the embedding, layer 0's attention,
norms and router (and the routing hooks' recording, forcing and speculation); segment l runs what follows
layer l-1's experts (the block's residual, a shared expert, a dense layer) up to layer l's router; the
last segment runs the last block's tail, the final norm, the head and the greedy pick, and advances the
static token and position in place. Between two replays the host runs the layer's experts through the
offloaded runtime (`ExpertOffload.run_layer`, the same decisions and kernels as the eager mode) from the
static tensors the segment wrote, and adds the result into the buffer the next segment reads.

So the host launches a whole attention stretch in one graph launch, and waits for the GPU only where a
cache decision needs the routing (the runtime's readback; none for a layer whose experts all hold slots
with the fused kernel). Prefill passes stay eager (their length varies); they use the same static cache.

Captured experts (`ExpertOffload.graph_experts`: the fused kernel, a slot pool one grouped GEMM takes, misses
fetched): segment l+1 then begins with layer l's experts, the fused kernel over the whole slot pool with the
routing mapped to slots through the runtime's slot table on the device. Between two replays the host only
decides the layer (`ExpertOffload.place_layer`: readback, policy, copies started, the slot table's entries
written by fill kernels, the compute stream made to wait for the copies) and books it after the next
replay's launch (`launched_layer`); no expert kernel is launched from Python.

Everything that changes between replays lives at fixed device addresses: the input token and position
(written by the last segment, or by `start` with fill kernels: no host-to-device copy, which a CUDA copy
engine would queue behind the runtime's expert copies), the forced routing of the pass (`RoutingHooks`
in static mode copies the pass's slice into its buffer with a kernel), the cache.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

from emu.errors import EmuError

from .offload import ExpertOffload


class GraphedDecode:
    """Decode passes of one model and runtime replayed from CUDA graphs, over one static KV cache."""

    def __init__(self, model: Any, runtime: ExpertOffload, cache: Any, device: torch.device,
                 batch: int = 1) -> None:
        self.model, self.runtime, self.cache, self.device = model, runtime, cache, device
        self.ids = torch.zeros((batch, 1), dtype=torch.int64, device=device)  # the next pass's input tokens
        self.pos = torch.zeros(1, dtype=torch.int64, device=device)  # its position (cache_position)
        self._variants: dict[bool, _Captured] = {}  # by "routing forced": the hooks' graph differs
        # until a variant is captured its passes run eager over the static cache (the warm-up; the "static" mode)
        self._capturing: _Captured | None = None
        self.host_s = 0.0  # host seconds spent in replayed passes, less the waits for the device
        self.passes = 0

    # --- capture -----------------------------------------------------------------------------------
    def captured(self, forced: bool) -> bool:
        return forced in self._variants

    def capture(self, forced: bool, hooks: Any) -> None:
        """Capture one decode pass (nothing runs: the kernels are recorded). `hooks` (or None) must be in a
        pass (`begin_pass`) with forcing as `forced`; their per-layer tensors become the graph's."""
        if self.device.type != "cuda":
            raise EmuError("the device-paced decode (CUDA graphs) needs a CUDA device", key="--device")
        rt = self.runtime
        cap = _Captured(torch.cuda.graph_pool_handle())
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        torch.cuda.synchronize(self.device)
        cap.in_graph = rt.graph_experts()
        self._capturing = cap
        for m in rt.modules:
            m.splitter = self
        try:
            with torch.cuda.stream(stream), torch.no_grad():
                cap.begin()
                logits = self.model(input_ids=self.ids, past_key_values=self.cache, cache_position=self.pos,
                                    use_cache=True, logits_to_keep=1).logits
                tok = logits[:, -1].argmax(-1)
                torch.add(tok.view(-1, 1), 0, out=self.ids)  # a kernel, not a copy: see the module's text
                self.pos.add_(1)
                cap.tok = tok
                cap.end()
        except BaseException:
            cap.abandon()  # a stream left capturing would fail every later CUDA call
            raise
        finally:
            for m in rt.modules:
                m.splitter = None
            self._capturing = None
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        if len(cap.graphs) != rt.n_layers + 1 or len(cap.inputs) != rt.n_layers:
            raise EmuError(f"captured {len(cap.inputs)} experts calls; the model has {rt.n_layers} sparse layers")
        if hooks is not None:
            cap.hook_tensors = hooks.current_tensors()
        self._variants[forced] = cap

    def split(self, layer: int, act_fn: Any, hidden: torch.Tensor, top_k_index: torch.Tensor,
              top_k_weights: torch.Tensor) -> torch.Tensor:
        """At an experts call during the capture: close the segment, keep the call's static tensors, and
        open the next segment, which begins with the captured experts or reads their output from a buffer of
        its own (written between replays)."""
        cap = self._capturing
        assert cap is not None
        cap.end()
        cap.inputs.append((act_fn, hidden, top_k_index, top_k_weights))
        if cap.in_graph:
            cap.begin()
            return self.runtime.captured_experts(layer, hidden, top_k_index, top_k_weights)
        out = torch.zeros_like(hidden)  # allocated outside the graph: written between replays
        cap.outputs.append(out)
        cap.begin()
        return out

    def captures_experts(self) -> bool:
        """Whether the captured passes hold the experts too (`ExpertOffload.graph_experts` at the capture)."""
        return any(cap.in_graph for cap in self._variants.values())

    # --- replay ------------------------------------------------------------------------------------
    def start(self, tokens: tuple[int, ...], position: int) -> None:
        """The next pass's input tokens (one per row) and position (fill kernels on the compute stream)."""
        if len(tokens) != self.ids.shape[0]:
            raise EmuError(f"{len(tokens)} tokens for a decode of batch {self.ids.shape[0]}", key="batch")
        for row, token in enumerate(tokens):
            self.ids[row].fill_(token)
        self.pos.fill_(position)

    def replay(self, forced: bool, hooks: Any) -> torch.Tensor:
        """One decode pass; returns the pass's greedy tokens as a device tensor (the caller reads them)."""
        cap = self._variants[forced]
        rt = self.runtime
        t0 = time.perf_counter()
        waited0 = rt.sync_wait_s
        cap.graphs[0].replay()
        for layer, graph in enumerate(cap.graphs[1:]):
            act_fn, hidden, index, weights = cap.inputs[layer]
            if cap.in_graph:
                placed = rt.place_layer(layer, hidden, index)
                launch = time.perf_counter()
                graph.replay()  # this layer's experts, then on to the next router (or the head)
                if rt.ledger is not None:
                    rt.ledger.note("replay", time.perf_counter() - launch)
                rt.launched_layer(placed)
            else:
                out = rt.run_layer(layer, act_fn, hidden, index, weights)
                torch.add(out, 0, out=cap.outputs[layer])  # a kernel, not a device-to-device copy
                graph.replay()
        if hooks is not None and cap.hook_tensors is not None:
            hooks.adopt_tensors(cap.hook_tensors)
        self.host_s += time.perf_counter() - t0 - (rt.sync_wait_s - waited0)
        self.passes += 1
        assert cap.tok is not None
        return cap.tok


class _Captured:
    """One captured decode pass: its graphs (segments), each experts call's static inputs and output buffer."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.inputs: list[tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.outputs: list[torch.Tensor] = []
        self.tok: torch.Tensor | None = None
        self.hook_tensors: Any = None
        self.in_graph = False  # the experts captured too (`ExpertOffload.graph_experts`)

    def begin(self) -> None:
        graph = torch.cuda.CUDAGraph()
        # thread-local: the prefetch watchdog's thread may touch CUDA while a segment is being captured
        graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
        self.graphs.append(graph)

    def end(self) -> None:
        self.graphs[-1].capture_end()

    def abandon(self) -> None:
        """End a capture that failed midway (its error is the caller's to raise)."""
        with contextlib.suppress(Exception):  # whatever the failed capture left for its end to raise
            self.graphs[-1].capture_end()
