"""Print a profile's key figures as Markdown tables (for docs/calibration.md and closing notes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

TOKENS = (1, 8, 64, 512)


def _us(s: float) -> str:
    return f"{s * 1e6:,.1f} us"


def _gbps(bps: float) -> str:
    return f"{bps / 1e9:.1f} GB/s"


def _at(table: dict[str, Any], tokens: int) -> str:
    if tokens in table["tokens"]:
        return _us(table["seconds"][table["tokens"].index(tokens)])
    return "-"


def summary_markdown(profile: dict[str, Any]) -> str:
    c, k, prov = profile["copy"], profile["compute"], profile.get("provenance", {})
    fits = prov.get("copy_fits", {})
    lines = ["| copy | bandwidth (fit) | latency (fit) |", "| --- | --- | --- |"]
    for kind in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"):
        if kind in fits:
            lines.append(f"| {kind} | {_gbps(fits[kind]['bw_Bps'])} | {_us(fits[kind]['latency_s'])} |")
    conc = prov.get("concurrency", {})
    lines += ["", f"h2d_engines = {c['h2d_engines']}, h2d_d2h_overlap = {c.get('h2d_d2h_overlap', '-')}"]
    if conc.get("h2d_effective_engines") is not None:
        lines.append(f"two H2D streams: {_gbps(conc['h2d_two_streams_aggregate_Bps'])} together vs "
                     f"{_gbps(conc['h2d_one_stream_Bps'])} one stream "
                     f"(x{conc['h2d_effective_engines']:.2f}); H2D+D2H overlap ratio "
                     f"{conc['h2d_d2h_overlap_ratio']:.2f} (2 = full overlap)")
        for name, kern in conc.get("kernels", {}).items():
            lines.append(f"{name}: kernel x{kern['kernel_slowdown']:.3f} beside H2D copies; "
                         f"H2D x{kern['h2d_slowdown']:.3f} slower beside the kernel")
    lines += ["", "| compute | value |", "| --- | --- |"]
    for key, val in k.items():
        lines.append(f"| {key} | {_us(val) if key.endswith('_s') and 'per_s' not in key else f'{val:.4g}'} |")
    lines += ["", "| model | expert 1 | 8 | 64 | 512 tok | dense 1 tok, first ctx | 1 tok, last ctx | "
              "512 tok, first ctx | pass ovh | layer ovh | CPU expert 1 tok |", "| --- " * 11 + "|"]
    for name, m in profile.get("models", {}).items():
        e = m["expert"]["bf16"]
        d = m["dense"]
        c0, c1 = d["context"][0], d["context"][-1]
        d1 = _us(d["seconds"][d["tokens"].index(1)][0]) + f" @{c0}" if 1 in d["tokens"] else "-"
        d1c = _us(d["seconds"][d["tokens"].index(1)][-1]) + f" @{c1}" if 1 in d["tokens"] else "-"
        d512 = _us(d["seconds"][d["tokens"].index(512)][0]) + f" @{c0}" if 512 in d["tokens"] else "-"
        cpu = _at(m["cpu_expert"]["bf16"], 1) if "cpu_expert" in m else "-"
        lines.append(f"| {name} | " + " | ".join(_at(e, t) for t in TOKENS)
                     + f" | {d1} | {d1c} | {d512} | {_us(m['pass_overhead_s'])} | "
                     f"{_us(m['layer_overhead_s'])} | {cpu} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m calibrate.summary PROFILE.toml", file=sys.stderr)
        return 2
    print(summary_markdown(tomllib.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
