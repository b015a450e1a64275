"""`emu trace fit`: SyntheticParams whose generated traces look like a real trace to a cache.

Targets, measured the same way on the real trace and on generated ones:
- popularity per layer, one of: entropy[l], the entropy of layer l's selection shares (the default: it
  weighs the whole ranked distribution, so the generated working set and miss curves follow the real
  ones closer, docs/analysis.md), or top_share[l], the hottest expert's share (as `emu trace inspect`);
- reuse[l]: share of a token's experts at l also used by the previous token of its request (as inspect);
- cross: how much more often than chance an expert at l-1 is followed by its best partner at l,
  normalised to [0, 1] (see _cross_stat), averaged over consecutive layer pairs.
The pass structure (prompt and output lengths, batch size, requests) is copied from the real trace.
Fit: three coordinate rounds of bisection on common random numbers (one seed for every candidate): the
zipf_s vector (each layer on its own popularity statistic), then reuse_prob on the mean reuse, then
cross_layer_corr on the cross statistic. Each statistic rises with its parameter (entropy falls: its
negative is used); brackets narrow round by round around the last estimate, which absorbs the coupling
(cross-layer copies carry layer l-1's skew into layer l).
Cost: 3 x 3 x 7 generations of a trace as long as the real one (at most 50,000 tokens).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import attrs
import numba
import numpy as np

from ..errors import EmuError, EmuWarning
from ..models import ModelSpec
from .inspect import _overlap_per_layer, consecutive_pairs
from .routing_trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace
from .synthetic import SyntheticParams, generate

MAX_FIT_TOKENS = 50_000
ZIPF_MAX = 4.0
#: per round: half-width of the zipf_s bracket and of the reuse/cross bracket around the last estimate
ROUNDS = ((ZIPF_MAX, 1.0), (0.5, 0.1), (0.15, 0.03))


@attrs.frozen
class TraceStats:
    top_share: tuple[float, ...]
    reuse: tuple[float, ...]
    cross: float
    entropy: tuple[float, ...] = ()  # natural-log entropy of each layer's selection shares

    def to_dict(self) -> dict[str, Any]:
        return {"top_share": list(self.top_share), "entropy": list(self.entropy), "reuse": list(self.reuse),
                "cross": self.cross}

    def popularity(self, kind: str) -> np.ndarray:
        """The per-layer statistic the zipf bisection drives, rising with zipf_s."""
        return np.asarray(self.top_share) if kind == "top-share" else -np.asarray(self.entropy)


@numba.njit(cache=True)
def _cross_stat(experts: np.ndarray, n_exp: int) -> float:
    """Mean over consecutive layer pairs of sum_a (C[a, b*] - n(a) q(b*)) / sum_a n(a) (1 - q(b*)): C[a, b]
    tokens with a at l-1 and b at l, n(a) tokens with a, q(b) share of tokens with b at l, b* the partner
    with the largest lift (C[a, b] - n(a) q(b)) / (1 - q(b)). ~0 when layers are independent (plus a small
    positive bias from picking the best of E, the same on real and generated traces of equal length),
    1 when a's partner always follows."""
    n_tok, n_layers, top_k = experts.shape
    if n_layers < 2 or n_tok == 0:
        return 0.0
    total = 0.0
    counts = np.zeros((n_exp, n_exp), np.int64)
    n_a = np.zeros(n_exp, np.int64)
    q = np.zeros(n_exp, np.float64)
    for layer in range(1, n_layers):
        counts[:, :] = 0
        n_a[:] = 0
        q[:] = 0.0
        for t in range(n_tok):
            for j in range(top_k):
                q[experts[t, layer, j]] += 1.0 / n_tok
            for i in range(top_k):
                a = experts[t, layer - 1, i]
                n_a[a] += 1
                for j in range(top_k):
                    counts[a, experts[t, layer, j]] += 1
        excess = 0.0
        room = 0.0
        for a in range(n_exp):
            if n_a[a] == 0:
                continue
            best = 0
            best_lift = -1e300
            for b in range(n_exp):
                lift = (counts[a, b] - n_a[a] * q[b]) / max(1.0 - q[b], 1e-12)
                if lift > best_lift:
                    best_lift = lift
                    best = b
            excess += counts[a, best] - n_a[a] * q[best]
            room += n_a[a] * (1.0 - q[best])
        total += excess / room if room > 0 else 0.0
    return total / (n_layers - 1)


def trace_stats(trace: RoutingTrace) -> TraceStats:
    counts = trace.expert_counts()
    sel = counts.sum(axis=1)
    share = np.where(sel > 0, counts.max(axis=1) / np.maximum(sel, 1), 0.0)
    p = counts / np.maximum(sel, 1)[:, None]
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    cur, prev = consecutive_pairs(trace)
    hits = _overlap_per_layer(trace.experts, cur, prev)
    reuse = hits / (cur.size * trace.top_k) if cur.size else np.zeros(trace.n_layers)
    cross = _cross_stat(np.ascontiguousarray(trace.experts), int(counts.shape[1]))
    return TraceStats(top_share=tuple(float(v) for v in share), reuse=tuple(float(v) for v in reuse),
                      cross=float(cross), entropy=tuple(float(v) for v in entropy))


def structure(trace: RoutingTrace) -> dict[str, Any]:
    """Pass structure to copy: mean prompt and output length per request, peak decode batch, requests."""
    lengths = np.diff(trace.pass_offsets)
    phase_of_token = np.repeat(trace.pass_phase, lengths)
    n_req = max(trace.n_requests, 1)
    prompt = round(int((phase_of_token == PHASE_PREFILL).sum()) / n_req)
    output = round(int((phase_of_token == PHASE_DECODE).sum()) / n_req)
    if prompt == 0 and output == 0:
        output = 1
    decode = lengths[trace.pass_phase == PHASE_DECODE]
    batch = int(decode.max()) if decode.size else 1
    return {"prompt_len": prompt, "output_len": output, "batch_size": max(batch, 1), "n_requests": n_req}


@attrs.frozen
class FitResult:
    params: SyntheticParams
    tokens: int
    target: TraceStats
    achieved: TraceStats
    #: the model the generator ran (the trace's top-k; the trace's shape when no model was given)
    model: ModelSpec | None = None
    #: the popularity statistic zipf_s was fitted on: "entropy" or "top-share"
    popularity: str = "entropy"

    def errors(self) -> dict[str, float]:
        t, a = self.target, self.achieved
        return {"top_share_max_abs": float(np.max(np.abs(np.subtract(t.top_share, a.top_share)))),
                "entropy_max_abs": float(np.max(np.abs(np.subtract(t.entropy, a.entropy)))),
                "reuse_mean_abs": abs(float(np.mean(t.reuse) - np.mean(a.reuse))),
                "cross_abs": abs(t.cross - a.cross)}


def fit_model(trace: RoutingTrace, model: ModelSpec | None, file: str | None = None) -> ModelSpec:
    """The model the generator runs: `model` (its layers and experts must hold the trace; a different top-k
    is a warning and the trace's k is used, as a capture may force a lower k than the model's), or without
    one a shape taken from the trace (only layers, experts and top-k matter to the generator)."""
    if trace.n_tokens < 2:
        raise EmuError("need at least 2 tokens to fit", file=file, key="experts")
    if model is None:
        n_exp = max(trace.n_experts, int(trace.experts.max()) + 1)
        return ModelSpec(name=trace.model or "trace", n_moe_layers=trace.n_layers, n_experts=n_exp,
                         top_k=trace.top_k, hidden=1, expert_intermediate=1, source="shape of the fitted trace")
    if trace.n_layers != model.n_moe_layers:
        raise EmuError(f"trace has {trace.n_layers} layers, top-{trace.top_k}; model {model.name} has "
                       f"{model.n_moe_layers} layers, top-{model.top_k}", file=file, key="--model")
    if int(trace.experts.max()) >= model.n_experts or (trace.n_experts and trace.n_experts != model.n_experts):
        raise EmuError(f"trace has {max(trace.n_experts, int(trace.experts.max()) + 1)} experts per layer; "
                       f"{model.name} has {model.n_experts}", file=file, key="--model")
    if trace.top_k != model.top_k:
        warnings.warn(f"{file or 'trace'}: trace routes top-{trace.top_k}, {model.name} top-{model.top_k}; "
                      f"fitting the trace's top-{trace.top_k}", EmuWarning, stacklevel=2)
        return attrs.evolve(model, top_k=trace.top_k)
    return model


POPULARITY = ("entropy", "top-share")


def fit(trace: RoutingTrace, model: ModelSpec | None, *, rounds: int = 3, steps: int = 7, seed: int = 0,
        max_tokens: int = MAX_FIT_TOKENS, file: str | None = None, popularity: str = "entropy") -> FitResult:
    if popularity not in POPULARITY:
        raise EmuError(f"expected one of {list(POPULARITY)}, got {popularity!r}", key="--popularity")
    model = fit_model(trace, model, file)
    if trace.n_tokens > max_tokens:
        trace = trace.slice_tokens(max_tokens)
    target = trace_stats(trace)
    shape = structure(trace)
    n_tok = trace.n_tokens
    n_layers = model.n_moe_layers

    def stats_for(zipf: np.ndarray, reuse: float, cross: float) -> TraceStats:
        params = SyntheticParams(zipf_s=tuple(float(v) for v in zipf), reuse_prob=reuse, cross_layer_corr=cross,
                                 seed=seed, **shape)
        return trace_stats(generate(model, params, n_tok))

    want_pop = target.popularity(popularity)
    want_reuse = float(np.mean(target.reuse))
    zipf = np.full(n_layers, ZIPF_MAX / 2)
    reuse, cross = want_reuse, 0.3
    for width_z, width_p in ROUNDS[:rounds]:
        z_lo = np.clip(zipf - width_z, 0.0, ZIPF_MAX)
        z_hi = np.clip(zipf + width_z, 0.0, ZIPF_MAX)
        zipf = _fit_zipf(lambda z, r=reuse, c=cross: stats_for(z, r, c).popularity(popularity), want_pop,
                         z_lo, z_hi, steps)
        reuse = _bisect(lambda r, z=zipf, c=cross: float(np.mean(stats_for(z, r, c).reuse)), want_reuse,
                        max(reuse - width_p, 0.0), min(reuse + width_p, 1.0), steps)
        cross = _bisect(lambda c, z=zipf, r=reuse: stats_for(z, r, c).cross, target.cross,
                        max(cross - width_p, 0.0), min(cross + width_p, 1.0), steps)
    params = SyntheticParams(zipf_s=tuple(round(float(v), 4) for v in zipf), reuse_prob=round(reuse, 4),
                             cross_layer_corr=round(cross, 4), seed=seed, **shape)
    achieved = trace_stats(generate(model, params, n_tok))
    return FitResult(params=params, tokens=n_tok, target=target, achieved=achieved, model=model,
                     popularity=popularity)


def _fit_zipf(stats: Any, want: np.ndarray, lo: np.ndarray, hi: np.ndarray, steps: int) -> np.ndarray:
    """Bisection of every layer's exponent at once, each on its own layer's popularity statistic (`stats`
    returns it per layer, rising with the exponent). Layer l's popularity also depends on layer l-1's
    exponent (cross-layer copies), which moves with it: hence rounds with brackets narrowing around the last
    estimate, so that coupling error shrinks with the bracket."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        low = np.asarray(stats(mid)) < want
        lo = np.where(low, mid, lo)
        hi = np.where(low, hi, mid)
    return (lo + hi) / 2


def _bisect(stat: Any, want: float, lo: float, hi: float, steps: int) -> float:
    for _ in range(steps):
        mid = (lo + hi) / 2
        if stat(mid) < want:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def params_toml(result: FitResult, source: str, model: ModelSpec, quality: dict[str, Any] | None = None) -> str:
    """A `[workload.synthetic]` table to paste into a scenario, and a `[fit]` table saying how close it got
    (with `quality`, the fit report's measures under `[fit.quality]`)."""
    import tomli_w

    p = result.params.to_dict()
    synthetic = {"tokens": result.tokens, **{k: p[k] for k in (
        "zipf_s", "reuse_prob", "cross_layer_corr", "prompt_len", "output_len", "n_requests", "batch_size",
        "seed")}}
    fit_table = {"source": source, "model": model.name, "tokens": result.tokens, "popularity": result.popularity,
                 "target": result.target.to_dict(), "achieved": result.achieved.to_dict(),
                 "errors": result.errors()}
    if quality is not None:
        fit_table["quality"] = quality
    head = (f"# Synthetic parameters fitted by `emu trace fit` to {Path(source).name} ({model.name}).\n"
            "# Paste [workload.synthetic] into a scenario; [fit] records the targets and what the fit reached.\n")
    return head + tomli_w.dumps({"workload": {"synthetic": synthetic}, "fit": fit_table})


def describe(result: FitResult) -> str:
    t, a = result.target, result.achieved
    err = result.errors()
    p = result.params
    zipf = p.zipf_s if isinstance(p.zipf_s, tuple) else (p.zipf_s,)
    lines = [f"fitted on {result.tokens:,} tokens: reuse_prob {p.reuse_prob:.3f}, cross_layer_corr "
             f"{p.cross_layer_corr:.3f}, zipf_s {min(zipf):.2f}..{max(zipf):.2f} (mean {np.mean(zipf):.2f}), "
             f"prompt {p.prompt_len}, output {p.output_len}, batch {p.batch_size}",
             f"popularity fitted on: {result.popularity}",
             f"selection entropy: target mean {np.mean(t.entropy):.3f}, fit {np.mean(a.entropy):.3f} "
             f"(worst layer off by {err['entropy_max_abs']:.3f})",
             f"top-expert share: target mean {np.mean(t.top_share):.3f}, fit {np.mean(a.top_share):.3f} "
             f"(worst layer off by {err['top_share_max_abs']:.3f})",
             f"reuse rate: target {np.mean(t.reuse):.3f}, fit {np.mean(a.reuse):.3f}",
             f"cross-layer partner excess: target {t.cross:.3f}, fit {a.cross:.3f}"]
    return "\n".join(lines)
