"""Per-layer expert selection counts (L×E) from the files people already have.

Two sources need no routing trace: the L×E counts JSON (documented in docs/concentration.md) and a
llama.cpp importance-matrix GGUF, whose MoE tensors carry one selection count per expert. Both readers
validate everything and raise EmuError naming the file and the key, so a bad file never turns into a
silently wrong number further down.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ..errors import EmuError
from ..textio import loads, not_utf8

#: the largest count accepted: far above any tally of tokens, and small enough that a row of up to 10**6 such
#: counts sums to a finite float64 with exact-enough shares
_MAX_COUNT = 1e200


@attrs.frozen(eq=False)
class CountsTable:
    """How often each expert of each MoE layer was selected, with what is known of where it came from."""

    source: str
    counts: np.ndarray  # float64 [n_layers, n_experts], non-negative, each row with positive sum
    layers: tuple[int, ...]
    top_k: int | None = None
    model: str | None = None
    workload: str | None = None

    @property
    def n_experts(self) -> int:
        return int(self.counts.shape[1])


def counts_table(
    counts: Any,
    layers: Any = None,
    top_k: int | None = None,
    *,
    source: str = "<counts array>",
    model: str | None = None,
    workload: str | None = None,
) -> CountsTable:
    """Validate an L×E array of counts (from any source) into a CountsTable.

    `layers` defaults to 0..L-1. With `top_k`, checks the one invariant top-k routing guarantees:
    a token picks k distinct experts, so no expert can be picked more often than there were tokens
    (sum of the row / top_k); a violation means top_k or the counts are wrong.
    """
    try:
        arr = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EmuError(f"expected a numeric L×E array of counts ({exc})", file=source, key="counts") from None
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise EmuError(f"expected a 2-D array [n_layers, n_experts], got shape {arr.shape}",
                       file=source, key="counts")
    n_layers, n_experts = arr.shape
    if n_experts < 2:
        raise EmuError(f"expected at least 2 experts per layer, got {n_experts}", file=source, key="counts")
    bad = np.argwhere(~np.isfinite(arr) | (arr < 0))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise EmuError(f"expected a finite count >= 0, got {arr[i, j]!r}",
                       file=source, key=f"counts[{i}][{j}]")
    big = np.argwhere(arr > _MAX_COUNT)
    if big.size:  # counts this large are no tally of tokens, and their sums overflow to inf
        i, j = (int(v) for v in big[0])
        raise EmuError(f"expected a count <= {_MAX_COUNT:.0e}, got {arr[i, j]:g}",
                       file=source, key=f"counts[{i}][{j}]")
    sums = arr.sum(axis=1)
    empty = np.flatnonzero(sums <= 0)
    if empty.size:
        i = int(empty[0])
        raise EmuError("layer has no routing mass (all counts are 0)", file=source, key=f"counts[{i}]")

    layer_ids = tuple(range(n_layers)) if layers is None else _validate_layers(layers, n_layers, source)

    if top_k is not None:
        if not _is_int(top_k) or not 1 <= top_k <= n_experts:
            raise EmuError(f"expected an integer in [1, n_experts={n_experts}], got {top_k!r}",
                           file=source, key="top_k")
        tokens = sums / top_k
        over = np.flatnonzero(arr.max(axis=1) > tokens * (1 + 1e-9))
        if over.size:
            i = int(over[0])
            raise EmuError(
                f"layer {layer_ids[i]}: expert {int(arr[i].argmax())} was picked {arr[i].max():g} times but "
                f"there were only {tokens[i]:g} tokens (row sum / top_k); with top-k routing a token picks "
                "k distinct experts, so top_k or the counts are wrong",
                file=source, key="top_k")
    return CountsTable(source=source, counts=arr, layers=layer_ids, top_k=top_k, model=model,
                       workload=workload)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate_layers(layers: Any, n_layers: int, source: str) -> tuple[int, ...]:
    if not isinstance(layers, (list, tuple, np.ndarray)):
        raise EmuError(f"expected a list of layer indices, got {type(layers).__name__}",
                       file=source, key="layers")
    if len(layers) != n_layers:
        raise EmuError(f"expected {n_layers} layer indices (one per counts row), got {len(layers)}",
                       file=source, key="layers")
    for i, layer in enumerate(layers):
        if not _is_int(layer) or layer < 0:
            raise EmuError(f"expected a non-negative integer layer index, got {layer!r}",
                           file=source, key=f"layers[{i}]")
    ids = tuple(int(v) for v in layers)
    if len(set(ids)) != len(ids):
        raise EmuError(f"layer indices must be distinct, got {list(ids)}", file=source, key="layers")
    return ids


def load_counts_json(path: str | Path) -> CountsTable:
    """Read the L×E counts JSON {"model", "n_experts", "top_k", "layers", "counts"} (+ "workload")."""
    source = str(path)
    what = "the L×E counts JSON (docs/concentration.md)"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path, what, name=source) from None
    except OSError as exc:
        raise EmuError(f"cannot read the counts file ({exc.strerror or exc})", file=source) from None
    doc = loads(text, source, what)
    if not isinstance(doc, dict):
        raise EmuError(f"expected a JSON object at the top level, got {type(doc).__name__}", file=source)

    for key in ("n_experts", "layers", "counts"):
        if key not in doc:
            raise EmuError("missing required key", file=source, key=key)
    n_experts = doc["n_experts"]
    if not _is_int(n_experts) or n_experts < 2:
        raise EmuError(f"expected an integer >= 2, got {n_experts!r}", file=source, key="n_experts")
    model = _optional_str(doc, "model", source)
    workload = _optional_str(doc, "workload", source)
    top_k = doc.get("top_k")
    if top_k is not None and (not _is_int(top_k) or not 1 <= top_k <= n_experts):
        raise EmuError(f"expected an integer in [1, n_experts={n_experts}] or null, got {top_k!r}",
                       file=source, key="top_k")

    rows = doc["counts"]
    if not isinstance(rows, list) or not rows:
        raise EmuError("expected a non-empty list of per-layer count lists", file=source, key="counts")
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise EmuError(f"expected a list of {n_experts} counts, got {type(row).__name__}",
                           file=source, key=f"counts[{i}]")
        if len(row) != n_experts:
            raise EmuError(f"expected {n_experts} counts (n_experts), got {len(row)}",
                           file=source, key=f"counts[{i}]")
        for j, value in enumerate(row):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and isinstance(value, int) and value > _MAX_COUNT:  # float() of it overflows or rounds
                raise EmuError(f"expected a count <= {_MAX_COUNT:.0e}, got an integer of {_digits(value)} digits",
                               file=source, key=f"counts[{i}][{j}]")
            if not ok or not math.isfinite(value) or value < 0:
                raise EmuError(f"expected a finite count >= 0, got {value!r}", file=source,
                               key=f"counts[{i}][{j}]")
    return counts_table(rows, doc["layers"], top_k, source=source, model=model, workload=workload)


def _digits(value: int) -> str:
    """How many decimal digits, without str() (refused past 4300 digits)."""
    return f"about {int(value.bit_length() * math.log10(2)) + 1:,}"


def _optional_str(doc: dict[str, Any], key: str, source: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise EmuError(f"expected a string, got {type(value).__name__}", file=source, key=key)
    return value


# llama.cpp's imatrix writes, per weight tensor W it saw in a matmul, "W.in_sum2" (F32, ne=[n_cols, n_mat]),
# "W.counts" (F32, ne=[1, n_mat]) and, since 2025, "W.in_sum". For the merged expert tensors of a MoE layer
# (blk.N.ffn_{gate,up,down,gate_up}_exps.weight, used through MUL_MAT_ID) n_mat is the number of experts and
# counts[e] is how many (token, expert) selections routed to expert e. All expert tensors of one layer see
# the same selections, so their counts agree.
_EXPERT_COUNTS = re.compile(r"^blk\.(\d+)\.(\w+_exps)\.weight\.counts$")
#: the GGUF tensor types that hold counts as numbers (llama.cpp writes F32)
_COUNT_TYPES = {"F32", "F16", "F64", "I8", "I16", "I32", "I64"}
#: the most MoE layers an imatrix may hold
_MAX_LAYERS = 4096


def load_imatrix_counts(path: str | Path) -> CountsTable:
    """Read the per-expert selection counts of each MoE layer from a llama.cpp imatrix GGUF."""
    source = str(path)
    try:
        import gguf
    except ImportError:
        raise EmuError("reading an imatrix GGUF needs the optional 'gguf' package; install the 'imatrix' extra: "
                       "pip install 'moe-emu[imatrix]'", file=source) from None
    if not Path(path).is_file():
        raise EmuError("no such file", file=source)
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # the reader raises ValueError, struct errors, OSError... on a non-GGUF file
        raise EmuError(f"not a readable GGUF file ({type(exc).__name__}: {exc})", file=source) from None

    type_field = reader.fields.get("general.type")
    if type_field is not None:
        file_type = _field_str(type_field)
        if file_type != "imatrix":
            raise EmuError(f"expected an importance matrix (general.type 'imatrix'), got {file_type!r}",
                           file=source, key="general.type")

    per_layer: dict[int, list[tuple[str, np.ndarray]]] = {}
    for tensor in reader.tensors:
        match = _EXPERT_COUNTS.match(tensor.name)
        if match is None:
            continue
        kind = getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
        if kind not in _COUNT_TYPES:  # a quantized tensor's data are its blocks' bytes, not counts
            raise EmuError(f"expected counts stored as {'/'.join(sorted(_COUNT_TYPES))}, got tensor type {kind}",
                           file=source, key=tensor.name)
        raw = np.asarray(tensor.data)
        if raw.ndim > 2 or (raw.ndim == 2 and raw.shape[1] != 1):
            raise EmuError(f"expected one count per expert (a tensor of [1, n_experts] in GGUF's order), got "
                           f"{list(reversed(raw.shape))}", file=source, key=tensor.name)
        if len(per_layer) >= _MAX_LAYERS and int(match.group(1)) not in per_layer:
            raise EmuError(f"more than {_MAX_LAYERS} MoE layers", file=source, key=tensor.name)
        data = raw.astype(np.float64).reshape(-1)
        per_layer.setdefault(int(match.group(1)), []).append((tensor.name, data))
    if not per_layer:
        raise EmuError("no per-expert counts found: expected tensors named blk.N.ffn_*_exps.weight.counts "
                       "(is this an imatrix of a MoE model?)", file=source)

    layers = sorted(per_layer)
    rows = []
    for layer in layers:
        name, ref = min(per_layer[layer], key=lambda item: item[0])
        if ref.size < 2:
            raise EmuError(f"expected one count per expert, got {ref.size} (an imatrix converted from the "
                           "legacy .dat format keeps no per-expert counts)", file=source, key=name)
        for other_name, other in per_layer[layer]:
            if other.shape != ref.shape or not np.array_equal(other, ref):
                raise EmuError(f"per-expert counts disagree with {name} of the same layer; the expert "
                               "tensors of one layer must see the same routing", file=source, key=other_name)
        rows.append(ref)
    sizes = {row.size for row in rows}
    if len(sizes) != 1:
        raise EmuError(f"MoE layers have different expert counts {sorted(sizes)}", file=source)
    model = _optional_field(reader, "general.name")
    return counts_table(np.stack(rows), layers, None, source=source, model=model)


def _field_str(field: Any) -> str:
    value = field.contents()
    return value if isinstance(value, str) else repr(value)


def _optional_field(reader: Any, key: str) -> str | None:
    field = reader.fields.get(key)
    return None if field is None else _field_str(field)
