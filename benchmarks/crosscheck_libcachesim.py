"""Cross-check of the plain key-stream miss counts (emu/trace/keystream.py) against libCacheSim.

libCacheSim's Python package `libcachesim` is GPL: it is never a dependency of moe-emu. Install it apart and
point this script at it (only this script's process puts it on the path):

    pip install --target /tmp/lcs libcachesim
    python benchmarks/crosscheck_libcachesim.py [--lcs /tmp/lcs]

For every real trace in the repo, two key streams (docs/traces.md, `emu trace audit`): the shared stream (one
cache for all layers, keys layer * E + expert) and the per-layer streams (one cache per layer, misses summed
over layers), at the audit's default capacities (slots per layer; the shared cache gets slots x layers).
Ours: LRU and Belady (OPT) from the stack distances the audit uses, LFU simulated with in-cache counts and
with counts kept across evictions (the emulator's `lfu`). Theirs: `LRU`, `LFU`, `Belady`, every object of
size 1 in a cache of that many bytes, requests fed one by one with `next_access_vtime` = the index of the
key's next access (INT64_MAX when none), as Belady needs. Prints one table per stream with the miss counts
and whether they agree.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emu.trace.audit import default_slots  # noqa: E402
from emu.trace.cli import load_any  # noqa: E402
from emu.trace.keystream import (  # noqa: E402
    global_stream,
    layer_stream,
    lfu_misses,
    lru_distances,
    miss_curve,
    n_experts_of,
    next_use,
    opt_distances,
)

TRACES = (
    "scenarios/traces/mixtral8x7b_gsm8k.npz",
    "scenarios/traces/mixtral8x7b_humaneval.npz",
    "scenarios/traces/public/qwen3-30b-a3b_k6_bigmoeonedge.route.csv",
    "scenarios/traces/public/granite-3.0-1b-a400m_onnx-genai.json",
)
INT64_MAX = np.iinfo(np.int64).max


def theirs(lcs: object, name: str, keys: np.ndarray, n_keys: int, slots: int) -> int:
    """Misses of libcachesim's `name` cache of `slots` unit-size objects on `keys`."""
    cache = getattr(lcs, name)(cache_size=slots, hashpower=max(10, int(np.log2(max(n_keys, 2))) + 2))
    nxt = next_use(keys, n_keys)
    req = lcs.Request()
    req.obj_size = 1
    misses = 0
    for i in range(keys.shape[0]):
        req.obj_id = int(keys[i])
        req.clock_time = i
        req.next_access_vtime = int(nxt[i]) if nxt[i] != INT64_MAX else INT64_MAX
        if not cache.get(req):
            misses += 1
    return misses


def ours(keys: np.ndarray, n_keys: int, slots: int) -> dict[str, int]:
    return {"LRU": int(miss_curve(lru_distances(keys, n_keys), n_keys)[slots - 1]),
            "Belady": int(miss_curve(opt_distances(keys, n_keys), n_keys)[slots - 1]),
            "LFU": lfu_misses(keys, n_keys, slots, False),
            "LFU kept": lfu_misses(keys, n_keys, slots, True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lcs", default="/tmp/lcs", help="the --target folder libcachesim was installed into")
    args = parser.parse_args(argv)
    sys.path.append(args.lcs)  # after the venv's own packages: theirs never shadow ours
    try:
        import libcachesim as lcs
    except ImportError as err:
        print(f"libcachesim is not importable from {args.lcs} ({err}); install it with "
              f"`pip install --target {args.lcs} libcachesim`", file=sys.stderr)
        return 1
    from importlib.metadata import version

    try:
        lcs_version = version("libcachesim")
    except Exception:  # a --target install has no metadata on sys.path's default finders
        lcs_version = getattr(lcs, "__version__", "?")
    print(f"libcachesim {lcs_version} from {Path(lcs.__file__).parent}; numpy {np.__version__}")
    print("misses (of accesses); ours | libcachesim; '=' when equal")
    disagreements = 0
    t0 = time.perf_counter()
    for rel in TRACES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trace = load_any(ROOT / rel)
        n_exp = n_experts_of(trace)
        n_layers = trace.n_layers
        streams = [("shared", [global_stream(trace)], n_layers * n_exp, n_layers),
                   ("per layer", [layer_stream(trace, layer)[0] for layer in range(n_layers)], n_exp, 1)]
        for label, keys_list, n_keys, mult in streams:
            accesses = sum(k.shape[0] for k in keys_list)
            print(f"\n{Path(rel).name}: {label} stream, {accesses:,} accesses, {n_keys} keys per cache")
            head = (f"{'slots':>7}  {'LRU ours':>9} {'lcs':>7}    {'Belady ours':>11} {'lcs':>7}    "
                    f"{'LFU ours':>9} {'lcs':>7}    {'LFU kept':>9}")
            print(head)
            print("-" * len(head))
            for c in default_slots(n_exp, trace.top_k):
                slots = c * mult
                o = {"LRU": 0, "Belady": 0, "LFU": 0, "LFU kept": 0}
                t = {"LRU": 0, "Belady": 0, "LFU": 0}
                for keys in keys_list:
                    for k, v in ours(keys, n_keys, slots).items():
                        o[k] += v
                    for k in t:
                        t[k] += theirs(lcs, k, keys, n_keys, slots)
                marks = {k: "=" if o[k] == t[k] else "!" for k in t}
                disagreements += sum(m == "!" for m in marks.values())
                print(f"{slots:>7}  {o['LRU']:>9} {t['LRU']:>7} {marks['LRU']}  {o['Belady']:>11} {t['Belady']:>7} "
                      f"{marks['Belady']}  {o['LFU']:>9} {t['LFU']:>7} {marks['LFU']}  {o['LFU kept']:>9}")
    print(f"\n{disagreements} disagreements; {time.perf_counter() - t0:.1f} s")
    return 0 if disagreements == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
