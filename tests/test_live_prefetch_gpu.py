"""Prefetch on a GPU: copies on the copy stream submitted by the watchdog thread, CUDA events, late hits."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from live.models import build_model  # noqa: E402
from live.offload import ExpertOffload  # noqa: E402

from .live_support import logits_of_generation  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]




@pytest.mark.parametrize(("kernel", "slots"), [("eager", 24), ("fused", 128)])
def test_prefetch_on_cuda_keeps_the_logits_and_copies_every_prefetch_once(kernel: str, slots: int) -> None:
    impl = "eager" if kernel == "eager" else None
    ref = build_model("olmoe-1b-7b", "tiny", n_layers=4, dtype="fp32", seed=8, experts_implementation=impl)
    off = build_model("olmoe-1b-7b", "tiny", n_layers=4, dtype="fp32", seed=8, experts_implementation=impl)
    ref.to("cuda")
    rt = ExpertOffload(off, slots, eviction="lru", prefetch="next-layer", kernel=kernel, device="cuda")
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(4)).to("cuda")
    try:
        got = logits_of_generation(off, ids, 8, rt)
        torch.cuda.synchronize()
        deadline = time.monotonic() + 5.0
        while len(rt.watchdog) and time.monotonic() < deadline:  # queued, never needed: the watchdog's turn
            time.sleep(0.001)
        st = rt.stats()
    finally:
        rt.close()
    for a, b in zip(logits_of_generation(ref, ids, 8), got):
        assert torch.equal(a, b)
    assert st.prefetch_issued > 0 and st.prefetch_useful > 0
    assert st.copies == st.misses + st.prefetch_issued  # each prefetch submitted once (by the task or promoted)
    assert st.prefetch_promoted <= st.late_hits <= st.prefetch_useful
