"""Long-form rows (one per token and MoE layer) -> dense [tokens, layers, top_k] arrays with passes.

Shared by the row-based importers (route_trace CSV after its slots are gathered, Parquet). Vectorised:
one lexsort over the rows, no Python object per row. Structure errors (a duplicate row, one token's rows
disagreeing on phase or pass, a pass mixing phases, prefill after decode) are raised here with the
source row's location; expert-id, score and degeneracy checks are `emu.trace.checks`' job.

Passes follow the JSONL rules (docs/traces.md): with pass ids, ascending pass id; without, requests one
after another in ascending request id, the request's prefill tokens as one prefill pass and then each of
its decode tokens as one decode pass. Within a pass, tokens are ordered by request, then position.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import numpy as np

from ...errors import EmuError
from ..routing_trace import PHASE_DECODE, PHASE_PREFILL

#: source row index -> the file part of a message: `file:line` or `file:row 17`
WhereRow = Callable[[int], str]


@attrs.frozen(eq=False)
class Dense:
    """Assembled arrays; `row[t, l]` is the source row of token t at layer l, -1 where the file has none."""

    experts: np.ndarray  # [T, L, K], the rows' dtype; 0 where missing
    scores: np.ndarray | None  # [T, L, K] float64
    predicted: np.ndarray | None  # [T, L, K]
    row: np.ndarray  # int64 [T, L]
    token_request: np.ndarray  # int64 [T]
    token_position: np.ndarray  # int64 [T]
    token_phase: np.ndarray  # int8 [T]
    pass_offsets: np.ndarray  # int64 [P + 1]
    pass_phase: np.ndarray  # int8 [P]

    @property
    def present(self) -> np.ndarray:
        return self.row >= 0


def assemble(*, request: np.ndarray, position: np.ndarray, phase: np.ndarray, layer: np.ndarray,
             experts: np.ndarray, n_layers: int, where_row: WhereRow, scores: np.ndarray | None = None,
             predicted: np.ndarray | None = None, pass_id: np.ndarray | None = None,
             request_name: Callable[[int], str] = str) -> Dense:
    """Group rows into tokens and passes (at least one row). `request` holds int codes; `layer` is in range."""
    n_rows = int(request.shape[0])
    order = np.lexsort((layer, position, request))
    r_s, p_s, l_s = request[order], position[order], layer[order]
    new_tok = np.ones(n_rows, dtype=bool)
    new_tok[1:] = (r_s[1:] != r_s[:-1]) | (p_s[1:] != p_s[:-1])
    dup = ~new_tok[1:] & (l_s[1:] == l_s[:-1])
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        a, b = sorted((int(order[i]), int(order[i + 1])))
        raise EmuError(f"duplicate row for request {request_name(int(r_s[i]))} position {int(p_s[i])} layer "
                       f"{int(l_s[i])} (first at {where_row(a)})", file=where_row(b), key="layer")
    tok_sorted = np.cumsum(new_tok) - 1
    n_tok = int(tok_sorted[-1]) + 1
    row_tok = np.empty(n_rows, dtype=np.int64)
    row_tok[order] = tok_sorted
    first_row = order[new_tok]  # one row of each token, tokens in (request, position) order
    tok_req, tok_pos = request[first_row], position[first_row]

    def agree(values: np.ndarray, key: str) -> np.ndarray:
        per_tok = values[first_row]
        bad = values != per_tok[row_tok]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EmuError(f"differs from another row of request {request_name(int(request[i]))} position "
                           f"{int(position[i])}; expected one value per token", file=where_row(i), key=key)
        return per_tok

    tok_phase = agree(phase, "phase").astype(np.int8)
    if pass_id is not None:
        tok_pass = agree(pass_id, "pass")
        tok_order = np.lexsort((tok_pos, tok_req, tok_pass))
        p_sorted = tok_pass[tok_order]
        starts = np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])
        ph_sorted = tok_phase[tok_order]
        mixed = ph_sorted != np.repeat(ph_sorted[starts], np.diff(np.r_[starts, n_tok]))
        if mixed.any():
            i = int(np.flatnonzero(mixed)[0])
            raise EmuError(f"pass {int(p_sorted[i])} mixes prefill and decode tokens; expected one phase per pass",
                           file=where_row(int(first_row[tok_order[i]])), key="phase")
        r_sorted = tok_req[tok_order]
        twice = (p_sorted[1:] == p_sorted[:-1]) & (r_sorted[1:] == r_sorted[:-1]) & (ph_sorted[1:] == PHASE_DECODE)
        if twice.any():
            i = int(np.flatnonzero(twice)[0]) + 1
            raise EmuError(f"decode pass {int(p_sorted[i])} has two tokens of request "
                           f"{request_name(int(r_sorted[i]))}; expected one token per request per decode pass",
                           file=where_row(int(first_row[tok_order[i]])), key="pass")
        pass_phase = ph_sorted[starts]
    else:
        same_req = tok_req[1:] == tok_req[:-1]
        late = np.r_[False, same_req & (tok_phase[1:] == PHASE_PREFILL) & (tok_phase[:-1] == PHASE_DECODE)]
        if late.any():
            i = int(np.flatnonzero(late)[0])
            raise EmuError(f"request {request_name(int(tok_req[i]))} has a prefill token at position "
                           f"{int(tok_pos[i])} after a decode token; expected the prompt before the generated "
                           "tokens (or a pass column)", file=where_row(int(first_row[i])), key="phase")
        tok_order = np.arange(n_tok)
        new_pass = np.r_[True, ~(same_req & (tok_phase[1:] == PHASE_PREFILL) & (tok_phase[:-1] == PHASE_PREFILL))]
        starts = np.flatnonzero(new_pass)
        pass_phase = tok_phase[starts]

    final = np.empty(n_tok, dtype=np.int64)
    final[tok_order] = np.arange(n_tok)
    row_final = final[row_tok]
    top_k = int(experts.shape[1])
    out = np.zeros((n_tok, n_layers, top_k), dtype=experts.dtype)
    out[row_final, layer] = experts
    row = np.full((n_tok, n_layers), -1, dtype=np.int64)
    row[row_final, layer] = np.arange(n_rows)
    sc = pr = None
    if scores is not None:
        sc = np.zeros((n_tok, n_layers, top_k), dtype=np.float64)
        sc[row_final, layer] = scores
    if predicted is not None:
        pr = np.zeros((n_tok, n_layers, top_k), dtype=predicted.dtype)
        pr[row_final, layer] = predicted
    return Dense(experts=out, scores=sc, predicted=pr, row=row, token_request=tok_req[tok_order],
                 token_position=tok_pos[tok_order], token_phase=tok_phase[tok_order],
                 pass_offsets=np.r_[starts, n_tok].astype(np.int64), pass_phase=pass_phase.astype(np.int8))


def require_complete(dense: Dense, *, where_row: WhereRow, request_name: Callable[[int], str] = str) -> None:
    """Every token needs a row for every MoE layer."""
    missing = ~dense.present
    if not missing.any():
        return
    t = int(np.flatnonzero(missing.any(axis=1))[0])
    lacks = np.flatnonzero(missing[t]).tolist()
    shown = str(lacks) if len(lacks) <= 12 else f"{lacks[:12]} and {len(lacks) - 12} more"
    have = dense.row[t][dense.row[t] >= 0]
    where = where_row(int(have.min()))  # a token always has at least one row
    raise EmuError(f"request {request_name(int(dense.token_request[t]))} position {int(dense.token_position[t])} "
                   f"lacks layers {shown}; expected rows for all {dense.row.shape[1]} MoE layers",
                   file=where, key="layer")
