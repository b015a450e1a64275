"""Model shapes the calibration needs beyond emu.models.ModelSpec (attention and vocabulary).

ModelSpec carries what the cache needs; timing the dense part of a layer also needs the attention
heads, and the per-pass overhead the vocabulary (for the LM head). Values are from each model's
Hugging Face config.json, the same sources models.py cites.
"""

from __future__ import annotations

from typing import Any

import attrs

from emu.errors import EmuError
from emu.models import ModelSpec, get_preset, model_from_dict


@attrs.frozen
class AttentionShape:
    heads: int
    kv_heads: int
    head_dim: int
    #: RMSNorm on queries and keys (OLMoE, Qwen3)
    qk_norm: bool
    vocab: int
    #: routing weights renormalized over the top-k (Mixtral, norm_topk_prob)
    norm_topk: bool
    #: the shared expert's output scaled by a sigmoid gate of its own (Qwen2-MoE's shared_expert_gate)
    shared_gate: bool = False


ATTENTION: dict[str, AttentionShape] = {
    # allenai/OLMoE-1B-7B-0924: 16 heads, 16 kv heads, hidden 2048, qk-norm, vocab 50304, norm_topk_prob false
    "olmoe-1b-7b": AttentionShape(16, 16, 128, True, 50304, False),
    # mistralai/Mixtral-8x7B-v0.1: 32 heads, 8 kv heads, hidden 4096, vocab 32000; top-2 renormalized
    "mixtral-8x7b": AttentionShape(32, 8, 128, False, 32000, True),
    # Qwen/Qwen1.5-MoE-A2.7B: 16 heads, 16 kv heads, hidden 2048, vocab 151936, norm_topk_prob false; the shared
    # expert gated by sigmoid(shared_expert_gate(x)) (Qwen2MoeSparseMoeBlock)
    "qwen1.5-moe-a2.7b": AttentionShape(16, 16, 128, False, 151936, False, shared_gate=True),
    # microsoft/Phi-3.5-MoE-instruct: 32 heads, 8 kv heads, hidden 4096, vocab 32064
    "phi-3.5-moe": AttentionShape(32, 8, 128, False, 32064, True),
    # Qwen/Qwen3-30B-A3B: 32 heads, 4 kv heads, head_dim 128, qk-norm, vocab 151936, norm_topk_prob true
    "qwen3-30b-a3b": AttentionShape(32, 4, 128, True, 151936, True),
    # google/switch-base-128: 12 heads of 64, vocab 32128 (top-1)
    "switch-base-128": AttentionShape(12, 12, 64, False, 32128, False),
}

_ATTENTION_KEYS = ("heads", "kv_heads", "head_dim", "qk_norm", "vocab", "norm_topk", "shared_gate")


@attrs.frozen
class CalibModel:
    spec: ModelSpec
    attention: AttentionShape

    @property
    def name(self) -> str:
        return self.spec.name


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        return text


def parse_model(arg: str) -> CalibModel:
    """`NAME` (a preset) or `NAME:key=value,...` (preset=..., ModelSpec fields, heads, kv_heads,
    head_dim, qk_norm, vocab, norm_topk, shared_gate) for a shape of one's own."""
    if ":" not in arg:
        spec = get_preset(arg)
        if spec.name not in ATTENTION:
            raise EmuError(f"no attention shape known for preset {spec.name!r}; give it as "
                           f"'{spec.name}:preset={spec.name},heads=..,kv_heads=..,head_dim=..,vocab=..'",
                           key="model")
        return CalibModel(spec, ATTENTION[spec.name])
    name, _, rest = arg.partition(":")
    fields: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise EmuError(f"expected key=value, got {item!r}", key=f"model {name}")
        fields[key.strip()] = _parse_value(value.strip())
    attn = {k: fields.pop(k) for k in _ATTENTION_KEYS if k in fields}
    base = ATTENTION.get(str(fields.get("preset", "")).lower())
    spec = model_from_dict({**fields, "name": name}, file=None)
    hidden = spec.hidden
    heads = int(attn.get("heads", base.heads if base else max(1, hidden // 128)))
    defaults = {"heads": heads, "kv_heads": base.kv_heads if base else heads,
                "head_dim": base.head_dim if base else hidden // heads,
                "qk_norm": base.qk_norm if base else False, "vocab": base.vocab if base else 32000,
                "norm_topk": base.norm_topk if base else False, "shared_gate": base.shared_gate if base else False}
    defaults.update(attn)
    for key in ("heads", "kv_heads", "head_dim", "vocab"):
        if not isinstance(defaults[key], int) or defaults[key] < 1:
            raise EmuError(f"expected a positive integer, got {defaults[key]!r}", key=f"model {name}.{key}")
    for key in ("qk_norm", "norm_topk", "shared_gate"):
        if not isinstance(defaults[key], bool):
            raise EmuError(f"expected true or false, got {defaults[key]!r}", key=f"model {name}.{key}")
    if defaults["heads"] % defaults["kv_heads"]:
        raise EmuError("heads must be a multiple of kv_heads", key=f"model {name}.kv_heads")
    return CalibModel(spec, AttentionShape(**defaults))


def floor_probe() -> CalibModel:
    """A tiny shape whose kernels cost nothing: its times are launch and sync floors."""
    spec = ModelSpec(name="floor-probe", n_moe_layers=1, n_experts=8, top_k=2, hidden=256,
                     expert_intermediate=256)
    return CalibModel(spec, AttentionShape(2, 2, 128, False, 256, False))
