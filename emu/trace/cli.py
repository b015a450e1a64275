"""`emu trace {gen,import,inspect,fit,audit}`: `add_parser` and `run`, wired into emu/cli.py."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from ..errors import EmuError
from .format_names import FORMATS

if TYPE_CHECKING:
    from ..models import ModelSpec
    from .routing_trace import RoutingTrace

#: `SyntheticParams()`'s defaults for `trace gen`'s flags, written out so that building the parser imports
#: neither numpy nor numba (tests/test_cli_startup.py checks they are the class's)
_DEFAULTS = SimpleNamespace(seed=0, zipf_s=1.0, reuse_prob=0.3, cross_layer_corr=0.3, prompt_len=128,
                            output_len=512, length_jitter=0.0, n_requests=8, batch_size=1, score_scale=1.0)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `trace` and its sub-commands on the top-level parser's subparsers."""
    trace = subparsers.add_parser("trace", help="generate, import and inspect routing traces",
                                  description="Routing traces (.npz, schema in docs/traces.md).")
    sub = trace.add_subparsers(dest="trace_command", metavar="{gen,import,inspect,fit,audit}")
    sub.required = True

    gen = sub.add_parser("gen", help="seeded synthetic trace",
                         description="Synthetic trace: Zipf popularity, temporal reuse, cross-layer "
                                     "correlation, continuous batching.")
    gen.add_argument("--model", required=True, help="model preset name")
    gen.add_argument("--tokens", type=int, default=None,
                     help="exactly this many tokens (default: all tokens of --requests requests)")
    gen.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="same seed, same trace (default %(default)s)")
    gen.add_argument("--out", required=True, type=Path, help="output .npz")
    gen.add_argument("--zipf-s", default=str(_DEFAULTS.zipf_s),
                     help="Zipf exponent of expert popularity, or one per MoE layer comma-separated "
                          "(default %(default)s)")
    gen.add_argument("--reuse-prob", type=float, default=_DEFAULTS.reuse_prob,
                     help="probability a slot re-uses the previous token's expert (default %(default)s)")
    gen.add_argument("--cross-layer-corr", type=float, default=_DEFAULTS.cross_layer_corr,
                     help="probability a slot follows the fixed map from the previous layer's expert "
                          "(default %(default)s)")
    gen.add_argument("--prompt-len", type=int, default=_DEFAULTS.prompt_len,
                     help="prompt tokens per request (one prefill pass); 0 = decode only (default %(default)s)")
    gen.add_argument("--output-len", type=int, default=_DEFAULTS.output_len,
                     help="decode tokens per request (default %(default)s)")
    gen.add_argument("--length-jitter", type=float, default=_DEFAULTS.length_jitter,
                     help="lengths uniform within +- this fraction (default %(default)s)")
    gen.add_argument("--requests", type=int, default=_DEFAULTS.n_requests, dest="n_requests",
                     help="requests when --tokens is not given (default %(default)s)")
    gen.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size,
                     help="most requests decoding at once (continuous batching) (default %(default)s)")
    gen.add_argument("--scores", action="store_true", help="add float16 gate scores")
    gen.add_argument("--score-scale", type=float, default=_DEFAULTS.score_scale,
                     help="gate sharpness (larger: more mass on the top-1 expert) (default %(default)s)")
    gen.add_argument("--predictor-accuracy", type=float, default=None,
                     help="add speculator predictions right with this probability per entry")

    imp = sub.add_parser("import", help="routing trace (JSONL, route_trace CSV, onnx-genai, vLLM, SGLang, "
                                        "Parquet) to .npz",
                         description="Import a routing trace; the format is detected from the content and the "
                                     "extension unless --format names it (docs/traces.md, one section each).")
    imp.add_argument("file", type=Path, help="trace file (formats in docs/traces.md)")
    imp.add_argument("--format", default=None, metavar="NAME",
                     help="input format: " + ", ".join(FORMATS) + " (default: detected)")
    imp.add_argument("--model", default=None, help="model preset the trace must fit")
    imp.add_argument("--out", required=True, type=Path, help="output .npz")
    imp.add_argument("--strict", action="store_true",
                     help="JSONL only: error on any token with missing layers (default: drop a cut-off tail)")
    imp.add_argument("--allow-degenerate", action="store_true",
                     help="import a degenerate capture (identical routing over a whole pass, or every decode "
                          "token of a request) with a warning instead of an error (not JSONL)")

    ins = sub.add_parser("inspect", help="tokens, passes, requests, per-layer skew and reuse")
    ins.add_argument("file", type=Path, help=".npz trace")
    ins.add_argument("--json", action="store_true", help="print the summary as JSON")

    fit = sub.add_parser("fit", help="fit synthetic generator parameters to a real trace",
                         description="Per-layer zipf_s, reuse_prob and cross_layer_corr such that generated "
                                     "traces match the real trace's per-layer popularity (selection entropy or "
                                     "top-expert share), reuse rate and cross-layer partner excess; then a "
                                     "report of real vs generated miss curves, reuse distances and popularity "
                                     "(docs/analysis.md).")
    fit.add_argument("file", type=Path, help="real trace: .npz, or any file `emu trace import` reads")
    fit.add_argument("--model", default=None,
                     help="model preset or model TOML (a scenario's [model] table, or the table alone) the trace "
                          "belongs to (default: the trace's own shape: layers, experts, top-k)")
    fit.add_argument("--out", required=True, type=Path, help="output PARAMS.toml ([workload.synthetic] + [fit])")
    fit.add_argument("--max-tokens", type=int, default=None,
                     help="fit on the first N tokens (default: all, at most 50,000)")
    fit.add_argument("--report", type=Path, default=None, metavar="FILE.md",
                     help="also write the fit quality report (real vs generated) as Markdown")
    fit.add_argument("--seeds", type=int, default=5,
                     help="generated traces the quality report compares with the real one (default %(default)s)")
    fit.add_argument("--format", default=None, metavar="NAME", help="input format of a file that is not .npz")
    fit.add_argument("--popularity", default="entropy", choices=("entropy", "top-share"),
                     help="per-layer popularity statistic zipf_s is fitted on: the entropy of the selection shares "
                          "(the whole ranked distribution) or the top expert's share (default %(default)s)")

    aud = sub.add_parser("audit", help="policy failure or working-set failure? miss-ratio curves, predictor "
                                       "ceilings, reuse, batch union",
                         description="Exact LRU and Belady (OPT) miss-ratio curves per layer, a static hot set, "
                                     "the hit ceilings of predictor families, reuse distances, concentration, "
                                     "the batch union and cross-layer co-activation of a trace, before any "
                                     "timing (docs/traces.md).")
    aud.add_argument("file", type=Path, help=".npz trace, or any file `emu trace import` reads")
    aud.add_argument("--model", default=None,
                     help="model preset or model TOML the trace must fit (layers, experts); sizes for --capacity")
    aud.add_argument("--capacity", action="append", default=[], metavar="CAP",
                     help="slots per layer to report: 8, 25%%, total=N or a size (0.6GB, needs --model); repeat "
                          "or comma-separate (default: top-k and 1/8, 1/4, 1/2, 3/4 of the experts)")
    aud.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="also write the report as Markdown")
    aud.add_argument("--plots", type=Path, default=None, metavar="DIR",
                     help="write miss-ratio, reuse-distance and batch-union plots (PNG, matplotlib) here")
    aud.add_argument("--format", default=None, metavar="NAME", help="input format of a file that is not .npz")
    trace.set_defaults(func=run)
    return trace


def run(args: argparse.Namespace) -> int:
    """Run one `trace` sub-command; bad input raises EmuError for the caller to print as one line."""
    from ..models import get_preset
    from ..tables import format_for
    from .formats import detect_format, import_trace, normalize_format
    from .inspect import render, summarize
    from .jsonl import import_jsonl
    from .routing_trace import RoutingTrace
    from .synthetic import SyntheticParams, check_generation_size, generate, parse_zipf

    cmd = args.trace_command
    if cmd == "gen":
        model = get_preset(args.model)
        params = SyntheticParams(
            zipf_s=parse_zipf(args.zipf_s), reuse_prob=args.reuse_prob,
            cross_layer_corr=args.cross_layer_corr,
            prompt_len=args.prompt_len, output_len=args.output_len, length_jitter=args.length_jitter,
            n_requests=args.n_requests, batch_size=args.batch_size, seed=args.seed, with_scores=args.scores,
            score_scale=args.score_scale, predictor_accuracy=args.predictor_accuracy)
        if args.tokens is not None and args.tokens < 1:
            raise EmuError(f"expected a positive integer, got {args.tokens}", key="--tokens")
        check_generation_size(model, params, args.tokens, tokens_key="--tokens", requests_key="--requests")
        t0 = time.perf_counter()
        trace = generate(model, params, n_tokens=args.tokens, progress=True)
        elapsed = time.perf_counter() - t0
        _save(trace, args.out)
        print(f"wrote {args.out}: {trace.n_tokens:,} tokens, {trace.n_passes:,} passes, "
              f"{trace.n_requests:,} requests in {elapsed:.2f} s (fingerprint {trace.fingerprint()})")
        return 0
    if cmd == "import":
        model = get_preset(args.model) if args.model else None
        fmt = normalize_format(args.format) if args.format else detect_format(args.file)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if fmt == "jsonl":
                trace = import_jsonl(args.file, model, strict=args.strict)
            else:
                trace = import_trace(args.file, model, fmt=fmt, allow_degenerate=args.allow_degenerate,
                                     strict=args.strict)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        _save(trace, args.out)
        print(f"wrote {args.out}: {trace.n_tokens:,} tokens, {trace.n_passes:,} passes, "
              f"{trace.n_requests:,} requests, {trace.n_layers} layers, top-{trace.top_k} "
              f"(fingerprint {trace.fingerprint()})")
        return 0
    if cmd == "inspect":
        summary = summarize(RoutingTrace.load(args.file))
        print(json.dumps(summary.to_dict(), indent=2) if args.json else render(summary, fmt=format_for(sys.stdout)))
        return 0
    if cmd == "fit":
        return _fit(args)
    if cmd == "audit":
        return _audit(args)
    raise EmuError(f"unknown trace command {cmd!r}; expected gen, import, inspect, fit or audit", key="trace")


def load_any(path: Path, model: ModelSpec | None = None, fmt: str | None = None) -> RoutingTrace:
    """A moe-emu .npz trace, or any format `emu trace import` reads (imported in memory, warnings on stderr)."""
    from .formats import detect_format, import_trace, normalize_format
    from .jsonl import import_jsonl
    from .routing_trace import RoutingTrace

    if fmt is None and path.suffix == ".npz" and _is_emu_npz(path):
        trace = RoutingTrace.load(path)
    else:
        name = normalize_format(fmt) if fmt else detect_format(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trace = import_jsonl(path, model) if name == "jsonl" else import_trace(path, model, fmt=name)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    return trace


def _is_emu_npz(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return "header.npy" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return True  # RoutingTrace.load says what is wrong with it


def _check_shape(trace: RoutingTrace, model: ModelSpec, file: str) -> None:
    """Layers and experts must match the model; a different top-k is a warning (a capture may force a lower
    k than the model's, as the route_trace importer records)."""
    if trace.n_layers != model.n_moe_layers:
        raise EmuError(f"trace has {trace.n_layers} MoE layers but {model.name} has {model.n_moe_layers}",
                       file=file, key="--model")
    n_exp = trace.n_experts or int(trace.experts.max()) + 1
    if n_exp > model.n_experts or (trace.n_experts and trace.n_experts != model.n_experts):
        raise EmuError(f"trace has {n_exp} experts per layer but {model.name} has {model.n_experts}",
                       file=file, key="--model")
    if trace.top_k != model.top_k:
        print(f"warning: {file}: trace routes top-{trace.top_k}, {model.name} top-{model.top_k}; auditing the "
              "trace's own routing", file=sys.stderr)


def _fit(args: argparse.Namespace) -> int:
    from ..tables import format_for
    from .fit import MAX_FIT_TOKENS, describe, fit, params_toml
    from .fit_report import quality
    from .fit_report import render as render_quality
    from .modelarg import load_model

    model = load_model(args.model) if args.model else None
    max_tokens = args.max_tokens if args.max_tokens is not None else MAX_FIT_TOKENS
    if max_tokens < 2:
        raise EmuError(f"expected at least 2 tokens, got {max_tokens}", key="--max-tokens")
    if args.seeds < 2:
        raise EmuError(f"expected at least 2 seeds (the noise floor compares two), got {args.seeds}", key="--seeds")
    if args.out.suffix != ".toml":
        raise EmuError("expected an output path ending in .toml", file=str(args.out), key="--out")
    trace = load_any(args.file, None, args.format)
    result = fit(trace, model, max_tokens=max_tokens, file=str(args.file), popularity=args.popularity)
    report = quality(trace, result, seeds=args.seeds, source=str(args.file))
    assert result.model is not None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(params_toml(result, str(args.file), result.model, report.to_dict()))
    print(describe(result))
    print()
    print(render_quality(report, fmt=format_for(sys.stdout)))
    print(f"wrote {args.out}")
    if args.report is not None:
        try:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(f"# Fit of {args.file.name}\n\n{describe(result)}\n\n"
                                   f"{render_quality(report, markdown=True)}\n")
        except OSError as err:
            raise EmuError(f"cannot write ({err.strerror})", file=str(args.report), key="--report") from None
        print(f"wrote {args.report}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from ..tables import format_for
    from .audit import audit, plot, render
    from .modelarg import load_model

    model = load_model(args.model) if args.model else None
    trace = load_any(args.file, None, args.format)
    file = str(args.file)
    if model is not None:
        _check_shape(trace, model, file)
    slots = None
    specs = [s.strip() for text in args.capacity for s in text.split(",") if s.strip()]
    if specs:
        from ..analysis.workingset import slots_per_layer
        from .keystream import n_experts_of

        n_exp = n_experts_of(trace)
        slots = [slots_per_layer(s, trace.n_layers, n_exp, model.expert_bytes() if model else None) for s in specs]
    report = audit(trace, slots=slots, source=file)
    print(render(report, fmt=format_for(sys.stdout)))
    if args.markdown is not None:
        try:
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(render(report, markdown=True))
        except OSError as err:
            raise EmuError(f"cannot write ({err.strerror})", file=str(args.markdown), key="--markdown") from None
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.plots is not None:
        for path in plot(report, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _save(trace: RoutingTrace, out: Path) -> None:
    if out.suffix != ".npz":
        raise EmuError("expected an output path ending in .npz", file=str(out), key="--out")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        trace.save(out)
    except OSError as err:
        raise EmuError(f"cannot write ({err.strerror})", file=str(out), key="--out") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emu")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except EmuError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
