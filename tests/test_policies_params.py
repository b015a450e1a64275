"""Policy names and parameters are checked at the edge, with errors that name the key."""

from __future__ import annotations

import math

import pytest

from emu.errors import EmuError
from emu.policies.api import KINDS
from emu.policies.registry import REGISTRY, get_policy

ALL = [(kind, name) for kind in KINDS for name in REGISTRY[kind]]


def test_every_issue_policy_is_registered():
    assert set(REGISTRY["eviction"]) == {"lru", "lfu", "fld", "score", "lhu", "least-stale", "random", "belady", "arc",
                                         "s3-fifo"}
    assert set(REGISTRY["prefetch"]) == {"none", "oracle", "next-layer", "topk", "score-percentile", "lookahead",
                                         "frequency", "multi-look", "adaptive"}
    assert set(REGISTRY["miss"]) == {"fetch", "fetch-lowest-bit", "fetch-priority", "fetch-cascade", "drop",
                                     "drop-priority-cascade", "substitute", "cpu"}
    assert set(REGISTRY["routing"]) == {"standard", "cache-aware"}
    assert set(REGISTRY["partition"]) == {"global", "fair-bytes", "count-floor", "adaptive"}


def test_unknown_policy_names_the_key_and_the_choices():
    with pytest.raises(EmuError, match=r"unknown eviction policy 'mru'.*'belady'") as err:
        get_policy("eviction", "mru", file="s.toml")
    assert (err.value.file, err.value.key) == ("s.toml", "policy.eviction")
    with pytest.raises(EmuError) as err:
        get_policy("prefetch", "psychic")
    assert err.value.key == "policy.prefetch"


@pytest.mark.parametrize(("kind", "name"), ALL)
def test_defaults_are_valid_and_resolve(kind, name):
    pol = get_policy(kind, name)
    assert pol.kind == kind and pol.name == name and pol.doc
    resolved = pol.resolve_params({}, f"policy.{kind}", None)
    assert set(resolved) == set(pol.params)
    for key, spec in pol.params.items():
        assert spec.lo <= spec.default <= spec.hi, key
        assert not spec.integer or float(spec.default).is_integer(), key
        assert resolved[key] == spec.default
        assert spec.doc


@pytest.mark.parametrize(("kind", "name"), ALL)
def test_unknown_parameter_is_rejected(kind, name):
    pol = get_policy(kind, name)
    with pytest.raises(EmuError, match="unknown parameter") as err:
        pol.resolve_params({"bogus": 1}, f"policy.{kind}", "s.toml")
    assert err.value.key == f"policy.{kind}.bogus" and err.value.file == "s.toml"


@pytest.mark.parametrize(("kind", "name", "key", "value", "message"), [
    ("eviction", "score", "decay", 1.5, r"expected a value in \[0.0, 1.0\]"),
    ("eviction", "fld", "absolute", 2, r"expected a value in \[0, 1\]"),
    ("eviction", "fld", "absolute", 0.5, "expected an integer"),
    ("eviction", "least-stale", "order", 2, r"expected a value in \[0, 1\]"),
    ("prefetch", "oracle", "window", 0, r"expected a value in \[1, 1024\]"),
    ("prefetch", "oracle", "window", 2.5, "expected an integer"),
    ("prefetch", "score-percentile", "percentile", 101, r"\[0.0, 100.0\]"),
    ("prefetch", "topk", "overfetch", "2", "expected a number"),
    ("prefetch", "next-layer", "accuracy_first", True, "expected a number"),
    ("prefetch", "adaptive", "eta", math.nan, "expected a number"),
    ("prefetch", "adaptive", "study", 2, r"expected a value in \[0, 1\]"),
    ("prefetch", "frequency", "study", 2, r"expected a value in \[0, 1\]"),
    ("prefetch", "frequency", "study", 0.5, "expected an integer"),
    ("prefetch", "multi-look", "study", -1, r"expected a value in \[0, 1\]"),
    ("miss", "drop", "rank", 0, r"\[1, 4096\]"),
    ("miss", "fetch-priority", "bits", 1, r"\[2, 8\]"),
    ("miss", "fetch-cascade", "lowest_bits", 16, r"\[2, 8\]"),
    ("miss", "fetch-cascade", "percentile", -1, r"\[0.0, 100.0\]"),
    ("miss", "fetch-cascade", "bits", 4.5, "expected an integer"),
    ("miss", "drop-priority-cascade", "rank", 0, r"\[1, 4096\]"),
    ("miss", "drop-priority-cascade", "lowest_percentile", "30", "expected a number"),
    ("prefetch", "score-percentile", "mass", 2, r"expected a value in \[0, 1\]"),
    ("prefetch", "score-percentile", "mass", 0.5, "expected an integer"),
    ("miss", "substitute", "tolerance", -0.1, r"\[0.0, 1.0\]"),
    ("routing", "cache-aware", "strength", -1, r"\[0.0, 100.0\]"),
    ("partition", "adaptive", "window", 0, r"\[1, 1000000000.0\]"),
])
def test_out_of_range_values_are_rejected(kind, name, key, value, message):
    with pytest.raises(EmuError, match=message) as err:
        get_policy(kind, name).resolve_params({key: value}, f"policy.{kind}", "s.toml")
    assert err.value.key == f"policy.{kind}.{key}"


def test_valid_values_pass_through():
    pol = get_policy("prefetch", "topk")
    assert pol.resolve_params({"overfetch": 2}, "policy.prefetch", None) == {"overfetch": 2.0, "accuracy": 0.85}
