"""A demand copy's host price four ways, from runtime calibrations' provenance (no GPU): per model and
calibration request, the copy's own issue (the ledger's `decode.copy`), the issue plus the gates' work beyond
the all-resident request's gates spread over the copies (what `prefill_copy_s` does for the prefill), the
priced `copy_s_per_miss` (the whole request's host work beyond the all-resident request's, per copy) and the
within-request slope `copy_s_within` (each step's host work over its copies). The two estimators that subtract
another request take in whatever the host's pace did between the two requests; the spread over a model's three
requests shows how much.

    python experiments/copy_price.py validation/*/calibration/hf-*.toml
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from emu.runtime_profile import load_runtime_profile


def prices(req: dict[str, Any]) -> dict[str, float]:
    """The request's per-copy prices in seconds (NaN where the provenance lacks what one needs)."""
    nan = math.nan
    ledger = req.get("ledger", {})
    resident = (req.get("resident_request") or {}).get("ledger", {})
    issue = itemized = nan
    if "decode.copy" in ledger and ledger["decode.copy"][1]:
        seconds, copies = ledger["decode.copy"]
        issue = seconds / copies
        if "decode.gate" in ledger and "decode.gate" in resident and resident["decode.gate"][1]:
            gate_s, gates = ledger["decode.gate"]
            surplus = gate_s - gates * resident["decode.gate"][0] / resident["decode.gate"][1]
            itemized = issue + surplus / copies
    return {"issue": issue, "issue+gates": itemized, "per_miss": req.get("copy_s_per_miss", nan),
            "within": req.get("copy_s_within", nan)}


def main(paths: list[str]) -> None:
    for path in paths:
        rt = load_runtime_profile(Path(path))
        models = rt.provenance.get("models", {})
        if not models:
            continue
        print(f"## {path}")
        print("| model | request | copies | issue us | issue + gates us | per miss us | within us | priced us |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for model, prov in models.items():
            priced = rt.models[model].copy_s if model in rt.models else None
            for i, req in enumerate(prov.get("requests") or [prov]):
                p = prices(req)
                copies = req.get("ledger", {}).get("decode.copy", [0, 0])[1]
                cells = " | ".join("-" if math.isnan(v) else f"{v * 1e6:.0f}" for v in p.values())
                last = f"{priced * 1e6:.0f}" if priced is not None and i == 0 else ""
                print(f"| {model} | {i} | {copies} | {cells} | {last} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
