"""Where a device-paced decode step's host time goes, from a runtime calibration's provenance (no GPU, no cost
priced): per model and calibration request, the all-resident request's median step and its host items per step
(the ledger's `decode.*` seconds over the steps), the diagnostic parts of those items (`decode_parts_s`: the graph
replays, the placement's waits, the bookkeeping after a layer's launch) and the hardware profile's device time of
the same step, to see which host parts the device waits for.

    python experiments/host_parts.py validation/<dataset>/calibration/hf-graph-fused.toml
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from emu.runtime_profile import load_runtime_profile


def main(path: str) -> None:
    rt = load_runtime_profile(Path(path))
    for model, prov in rt.provenance.get("models", {}).items():
        print(f"## {model} ({prov.get('n_layers')} layers)")
        for i, req in enumerate(prov.get("requests") or [prov]):
            for name in ("resident_request", "resident_prefetch_request"):
                r = req.get(name)
                if not r:
                    continue
                steps = len(r["decode_step_s"])
                items = {k.split(".", 1)[1]: v[0] / steps * 1e6 for k, v in r["ledger"].items()
                         if k.startswith("decode.")}
                parts = {k: v * 1e6 for k, v in r.get("decode_parts_s", {}).items()}
                span = statistics.median(r["decode_host_span_s"]) * 1e6
                wait = sum(r["decode_step_wait_s"]) / steps * 1e6
                print(f"  request {i} {name}: median step {statistics.median(r['decode_step_s']) * 1e6:.0f} us, "
                      f"host span {span:.0f} us (readback waits {wait:.0f})")
                print("    items per step (us): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(items.items())))
                if parts:
                    print("    parts per step (us): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(parts.items())))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
