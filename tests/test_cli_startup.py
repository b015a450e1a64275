"""`emu --help` starts fast (issue 21): building the parser imports no numba, matplotlib, torch, rich or policy
registry, which the commands import when they run. What makes it fast is checked here; the wall time is
measured by benchmarks/bench_cli_startup.py, not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: imported by the commands, never by building the parser or printing a help text
HEAVY = ("numba", "matplotlib", "torch", "transformers", "rich", "emu.policies.registry")

_PROBE = '''
import contextlib, io, json, sys
argv = json.loads(sys.argv[1])
import emu.cli
if argv is None:
    emu.cli.build_parser()
else:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            emu.cli.main(argv)
        except SystemExit as done:
            code = done.code
        else:
            code = "returned"
    assert code == 0, (code, out.getvalue())
    assert out.getvalue().startswith("usage: emu"), out.getvalue()[:200]
heavy = json.loads(sys.argv[2])
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
'''


def _loaded_after(argv: list[str] | None, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(heavy)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [
    None,  # build_parser() only
    ["--help"],
    ["run", "--help"],
    ["policies", "--help"],
    ["trace", "--help"],
    ["trace", "gen", "--help"],
    ["trace", "import", "--help"],
    ["live", "--help"],
    ["validate", "--help"],
    ["calibrate", "--help"],
    ["sweep", "--help"],
    ["plot", "--help"],
    ["workingset", "--help"],
    ["concentration", "--help"],
], ids=lambda argv: "build_parser" if argv is None else " ".join(argv))
def test_help_imports_nothing_heavy(argv: list[str] | None) -> None:
    assert _loaded_after(argv) == []


def test_building_the_parser_imports_no_numpy() -> None:
    assert _loaded_after(None, ("numpy", "attrs", "emu.models", "emu.trace.routing_trace")) == []


def test_import_emu_trace_is_lazy() -> None:
    code = "import sys, emu.trace; print(sorted(m for m in ('numpy', 'numba') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_emu_trace_exports_every_name_as_before() -> None:
    import emu.trace
    from emu.trace import formats, inspect, jsonl, routing_trace, synthetic

    where = {"FORMATS": formats, "detect_format": formats, "import_trace": formats, "TraceSummary": inspect,
             "summarize": inspect, "import_jsonl": jsonl, "PHASE_DECODE": routing_trace,
             "PHASE_PREFILL": routing_trace, "RoutingTrace": routing_trace, "SyntheticParams": synthetic,
             "generate": synthetic}
    assert sorted(emu.trace.__all__) == sorted(where)
    for name, module in where.items():
        assert getattr(emu.trace, name) is getattr(module, name)
    assert set(emu.trace.__all__) <= set(dir(emu.trace))
    namespace: dict[str, object] = {}
    exec("from emu.trace import *", namespace)
    assert {n for n in namespace if not n.startswith("__")} == set(emu.trace.__all__)
    with pytest.raises(AttributeError):
        emu.trace.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from emu.trace import no_such_name", {})


def test_the_parser_constants_are_the_modules_own() -> None:
    """The CLI modules write out a few constants for their help texts instead of importing the heavy
    modules that define them; they must not drift apart."""
    import attrs

    from emu import plot, plot_cli
    from emu.analysis import concentration, concentration_cli, workingset, workingset_cli
    from emu.trace import cli as trace_cli
    from emu.trace import format_names, formats
    from emu.trace.synthetic import SyntheticParams

    assert formats.FORMATS is format_names.FORMATS
    for name in format_names.FORMATS:
        assert formats.normalize_format(name) == name
    assert concentration_cli.DEFAULT_COVERAGE is concentration.DEFAULT_COVERAGE  # one definition, imported
    assert workingset_cli.DEFAULT_WINDOW is workingset.DEFAULT_WINDOW
    assert plot_cli.KINDS is plot.KINDS and plot_cli.FORMATS is plot.FORMATS
    real = attrs.asdict(SyntheticParams())
    for key, value in vars(trace_cli._DEFAULTS).items():
        assert repr(value) == repr(real[key]), key


def test_live_policies_are_asked_of_the_registry_on_use() -> None:
    from emu.kernel.hooks import KINDS
    from emu.policies.registry import live_policies
    from live import cli

    assert {kind: live_policies(kind) for kind in KINDS} == cli._LIVE_POLICIES
    with pytest.raises(AttributeError):
        cli.no_such_name  # noqa: B018


def test_trace_import_help_lists_the_formats(capsys: pytest.CaptureFixture[str]) -> None:
    from emu.cli import main
    from emu.trace.formats import FORMATS

    with pytest.raises(SystemExit) as done:
        main(["trace", "import", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "input format: " + ", ".join(FORMATS) + " (default: detected)" in text


def test_a_slow_kernel_load_is_announced(capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from emu.cli import compile_notice

    with compile_notice(after_s=0.05):
        time.sleep(0.3)  # a cold numba cache: loading takes longer than the notice's delay
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("emu: compiling the numba kernels") and err[1].startswith("emu: kernels compiled in")
    with compile_notice(after_s=5.0):
        pass  # a warm cache: nothing said
    assert capsys.readouterr().err == ""
