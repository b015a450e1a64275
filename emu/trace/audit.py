"""`emu trace audit`: is a trace's miss rate a policy failure or a working-set failure, before any timing.

Everything is counted on the key streams of `keystream.py` (per layer and pass, the distinct experts, in
order of first appearance), with an isolated cache of c slots per layer unless said otherwise:
- misses of LRU and of Belady's MIN (OPT, demand insertion) at every c, exact (stack distances); a static
  hot set (the c experts of the layer most accessed over the whole trace, pinned, each loaded on its first
  use; other experts bypass the cache: an oracle of popularity);
- at each reported capacity, LRU's misses split three ways: compulsory (first uses: no cache avoids them),
  capacity (OPT's other misses: no eviction rule avoids them, only more room or prefetch that hides them)
  and policy (LRU - OPT: a better eviction rule avoids them). The verdict is the largest share;
- hit ceilings of predictor families, per token and layer, k guesses for the token's k experts, as the
  share of the token's experts named: the previous token of the request at the same layer (repeat), the
  previous layer's experts through the co-activation map fitted on the whole trace (in-sample: a ceiling
  of that family), the trace's own predictions when it carries them;
- reuse distances: passes between consecutive accesses of a layer's expert;
- concentration: the gate of emu/analysis/concentration.py on the trace's counts;
- batch union: distinct experts per layer that B requests' decode tokens at the same decode step need
  together, against B independent tokens with the trace's per-layer popularity and with uniform routing;
- co-activation across adjacent layers: `emu trace fit`'s partner excess per layer pair.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import numba
import numpy as np

from ..errors import EmuError
from .inspect import _overlap_per_layer, consecutive_pairs
from .keystream import global_stream, layer_stream, lru_distances, miss_curve, n_experts_of, opt_distances, reuse_gaps
from .routing_trace import PHASE_DECODE, RoutingTrace

#: reuse-distance buckets (passes): share of reuses within 1, 2, 4, 16 passes, and beyond
GAP_BUCKETS = (1, 2, 4, 16)


@attrs.frozen
class CapacityRow:
    slots: int  # per layer
    accesses: int
    lru: int  # misses, summed over layers
    opt: int
    hot: int
    compulsory: int
    shared_lru: int  # one cache of slots * layers for all layers
    shared_opt: int

    @property
    def verdict(self) -> str:
        if self.lru == 0:
            return "fits"
        shares = {"policy": self.lru - self.opt, "working set": self.opt - self.compulsory,
                  "compulsory": self.compulsory}
        return max(shares, key=lambda k: shares[k])

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "verdict": self.verdict}


@attrs.frozen
class LayerRow:
    layer: int
    accesses: int
    compulsory: int
    lru: int  # misses at the reference capacity
    opt: int
    hot: int
    top_share: float
    hot_frac: float  # experts covering 90 % of selections / E
    repeat: float  # previous-token hit ceiling
    layer_map: float | None  # previous-layer map ceiling (None at layer 0)
    predicted: float | None
    partner_excess: float | None  # with layer - 1
    reuse_1: float  # share of reuses within 1 pass

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class BatchRow:
    batch: int
    groups: int
    steps: int  # (group, step) samples
    union: float  # mean distinct experts per layer
    independent: float  # B independent tokens with the layer's popularity
    uniform: float

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class AuditReport:
    source: str
    model: str
    fingerprint: str
    tokens: int
    passes: int
    requests: int
    n_layers: int
    n_experts: int
    top_k: int
    ref_slots: int
    capacities: tuple[CapacityRow, ...]
    layers: tuple[LayerRow, ...]
    batch: tuple[BatchRow, ...]
    ceilings: dict[str, float | None]  # family -> mean hit ceiling
    gap_shares: tuple[float, ...]  # reuses within GAP_BUCKETS passes (cumulative), then beyond the last
    gap_median: float
    gap_p90: float
    concentration_verdict: str
    median_hot_frac: float
    partner_excess: float
    #: misses at c = 1..E per layer (plots): lru, opt, hot; accesses per layer
    curves: dict[str, np.ndarray] = attrs.field(eq=False, repr=False, factory=dict)
    gaps: np.ndarray = attrs.field(eq=False, repr=False, factory=lambda: np.zeros(0, np.int64))

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in attrs.asdict(self, recurse=False).items() if k not in ("curves", "gaps")}
        out["capacities"] = [c.to_dict() for c in self.capacities]
        out["layers"] = [r.to_dict() for r in self.layers]
        out["batch"] = [b.to_dict() for b in self.batch]
        return out


# ---- kernels -------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _map_recall(experts: np.ndarray, n_exp: int) -> np.ndarray:
    """Per layer l >= 1: share of the tokens' experts at l among the k experts that score highest on
    sum over the token's experts a at l-1 of C[a, b] (C: tokens with a at l-1 and b at l, whole trace);
    ties go to the lower id. Layer 0: 0."""
    n_tok, n_layers, top_k = experts.shape
    out = np.zeros(n_layers)
    counts = np.zeros((n_exp, n_exp), np.int64)
    score = np.zeros(n_exp, np.int64)
    taken = np.zeros(n_exp, np.bool_)
    for layer in range(1, n_layers):
        counts[:, :] = 0
        for t in range(n_tok):
            for i in range(top_k):
                for j in range(top_k):
                    counts[experts[t, layer - 1, i], experts[t, layer, j]] += 1
        hits = 0
        for t in range(n_tok):
            score[:] = 0
            for i in range(top_k):
                score += counts[experts[t, layer - 1, i]]
            taken[:] = False
            for _ in range(top_k):
                best = -1
                for b in range(n_exp):
                    if not taken[b] and (best < 0 or score[b] > score[best]):
                        best = b
                taken[best] = True
            for j in range(top_k):
                if taken[experts[t, layer, j]]:
                    hits += 1
        out[layer] = hits / (n_tok * top_k) if n_tok else 0.0
    return out


@numba.njit(cache=True)
def _predicted_recall(experts: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    n_tok, n_layers, top_k = experts.shape
    out = np.zeros(n_layers)
    for layer in range(n_layers):
        hits = 0
        for t in range(n_tok):
            for j in range(top_k):
                e = experts[t, layer, j]
                for m in range(top_k):
                    if predicted[t, layer, m] == e:
                        hits += 1
                        break
        out[layer] = hits / (n_tok * top_k) if n_tok else 0.0
    return out


# ---- the report ----------------------------------------------------------------------------------

def default_slots(n_experts: int, top_k: int) -> list[int]:
    """top_k and 1/8, 1/4, 1/2, 3/4 of the experts, within 1..E - 1 (E slots hold everything)."""
    hi = max(n_experts - 1, 1)
    cands = [top_k] + [math.ceil(n_experts * f) for f in (0.125, 0.25, 0.5, 0.75)]
    return sorted({min(max(c, 1), hi) for c in cands})


def _hot_misses(keys: np.ndarray, n_exp: int) -> np.ndarray:
    """Misses at c = 1..E of a pinned set of the c most accessed experts: every access outside the set, and
    the first use of each member (it is loaded then). Nothing else is ever inserted (misses bypass the
    cache, as with CPU execution of a missing expert), so it can beat OPT, which inserts every miss."""
    ranked = np.sort(np.bincount(keys, minlength=n_exp))[::-1]
    return keys.shape[0] - np.cumsum(ranked) + np.cumsum(ranked > 0)


def _batch_union(trace: RoutingTrace, n_exp: int, counts: np.ndarray) -> list[BatchRow]:
    """Requests in id order, in consecutive groups of B; decode step s of each member at the same time."""
    decode_tok = np.repeat(trace.pass_phase == PHASE_DECODE, np.diff(trace.pass_offsets))
    idx = np.flatnonzero(decode_tok)
    if idx.size == 0:
        return []
    order = idx[np.lexsort((trace.token_position[idx], trace.token_request[idx]))]
    _reqs, starts = np.unique(trace.token_request[order], return_index=True)
    per_req = np.split(order, starts[1:])
    n_req = len(per_req)
    if n_req < 2:
        return []
    k = trace.top_k
    p_tok = counts / max(int(decode_tok.sum()), 1)  # chance a decode token routes to e (counts: decode only)
    batches = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b <= n_req} | {n_req})
    rows = []
    for b in batches:
        groups = [per_req[g * b:(g + 1) * b] for g in range(n_req // b)]
        total = 0.0
        samples = 0
        for group in groups:
            steps = min(len(r) for r in group)
            if steps == 0:
                continue
            toks = np.stack([r[:steps] for r in group], axis=1)  # [steps, B]
            sel = trace.experts[toks]  # [steps, B, L, k]
            sel = np.sort(sel.transpose(0, 2, 1, 3).reshape(steps, trace.n_layers, b * k), axis=2)
            distinct = 1 + (np.diff(sel, axis=2) != 0).sum(axis=2)
            total += float(distinct.mean()) * steps
            samples += steps
        if samples == 0:
            continue
        independent = float(np.mean((1.0 - (1.0 - np.clip(p_tok, 0.0, 1.0)) ** b).sum(axis=1)))
        uniform = n_exp * (1.0 - (1.0 - k / n_exp) ** b)
        rows.append(BatchRow(batch=b, groups=len(groups), steps=samples, union=total / samples,
                             independent=independent, uniform=uniform))
    return rows


def audit(trace: RoutingTrace, *, slots: list[int] | None = None, source: str = "") -> AuditReport:
    from ..analysis.concentration import gate_from_counts, layer_concentration
    from .fit import _cross_stat

    if trace.n_tokens == 0:
        raise EmuError("trace has no tokens", file=source or None, key="experts")
    n_exp = n_experts_of(trace)
    n_layers, k = trace.n_layers, trace.top_k
    caps = sorted(set(slots)) if slots else default_slots(n_exp, k)
    ref = caps[len(caps) // 2]

    lru = np.zeros((n_layers, n_exp), np.int64)
    opt = np.zeros((n_layers, n_exp), np.int64)
    hot = np.zeros((n_layers, n_exp), np.int64)
    acc = np.zeros(n_layers, np.int64)
    cold = np.zeros(n_layers, np.int64)
    reuse_1 = np.zeros(n_layers)
    all_gaps = []
    for layer in range(n_layers):
        keys, when = layer_stream(trace, layer)
        acc[layer] = keys.shape[0]
        dist_lru = lru_distances(keys, n_exp)
        cold[layer] = int((dist_lru == 0).sum())
        lru[layer] = miss_curve(dist_lru, n_exp)
        opt[layer] = miss_curve(opt_distances(keys, n_exp), n_exp)
        hot[layer] = _hot_misses(keys, n_exp)
        gaps = reuse_gaps(keys, when, n_exp)
        gaps = gaps[gaps >= 0]
        reuse_1[layer] = float((gaps == 1).mean()) if gaps.size else 0.0
        all_gaps.append(gaps)

    shared = global_stream(trace)
    n_keys = n_layers * n_exp
    shared_lru = miss_curve(lru_distances(shared, n_keys), n_keys)
    shared_opt = miss_curve(opt_distances(shared, n_keys), n_keys)

    rows = tuple(CapacityRow(
        slots=c, accesses=int(acc.sum()), lru=int(lru[:, c - 1].sum()), opt=int(opt[:, c - 1].sum()),
        hot=int(hot[:, c - 1].sum()), compulsory=int(cold.sum()),
        shared_lru=int(shared_lru[c * n_layers - 1]), shared_opt=int(shared_opt[c * n_layers - 1])) for c in caps)

    experts = np.ascontiguousarray(trace.experts)
    cur, prev = consecutive_pairs(trace)
    repeat = _overlap_per_layer(experts, cur, prev) / (cur.size * k) if cur.size else np.zeros(n_layers)
    lmap = _map_recall(experts, n_exp) if n_layers > 1 else np.zeros(n_layers)
    pred = None if trace.predicted is None else _predicted_recall(experts, np.ascontiguousarray(trace.predicted))
    excess = [None] + [float(_cross_stat(np.ascontiguousarray(experts[:, layer - 1:layer + 1]), n_exp))
                       for layer in range(1, n_layers)]
    counts = trace.expert_counts()
    conc = [layer_concentration(counts[layer], layer) if counts[layer].sum() > 0 and n_exp >= 2 else None
            for layer in range(n_layers)]
    gate = gate_from_counts(counts, None, k, source=source or "trace") if n_exp >= 2 else None

    layers = tuple(LayerRow(
        layer=layer, accesses=int(acc[layer]), compulsory=int(cold[layer]), lru=int(lru[layer, ref - 1]),
        opt=int(opt[layer, ref - 1]), hot=int(hot[layer, ref - 1]),
        top_share=conc[layer].top_share if conc[layer] else 1.0, hot_frac=conc[layer].hot_frac if conc[layer] else 1.0,
        repeat=float(repeat[layer]), layer_map=float(lmap[layer]) if layer else None,
        predicted=None if pred is None else float(pred[layer]), partner_excess=excess[layer],
        reuse_1=float(reuse_1[layer])) for layer in range(n_layers))

    gaps = np.concatenate(all_gaps) if all_gaps else np.zeros(0, np.int64)
    if gaps.size:
        shares = (*tuple(float((gaps <= b).mean()) for b in GAP_BUCKETS), float((gaps > GAP_BUCKETS[-1]).mean()))
        median, p90 = float(np.median(gaps)), float(np.percentile(gaps, 90))
    else:
        shares, median, p90 = (0.0,) * (len(GAP_BUCKETS) + 1), math.nan, math.nan

    decode_tok = np.repeat(trace.pass_phase == PHASE_DECODE, np.diff(trace.pass_offsets))
    decode_counts = np.zeros((n_layers, n_exp), np.int64)
    for layer in range(n_layers):
        decode_counts[layer] = np.bincount(trace.experts[decode_tok, layer, :].ravel().astype(np.int64),
                                           minlength=n_exp)[:n_exp]
    ceilings: dict[str, float | None] = {
        "repeat previous token": float(np.average(repeat)) if cur.size else None,
        "previous-layer map (in-sample)": float(np.mean(lmap[1:])) if n_layers > 1 else None,
        "trace predictions": None if pred is None else float(np.mean(pred)),
    }
    pair_excess = [e for e in excess if e is not None]
    return AuditReport(
        source=source, model=trace.model, fingerprint=trace.fingerprint(), tokens=trace.n_tokens,
        passes=trace.n_passes, requests=trace.n_requests, n_layers=n_layers, n_experts=n_exp, top_k=k,
        ref_slots=ref, capacities=rows, layers=layers, batch=tuple(_batch_union(trace, n_exp, decode_counts)),
        ceilings=ceilings, gap_shares=shares, gap_median=median, gap_p90=p90,
        concentration_verdict=gate.cache_helps if gate else "n/a",
        median_hot_frac=gate.median_hot_frac if gate else 1.0,
        partner_excess=float(np.mean(pair_excess)) if pair_excess else math.nan,
        curves={"lru": lru, "opt": opt, "hot": hot, "accesses": acc, "shared_lru": shared_lru,
                "shared_opt": shared_opt},
        gaps=gaps)


# ---- output --------------------------------------------------------------------------------------

def _table(head: list[str], rows: list[list[str]], fmt: str) -> list[str]:
    """A report's table in `fmt` (`emu.tables`), every column right-aligned, as lines."""
    from ..tables import Column, table_text

    return table_text([Column(h) for h in head], rows, fmt).splitlines()


def _pct(n: int, d: int) -> str:
    return f"{100.0 * n / d:.1f}" if d else "-"


def _opt(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def render(r: AuditReport, *, markdown: bool = False, fmt: str = "plain") -> str:
    """The report as text: tables in `fmt` ("plain", or "rich" for a terminal: `emu.tables.format_for`), or as
    a Markdown document with `markdown`."""
    fmt = "markdown" if markdown else fmt
    def head(text: str) -> list[str]:
        return ["", f"## {text}", ""] if markdown else ["", text, "=" * len(text)]

    title = f"Trace audit: {Path(r.source).name if r.source else 'trace'}"
    out = [f"# {title}" if markdown else title, "",
           f"trace {r.fingerprint}, model {r.model or '?'}: {r.tokens:,} tokens, {r.passes:,} passes, "
           f"{r.requests:,} requests, {r.n_layers} MoE layers x {r.n_experts} experts, top-{r.top_k}. "
           "Key stream: per layer and pass, the distinct experts (docs/traces.md, `emu trace audit`)."]

    out += head("Policy or working set? Misses per layer cache of c slots (all layers pooled)")
    rows = []
    for c in r.capacities:
        rows.append([str(c.slots), f"{100 * c.slots / r.n_experts:.0f}", _pct(c.lru, c.accesses),
                     _pct(c.opt, c.accesses), _pct(c.hot, c.accesses), _pct(c.lru - c.opt, c.lru),
                     _pct(c.opt - c.compulsory, c.lru), _pct(c.compulsory, c.lru), c.verdict,
                     _pct(c.shared_lru, c.accesses), _pct(c.shared_opt, c.accesses)])
    out += _table(["slots/layer", "% of E", "LRU miss %", "OPT miss %", "hot-set miss %", "policy % of LRU",
                   "working set % of LRU", "compulsory % of LRU", "verdict", "shared LRU miss %",
                   "shared OPT miss %"], rows, fmt)
    out += ["", f"{r.capacities[0].accesses:,} accesses. Policy: LRU - OPT (a better eviction rule avoids "
                "them); working set: OPT's misses beyond first uses (only more room, or a prefetch that hides "
                "them, helps); compulsory: first uses. Hot set: the c most accessed experts pinned (an "
                "oracle of popularity). Shared: one cache of c x layers slots for all layers."]

    out += head("Predictor hit ceilings (share of a token's k experts named with k guesses)")
    out += _table(["family", "mean", "worst layer", "best layer"],
                  [[name, _opt(v), *_spread(r, name)] for name, v in r.ceilings.items()], fmt)

    out += head("Reuse distances (passes between accesses of a layer's expert)")
    buckets = [f"<= {b}" for b in GAP_BUCKETS] + [f"> {GAP_BUCKETS[-1]}"]
    out += _table([*buckets, "median", "p90"],
                  [[f"{100 * s:.1f} %" for s in r.gap_shares] + [_opt(r.gap_median, "{:.0f}"),
                                                                   _opt(r.gap_p90, "{:.0f}")]], fmt)

    out += head("Concentration and co-activation")
    out += [f"concentration gate (emu concentration): cache helps = {r.concentration_verdict}, median share of "
            f"experts covering 90 % of selections {r.median_hot_frac:.3f}; mean partner excess of adjacent "
            f"layers {_opt(r.partner_excess)} (0 independent, 1 the best partner always follows; "
            "`emu trace fit`'s cross statistic)"]

    out += head("Batch union (distinct experts per layer that B requests' decode tokens need at once)")
    if r.batch:
        out += _table(["B", "groups", "samples", "measured", "independent tokens", "uniform", "B x k"],
                      [[str(b.batch), str(b.groups), str(b.steps), f"{b.union:.2f}", f"{b.independent:.2f}",
                        f"{b.uniform:.2f}", str(b.batch * r.top_k)] for b in r.batch], fmt)
        out += ["", "Requests in id order, consecutive groups of B, decode step s of each member together. "
                    "Independent tokens: B draws with the layer's decode popularity; uniform: k of E at random."]
    else:
        out += ["not applicable: fewer than 2 requests with decode tokens"]

    out += head(f"Per layer (misses at {r.ref_slots} slots per layer)")
    rows = [[str(x.layer), str(x.accesses), _pct(x.compulsory, x.accesses), _pct(x.lru, x.accesses),
             _pct(x.opt, x.accesses), _pct(x.hot, x.accesses), f"{x.top_share:.3f}", f"{x.hot_frac:.2f}",
             f"{x.repeat:.3f}", _opt(x.layer_map), _opt(x.predicted), _opt(x.partner_excess),
             f"{x.reuse_1:.3f}"] for x in r.layers]
    out += _table(["layer", "accesses", "first use %", "LRU %", "OPT %", "hot %", "top share", "hot frac 90%",
                   "repeat", "layer map", "predicted", "partner excess", "reuse <= 1 pass"], rows, fmt)
    return "\n".join(out) + "\n"


def _spread(r: AuditReport, family: str) -> list[str]:
    attr = {"repeat previous token": "repeat", "previous-layer map (in-sample)": "layer_map",
            "trace predictions": "predicted"}[family]
    vals = [getattr(x, attr) for x in r.layers if getattr(x, attr) is not None]
    if not vals or r.ceilings[family] is None:
        return ["-", "-"]
    lo, hi = int(np.argmin(vals)), int(np.argmax(vals))
    offset = 1 if attr == "layer_map" else 0
    return [f"{vals[lo]:.3f} (layer {lo + offset})", f"{vals[hi]:.3f} (layer {hi + offset})"]


def plot(r: AuditReport, out_dir: Path) -> list[Path]:
    """miss_ratio.png (pooled curves vs slots), reuse_distance.png (CDF), batch_union.png (when it applies)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise EmuError(f"plots need matplotlib (pip install moe-emu[plot]): {err}", key="--plots") from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EmuError(f"cannot create the directory ({err.strerror})", file=str(out_dir), key="--plots") from None
    written = []
    name = Path(r.source).name if r.source else "trace"
    slots = np.arange(1, r.n_experts + 1)
    total = max(int(r.curves["accesses"].sum()), 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("lru", "LRU"), ("opt", "OPT (Belady)"), ("hot", "static hot set")):
        ax.plot(slots, r.curves[key].sum(axis=0) / total, label=label)
    ax.set_xlabel("slots per layer")
    ax.set_ylabel("miss ratio")
    ax.set_title(f"{name}: per-layer caches, all layers pooled")
    ax.legend()
    written.append(out_dir / "miss_ratio.png")
    fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    if r.gaps.size:
        fig, ax = plt.subplots(figsize=(6, 4))
        g = np.sort(r.gaps)
        ax.step(g, np.arange(1, g.size + 1) / g.size, where="post")
        ax.set_xscale("log")
        ax.set_xlabel("reuse distance (passes)")
        ax.set_ylabel("share of reuses")
        ax.set_title(f"{name}: reuse distances")
        written.append(out_dir / "reuse_distance.png")
        fig.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    if r.batch:
        fig, ax = plt.subplots(figsize=(6, 4))
        b = [x.batch for x in r.batch]
        ax.plot(b, [x.union for x in r.batch], "o-", label="measured")
        ax.plot(b, [x.independent for x in r.batch], "s--", label="independent tokens")
        ax.plot(b, [x.uniform for x in r.batch], ":", label="uniform")
        ax.set_xlabel("sequences in the batch (B)")
        ax.set_ylabel("distinct experts per layer")
        ax.set_title(f"{name}: batch union")
        ax.legend()
        written.append(out_dir / "batch_union.png")
        fig.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return written
