"""`emu calibrate`: measure this machine and write a hardware profile (+ raw measurements); with `--runtime NAME`,
measure the live runtime's host costs instead and write a runtime profile (docs/calibration.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from emu.errors import EmuError

DEFAULT_MODELS = ["olmoe-1b-7b"]


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", metavar="NAME",
                   help="model preset whose expert and layer shapes to time (repeatable; default "
                        "olmoe-1b-7b), or NAME:key=value,... for a shape of one's own "
                        "(preset=, hidden=, expert_intermediate=, heads=, kv_heads=, vocab=, ...)")
    p.add_argument("--out", required=True, type=Path, metavar="PATH",
                   help="profile TOML to write; raw measurements go to <stem>.raw.json beside it")
    p.add_argument("--name", help="profile name (default: the output file's stem)")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes, token counts and repeats (about a minute)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (default) measures the GPU; cpu runs the same pipeline on the CPU (for tests)")
    p.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="repeats per figure (default 10, or 3 with --quick)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's own choice, usually all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    p.add_argument("--runtime", metavar="NAME", default=None,
                   help="write a runtime profile NAME instead: the live eager runtime's host costs per pass, layer, "
                        "readback, decision, expert launch, copy and prefetch, from calibration requests that no "
                        "validation uses (--model PRESET or PRESET@LAYERS, repeatable)")
    p.add_argument("--scale", choices=("full", "tiny"), default="full",
                   help="with --runtime: full-size models (default) or tiny ones (tests)")
    p.add_argument("--decode", choices=("eager", "static", "graph"), default="eager",
                   help="with --runtime: the live runtime's decode mode to calibrate (graph: the device-paced "
                        "decode, each pass replayed from CUDA graphs)")
    p.add_argument("--experts", choices=("eager", "fused"), default="eager",
                   help="with --runtime: the live runtime's experts kernel to calibrate (fused: the model's own "
                        "grouped GEMM, one launch per layer, its routing mapped to slots on the device)")
    p.add_argument("--profile", type=Path, default=None, metavar="PATH",
                   help="with --runtime: a hardware profile of this machine to self-check the runtime profile "
                        "against (the emulated all-resident step beside each calibration request's own)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `calibrate` on the `emu` CLI's subparsers."""
    p = subparsers.add_parser("calibrate", help="measure this GPU and write a hardware profile",
                              description=__doc__)
    _configure(p)
    p.set_defaults(func=run)
    return p


def _error(message: str) -> int:
    print(f"emu calibrate: error: {message}", file=sys.stderr)
    return 2


def _run_runtime(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        return _error("torch is not installed (pip install 'moe-emu[live]')")
    if args.device == "cuda" and not torch.cuda.is_available():
        return _error("torch sees no CUDA device; use --device cpu")
    import attrs

    from emu.runtime_profile import host_drift_warning
    from live.host_calibration import run as calibrate_runtime

    try:
        profile = calibrate_runtime(args.runtime, args.model or DEFAULT_MODELS, args.out, device=args.device,
                                    scale=args.scale, decode=args.decode, kernel=args.experts)
    except EmuError as err:
        return _error(str(err))
    unsteady = host_drift_warning(attrs.evolve(profile, source=str(args.out)))
    if unsteady is not None:
        print(f"emu calibrate: warning: {unsteady}", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.profile is not None:
        return _self_check(args.profile, profile)
    return 0


def _self_check(path: Path, runtime: Any) -> int:
    """Print, per model, the emulated all-resident step against each calibration request's own (`live.protocol.
    self_check`), with a warning beyond `SELF_CHECK_TOLERANCE`."""
    from emu.profile import load_profile
    from live.protocol import SELF_CHECKS, self_check
    from live.validation_set import SELF_CHECK_TOLERANCE, format_self_check, self_check_passes

    try:
        profile = load_profile(path)
        checks = [(batch, which, self_check(profile, runtime, batch=batch)) for _key, batch, which in SELF_CHECKS]
    except EmuError as err:
        return _error(str(err))
    for batch, which, found in checks:
        for model, errors in found.items():
            line = f"{model}{' (batch)' if batch else ''} {format_self_check(errors)}"
            if not self_check_passes(errors):
                print(f"emu calibrate: warning: self-check: {line}: the emulated {which} step is more than "
                      f"{SELF_CHECK_TOLERANCE:.0%} from the calibration's own with {path}; a part of the step is "
                      "mispriced", file=sys.stderr)
            else:
                print(f"emu calibrate: self-check: {line}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from .device import cuda_unavailable_reason

    if args.runtime is not None:
        return _run_runtime(args)
    from .shapes import parse_model

    try:
        models = tuple(parse_model(m) for m in (args.model or DEFAULT_MODELS))
        repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
        if repeats < 1:
            raise EmuError(f"expected a positive repeat count, got {repeats}", key="--repeats")
        if args.threads is not None and args.threads < 1:
            raise EmuError(f"expected a positive thread count, got {args.threads}", key="--threads")
        if args.out.suffix != ".toml":
            raise EmuError("expected a path ending in .toml", file=str(args.out), key="--out")
    except EmuError as err:
        return _error(str(err))
    if args.device == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            return _error(reason)
    else:
        try:
            import torch
        except ImportError:
            return _error("torch is not installed (pip install 'moe-emu[calibrate]')")

    from .profile_writer import copy_table_check, raw_path_for, unheld_check, write_profile
    from .runner import Settings, run_calibration

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    settings = Settings(models=models, device=args.device, quick=args.quick, repeats=repeats)
    try:
        raw = run_calibration(settings, progress=not args.no_progress)
        write_profile(raw, args.out, args.name)
    except EmuError as err:
        return _error(str(err))
    for warning in (copy_table_check(raw, str(args.out)), unheld_check(raw, str(args.out))):
        if warning is not None:
            print(f"emu calibrate: warning: {warning}", file=sys.stderr)
    print(f"wrote {args.out} and {raw_path_for(args.out)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calibrate.cli", description=__doc__)
    _configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
