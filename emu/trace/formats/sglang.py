"""SGLang expert-distribution recorder, `per_token` mode (`.pt` dump) -> RoutingTrace.

Format, from sgl-project/sglang python/sglang/srt/eplb/expert_distribution.py (older releases:
python/sglang/srt/managers/expert_distribution.py): with `--expert-distribution-recorder-mode per_token`,
`_DetailSinglePassGatherer` records each forward pass and `_DetailAccumulator.dump` writes
`torch.save(dict(records=[...], last_physical_to_logical_map=...))` to
`$SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR/expert_distribution_recorder_{time}_{rank}.pt`. Each record is one
forward pass of this rank::

    {"forward_pass_id": int, "rank": int, "gatherer_key": "primary",
     "input_ids": [T], "positions": [T],            # ForwardBatch.input_ids / .positions
     "extend_seq_lens": [n_seqs] or None,           # ForwardBatch.extend_seq_lens_cpu
     "forward_mode": int,                           # ForwardMode: 1 EXTEND, 2 DECODE, 3 MIXED, 4 IDLE, ...
     "topk_ids_of_layer": int32 tensor [num_layers, T, 8],
     "misc_objects": [...], "global_physical_count": tensor [num_layers, num_physical_experts]}

`topk_ids_of_layer` is reset to -1 before each pass and each MoE layer's `select_experts` writes its
`topk_ids` into `[layer, :T, :top_k]` (`_TOP_K_NUM = 8` columns, so top-k <= 8; dense layers stay -1).
The ids are *physical* experts; `last_physical_to_logical_map[layer, physical]` maps them to logical
experts (with EPLB redundancy the map may have changed during recording: the dump keeps only the last
one, so `meta.physical_to_logical` says which was applied). No gate scores are recorded.

What the dump cannot tell, and how this importer fills it in:

* **requests**: the recorder has no request ids (`rids` is commented out in `on_forward_pass_start`).
  Tokens are attributed to requests by position continuity in batch order: a sequence whose first position
  continues a request seen before (its next position) belongs to it, else it starts a new request.
  SGLang keeps a running batch in order, so this is exact for plain traffic; prefix-cache hits show up
  as requests that start mid-sequence (`meta.requests_started_mid_sequence`), and a retracted request
  that recomputes counts as a new one. `meta.request_attribution = "positions"`. Records that carry a
  `rids` list (if a future SGLang adds it back) use it instead.
* **phases**: EXTEND passes are prefill; DECODE passes decode; a MIXED pass (chunked prefill with decode)
  is split into its prefill pass and its decode pass (`meta.mixed_passes_split`); its one-token sequences
  that continue a request count as decode. Other modes (speculative verify, draft extend, ...) are refused.
* only this rank's tokens: one file per rank (with data-parallel attention each rank sees other tokens).

Shared-expert fusion must be off when recording (SGLang's own TODO): fused shared experts appear as an
extra id >= n_experts, which the range check refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EmuError
from ...models import ModelSpec
from ..checks import finish_import
from ..routing_trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace

EXTEND, DECODE, MIXED, IDLE = 1, 2, 3, 4
_MODE_NAMES = {1: "EXTEND", 2: "DECODE", 3: "MIXED", 4: "IDLE", 5: "TARGET_VERIFY", 6: "DRAFT_EXTEND"}


def sniff_zip_names(names: list[str]) -> bool:
    return any(n.endswith("data.pkl") for n in names)


def _load(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise EmuError("reading an SGLang .pt dump needs torch (pip install torch)", file=str(path),
                       key="--format sglang") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise EmuError(f"not a readable torch file ({err.__class__.__name__}: {str(err)[:120]})",
                       file=str(path)) from None


def _as_np(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def import_sglang(path: str | Path, model: ModelSpec | None = None, *, allow_degenerate: bool = False) -> RoutingTrace:
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise EmuError("trace file not found", file=name)
    dump = _load(path)
    if not isinstance(dump, dict) or "records" not in dump:
        if isinstance(dump, dict) and "logical_count" in dump:
            raise EmuError("a 'stat' mode dump (counts per expert only); record with "
                           "--expert-distribution-recorder-mode per_token", file=name)
        raise EmuError("expected the recorder's dict(records=[...], last_physical_to_logical_map=...)", file=name)
    records = dump["records"]
    if not isinstance(records, list) or not records:
        raise EmuError("no records: start and stop the recorder around some requests before dumping",
                       file=name, key="records")

    # --- per-pass arrays ---------------------------------------------------------------------------
    passes: list[dict[str, Any]] = []
    order = sorted(range(len(records)), key=lambda i: (records[i].get("forward_pass_id", i)
                                                       if isinstance(records[i], dict) else i, i))
    n_layers_all = top_cols = -1
    for i in order:
        rec = records[i]
        key = f"records[{i}]"
        if not isinstance(rec, dict):
            raise EmuError(f"expected a dict, got {type(rec).__name__}", file=name, key=key)
        if "topk_ids_of_layer" not in rec:
            raise EmuError("no topk_ids_of_layer: a 'per_pass' or 'stat' dump (counts only); record with "
                           "--expert-distribution-recorder-mode per_token", file=name, key=key)
        mode = rec.get("forward_mode")
        if mode == IDLE:
            continue
        if mode not in (EXTEND, DECODE, MIXED):
            raise EmuError(f"forward_mode {mode!r} ({_MODE_NAMES.get(mode, 'unknown')}) is not supported; expected "
                           "1 EXTEND, 2 DECODE, 3 MIXED or 4 IDLE (record without speculative decoding)",
                           file=name, key=f"{key}.forward_mode")
        topk = _as_np(rec["topk_ids_of_layer"])
        positions = _as_np(rec.get("positions", [])).astype(np.int64).reshape(-1)
        n_tok = positions.size
        if topk.ndim != 3 or topk.dtype.kind not in "iu" or topk.shape[1] < n_tok:
            raise EmuError(f"expected an int [num_layers, {n_tok}, k] tensor, got {topk.dtype} {topk.shape}",
                           file=name, key=f"{key}.topk_ids_of_layer")
        if n_layers_all < 0:
            n_layers_all, top_cols = topk.shape[0], topk.shape[2]
        elif (topk.shape[0], topk.shape[2]) != (n_layers_all, top_cols):
            raise EmuError(f"expected [{n_layers_all}, *, {top_cols}] as in the first record, got {topk.shape}",
                           file=name, key=f"{key}.topk_ids_of_layer")
        if n_tok == 0:
            continue
        if positions.min() < 0:
            raise EmuError("negative position", file=name, key=f"{key}.positions")
        if mode == DECODE:
            seq_lens = np.ones(n_tok, dtype=np.int64)
        else:
            raw = rec.get("extend_seq_lens")
            seq_lens = _as_np(raw if raw is not None else []).astype(np.int64).reshape(-1)
            if seq_lens.sum() != n_tok or (seq_lens < 1).any():
                raise EmuError(f"expected positive lengths summing to the pass's {n_tok} tokens, got "
                               f"{seq_lens.tolist()[:16]}", file=name, key=f"{key}.extend_seq_lens")
        seq_start = np.r_[0, np.cumsum(seq_lens)[:-1]]
        within = np.arange(n_tok) - np.repeat(seq_start, seq_lens)
        if (positions != np.repeat(positions[seq_start], seq_lens) + within).any():
            j = int(np.flatnonzero(positions != np.repeat(positions[seq_start], seq_lens) + within)[0])
            raise EmuError(f"position {int(positions[j])} at token {j} breaks its sequence's consecutive "
                           "positions", file=name, key=f"{key}.positions")
        rids = rec.get("rids")
        if rids is not None and len(rids) != seq_lens.size:
            raise EmuError(f"expected one id per sequence ({seq_lens.size}), got {len(rids)}", file=name,
                           key=f"{key}.rids")
        passes.append({"index": i, "mode": mode, "topk": topk[:, :n_tok, :], "positions": positions,
                       "seq_start": seq_start, "seq_lens": seq_lens, "rids": rids})
    if not passes:
        raise EmuError("every record is IDLE or empty: no tokens were routed", file=name, key="records")

    # --- physical -> logical, MoE layers and top-k --------------------------------------------------
    p2l = dump.get("last_physical_to_logical_map")
    mapped = "identity"
    if p2l is not None:
        p2l = _as_np(p2l).astype(np.int64)
        if p2l.ndim != 2 or p2l.shape[0] != n_layers_all:
            raise EmuError(f"expected [{n_layers_all}, num_physical_experts], got {p2l.shape}", file=name,
                           key="last_physical_to_logical_map")
        if not (p2l == np.arange(p2l.shape[1])).all():
            mapped = "last_physical_to_logical_map"
    routed = np.zeros((n_layers_all, top_cols), dtype=bool)
    for p in passes:
        routed |= (p["topk"] >= 0).any(axis=1)
    moe_layers = np.flatnonzero(routed.any(axis=1))
    if moe_layers.size == 0:
        raise EmuError("every topk id is -1: no MoE layer routed a token", file=name, key="records")
    top_k = int(np.flatnonzero(routed.any(axis=0)).max()) + 1

    # --- requests by position continuity ------------------------------------------------------------
    next_pos: dict[int, int] = {}  # live request -> next position
    decoding: set[int] = set()
    live_order: list[int] = []
    rid_of: dict[Any, int] = {}
    names: list[str] = []
    mid = 0
    split = 0
    tok_blocks: list[np.ndarray] = []  # [T_p, L, K]
    tok_req: list[np.ndarray] = []
    tok_pos: list[np.ndarray] = []
    tok_src: list[np.ndarray] = []  # (record index, token index in the record)
    offsets = [0]
    phases: list[int] = []
    for p in passes:
        seq_req = np.empty(p["seq_lens"].size, dtype=np.int64)
        seq_dec = np.zeros(p["seq_lens"].size, dtype=bool)
        used: set[int] = set()
        for s, (start, length) in enumerate(zip(p["seq_start"].tolist(), p["seq_lens"].tolist())):
            first = int(p["positions"][start])
            r = -1
            if p["rids"] is not None:
                rid = p["rids"][s]
                if rid not in rid_of:
                    rid_of[rid] = len(names)
                    names.append(str(rid))
                r = rid_of[rid]
            else:
                for cand in live_order:
                    if cand not in used and next_pos.get(cand) == first:
                        r = cand
                        break
                if r < 0:
                    r = len(names)
                    names.append(str(r))
                    mid += first > 0
            continues = r in next_pos and next_pos[r] == first
            if r not in next_pos:
                live_order.append(r)
            seq_req[s] = r
            seq_dec[s] = p["mode"] == DECODE or (p["mode"] == MIXED and length == 1 and continues)
            if seq_dec[s]:
                decoding.add(r)
            next_pos[r] = first + length
            used.add(r)
        if p["mode"] == DECODE and p["rids"] is None:
            # a decoding request missing from a decode pass has finished
            for r in [r for r in live_order if r in decoding and r not in used]:
                live_order.remove(r)
                del next_pos[r]
                decoding.discard(r)
        tok_r = np.repeat(seq_req, p["seq_lens"])
        tok_d = np.repeat(seq_dec, p["seq_lens"])
        groups = [g for g in (np.flatnonzero(~tok_d), np.flatnonzero(tok_d)) if g.size]
        split += len(groups) > 1
        for g in groups:
            g = g[np.lexsort((p["positions"][g], tok_r[g]))]
            tok_blocks.append(np.transpose(p["topk"][:, g, :top_k], (1, 0, 2))[:, moe_layers, :])
            tok_req.append(tok_r[g])
            tok_pos.append(p["positions"][g])
            tok_src.append(np.stack([np.full(g.size, p["index"]), g], axis=1))
            offsets.append(offsets[-1] + g.size)
            phases.append(PHASE_DECODE if tok_d[g[0]] else PHASE_PREFILL)

    experts = np.concatenate(tok_blocks).astype(np.int64)
    src = np.concatenate(tok_src)
    missing = experts < 0
    if missing.any():
        t, layer, k = (int(v) for v in np.argwhere(missing)[0])
        rec_i, j = (int(v) for v in src[t])
        raise EmuError(f"id -1 in slot {k}: this token was not routed at MoE layer {int(moe_layers[layer])} "
                       f"(other tokens were, top-{top_k})", file=name,
                       key=f"records[{rec_i}].topk_ids_of_layer[{int(moe_layers[layer])}][{j}]")
    if mapped != "identity":
        assert p2l is not None
        phys = p2l.shape[1]
        if experts.max() >= phys:
            t, layer, k = (int(v) for v in np.argwhere(experts >= phys)[0])
            rec_i, j = (int(v) for v in src[t])
            raise EmuError(f"physical expert id {int(experts[t, layer, k])} out of range: the map has {phys}",
                           file=name,
                           key=f"records[{rec_i}].topk_ids_of_layer[{int(moe_layers[layer])}][{j}]")
        experts = p2l[moe_layers][np.arange(moe_layers.size)[None, :, None], experts]
    declared = int(p2l.max()) + 1 if p2l is not None else 0  # the map covers every logical expert
    meta: dict[str, Any] = {"source": "sglang", "file": path.name, "request_ids": names,
                            "request_attribution": "rids" if rid_of else "positions",
                            "requests_started_mid_sequence": int(mid), "mixed_passes_split": int(split),
                            "physical_to_logical": mapped, "records": len(records)}
    if moe_layers.size != n_layers_all:
        meta["dropped_layers"] = sorted(set(range(n_layers_all)) - set(moe_layers.tolist()))
    ranks = sorted({r.get("rank") for r in records if isinstance(r, dict) and "rank" in r})
    if ranks:
        meta["rank"] = ranks[0] if len(ranks) == 1 else ranks

    def locate(t: int, layer: int, field: str) -> tuple[str, str]:
        rec_i, j = (int(v) for v in src[t])
        return name, f"records[{rec_i}].topk_ids_of_layer[{int(moe_layers[layer])}][{j}]"

    return finish_import(experts=experts, pass_offsets=np.asarray(offsets, dtype=np.int64),
                         pass_phase=np.asarray(phases, dtype=np.int8), token_request=np.concatenate(tok_req),
                         token_position=np.concatenate(tok_pos), declared_n_experts=declared, model=model,
                         meta=meta, file=name, locate=locate, allow_degenerate=allow_degenerate)
