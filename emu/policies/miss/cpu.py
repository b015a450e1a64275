"""CPU execution (Fiddler): run a missing expert on the host CPU when that beats copying it.

For a miss routed `n` tokens it compares `cpu(n) + cpu_queue` with `copy * (1 + copies_ahead) + gpu(n)`,
where cpu() and gpu() are the profile's expert curves at the model precision, copy is one expert copy,
cpu_queue is the CPU time of the experts this layer already sent to the CPU (the CPU runs one at a
time) and copies_ahead counts this layer's earlier misses already queued for a copy (the link copies
one expert at a time too). Decode (few tokens) favours the CPU once the link is busy; prefill (many
tokens) favours the copy. Copies queued by earlier layers (prefetches) are not counted.
State: `f` rows = CPU curve tokens/seconds, GPU curve tokens/seconds; `p` = (copy seconds, CPU curve
points, GPU curve points). Needs a profile with CPU expert timing (`compute.cpu_flops_per_s` or a
`cpu_expert` table): without it init fails naming `policy.miss`.
Cost: O(entries + log curve points) per miss.
Note: the core runs a CPU expert at `cs.prec[key]`, the precision of the key's last copy (0 unless a
degrading miss policy copied it before); with this policy alone that is always the model precision.
"""

from __future__ import annotations

from numba import njit

from ...engines.core import encode_miss, interp_curve
from ...engines.state import IN_FLIGHT, ON_CPU, WAITING, new_policy_state
from ...errors import EmuError
from ..api import KERNEL_SIG, MISS_CPU, MISS_FETCH, Policy, PolicyContext


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    tm = ctx.timing
    if tm is None or int(tm.cpu_n[0]) == 0:
        raise EmuError("the cpu miss policy needs CPU expert timing, but the hardware profile has none "
                       "(set compute.cpu_flops_per_s or a models.<name>.cpu_expert table)", key="policy.miss")
    width = max(tm.cpu_tok.shape[1], tm.exp_tok.shape[1])
    ps = new_policy_state(f_rows=4, f_cols=width,
                          params=(float(tm.copy_s[0]), float(tm.cpu_n[0]), float(tm.exp_n[0])))
    ps.f[0, :tm.cpu_tok.shape[1]] = tm.cpu_tok[0]
    ps.f[1, :tm.cpu_s.shape[1]] = tm.cpu_s[0]
    ps.f[2, :tm.exp_tok.shape[1]] = tm.exp_tok[0]
    ps.f[3, :tm.exp_s.shape[1]] = tm.exp_s[0]
    return ps


@njit(cache=True, _nrt=False)
def cpu_time(ps, tokens: int) -> float:
    return interp_curve(ps.f[0], ps.f[1], int(ps.p[1]), float(tokens))


@njit(KERNEL_SIG, cache=True, _nrt=False)
def miss(ps, cs, tv, i, _b, t):
    queue = 0.0
    ahead = 0
    for j in range(i):
        if cs.cur_where[j] == ON_CPU:
            queue += cpu_time(ps, cs.cur_tokens[j])
        elif cs.cur_sub[j] < 0 and (cs.status[cs.cur_key[j]] == IN_FLIGHT or cs.status[cs.cur_key[j]] == WAITING):
            ahead += 1
    gpu = ps.p[0] * (1 + ahead) + interp_curve(ps.f[2], ps.f[3], int(ps.p[2]), float(cs.cur_tokens[i]))
    if cpu_time(ps, cs.cur_tokens[i]) + queue < gpu:
        return encode_miss(MISS_CPU, 0)
    return encode_miss(MISS_FETCH, 0)


POLICY = Policy(name="cpu", kind="miss", kernels=(miss,), init=init,
                doc="Run the missing expert on the CPU when its CPU time beats copy + GPU time (Fiddler).")
