"""One digest of the code a validation lease runs, so that a dataset can say which commit produced it.

The GPU machine gets a copy of the working tree without its git history: a lease (validation/lease.sh) writes
this digest beside its calibration, and `scripts/process_lease.sh` looks for the commit whose tree gives the same
digest (none: the machine ran changes that were never committed as such).

    python scripts/source_digest.py [--root DIR]          # the digest of DIR's code (default: this checkout)
    python scripts/source_digest.py --find DIGEST [--commits N]  # the newest of the last N commits with it

The code is every .py file under emu/, live/ and calibrate/, with pyproject.toml, validation/lease.sh and
validation/matrix.toml: each file's path relative to the root and its bytes, in path order.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("emu", "live", "calibrate")
FILES = ("pyproject.toml", "validation/lease.sh", "validation/matrix.toml")


def digest(root: Path) -> str:
    paths = sorted(
        [p for pkg in PACKAGES for p in (root / pkg).rglob("*.py") if "__pycache__" not in p.parts]
        + [root / f for f in FILES if (root / f).is_file()])
    h = hashlib.sha256()
    for p in paths:
        rel = p.relative_to(root).as_posix().encode()
        data = p.read_bytes()
        h.update(len(rel).to_bytes(4, "little") + rel + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def commit_digest(rev: str) -> str:
    """The digest of the code in commit `rev` of this checkout."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", "--format=tar", rev, "--", *PACKAGES, *FILES], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        tar_path = Path(tmp) / "code.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(Path(tmp) / "tree", filter="data")
        return digest(Path(tmp) / "tree")


def find(target: str, commits: int) -> str | None:
    revs = subprocess.run(["git", "rev-list", f"--max-count={commits}", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.split()
    return next((rev for rev in revs if commit_digest(rev) == target), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--find", metavar="DIGEST", help="print the newest commit whose code has this digest")
    ap.add_argument("--commits", type=int, default=40, help="how many commits back --find looks (default 40)")
    args = ap.parse_args()
    if args.find is None:
        print(digest(args.root.resolve()))
        return 0
    rev = find(args.find.strip(), args.commits)
    if rev is None:
        print(f"no commit of the last {args.commits} has this code: the machine ran uncommitted changes")
        return 1
    print(subprocess.run(["git", "log", "-1", "--format=%h %s", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
