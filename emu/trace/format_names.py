"""The routing-trace formats `emu trace import` reads, by name (docs/traces.md): `emu.trace.formats.FORMATS`
is this dict. Kept apart from the importers so that building the `emu` command line's parser, which lists
the names in `--format`'s help, imports no numpy."""

from __future__ import annotations

FORMATS: dict[str, str] = {
    "jsonl": "JSONL, one row per (request, token, MoE layer)",
    "route-trace": "BigMoeOnEdge route_trace v1 CSV",
    "onnx-genai": "onnx-genai expert-trace JSON",
    "vllm": "vLLM routed_experts arrays in an .npz (save_vllm_npz)",
    "sglang": "SGLang expert-distribution recorder dump, per_token mode (.pt)",
    "parquet": "Parquet, one row per (request, position, MoE layer)",
}
