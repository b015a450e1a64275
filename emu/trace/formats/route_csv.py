"""`route_trace v1` CSV (BigMoeOnEdge's llama.cpp route capture) -> RoutingTrace.

Format (as published in Helldez/BigMoeOnEdge docs/bench-data/2026-07-15-route-trace/qwen.route.csv; see
scenarios/traces/public/README.md)::

    # route_trace v1
    # model=PATH arch=qwen3moe n_layer=48 n_expert=128 n_expert_used=6
    # layer=0 expert_bytes=3059712 dense_bytes=11953152        (one line per layer)
    turn,phase,step,layer,slot,expert,weight,residency,expert_bytes
    0,0,0,0,0,49,0.221297,0,3059712                             (one row per token, layer and top-k slot)

`phase` 0 = prefill, 1 = decode; `step` is the token's absolute context position; `slot` orders the
token's top-k at that layer (slot 0 = highest `weight`); `weight` is the gate weight (the capture's
renormalised top-k weights) and becomes `scores`; `residency` and the row's `expert_bytes` are the
capturing runtime's own cache outcome, not routing: only their totals are kept (`meta.capture_residency`).

Tokens: one per (turn, step). Requests: one per turn (`token_request` = the turn number). Passes: a
turn's prefill tokens are one prefill pass, then each decode step is one decode pass; turns run in
ascending order. The header's per-layer `expert_bytes` and `dense_bytes` are kept in meta as lists.

The file's top-k (slots per token and layer) may be below the model's native top-k: BigMoeOnEdge forces
`n_expert_used` below the GGUF's own value. `meta.top_k` is the file's k, `meta.n_expert_used` the
header's; with `--model`, a k that differs from the model's is a warning (`meta.top_k_mismatch`).

llama.cpp runs the last layer's FFN for the output rows only (the prefill's last token), so a prefill
token can lack rows for a layer that another token of the same prefill has. Such entries are filled
with the routing of the prefill's last token that has the layer (the experts the runtime did load for
that pass), counted in `meta.filled_prefill_layers` ({layer: tokens}) with a warning. Any other missing
row is an error.

Speed: the body is parsed by `numpy.loadtxt` with a structured dtype and everything after is
vectorised (one lexsort to gather slots, one to form tokens), about 1M rows/s on two cores
(benchmarks/bench_trace_import.py).
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EmuError, EmuWarning
from ...models import ModelSpec
from ..checks import finish_import
from ..routing_trace import PHASE_PREFILL, RoutingTrace
from ._longform import Dense, assemble, require_complete

MAGIC = "# route_trace v1"
COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert", "weight")
OPTIONAL = ("residency", "expert_bytes")
_KV = re.compile(r"(\w+)=(\S+)")
_MAX_LAYERS = 4096
_I32 = 2**31 - 1


def sniff(head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf").startswith(MAGIC.encode())


def _header_int(values: dict[str, str], key: str, where: str, *, minimum: int = 1) -> int:
    if key not in values:
        raise EmuError(f"missing {key}=N in the model line", file=where, key=key)
    try:
        value = int(values[key])
    except ValueError:
        raise EmuError(f"expected an integer, got {values[key]!r}", file=where, key=key) from None
    if value < minimum:
        raise EmuError(f"expected an integer >= {minimum}, got {value}", file=where, key=key)
    return value


def import_route_trace(path: str | Path, model: ModelSpec | None = None, *,
                       allow_degenerate: bool = False) -> RoutingTrace:
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise EmuError("trace file not found", file=name)
    raw = path.read_bytes()

    # --- header ------------------------------------------------------------------------------------
    pos = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    lineno = 0
    model_line: dict[str, str] | None = None
    model_lineno = 0
    layer_bytes: dict[int, tuple[int, int]] = {}
    columns: list[str] | None = None
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        lineno += 1
        try:
            line = raw[pos:end].decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as err:
            raise EmuError(f"not UTF-8 text (byte {pos + err.start}); expected a route_trace v1 CSV",
                           file=f"{name}:{lineno}") from None
        pos = end + 1
        if lineno == 1:
            if line.strip() != MAGIC:
                raise EmuError(f"expected {MAGIC!r} as the first line, got {line[:40]!r}", file=f"{name}:1",
                               key="header")
            continue
        if not line.strip():
            continue
        if not line.startswith("#"):
            columns = [c.strip() for c in line.split(",")]
            break
        values = dict(_KV.findall(line))
        if "layer" in values and "expert_bytes" in values:
            where = f"{name}:{lineno}"
            layer = _header_int(values, "layer", where, minimum=0)
            if layer in layer_bytes:
                raise EmuError(f"second '# layer={layer}' line", file=where, key="layer")
            layer_bytes[layer] = (_header_int(values, "expert_bytes", where, minimum=0),
                                  _header_int(values, "dense_bytes", where, minimum=0))
        elif "n_layer" in values or "n_expert" in values:
            model_line, model_lineno = values, lineno
    if model_line is None:
        raise EmuError("missing the '# model=... n_layer=... n_expert=... n_expert_used=...' line",
                       file=f"{name}:2", key="header")
    where = f"{name}:{model_lineno}"
    n_layer = _header_int(model_line, "n_layer", where)
    n_expert = _header_int(model_line, "n_expert", where)
    n_used = _header_int(model_line, "n_expert_used", where)
    if n_layer > _MAX_LAYERS:
        raise EmuError(f"n_layer {n_layer} out of range: expected <= {_MAX_LAYERS}", file=where, key="n_layer")
    if layer_bytes and sorted(layer_bytes) != list(range(n_layer)):
        missing = sorted(set(range(n_layer)) - set(layer_bytes))
        extra = sorted(set(layer_bytes) - set(range(n_layer)))
        raise EmuError(f"expected one '# layer=L expert_bytes=B dense_bytes=D' line for each of the {n_layer} "
                       f"layers; missing {missing[:12]}, out of range {extra[:12]}", file=name, key="header")
    if columns is None:
        raise EmuError("no column header row (turn,phase,step,...) and no rows", file=name)
    header_line = lineno
    absent = [c for c in COLUMNS if c not in columns]
    if absent:
        raise EmuError(f"column header lacks {absent}; expected {','.join(COLUMNS + OPTIONAL)}",
                       file=f"{name}:{header_line}", key="columns")
    if len(set(columns)) != len(columns):
        raise EmuError(f"repeated column names in {columns}", file=f"{name}:{header_line}", key="columns")

    # --- body --------------------------------------------------------------------------------------
    wanted = [c for c in (*COLUMNS, *OPTIONAL) if c in columns]
    body = raw[pos:]
    dtype = np.dtype([(c, np.float64 if c == "weight" else np.int64) for c in wanted])
    usecols = [columns.index(c) for c in wanted]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about an empty body; we say it below
            data = np.loadtxt(io.BytesIO(body), delimiter=",", dtype=dtype, usecols=usecols, ndmin=1,
                              comments="#", encoding="utf-8")
    except (ValueError, UnicodeDecodeError) as err:
        raise _locate_parse_error(body, columns, wanted, name, header_line, err) from None
    n_rows = int(data.shape[0])
    if n_rows == 0:
        raise EmuError("no rows after the column header", file=name)
    # rows map to lines 1:1 unless the body has blank or comment lines; then map them only if asked
    n_lines = body.count(b"\n") + (not body.endswith(b"\n"))
    line_map: list[np.ndarray] = []

    def line(i: int) -> int:
        if n_lines == n_rows:
            return header_line + 1 + i
        if not line_map:
            nums = [j for j, ln in enumerate(body.splitlines(), header_line + 1)
                    if ln.strip() and not ln.lstrip().startswith(b"#")]
            line_map.append(np.asarray(nums, dtype=np.int64))
        return int(line_map[0][i])

    cols = {c: data[c] for c in wanted}
    for key, lo, hi in (("turn", 0, _I32), ("step", 0, _I32), ("phase", 0, 1), ("layer", 0, n_layer - 1),
                        ("slot", 0, n_used - 1)):
        arr = cols[key]
        bad = (arr < lo) | (arr > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            want = {"turn": f"0..{_I32}", "step": f"0..{_I32} (context position)",
                    "phase": "0 (prefill) or 1 (decode)",
                    "layer": f"0..{n_layer - 1} (n_layer={n_layer})",
                    "slot": f"0..{n_used - 1} (n_expert_used={n_used})"}[key]
            raise EmuError(f"{key} {int(arr[i])} out of range: expected {want}", file=f"{name}:{line(i)}", key=key)

    # --- gather the top-k slots of each (turn, step, layer) -----------------------------------------
    turn, step, layer, slot = cols["turn"], cols["step"], cols["layer"], cols["slot"]
    order = _sort_order(turn, step, layer, slot)
    t_s, s_s, l_s, k_s = turn[order], step[order], layer[order], slot[order]
    new_cell = np.ones(n_rows, dtype=bool)
    new_cell[1:] = (t_s[1:] != t_s[:-1]) | (s_s[1:] != s_s[:-1]) | (l_s[1:] != l_s[:-1])
    starts = np.flatnonzero(new_cell)
    sizes = np.diff(np.r_[starts, n_rows])
    top_k = int(slot.max()) + 1
    within = np.arange(n_rows) - np.repeat(starts, sizes)
    wrong = (k_s != within) | np.repeat(sizes != top_k, sizes)
    if wrong.any():
        g = int(np.searchsorted(starts, int(np.flatnonzero(wrong)[0]), side="right") - 1)
        c0, size = int(starts[g]), int(sizes[g])
        slots_g, rows_g = k_s[c0:c0 + size], order[c0:c0 + size]
        cell = f"turn {int(t_s[c0])} step {int(s_s[c0])} layer {int(l_s[c0])}"
        twice = np.flatnonzero(slots_g[1:] == slots_g[:-1])
        if twice.size:
            a, b = sorted((int(rows_g[twice[0]]), int(rows_g[twice[0] + 1])))
            raise EmuError(f"duplicate slot {int(slots_g[twice[0]])} for {cell} (first at line {line(a)})",
                           file=f"{name}:{line(b)}", key="slot")
        raise EmuError(f"{cell} has slots {slots_g.tolist()}; expected each of 0..{top_k - 1} once (the file's "
                       f"top-{top_k})", file=f"{name}:{line(int(rows_g.min()))}", key="slot")
    n_cells = starts.size
    cell_first = np.minimum.reduceat(order, starts)  # first source row of each cell
    phase = cols["phase"][order]
    phase_cell = phase[starts]
    mixed = phase != np.repeat(phase_cell, top_k)
    if mixed.any():
        i = int(order[int(np.flatnonzero(mixed)[0])])
        raise EmuError("differs from another slot of the same turn, step and layer; expected one phase per token",
                       file=f"{name}:{line(i)}", key="phase")
    experts = cols["expert"][order].reshape(n_cells, top_k)
    weights = cols["weight"][order].reshape(n_cells, top_k)

    def cell_where(c: int) -> str:
        return f"{name}:{line(int(cell_first[c]))}"

    dense = assemble(request=t_s[starts], position=s_s[starts], phase=phase_cell, layer=l_s[starts],
                     experts=experts, scores=weights, n_layers=n_layer, where_row=cell_where)

    # --- llama.cpp's last layer runs for the output rows only: fill those prefill entries ---------------
    meta: dict[str, Any] = {"source": "route_trace", "format": "route_trace v1", "file": path.name,
                            "capture_model": model_line.get("model", ""), "arch": model_line.get("arch", ""),
                            "n_layer": n_layer, "n_expert": n_expert, "n_expert_used": n_used, "top_k": top_k}
    if layer_bytes:
        meta["expert_bytes"] = [layer_bytes[i][0] for i in range(n_layer)]
        meta["dense_bytes"] = [layer_bytes[i][1] for i in range(n_layer)]
    if "residency" in cols:
        meta["capture_residency"] = {"rows": n_rows, "resident": int((cols["residency"] != 0).sum())}
    filled = _fill_prefill_output_rows(dense)
    if filled:
        meta["filled_prefill_layers"] = {str(k): v for k, v in sorted(filled.items())}
        shown = ", ".join(f"layer {k}: {v}" for k, v in sorted(filled.items())[:6])
        warnings.warn(f"{name}: some prefill tokens have no rows for a layer that the prefill's last token has "
                      f"(llama.cpp runs the last layer for output rows only); filled from that token ({shown})",
                      EmuWarning, stacklevel=2)
    require_complete(dense, where_row=cell_where)
    if top_k < n_used:
        meta["top_k_truncated"] = {"file": top_k, "n_expert_used": n_used}
        warnings.warn(f"{name}: rows carry top-{top_k} but the header says n_expert_used={n_used}; kept as "
                      f"top-{top_k} (meta.top_k_truncated)", EmuWarning, stacklevel=2)

    def locate(t: int, layer_: int, field: str) -> tuple[str, str]:
        r = int(dense.row[t, layer_])
        return (cell_where(r) if r >= 0 else name), ("weight" if field == "scores" else "expert")

    return finish_import(experts=dense.experts, scores=dense.scores, pass_offsets=dense.pass_offsets,
                         pass_phase=dense.pass_phase, token_request=dense.token_request,
                         token_position=dense.token_position, declared_n_experts=n_expert, model=model,
                         meta=meta, file=name, locate=locate, allow_degenerate=allow_degenerate)


def _sort_order(*keys: np.ndarray) -> np.ndarray:
    """Stable order by keys[0], then keys[1], ...: one argsort of a packed int64 key when the (non-negative)
    values fit in 62 bits, which is several times faster than lexsort; lexsort otherwise."""
    bits = [max(int(k.max()), 1).bit_length() for k in keys]
    if sum(bits) > 62:
        return np.lexsort(keys[::-1])
    packed = np.zeros(keys[0].shape, dtype=np.int64)
    for k, b in zip(keys, bits):
        packed <<= b
        packed |= k
    return np.argsort(packed, kind="stable")


def _fill_prefill_output_rows(dense: Dense) -> dict[int, int]:
    """Copy, within each prefill pass, a layer's routing from the pass's last token that has it to the
    tokens that lack it. Returns {layer: tokens filled}."""
    filled: dict[int, int] = {}
    missing = ~dense.present
    if not missing.any():
        return filled
    for p in np.flatnonzero(dense.pass_phase == PHASE_PREFILL).tolist():
        s, e = int(dense.pass_offsets[p]), int(dense.pass_offsets[p + 1])
        miss = missing[s:e]
        if not miss.any():
            continue
        for layer in np.flatnonzero(miss.any(axis=0) & ~miss.all(axis=0)).tolist():
            src = s + int(np.flatnonzero(~miss[:, layer])[-1])
            dst = s + np.flatnonzero(miss[:, layer])
            dense.experts[dst, layer] = dense.experts[src, layer]
            if dense.scores is not None:
                dense.scores[dst, layer] = dense.scores[src, layer]
            dense.row[dst, layer] = dense.row[src, layer]
            filled[layer] = filled.get(layer, 0) + int(dst.size)
    return filled


def _locate_parse_error(body: bytes, columns: list[str], wanted: list[str], name: str, header_line: int,
                        err: Exception) -> EmuError:
    """numpy's parser failed: find the first bad line in Python and name it."""
    idx = {c: columns.index(c) for c in wanted}
    for lineno, raw_line in enumerate(body.splitlines(), header_line + 1):
        try:
            ln = raw_line.decode("utf-8")
        except UnicodeDecodeError:
            return EmuError("not UTF-8 text", file=f"{name}:{lineno}")
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        fields = ln.split(",")
        if len(fields) != len(columns):
            return EmuError(f"expected {len(columns)} comma-separated fields ({','.join(columns)}), got "
                            f"{len(fields)}", file=f"{name}:{lineno}")
        for c, j in idx.items():
            value = fields[j].strip()
            try:
                float(value) if c == "weight" else int(value)
            except ValueError:
                want = "a number" if c == "weight" else "an integer"
                return EmuError(f"expected {want}, got {value!r}", file=f"{name}:{lineno}", key=c)
    return EmuError(f"cannot parse the rows ({err})", file=name)
