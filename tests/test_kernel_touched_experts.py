"""A layer's routing (`gather_layer`) and the fused speculator pick (`predict_push`) do work proportional to the
experts they touch, through a bit mask (a 64-bit local up to 64 experts, `cs.mask`'s words above). At every
width they must give what the plain definitions give: the distinct experts in id order with token counts and
mass summed in token order; the picks of `predicted_layer_mass` then `push_top` from the same RNG state. And
they must leave their scratch (`cs.mask`, the mass buffer) all zero, since the next gate relies on it."""

from __future__ import annotations

import numpy as np
import pytest

from emu.engines.setup import trace_view
from emu.kernel.helpers import gather_layer, predict_push, predicted_layer_mass, push_top
from emu.kernel.layout import RESIDENT, new_cache_state
from emu.trace import RoutingTrace

N_LAYERS = 3
TOP_K = 4


def _trace(n_exp: int, tokens_per_pass: int, n_passes: int, seed: int) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    n_tok = tokens_per_pass * n_passes
    experts = np.empty((n_tok, N_LAYERS, TOP_K), np.int16)
    for tok in range(n_tok):
        for layer in range(N_LAYERS):
            # a few hot experts so that tokens of a pass share some, and ids across the whole width
            hot = rng.integers(0, n_exp, 3)
            pool = np.unique(np.concatenate([hot, rng.integers(0, n_exp, 2 * TOP_K)]))
            experts[tok, layer] = rng.permutation(pool)[:TOP_K]
    scores = rng.random((n_tok, N_LAYERS, TOP_K)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = 0.0  # zero-mass routes are touched but never candidates
    return RoutingTrace(experts=experts, scores=scores,
                        pass_offsets=np.arange(0, n_tok + 1, tokens_per_pass, dtype=np.int64),
                        pass_phase=np.ones(n_passes, np.int8), token_request=np.zeros(n_tok, np.int32),
                        token_position=np.arange(n_tok, dtype=np.int32), n_experts=n_exp).validate()


def _state(n_exp: int, n_passes: int) -> object:
    return new_cache_state(N_LAYERS, n_exp, TOP_K, n_passes, 10**9, np.array([1], np.int64), 1)


@pytest.mark.parametrize("n_exp", [8, 64, 65, 200, 256])
def test_gather_layer_matches_the_definition_at_every_width(n_exp: int) -> None:
    trace = _trace(n_exp, tokens_per_pass=5, n_passes=4, seed=n_exp)
    tv = trace_view(trace)
    cs = _state(n_exp, trace.n_passes)
    for p in range(trace.n_passes):
        for layer in range(N_LAYERS):
            n = gather_layer(cs, tv, p, layer)
            rows = range(trace.pass_offsets[p], trace.pass_offsets[p + 1])
            ids = sorted({int(e) for tok in rows for e in trace.experts[tok, layer]})
            count = dict.fromkeys(ids, 0)
            mass = dict.fromkeys(ids, 0.0)
            for tok in rows:
                for s in range(TOP_K):
                    e = int(trace.experts[tok, layer, s])
                    count[e] += 1
                    mass[e] += float(trace.scores[tok, layer, s])
            assert n == len(ids)
            assert cs.cur_key[:n].tolist() == [layer * n_exp + e for e in ids]
            assert cs.cur_tokens[:n].tolist() == [count[e] for e in ids]
            assert cs.cur_mass[:n].tolist() == [mass[e] for e in ids]  # same order of additions: equal
            assert not cs.mask.any() and not cs.gather_count.any() and not cs.gather_mass.any()


@pytest.mark.parametrize("n_exp", [8, 64, 65, 200, 256])
def test_predict_push_matches_mass_then_push_top_at_every_width(n_exp: int) -> None:
    trace = _trace(n_exp, tokens_per_pass=6, n_passes=5, seed=100 + n_exp)
    tv = trace_view(trace)
    fused, plain = _state(n_exp, trace.n_passes), _state(n_exp, trace.n_passes)
    rng_fused = np.array([7, 12345], np.int64)
    rng_plain = rng_fused.copy()
    out_fused = np.zeros(n_exp)
    out_plain = np.zeros(n_exp)
    status_rng = np.random.default_rng(n_exp)
    for p in range(trace.n_passes):
        for layer in range(N_LAYERS):
            # some experts resident: a pick of one uses its place but is not written
            status = np.where(status_rng.random(N_LAYERS * n_exp) < 0.3, RESIDENT, 0).astype(np.int8)
            fused.status[:] = status
            plain.status[:] = status
            n_f = predict_push(fused, tv, p, layer, 0.6, rng_fused, 1, out_fused, 0)
            predicted_layer_mass(tv, p, layer, 0.6, rng_plain, 1, out_plain)
            n_p = push_top(plain, out_plain, layer, n_exp, 0, 0.0)
            assert n_f == n_p
            assert fused.pf_buf[:n_f].tolist() == plain.pf_buf[:n_p].tolist()
            assert rng_fused.tolist() == rng_plain.tolist()  # the same draws
            assert not out_fused.any() and not fused.mask.any()  # scratch left all zero for the next gate
