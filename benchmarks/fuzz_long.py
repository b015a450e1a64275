"""The fuzz suite's long mode (issue 20, item 2): every input kind of tests/test_fuzz_inputs.py with random
(not derandomized) examples, 400 per kind by default, through the real `emu` entry point in a worker process.
Prints, per input kind, how many cases ran and how each ended: `ok` (exit 0, valid output), `error` (one clean
`emu: error:` line), or a failure (traceback, died, messy error), and pytest's verdict; exits non-zero when a
case failed (hypothesis then prints the shrunk case).

    python benchmarks/fuzz_long.py [--examples 400] [-k "npz or jsonl"] [--log fuzz.log]

CI runs the same tests in the `ci` mode (30 derandomized cases per kind); this is the longer run, for a
benchmark lease or before a release. Its cases are random: a second run draws others.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=400, help="cases per input kind (default %(default)s)")
    parser.add_argument("-k", dest="select", default="", help="pytest -k expression to pick input kinds")
    parser.add_argument("--log", help="write pytest's whole output here (the shrunk failing cases in full)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="emu-fuzz-") as tmp:
        tally = Path(tmp) / "tally.json"
        env = dict(os.environ, MOE_EMU_FUZZ="long", MOE_EMU_FUZZ_EXAMPLES=str(args.examples),
                   MOE_EMU_FUZZ_TALLY=str(tally),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz_inputs.py",
               *(["-k", args.select] if args.select else [])]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - t0
        counts = json.loads(tally.read_text()) if tally.is_file() else {}
    print(f"{'input kind':<20} {'cases':>6}  outcomes")
    total = 0
    for kind, outcomes in sorted(counts.items()):
        n = sum(outcomes.values())
        total += n
        print(f"{kind:<20} {n:>6}  " + ", ".join(f"{v} {k}" for k, v in sorted(outcomes.items())))
    print(f"{'all':<20} {total:>6}  in {elapsed:.0f} s")
    print((done.stdout.strip().splitlines() or ["(no pytest output)"])[-1])
    if done.returncode != 0:  # what failed, each line cut short (a case's bytes can be megabytes); all of it in --log
        failures = [ln[:400] for ln in done.stdout.splitlines()
                    if "AssertionError:" in ln or ln.startswith("FAILED") or "Draw " in ln]
        print("\n".join(failures[:80]), file=sys.stderr)
    if args.log:
        Path(args.log).write_text(done.stdout + done.stderr)
        print(f"pytest's output: {args.log}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
