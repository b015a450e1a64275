"""What a trace looks like to a cache: size, pass structure, popularity skew and temporal reuse per layer."""

from __future__ import annotations

from typing import Any

import attrs
import numba
import numpy as np

from .routing_trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace


@attrs.frozen
class TraceSummary:
    model: str
    tokens: int
    passes: int
    prefill_passes: int
    decode_passes: int
    prefill_tokens: int
    decode_tokens: int
    requests: int
    layers: int
    top_k: int
    n_experts: int
    #: mean tokens per decode pass (the decode batch)
    mean_decode_batch: float
    #: per layer: the most selected expert's share of the layer's selections (1/E when uniform)
    top_expert_share: tuple[float, ...]
    #: per layer: mean fraction of a token's experts that the previous token of its request also used
    reuse_rate: tuple[float, ...]
    #: tokens that have a previous token in their request (the reuse rate's denominator)
    reuse_pairs: int
    #: mean top-1 gate score, when the trace has scores
    mean_top1_score: float | None = None
    #: fraction of predicted experts that are in the true top-k set, when the trace has predictions
    predictor_precision: float | None = None
    fingerprint: str = ""
    #: mean over tokens and layers of the full router logits' range (max - min), when the trace has logits:
    #: the scale of cache-aware routing's delta_avg with history = 1
    mean_logit_range: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["top_expert_share"] = list(self.top_expert_share)
        out["reuse_rate"] = list(self.reuse_rate)
        return out


@numba.njit(cache=True)
def _overlap_per_layer(experts: np.ndarray, cur: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Sum over (cur, prev) token pairs of |experts[cur, l] ∩ experts[prev, l]| per layer."""
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    hits = np.zeros(n_layers, np.int64)
    for i in range(cur.shape[0]):
        a = cur[i]
        b = prev[i]
        for layer in range(n_layers):
            for j in range(top_k):
                e = experts[a, layer, j]
                for m in range(top_k):
                    if experts[b, layer, m] == e:
                        hits[layer] += 1
                        break
    return hits


@numba.njit(cache=True)
def _in_set_count(experts: np.ndarray, predicted: np.ndarray) -> int:
    n = 0
    for t in range(experts.shape[0]):
        for layer in range(experts.shape[1]):
            for j in range(experts.shape[2]):
                e = predicted[t, layer, j]
                for m in range(experts.shape[2]):
                    if experts[t, layer, m] == e:
                        n += 1
                        break
    return n


def consecutive_pairs(trace: RoutingTrace) -> tuple[np.ndarray, np.ndarray]:
    """(token, previous token of the same request) for every token that has one, by position."""
    order = np.lexsort((trace.token_position, trace.token_request))
    same = trace.token_request[order[1:]] == trace.token_request[order[:-1]]
    return order[1:][same], order[:-1][same]


def summarize(trace: RoutingTrace) -> TraceSummary:
    lengths = np.diff(trace.pass_offsets)
    prefill = trace.pass_phase == PHASE_PREFILL
    decode = trace.pass_phase == PHASE_DECODE
    counts = trace.expert_counts()
    selections = counts.sum(axis=1)
    share = np.where(selections > 0, counts.max(axis=1) / np.maximum(selections, 1), 0.0)
    cur, prev = consecutive_pairs(trace)
    hits = _overlap_per_layer(trace.experts, cur, prev)
    reuse = hits / (cur.size * trace.top_k) if cur.size else np.zeros(trace.n_layers)
    top1 = None
    if trace.scores is not None and trace.n_tokens:
        top1 = float(trace.scores.astype(np.float32).max(axis=2).mean())
    precision = None
    if trace.predicted is not None and trace.n_tokens:
        precision = _in_set_count(trace.experts, trace.predicted) / trace.predicted.size
    logit_range = None
    if trace.logits is not None and trace.n_tokens:
        lg = trace.logits.astype(np.float32)
        logit_range = float((lg.max(axis=2) - lg.min(axis=2)).mean())
    n_decode = int(decode.sum())
    return TraceSummary(
        model=trace.model, tokens=trace.n_tokens, passes=trace.n_passes, prefill_passes=int(prefill.sum()),
        decode_passes=n_decode, prefill_tokens=int(lengths[prefill].sum()),
        decode_tokens=int(lengths[decode].sum()), requests=trace.n_requests, layers=trace.n_layers,
        top_k=trace.top_k, n_experts=int(counts.shape[1]),
        mean_decode_batch=float(lengths[decode].mean()) if n_decode else 0.0,
        top_expert_share=tuple(float(x) for x in share), reuse_rate=tuple(float(x) for x in reuse),
        reuse_pairs=int(cur.size), mean_top1_score=top1, predictor_precision=precision,
        fingerprint=trace.fingerprint(), mean_logit_range=logit_range)


def render(s: TraceSummary, fmt: str = "plain") -> str:
    """The summary as text, its per-layer table in `fmt` (`emu.tables`: "plain", or "rich" for a terminal)."""
    from ..tables import Column, table_text

    lines = [
        f"trace {s.fingerprint}  model {s.model or '?'}: {s.layers} MoE layers, {s.n_experts} experts, "
        f"top-{s.top_k}",
        f"tokens    {s.tokens:>12,}  (prefill {s.prefill_tokens:,}, decode {s.decode_tokens:,})",
        f"passes    {s.passes:>12,}  (prefill {s.prefill_passes:,}, decode {s.decode_passes:,}; "
        f"mean decode batch {s.mean_decode_batch:.2f})",
        f"requests  {s.requests:>12,}",
    ]
    if s.mean_top1_score is not None:
        lines.append(f"mean top-1 gate score  {s.mean_top1_score:.3f}")
    if s.predictor_precision is not None:
        lines.append(f"speculator precision   {s.predictor_precision:.3f}")
    if s.mean_logit_range is not None:
        lines.append(f"router logits          mean range {s.mean_logit_range:.3f}")
    uniform = 1.0 / s.n_experts if s.n_experts else 0.0
    lines.append("")
    lines.append(f"per layer: uniform share {uniform:.3f}; reuse over {s.reuse_pairs:,} consecutive pairs")
    rows = [[str(layer), f"{sh:.3f}", f"{ru:.3f}"]
            for layer, (sh, ru) in enumerate(zip(s.top_expert_share, s.reuse_rate, strict=True))]
    if s.layers:
        rows.append(["mean", f"{np.mean(s.top_expert_share):.3f}", f"{np.mean(s.reuse_rate):.3f}"])
    columns = [Column("layer", width=5), Column("top-expert share", width=16), Column("reuse rate", width=10)]
    lines.append(table_text(columns, rows, fmt, rule=False))
    return "\n".join(lines)
