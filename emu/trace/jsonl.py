"""JSONL routing traces -> RoutingTrace, validated at the edge (schema in docs/traces.md).

One row per (request, token, MoE layer). Two spellings are accepted row by row: `request` / `token` /
`scores` (ours) and `problem_id` / `token_idx` / `gating_probs` (the shared Mixtral captures). Every bad
row is reported with file, line number and key; problems that span rows (a token missing layers, a
duplicate row, mixed phases in one pass) name the line of the first row involved.

Ordering. Passes are ordered by `pass` id when rows carry one; otherwise requests are served one after
another, in ascending request id: the request's prefill rows form one prefill pass, then each of its
decode tokens is one decode pass. Within a pass, tokens are ordered by request id, then token index.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmuError, EmuWarning
from ..models import ModelSpec
from ..textio import not_utf8
from .routing_trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace

_ALIASES = {"request": ("request", "problem_id"), "token": ("token", "token_idx"),
            "scores": ("scores", "gating_probs")}
_KNOWN = {"request", "problem_id", "token", "token_idx", "layer", "experts", "scores", "gating_probs",
          "phase", "pass", "predicted"}
_PHASES = {"prefill": PHASE_PREFILL, "decode": PHASE_DECODE}
_I32 = 2**31 - 1
_MAX_EXPERTS = 2**15  # ids are stored as int16
_MAX_LAYERS = 4096  # without a model, the largest layer id sets the layer count: a sanity bound


def _is_int(v: Any) -> bool:
    return type(v) is int


def import_jsonl(path: str | Path, model: ModelSpec | None = None, *, strict: bool = False) -> RoutingTrace:
    """Read a JSONL routing trace; with `model`, layers, expert ids and top-k must fit it.

    A request's last tokens that lack some layers (a capture cut off mid-token, as in the shared Mixtral
    files) are dropped with a warning and counted in meta["dropped_tail_tokens"]; with `strict`, or when a
    complete token follows, missing layers are an error.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise EmuError("trace file not found", file=name)
    rows = _Rows(name, model)
    lineno = 0
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    rows.add(lineno, line)
    except UnicodeDecodeError:
        raise not_utf8(path, "a JSONL routing trace", name=name) from None
    except RecursionError:  # json.loads, or the repr of such a value in a message
        raise rows.err(lineno, None, "JSON nested too deeply to parse; expected one flat JSON object per "
                                     "line") from None
    if not rows.lines:
        raise EmuError("no rows: expected one JSON object per line", file=name)
    return rows.build(strict=strict)


class _Rows:
    """Row-by-row checks in Python (where the line is known), then array work in numpy."""

    def __init__(self, file: str, model: ModelSpec | None) -> None:
        self.file = file
        self.model = model
        self.top_k: int | None = model.top_k if model else None
        self.top_k_line = 0
        self.lines: list[int] = []
        self.requests: list[Any] = []
        self.tokens: list[int] = []
        self.layers: list[int] = []
        self.experts: list[list[int]] = []
        self.scores: list[list[float]] = []
        self.predicted: list[list[int]] = []
        self.phases: list[int] = []
        self.passes: list[int] = []
        self.has_scores: bool | None = None
        self.has_pass: bool | None = None
        self.has_predicted: bool | None = None
        self.extra: dict[str, set[str]] = {}

    def err(self, lineno: int, key: str | None, msg: str) -> EmuError:
        return EmuError(msg, file=f"{self.file}:{lineno}", key=key)

    def _int_list(self, lineno: int, key: str, value: Any) -> list[int]:
        k = self.top_k
        want = f"a list of {k} ints" if k else "a non-empty list of ints"
        if not isinstance(value, list) or not value or not all(_is_int(v) and abs(v) <= _I32 for v in value):
            raise self.err(lineno, key, f"expected {want}, got {value!r}")
        if k is None:
            self.top_k = k = len(value)
            self.top_k_line = lineno
        if len(value) != k:
            why = (f"model {self.model.name} routes top-{k}" if self.model
                   else f"top-{k} as on line {self.top_k_line}")
            raise self.err(lineno, key, f"expected {want} ({why}), got {len(value)} values")
        return value

    def _presence(self, lineno: int, attr: str, key: str, present: bool) -> bool:
        seen = getattr(self, attr)
        if seen is None:
            setattr(self, attr, present)
        elif seen != present:
            first = "every" if seen else "no"
            raise self.err(lineno, key, f"{'missing' if seen else 'unexpected'}: {first} earlier row has it; "
                                        "expected all rows or none to carry it")
        return present

    def add(self, lineno: int, line: str) -> None:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise self.err(lineno, None, f"not valid JSON ({err.msg} at column {err.colno})") from None
        except ValueError as err:  # an integer of more digits than int() converts
            raise self.err(lineno, None, f"not valid JSON ({err})") from None
        if not isinstance(row, dict):
            raise self.err(lineno, None, f"expected a JSON object, got {type(row).__name__}")
        got: dict[str, Any] = {}
        for field, names in _ALIASES.items():
            for n in names:
                if n in row:
                    got[field] = row[n]
                    break
        for field in ("request", "token"):
            if field not in got:
                names = " or ".join(repr(n) for n in _ALIASES[field])
                raise self.err(lineno, field, f"missing (expected {names})")
        req = got["request"]
        if not (_is_int(req) and abs(req) <= _I32) and not isinstance(req, str):
            raise self.err(lineno, "request", f"expected an int or a string id, got {req!r}")
        tok = got["token"]
        if not _is_int(tok) or not 0 <= tok <= _I32:
            raise self.err(lineno, "token", f"expected a non-negative int (position in the request), "
                                            f"got {tok!r}")
        layer = row.get("layer")
        if not _is_int(layer) or layer < 0:
            raise self.err(lineno, "layer", f"expected a non-negative int (MoE layer index), got {layer!r}")
        if not self.model and layer >= _MAX_LAYERS:
            raise self.err(lineno, "layer", f"layer {layer} out of range: expected < {_MAX_LAYERS} "
                                            "(pass --model to check against a model)")
        if self.model and layer >= self.model.n_moe_layers:
            n = self.model.n_moe_layers
            raise self.err(lineno, "layer", f"layer {layer} out of range: model {self.model.name} has "
                                            f"{n} MoE layers (0..{n - 1})")
        if "experts" not in row:
            raise self.err(lineno, "experts", "missing")
        experts = self._int_list(lineno, "experts", row["experts"])
        if self._presence(lineno, "has_scores", "scores", "scores" in got):
            sc = got["scores"]
            score_key = "scores" if "scores" in row else "gating_probs"
            if (not isinstance(sc, list) or len(sc) != self.top_k
                    or not all(type(v) in (int, float) and math.isfinite(v) for v in sc)):
                raise self.err(lineno, score_key, f"expected a list of {self.top_k} finite numbers, "
                                                  f"got {sc!r}")
            self.scores.append(sc)
        if self._presence(lineno, "has_predicted", "predicted", "predicted" in row):
            self.predicted.append(self._int_list(lineno, "predicted", row["predicted"]))
        phase = row.get("phase", "decode")
        if not isinstance(phase, str) or phase not in _PHASES:
            raise self.err(lineno, "phase", f"expected 'prefill' or 'decode', got {phase!r}")
        if self._presence(lineno, "has_pass", "pass", "pass" in row):
            pas = row["pass"]
            if not _is_int(pas) or not 0 <= pas <= _I32:
                raise self.err(lineno, "pass", f"expected a non-negative int (pass index), got {pas!r}")
            self.passes.append(pas)
        for key, value in row.items():
            if key not in _KNOWN and isinstance(value, (str, int, float)) and not isinstance(value, bool):
                values = self.extra.setdefault(key, set())
                if len(values) < 16:
                    values.add(str(value))
        self.lines.append(lineno)
        self.requests.append(req)
        self.tokens.append(tok)
        self.layers.append(layer)
        self.experts.append(experts)
        self.phases.append(_PHASES[phase])

    # --- cross-row checks and assembly -------------------------------------------------------------
    def _first_bad(self, mask: np.ndarray, rows: np.ndarray | None = None) -> int:
        idx = int(np.flatnonzero(mask)[0])
        return int(self.lines_arr[idx if rows is None else rows[idx]])

    def build(self, *, strict: bool) -> RoutingTrace:
        file = self.file
        self.lines_arr = np.asarray(self.lines, dtype=np.int64)
        experts = np.asarray(self.experts, dtype=np.int64)
        n_exp = self.model.n_experts if self.model else min(int(experts.max()) + 1, _MAX_EXPERTS)
        pred = np.asarray(self.predicted, dtype=np.int64) if self.has_predicted else None
        for key, arr in (("experts", experts), ("predicted", pred)):
            if arr is None:
                continue
            bad = (arr < 0) | (arr >= n_exp)
            if bad.any():
                row = int(np.flatnonzero(bad.any(axis=1))[0])
                val = int(arr[row][bad[row]][0])
                limit = f"model {self.model.name} has {n_exp} experts" if self.model else "int16 ids"
                raise self.err(self.lines[row], key,
                               f"expert id {val} out of range: {limit} (0..{n_exp - 1})")
            srt = np.sort(arr, axis=1)
            dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
            if dup.any():
                row = int(np.flatnonzero(dup)[0])
                raise self.err(self.lines[row], key, f"expected {self.top_k} distinct expert ids, got "
                                                     f"{arr[row].tolist()}")

        # requests: ints keep their ids, strings become 0..n-1 in sorted order (originals in meta)
        meta: dict[str, Any] = {"source": "jsonl", "file": Path(file).name}
        if all(_is_int(r) for r in self.requests):
            req = np.asarray(self.requests, dtype=np.int64)
        elif all(isinstance(r, str) for r in self.requests):
            ids, req = np.unique(np.asarray(self.requests), return_inverse=True)
            meta["request_ids"] = ids.tolist()
        else:
            first = next(i for i, r in enumerate(self.requests) if type(r) is not type(self.requests[0]))
            raise self.err(self.lines[first], "request", "mixes int and string request ids")
        tok = np.asarray(self.tokens, dtype=np.int64)
        layer = np.asarray(self.layers, dtype=np.int64)
        n_layers = self.model.n_moe_layers if self.model else int(layer.max()) + 1

        # tokens: unique (request, token) in (request, token) order
        order = np.lexsort((layer, tok, req))
        r_s, t_s, l_s = req[order], tok[order], layer[order]
        new_tok = np.ones(order.size, dtype=bool)
        new_tok[1:] = (r_s[1:] != r_s[:-1]) | (t_s[1:] != t_s[:-1])
        dup = ~new_tok[1:] & (l_s[1:] == l_s[:-1])
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            a, b = sorted((self.lines[order[i]], self.lines[order[i + 1]]))
            raise self.err(b, "layer", f"duplicate row for request {self.requests[order[i]]!r} token "
                                       f"{int(t_s[i])} layer {int(l_s[i])} (first at line {a})")
        tok_id_sorted = np.cumsum(new_tok) - 1
        n_tok_all = int(tok_id_sorted[-1]) + 1
        row_tok = np.empty(order.size, dtype=np.int64)
        row_tok[order] = tok_id_sorted
        first_row = order[new_tok]  # a row of each token, in (request, token) order
        tok_req, tok_pos = req[first_row], tok[first_row]
        tok_line = np.full(n_tok_all, np.iinfo(np.int64).max)
        np.minimum.at(tok_line, row_tok, self.lines_arr)

        # per-token attributes must agree across the token's layers
        phases = np.asarray(self.phases, dtype=np.int8)
        attrs_to_check = [("phase", phases)]
        if self.has_pass:
            attrs_to_check.append(("pass", np.asarray(self.passes, dtype=np.int64)))
        tok_attr: dict[str, np.ndarray] = {}
        for key, arr in attrs_to_check:
            value = arr[first_row]
            bad = arr != value[row_tok]
            if bad.any():
                raise self.err(self._first_bad(bad), key, "differs from another row of the same request and "
                                                          "token; expected one value per token")
            tok_attr[key] = value

        # missing layers: the capture's cut-off tail may be dropped, anything else is an error
        n_rows_tok = np.bincount(row_tok, minlength=n_tok_all)
        incomplete = n_rows_tok < n_layers
        dropped = 0
        if incomplete.any():
            # a token is in its request's tail if every later token of the request is incomplete too
            group = np.cumsum(np.r_[True, tok_req[1:] != tok_req[:-1]]) - 1
            last_complete = np.full(int(group[-1]) + 1, -1, dtype=np.int64)
            idx = np.arange(n_tok_all)
            np.maximum.at(last_complete, group[~incomplete], idx[~incomplete])
            tail = incomplete & (idx > last_complete[group])
            bad = incomplete & (~tail | strict)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                have = set(l_s[tok_id_sorted == i].tolist())
                missing = sorted(set(range(n_layers)) - have)
                shown = str(missing) if len(missing) <= 12 else f"{missing[:12]} and {len(missing) - 12} more"
                why = "" if strict else " and a later token of the request is complete"
                raise EmuError(f"request {self.requests[first_row[i]]!r} token {int(tok_pos[i])} lacks "
                               f"layers {shown}{why}; expected rows for all {n_layers} MoE layers",
                               file=f"{file}:{int(tok_line[i])}", key="layer")
            dropped = int(tail.sum())
            per_req: dict[str, int] = {}
            for r in tok_req[tail].tolist():
                key = str(meta["request_ids"][r] if "request_ids" in meta else r)
                per_req[key] = per_req.get(key, 0) + 1
            meta["dropped_tail_tokens"] = per_req
            warnings.warn(f"{file}: dropped {dropped} trailing token(s) with missing layers "
                          f"(cut-off capture) from {len(per_req)} request(s)", EmuWarning, stacklevel=3)

        keep = ~incomplete if dropped else np.ones(n_tok_all, dtype=bool)
        # pass structure over the kept tokens
        kept = np.flatnonzero(keep)
        k_req, k_pos, k_phase = tok_req[kept], tok_pos[kept], tok_attr["phase"][kept]
        k_line = tok_line[kept]
        if self.has_pass:
            k_pass = tok_attr["pass"][kept]
            tok_order = np.lexsort((k_pos, k_req, k_pass))
            p_sorted = k_pass[tok_order]
            starts = np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])
            ph_sorted = k_phase[tok_order]
            mixed = ph_sorted != np.repeat(ph_sorted[starts], np.diff(np.r_[starts, tok_order.size]))
            if mixed.any():
                i = int(np.flatnonzero(mixed)[0])
                raise EmuError(f"pass {int(p_sorted[i])} mixes prefill and decode tokens; expected one phase "
                               "per pass", file=f"{file}:{int(k_line[tok_order[i]])}", key="phase")
            r_sorted = k_req[tok_order]
            twice = ((p_sorted[1:] == p_sorted[:-1]) & (r_sorted[1:] == r_sorted[:-1])
                     & (ph_sorted[1:] == PHASE_DECODE))
            if twice.any():
                i = int(np.flatnonzero(twice)[0]) + 1
                raise EmuError(f"decode pass {int(p_sorted[i])} has two tokens of request "
                               f"{self.requests[first_row[kept[tok_order[i]]]]!r}; expected one token per "
                               "request per decode pass", file=f"{file}:{int(k_line[tok_order[i]])}",
                               key="pass")
            pass_phase = ph_sorted[starts]
        else:
            # request by request: one prefill pass, then one decode pass per token
            late = np.zeros(kept.size, dtype=bool)
            same_req = k_req[1:] == k_req[:-1]
            late[1:] = same_req & (k_phase[1:] == PHASE_PREFILL) & (k_phase[:-1] == PHASE_DECODE)
            if late.any():
                i = int(np.flatnonzero(late)[0])
                raise EmuError(f"request {self.requests[first_row[kept[i]]]!r} has prefill token "
                               f"{int(k_pos[i])} after a decode token; expected the prompt before the "
                               "generated tokens", file=f"{file}:{int(k_line[i])}", key="phase")
            tok_order = np.arange(kept.size)
            new_pass = np.ones(kept.size, dtype=bool)
            new_pass[1:] = ~(same_req & (k_phase[1:] == PHASE_PREFILL) & (k_phase[:-1] == PHASE_PREFILL))
            starts = np.flatnonzero(new_pass)
            pass_phase = k_phase[starts]

        n_tok = kept.size
        pass_offsets = np.r_[starts, n_tok].astype(np.int64)
        # place rows: token index in the final order
        final_of_all = np.full(n_tok_all, -1, dtype=np.int64)
        final_of_all[kept[tok_order]] = np.arange(n_tok)
        row_final = final_of_all[row_tok]
        live = row_final >= 0
        top_k = int(self.top_k or 1)
        out = np.empty((n_tok, n_layers, top_k), dtype=np.int16)
        out[row_final[live], layer[live]] = experts[live]
        scores = predicted = None
        if self.has_scores:
            scores = np.empty((n_tok, n_layers, top_k), dtype=np.float16)
            scores[row_final[live], layer[live]] = np.asarray(self.scores, dtype=np.float64)[live]
        if self.has_predicted:
            predicted = np.empty((n_tok, n_layers, top_k), dtype=np.int16)
            predicted[row_final[live], layer[live]] = np.asarray(self.predicted, dtype=np.int64)[live]
        if self.extra:
            meta["fields"] = {k: sorted(v) for k, v in self.extra.items()}
        src = tok_order
        trace = RoutingTrace(
            experts=out, pass_offsets=pass_offsets, pass_phase=pass_phase.astype(np.int8),
            token_request=k_req[src].astype(np.int32), token_position=k_pos[src].astype(np.int32),
            scores=scores, predicted=predicted, n_experts=n_exp,
            model=self.model.name if self.model else "", meta=meta)
        return trace.validate(file=file)
