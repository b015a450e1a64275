"""Import speed of a `route_trace v1` CSV: writes a synthetic file of about N rows (default 1M) in a temp dir
and times `emu.trace.formats.route_csv.import_route_trace` on it (best of --repeat runs), printing rows/s.

The synthetic file looks like the BigMoeOnEdge capture (scenarios/traces/public): Qwen3-30B-A3B shape
(48 layers x 128 experts, top-6), the header's per-layer bytes, several turns of a prefill followed by
decode steps, and llama.cpp's last layer routed for the prefill's last token only.

    python benchmarks/bench_trace_import.py [--rows 1000000] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

N_LAYER, N_EXPERT, TOP_K = 48, 128, 6
PROMPT, DECODE = 200, 672  # tokens per turn (4 turns: 999,768 rows)


def write_csv(path: Path, rows: int, seed: int = 0) -> int:
    """A route_trace v1 file of about `rows` rows; returns the exact row count."""
    rng = np.random.default_rng(seed)
    per_turn = (PROMPT * (N_LAYER - 1) + 1 + DECODE * N_LAYER) * TOP_K
    turns = max(1, round(rows / per_turn))
    parts: list[np.ndarray] = []
    for turn in range(turns):
        start = turn * (PROMPT + DECODE)  # absolute context position, as in a chat
        # prefill rows layer-major (as llama.cpp writes them); the last layer only for the last token
        steps = np.arange(start, start + PROMPT)
        pre_t, pre_l = np.meshgrid(steps, np.arange(N_LAYER - 1), indexing="xy")
        pre = np.stack([pre_t.ravel(), pre_l.ravel()], axis=1)
        pre = np.vstack([pre, [[start + PROMPT - 1, N_LAYER - 1]]])
        dec_t, dec_l = np.meshgrid(np.arange(start + PROMPT, start + PROMPT + DECODE), np.arange(N_LAYER),
                                   indexing="ij")
        dec = np.stack([dec_t.ravel(), dec_l.ravel()], axis=1)
        for phase, cells in ((0, pre), (1, dec)):
            n = cells.shape[0]
            gumbel = rng.gumbel(size=(n, N_EXPERT)).astype(np.float32)
            top = np.argpartition(-gumbel, TOP_K, axis=1)[:, :TOP_K]
            w = np.take_along_axis(gumbel, top, axis=1)
            order = np.argsort(-w, axis=1)
            top, w = np.take_along_axis(top, order, axis=1), np.take_along_axis(w, order, axis=1)
            w = np.exp(w - w[:, :1])
            w /= w.sum(axis=1, keepdims=True)
            block = np.empty((n * TOP_K, 9), dtype=np.float64)
            block[:, 0] = turn
            block[:, 1] = phase
            block[:, 2] = np.repeat(cells[:, 0], TOP_K)
            block[:, 3] = np.repeat(cells[:, 1], TOP_K)
            block[:, 4] = np.tile(np.arange(TOP_K), n)
            block[:, 5] = top.ravel()
            block[:, 6] = w.ravel()
            block[:, 7] = rng.random(n * TOP_K) < 0.6
            block[:, 8] = np.where(block[:, 7] > 0, 0, 3059712)
            parts.append(block)
    data = np.vstack(parts)
    with open(path, "w") as fh:
        fh.write("# route_trace v1\n")
        fh.write(f"# model=synthetic.gguf arch=qwen3moe n_layer={N_LAYER} n_expert={N_EXPERT} "
                 f"n_expert_used={TOP_K}\n")
        for layer in range(N_LAYER):
            fh.write(f"# layer={layer} expert_bytes=3059712 dense_bytes=11953152\n")
        fh.write("turn,phase,step,layer,slot,expert,weight,residency,expert_bytes\n")
        np.savetxt(fh, data, fmt=["%d", "%d", "%d", "%d", "%d", "%d", "%.6g", "%d", "%d"], delimiter=",")
    return int(data.shape[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="about this many rows (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="timed imports, best reported (default %(default)s)")
    parser.add_argument("--keep", type=Path, default=None, help="write the CSV here and keep it")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    from emu.trace.formats.route_csv import import_route_trace

    with tempfile.TemporaryDirectory() as tmp:
        path = (args.keep or Path(tmp)) / "synthetic.route.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        rows = write_csv(path, args.rows)
        write_s = time.perf_counter() - t0
        times: list[float] = []
        cpu: list[float] = []
        trace = None
        for _ in range(max(1, args.repeat)):
            c0, t0 = time.process_time(), time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trace = import_route_trace(path)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        assert trace is not None
        best = min(times)
        result = {"rows": rows, "file_mib": path.stat().st_size / 2**20, "tokens": trace.n_tokens,
                  "passes": trace.n_passes, "requests": trace.n_requests, "write_s": write_s,
                  "import_s": times, "cpu_s": cpu, "best_s": best, "rows_per_s": rows / best,
                  "cores": os.cpu_count()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{rows:,} rows ({result['file_mib']:.1f} MiB, {trace.n_tokens:,} tokens, {trace.n_passes:,} passes, "
              f"{trace.n_requests} requests) written in {write_s:.1f} s")
        print(f"import: best {best:.3f} s of {', '.join(f'{t:.3f}' for t in times)} s "
              f"(CPU {min(cpu):.3f} s) -> {rows / best:,.0f} rows/s on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
