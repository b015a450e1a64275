"""CPU execution (Fiddler): run a missing expert on the host CPU when that beats copying it.

For a miss routed `n` tokens it compares `cpu(n) + cpu_queue` with `copy * (1 + copies_ahead) + gpu(n)`,
where cpu() and gpu() are the profile's expert curves at the model precision, copy is one expert copy,
cpu_queue is the CPU time of the experts this layer already sent to the CPU (the CPU runs one at a
time) and copies_ahead counts this layer's earlier misses already queued for a copy (the link copies
one expert at a time too). Decode (few tokens) favours the CPU once the link is busy; prefill (many
tokens) favours the copy. Copies queued by earlier layers (prefetches) are not counted.
State: the curves in `f` (rows `F.CPU_TOK`, `F.CPU_S` for the CPU, `F.GPU_TOK`, `F.GPU_S` for the GPU,
tokens and seconds); `p[P.COPY_S]` the seconds of one copy, `p[P.CPU_N]`, `p[P.GPU_N]` the curves'
points. Needs a profile with CPU expert timing (`compute.cpu_flops_per_s` or a `cpu_expert` table):
without it init fails naming `policy.miss`.
Cost: O(entries + log curve points) per miss.
Note: the core runs a CPU expert at `cs.prec[key]`, the precision of the key's last copy (0 unless a
degrading miss policy copied it before); with this policy alone that is always the model precision.
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...errors import EmuError
from ...kernel.helpers import interp_curve
from ...kernel.hooks import MISS_CPU, MISS_FETCH, MISS_SIG, encode_miss, hook
from ...kernel.layout import IN_FLIGHT, ON_CPU, WAITING, Fields, new_policy_state
from ..api import Capabilities, Policy, PolicyContext, param_values, register


class F(Fields):
    """Rows of `ps.f`: the profile's expert curves at the model precision."""

    CPU_TOK = auto()  # CPU curve: tokens
    CPU_S = auto()  # CPU curve: seconds
    GPU_TOK = auto()  # GPU curve: tokens
    GPU_S = auto()  # GPU curve: seconds


class P(Fields):
    """`ps.p`: from the engine's Timing, not from parameters."""

    COPY_S = auto()  # seconds of one expert copy
    CPU_N = auto()  # points of the CPU curve
    GPU_N = auto()  # points of the GPU curve


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    tm = ctx.timing
    if tm is None or int(tm.cpu_n[0]) == 0:
        raise EmuError("the cpu miss policy needs CPU expert timing, but the hardware profile has none "
                       "(set compute.cpu_flops_per_s or a models.<name>.cpu_expert table)", key="policy.miss")
    width = max(tm.cpu_tok.shape[1], tm.exp_tok.shape[1])
    ps = new_policy_state(f_rows=len(F), f_cols=width, params=param_values(P, {
        "copy_s": tm.copy_s[0], "cpu_n": tm.cpu_n[0], "gpu_n": tm.exp_n[0]}))
    ps.f[F.CPU_TOK, :tm.cpu_tok.shape[1]] = tm.cpu_tok[0]
    ps.f[F.CPU_S, :tm.cpu_s.shape[1]] = tm.cpu_s[0]
    ps.f[F.GPU_TOK, :tm.exp_tok.shape[1]] = tm.exp_tok[0]
    ps.f[F.GPU_S, :tm.exp_s.shape[1]] = tm.exp_s[0]
    return ps


@njit(cache=True, _nrt=False)
def cpu_time(ps, tokens: int) -> float:
    return interp_curve(ps.f[F.CPU_TOK], ps.f[F.CPU_S], int(ps.p[P.CPU_N]), float(tokens))


@hook(MISS_SIG)
def on_miss(ps, cs, tv, i, t):
    queue = 0.0
    ahead = 0
    for j in range(i):
        if cs.cur_where[j] == ON_CPU:
            queue += cpu_time(ps, cs.cur_tokens[j])
        elif cs.cur_sub[j] < 0 and (cs.status[cs.cur_key[j]] == IN_FLIGHT or cs.status[cs.cur_key[j]] == WAITING):
            ahead += 1
    gpu = ps.p[P.COPY_S] * (1 + ahead) + interp_curve(ps.f[F.GPU_TOK], ps.f[F.GPU_S], int(ps.p[P.GPU_N]),
                                                       float(cs.cur_tokens[i]))
    if cpu_time(ps, cs.cur_tokens[i]) + queue < gpu:
        return encode_miss(MISS_CPU, 0)
    return encode_miss(MISS_FETCH, 0)


POLICY = register(Policy(
    name="cpu", kind="miss", hooks={"on_miss": on_miss}, init=init, capabilities=Capabilities(live=True),
    doc="Run the missing expert on the CPU when its CPU time beats copy + GPU time (Fiddler)."))
