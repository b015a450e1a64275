"""Real Hugging Face MoE models for the live runtime, built from their real configs (no hub access).

`build_model(preset, scale="full")` constructs the transformers class of the model with random weights
from the real config values; `scale="tiny"` keeps the routing shape (layers may be cut, experts and
top-k are real) at a hidden size small enough for CPU tests; `path=` loads local weights instead.
The real config values sit in `ARCHS` next to the emulator's `emu.models` preset that carries the
expert shape, so both sides agree on what an expert is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from emu.errors import EmuError
from emu.models import ModelSpec, get_preset

SCALES = ("tiny", "full")

#: the tiny scale: small enough that a 2-layer model runs a forward pass in milliseconds on a CPU
TINY_HIDDEN = 64
TINY_HEAD_DIM = 16
TINY_EXPERT_INTERMEDIATE = 32
TINY_DENSE_INTERMEDIATE = 64
TINY_VOCAB = 512
TINY_LAYERS = 2


@attrs.frozen
class HFArch:
    """The transformers classes of one model and the config values that the emu preset does not carry."""

    preset: str
    model_type: str
    config_class: str
    model_class: str
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float
    rms_norm_eps: float
    max_position: int
    head_dim: int | None = None
    norm_topk_prob: bool | None = None
    dense_intermediate: int | None = None  # Qwen: the dense MLP / shared expert width
    source: str = ""


ARCHS: dict[str, HFArch] = {a.preset: a for a in (
    HFArch("olmoe-1b-7b", "olmoe", "OlmoeConfig", "OlmoeForCausalLM", heads=16, kv_heads=16, vocab=50304,
           rope_theta=10000.0, rms_norm_eps=1e-5, max_position=4096, norm_topk_prob=False,
           source="allenai/OLMoE-1B-7B-0924 config.json"),
    HFArch("mixtral-8x7b", "mixtral", "MixtralConfig", "MixtralForCausalLM", heads=32, kv_heads=8, vocab=32000,
           rope_theta=1e6, rms_norm_eps=1e-5, max_position=32768,
           source="mistralai/Mixtral-8x7B-v0.1 config.json"),
    HFArch("qwen1.5-moe-a2.7b", "qwen2_moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM", heads=16, kv_heads=16,
           vocab=151936, rope_theta=1e6, rms_norm_eps=1e-6, max_position=8192, norm_topk_prob=False,
           dense_intermediate=5632, source="Qwen/Qwen1.5-MoE-A2.7B config.json"),
    HFArch("qwen3-30b-a3b", "qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", heads=32, kv_heads=4,
           vocab=151936, rope_theta=1e6, rms_norm_eps=1e-6, max_position=40960, head_dim=128,
           norm_topk_prob=True, dense_intermediate=6144, source="Qwen/Qwen3-30B-A3B config.json"),
)}


@attrs.frozen
class LiveModelShape:
    """The dimensions a live model is built with (real or scaled down)."""

    preset: str
    scale: str
    n_layers: int
    hidden: int
    expert_intermediate: int
    n_experts: int
    top_k: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    dense_intermediate: int


def supported_presets() -> tuple[str, ...]:
    return tuple(sorted(ARCHS))


def arch_for(preset: str) -> HFArch:
    if preset not in ARCHS:
        raise EmuError(f"no live model for preset {preset!r}; expected one of {list(supported_presets())}",
                       key="model")
    return ARCHS[preset]


def live_shape(preset: str, scale: str = "full", n_layers: int | None = None) -> LiveModelShape:
    """The dimensions for `preset` at `scale`; `n_layers` cuts the stack (e.g. Mixtral that does not fit)."""
    if scale not in SCALES:
        raise EmuError(f"expected one of {list(SCALES)}, got {scale!r}", key="--scale")
    arch = arch_for(preset)
    spec = get_preset(preset)
    if n_layers is not None and not 1 <= n_layers <= spec.n_moe_layers:
        raise EmuError(f"expected 1..{spec.n_moe_layers} layers for {preset}, got {n_layers}", key="--layers")
    if scale == "full":
        head_dim = arch.head_dim or spec.hidden // arch.heads
        return LiveModelShape(preset, scale, n_layers or spec.n_moe_layers, spec.hidden, spec.expert_intermediate,
                              spec.n_experts, spec.top_k, arch.heads, arch.kv_heads, head_dim, arch.vocab,
                              arch.dense_intermediate or spec.expert_intermediate)
    heads = TINY_HIDDEN // TINY_HEAD_DIM
    kv_heads = max(1, heads * arch.kv_heads // arch.heads)  # keep the real grouped-query ratio
    return LiveModelShape(preset, scale, n_layers or TINY_LAYERS, TINY_HIDDEN, TINY_EXPERT_INTERMEDIATE,
                          spec.n_experts, spec.top_k, heads, kv_heads, TINY_HEAD_DIM, TINY_VOCAB,
                          TINY_DENSE_INTERMEDIATE)


def live_spec(shape: LiveModelShape, precision: str = "bf16") -> ModelSpec:
    """The emulator's view of the model as built, so a recorded run replays on the same expert shape."""
    base = get_preset(shape.preset)
    name = shape.preset if shape.scale == "full" and shape.n_layers == base.n_moe_layers else \
        f"{shape.preset}-{shape.scale}-{shape.n_layers}l"
    return attrs.evolve(base, name=name, n_moe_layers=shape.n_layers, hidden=shape.hidden,
                        expert_intermediate=shape.expert_intermediate, precision=precision,
                        non_expert_params=0 if name != shape.preset else base.non_expert_params,
                        shared_intermediate=shape.dense_intermediate if base.n_shared_experts else 0,
                        source=f"live {shape.scale} build of {base.source}")


def hf_config(shape: LiveModelShape) -> Any:
    """The transformers config object, with every MoE layer sparse."""
    import transformers

    arch = arch_for(shape.preset)
    cls = getattr(transformers, arch.config_class)
    common: dict[str, Any] = dict(
        vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        num_experts_per_tok=shape.top_k, rms_norm_eps=arch.rms_norm_eps,
        max_position_embeddings=arch.max_position, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
    )
    if shape.scale == "tiny":
        common.update(pad_token_id=None, bos_token_id=None, eos_token_id=None)
    if arch.model_type == "olmoe":
        return cls(**common, intermediate_size=shape.expert_intermediate, num_experts=shape.n_experts,
                   norm_topk_prob=arch.norm_topk_prob)
    if arch.model_type == "mixtral":
        return cls(**common, intermediate_size=shape.expert_intermediate, num_local_experts=shape.n_experts,
                   head_dim=shape.head_dim, sliding_window=None)
    extra: dict[str, Any] = dict(intermediate_size=shape.dense_intermediate, num_experts=shape.n_experts,
                                 moe_intermediate_size=shape.expert_intermediate, decoder_sparse_step=1,
                                 mlp_only_layers=[], norm_topk_prob=arch.norm_topk_prob)
    if arch.model_type == "qwen2_moe":
        return cls(**common, **extra, shared_expert_intermediate_size=shape.dense_intermediate)
    return cls(**common, **extra, head_dim=shape.head_dim)


def _torch_dtype(name: str) -> Any:
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in dtypes:
        raise EmuError(f"expected one of {sorted(dtypes)}, got {name!r}", key="--dtype")
    return dtypes[name]


def build_model(preset: str, scale: str = "full", *, n_layers: int | None = None, dtype: str = "bf16",
                seed: int = 0, path: str | Path | None = None, experts_implementation: str | None = None) -> Any:
    """The model in eval mode on the CPU: random weights from the real config, or local weights at `path`.

    Weights stay on the CPU so the offloaded runtime can move the dense part to the GPU and keep the
    experts in host memory without ever holding the whole model in VRAM.
    """
    import torch
    import transformers

    arch = arch_for(preset)
    torch_dtype = _torch_dtype(dtype)
    if path is not None:
        return _load_local(arch, Path(path), torch_dtype, experts_implementation)
    shape = live_shape(preset, scale, n_layers)
    config = hf_config(shape)
    if experts_implementation is not None:
        config._experts_implementation = experts_implementation
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with _no_init():
            model = getattr(transformers, arch.model_class)(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(torch_dtype).eval()
    random_init(model, seed, std=float(config.initializer_range))
    return model


def _no_init() -> Any:
    """Skip torch's and transformers' own (single-threaded) initialization; `random_init` follows."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: keep its init (slow but correct), then overwrite
        import contextlib

        return contextlib.nullcontext()
    return no_init_weights()


#: elements per random chunk: the unit of parallel work and of the seed schedule
_CHUNK = 1 << 22


def random_init(model: Any, seed: int, std: float) -> None:
    """The transformers init of these models (matrices N(0, std), norms 1, biases 0, padding row 0), drawn
    in parallel chunks with one seeded generator per chunk, so any thread count gives the same weights.

    Why: torch's CPU `normal_` runs on one core; the full OLMoE (7B weights) took minutes to build.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    jobs: list[tuple[Any, int]] = []
    with torch.no_grad():
        for module in model.modules():
            for p in module.parameters(recurse=False):
                if "norm" in type(module).__name__.lower():
                    p.fill_(1.0)
                elif p.ndim == 1:
                    p.zero_()
                else:
                    flat = p.data.view(-1)
                    for start in range(0, flat.numel(), _CHUNK):
                        jobs.append((flat[start: start + _CHUNK], len(jobs)))

        def draw(job: tuple[Any, int]) -> None:
            piece, index = job
            gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
            piece.normal_(0.0, std, generator=gen)

        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            list(pool.map(draw, jobs))
        emb = model.get_input_embeddings()
        pad = getattr(model.config, "pad_token_id", None)
        if pad is not None and 0 <= pad < emb.weight.shape[0]:
            emb.weight[pad].zero_()


def _load_local(arch: HFArch, path: Path, torch_dtype: Any, experts_implementation: str | None) -> Any:
    import transformers

    if not (path / "config.json").is_file():
        raise EmuError("expected a local model directory with config.json and weights", file=str(path))
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type != arch.model_type:
        raise EmuError(f"config.json has model_type {config.model_type!r}, expected {arch.model_type!r} for "
                       f"{arch.preset}", file=str(path / "config.json"), key="model_type")
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True}
    if experts_implementation is not None:
        kwargs["experts_implementation"] = experts_implementation
    model = getattr(transformers, arch.model_class).from_pretrained(path, **kwargs)
    return model.eval()


def shape_of(model: Any, preset: str, scale: str) -> LiveModelShape:
    """The shape of a model as loaded (local weights may differ from the preset)."""
    c = model.config
    n_exp = getattr(c, "num_experts", None) or c.num_local_experts
    inter = getattr(c, "moe_intermediate_size", None) or c.intermediate_size
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return LiveModelShape(preset, scale, c.num_hidden_layers, c.hidden_size, inter, n_exp, c.num_experts_per_tok,
                          c.num_attention_heads, c.num_key_value_heads, head_dim, c.vocab_size,
                          getattr(c, "shared_expert_intermediate_size", None) or c.intermediate_size)
