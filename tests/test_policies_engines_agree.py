"""Both engines run every registered policy with the same semantics: identical metrics, to the bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from emu.errors import EmuWarning
from emu.policies.api import KINDS
from emu.policies.registry import REGISTRY

from .conftest import tiny_model
from .policy_support import cpu_profile, run, trace_of

ALL = [(kind, name) for kind in KINDS for name in REGISTRY[kind]]


def random_trace(seed: int):
    """3 layers x 6 experts, top-2, a 4-token prefill then 1-2 token decode passes; scores and predictions."""
    rng = np.random.default_rng(seed)
    popular = np.array([.3, .2, .15, .15, .1, .1])
    passes, scores, predicted = [], [], []
    for p in range(14):
        n_tok = 4 if p == 0 else int(rng.integers(1, 3))
        toks, sc, pr = [], [], []
        for _ in range(n_tok):
            toks.append([[int(e) for e in rng.choice(6, 2, replace=False, p=popular)] for _ in range(3)])
            w = float(rng.uniform(.5, .9))
            sc.append([[w, 1 - w]] * 3)
            pr.append([[int(e) for e in rng.choice(6, 2, replace=False)] for _ in range(3)])
        passes.append(toks)
        scores.append(sc)
        predicted.append(pr)
    return trace_of(passes, scores=scores, predicted=predicted, n_experts=6)


@pytest.mark.parametrize(("kind", "name"), ALL)
@pytest.mark.parametrize("slots", [4, 9])
def test_fast_and_des_agree(kind, name, slots):
    tr = random_trace(slots)
    kw = {kind: name}
    if kind == "eviction":
        kw["prefetch"] = "next-layer"  # prefetch stresses victims with in-flight keys
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmuWarning)
        fast, _ = run(tr, slots, model=tiny_model(3, 6, 2), profile=cpu_profile(), **kw)
        des, _ = run(tr, slots, model=tiny_model(3, 6, 2), profile=cpu_profile(), engine="des", **kw)
    for key in fast:
        if key not in ("engine", "timings"):
            assert fast[key] == des[key], key
    assert fast["accesses"] > 0


@pytest.mark.parametrize("name", ["frequency", "multi-look", "adaptive"])
@pytest.mark.parametrize("slots", [4, 9])
def test_fast_and_des_agree_on_the_studys_definitions(name, slots):
    # study=1 (the study's strategies as written) on 230 passes: frequency's first set comes at pass 99,
    # multi-look's temporal positions at pass 57 and later
    rng = np.random.default_rng(slots)
    popular = np.array([.3, .2, .15, .15, .1, .1])
    passes = [[[[int(e) for e in rng.choice(6, 2, replace=False, p=popular)] for _ in range(3)]
               for _ in range(4 if p == 0 else int(rng.integers(1, 3)))] for p in range(230)]
    tr = trace_of(passes, n_experts=6)
    fast, _ = run(tr, slots, model=tiny_model(3, 6, 2), prefetch=(name, {"study": 1}))
    des, _ = run(tr, slots, model=tiny_model(3, 6, 2), prefetch=(name, {"study": 1}), engine="des")
    for key in fast:
        if key not in ("engine", "timings"):
            assert fast[key] == des[key], key
    assert fast["prefetch_issued"] > 0
