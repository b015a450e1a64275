"""Synthetic generator: determinism, distinct top-k, each routing knob doing what it says, pass structure."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from emu.errors import EmuError
from emu.models import ModelSpec, get_preset
from emu.trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace
from emu.trace.inspect import summarize
from emu.trace.synthetic import SyntheticParams, _schedule, generate, half_bits, popularity

OLMOE = get_preset("olmoe-1b-7b")
TOP1 = ModelSpec(name="top1", n_moe_layers=6, n_experts=16, top_k=1, hidden=8, expert_intermediate=8)
SMALL = ModelSpec(name="small", n_moe_layers=4, n_experts=8, top_k=3, hidden=8, expert_intermediate=8)


def arrays(trace: RoutingTrace) -> list[np.ndarray | None]:
    return [trace.experts, trace.pass_offsets, trace.pass_phase, trace.token_request, trace.token_position,
            trace.scores, trace.predicted]


def same(a: RoutingTrace, b: RoutingTrace) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
               for x, y in zip(arrays(a), arrays(b), strict=True))


FULL = SyntheticParams(zipf_s=1.2, reuse_prob=0.4, cross_layer_corr=0.4, prompt_len=5, output_len=7,
                       length_jitter=0.5, batch_size=3, with_scores=True, predictor_accuracy=0.8, seed=3)


def test_same_seed_same_trace_different_seed_different():
    a = generate(OLMOE, FULL, n_tokens=3000)
    b = generate(OLMOE, FULL, n_tokens=3000)
    c = generate(OLMOE, SyntheticParams(**{**FULL.to_dict(), "seed": 4}), n_tokens=3000)
    assert same(a, b) and a.fingerprint() == b.fingerprint()
    assert not np.array_equal(a.experts, c.experts)
    assert not np.array_equal(a.scores, c.scores) and not np.array_equal(a.predicted, c.predicted)


def test_thread_count_does_not_change_the_trace():
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = generate(OLMOE, FULL, n_tokens=2000)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = generate(OLMOE, FULL, n_tokens=2000)
    finally:
        numba.set_num_threads(before)
    assert same(one, many)


def test_dtypes_shape_validity_and_exact_token_count():
    trace = generate(OLMOE, FULL, n_tokens=2345)
    trace.validate()
    assert trace.experts.shape == (2345, 16, 8) and trace.experts.dtype == np.uint8  # 64 experts: one byte an id
    assert trace.scores.dtype == np.float16 and trace.predicted.dtype == np.uint8
    assert trace.n_experts == 64 and trace.model == "olmoe-1b-7b"
    assert trace.experts.min() >= 0 and trace.experts.max() < 64


@pytest.mark.parametrize("params", [
    SyntheticParams(zipf_s=3.0, reuse_prob=0.5, cross_layer_corr=0.5, batch_size=4, prompt_len=6,
                    output_len=9),
    SyntheticParams(zipf_s=0.0, reuse_prob=0.9, cross_layer_corr=0.9, batch_size=2, prompt_len=0,
                    output_len=9),
])
@pytest.mark.parametrize("model", [OLMOE, SMALL])
def test_top_k_experts_are_distinct(model, params):
    trace = generate(model, params, n_tokens=3000)
    srt = np.sort(trace.experts, axis=2)
    assert (np.diff(srt, axis=2) != 0).all()


def test_all_experts_used_when_top_k_equals_n_experts():
    full = ModelSpec(name="full", n_moe_layers=2, n_experts=4, top_k=4, hidden=8, expert_intermediate=8)
    trace = generate(full, SyntheticParams(zipf_s=2.0, reuse_prob=0.5, cross_layer_corr=0.5,
                                           predictor_accuracy=0.5), n_tokens=200)
    assert (np.sort(trace.experts, axis=2) == np.arange(4)).all()
    assert (np.sort(trace.predicted, axis=2) == np.arange(4)).all()  # no other expert to guess


def test_zipf_skew_raises_the_top_expert_share():
    shares = []
    for s in (0.0, 0.6, 1.2, 2.0):
        trace = generate(OLMOE, SyntheticParams(zipf_s=s, reuse_prob=0.0, cross_layer_corr=0.0, seed=1),
                         n_tokens=4000)
        shares.append(float(np.mean(summarize(trace).top_expert_share)))
    assert shares == sorted(shares) and shares[-1] > 2 * shares[0]
    assert abs(shares[0] - 1 / 64) < 0.01  # uniform: every expert ~1/64 of the selections


def test_per_layer_zipf_and_top1_marginals_follow_zipf_even_with_cross_layer_mapping():
    s = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
    params = SyntheticParams(zipf_s=s, reuse_prob=0.0, cross_layer_corr=0.0, seed=2)
    trace = generate(TOP1, params, n_tokens=40_000)
    probs, _ = popularity(TOP1, params)
    freq = trace.expert_counts() / trace.n_tokens
    assert np.abs(freq - probs).max() < 0.015
    # the cross-layer map sends rank i to rank i, so the popularity stays Zipf when layers share one s
    params = SyntheticParams(zipf_s=1.0, reuse_prob=0.0, cross_layer_corr=0.8, seed=2)
    trace = generate(TOP1, params, n_tokens=40_000)
    probs, _ = popularity(TOP1, params)
    assert np.abs(trace.expert_counts() / trace.n_tokens - probs).max() < 0.015


def test_reuse_prob_one_gives_reuse_rate_one_and_zero_gives_chance():
    trace = generate(OLMOE, SyntheticParams(reuse_prob=1.0, batch_size=4, prompt_len=8, output_len=20),
                     n_tokens=3000)
    assert summarize(trace).reuse_rate == (1.0,) * 16
    trace = generate(OLMOE, SyntheticParams(zipf_s=0.0, reuse_prob=0.0, cross_layer_corr=0.0, batch_size=4),
                     n_tokens=5000)
    rates = summarize(trace).reuse_rate
    assert all(abs(r - 8 / 64) < 0.02 for r in rates)  # two random 8-sets of 64 share 1/8 of their members


def test_cross_layer_corr_one_follows_the_fixed_rank_map():
    params = SyntheticParams(reuse_prob=0.0, cross_layer_corr=1.0, seed=5)
    trace = generate(SMALL, params, n_tokens=500)
    _, by_rank = popularity(SMALL, params)
    rank_of = np.argsort(by_rank, axis=1)
    for layer in range(1, SMALL.n_moe_layers):
        mapped = by_rank[layer][rank_of[layer - 1][trace.experts[:, layer - 1, :]]]
        assert np.array_equal(trace.experts[:, layer, :], mapped)
    assert not np.array_equal(trace.experts[:, 0], trace.experts[:, 1])


def test_scores_descending_normalised_and_independent_of_experts():
    params = SyntheticParams(with_scores=True, batch_size=2, seed=9)
    trace = generate(OLMOE, params, n_tokens=70_000)  # crosses the 65,536-token scratch block
    sc = trace.scores.astype(np.float32)
    assert (np.diff(sc, axis=2) <= 0).all()
    assert np.abs(sc.sum(axis=2) - 1).max() < 5e-3
    plain = generate(OLMOE, SyntheticParams(with_scores=False, batch_size=2, seed=9), n_tokens=70_000)
    assert plain.scores is None and np.array_equal(plain.experts, trace.experts)
    sharper = generate(OLMOE, SyntheticParams(with_scores=True, score_scale=2.0, seed=9), n_tokens=2000)
    assert sharper.scores[:, :, 0].astype(float).mean() > trace.scores[:2000, :, 0].astype(float).mean() + 0.1


@numba.njit
def _halves(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.size, np.uint16)
    for i in range(x.size):
        out[i] = half_bits(x[i])
    return out


def test_float16_bits_match_numpy_rounding():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random(50_000), 10.0 ** -rng.uniform(4, 9, 20_000),  # normals and subnormals
                        [0.0, 1.0, 2.0**-14, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 1 - 2.0**-12, 1 - 2.0**-11]])
    # exact ties between two halves (odd and even fractions), and one double's ulp either side of each
    odd = 2 * rng.integers(0, 1024, 20_000) + 1
    ties = (2048 + odd) * 2.0 ** -rng.integers(12, 26, odd.size).astype(float)
    ties = ties[ties <= 1.0]
    x = np.concatenate([x, ties, np.nextafter(ties, 0.0), np.nextafter(ties, 2.0)])
    assert np.array_equal(_halves(x), x.astype(np.float16).view(np.uint16))


def test_predictions_overlap_the_truth_at_the_given_accuracy():
    for acc in (1.0, 0.0, 0.7):
        trace = generate(OLMOE, SyntheticParams(predictor_accuracy=acc, seed=1), n_tokens=3000)
        precision = summarize(trace).predictor_precision
        assert abs(precision - acc) < 0.01
        assert (np.diff(np.sort(trace.predicted, axis=2), axis=2) != 0).all()
    exact = generate(OLMOE, SyntheticParams(predictor_accuracy=1.0, seed=1), n_tokens=300)
    assert np.array_equal(exact.predicted, exact.experts)


def test_pass_structure_fixed_lengths_by_hand():
    # 3 requests, prompt 2, output 3, batch 2:
    #   P(r0: pos 0,1)  P(r1: 0,1)  D(r0:2, r1:2)  D(r0:3, r1:3)  D(r0:4, r1:4)   r0, r1 finish
    #   P(r2: 0,1)  D(r2:2)  D(r2:3)  D(r2:4)
    trace = generate(SMALL, SyntheticParams(n_requests=3, prompt_len=2, output_len=3, batch_size=2))
    assert trace.pass_offsets.tolist() == [0, 2, 4, 6, 8, 10, 12, 13, 14, 15]
    P, D = PHASE_PREFILL, PHASE_DECODE
    assert trace.pass_phase.tolist() == [P, P, D, D, D, P, D, D, D]
    assert trace.token_request.tolist() == [0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2, 2, 2]
    assert trace.token_position.tolist() == [0, 1, 0, 1, 2, 2, 3, 3, 4, 4, 0, 1, 2, 3, 4]
    summary = summarize(trace)
    assert (summary.prefill_passes, summary.decode_passes, summary.requests) == (3, 6, 3)


def test_continuous_batching_replaces_a_finished_request_at_once():
    # outputs 1, 3, 1 with batch 2: P0 P1 D(r0,r1) | r0 done -> P2 D(r1,r2) | r2 done -> D(r1)
    req, pos, _nxt, first, offsets, phase = _schedule(np.array([1, 1, 1]), np.array([1, 3, 1]), 2, 8)
    assert offsets.tolist() == [0, 1, 2, 4, 5, 7, 8]
    assert phase.tolist() == [0, 0, 1, 0, 1, 1]
    assert req.tolist() == [0, 1, 0, 1, 2, 1, 2, 1]
    assert pos.tolist() == [0, 0, 1, 1, 0, 2, 1, 3]
    assert first.tolist() == [0, 1, 4]


def test_decode_only_trace_and_batch_of_one():
    trace = generate(SMALL, SyntheticParams(n_requests=2, prompt_len=0, output_len=4, batch_size=1))
    assert (trace.pass_phase == PHASE_DECODE).all() and trace.n_passes == 8
    assert trace.token_request.tolist() == [0] * 4 + [1] * 4


def test_n_tokens_cuts_the_last_pass():
    trace = generate(SMALL, SyntheticParams(prompt_len=10, output_len=5, batch_size=2), n_tokens=25)
    # P(r0:10) P(r1:10) D(2) D(2) D(1: cut)
    assert trace.n_tokens == 25 and trace.pass_offsets.tolist() == [0, 10, 20, 22, 24, 25]


def test_save_load_round_trip_keeps_generator_params(tmp_path):
    trace = generate(OLMOE, FULL, n_tokens=1500)
    trace.save(tmp_path / "s.npz")
    back = RoutingTrace.load(tmp_path / "s.npz")
    assert same(trace, back) and back.fingerprint() == trace.fingerprint()
    assert SyntheticParams.from_dict(back.meta["generator"]) == FULL


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"reuse_prob": 1.5}, "reuse_prob"), ({"cross_layer_corr": -0.1}, "cross_layer_corr"),
    ({"zipf_s": -1.0}, "zipf_s"), ({"zipf_s": [1.0, float("nan")]}, "zipf_s"),
    ({"batch_size": 0}, "batch_size"), ({"prompt_len": -1}, "prompt_len"),
    ({"n_requests": 2.5}, "n_requests"), ({"length_jitter": 1.0}, "length_jitter"),
    ({"predictor_accuracy": 2}, "predictor_accuracy"), ({"prompt_len": 0, "output_len": 0}, "output_len"),
    ({"with_scores": 1}, "with_scores"), ({"score_scale": 0}, "score_scale"), ({"seed": 2**64}, "seed"),
])
def test_bad_params_name_the_key(kwargs, key):
    with pytest.raises(EmuError) as info:
        SyntheticParams(**kwargs)
    assert info.value.key == key


def test_params_from_dict_and_per_layer_zipf_length():
    with pytest.raises(EmuError) as info:
        SyntheticParams.from_dict({"reuse": 0.3}, file="s.toml", prefix="workload.synthetic.")
    assert info.value.key == "workload.synthetic.reuse" and info.value.file == "s.toml"
    with pytest.raises(EmuError) as info:
        SyntheticParams.from_dict({"batch_size": -1}, file="s.toml", prefix="workload.synthetic.")
    assert info.value.key == "workload.synthetic.batch_size"
    with pytest.raises(EmuError, match="expected 1 or 16 values"):
        generate(OLMOE, SyntheticParams(zipf_s=[1.0, 2.0]), n_tokens=10)
    with pytest.raises(EmuError) as info:
        generate(OLMOE, SyntheticParams(), n_tokens=0)
    assert info.value.key == "tokens"


def test_n_tokens_keeps_the_decode_batch_full():
    # a token budget is a stream of requests: the batch never runs dry before the budget is spent
    trace = generate(SMALL, SyntheticParams(prompt_len=3, output_len=20, batch_size=4, n_requests=1),
                     n_tokens=1000)
    sizes = np.diff(trace.pass_offsets)[trace.pass_phase == PHASE_DECODE]
    assert (sizes[:-1] == 4).all() and trace.n_tokens == 1000


# --- the routing kernel against a plain reference of the definition (module docstring) ------------------
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class _Stream:
    """splitmix64 counter stream `index` of kind `stream` for `seed`, in Python integers."""

    def __init__(self, seed: int, stream: int, index: int) -> None:
        self.state = _mix((_mix((seed * _GOLDEN + stream) & _MASK) + index * _GOLDEN) & _MASK)

    def next(self) -> int:
        self.state = (self.state + _GOLDEN) & _MASK
        return _mix(self.state)


def _alias(p: list[float]) -> tuple[list[float], list[int]]:
    """Walker's alias tables, built as the generator's docstring order prescribes (small and large stacks)."""
    n = len(p)
    scaled = [v * n for v in p]
    prob, alias = [1.0] * n, list(range(n))
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias


def reference_experts(model: ModelSpec, params: SyntheticParams, token_request: np.ndarray) -> tuple[np.ndarray, int]:
    """The routing definition slot by slot with Python integers and floats: (experts, how many slots needed the
    exact scan after 32 rejected draws)."""
    probs_arr, by_rank = popularity(model, params)
    probs = probs_arr.tolist()
    n_layers, n_exp, top_k = model.n_moe_layers, model.n_experts, model.top_k
    tables = [_alias(probs[layer]) for layer in range(n_layers)]
    rank = [{int(e): i for i, e in enumerate(by_rank[layer])} for layer in range(n_layers)]
    out = np.full((token_request.size, n_layers, top_k), -1, np.int64)
    exact = 0

    def zipf(st: _Stream, layer: int) -> int:
        x = st.next()
        col = ((x >> 32) * n_exp) >> 32
        prob, alias = tables[layer]
        return col if (x & 0xFFFFFFFF) * 2.0**-32 < prob[col] else alias[col]

    for r in sorted(set(token_request.tolist())):
        st = _Stream(params.seed, 1, r)
        prev = None
        for t in np.flatnonzero(token_request == r).tolist():
            for layer in range(n_layers):
                for k in range(top_k):
                    x = st.next()
                    chosen = out[t, layer, :k].tolist()
                    if prev is not None and (x >> 32) * 2.0**-32 < params.reuse_prob:
                        e = int(out[prev, layer, k])
                    elif layer > 0 and (x & 0xFFFFFFFF) * 2.0**-32 < params.cross_layer_corr:
                        e = int(by_rank[layer][rank[layer - 1][int(out[t, layer - 1, k])]])
                    else:
                        e = zipf(st, layer)
                    if e in chosen:
                        for _ in range(32):
                            e = zipf(st, layer)
                            if e not in chosen:
                                break
                        else:
                            exact += 1
                            rest = 0.0
                            for c in range(n_exp):
                                if c not in chosen:
                                    rest += probs[layer][c]
                            u = (st.next() >> 11) * 2.0**-53 * rest
                            for c in range(n_exp):
                                if c not in chosen:
                                    e = c
                                    u -= probs[layer][c]
                                    if u < 0.0:
                                        break
                    out[t, layer, k] = e
            prev = t
    return out, exact


SKEWED = ModelSpec(name="skewed", n_moe_layers=3, n_experts=8, top_k=6, hidden=8, expert_intermediate=8)


@pytest.mark.parametrize(("model", "kwargs", "tokens"), [
    (SMALL, {"seed": 0}, 300),
    (SMALL, {"seed": 12345, "reuse_prob": 0.7, "cross_layer_corr": 0.9, "batch_size": 4, "length_jitter": 0.5,
             "prompt_len": 6, "output_len": 9}, 400),
    (TOP1, {"seed": 2**62 + 3, "reuse_prob": 1.0, "zipf_s": 0.0, "prompt_len": 0, "output_len": 50}, 200),
    (SKEWED, {"seed": 7, "zipf_s": 9.0, "reuse_prob": 0.2, "cross_layer_corr": 0.5, "batch_size": 2}, 250),
    (ModelSpec(name="wide", n_moe_layers=2, n_experts=300, top_k=5, hidden=8, expert_intermediate=8),
     {"seed": 5, "zipf_s": (0.3, 1.7), "cross_layer_corr": 1.0, "batch_size": 3}, 150),
])
def test_routing_matches_the_reference_definition(model, kwargs, tokens):
    params = SyntheticParams(**kwargs)
    trace = generate(model, params, n_tokens=tokens)
    want, _exact = reference_experts(model, params, trace.token_request)
    np.testing.assert_array_equal(trace.experts, want)


def test_the_reference_comparison_reaches_the_exact_scan():
    # the skewed case above must take the exact-scan branch, or that branch would go untested
    params = SyntheticParams(seed=7, zipf_s=9.0, reuse_prob=0.2, cross_layer_corr=0.5, batch_size=2)
    trace = generate(SKEWED, params, n_tokens=250)
    _want, exact = reference_experts(SKEWED, params, trace.token_request)
    assert exact > 0


def test_blocks_for_the_progress_display_give_the_same_trace(monkeypatch, capsys):
    import emu.trace.synthetic as synthetic

    whole = generate(OLMOE, FULL, n_tokens=3000)
    monkeypatch.setattr(synthetic, "PROGRESS_ENTRIES", 0)
    monkeypatch.setattr(synthetic.numba, "get_num_threads", lambda: 1)  # blocks of >= 4 requests: several blocks
    shown = generate(OLMOE, FULL, n_tokens=3000, progress=True)
    assert same(whole, shown) and whole.meta == shown.meta
    err = capsys.readouterr().err
    assert "trace: " in err and "blocks (routing)" in err and "(gate scores)" in err and "(predictions)" in err
    quiet = generate(OLMOE, FULL, n_tokens=3000)  # progress off by default
    assert same(whole, quiet) and capsys.readouterr().err == ""


def test_integer_thresholds_decide_as_the_float_comparison():
    from emu.trace.synthetic import _threshold

    rng = np.random.default_rng(3)
    p = np.concatenate([rng.random(2000), [0.0, -0.0, 1.0, 0.5, 0.3, 2.0**-32, 2.0**-33, 1 - 2.0**-53, 5e-324,
                                           -1e-17]])
    thr = _threshold(p)
    for pi, t in zip(p.tolist(), thr.tolist(), strict=True):
        # the 32-bit values either side of the threshold, and the ends of the range
        for v in {0, 1, max(t - 1, 0), min(t, 2**32 - 1), 2**32 - 1}:
            assert (v < t) == (v * 2.0**-32 < pi), (pi, v, t)
