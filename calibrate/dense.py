"""The dense part of one MoE layer vs tokens and context, and the fixed per-layer and per-pass costs.

Dense part, as a Llama-style decoder layer runs it in eager torch: RMSNorm (fp32, HF style), q/k/v
projections (+ q/k RMSNorm where the model has it), rotary embedding, KV-cache write, SDPA over the
cache (context + new tokens, causal lower-right for several new tokens), output projection and
residual, the post-attention RMSNorm, the router gate matmul and, where the model has them, the
shared experts (Qwen2-MoE's scaled by a sigmoid gate of its own). `context` is the number of tokens already in the
KV cache before the pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .bench import Bench, rotation_count
from .compute import ffn, make_expert_weights, round_robin
from .fit import spread
from .shapes import CalibModel


def context_lengths(quick: bool) -> list[int]:
    return [128, 1024] if quick else [128, 512, 1024, 2048, 4096]


def dense_token_counts(quick: bool) -> list[int]:
    if quick:
        return [1, 16, 256]
    return [2 ** i for i in range(13)]


def rms_norm(torch: Any, x: Any, weight: Any, eps: float = 1e-6) -> Any:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate_half(torch: Any, x: Any) -> Any:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Attention:
    """SDPA over the KV cache; several new tokens use causal lower-right masking.

    Strategies, the first that runs is kept: the CausalBias fast path with native GQA; the same
    with K/V heads repeated (HF's repeat_kv); an explicit boolean mask. `kind` records which.
    """

    STRATEGIES = ("lower_right_gqa", "lower_right_repeat_kv", "explicit_mask_repeat_kv")

    def __init__(self, torch: Any, gqa: bool) -> None:
        self.torch = torch
        self.gqa = gqa
        self.kind = self.STRATEGIES[0] if gqa else "lower_right"
        self._masks: dict[tuple[int, int], Any] = {}

    def _repeat(self, q: Any, x: Any) -> Any:
        return x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) if x.shape[1] != q.shape[1] else x

    def _run(self, kind: str, q: Any, k: Any, v: Any) -> Any:
        f = self.torch.nn.functional
        t, s = q.shape[-2], k.shape[-2]
        if kind in ("lower_right", "lower_right_gqa"):
            from torch.nn.attention.bias import causal_lower_right

            kwargs = {"enable_gqa": True} if self.gqa else {}
            return f.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(t, s), **kwargs)
        k, v = self._repeat(q, k), self._repeat(q, v)
        if kind == "lower_right_repeat_kv":
            from torch.nn.attention.bias import causal_lower_right

            return f.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(t, s))
        mask = self._masks.get((t, s))
        if mask is None:
            mask = self.torch.ones(t, s, dtype=self.torch.bool, device=q.device).tril(s - t)
            self._masks[(t, s)] = mask
        return f.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def __call__(self, q: Any, k: Any, v: Any) -> Any:
        if q.shape[-2] == 1:
            kwargs = {"enable_gqa": True} if self.gqa else {}
            return self.torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
        while True:
            try:
                return self._run(self.kind, q, k, v)
            except Exception:
                order = list(self.STRATEGIES)
                if self.kind not in order or self.kind == order[-1]:
                    if self.kind == "lower_right":
                        self.kind = order[-1]
                        continue
                    raise
                self.kind = order[order.index(self.kind) + 1]


def _layer_weights(bench: Bench, model: CalibModel) -> dict[str, Any]:
    spec, a = model.spec, model.attention
    h, qd, kvd = spec.hidden, a.heads * a.head_dim, a.kv_heads * a.head_dim
    s = 0.02
    w: dict[str, Any] = {
        "ln1": bench.randn(h), "ln2": bench.randn(h),
        "wq": bench.randn(qd, h, scale=s),
        "wk": bench.randn(kvd, h, scale=s), "wv": bench.randn(kvd, h, scale=s),
        "wo": bench.randn(h, qd, scale=s), "router": bench.randn(spec.n_experts, h, scale=s),
    }
    if a.qk_norm:
        w["qn"], w["kn"] = bench.randn(qd), bench.randn(kvd)
    if spec.n_shared_experts and spec.shared_intermediate:
        w["shared"] = make_expert_weights(bench, spec, bench.torch.bfloat16,
                                          spec.n_shared_experts * spec.shared_intermediate)
        if a.shared_gate:
            w["shared_gate"] = bench.randn(1, h, scale=s)
    return w


def _layer_bytes(model: CalibModel) -> int:
    spec, a = model.spec, model.attention
    h = spec.hidden
    n = h * (2 * a.heads * a.head_dim + 2 * a.kv_heads * a.head_dim + spec.n_experts)
    n += spec.expert_matrices * h * spec.n_shared_experts * spec.shared_intermediate
    n += h if a.shared_gate and spec.n_shared_experts else 0
    return 2 * n


def measure_dense(bench: Bench, model: CalibModel, tokens: list[int], contexts: list[int], repeats: int,
                  rotate_bytes: int, tick: Callable[[str], None]) -> dict[str, Any]:
    torch = bench.torch
    spec, a = model.spec, model.attention
    n_rot = rotation_count(_layer_bytes(model), rotate_bytes, cap=16)
    layers = [_layer_weights(bench, model) for _ in range(n_rot)]
    max_kv = max(contexts) + max(tokens)
    caches = [tuple(bench.randn(1, a.kv_heads, max_kv, a.head_dim) for _ in range(2)) for _ in range(n_rot)]
    attention = _Attention(torch, a.heads != a.kv_heads)
    x_all = bench.randn(max(tokens), spec.hidden)
    angles = torch.rand(max(tokens), a.head_dim, device=bench.device)
    cos_all, sin_all = angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16)
    f = torch.nn.functional

    def make_call(t: int, c: int) -> Callable[[int], Any]:
        x, cos, sin = x_all[:t], cos_all[:t], sin_all[:t]

        def call(i: int) -> Any:
            w = layers[i % n_rot]
            ck, cv = caches[i % n_rot]
            hn = rms_norm(torch, x, w["ln1"])
            q, k, v = f.linear(hn, w["wq"]), f.linear(hn, w["wk"]), f.linear(hn, w["wv"])
            if a.qk_norm:
                q, k = rms_norm(torch, q, w["qn"]), rms_norm(torch, k, w["kn"])
            q = q.view(t, a.heads, a.head_dim).transpose(0, 1).unsqueeze(0)
            k = k.view(t, a.kv_heads, a.head_dim).transpose(0, 1).unsqueeze(0)
            v = v.view(t, a.kv_heads, a.head_dim).transpose(0, 1).unsqueeze(0)
            q = q * cos + _rotate_half(torch, q) * sin
            k = k * cos + _rotate_half(torch, k) * sin
            ck[:, :, c:c + t].copy_(k)
            cv[:, :, c:c + t].copy_(v)
            o = attention(q, ck[:, :, :c + t], cv[:, :, :c + t])
            o = o.squeeze(0).transpose(0, 1).reshape(t, a.heads * a.head_dim)
            y = x + f.linear(o, w["wo"])
            h2 = rms_norm(torch, y, w["ln2"])
            logits = f.linear(h2, w["router"])
            if "shared_gate" in w:  # Qwen2-MoE: the shared expert scaled by a sigmoid gate of its own
                y = y + torch.sigmoid(f.linear(h2, w["shared_gate"])) * ffn(torch, h2, w["shared"])
            elif "shared" in w:
                y = y + ffn(torch, h2, w["shared"])
            return y, logits

        return call

    calls = max(n_rot, 4) if bench.is_cuda else n_rot
    fns = []
    for t in tokens:
        for c in contexts:
            fn = make_call(t, c)
            bench.time_loop(fn, max(2, min(calls, 3)))
            fns.append(((t, c), fn))
    res = round_robin(bench, fns, repeats, calls, tick, f"dense {model.name}")
    grid = [[res[(t, c)] for c in contexts] for t in tokens]
    out: dict[str, Any] = {
        "tokens": tokens, "context": contexts,
        "seconds": [[p["median_s"] for p in row] for row in grid],
        "samples_s": [[p["samples_s"] for p in row] for row in grid],
        "host_s": [[p["host_s"] for p in row] for row in grid],
        "rotation": n_rot, "attention": attention.kind,
    }
    if bench.is_cuda:
        out["device_seconds"] = [[p["device_median_s"] for p in row] for row in grid]
        out["device_s"] = [[p["device_s"] for p in row] for row in grid]
        out["held"] = all(p["held"] for row in grid for p in row)
        out["held_grid"] = [[p["held"] for p in row] for row in grid]
    return out


def measure_layer_overhead(bench: Bench, model: CalibModel, repeats: int) -> dict[str, Any]:
    """Routing glue of one decode-step MoE layer, host-observed: softmax and top-k of the router
    logits, the readback of the chosen expert ids to the host (an offloading runtime must know them
    to look up its cache; this synchronizes the stream), the output buffer and the residual add."""
    torch = bench.torch
    spec, a = model.spec, model.attention
    logits = bench.randn(1, spec.n_experts)
    x = bench.randn(1, spec.hidden)

    def call(i: int) -> Any:
        probs = torch.softmax(logits.float(), dim=-1)
        w, ids = torch.topk(probs, spec.top_k, dim=-1)
        if a.norm_topk:
            w = w / w.sum(dim=-1, keepdim=True)
        w = w.to(x.dtype)
        needed = sorted(set(ids.cpu().flatten().tolist()))
        out = torch.zeros_like(x)
        return x + out, needed

    bench.wall(call, 5)
    samples = bench.wall(call, max(20, 5 * repeats))
    return {"samples_s": samples, "median_s": spread(samples).median}


def measure_pass_overhead(bench: Bench, model: CalibModel, repeats: int, rotate_bytes: int) -> dict[str, Any]:
    """What one decode pass costs outside its layers, host-observed: the token id to the device,
    embedding lookup, final RMSNorm, LM head for one token, argmax and the readback of the next token."""
    torch = bench.torch
    spec, a = model.spec, model.attention
    f = torch.nn.functional
    head_bytes = 2 * a.vocab * spec.hidden
    n_rot = rotation_count(head_bytes, rotate_bytes, cap=8)
    weights = [(bench.randn(a.vocab, spec.hidden), bench.randn(a.vocab, spec.hidden, scale=0.02),
                bench.randn(spec.hidden)) for _ in range(n_rot)]
    ids = torch.tensor([[a.vocab // 2]], dtype=torch.long)
    if bench.is_cuda:
        ids = ids.pin_memory()

    def call(i: int) -> Any:
        emb, head, norm = weights[i % n_rot]
        x = f.embedding(ids.to(bench.device, non_blocking=True), emb)
        logits = f.linear(rms_norm(torch, x, norm), head)
        return int(logits.argmax(-1).item())

    bench.wall(call, 3)
    samples = bench.wall(call, max(20, 5 * repeats))
    return {"samples_s": samples, "median_s": spread(samples).median, "rotation": n_rot,
            "vocab": a.vocab}
