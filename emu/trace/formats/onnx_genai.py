"""onnx-genai expert-trace JSON (justinchuby/onnx-genai scripts/moe_expert_trace.json) -> RoutingTrace.

Format, from the writer justinchuby/onnx-genai scripts/dump_moe_expert_trace.py (`main`, `run`)::

    {"model": "...", "num_layers": 24, "num_experts": 32, "top_k": 8,
     "prompts": {"<name>": {"prompt_len": P, "prefill": [P][num_layers][top_k], "decode": [S][num_layers][top_k]}}}

The writer runs each prompt alone with greedy decoding: one forward over the whole prompt (`prefill`, one
entry per prompt position), then one forward per generated token (`decode`, the last row of each step's
ONNX `TopK` output). So decode step s routes the token at position P + s. The ids are the `TopK` indices
(sorted, so slot 0 is the highest gate logit); the file has **no gate scores** and no predictions.

Requests: one per prompt, in file order (`token_request` 0..n-1, names in `meta.request_ids`). Passes:
each prompt's prefill is one prefill pass, then each decode step is one decode pass (batch size 1, as
captured). Error keys name the JSON path, e.g. `prompts.code.decode[3][5]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EmuError
from ...models import ModelSpec
from ...textio import loads, read_text
from ..checks import finish_import
from ..routing_trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace

_MAX_LAYERS = 4096


def sniff(doc_head: bytes) -> bool:
    head = doc_head.lstrip()
    return head.startswith(b"{") and b'"prompts"' in doc_head


def _int(doc: dict[str, Any], key: str, name: str, *, minimum: int = 1) -> int:
    value = doc.get(key)
    if type(value) is not int or value < minimum:
        raise EmuError(f"expected an integer >= {minimum}, got {value!r}", file=name, key=key)
    return value


def _section(value: Any, n_layers: int, top_k: int, name: str, key: str) -> np.ndarray:
    """[steps][num_layers][top_k] ints -> int64 array, naming the first malformed entry."""
    if not isinstance(value, list):
        raise EmuError(f"expected a list of [num_layers][top_k] expert ids, got {type(value).__name__}",
                       file=name, key=key)
    try:
        arr = np.asarray(value, dtype=np.int64)
        if arr.shape[1:] == (n_layers, top_k) or (arr.size == 0 and len(value) == 0):
            return arr.reshape(len(value), n_layers, top_k)
    except (ValueError, TypeError, OverflowError):
        pass
    for i, step in enumerate(value):
        if not isinstance(step, list) or len(step) != n_layers:
            got = len(step) if isinstance(step, list) else type(step).__name__
            raise EmuError(f"expected {n_layers} layers (num_layers), got {got}", file=name, key=f"{key}[{i}]")
        for layer, ids in enumerate(step):
            if (not isinstance(ids, list) or len(ids) != top_k
                    or not all(type(v) is int and abs(v) < 2**31 for v in ids)):
                raise EmuError(f"expected a list of {top_k} ints (top_k), got {ids!r}", file=name,
                               key=f"{key}[{i}][{layer}]")
    raise EmuError(f"expected [steps][{n_layers}][{top_k}] ints", file=name, key=key)  # not reached


def import_onnx_genai(path: str | Path, model: ModelSpec | None = None, *,
                      allow_degenerate: bool = False) -> RoutingTrace:
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise EmuError("trace file not found", file=name)
    what = "the onnx-genai trace JSON"
    doc = loads(read_text(path, what, name=name), name, what)
    if not isinstance(doc, dict):
        raise EmuError(f"expected a JSON object, got {type(doc).__name__}", file=name)
    n_layers = _int(doc, "num_layers", name)
    n_experts = _int(doc, "num_experts", name)
    top_k = _int(doc, "top_k", name)
    if n_layers > _MAX_LAYERS:
        raise EmuError(f"expected at most {_MAX_LAYERS}, got {n_layers}", file=name, key="num_layers")
    if top_k > n_experts:
        raise EmuError(f"top_k {top_k} exceeds num_experts {n_experts}", file=name, key="top_k")
    prompts = doc.get("prompts")
    if not isinstance(prompts, dict) or not prompts:
        raise EmuError("expected a non-empty object {name: {prompt_len, prefill, decode}}", file=name, key="prompts")

    blocks: list[np.ndarray] = []
    phases: list[int] = []
    offsets = [0]
    req: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    src: list[tuple[str, str, int]] = []  # per pass: (prompt, section, first index)
    names: list[str] = []
    for r, (pname, p) in enumerate(prompts.items()):
        base = f"prompts.{pname}"
        if not isinstance(p, dict):
            raise EmuError(f"expected an object with prompt_len, prefill, decode, got {type(p).__name__}",
                           file=name, key=base)
        for key in ("prefill", "decode"):
            if key not in p:
                raise EmuError("missing", file=name, key=f"{base}.{key}")
        prefill = _section(p["prefill"], n_layers, top_k, name, f"{base}.prefill")
        decode = _section(p["decode"], n_layers, top_k, name, f"{base}.decode")
        plen = p.get("prompt_len", prefill.shape[0])
        if type(plen) is not int or plen != prefill.shape[0]:
            raise EmuError(f"expected the number of prefill entries ({prefill.shape[0]}), got {plen!r}",
                           file=name, key=f"{base}.prompt_len")
        if prefill.shape[0] + decode.shape[0] == 0:
            raise EmuError("no prefill and no decode entries", file=name, key=base)
        names.append(str(pname))
        if prefill.shape[0]:
            blocks.append(prefill)
            phases.append(PHASE_PREFILL)
            offsets.append(offsets[-1] + prefill.shape[0])
            src.append((pname, "prefill", 0))
        for s in range(decode.shape[0]):
            phases.append(PHASE_DECODE)
            offsets.append(offsets[-1] + 1)
            src.append((pname, "decode", s))
        if decode.shape[0]:
            blocks.append(decode)
        n = prefill.shape[0] + decode.shape[0]
        req.append(np.full(n, r, dtype=np.int64))
        pos.append(np.arange(n, dtype=np.int64))

    experts = np.concatenate(blocks)
    pass_offsets = np.asarray(offsets, dtype=np.int64)
    meta: dict[str, Any] = {"source": "onnx-genai", "file": path.name, "capture_model": str(doc.get("model", "")),
                            "request_ids": names,
                            "prompt_len": {n: int(prompts[n]["prompt_len"]) if "prompt_len" in prompts[n]
                                           else len(prompts[n]["prefill"]) for n in names}}

    def locate(t: int, layer: int, field: str) -> tuple[str, str]:
        p = int(np.searchsorted(pass_offsets, t, side="right") - 1)
        pname, section, first = src[p]
        return name, f"prompts.{pname}.{section}[{first + t - int(pass_offsets[p])}][{layer}]"

    return finish_import(experts=experts, pass_offsets=pass_offsets, pass_phase=np.asarray(phases, dtype=np.int8),
                         token_request=np.concatenate(req), token_position=np.concatenate(pos),
                         declared_n_experts=n_experts, model=model, meta=meta, file=name, locate=locate,
                         allow_degenerate=allow_degenerate)
