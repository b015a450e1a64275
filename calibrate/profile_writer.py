"""Derive a hardware profile (docs/profiles.md) from raw measurements, and write both to disk."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from emu.errors import EmuError
from emu.profile import copy_table_warning

from .fit import fit_latency_bandwidth, spread
from .toml_emit import dumps_toml

SCHEMA = "moe-emu/profile/1"
#: two H2D streams count as two engines when together they move this many times one stream's bytes
ENGINES_THRESHOLD = 1.5
#: H2D and D2H count as overlapping when running both takes at most 1/this of running them in turn
OVERLAP_THRESHOLD = 1.5


def _fit(points: list[dict[str, Any]]) -> Any:
    return fit_latency_bandwidth([p["bytes"] for p in points], [p["median_s"] for p in points])


def _table(points: list[dict[str, Any]], x_key: str) -> tuple[list[int], list[float], list[float]]:
    xs = [int(p[x_key]) for p in points]
    meds = [float(p["median_s"]) for p in points]
    rel = [spread(p["samples_s"]).rel_spread for p in points]
    return xs, meds, rel


def _round(x: float, digits: int = 4) -> float:
    """Figures keep 4 significant digits: the run-to-run spread is far larger than that."""
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def _rounded(values: list[Any]) -> list[Any]:
    return [_rounded(v) if isinstance(v, list) else _round(float(v)) for v in values]


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    """Keep the TOML-writable scalar facts (drop None)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, bool | int | str):
            out[k] = v
        elif isinstance(v, float):
            out[k] = _round(v)
    return out


def copy_table_check(raw: dict[str, Any], where: str) -> str | None:
    """`emu.profile.copy_table_warning` of a calibration's raw measurements (its pinned copy points, its
    sustained run)."""
    points = [(int(p["bytes"]), float(p["median_s"])) for p in raw.get("copies", {}).get("h2d_pinned", [])]
    return copy_table_warning(points, raw.get("sustained"), where)


def unheld_points(raw: dict[str, Any]) -> list[str]:
    """The device-timed table points whose hold ran out before the host had queued its calls (after the retries
    of `calibrate.compute.held_sample`): their device time holds some of the host's gaps."""
    out = []
    for name, m in raw.get("models", {}).items():
        for table, key in (("expert_bf16", "tokens"), ("fused_bf16", "tokens")):
            out += [f"{name} {table.split('_')[0]} at {p[key]}" for p in m.get(table) or []
                    if "device_median_s" in p and not p.get("held")]
        d = m.get("dense") or {}
        if "device_seconds" in d:
            grid = d.get("held_grid") or [[d.get("held", False)] * len(d["context"]) for _ in d["tokens"]]
            out += [f"{name} dense at {t} tokens, context {c}" for t, row in zip(d["tokens"], grid)
                    for c, held in zip(d["context"], row) if not held]
    return out


def unheld_check(raw: dict[str, Any], where: str) -> str | None:
    """A warning naming the table points timed without the device held, or None."""
    points = unheld_points(raw)
    if not points:
        return None
    return (f"{where}: the host needed longer than the device's hold for {len(points)} table point(s) "
            f"({'; '.join(points[:6])}{'; ...' if len(points) > 6 else ''}): their device times hold some of the "
            "host's launch gaps and may be long; calibrate again on a quieter host")


def build_profile(raw: dict[str, Any], name: str) -> dict[str, Any]:
    copies = raw["copies"]
    fits = {kind: _fit(points) for kind, points in copies.items()}
    h2d = fits["h2d_pinned"]
    table_bytes, table_s, table_rel = _table(copies["h2d_pinned"], "bytes")
    conc = raw.get("concurrency")

    copy: dict[str, Any] = {
        "h2d_engines": 1,
        "latency_s": _round(h2d.latency_s),
        "bw_pinned_Bps": _round(h2d.bw_Bps),
        "bw_pageable_Bps": _round(fits["h2d_pageable"].bw_Bps),
        "d2h_bw_pinned_Bps": _round(fits["d2h_pinned"].bw_Bps),
    }
    if conc is not None:
        copy["h2d_engines"] = 2 if conc["h2d_effective_engines"] >= ENGINES_THRESHOLD else 1
        copy["h2d_d2h_overlap"] = bool(conc["h2d_d2h_overlap_ratio"] >= OVERLAP_THRESHOLD)
    copy["table_bytes"] = table_bytes
    copy["table_s"] = _rounded(table_s)
    sustained = raw.get("sustained")
    if sustained is not None:
        copy["sustained_ratio"] = _round(sustained["ratio"])

    ceil, floors = raw["ceilings"], raw["floors"]
    cpu_rates = []
    for m in raw["models"].values():
        flops_per_token = 2.0 * m["shape"]["expert_matrices"] * m["shape"]["hidden"] * m["shape"][
            "expert_intermediate"]
        cpu_rates += [flops_per_token * p["tokens"] / p["median_s"] for p in m["cpu_expert_bf16"]]
    compute: dict[str, Any] = {
        "expert_launch_s": _round(floors["expert"][0]["median_s"]),
        "hbm_Bps": _round(ceil["hbm_Bps"]),
        "flops_per_s": _round(ceil["flops_per_s"]),
        "dense_layer_s": _round(floors["dense"]["seconds"][0][0]),
        "pass_overhead_s": _round(floors["pass_overhead"]["median_s"]),
        "layer_overhead_s": _round(floors["layer_overhead"]["median_s"]),
    }
    if cpu_rates:
        compute["cpu_flops_per_s"] = _round(max(cpu_rates))

    models: dict[str, Any] = {}
    spread_models: dict[str, Any] = {}
    unfused: list[str] = []  # models whose fused table could not be measured, and why
    for mname, m in raw["models"].items():
        et, es, erel = _table(m["expert_bf16"], "tokens")
        ct, cs, crel = _table(m["cpu_expert_bf16"], "tokens")
        d = m["dense"]
        # the device's own time wherever it was measured behind a hold (the host's launches queued ahead): a
        # runtime's host cost is its runtime profile's (emu calibrate --runtime), not the device's. A point whose
        # hold ran out is still the device's time plus the host's gaps, never above the host's pace: it stays,
        # named by `unheld_check`
        device_expert = all("device_median_s" in p for p in m["expert_bf16"])
        if device_expert:
            es = [float(p["device_median_s"]) for p in m["expert_bf16"]]
        dense_s = d["device_seconds"] if "device_seconds" in d else d["seconds"]
        models[mname] = {
            "pass_overhead_s": _round(m["pass_overhead"]["median_s"]),
            # the routing glue's host-observed time (a readback, a sync) is a runtime's readback and decisions
            # where the expert and dense tables are the device's: 0 then (kept in provenance.overheads_host)
            "layer_overhead_s": 0.0 if device_expert else _round(m["layer_overhead"]["median_s"]),
            "expert": {"bf16": {"tokens": et, "seconds": _rounded(es)}},
            "dense": {"tokens": list(d["tokens"]), "context": list(d["context"]),
                      "seconds": _rounded(dense_s)},
        }
        if len(ct) >= 1:
            models[mname]["cpu_expert"] = {"bf16": {"tokens": ct, "seconds": _rounded(cs)}}
        fused = m.get("fused_bf16") or []
        if fused:  # a layer's experts as one grouped GEMM, the device's own time where it was held
            fk, fs, _ = _table(fused, "tokens")
            if all("device_median_s" in p for p in fused):
                fs = [float(p["device_median_s"]) for p in fused]
            models[mname]["fused"] = {"bf16": {"experts": fk, "seconds": _rounded(fs)}}
        else:
            why = m.get("fused_bf16_error") or "no grouped GEMM in this torch"
            unfused.append(f"{mname}'s fused layer (one grouped GEMM): {why}")
        spread_models[mname] = {
            "expert_bf16_rel": _rounded(erel),
            "dense_rel": [[_round(spread(s).rel_spread) for s in row] for row in d["samples_s"]],
            "cpu_expert_bf16_rel": _rounded(crel),
            "pass_overhead_rel": _round(spread(m["pass_overhead"]["samples_s"]).rel_spread),
            "layer_overhead_rel": _round(spread(m["layer_overhead"]["samples_s"]).rel_spread),
        }

    provenance = _provenance(raw, fits, table_rel, spread_models, ceil, floors)
    if unfused:
        provenance["not_measured"] = [*provenance.get("not_measured", []), *unfused]
    return {"schema": SCHEMA, "name": name, "provisional": False, "provenance": provenance,
            "copy": copy, "compute": compute, "models": models}


def _provenance(raw: dict[str, Any], fits: dict[str, Any], table_rel: list[float],
                spread_models: dict[str, Any], ceil: dict[str, Any],
                floors: dict[str, Any]) -> dict[str, Any]:
    settings = raw["settings"]
    prov: dict[str, Any] = {
        "date": raw["date"],
        "tool": "emu calibrate",
        "method_version": raw["method_version"],
        "device_kind": settings["device"],
        "quick": settings["quick"],
        "repeats": settings["repeats"],
        "copy_repeats_max": raw["copy_plan"]["repeats"],
        "elapsed_s": _round(raw.get("elapsed_s", 0.0)),
        "raw": "measurements in the .raw.json beside this file",
        "device": _scalars(raw["device"]),
    }
    for key in ("clocks_start", "clocks_end"):
        if key in raw:
            prov[key] = _scalars(raw[key])
    prov["copy_fits"] = {kind: _scalars(f.to_dict()) for kind, f in fits.items()}
    pageable = raw["copies"]["h2d_pageable"][-1]
    prov["pageable_host_blocked_fraction"] = _round(
        spread(pageable["issue_s"]).median / spread(pageable["samples_s"]).median)
    pinned = raw["copies"]["h2d_pinned"]
    prov["pinned_issue_s"] = _round(spread(pinned[0]["issue_s"]).median)
    prov["pinned_batched_s"] = _rounded([p["batched_s"] for p in pinned])
    if all("paced_s" in p for p in pinned):
        prov["pinned_paced_s"] = _rounded([spread(p["paced_s"]).median for p in pinned])
        prov["pinned_held"] = all(p.get("held", False) for p in pinned)
    if raw["settings"]["device"].startswith("cuda"):
        prov["sm_clock_after_mhz"] = {n: m["clocks_after"].get("sm_clock_mhz") or 0
                                      for n, m in raw["models"].items() if "clocks_after" in m}
    sustained = raw.get("sustained")
    if sustained is not None:
        prov["sustained_copies"] = {k: (_round(v) if isinstance(v, float) else v) for k, v in sustained.items()
                                    if not isinstance(v, list)}
    conc = raw.get("concurrency")
    if conc is not None:
        prov["concurrency"] = {k: (_round(v) if isinstance(v, float) else v) for k, v in conc.items()
                               if not isinstance(v, dict)}
        prov["concurrency"]["kernels"] = {n: _scalars(k) for n, k in conc["kernels"].items()}
    else:
        prov["concurrency"] = {"measured": False, "why": "no streams or copy engines on the CPU"}
    prov["ceilings"] = {"hbm_copy_bytes": ceil["copy_bytes"], "matmul_n": ceil["matmul_n"]}
    prov["floors"] = {"shape": "floor-probe: hidden 256, intermediate 256, 2 heads of 128, vocab 256",
                      "attention": floors["dense"]["attention"]}
    prov["spread"] = {
        "note": "rel = (p90 - p10) / median over repeats of each figure",
        "copy_table_rel": _rounded(table_rel),
        "hbm_rel": _round(ceil["hbm_rel_spread"]),
        "flops_rel": _round(ceil["flops_rel_spread"]),
        "models": spread_models,
    }
    prov["attention"] = {n: m["dense"]["attention"] for n, m in raw["models"].items()}
    prov["cpu_expert_fp32"] = {
        n: {"tokens": [p["tokens"] for p in m["cpu_expert_fp32"]],
            "seconds": _rounded([p["median_s"] for p in m["cpu_expert_fp32"]])}
        for n, m in raw["models"].items()}
    if all("device_median_s" in p for m in raw["models"].values() for p in m["expert_bf16"]):
        prov["expert_bf16_device"] = {
            n: {"tokens": [p["tokens"] for p in m["expert_bf16"]],
                "seconds": _rounded([p["device_median_s"] for p in m["expert_bf16"]]),
                "held": all(p["held"] for p in m["expert_bf16"])}
            for n, m in raw["models"].items()}
        prov["dense_device"] = {
            n: {"seconds": _rounded(m["dense"]["device_seconds"]), "held": m["dense"]["held"]}
            for n, m in raw["models"].items()}
    prov["expert_bf16_paced"] = {
        n: {"tokens": [p["tokens"] for p in m["expert_bf16"]],
            "seconds": _rounded([p["median_s"] for p in m["expert_bf16"]])}
        for n, m in raw["models"].items()}
    prov["dense_paced"] = {n: {"seconds": _rounded(m["dense"]["seconds"])} for n, m in raw["models"].items()}
    prov["overheads_host"] = {n: {"layer_overhead_s": _round(m["layer_overhead"]["median_s"]),
                                  "pass_overhead_s": _round(m["pass_overhead"]["median_s"])}
                              for n, m in raw["models"].items()}
    prov["expert_bf16_host"] = {
        n: {"tokens": [p["tokens"] for p in m["expert_bf16"]],
            "seconds": _rounded([spread(p["host_s"]).median for p in m["expert_bf16"]])}
        for n, m in raw["models"].items()}
    prov["expert_bf16_bare"] = {
        n: {"tokens": [p["tokens"] for p in m["expert_bf16_bare"]],
            "seconds": _rounded([p["median_s"] for p in m["expert_bf16_bare"]])}
        for n, m in raw["models"].items()}
    prov["methods"] = [
        "copies: pinned per-copy time from an event pair around each copy, queued behind a sleep kernel "
        "so the copy engine alone is timed; pageable copies block the host and are timed unheld",
        "expert and dense tables: the device's own time, an event pair around calls queued behind a sleep "
        "kernel (the host's launches hidden; a sample whose hold ran out taken again with a longer hold, the "
        "points that still ran out listed in `unheld`) on a CUDA device; else the steady pace of "
        "back-to-back eager calls. The paced figures are in *_paced; a runtime's host costs are a runtime "
        "profile's (emu calibrate --runtime)",
        "overheads: host wall time with a synchronize before and after, floors on a tiny shape; with device "
        "tables the per-layer routing glue (a readback) is left to the runtime profile: layer_overhead_s = 0, "
        "the measured figure in overheads_host",
        "every table point is sampled in rounds over all points; figures are medians",
    ]
    unheld = unheld_points(raw)
    if unheld:
        prov["unheld"] = unheld
    prov["not_measured"] = ["int8/fp8/int4 expert kernels (only bf16)",
                            "dense (non-MoE) FFN layers of models that have them"]
    return prov


def raw_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".raw.json")


def _compact(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else x
    if isinstance(x, list):
        return [_compact(v) for v in x]
    if isinstance(x, dict):
        return {k: _compact(v) for k, v in x.items()}
    return x


def write_profile(raw: dict[str, Any], out: Path, name: str | None = None) -> dict[str, Any]:
    """Write `out` (TOML profile) and `<stem>.raw.json` beside it; returns the profile dict."""
    if out.suffix != ".toml":
        raise EmuError("expected a .toml output path", file=str(out), key="--out")
    profile = build_profile(raw, name or out.stem)
    text = dumps_toml(profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    raw_path_for(out).write_text(json.dumps(_compact(raw), indent=1) + "\n")
    return profile
