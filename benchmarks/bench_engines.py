"""Speed of the fast (numba) and SimPy engines on synthetic OLMoE-1B-7B decode traces (and a DeepSeek-V3
shape); prints a table and the speed targets of issue 22.

Every measurement runs in a fresh process, so each peak RSS is its own and compilation is measured
apart: `compile` imports the engines and runs `warm_up()` with an empty numba cache (cold) and again
with the cache it left (cached). Runs report wall seconds and CPU seconds of the event loop alone
(the trace is generated and the policy states built before the clock starts); accesses/s uses wall.
On a shared machine compare CPU seconds too. The main run's process also times a bare numba LRU (hits
only, no timing) over the same keys, the reference the engine's speed is held against; the DeepSeek-V3
shape (58 MoE layers x 256 experts, top-8) row reports its wall time including trace generation.

    python benchmarks/bench_engines.py [--tokens 1000000] [--capacity 0.25] [--sim-tokens 20000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def _rss_mib() -> float:
    """This process's peak resident set (VmHWM): unlike getrusage's ru_maxrss, which a process keeps from the one
    that forked it across exec, it counts this program's memory alone, whoever launched it."""
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024.0  # kB


def _stack(eviction: str, prefetch: str) -> object:
    from emu.engines.setup import PolicyChoice, StackChoice
    from emu.policies.registry import REGISTRY

    def choice(kind: str, name: str) -> PolicyChoice:
        return PolicyChoice(name, REGISTRY[kind][name].resolve_params({}, f"policy.{kind}", None))

    return StackChoice(eviction=choice("eviction", eviction), prefetch=choice("prefetch", prefetch))


def _model(name: str) -> object:
    from emu.models import ModelSpec, get_preset

    if name == "deepseek-v3-shape":  # DeepSeek-V3's routed experts: 58 MoE layers of 256, top-8
        return ModelSpec(name=name, n_moe_layers=58, n_experts=256, top_k=8, hidden=7168, expert_intermediate=2048)
    return get_preset(name)


def _trace(model: object, tokens: int, batch: int = 1) -> object:
    """The benchmarks' synthetic decode trace: `tokens` tokens a request, `batch` requests in lockstep, seed 7."""
    from emu.trace.synthetic import SyntheticParams, generate

    return generate(model, SyntheticParams(prompt_len=0, output_len=1000, batch_size=batch, seed=7), tokens)


def _inputs_for(model: object, trace: object, capacity: float, eviction: str, prefetch: str) -> object:
    """A run of `trace` on profile h100-provisional, the cache `capacity` of the expert bytes, LRU or another
    eviction policy with a prefetch policy (the others at their defaults)."""
    import warnings

    from emu.engines.setup import make_inputs
    from emu.profile import load_profile

    warnings.filterwarnings("ignore", message=".*roofline.*")
    profile = load_profile(str(ROOT / "scenarios/profiles/h100-provisional.toml"))
    return make_inputs(model, profile, trace, int(capacity * model.total_expert_bytes), _stack(eviction, prefetch))


def _inputs(tokens: int, capacity: float, eviction: str, prefetch: str,
            model_name: str = "olmoe-1b-7b", batch: int = 1) -> tuple[object, float]:
    """`_inputs_for` on a fresh `_trace`; also returns the trace's generation seconds."""
    model = _model(model_name)
    t0 = time.perf_counter()
    trace = _trace(model, tokens, batch)
    gen_s = time.perf_counter() - t0
    return _inputs_for(model, trace, capacity, eviction, prefetch), gen_s


def _timed(run: object, inputs: object) -> dict:
    from emu.kernel.layout import ST

    c0 = time.process_time()
    cs, end, timings = run(inputs)
    cpu = time.process_time() - c0 - timings["setup_s"]
    accesses = int(cs.stats_i[ST.ACCESSES].sum())
    hits = int(cs.stats_i[ST.HITS].sum())
    return {"accesses": accesses, "wall_s": timings["run_s"], "cpu_s": cpu, "setup_s": timings["setup_s"],
            "acc_per_s": accesses / timings["run_s"], "hit_rate": hits / accesses, "end_s": end,
            "copies": int(cs.stats_i[ST.COPIES].sum()), "late_hits": int(cs.stats_i[ST.LATE_HITS].sum())}


def _bare_lru(inputs: object, capacity: float) -> dict:
    """A bare numba LRU over the run's keys (layer * n_experts + expert, token by token, layer by layer, slot by
    slot), `capacity` of the keys resident, counting hits: no timing, no prefetch. Minimum CPU seconds of 3."""
    from numba import njit

    @njit(cache=False)
    def lru_hits(experts: np.ndarray, n_exp: int, slots: int) -> int:
        n_tok, n_layers, k = experts.shape
        n_keys = n_layers * n_exp
        prev = np.full(n_keys + 1, -1, np.int64)  # a circular list closed by the sentinel n_keys
        nxt = np.full(n_keys + 1, -1, np.int64)
        s = n_keys
        prev[s] = s
        nxt[s] = s
        size = 0
        hits = 0
        for tok in range(n_tok):
            for layer in range(n_layers):
                for j in range(k):
                    key = layer * n_exp + np.int64(experts[tok, layer, j])
                    if prev[key] >= 0:
                        hits += 1
                        nxt[prev[key]] = nxt[key]
                        prev[nxt[key]] = prev[key]
                    elif size == slots:
                        old = nxt[s]
                        nxt[s] = nxt[old]
                        prev[nxt[old]] = s
                        prev[old] = -1
                    else:
                        size += 1
                    tail = prev[s]
                    prev[key] = tail
                    nxt[key] = s
                    nxt[tail] = key
                    prev[s] = key
        return hits

    experts = inputs.trace.experts
    n_exp = max(inputs.trace.n_experts, int(experts.max()) + 1)
    slots = max(1, int(capacity * experts.shape[1] * n_exp))
    lru_hits(experts[:1], n_exp, slots)  # compile
    best = float("inf")
    hits = 0
    for _ in range(3):
        c0 = time.process_time()
        hits = lru_hits(experts, n_exp, slots)
        best = min(best, time.process_time() - c0)
    accesses = experts.size
    return {"accesses": accesses, "cpu_s": best, "acc_per_s": accesses / best, "hit_rate": hits / accesses}


def worker(job: dict) -> dict:
    """One measurement, in this (fresh) process."""
    if job["kind"] == "compile":
        t0 = time.perf_counter()
        from emu.engines.des.engine import run_des
        from emu.engines.fast.engine import warm_up

        warm_up()
        return {"seconds": time.perf_counter() - t0, "rss_mib": _rss_mib()}
    from emu.engines.des.engine import run_des
    from emu.engines.fast.engine import run_fast, warm_up

    warm_up()
    inputs, gen_s = _inputs(job["tokens"], job["capacity"], job["eviction"], job["prefetch"],
                            job.get("model", "olmoe-1b-7b"))
    out = {"gen_s": gen_s, "fast": _timed(run_fast, inputs)}
    if job.get("bare_lru"):
        out["bare_lru"] = _bare_lru(inputs, job["capacity"])
    if job.get("des"):
        out["des"] = _timed(run_des, inputs)
    out["rss_mib"] = _rss_mib()
    return out


def _spawn(job: dict, cache_dir: str | None = None) -> dict:
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    proc = subprocess.run([sys.executable, __file__, "--job", json.dumps(job)], capture_output=True, text=True,
                          env=env, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"job {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(label: str, r: dict, rss: float | None = None) -> str:
    rss_s = f"{rss:8.0f}" if rss is not None else " " * 8
    return (f"| {label:<44} | {r['accesses']:>11,} | {r['wall_s']:8.2f} | {r['cpu_s']:8.2f} | "
            f"{r['acc_per_s'] / 1e6:8.2f} | {r['hit_rate']:6.3f} | {rss_s} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--capacity", type=float, default=0.25, help="cache as a fraction of all expert bytes")
    ap.add_argument("--sim-tokens", type=int, default=20_000, help="slice run on both engines")
    ap.add_argument("--quick", action="store_true", help="10x fewer tokens everywhere")
    args = ap.parse_args()
    if args.job:
        print(json.dumps(worker(json.loads(args.job))))
        return
    from emu.policies.registry import REGISTRY

    scale = 10 if args.quick else 1
    tokens, sim_tokens = args.tokens // scale, args.sim_tokens // scale
    cap = args.capacity
    prefetch = "next-layer" if "next-layer" in REGISTRY["prefetch"] else "none"
    print(f"# bench_engines: OLMoE-1B-7B (16 MoE layers x 64 experts, top-8), synthetic decode trace (batch 1, "
          f"seed 7), profile h100-provisional, cache {cap:.0%} of expert bytes, one process per row, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if prefetch == "none":
        print("# prefetch 'next-layer' is not registered: runs use prefetch 'none'")

    with tempfile.TemporaryDirectory() as cache:
        cold = _spawn({"kind": "compile"}, cache)
        warm = _spawn({"kind": "compile"}, cache)
    print(f"\ncompile: cold {cold['seconds']:.1f} s (empty numba cache: the fast core and the default stack's hooks), "
          f"cached {warm['seconds']:.1f} s (import + warm-up, loaded from the cache)\n")

    head = ("| run                                          |    accesses |   wall s |    cpu s | M acc/s "
            "|    hit | peak RSS MiB |")
    rule = "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"
    print(head)
    print(rule)
    lru: dict[int, dict] = {}
    for n in (tokens // 100, tokens // 10, tokens):
        r = _spawn({"kind": "run", "tokens": n, "capacity": cap, "eviction": "lru", "prefetch": prefetch,
                    "bare_lru": n == tokens})
        lru[n] = r
        print(_row(f"fast lru+{prefetch}, {n:,} tokens", r["fast"], r["rss_mib"]), flush=True)
    if prefetch != "none":  # the core and LRU alone, to tell them from the prefetch kernel's cost
        r = _spawn({"kind": "run", "tokens": tokens, "capacity": cap, "eviction": "lru", "prefetch": "none"})
        print(_row(f"fast lru+none, {tokens:,} tokens", r["fast"], r["rss_mib"]), flush=True)
    # Belady visits every resident key per victim: it runs on a tenth of the trace, against LRU there.
    for evict, n in (("least-stale", tokens), ("belady", tokens // 10)):
        if evict not in REGISTRY["eviction"]:
            print(f"| {evict} not registered |")
            continue
        r = _spawn({"kind": "run", "tokens": n, "capacity": cap, "eviction": evict, "prefetch": prefetch})
        print(_row(f"fast {evict}+{prefetch}, {n:,} tokens", r["fast"], r["rss_mib"]), flush=True)
        ratio = r["fast"]["wall_s"] / lru[n]["fast"]["wall_s"]
        cpu_ratio = r["fast"]["cpu_s"] / lru[n]["fast"]["cpu_s"]
        print(f"|   {evict} / lru time on {n:,} tokens: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU (target <= 1.5x) |")
    ds_tokens = 200_000 // scale
    ds = _spawn({"kind": "run", "tokens": ds_tokens, "capacity": cap, "eviction": "lru", "prefetch": prefetch,
                 "model": "deepseek-v3-shape"})
    print(_row(f"fast lru+{prefetch}, DeepSeek-V3 shape, {ds_tokens:,} tokens", ds["fast"], ds["rss_mib"]), flush=True)
    main_run = lru[tokens]
    bare = main_run["bare_lru"]
    bare_speed = bare["accesses"] / bare["cpu_s"] / 1e6
    print(f"| {'bare numba LRU (hits only), same keys, CPU s':<44} | {bare['accesses']:>11,} |          | "
          f"{bare['cpu_s']:8.2f} | {bare_speed:8.2f} | {bare['hit_rate']:6.3f} |          |")
    r = _spawn({"kind": "run", "tokens": sim_tokens, "capacity": cap, "eviction": "lru", "prefetch": prefetch,
                "des": True})
    print(_row(f"fast lru+{prefetch}, {sim_tokens:,} tokens (same process)", r["fast"]))
    print(_row(f"SimPy lru+{prefetch}, {sim_tokens:,} tokens (same process)", r["des"], r["rss_mib"]))
    same = r["fast"]["end_s"] == r["des"]["end_s"] and r["fast"]["hit_rate"] == r["des"]["hit_rate"]
    print(f"\nfast vs SimPy on the {sim_tokens:,}-token slice: {r['des']['wall_s'] / r['fast']['wall_s']:.0f}x "
          f"faster (wall), {r['des']['cpu_s'] / r['fast']['cpu_s']:.0f}x (CPU); same end time and hit rate: {same}")
    print(f"SimPy engine: {r['des']['acc_per_s']:,.0f} accesses/s on a {sim_tokens:,}-token OLMoE trace")
    if main_run:
        f = main_run["fast"]
        print(f"fast engine, {tokens:,} tokens: {f['acc_per_s'] / 1e6:.2f} M accesses/s wall "
              f"({f['accesses'] / f['cpu_s'] / 1e6:.2f} M per CPU second), {f['wall_s']:.1f} s, "
              f"trace generation {main_run['gen_s']:.1f} s, peak RSS {main_run['rss_mib']:.0f} MiB")
        speed = f["accesses"] / f["cpu_s"]
        ratio = speed / (bare["accesses"] / bare["cpu_s"])
        ds_total = ds["gen_s"] + ds["fast"]["wall_s"]
        print(f"\ntargets (issue 22), load average {os.getloadavg()[0]:.2f}:")
        print(f"- engine speed, lru+{prefetch} {tokens:,} tokens: {speed / 1e6:.2f} M accesses per CPU second "
              f"(target >= 30): {'met' if speed >= 30e6 else 'not met'}")
        print(f"- against the bare numba LRU on the same keys in the same process: {ratio:.2f}x (target >= 0.25x): "
              f"{'met' if ratio >= 0.25 else 'not met'}")
        print(f"- DeepSeek-V3 shape, {ds_tokens:,} tokens: {ds_total:.1f} s wall with trace generation "
              f"({ds['gen_s']:.1f} s + {ds['fast']['wall_s']:.1f} s; target <= 5 s at 200,000 tokens): "
              f"{'met' if ds_total <= 5.0 else 'not met'}" if ds_tokens == 200_000 else "n/a with --quick")


if __name__ == "__main__":
    main()
