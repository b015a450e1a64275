"""Model shapes: what an expert weighs and how the layers are laid out.

Presets carry the real dimensions of each model's Hugging Face config (docs/models.md cites them).
Only the shapes matter to the emulator: expert bytes per precision, the number of MoE layers, experts
and top-k; compute times come from the hardware profile.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from .errors import EmuError

#: Bytes per weight. Sub-byte precisions carry one fp16 scale per group of 128 weights. Written largest first:
#: its order is the engines' (`PRECISION_ORDER`).
PRECISION_BITS: dict[str, float] = {"bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4, "int2": 2}
#: the engines' precision order after the model's own (index 0): largest first, so the last stored form is the
#: smallest (what `fetch-lowest-bit` copies); a model's `stored_precisions` is kept in this order
PRECISION_ORDER = tuple(PRECISION_BITS)
_GROUP = 128


def bytes_per_weight(precision: str) -> float:
    bits = PRECISION_BITS[precision]
    scale = 2.0 / _GROUP if bits < 8 else 0.0
    return bits / 8.0 + scale


#: the largest value each shape field accepts: far above any real MoE model (DeepSeek-V3: 58 MoE layers of 256
#: experts, hidden 7168), and small enough that the engines' per-key tables and the byte counts (int64) stay sane
MODEL_LIMITS = {"n_moe_layers": 4096, "n_experts": 32768, "top_k": 4096, "hidden": 2**20, "expert_intermediate": 2**20,
                "expert_matrices": 16, "n_shared_experts": 4096, "shared_intermediate": 2**20, "n_dense_layers": 4096,
                "non_expert_params": 10**15}
#: the most (layer, expert) keys a model may have (the cache's key space: every engine keeps tables of this size)
MAX_KEYS = 2**20


def _int_in(value: Any, lo: int, name: str) -> None:
    hi = MODEL_LIMITS[name]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise EmuError(f"expected an integer in {lo}..{hi:,}, got {value!r}", key=name)


def _positive_int(_inst: Any, attribute: attrs.Attribute, value: int) -> None:
    _int_in(value, 1, attribute.name)


def _layer_sizes(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_layer_sizes(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, tuple) or len(value) != inst.n_moe_layers or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise EmuError(f"expected a list of {inst.n_moe_layers} positive integers (bytes of one expert of each MoE "
                       f"layer), got {value!r}"[:300], key=attribute.name)


def _non_negative_int(_inst: Any, attribute: attrs.Attribute, value: int) -> None:
    _int_in(value, 0, attribute.name)


def _stored_list(value: Any) -> Any:
    """A TOML list becomes a tuple (a frozen, hashable model); anything else is left for `_check_stored` to name."""
    return tuple(value) if isinstance(value, list) else value


def _check_stored(model: ModelSpec) -> tuple[str, ...] | None:
    """`stored_precisions` validated and in `PRECISION_ORDER` (None: the key is absent). Each error names the key
    and the value at fault; the model's own precision must be listed, not implied, so a list that names only the
    degraded forms (or one written for another `precision`) is caught instead of silently completed."""
    value = model.stored_precisions
    if value is None:
        return None
    smaller = next((p for p in ("int4", "int2") if PRECISION_BITS[p] < PRECISION_BITS[model.precision]), None)
    example = "e.g. " + str([model.precision, *([smaller] if smaller else [])]).replace("'", '"')
    if not isinstance(value, tuple) or not value or not all(isinstance(p, str) for p in value):
        got = list(value) if isinstance(value, tuple) else value  # as the user wrote it (the converter made a tuple)
        raise EmuError(f"expected a non-empty list of precision names ({example}), got {got!r}"[:300],
                       key="stored_precisions")
    for p in value:
        if p not in PRECISION_BITS:
            raise EmuError(f"unknown precision {p!r}; expected each of {sorted(PRECISION_BITS)}"[:300],
                           key="stored_precisions")
    for p in value:
        if value.count(p) > 1:
            raise EmuError(f"{p!r} is listed {value.count(p)} times; list each stored form once",
                           key="stored_precisions")
    own = PRECISION_BITS[model.precision]
    for p in value:
        if PRECISION_BITS[p] > own:
            raise EmuError(f"{p!r} ({PRECISION_BITS[p]:g} bits) is above the model's precision {model.precision} "
                           f"({own:g} bits); a degraded fetch only goes down", key="stored_precisions")
    if model.precision not in value:
        raise EmuError(f"the model's own precision {model.precision!r} is not listed; a full-precision fetch copies "
                       f"it, so list it with the smaller forms the host holds ({example})", key="stored_precisions")
    return tuple(p for p in PRECISION_ORDER if p in value)


@attrs.frozen
class ModelSpec:
    """Shape of a MoE model, as the cache sees it."""

    name: str
    n_moe_layers: int = attrs.field(validator=_positive_int)
    n_experts: int = attrs.field(validator=_positive_int)
    top_k: int = attrs.field(validator=_positive_int)
    hidden: int = attrs.field(validator=_positive_int)
    expert_intermediate: int = attrs.field(validator=_positive_int)
    #: weight matrices per expert: 3 for gated (SwiGLU) FFNs, 2 for plain FFNs (Switch)
    expert_matrices: int = attrs.field(default=3, validator=_positive_int)
    n_shared_experts: int = attrs.field(default=0, validator=_non_negative_int)
    shared_intermediate: int = attrs.field(default=0, validator=_non_negative_int)
    n_dense_layers: int = attrs.field(default=0, validator=_non_negative_int)
    #: weights outside the routed experts (embeddings, attention, norms, routers, shared experts, dense FFNs)
    non_expert_params: int = attrs.field(default=0, validator=_non_negative_int)
    precision: str = "bf16"
    source: str = ""
    #: bytes of one expert of each MoE layer at `precision` (mixed quantization, e.g. from a route_trace header);
    #: None: every layer's experts weigh `expert_params` at `precision`
    layer_expert_bytes: tuple[int, ...] | None = attrs.field(default=None, converter=_layer_sizes,
                                                              validator=_check_layer_sizes)
    #: the forms of each expert the host stores (the model's own precision and any smaller ones), the only ones a
    #: degraded fetch may copy; None: every precision at or below the model's (docs/models.md)
    stored_precisions: tuple[str, ...] | None = attrs.field(default=None, converter=_stored_list)

    def __attrs_post_init__(self) -> None:
        if self.n_moe_layers * self.n_experts > MAX_KEYS:
            raise EmuError(f"{self.n_moe_layers:,} MoE layers x {self.n_experts:,} experts = "
                           f"{self.n_moe_layers * self.n_experts:,} (layer, expert) keys; expected at most "
                           f"{MAX_KEYS:,}", key="n_experts")
        if self.top_k > self.n_experts:
            raise EmuError(f"top_k {self.top_k} exceeds n_experts {self.n_experts}", key="top_k")
        if self.precision not in PRECISION_BITS:
            raise EmuError(f"unknown precision {self.precision!r}; expected one of "
                           f"{sorted(PRECISION_BITS)}", key="precision")
        # checked after `precision` (the list is judged against it); kept in the engines' order, so two spellings of
        # one set of forms are one model and the record reads the same
        object.__setattr__(self, "stored_precisions", _check_stored(self))

    @property
    def expert_params(self) -> int:
        return self.expert_matrices * self.hidden * self.expert_intermediate

    def expert_bytes(self, precision: str | None = None) -> int:
        """Bytes of one expert; with per-layer sizes, the largest layer's (what a slot must hold)."""
        if self.layer_expert_bytes is not None:
            return max(self.layer_bytes(precision))
        return math.ceil(self.expert_params * bytes_per_weight(precision or self.precision))

    def layer_bytes(self, precision: str | None = None) -> list[int]:
        """Bytes of one expert of each MoE layer at `precision`. Per-layer sizes are at the model's own
        precision; another precision scales them by its bytes per weight (rounded up)."""
        if self.layer_expert_bytes is None:
            return [self.expert_bytes(precision)] * self.n_moe_layers
        p = precision or self.precision
        if p == self.precision:
            return list(self.layer_expert_bytes)
        ratio = bytes_per_weight(p) / bytes_per_weight(self.precision)
        return [math.ceil(b * ratio) for b in self.layer_expert_bytes]

    @property
    def n_keys(self) -> int:
        """Number of (layer, expert) pairs: the cache's key space."""
        return self.n_moe_layers * self.n_experts

    @property
    def total_expert_bytes(self) -> int:
        if self.layer_expert_bytes is not None:
            return self.n_experts * sum(self.layer_expert_bytes)
        return self.n_keys * self.expert_bytes()

    def total_expert_bytes_at(self, precision: str | None = None) -> int:
        """All routed experts' bytes were they stored at `precision` (a capacity stated as a share of the model at
        another precision than its own: SpecMD's "5%" is of the bf16 model while its experts are int4)."""
        if precision is None or precision == self.precision:
            return self.total_expert_bytes
        return self.n_experts * sum(self.layer_bytes(precision))

    @property
    def non_expert_bytes(self) -> int:
        return int(self.non_expert_params * bytes_per_weight(self.precision))

    def expert_flops(self, tokens: int) -> float:
        return 2.0 * self.expert_params * tokens

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        if self.layer_expert_bytes is None:  # uniform sizes: the record a uniform model always had
            del out["layer_expert_bytes"]
        else:
            out["layer_expert_bytes"] = list(self.layer_expert_bytes)
        if self.stored_precisions is None:  # every smaller form stored: the record a model always had
            del out["stored_precisions"]
        else:
            out["stored_precisions"] = list(self.stored_precisions)
        return out


def _attn_params(hidden: int, heads: int, kv_heads: int, head_dim: int | None = None) -> int:
    head_dim = head_dim or hidden // heads
    return hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2


def _make_presets() -> dict[str, ModelSpec]:
    presets: list[ModelSpec] = []

    # allenai/OLMoE-1B-7B-0924: hidden_size 2048, intermediate_size 1024, num_hidden_layers 16,
    # num_experts 64, num_experts_per_tok 8, num_attention_heads 16, vocab_size 50304, untied embeddings.
    h, L = 2048, 16
    presets.append(ModelSpec(
        name="olmoe-1b-7b", n_moe_layers=L, n_experts=64, top_k=8, hidden=h, expert_intermediate=1024,
        non_expert_params=2 * 50304 * h + L * (_attn_params(h, 16, 16) + 64 * h),
        source="allenai/OLMoE-1B-7B-0924 config.json"))

    # mistralai/Mixtral-8x7B-v0.1: hidden_size 4096, intermediate_size 14336, num_hidden_layers 32,
    # num_local_experts 8, num_experts_per_tok 2, num_attention_heads 32, num_key_value_heads 8, vocab 32000.
    h, L = 4096, 32
    presets.append(ModelSpec(
        name="mixtral-8x7b", n_moe_layers=L, n_experts=8, top_k=2, hidden=h, expert_intermediate=14336,
        non_expert_params=2 * 32000 * h + L * (_attn_params(h, 32, 8) + 8 * h),
        source="mistralai/Mixtral-8x7B-v0.1 config.json"))

    # Qwen/Qwen1.5-MoE-A2.7B: hidden_size 2048, moe_intermediate_size 1408, num_hidden_layers 24,
    # num_experts 60, num_experts_per_tok 4, shared_expert_intermediate_size 5632, heads 16, vocab 151936.
    h, L = 2048, 24
    presets.append(ModelSpec(
        name="qwen1.5-moe-a2.7b", n_moe_layers=L, n_experts=60, top_k=4, hidden=h, expert_intermediate=1408,
        n_shared_experts=1, shared_intermediate=5632,
        non_expert_params=2 * 151936 * h + L * (_attn_params(h, 16, 16) + 60 * h + 3 * h * 5632 + h),
        source="Qwen/Qwen1.5-MoE-A2.7B config.json"))

    # microsoft/Phi-3.5-MoE-instruct: hidden_size 4096, intermediate_size 6400, num_hidden_layers 32,
    # num_local_experts 16, num_experts_per_tok 2, heads 32, kv heads 8, vocab 32064.
    h, L = 4096, 32
    presets.append(ModelSpec(
        name="phi-3.5-moe", n_moe_layers=L, n_experts=16, top_k=2, hidden=h, expert_intermediate=6400,
        non_expert_params=2 * 32064 * h + L * (_attn_params(h, 32, 8) + 16 * h),
        source="microsoft/Phi-3.5-MoE-instruct config.json"))

    # Qwen/Qwen3-30B-A3B: hidden_size 2048, moe_intermediate_size 768, num_hidden_layers 48,
    # num_experts 128, num_experts_per_tok 8, heads 32, kv heads 4, head_dim 128, vocab 151936.
    h, L = 2048, 48
    presets.append(ModelSpec(
        name="qwen3-30b-a3b", n_moe_layers=L, n_experts=128, top_k=8, hidden=h, expert_intermediate=768,
        non_expert_params=2 * 151936 * h + L * (_attn_params(h, 32, 4, 128) + 128 * h),
        source="Qwen/Qwen3-30B-A3B config.json"))

    # deepseek-ai/DeepSeek-V2-Lite: hidden_size 2048, moe_intermediate_size 1408, num_hidden_layers 27,
    # first_k_dense_replace 1 (intermediate_size 10944), n_routed_experts 64, num_experts_per_tok 6,
    # n_shared_experts 2, MLA attention (kv_lora_rank 512, 16 heads, qk 128+64, v 128), vocab 102400.
    h, L = 2048, 26
    mla = h * 16 * 192 + h * (512 + 64) + 512 * 16 * (128 + 128) + 16 * 128 * h
    presets.append(ModelSpec(
        name="deepseek-v2-lite", n_moe_layers=L, n_experts=64, top_k=6, hidden=h, expert_intermediate=1408,
        n_shared_experts=2, shared_intermediate=1408, n_dense_layers=1,
        non_expert_params=2 * 102400 * h + (L + 1) * mla + L * (64 * h + 2 * 3 * h * 1408) + 3 * h * 10944,
        source="deepseek-ai/DeepSeek-V2-Lite config.json"))

    # google/switch-base-128: d_model 768, d_ff 3072, num_experts 128, top-1 routing, 12 encoder and
    # 12 decoder layers with every second layer sparse (6 + 6 MoE layers), ReLU FFN (2 matrices), vocab 32128.
    h = 768
    presets.append(ModelSpec(
        name="switch-base-128", n_moe_layers=12, n_experts=128, top_k=1, hidden=h, expert_intermediate=3072,
        expert_matrices=2, n_dense_layers=12,
        non_expert_params=32128 * h + 24 * 4 * h * h + 12 * 4 * h * h + 12 * 2 * h * 3072 + 12 * 128 * h,
        source="google/switch-base-128 config.json"))
    return {p.name: p for p in presets}


PRESETS: dict[str, ModelSpec] = _make_presets()


def get_preset(name: str) -> ModelSpec:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise EmuError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}",
                       key="model") from None


def model_from_dict(data: dict[str, Any], *, file: str | None = None) -> ModelSpec:
    """Build a model from an inline TOML table; `preset` there starts from a preset and overrides keys."""
    fields = {f.name for f in attrs.fields(ModelSpec)}
    data = dict(data)
    base: dict[str, Any] = {}
    if "preset" in data:
        base = attrs.asdict(get_preset(str(data.pop("preset"))))
    for key in data:
        if key not in fields:
            raise EmuError(f"unknown key; expected one of {sorted(fields | {'preset'})}",
                           file=file, key=f"model.{key}")
    base.update(data)
    try:
        return ModelSpec(**base)
    except EmuError as err:
        raise EmuError(err.detail, file=file, key=f"model.{err.key}") from None
    except TypeError as err:
        raise EmuError(f"incomplete model table ({err})", file=file, key="model") from None
