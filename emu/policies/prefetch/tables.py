"""Online routing tables the learned prefetchers share (updated from what each gate has revealed).

Layout inside a policy's `f` table, with E experts, L layers and key = layer * E + expert: each table is
n_keys rows from a first row the policy passes (t0, s0, c0; -1: not kept); a policy that keeps all three
stacks them in the order of `T`, table t from row `t * n_keys`:
- transition rows `[t0 + key]`: counts of (e at layer l) -> (f at layer l+1) for the same token;
- sequence rows `[s0 + key]`: counts of (g at layer l in the previous pass) -> (f at layer l now);
- co-occurrence rows `[c0 + key]`: counts of e and f chosen together by one token at layer l.
`last_pass[key]` (a row of the policy's `i`) is the last pass that used the key. Everything is counted per
token.
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...kernel.helpers import expert_id
from ...kernel.layout import Fields


class T(Fields):
    """The tables, in the order a policy keeping all of them stacks them: table t at rows t * n_keys + key."""

    TRANSITION = auto()
    SEQUENCE = auto()
    COOCCURRENCE = auto()


N_TABLES = len(T)


@njit(cache=True, _nrt=False)
def update_tables(f, last_pass, tv, p: int, layer: int, t0: int, s0: int, c0: int) -> None:
    n_exp = tv.dims[2]
    k = tv.experts.shape[2]
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(k):
            a = expert_id(tv, tok, layer, s)
            if layer > 0 and t0 >= 0:
                for r in range(k):
                    b = expert_id(tv, tok, layer - 1, r)
                    f[t0 + (layer - 1) * n_exp + b, a] += 1.0
            if c0 >= 0:
                for r in range(k):
                    if r != s:
                        f[c0 + layer * n_exp + a, expert_id(tv, tok, layer, r)] += 1.0
    if s0 >= 0 and p > 0:
        for g in range(n_exp):
            if last_pass[layer * n_exp + g] == p - 1:
                for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
                    for s in range(k):
                        f[s0 + layer * n_exp + g, expert_id(tv, tok, layer, s)] += 1.0
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(k):
            last_pass[layer * n_exp + expert_id(tv, tok, layer, s)] = p


@njit(cache=True, _nrt=False)
def add_row_mix(f, row: int, weight: float, out) -> None:
    """out += weight * normalised row."""
    total = 0.0
    for e in range(out.shape[0]):
        total += f[row, e]
    if total > 0.0:
        for e in range(out.shape[0]):
            out[e] += weight * f[row, e] / total
