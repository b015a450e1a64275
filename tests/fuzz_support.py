"""The fuzz suite's harness: every case runs the real `emu` entry point in a worker process and must end in exit 0
with valid output or in one clean `emu: error:` line (exit 2): no traceback, no signal, no hang.

The worker is one long-lived Python process (`python -m tests.fuzz_support`) that imports the CLI and compiles (or
loads) the numba kernels once, then runs case after case in-process (`emu.cli.main(argv)` with its output
captured), so a case costs what the command costs, not an interpreter start. A case that kills the worker (a
segfault in a kernel fed an index it should never have seen) or runs past its timeout (a hang) is reported as
such with the case's arguments, and the next case gets a fresh worker.

Budget: `MOE_EMU_FUZZ` picks the hypothesis profile: unset or `ci` (30 cases per input kind, derandomized: a few
hundred in all, well under two minutes on two cores with a warm numba cache), `long` (random, 400 per kind or
MOE_EMU_FUZZ_EXAMPLES: benchmarks/fuzz_long.py), or `dev` (5 per kind). MOE_EMU_FUZZ_TALLY=FILE.json collects how
each case ended, per input kind.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "scenarios" / "profiles" / "h100-provisional.toml"

#: examples per input kind in each mode
BUDGET = {"dev": 5, "ci": 30, "long": int(os.environ.get("MOE_EMU_FUZZ_EXAMPLES", "400"))}
MODE = os.environ.get("MOE_EMU_FUZZ", "ci")
if MODE not in BUDGET:  # pragma: no cover
    raise SystemExit(f"MOE_EMU_FUZZ: expected one of {sorted(BUDGET)}, got {MODE!r}")
for _name, _n in BUDGET.items():
    settings.register_profile(f"fuzz-{_name}", max_examples=_n, deadline=None, derandomize=_name == "ci",
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.function_scoped_fixture,
                                                     HealthCheck.filter_too_much])
FUZZ = settings.get_profile(f"fuzz-{MODE}")

#: seconds one case may take before it counts as a hang (the first case of a worker also loads the kernels)
CASE_TIMEOUT_S = float(os.environ.get("MOE_EMU_FUZZ_TIMEOUT", "60"))
#: the worker's address-space cap: a case that tries to allocate more fails (MemoryError) instead of swapping
WORKER_MEMORY_BYTES = 6 * 2**30
_MARK = "\x1eFUZZ-RESULT\x1e"
#: `emu: error: ...`, or argparse's `emu run: error: ...`
_ERROR_LINE = re.compile(r"^emu( [a-z-]+)*: error: ")

#: per input kind: how many cases ran and how each ended (benchmarks/fuzz_long.py prints it)
TALLY: dict[str, Counter[str]] = {}


@attrs.frozen
class Outcome:
    code: int | None  # the exit status main() returned (or SystemExit's); None: the worker died or hung
    out: str
    err: str
    exc: str | None = None  # a traceback that escaped main()
    died: str | None = None  # "signal SIGSEGV", "timeout after 60 s", ...

    def describe(self) -> str:
        return (f"code={self.code} died={self.died}\n--- stdout ---\n{self.out[-3000:]}\n--- stderr ---\n"
                f"{self.err[-3000:]}" + (f"\n--- exception ---\n{self.exc}" if self.exc else ""))


# ---- the worker (its own process) ------------------------------------------------------------------------

def _serve() -> None:  # pragma: no cover - runs in the worker process
    import resource
    import warnings

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    with contextlib.suppress(ValueError, OSError):  # a crash reports at once instead of writing a core file first
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    results = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # stray writes to fd 1 (numba, C code) must not corrupt the result stream
    warnings.filterwarnings("ignore", message=".*First-class function type.*")
    from emu.cli import main
    from emu.engines.fast.engine import warm_up

    warm_up()
    results.write(_MARK + json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        case = json.loads(line)
        os.chdir(case["cwd"])
        if case["argv"] == ["__fuzz_signal__"]:  # the harness's own test: a case that kills the process
            os.kill(os.getpid(), signal.SIGSEGV)
        if case["argv"] == ["__fuzz_hang__"]:  # ... and one that never ends
            threading.Event().wait()
        out, err = io.StringIO(), io.StringIO()
        code: int | None = None
        exc = None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(case["argv"])
        except SystemExit as e:  # argparse: usage errors (2), --help (0)
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # anything else escaping main() is what the suite looks for
            exc = traceback.format_exc()
        results.write(_MARK + json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue(),
                                          "exc": exc}) + "\n")
        os.chdir(REPO)


# ---- the parent's side -----------------------------------------------------------------------------------

class Worker:
    """One worker process; `run(argv, cwd)` sends a case and waits for its outcome (restarting after a death)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.log: Any = None
        self._timed_out = False
        self.lock = threading.Lock()

    def _start(self) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - kept open for the worker's life
        # EMU_TRACEBACK: an exception escapes main() with its traceback instead of one `emu: internal error:` line
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, EMU_TRACEBACK="1", PYTHONPATH=path)
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz_support"], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     start_new_session=True)
        first = self._read(timeout=600.0)  # a cold numba cache compiles here
        if first is None or not first.get("ready"):
            raise RuntimeError(f"fuzz worker did not start: {self._death()}")

    def _read(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout
        self._timed_out = False
        while True:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                self._timed_out = True
                return None
            line = fd.readline()
            if not line:  # end of file: the worker has ended
                return None
            if line.startswith(_MARK):
                return json.loads(line[len(_MARK):])

    def _death(self) -> str:
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            return "no answer"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exited with {code}"

    def _stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stderr_tail(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read()[-4000:]

    def run(self, argv: list[str], cwd: Path, timeout: float = CASE_TIMEOUT_S) -> Outcome:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd)}) + "\n")
            self.proc.stdin.flush()
            result = self._read(timeout)
            if result is None:
                # the answer stopped: the worker ended (reap it) or still runs after `timeout` (a hang)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0 if self._timed_out else 10)
                hung = self.proc.poll() is None
                died = f"timeout after {timeout:g} s (a hang)" if hung else self._death()
                tail = self.stderr_tail()
                self._stop()
                return Outcome(code=None, out="", err=tail, died=died)
            return Outcome(code=result["code"], out=result["out"], err=result["err"], exc=result["exc"])

    def close(self) -> None:
        self._stop()


# ---- what a clean ending is ---------------------------------------------------------------------------------

def _no_nan(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in JSON output")
    return json.loads(text, parse_constant=refuse)


def classify(o: Outcome) -> str:
    """'ok', 'error' (a clean one-line error) or what went wrong."""
    if o.died:
        return "died"
    if o.exc:
        return "traceback"
    if "Traceback (most recent call last)" in o.err or "Traceback (most recent call last)" in o.out:
        return "traceback"
    if o.code == 0:
        return "ok"
    if o.code == 2:
        lines = [ln for ln in o.err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
        others = [ln for ln in lines if not _ERROR_LINE.match(ln)]
        if len(errors) == 1 and all(ln.startswith(("warning:", "usage:", " ", "wrote ")) for ln in others):
            return "error"
        return "messy error"
    return f"exit {o.code}"


def check(kind: str, o: Outcome, *, names: tuple[str, ...] = (), json_out: bool = False,
          records: Path | None = None) -> str:
    """Assert a clean ending; return 'ok' or 'error'. `names`: an error line must hold one of them (the file or
    option at fault); `json_out`: stdout of a success is strict JSON; `records`: run JSONs written under it must
    be strict JSON whose counters add up."""
    verdict = classify(o)
    TALLY.setdefault(kind, Counter())[verdict] += 1
    assert verdict in ("ok", "error"), f"{kind}: {verdict}\n{o.describe()}"
    if verdict == "error":
        line = next(ln for ln in o.err.splitlines() if _ERROR_LINE.match(ln))
        assert len(line) < 2000, f"{kind}: an error line of {len(line)} characters\n{o.describe()}"
        if names:
            assert any(n in line for n in names), f"{kind}: the error names none of {names}\n{o.describe()}"
        return verdict
    if json_out:
        try:
            _no_nan(o.out)
        except ValueError as err:
            raise AssertionError(f"{kind}: stdout is not strict JSON ({err})\n{o.describe()}") from None
    if records is not None:
        for path in sorted(records.rglob("*.json")):
            try:
                rec = _no_nan(path.read_text())
            except ValueError as err:
                raise AssertionError(f"{kind}: {path.name} is not strict JSON ({err})\n{o.describe()}") from None
            if isinstance(rec, dict) and "per_layer" in rec:
                check_record_counts(rec, f"{kind}: {path.name}")
    return verdict


def check_record_counts(rec: dict[str, Any], where: str) -> None:
    """The counters of a run record add up (tests/test_run_invariants.py's checks, from the record alone)."""
    from .test_run_invariants import check_counters

    model = rec["scenario"]["model"]
    check_counters(rec, model["n_moe_layers"] * model["n_experts"], f"{where} total")
    for layer in rec["per_layer"]:
        check_counters(layer, model["n_experts"], f"{where} layer {layer['layer']}")
    for key in ("copy_busy_frac", "compute_busy_frac", "cpu_busy_frac"):
        assert 0.0 <= rec[key] <= 1.0 + 1e-9, f"{where}: {key} = {rec[key]}"
    for key, value in rec.items():
        if isinstance(value, float):
            assert math.isfinite(value), f"{where}: {key} = {value}"


class CaseDir:
    """A fresh directory per case (hypothesis runs many cases per test: no pytest tmp_path per case)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def new(self) -> Path:
        self.n += 1
        path = self.root / f"case{self.n}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


def write_tally() -> None:
    """Add this run's counts to the JSON file MOE_EMU_FUZZ_TALLY names (benchmarks/fuzz_long.py reads it)."""
    path = os.environ.get("MOE_EMU_FUZZ_TALLY")
    if not path:
        return
    old = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    for kind, counts in TALLY.items():
        mine = old.setdefault(kind, {})
        for verdict, n in counts.items():
            mine[verdict] = mine.get(verdict, 0) + n
    Path(path).write_text(json.dumps(old, indent=1, sort_keys=True))


def tally_text() -> str:
    rows = [f"{kind:<22} {sum(c.values()):>6} cases: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
            for kind, c in sorted(TALLY.items())]
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    _serve()
