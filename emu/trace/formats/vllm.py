"""vLLM routed-experts output (`enable_return_routed_experts`) saved as `.npz` -> RoutingTrace.

What vLLM gives (sources, vllm-project/vllm):

* `vllm/outputs.py`, `CompletionOutput.routed_experts: np.ndarray | None  # [seq_len,layer_num,topk]`;
* `vllm/model_executor/layers/fused_moe/routed_experts_capturer.py`, `RoutedExpertsCapturer.init_buffer` /
  `capture`: an int32 buffer `(tokens, hf_config.num_hidden_layers, hf_config.num_experts_per_tok)`, zero
  filled, into which each MoE layer writes its `topk_ids` at its own layer index (so dense layers stay 0);
* `vllm/v1/core/sched/scheduler.py`, `Scheduler._get_routed_experts`: reads the rows of the request's KV
  slots for `num_tokens = request.num_tokens - 1` positions, i.e. every prompt token and every generated
  token except the last one (which was sampled but never fed back through the model).

So one request's array has `prompt_len + generated - 1` rows in position order: rows `0..prompt_len-1`
are the prompt (prefill), the rest are decode tokens at positions `prompt_len..`. It holds expert ids
only, in the order the top-k kernel returned them (not necessarily by score): **no gate scores**.

vLLM writes no file: the array lives on the `RequestOutput`. This importer reads the container that
`save_vllm_npz` below writes (our convention, not vLLM's), one `np.savez` archive with, per request id R:

* `R/routed_experts`: the array exactly as vLLM returned it;
* `R/prompt_len` (0-d int) or `R/prompt_token_ids`: where prefill ends (`len(RequestOutput.prompt_token_ids)`);
* optionally `R/token_ids` (the generated ids), to check the row count;

and optionally a top-level `num_experts` (0-d int), as the model config states it.

What the array cannot tell: which requests vLLM batched into the same forward pass, and how a chunked
prefill was split. Requests are laid out one after another in file order (`token_request` 0..n-1, ids in
`meta.request_ids`): the prompt is one prefill pass, then each decode token is one decode pass (batch 1).
Layers whose ids are 0 for every token of every request are the dense layers' placeholders and are
dropped (`meta.dropped_layers`) when top-k > 1 (there, all-zero rows are impossible for a MoE layer), or
when `--model` says the model has that many dense layers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EmuError
from ...models import ModelSpec
from ..checks import finish_import
from ..routing_trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace

_SUFFIXES = ("routed_experts", "prompt_len", "prompt_token_ids", "token_ids")


def sniff_zip_names(names: list[str]) -> bool:
    return any(n.endswith("/routed_experts.npy") for n in names)


def save_vllm_npz(path: str | Path, request_outputs: Iterable[Any], *, num_experts: int | None = None) -> None:
    """Write vLLM `RequestOutput`s (first completion of each) in the container `import_vllm` reads."""
    arrays: dict[str, np.ndarray] = {}
    for out in request_outputs:
        rid = str(out.request_id)
        routed = out.outputs[0].routed_experts
        if routed is None:
            raise EmuError("routed_experts is None: run vLLM with enable_return_routed_experts=True",
                           key=f"{rid}/routed_experts")
        arrays[f"{rid}/routed_experts"] = np.asarray(routed)
        arrays[f"{rid}/prompt_len"] = np.array(len(out.prompt_token_ids))
        arrays[f"{rid}/token_ids"] = np.asarray(list(out.outputs[0].token_ids), dtype=np.int64)
    if num_experts is not None:
        arrays["num_experts"] = np.array(int(num_experts))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def import_vllm(path: str | Path, model: ModelSpec | None = None, *, allow_degenerate: bool = False) -> RoutingTrace:
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise EmuError("trace file not found", file=name)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for a non-npz file
        raise EmuError(f"not a readable .npz archive ({err.__class__.__name__})", file=name) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise EmuError("expected an .npz archive of per-request arrays, got a single .npy array", file=name)
    with data:
        keys = list(data.files)
        if "header" in keys and "experts" in keys:
            raise EmuError("this is already a moe-emu trace (.npz with experts and header); nothing to import",
                           file=name)
        requests: list[str] = []
        for key in keys:
            rid, _, leaf = key.rpartition("/")
            if leaf == "routed_experts":
                requests.append(rid)
            elif leaf not in _SUFFIXES and key != "num_experts":
                raise EmuError(f"unexpected array; expected R/{{{','.join(_SUFFIXES)}}} per request and an "
                               "optional num_experts", file=name, key=key)
        if not requests:
            raise EmuError("no R/routed_experts arrays (see emu.trace.formats.vllm.save_vllm_npz)", file=name)
        declared = 0
        if "num_experts" in keys:
            ne = data["num_experts"]
            if ne.shape != () or ne.dtype.kind not in "iu" or int(ne) < 1:
                raise EmuError(f"expected a positive 0-d integer, got {ne!r}", file=name, key="num_experts")
            declared = int(ne)
        arrays: list[np.ndarray] = []
        prompt_lens: list[int] = []
        for rid in requests:
            arr = data[f"{rid}/routed_experts"]
            key = f"{rid}/routed_experts"
            if arr.ndim != 3 or arr.dtype.kind not in "iu" or arr.shape[0] == 0:
                raise EmuError(f"expected a non-empty int [tokens, layers, top_k] array, got {arr.dtype} "
                               f"{arr.shape}", file=name, key=key)
            if arrays and arr.shape[1:] != arrays[0].shape[1:]:
                raise EmuError(f"expected [*, {arrays[0].shape[1]}, {arrays[0].shape[2]}] as for request "
                               f"{requests[0]!r}, got {arr.shape}", file=name, key=key)
            if f"{rid}/prompt_len" in keys:
                pl = data[f"{rid}/prompt_len"]
                if pl.shape != () or pl.dtype.kind not in "iu":
                    raise EmuError(f"expected a 0-d integer, got {pl!r}", file=name, key=f"{rid}/prompt_len")
                plen = int(pl)
            elif f"{rid}/prompt_token_ids" in keys:
                plen = int(data[f"{rid}/prompt_token_ids"].shape[0])
            else:
                raise EmuError("missing: expected R/prompt_len or R/prompt_token_ids for each request "
                               "(where its prefill ends)", file=name, key=f"{rid}/prompt_len")
            if not 1 <= plen <= arr.shape[0]:
                raise EmuError(f"prompt length {plen} out of range: the request has {arr.shape[0]} routed tokens",
                               file=name, key=f"{rid}/prompt_len")
            if f"{rid}/token_ids" in keys:
                n_gen = int(data[f"{rid}/token_ids"].shape[0])
                if n_gen and arr.shape[0] != plen + n_gen - 1:
                    raise EmuError(f"expected prompt_len + generated - 1 = {plen + n_gen - 1} rows (vLLM routes "
                                   f"every token but the last), got {arr.shape[0]}", file=name, key=key)
            arrays.append(arr)
            prompt_lens.append(plen)

    n_layers_all = arrays[0].shape[1]
    top_k = arrays[0].shape[2]
    zero_layer = np.ones(n_layers_all, dtype=bool)
    for arr in arrays:
        zero_layer &= ~arr.any(axis=(0, 2))
    n_zero = int(zero_layer.sum())
    drop = n_zero > 0 and (top_k > 1 or (model is not None and n_layers_all - n_zero == model.n_moe_layers))
    keep = np.flatnonzero(~zero_layer) if drop else np.arange(n_layers_all)
    if keep.size == 0:
        raise EmuError("every layer's ids are 0 for every token: no MoE routing was captured", file=name)

    experts = np.concatenate([arr[:, keep, :] for arr in arrays])
    lens = np.asarray([a.shape[0] for a in arrays], dtype=np.int64)
    starts = np.r_[0, np.cumsum(lens)[:-1]]
    token_request = np.repeat(np.arange(len(arrays), dtype=np.int64), lens)
    token_position = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)
    # per request: one prefill pass of prompt_len tokens, then one pass per decode token
    offsets: list[np.ndarray] = []
    phases: list[np.ndarray] = []
    for s, n, plen in zip(starts.tolist(), lens.tolist(), prompt_lens):
        offsets.append(np.r_[s, s + np.arange(plen, n)])
        phases.append(np.r_[PHASE_PREFILL, np.full(n - plen, PHASE_DECODE)])
    pass_offsets = np.r_[np.concatenate(offsets), int(lens.sum())].astype(np.int64)
    meta: dict[str, Any] = {"source": "vllm", "file": path.name, "request_ids": requests,
                            "prompt_len": dict(zip(requests, prompt_lens))}
    if drop:
        meta["dropped_layers"] = np.flatnonzero(zero_layer).tolist()

    def locate(t: int, layer: int, field: str) -> tuple[str, str]:
        r = int(token_request[t])
        return name, f"{requests[r]}/routed_experts[{int(token_position[t])}][{int(keep[layer])}]"

    return finish_import(experts=experts, pass_offsets=pass_offsets,
                         pass_phase=np.concatenate(phases).astype(np.int8), token_request=token_request,
                         token_position=token_position, declared_n_experts=declared, model=model, meta=meta,
                         file=name, locate=locate, allow_degenerate=allow_degenerate)

