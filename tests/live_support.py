"""Shared by the live-runtime tests: greedy generation that keeps every pass's logits."""

from __future__ import annotations

from typing import Any


def logits_of_generation(model: Any, ids: Any, n_decode: int, runtime: Any = None) -> list[Any]:
    """Logits of the prefill and of each greedy decode step (a runtime, if given, sees each pass begin)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out, x = [], ids
    with torch.no_grad():
        for _ in range(n_decode + 1):
            if runtime is not None:
                runtime.begin_pass()
            logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits
            out.append(logits)
            x = logits[:, -1:].argmax(-1)
    return out
