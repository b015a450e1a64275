"""Parquet routing traces (one row per token and MoE layer) -> RoutingTrace, and RoutingTrace -> Parquet.

Columns (our format, docs/traces.md):

| column | type | required |
| --- | --- | --- |
| `request` | integer or string | yes |
| `position` | integer >= 0: the token's position in its request | yes |
| `phase` | string `"prefill"` / `"decode"`, or integer 0 / 1 | yes |
| `layer` | integer >= 0: MoE layer index | yes |
| `experts` | list of K integers | yes |
| `scores` | list of K floats, same order as `experts` | optional |
| `predicted` | list of K integers: a speculator's guess | optional |
| `pass` | integer >= 0: pass index | optional |

Passes follow the JSONL rules: with `pass`, ascending pass id; without, requests one after another in
ascending request id (string ids in sorted order), the prompt as one prefill pass and each decode token as
one decode pass. Read with pyarrow (an optional dependency, imported only here). `write_parquet` writes a
RoutingTrace in this form, with `pass`, so a trace round-trips exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EmuError
from ...models import ModelSpec
from ..checks import finish_import
from ..routing_trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace
from ._longform import assemble, require_complete

REQUIRED = ("request", "position", "phase", "layer", "experts")
OPTIONAL = ("scores", "predicted", "pass")
_MAX_LAYERS = 4096
_I32 = 2**31 - 1


def sniff(head: bytes) -> bool:
    return head.startswith(b"PAR1")


def _pyarrow(file: str) -> tuple[Any, Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise EmuError("reading Parquet needs pyarrow (pip install pyarrow, or moe-emu's sweep extra: "
                       "pip install 'moe-emu[sweep]')",
                       file=file, key="--format parquet") from None
    return pa, pc, pq


def _first_null(col: Any) -> int:
    return int(np.flatnonzero(np.asarray(col.is_null()))[0])


def import_parquet(path: str | Path, model: ModelSpec | None = None, *, allow_degenerate: bool = False) -> RoutingTrace:
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise EmuError("trace file not found", file=name)
    pa, pc, pq = _pyarrow(name)
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
        raise EmuError(f"not a readable Parquet file ({err.__class__.__name__}: {str(err)[:120]})",
                       file=name) from None
    absent = [c for c in REQUIRED if c not in table.column_names]
    if absent:
        raise EmuError(f"missing columns {absent}; expected {list(REQUIRED)} and optionally {list(OPTIONAL)}",
                       file=name, key="columns")
    n = table.num_rows
    if n == 0:
        raise EmuError("no rows", file=name)

    def where(i: int) -> str:
        return f"{name}:row {i}"

    def ints(col_name: str, lo: int, hi: int) -> np.ndarray:
        col = table.column(col_name).combine_chunks()
        if col.null_count:
            raise EmuError("null value; expected an integer", file=where(_first_null(col)), key=col_name)
        if not pa.types.is_integer(col.type):
            raise EmuError(f"expected an integer column, got {col.type}", file=name, key=col_name)
        arr = col.to_numpy().astype(np.int64)
        bad = (arr < lo) | (arr > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EmuError(f"{int(arr[i])} out of range: expected {lo}..{hi}", file=where(i), key=col_name)
        return arr

    def lists(col_name: str, want_float: bool, k: int | None) -> np.ndarray:
        col = table.column(col_name).combine_chunks()
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
                or pa.types.is_fixed_size_list(col.type)):
            raise EmuError(f"expected a list column, got {col.type}", file=name, key=col_name)
        if col.null_count:
            raise EmuError("null list", file=where(_first_null(col)), key=col_name)
        value_type = col.type.value_type
        ok = pa.types.is_floating(value_type) or pa.types.is_integer(value_type) if want_float \
            else pa.types.is_integer(value_type)
        if not ok:
            raise EmuError(f"expected a list of {'numbers' if want_float else 'integers'}, got {col.type}",
                           file=name, key=col_name)
        lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        k = int(lens[0]) if k is None else k
        bad = lens != k
        if k < 1 or bad.any():
            i = int(np.flatnonzero(bad)[0]) if bad.any() else 0
            why = "" if col_name == "experts" else " (as experts)"
            raise EmuError(f"expected a list of {max(k, 1)} values{why}, got {int(lens[i])}", file=where(i),
                           key=col_name)
        flat = pc.list_flatten(col)
        if flat.null_count:
            i = int(np.searchsorted(np.cumsum(lens), _first_null(flat), side="right"))
            raise EmuError("null entry in the list", file=where(i), key=col_name)
        values = flat.to_numpy(zero_copy_only=False)
        return values.astype(np.float64 if want_float else np.int64).reshape(n, k)

    # request ids: ints as they are, strings -> 0..n-1 in sorted order (originals in meta)
    req_col = table.column("request").combine_chunks()
    meta: dict[str, Any] = {"source": "parquet", "file": path.name}
    if req_col.null_count:
        raise EmuError("null request id", file=where(_first_null(req_col)), key="request")
    if pa.types.is_integer(req_col.type):
        request = ints("request", -_I32, _I32)
        names = None
    elif pa.types.is_string(req_col.type) or pa.types.is_large_string(req_col.type):
        ids, request = np.unique(np.asarray(req_col.to_pylist(), dtype=object).astype(str), return_inverse=True)
        names = ids.tolist()
        meta["request_ids"] = names
        request = request.astype(np.int64)
    else:
        raise EmuError(f"expected integer or string request ids, got {req_col.type}", file=name, key="request")
    position = ints("position", 0, _I32)
    max_layer = (model.n_moe_layers - 1) if model is not None else _MAX_LAYERS - 1
    layer = ints("layer", 0, max_layer)
    n_layers = model.n_moe_layers if model is not None else int(layer.max()) + 1
    ph_col = table.column("phase").combine_chunks()
    if ph_col.null_count:
        raise EmuError("null phase", file=where(_first_null(ph_col)), key="phase")
    if pa.types.is_integer(ph_col.type):
        phase = ints("phase", 0, 1)
    elif pa.types.is_string(ph_col.type) or pa.types.is_large_string(ph_col.type) \
            or pa.types.is_dictionary(ph_col.type):
        text = np.asarray(ph_col.cast(pa.string()).to_pylist(), dtype=object)
        phase = np.where(text == "decode", PHASE_DECODE, PHASE_PREFILL).astype(np.int64)
        bad = (text != "decode") & (text != "prefill")
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EmuError(f"expected 'prefill' or 'decode', got {text[i]!r}", file=where(i), key="phase")
    else:
        raise EmuError(f"expected 'prefill'/'decode' strings or 0/1 integers, got {ph_col.type}", file=name,
                       key="phase")
    experts = lists("experts", False, None)
    k = experts.shape[1]
    scores = lists("scores", True, k) if "scores" in table.column_names else None
    predicted = lists("predicted", False, k) if "predicted" in table.column_names else None
    pass_id = ints("pass", 0, _I32) if "pass" in table.column_names else None

    def request_name(r: int) -> str:
        return repr(names[r]) if names is not None else str(r)

    dense = assemble(request=request, position=position, phase=phase, layer=layer, experts=experts,
                     scores=scores, predicted=predicted, pass_id=pass_id, n_layers=n_layers, where_row=where,
                     request_name=request_name)
    require_complete(dense, where_row=where, request_name=request_name)

    def locate(t: int, layer_: int, field: str) -> tuple[str, str]:
        return where(int(dense.row[t, layer_])), field

    return finish_import(experts=dense.experts, scores=dense.scores, predicted=dense.predicted,
                         pass_offsets=dense.pass_offsets, pass_phase=dense.pass_phase,
                         token_request=dense.token_request, token_position=dense.token_position, model=model,
                         meta=meta, file=name, locate=locate, allow_degenerate=allow_degenerate)


def write_parquet(trace: RoutingTrace, path: str | Path) -> None:
    """One row per token and MoE layer, with `pass`, so `import_parquet` rebuilds the same trace."""
    pa, _pc, pq = _pyarrow(str(path))
    n_tok, n_layers, k = trace.experts.shape
    token = np.repeat(np.arange(n_tok), n_layers)
    pass_of_token = np.repeat(np.arange(trace.n_passes), np.diff(trace.pass_offsets))
    names = trace.meta.get("request_ids")
    req = trace.token_request[token]
    request = pa.array(np.asarray(names, dtype=object)[req].tolist()) if isinstance(names, list) \
        else pa.array(req.astype(np.int64))

    def fixed(arr: np.ndarray, value_type: Any) -> Any:
        flat = pa.array(arr.reshape(-1), type=value_type)
        return pa.ListArray.from_arrays(pa.array(np.arange(0, arr.size + 1, k, dtype=np.int32)), flat)

    columns: dict[str, Any] = {
        "request": request,
        "position": pa.array(trace.token_position[token].astype(np.int64)),
        "phase": pa.array(np.where(trace.pass_phase[pass_of_token[token]] == PHASE_DECODE, "decode",
                                   "prefill").tolist()),
        "layer": pa.array(np.tile(np.arange(n_layers, dtype=np.int64), n_tok)),
        "experts": fixed(trace.experts.astype(np.int64), pa.int64()),
        "pass": pa.array(pass_of_token[token].astype(np.int64)),
    }
    if trace.scores is not None:
        columns["scores"] = fixed(trace.scores.astype(np.float32), pa.float32())
    if trace.predicted is not None:
        columns["predicted"] = fixed(trace.predicted.astype(np.int64), pa.int64())
    pq.write_table(pa.table(columns), path)
