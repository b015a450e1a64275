"""Sanity checks every format importer runs before it hands back a RoutingTrace (docs/traces.md).

All importers in `emu/trace/formats/` end in `finish_import`, so the checks live here and only here:

* expert ids (and predicted ids) outside `[0, n_experts)`: an `EmuError`;
* the same id twice in one token's top-k at one layer: an `EmuError`;
* non-finite gate scores, or scores that do not fit float16: an `EmuError`;
* a model (`--model`) whose MoE layer count or expert count differs from the file's: an `EmuError`;
* a top-k that differs from the model's: an `EmuWarning`, and `meta["top_k_mismatch"]`;
* degenerate captures: an `EmuError`, or with `allow_degenerate` an `EmuWarning` and `meta["degenerate"]`.
  A capture is degenerate when a whole pass of at least `MIN_DEGENERATE_TOKENS` tokens has one routing
  (every token identical to the one before: experts, and scores when the file has them), or when every
  decode token of a request (at least `MIN_DEGENERATE_TOKENS` of them) routes the same expert set at
  every layer. Real routers never do this; a hook that captured one row and broadcast it does.

Every error names where the bad entry came from: the importer passes a `locate(token, layer, field)` callback
that returns the file part (`file:line`, `file:row 17` or `file`) and the key (`expert`,
`prompts.code.decode[3][5]`, ...), so the message points into the source file, not into our arrays.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import EmuError, EmuWarning
from ..models import ModelSpec
from .routing_trace import PHASE_DECODE, RoutingTrace, compact_ids

#: (token index in the assembled trace, MoE layer, field: "experts" | "scores" | "predicted") ->
#: (file part of the message, key): e.g. ("qwen.route.csv:1234", "expert")
Locate = Callable[[int, int, str], tuple[str, str]]

MIN_DEGENERATE_TOKENS = 3
MAX_EXPERT_ID = 2**15 - 1  # ids are stored as int16
_F16_MAX = float(np.finfo(np.float16).max)


def token_label(token_request: np.ndarray, token_position: np.ndarray, meta: dict[str, Any], t: int) -> str:
    """`request 'code' position 41`: how messages name a token (string ids from meta["request_ids"])."""
    r = int(token_request[t])
    names = meta.get("request_ids")
    req = repr(names[r]) if isinstance(names, list) and 0 <= r < len(names) else str(r)
    return f"request {req} position {int(token_position[t])}"


def resolve_n_experts(declared: int, model: ModelSpec | None, experts: np.ndarray, *, file: str) -> int:
    """Experts per layer: the file's own count, else the model's, else the largest id + 1."""
    if declared and model is not None and declared != model.n_experts:
        raise EmuError(f"the file declares {declared} experts per MoE layer but model {model.name} has "
                       f"{model.n_experts}", file=file, key="n_experts")
    if declared:
        return int(declared)
    if model is not None:
        return model.n_experts
    if experts.size == 0:
        return 0
    return min(int(experts.max()) + 1, MAX_EXPERT_ID + 1)


def check_expert_ids(arr: np.ndarray, n_experts: int, *, field: str, why: str, locate: Locate,
                     label: Callable[[int], str]) -> None:
    """Ids in `[0, n_experts)` and distinct within each token's top-k at each layer."""
    what = "predicted expert" if field == "predicted" else "expert"
    if arr.size == 0:
        return
    hi = min(n_experts, MAX_EXPERT_ID + 1)
    bad = (arr < 0) | (arr >= hi)
    if bad.any():
        t, layer, k = (int(i) for i in np.argwhere(bad)[0])
        where, key = locate(t, layer, field)
        raise EmuError(f"{what} id {int(arr[t, layer, k])} out of range at {label(t)} layer {layer}: expected "
                       f"0..{hi - 1} ({why})", file=where, key=key)
    if arr.shape[2] > 1:
        srt = np.sort(arr, axis=2)
        dup = (srt[:, :, 1:] == srt[:, :, :-1]).any(axis=2)
        if dup.any():
            t, layer = (int(i) for i in np.argwhere(dup)[0])
            where, key = locate(t, layer, field)
            raise EmuError(f"duplicate {what} id in one token's top-{arr.shape[2]} at {label(t)} layer {layer}: "
                           f"expected {arr.shape[2]} distinct ids, got {arr[t, layer].tolist()}",
                           file=where, key=key)


def check_scores(scores: np.ndarray, *, locate: Locate, label: Callable[[int], str]) -> np.ndarray:
    """Finite and within float16 range; returns the float16 copy the trace stores."""
    finite = np.isfinite(scores)
    if not finite.all():
        t, layer, k = (int(i) for i in np.argwhere(~finite)[0])
        where, key = locate(t, layer, "scores")
        raise EmuError(f"non-finite gate score {float(scores[t, layer, k])} at {label(t)} layer {layer}: "
                       "expected finite numbers", file=where, key=key)
    big = np.abs(scores) > _F16_MAX
    if big.any():
        t, layer, k = (int(i) for i in np.argwhere(big)[0])
        where, key = locate(t, layer, "scores")
        raise EmuError(f"gate score {float(scores[t, layer, k])} at {label(t)} layer {layer} does not fit "
                       f"float16: expected |score| <= {_F16_MAX:g}", file=where, key=key)
    return scores.astype(np.float16)


def find_degenerate(experts: np.ndarray, scores: np.ndarray | None, pass_offsets: np.ndarray,
                    pass_phase: np.ndarray, token_request: np.ndarray,
                    token_position: np.ndarray) -> list[dict[str, Any]]:
    """Passes whose tokens all route identically, and requests whose decode tokens all do (see module doc)."""
    n_tok = experts.shape[0]
    found: list[dict[str, Any]] = []
    if n_tok < MIN_DEGENERATE_TOKENS:
        return found
    flat = experts.reshape(n_tok, -1)
    same = np.zeros(n_tok, dtype=bool)
    same[1:] = (flat[1:] == flat[:-1]).all(axis=1)
    if scores is not None:
        sflat = scores.reshape(n_tok, -1)
        same[1:] &= (sflat[1:] == sflat[:-1]).all(axis=1)
    # whole passes: every token equal to the one before it
    starts, ends = pass_offsets[:-1], pass_offsets[1:]
    long_enough = (ends - starts) >= MIN_DEGENERATE_TOKENS
    not_same = np.r_[0, np.cumsum(~same)]  # not_same[i] = count of ~same in [0, i)
    # tokens start+1 .. end-1 must all be `same`
    all_same = (not_same[ends] - not_same[starts + 1]) == 0
    for p in np.flatnonzero(long_enough & all_same).tolist():
        s, e = int(starts[p]), int(ends[p])
        found.append({"kind": "pass", "pass": p, "phase": "decode" if pass_phase[p] == PHASE_DECODE else "prefill",
                      "tokens": e - s, "token": s})
    # each request's decode tokens, in position order, all with the same expert sets
    token_phase = np.repeat(pass_phase, np.diff(pass_offsets))
    dec = np.flatnonzero(token_phase == PHASE_DECODE)
    if dec.size >= MIN_DEGENERATE_TOKENS:
        order = dec[np.lexsort((token_position[dec], token_request[dec]))]
        sets = np.sort(experts[order], axis=2).reshape(order.size, -1)
        req = token_request[order]
        new_req = np.r_[True, req[1:] != req[:-1]]
        same_set = np.r_[False, (sets[1:] == sets[:-1]).all(axis=1)] & ~new_req
        group = np.cumsum(new_req) - 1
        count = np.bincount(group)
        same_count = np.bincount(group, weights=same_set, minlength=count.size).astype(np.int64)
        first = np.flatnonzero(new_req)
        for g in np.flatnonzero((count >= MIN_DEGENERATE_TOKENS) & (same_count == count - 1)).tolist():
            found.append({"kind": "decode", "request": int(req[first[g]]), "tokens": int(count[g]),
                          "token": int(order[first[g]])})
    return found


def _describe_degenerate(item: dict[str, Any], label: Callable[[int], str], has_scores: bool) -> str:
    if item["kind"] == "pass":
        what = "routing and gate scores" if has_scores else "routing"
        return (f"{item['phase']} pass {item['pass']} ({item['tokens']} tokens from {label(item['token'])}) has "
                f"identical {what} on every token")
    return (f"all {item['tokens']} decode tokens of {label(item['token']).rsplit(' position', 1)[0]} route the "
            "same experts at every layer")


def finish_import(*, experts: np.ndarray, pass_offsets: np.ndarray, pass_phase: np.ndarray,
                  token_request: np.ndarray, token_position: np.ndarray, scores: np.ndarray | None = None,
                  predicted: np.ndarray | None = None, declared_n_experts: int = 0,
                  model: ModelSpec | None = None, meta: dict[str, Any], file: str, locate: Locate,
                  allow_degenerate: bool = False) -> RoutingTrace:
    """Run every sanity check on an importer's assembled arrays and build the validated RoutingTrace.

    `experts`/`predicted` may be any integer dtype (they are range-checked before `compact_ids` narrows them
    to uint8 or int16); `scores` any float dtype. `declared_n_experts` is the expert count the file states
    (0 if it states none). `meta` is stored in the trace and gains `top_k_mismatch` / `degenerate` entries here.
    """
    if experts.ndim != 3:
        raise EmuError(f"expected [tokens, layers, top_k] expert ids, got shape {experts.shape}", file=file)
    if experts.shape[0] == 0:
        raise EmuError("no tokens: the file holds no routing", file=file)
    if experts.shape[1] == 0 or experts.shape[2] == 0:
        raise EmuError(f"expected at least one MoE layer and top-k >= 1, got shape {experts.shape}", file=file)

    def label(t: int) -> str:
        return token_label(token_request, token_position, meta, t)

    n_layers, top_k = experts.shape[1:]
    n_exp = resolve_n_experts(declared_n_experts, model, experts, file=file)
    if declared_n_experts:
        why = f"the file declares {n_exp} experts per layer"
    elif model is not None:
        why = f"model {model.name} has {n_exp} experts"
    else:
        why = "int16 ids; pass --model to check against a model"
    check_expert_ids(experts, n_exp, field="experts", why=why, locate=locate, label=label)
    if predicted is not None:
        check_expert_ids(predicted, n_exp, field="predicted", why=why, locate=locate, label=label)
    scores16 = None if scores is None else check_scores(scores, locate=locate, label=label)

    if model is not None:
        if n_layers != model.n_moe_layers:
            raise EmuError(f"the file has {n_layers} MoE layers but model {model.name} has {model.n_moe_layers}",
                           file=file, key="layer")
        if top_k != model.top_k:
            meta["top_k_mismatch"] = {"trace": top_k, "model": model.top_k}
            warnings.warn(f"{file}: the trace routes top-{top_k} but model {model.name} routes top-{model.top_k}; "
                          f"kept as top-{top_k} (meta.top_k_mismatch). Replaying it needs a model with "
                          f"top_k = {top_k}", EmuWarning, stacklevel=2)

    found = find_degenerate(experts, scores16, pass_offsets, pass_phase, token_request, token_position)
    if found:
        first = found[0]
        text = _describe_degenerate(first, label, scores16 is not None)
        more = f" (and {len(found) - 1} more such range(s))" if len(found) > 1 else ""
        if not allow_degenerate:
            where, key = locate(first["token"], 0, "experts")
            raise EmuError(f"degenerate capture: {text}{more}; a real router does not repeat itself like "
                           "this (a capture hook that recorded one row for all?). Pass --allow-degenerate to "
                           "import it anyway", file=where, key=key)
        meta["degenerate"] = {"ranges": len(found), "first": found[:16]}
        warnings.warn(f"{file}: degenerate capture: {text}{more}; imported because --allow-degenerate",
                      EmuWarning, stacklevel=2)

    trace = RoutingTrace(
        experts=compact_ids(experts), pass_offsets=np.asarray(pass_offsets, dtype=np.int64),
        pass_phase=np.asarray(pass_phase, dtype=np.int8), token_request=np.asarray(token_request, dtype=np.int32),
        token_position=np.asarray(token_position, dtype=np.int32), scores=scores16,
        predicted=None if predicted is None else compact_ids(predicted), n_experts=n_exp,
        model=model.name if model is not None else "", meta=meta)
    return trace.validate(file=file)
