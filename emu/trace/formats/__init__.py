"""Routing-trace importers, one module per format, and format detection (docs/traces.md).

| name | module | reads |
| --- | --- | --- |
| `jsonl` | `emu.trace.jsonl` | our JSONL and the shared Mixtral captures |
| `route-trace` | `route_csv` | BigMoeOnEdge `route_trace v1` CSV |
| `onnx-genai` | `onnx_genai` | justinchuby/onnx-genai expert-trace JSON |
| `vllm` | `vllm` | vLLM `CompletionOutput.routed_experts`, saved with `save_vllm_npz` |
| `sglang` | `sglang` | SGLang expert-distribution recorder, `per_token` mode `.pt` dump |
| `parquet` | `parquet` | one row per token and MoE layer |

Every importer but JSONL (kept exactly as it was) ends in `emu.trace.checks.finish_import`, which runs the
shared sanity checks; `import_trace(path, model, fmt=None)` detects the format from the content first and
the extension second.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

from ...errors import EmuError
from ...models import ModelSpec
from ..format_names import FORMATS
from ..routing_trace import RoutingTrace
from . import onnx_genai, parquet, route_csv, sglang, vllm

Importer = Callable[..., RoutingTrace]

_ALIASES = {"route_trace": "route-trace", "csv": "route-trace", "onnx_genai": "onnx-genai", "json": "onnx-genai",
            "pt": "sglang"}
_EXTENSIONS = {".jsonl": "jsonl", ".csv": "route-trace", ".json": "onnx-genai", ".npz": "vllm", ".pt": "sglang",
               ".pth": "sglang", ".parquet": "parquet", ".pq": "parquet"}


def normalize_format(fmt: str) -> str:
    key = fmt.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise EmuError(f"unknown trace format {fmt!r}; expected one of {sorted(FORMATS)}", key="--format")
    return key


def detect_format(path: str | Path) -> str:
    """The format of `path`: from its first bytes (and, for zip archives, their member names), else from
    its extension, else JSONL when the file is text (what `emu trace import` read before it knew other
    formats); an `EmuError` asking for `--format` when none of these tells."""
    path = Path(path)
    if not path.is_file():
        raise EmuError("trace file not found", file=str(path))
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if parquet.sniff(head):
        return "parquet"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if vllm.sniff_zip_names(names):
            return "vllm"
        if sglang.sniff_zip_names(names):
            return "sglang"
        if {"header.npy", "experts.npy"} <= set(names):
            raise EmuError("this is already a moe-emu trace (.npz); nothing to import", file=str(path))
    if route_csv.sniff(head):
        return "route-trace"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"{"):
        first_line = text.split(b"\n", 1)[0]
        if b'"experts"' in first_line and b'"layer"' in first_line:
            return "jsonl"
        if onnx_genai.sniff(head):
            return "onnx-genai"
    ext = path.suffix.lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    try:
        head[:-4].decode("utf-8")  # a multi-byte character may be cut at the end of the block
    except UnicodeDecodeError:
        raise EmuError(f"cannot tell the trace format from the content or the extension; pass --format "
                       f"({', '.join(FORMATS)})", file=str(path), key="--format") from None
    return "jsonl"


def import_trace(path: str | Path, model: ModelSpec | None = None, *, fmt: str | None = None,
                 allow_degenerate: bool = False, strict: bool = False) -> RoutingTrace:
    """Import any supported format (detected when `fmt` is None). `strict` is JSONL's (missing layers);
    `allow_degenerate` turns the degenerate-capture error of the other formats into a warning."""
    name = normalize_format(fmt) if fmt else detect_format(path)
    if name == "jsonl":
        from ..jsonl import import_jsonl

        return import_jsonl(path, model, strict=strict)
    if strict:
        raise EmuError(f"--strict applies to JSONL input only, not {name}", key="--strict")
    importer: Importer = {
        "route-trace": route_csv.import_route_trace,
        "onnx-genai": onnx_genai.import_onnx_genai,
        "vllm": vllm.import_vllm,
        "sglang": sglang.import_sglang,
        "parquet": parquet.import_parquet,
    }[name]
    return importer(path, model, allow_degenerate=allow_degenerate)


__all__ = ["FORMATS", "detect_format", "import_trace", "normalize_format"]
