"""Shared by the live-runtime tests: greedy generation that keeps every pass's logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

#: the lockstep runs (H100, live runtime calibrated in lockstep with them: a diagnostic, docs/validation.md)
LOCKSTEP = Path(__file__).resolve().parents[1] / "validation" / "lockstep"


def copy_files(src: Path, dest: Path, names: tuple[str, ...]) -> None:
    """Copy files of a lockstep folder into `dest`; a run record brings its trace (stored once by fingerprint
    in the dataset) beside it, where `live.validate.load_live_run` looks first."""
    for name in names:
        shutil.copy(src / name, dest / name)
        if name.endswith(".json"):
            rec = json.loads((src / name).read_text())
            trace = rec.get("trace") if isinstance(rec, dict) else None
            if isinstance(trace, str) and trace.endswith(".npz"):
                shutil.copy(src / trace, dest / Path(trace).name)


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


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Two shared cores: torch's thread pool only adds contention for the tiny models of the live tests (a test
    module imports this fixture to have it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
