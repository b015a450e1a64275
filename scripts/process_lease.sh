#!/usr/bin/env bash
# A lease's results into a committed validation dataset (docs/validation.md, "The protocol"), from the repository
# root: its parts' tarballs (validation/lease.sh's $OUT/valPART.tar.gz) extracted, joined when there are several
# (`python -m live.protocol merge`), its traces moved to validation/traces (`store`), the script it ran kept beside
# its calibration (lease_part.sh), compared with the emulator (`compare`: the first part's device calibration and
# the lease's runtime profile), the commit whose code each part ran named (scripts/source_digest.py), and its tables
# printed. SOURCES.txt, validation/bounds.toml and the docs are then written by hand.
# usage: bash scripts/process_lease.sh NAME GPU_KIND TARBALL... (NAME: a new folder under validation/, e.g.
#        2026-12-07-h100-lease20-eager; GPU_KIND: h100 or h200; the tarballs in the order their parts ran)
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: bash scripts/process_lease.sh NAME GPU_KIND TARBALL..." >&2; exit 2; fi
NAME=$1; KIND=$2; shift 2
OUT=validation/$NAME
if [ -e "$OUT" ]; then echo "$OUT: already there (a dataset is written once)" >&2; exit 2; fi
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT  # the extracted parts go whatever happens
dirs=()
for f in "$@"; do
  [ -f "$f" ] || { echo "$f: no such tarball" >&2; exit 2; }
  tar xzf "$f" -C "$WORK"
  dirs+=("$WORK/$(basename "$f" .tar.gz)")
done
if [ ${#dirs[@]} -gt 1 ]; then
  "$PY" -m live.protocol merge "${dirs[@]}" --out "$OUT"
  DEV=$OUT/calibration/dev.$(basename "${dirs[0]}").toml  # merge names each part's file after its part
else
  mkdir -p "$OUT" && cp -r "${dirs[0]}"/* "$OUT"/
  DEV=$OUT/calibration/dev.toml
fi
"$PY" -m live.protocol store "$OUT" --traces validation/traces
for f in "$OUT"/calibration/source_digest*.txt; do  # the code each part ran (leases from lease.sh's part 15 on)
  [ -f "$f" ] && echo "$(basename "$f"): $("$PY" scripts/source_digest.py --find "$(cat "$f")" || true)"
done
cp validation/lease.sh "$OUT/calibration/lease_part.sh"
RT=$(ls "$OUT"/calibration/hf-*.toml | head -1)
"$PY" -m live.protocol compare "$OUT" --profile "$DEV" --runtime "$RT" --gpu-kind "$KIND"
"$PY" -m emu.cli validate --summary "$OUT"
