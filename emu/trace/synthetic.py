"""Seeded synthetic routing traces: popularity skew, temporal reuse, cross-layer correlation, batching.

The three routing effects are the ones expert caches live or die by, and each is one parameter so that
`emu trace fit` can target them. Generation is numba over flat id arrays (uint8 up to 256 experts per
layer, else int16), parallel over requests with one counter-seeded random stream per request (and per token
for scores and predictions), so the result is identical for any thread count (and when generated in blocks
for the progress display); routing runs at about 100M entries per second of one core (a million-token
OLMoE trace, 128M entries: about 1.3 CPU s).

Per token t of request r, MoE layer l and top-k slot k (slots filled in order 0..k-1):
1. with probability `reuse_prob`, take the expert the previous token of r chose at (l, k);
2. else with probability `cross_layer_corr`, take `map_l(expert of t at (l-1, k))`, where `map_l` is a
   fixed random bijection that sends the expert of popularity rank i at layer l-1 to the expert of rank i
   at layer l (so the per-layer popularity stays the Zipf one);
3. else draw from layer l's Zipf popularity: p(expert of rank i) ∝ 1 / (i + 1) ** zipf_s[l], ranks a
   random permutation per layer.
A candidate already chosen for (t, l) is replaced by a Zipf draw among the experts not yet chosen, so the
top-k experts are always distinct.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import attrs
import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from ..errors import EmuError
from ..models import ModelSpec
from ..progress import Progress
from .routing_trace import _MAX_EXPERTS, RoutingTrace

_STREAM_ROUTE = 1
_STREAM_SCORE = 2
_STREAM_PRED = 3


# --- parameters ------------------------------------------------------------------------------------
def _to_zipf(value: Any) -> float | tuple[float, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def _check_zipf(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    values = value if isinstance(value, tuple) else (value,)
    if not values:
        raise EmuError("expected a number or a non-empty list of numbers (one per MoE layer)", key="zipf_s")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise EmuError(f"expected finite numbers >= 0, got {v!r}", key=attribute.name)


def _probability(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise EmuError(f"expected a probability in [0, 1], got {value!r}", key=attribute.name)


def _optional_probability(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        _probability(inst, attribute, value)


def _int_at_least(minimum: int, maximum: int = 2**31 - 1) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise EmuError(f"expected an integer in [{minimum}, {maximum}], got {value!r}", key=attribute.name)
    return check


def _jitter(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise EmuError(f"expected a fraction in [0, 1), got {value!r}", key=attribute.name)


def _bool(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise EmuError(f"expected true or false, got {value!r}", key=attribute.name)


def _positive_float(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise EmuError(f"expected a finite number > 0, got {value!r}", key=attribute.name)


@attrs.frozen
class SyntheticParams:
    """What a synthetic workload looks like; every field is one thing `emu trace fit` can estimate."""

    #: Zipf exponent of expert popularity, one for all layers or one per MoE layer (0 = uniform)
    zipf_s: float | tuple[float, ...] = attrs.field(default=1.0, converter=_to_zipf, validator=_check_zipf)
    #: probability that a slot re-uses the previous token's expert (same request, layer and slot)
    reuse_prob: float = attrs.field(default=0.3, validator=_probability)
    #: probability that a slot not re-used follows the fixed map from the previous layer's choice
    cross_layer_corr: float = attrs.field(default=0.3, validator=_probability)
    #: prompt tokens per request (0: no prefill pass, a decode-only trace)
    prompt_len: int = attrs.field(default=128, validator=_int_at_least(0))
    #: decode tokens per request: each is one token of one decode pass
    output_len: int = attrs.field(default=512, validator=_int_at_least(0))
    #: lengths are drawn uniformly within +- this fraction of prompt_len and output_len
    length_jitter: float = attrs.field(default=0.0, validator=_jitter)
    #: requests in the trace (with n_tokens, generate() draws as many as keep the batch full instead)
    n_requests: int = attrs.field(default=8, validator=_int_at_least(1))
    #: most requests decoding concurrently (continuous batching)
    batch_size: int = attrs.field(default=1, validator=_int_at_least(1))
    seed: int = attrs.field(default=0, validator=_int_at_least(0, 2**63 - 1))
    with_scores: bool = attrs.field(default=False, validator=_bool)
    #: logit scale of the gate scores: larger = more mass on the top-1 expert
    score_scale: float = attrs.field(default=1.0, validator=_positive_float)
    #: if set, add speculator predictions right with this probability per entry
    predictor_accuracy: float | None = attrs.field(default=None, validator=_optional_probability)

    def __attrs_post_init__(self) -> None:
        if self.prompt_len == 0 and self.output_len == 0:
            raise EmuError("prompt_len and output_len are both 0: requests would have no tokens",
                           key="output_len")

    def zipf_per_layer(self, n_layers: int) -> np.ndarray:
        if isinstance(self.zipf_s, tuple):
            if len(self.zipf_s) == 1:
                return np.full(n_layers, float(self.zipf_s[0]))
            if len(self.zipf_s) != n_layers:
                raise EmuError(f"expected 1 or {n_layers} values (one per MoE layer), got {len(self.zipf_s)}",
                               key="zipf_s")
            return np.asarray(self.zipf_s, dtype=np.float64)
        return np.full(n_layers, float(self.zipf_s))

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        if isinstance(out["zipf_s"], tuple):
            out["zipf_s"] = list(out["zipf_s"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, file: str | None = None, prefix: str = "") -> SyntheticParams:
        """From a TOML/JSON table, naming the offending key on bad input."""
        names = {f.name for f in attrs.fields(cls)}
        for key in data:
            if key not in names:
                raise EmuError(f"unknown key; expected one of {sorted(names)}", file=file, key=prefix + key)
        try:
            return cls(**data)
        except EmuError as err:
            raise EmuError(err.detail, file=file, key=prefix + (err.key or "")) from None


# --- random numbers: splitmix64, counter-seeded so any thread count gives the same trace ------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_S11 = np.uint64(11)
_LOW32 = np.uint64(0xFFFFFFFF)
_INV53 = 1.0 / 9007199254740992.0
_INV32 = 1.0 / 4294967296.0


@numba.njit(cache=True, inline="always")
def _mix(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(cache=True)
def _stream_state(seed: np.uint64, stream: np.uint64, index: np.uint64) -> np.uint64:
    return _mix(_mix(seed * _GOLDEN + stream) + index * _GOLDEN)


@numba.njit(cache=True, inline="always")
def _next(state: np.ndarray) -> np.uint64:
    state[0] += _GOLDEN
    return _mix(state[0])


@numba.njit(cache=True, inline="always")
def _uniform(state: np.ndarray) -> float:
    return float(_next(state) >> _S11) * _INV53


# Kernels index whole arrays with scalars (no per-row views): a view costs an atomic reference count
# on the parent array, which threads writing the same array would contend for.
@numba.njit(cache=True, inline="always")
def _chosen(arr: np.ndarray, t: int, layer: int, k: int, e: int) -> bool:
    """Is e among arr[t, layer, :k]?"""
    for j in range(k):  # noqa: SIM110 (numba: no generator expressions)
        if arr[t, layer, j] == e:
            return True
    return False


# --- pass structure -----------------------------------------------------------------------------------
@numba.njit(cache=True)
def _schedule(prompt_lens: np.ndarray, output_lens: np.ndarray, batch_size: int, n_tokens: int):
    """Continuous batching: each admitted request's prefill is one pass, then one decode pass per step with
    one token per active request (in admission order = request order)."""
    n_req = prompt_lens.shape[0]
    max_passes = n_req + int(output_lens.sum()) + 1
    token_request = np.empty(n_tokens, np.int32)
    token_position = np.empty(n_tokens, np.int32)
    next_token = np.full(n_tokens, -1, np.int64)
    first_token = np.full(n_req, -1, np.int64)
    last_token = np.full(n_req, -1, np.int64)
    pass_offsets = np.empty(max_passes + 1, np.int64)
    pass_phase = np.empty(max_passes, np.int8)
    decoded = np.zeros(n_req, np.int64)
    active = np.empty(batch_size, np.int64)
    n_active = 0
    next_req = 0
    t = 0
    p = 0
    while t < n_tokens:
        while n_active < batch_size and next_req < n_req and t < n_tokens:
            r = next_req
            next_req += 1
            if prompt_lens[r] > 0:
                pass_offsets[p] = t
                pass_phase[p] = 0
                p += 1
                for i in range(prompt_lens[r]):
                    if t == n_tokens:
                        break
                    token_request[t] = r
                    token_position[t] = i
                    if last_token[r] >= 0:
                        next_token[last_token[r]] = t
                    else:
                        first_token[r] = t
                    last_token[r] = t
                    t += 1
            if output_lens[r] > 0:
                active[n_active] = r
                n_active += 1
        if n_active == 0 or t == n_tokens:
            break
        pass_offsets[p] = t
        pass_phase[p] = 1
        p += 1
        kept = 0
        for j in range(n_active):
            r = active[j]
            if t < n_tokens:
                token_request[t] = r
                token_position[t] = prompt_lens[r] + decoded[r]
                if last_token[r] >= 0:
                    next_token[last_token[r]] = t
                else:
                    first_token[r] = t
                last_token[r] = t
                t += 1
                decoded[r] += 1
            if decoded[r] < output_lens[r]:
                active[kept] = r
                kept += 1
        n_active = kept
    pass_offsets[p] = t
    return (token_request[:t], token_position[:t], next_token[:t], first_token,
            pass_offsets[: p + 1].copy(), pass_phase[:p].copy())


# --- routing ----------------------------------------------------------------------------------------
# A request's route stream is one splitmix64 sequence: draw i is _mix(s0 + (i + 1) * golden). Which draw a
# slot reads depends on every earlier slot (an alias draw or a rejected duplicate takes an extra one), so the
# kernel keeps the stream position n as a plain counter and reads draws from a buffer filled once per token
# in a loop the compiler vectorises: the serial chain from one slot to the next is then a load and a compare,
# not a 64-bit hash. Thresholds are integers: for a 32-bit value v and a probability p,
# v * 2**-32 < p exactly when v < ceil(p * 2**32) (scaling by 2**32 is exact), so the comparisons decide
# as the floating-point definition does, bit for bit.
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U2 = np.uint64(2)
_S16 = np.uint64(16)
_LOW16 = np.uint64(0xFFFF)
#: most draws buffered per token (a wider model reads the rest straight from the stream)
_MAX_BUFFER = 1 << 16


@numba.njit(cache=True, inline="always")
def _draw_at(buf: np.ndarray, n: np.uint64, s: np.uint64) -> np.uint64:
    """Draw n of the token whose stream state is s: from the buffer, or computed once past its end."""
    if n < np.uint64(buf.shape[0]):
        return buf[n]
    return _mix(s + (n + _U1) * _GOLDEN)


@numba.njit(cache=True)
def _exact_unused(buf: np.ndarray, n: np.uint64, s: np.uint64, mark: np.ndarray, stamp: int, layer: int,
                  probs: np.ndarray) -> tuple[np.uint64, np.uint64]:
    """A Zipf draw among the experts not marked with `stamp` (those not yet chosen for this token and
    layer), by an exact scan: (expert, next stream position)."""
    n_exp = probs.shape[1]
    rest = 0.0
    for e in range(n_exp):
        if mark[e] != stamp:
            rest += probs[layer, e]
    u = float(_draw_at(buf, n, s) >> _S11) * _INV53 * rest
    n += _U1
    last = -1
    for e in range(n_exp):
        if mark[e] != stamp:
            last = e
            u -= probs[layer, e]
            if u < 0.0:
                return np.uint64(e), n
    return np.uint64(last), n


@numba.njit(cache=True, parallel=True)
def _route(experts: np.ndarray, requests: np.ndarray, first_token: np.ndarray, next_token: np.ndarray,
           seed: np.uint64, reuse_thr: np.uint64, cross_thr: np.uint64, probs: np.ndarray, table: np.ndarray,
           layer_map: np.ndarray) -> None:
    """Route the tokens of `requests` (each request's tokens are a chain first_token -> next_token -> -1).

    `table[layer * E + col]` packs the alias method's column: acceptance threshold << 16 | alias expert;
    `layer_map[layer * E + e]` is the expert of layer `layer` with the popularity rank of e at layer - 1.
    Indices are unsigned (no negative-index wrap-around code) and every one is an expert id this kernel
    wrote, a column < E, or a token of the schedule."""
    n_tok, n_layers, top_k = experts.shape
    n_exp = probs.shape[1]
    lk = n_layers * top_k
    flat = experts.reshape(n_tok * lk)
    size = min(2 * lk + 8, _MAX_BUFFER)  # an alias draw per slot at most, and a few rejections
    u_exp = np.uint64(n_exp)
    u_k = np.uint64(top_k)
    u_lk = np.uint64(lk)
    for i in numba.prange(requests.shape[0]):
        r = requests[i]
        buf = np.empty(size, np.uint64)
        mark = np.full(n_exp, -1, np.int64)  # mark[e] == stamp: e already chosen for this token and layer
        stamp = 0
        s = _stream_state(seed, np.uint64(_STREAM_ROUTE), np.uint64(r))
        prev = -1
        t = first_token[r]
        while t >= 0:
            z = s
            for j in range(size):
                z += _GOLDEN
                buf[j] = _mix(z)
            n = _U0
            rthr = reuse_thr if prev >= 0 else _U0  # the first token has nothing to re-use
            row = np.uint64(t) * u_lk
            prev_row = np.uint64(prev) * u_lk if prev >= 0 else row  # read but not used for the first token
            for layer in range(n_layers):
                u_layer = np.uint64(layer)
                stamp += 1
                cthr = cross_thr if layer > 0 else _U0  # layer 0 has no previous layer
                at = u_layer * u_k
                below = at - u_k if layer > 0 else at
                tab = u_layer * u_exp
                for k in range(top_k):
                    uk = np.uint64(k)
                    x = _draw_at(buf, n, s)
                    # every candidate is computed and one is selected: three data-dependent branches a slot
                    # would cost more in mispredictions than the loads
                    y = _draw_at(buf, n + _U1, s)
                    col = ((y >> _S32) * u_exp) >> _S32
                    packed = table[tab + col]
                    drawn = col if (y & _LOW32) < (packed >> _S16) else packed & _LOW16
                    reused = np.uint64(flat[prev_row + at + uk])
                    src = np.uint64(flat[row + below + uk]) if layer > 0 else _U0
                    mapped = layer_map[tab + src]
                    is_reuse = (x >> _S32) < rthr
                    is_cross = (x & _LOW32) < cthr
                    e = reused if is_reuse else (mapped if is_cross else drawn)
                    n += _U1 if (is_reuse or is_cross) else _U2
                    if mark[e] == stamp:  # taken: Zipf draws among the rest, rejection first, then exact
                        tries = 0
                        while True:
                            if tries == 32:
                                e, n = _exact_unused(buf, n, s, mark, stamp, layer, probs)
                                break
                            y = _draw_at(buf, n, s)
                            n += _U1
                            tries += 1
                            col = ((y >> _S32) * u_exp) >> _S32
                            packed = table[tab + col]
                            e = col if (y & _LOW32) < (packed >> _S16) else packed & _LOW16
                            if mark[e] != stamp:
                                break
                    mark[e] = stamp
                    flat[row + at + uk] = e
            s += n * _GOLDEN
            prev = t
            t = next_token[t]


def _threshold(p: np.ndarray | float) -> np.ndarray:
    """ceil(p * 2**32) as uint64, 0 for p <= 0: v * 2**-32 < p exactly when v < this, for 32-bit v."""
    return np.ceil(np.maximum(np.asarray(p, dtype=np.float64), 0.0) * 2.0**32).astype(np.uint64)


@intrinsic
def _float64_bits(typingctx: Any, x: Any) -> Any:
    """The IEEE bits of a float64 as a uint64 (a bit cast, no conversion)."""
    if not (isinstance(x, types.Float) and x.bitwidth == 64):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(types.float64), codegen


_MANT52 = np.uint64((1 << 52) - 1)
_DROP42 = np.uint64((1 << 42) - 1)
_HALF42 = np.uint64(1 << 41)
_S42 = np.uint64(42)
_S52 = np.uint64(52)


@numba.njit(cache=True, inline="always")
def half_bits(x: float) -> np.uint16:
    """IEEE binary16 bits of x in [0, 1], rounded to nearest even (numba has no float16 type).

    From the float64's own bits (a frexp call costs more than the rest of a gate score): the half's exponent is
    the double's rebiased, its 10-bit fraction the double's top 10 fraction bits rounded on the 42 dropped; a
    fraction that rounds up to 1024 carries into the exponent by the addition itself."""
    if x < 6.103515625e-05:  # below 2**-14: subnormal, in units of 2**-24
        return np.uint16(np.rint(x * 16777216.0))
    b = _float64_bits(x)
    mant = b & _MANT52
    h = (((b >> _S52) - np.uint64(1023 - 15)) << np.uint64(10)) | (mant >> _S42)
    dropped = mant & _DROP42
    if dropped > _HALF42 or (dropped == _HALF42 and (h & _U1) == _U1):
        h += _U1
    return np.uint16(h)


@numba.njit(cache=True, parallel=True)
def _scores(out: np.ndarray, first: int, seed: np.uint64, scale: float) -> None:
    """Gate scores (as float16 bits), descending: softmax(scale * Gumbel) over the k picks.

    exp(Gumbel) = 1 / E with E ~ Exp(1), so the scores are E_(j) ** -scale normalised, over the k Exp(1)
    values in ascending order; those come sorted from Renyi's representation
    E_(j) = sum_{i <= j} X_i / (k - i + 1), X_i ~ Exp(1), so no sort is needed."""
    n_layers = out.shape[1]
    top_k = out.shape[2]
    inv_rest = np.empty(top_k, np.float64)
    for k in range(top_k):
        inv_rest[k] = 1.0 / (top_k - k)
    for i in numba.prange(out.shape[0]):
        state = np.empty(1, np.uint64)
        state[0] = _stream_state(seed, np.uint64(_STREAM_SCORE), np.uint64(first + i))
        g = np.empty(top_k, np.float64)
        for layer in range(n_layers):
            total = 0.0
            e = 1e-300
            for k in range(top_k):
                e += -math.log(1.0 - _uniform(state)) * inv_rest[k]
                v = 1.0 / e if scale == 1.0 else e ** -scale
                g[k] = v
                total += v
            inv = 1.0 / total
            for k in range(top_k):
                out[i, layer, k] = half_bits(g[k] * inv)


@numba.njit(cache=True, parallel=True)
def _predict(experts: np.ndarray, out: np.ndarray, first: int, seed: np.uint64, accuracy: float,
             n_exp: int) -> None:
    """Each true entry kept with probability `accuracy`, else replaced by an expert outside the true set
    and not yet predicted, so the guess is k distinct experts overlapping the truth ~accuracy * k. Rows are
    tokens first, first + 1, ... (as in _scores)."""
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    for t in numba.prange(experts.shape[0]):
        state = np.empty(1, np.uint64)
        state[0] = _stream_state(seed, np.uint64(_STREAM_PRED), np.uint64(first + t))
        for layer in range(n_layers):
            replaced = 0
            for k in range(top_k):
                e = int(experts[t, layer, k])
                if _uniform(state) >= accuracy and n_exp - top_k - replaced > 0:
                    while True:
                        c = int((_next(state) >> _S11) % np.uint64(n_exp))
                        if not _chosen(experts, t, layer, top_k, c) and not _chosen(out, t, layer, k, c):
                            e = c
                            break
                    replaced += 1
                out[t, layer, k] = e


# --- driver -----------------------------------------------------------------------------------------
def _id_dtype(n_experts: int) -> type:
    """The dtype of a generated trace's ids: uint8 up to 256 experts per layer, else int16 (as `compact_ids`)."""
    return np.uint8 if n_experts <= 256 else np.int16


def _alias_table(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias method: O(1) draws from a fixed discrete distribution."""
    n = p.size
    scaled = p * n
    prob = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias


def _lengths(mean: int, jitter: float, n: int, rng: np.random.Generator, minimum: int) -> np.ndarray:
    if jitter == 0.0 or mean == 0:
        return np.full(n, mean, dtype=np.int64)
    lo, hi = mean * (1.0 - jitter), mean * (1.0 + jitter)
    return np.maximum(np.rint(rng.uniform(lo, hi, n)).astype(np.int64), minimum)


def popularity(model: ModelSpec, params: SyntheticParams) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer Zipf probabilities [L, E] and the expert of each popularity rank [L, E] for this seed."""
    rng = np.random.default_rng([params.seed, 0x5EED])
    n_layers, n_exp = model.n_moe_layers, model.n_experts
    s = params.zipf_per_layer(n_layers)
    by_rank = np.stack([rng.permutation(n_exp) for _ in range(n_layers)])
    weights = 1.0 / np.arange(1, n_exp + 1, dtype=np.float64)[None, :] ** s[:, None]
    probs = np.empty((n_layers, n_exp))
    np.put_along_axis(probs, by_rank, weights / weights.sum(axis=1, keepdims=True), axis=1)
    return probs, by_rank


#: token ids, request ids and positions are int32
MAX_TOKENS = 2**31 - 1


def available_memory() -> tuple[int, str]:
    """Bytes this machine can give a new allocation, and where the number came from."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory (os.sysconf)"
    except (OSError, ValueError, AttributeError):
        return 64 * 2**30, "a fixed cap of 64 GiB (this system reports no memory size)"


def generation_bytes(model: ModelSpec, params: SyntheticParams, n_tokens: int | None) -> tuple[int, int, int]:
    """(bytes, tokens, requests) generate() allocates at most: the arrays it sizes before it routes a token."""
    jit = params.length_jitter
    if n_tokens is None:
        n_req = params.n_requests
    else:
        shortest = max(1, math.floor(params.prompt_len * (1 - jit)) + math.floor(params.output_len * (1 - jit)))
        n_req = -(-n_tokens // shortest) + params.batch_size
    longest_prompt = max(1, math.ceil(params.prompt_len * (1 + jit)))
    longest_output = max(1, math.ceil(params.output_len * (1 + jit)))
    tokens = n_req * (longest_prompt + longest_output)
    if n_tokens is not None:
        tokens = min(tokens, n_tokens)
    passes = n_req + n_req * longest_output + 1
    slots = model.n_moe_layers * model.top_k
    id_bytes = np.dtype(_id_dtype(model.n_experts)).itemsize
    per_token = slots * (id_bytes * (1 + (params.predictor_accuracy is not None)) + 2 * params.with_scores) + 4 + 4 + 8
    per_request = 2 * 8 + 3 * 8  # lengths; first, last, decoded
    total = tokens * per_token + n_req * per_request + passes * 9 + params.batch_size * 8
    return total, tokens, n_req


def check_generation_size(model: ModelSpec, params: SyntheticParams, n_tokens: int | None, *,
                          tokens_key: str = "tokens", requests_key: str = "n_requests") -> None:
    """Refuse, before allocating anything, a trace that cannot fit this machine's memory or the int32 ids."""
    need, tokens, n_req = generation_bytes(model, params, n_tokens)
    key = tokens_key if n_tokens is not None else requests_key
    limit, source = available_memory()
    if need > limit:
        raise EmuError(f"{tokens:,} tokens of {n_req:,} requests need about {need / 1e9:,.1f} GB to generate "
                       f"but the limit is {limit / 1e9:,.1f} GB ({source}); ask for fewer tokens", key=key)
    if tokens > MAX_TOKENS or n_req > MAX_TOKENS:
        raise EmuError(f"{tokens:,} tokens of {n_req:,} requests: at most {MAX_TOKENS:,} of each fit the "
                       "trace's int32 token and request ids", key=key)


#: routed entries (tokens x layers x top-k, scores and predictions counted again) from which generate(...,
#: progress=True) shows its progress: about two seconds of one core
PROGRESS_ENTRIES = 200_000_000


def _block_count(n: int, show: bool) -> int:
    """1 (one call), or about twenty blocks of `n` work items for the progress display: each block keeps
    several items per thread, so splitting never idles a core."""
    return min(20, max(1, n // (4 * numba.get_num_threads()))) if show else 1


def _bounds(n: int, blocks: int) -> list[tuple[int, int]]:
    return [(n * i // blocks, n * (i + 1) // blocks) for i in range(blocks) if n * i // blocks < n * (i + 1) // blocks]


def generate(model: ModelSpec, params: SyntheticParams, n_tokens: int | None = None, *,
             progress: bool = False) -> RoutingTrace:
    """A synthetic trace for `model`; with `n_tokens`, exactly that many tokens (the last pass may be cut).

    `progress`: show the emulator's progress display (emu.progress) while a large trace is generated."""
    if n_tokens is not None and (isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1):
        raise EmuError(f"expected a positive integer, got {n_tokens!r}", key="tokens")
    check_generation_size(model, params, n_tokens)
    n_layers, n_exp, top_k = model.n_moe_layers, model.n_experts, model.top_k
    if n_exp > _MAX_EXPERTS:  # ids are int16, and the packed alias table keeps them in 16 bits
        raise EmuError(f"at most {_MAX_EXPERTS} experts per layer fit a trace, got {n_exp}", key="n_experts")
    probs, by_rank = popularity(model, params)
    rank_of = np.argsort(by_rank, axis=1)
    layer_map = np.zeros((n_layers, n_exp), dtype=np.uint64)
    for layer in range(1, n_layers):
        layer_map[layer] = by_rank[layer][rank_of[layer - 1]]
    tables = [_alias_table(probs[layer]) for layer in range(n_layers)]
    alias_prob = np.stack([t[0] for t in tables])
    alias_idx = np.stack([t[1] for t in tables])
    table = (_threshold(alias_prob) << np.uint64(16)) | alias_idx.astype(np.uint64)

    rng = np.random.default_rng([params.seed, 0x1E45])
    if n_tokens is None:
        n_req = params.n_requests
    else:  # a stream that keeps the batch full up to n_tokens, even if every request is as short as can be
        shortest = max(1, math.floor(params.prompt_len * (1 - params.length_jitter))
                       + math.floor(params.output_len * (1 - params.length_jitter)))
        n_req = -(-n_tokens // shortest) + params.batch_size
    prompt_lens = _lengths(params.prompt_len, params.length_jitter, n_req, rng, 1)
    output_lens = _lengths(params.output_len, params.length_jitter, n_req, rng, 1)
    total = int(prompt_lens.sum() + output_lens.sum())
    target = total if n_tokens is None else min(n_tokens, total)

    token_request, token_position, next_token, first_token, pass_offsets, pass_phase = _schedule(
        prompt_lens, output_lens, params.batch_size, target)
    seed = np.uint64(params.seed)
    requests = np.flatnonzero(first_token >= 0)  # the requests that have tokens: each its own stream
    work = target * n_layers * top_k * (1 + params.with_scores + (params.predictor_accuracy is not None))
    show = progress and work >= PROGRESS_ENTRIES
    route_blocks = _bounds(requests.size, _block_count(requests.size, show))
    token_blocks = _bounds(target, _block_count(target, show))
    steps = len(route_blocks) + len(token_blocks) * (params.with_scores + (params.predictor_accuracy is not None))
    tick = Progress(steps, label="trace", unit="blocks", enabled=show)
    # one byte an id where every id fits one: the trace is written at its final width, never widened and copied
    experts = np.empty((target, n_layers, top_k), dtype=_id_dtype(n_exp))
    for lo, hi in route_blocks:
        _route(experts, requests[lo:hi], first_token, next_token, seed, _threshold(params.reuse_prob)[()],
               _threshold(params.cross_layer_corr)[()], probs, table.ravel(), layer_map.ravel())
        tick("routing")
    del next_token

    scores = None
    if params.with_scores:
        scores = np.empty(experts.shape, dtype=np.float16)
        bits = scores.view(np.uint16)
        for lo, hi in token_blocks:
            _scores(bits[lo:hi], lo, seed, float(params.score_scale))
            tick("gate scores")
    predicted = None
    if params.predictor_accuracy is not None:
        predicted = np.empty_like(experts)
        for lo, hi in token_blocks:
            _predict(experts[lo:hi], predicted[lo:hi], lo, seed, float(params.predictor_accuracy), n_exp)
            tick("predictions")
    tick.close()

    meta = {"source": "synthetic", "generator": params.to_dict(), "n_tokens_requested": n_tokens,
            "requests_started": int(requests.size)}
    return RoutingTrace(experts=experts, pass_offsets=pass_offsets, pass_phase=pass_phase,
                        token_request=token_request, token_position=token_position, scores=scores,
                        predicted=predicted, n_experts=n_exp, model=model.name, meta=meta)


def parse_zipf(text: str | Sequence[float]) -> float | tuple[float, ...]:
    """`1.2` or `1.2,0.9,...` (one per MoE layer) as typed on the command line."""
    if not isinstance(text, str):
        return tuple(float(v) for v in text)
    parts = [p for p in text.split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise EmuError(f"expected a number or comma-separated numbers, got {text!r}", key="zipf_s") from None
    return values[0] if len(values) == 1 else values
