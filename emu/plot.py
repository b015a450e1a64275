"""`emu plot`: pictures from a sweep CSV or run JSONs (matplotlib, the optional `plot` extra).

Four figures, each as PNG and SVG:
- knee: hit rate vs capacity, one line per policy stack, its Kneedle knee marked;
- collisions: collision misses per layer, one line per stack, one panel per capacity;
- speed: decode tok/s and TTFT vs capacity, one line per stack;
- pareto: decode tok/s vs lost routing mass, colour = stack, size = capacity, the 2-D front drawn.
One panel (or line set) per (model, trace, bandwidth) group; filter with `--where key=value`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .analysis.workingset import knee_point
from .errors import EmuError
from .plot_cli import FORMATS, KINDS  # the parser offers them; defined where building it needs no matplotlib
from .sweep import check_row, is_bound, read_csv, row_from_record
from .textio import loads, read_text

GROUP_KEYS = ("model", "trace", "bandwidth")
MAX_GROUPS = 6


def load_rows(sources: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows from sweep CSVs, run JSONs, or directories holding either (a sweep's out dir)."""
    rows: list[dict[str, Any]] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            csvs = sorted(path.glob("*.csv"))
            files = csvs or sorted(path.glob("*.json")) or sorted((path / "runs").glob("*.json"))
            if not files:
                raise EmuError("no sweep CSV or run JSON in this directory", file=str(path))
            rows += load_rows(files)
        elif path.suffix == ".csv":
            rows += read_csv(path)
        elif path.suffix == ".json":
            if not path.is_file():
                raise EmuError("run JSON not found", file=str(path))
            what = "an `emu run` or sweep result JSON"
            record = loads(read_text(path, what), str(path), what)
            try:
                row = row_from_record(record, point=len(rows))
            except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:
                raise EmuError(f"not {what} ({err.__class__.__name__}: {str(err)[:80]})", file=str(path)) from None
            rows.append(check_row(row, str(path), "record"))
        else:
            raise EmuError("expected a sweep .csv, a run .json or a directory", file=str(path))
    if not rows:
        raise EmuError("nothing to plot")
    return rows


def filter_rows(rows: list[dict[str, Any]], where: Iterable[str]) -> list[dict[str, Any]]:
    for cond in where:
        key, sep, value = cond.partition("=")
        if not sep or not key:
            raise EmuError(f"expected key=value, got {cond!r}", key="--where")
        if key not in rows[0]:
            raise EmuError(f"unknown column; expected one of {sorted(rows[0])}", key=f"--where {key}")
        rows = [r for r in rows if str(r[key]) == value or _num_eq(r[key], value)]
        if not rows:
            raise EmuError(f"no row has {key} = {value!r}", key="--where")
    return rows


def _num_eq(a: Any, b: str) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in GROUP_KEYS), []).append(r)
    if len(out) > MAX_GROUPS:
        raise EmuError(f"{len(out)} (model, trace, bandwidth) groups; plot at most {MAX_GROUPS} at once, e.g. "
                       "--where bandwidth=profile", key="--where")
    return out


def _title(key: tuple[Any, ...], n_groups: int) -> str:
    model, trace, bw = key
    trace_txt = "" if trace in ("base", "synthetic") else f", {Path(str(trace)).stem}"
    return f"{model}{trace_txt}, copy bw {bw}" if n_groups else ""


def _stacks(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["stack"] for r in rows))


def _by_stack(rows: list[dict[str, Any]], stack: str) -> list[dict[str, Any]]:
    return sorted((r for r in rows if r["stack"] == stack), key=lambda r: r["capacity_frac"])


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise EmuError("emu plot needs matplotlib: pip install 'moe-emu[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                         "svg.fonttype": "none", "svg.hashsalt": "moe-emu", "path.simplify": True})
    return plt


def _colors(stacks: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(stacks) <= 10 else "tab20")
    return {s: cmap(i % cmap.N) for i, s in enumerate(stacks)}


_MARKERS = "osv^D<>ph*"
_DASHES = ("-", "--", "-.", ":")


def _bound_stacks(rows: list[dict[str, Any]]) -> set[str]:
    """Stacks holding a policy that reads the future (offline bounds; a CSV row holds the flag as text)."""
    return {r["stack"] for r in rows if is_bound(r)}


def _style(stacks: list[str], bound: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """Colour, marker and dash per stack, so stacks with equal numbers stay visible on top of each other; an
    offline bound's label says so."""
    colors = _colors(stacks)
    return {s: {"color": colors[s], "marker": _MARKERS[i % len(_MARKERS)], "ls": _DASHES[(i // 2) % len(_DASHES)],
                "ms": 4, "label": s + (" (bound)" if s in bound else "")} for i, s in enumerate(stacks)}


def _legend(fig: Any, axes: list[Any]) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)


def _panels(plt: Any, n: int, width: float = 5.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 1.6, height * rows), squeeze=False,
                             layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _capacity_axis(ax: Any, rows: list[dict[str, Any]]) -> None:
    fracs = sorted({100 * r["capacity_frac"] for r in rows})
    if len(fracs) > 1 and fracs[-1] / fracs[0] >= 8:
        ax.set_xscale("log")
    ax.set_xticks(fracs)
    ax.set_xticklabels([f"{f:g}" for f in fracs])
    ax.minorticks_off()
    ax.set_xlabel("cache capacity (% of expert bytes)")


def plot_knee(rows: list[dict[str, Any]], plt: Any) -> Any:
    groups = _groups(rows)
    style = _style(_stacks(rows), _bound_stacks(rows))
    fig, axes = _panels(plt, len(groups))
    for ax, (key, grows) in zip(axes, groups.items()):
        for stack in _stacks(grows):
            pts = _by_stack(grows, stack)
            x = np.array([100 * r["capacity_frac"] for r in pts])
            y = np.array([100 * r["hit_rate"] for r in pts])
            ax.plot(x, y, **style[stack])
            if len(pts) >= 3 and y[-1] > y[0]:
                k = knee_point(np.maximum.accumulate(y), x) - 1
                ax.plot(x[k], y[k], marker="D", ms=10, mfc="none", mec=style[stack]["color"], mew=1.5, ls="")
        _capacity_axis(ax, grows)
        ax.set_ylabel("hit rate (%)")
        ax.set_ylim(0, 100)
        ax.set_title(_title(key, len(groups)) + "\nhit rate vs capacity (◇ knee)", fontsize=9)
    _legend(fig, axes)
    return fig


def plot_collisions(rows: list[dict[str, Any]], plt: Any) -> Any:
    groups = _groups(rows)
    if len(groups) > 1:
        raise EmuError("the collision plot takes one (model, trace, bandwidth) group; filter with --where",
                       key="--where")
    style = _style(_stacks(rows), _bound_stacks(rows))
    caps = sorted({r["capacity_frac"] for r in rows})
    fig, axes = _panels(plt, len(caps), width=4.2, height=3.2)
    for ax, cap in zip(axes, caps):
        for stack in _stacks(rows):
            for r in rows:
                if r["stack"] == stack and r["capacity_frac"] == cap:
                    per_layer = [int(v) for v in str(r["collisions_per_layer"]).split(";") if v != ""]
                    ax.plot(range(len(per_layer)), per_layer, **style[stack])
        spec = str(next(r["capacity"] for r in rows if r["capacity_frac"] == cap))
        ax.set_title(f"capacity {spec}" + ("" if spec.endswith("%") else f" ({100 * cap:.3g}%)"), fontsize=9)
        ax.set_xlabel("MoE layer")
        ax.set_ylabel("collision misses")
    _legend(fig, axes)
    fig.suptitle(f"{_title(next(iter(groups)), 1)}: collision misses per layer (evicted, then needed in the "
                 "same pass)", fontsize=10)
    return fig


def plot_speed(rows: list[dict[str, Any]], plt: Any) -> Any:
    groups = _groups(rows)
    style = _style(_stacks(rows), _bound_stacks(rows))
    fig, axes = plt.subplots(len(groups), 2, figsize=(11.6, 3.6 * len(groups)), squeeze=False,
                             layout="constrained")
    for (ax_tok, ax_ttft), (key, grows) in zip(axes, groups.items()):
        for stack in _stacks(grows):
            pts = _by_stack(grows, stack)
            x = [100 * r["capacity_frac"] for r in pts]
            ax_tok.plot(x, [r["decode_tok_s"] for r in pts], **style[stack])
            ax_ttft.plot(x, [r["ttft_ms"] for r in pts], **style[stack])
        for ax, label in ((ax_tok, "decode tokens/s"), (ax_ttft, "TTFT (ms, mean over requests)")):
            _capacity_axis(ax, grows)
            ax.set_ylabel(label)
            ax.set_title(f"{_title(key, len(groups))}: {label.split(' (')[0]}", fontsize=9)
        ax_tok.set_ylim(bottom=0)
    _legend(fig, [axes[0][0]])
    return fig


def front_2d(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (loss, speed) points no other beats (loss <= and speed >=, one strict), by loss."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in idx:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(rows: list[dict[str, Any]], plt: Any) -> Any:
    groups = _groups(rows)
    style = _style(_stacks(rows), _bound_stacks(rows))
    fig, axes = _panels(plt, len(groups), width=6.0, height=4.2)
    fracs = sorted({r["capacity_frac"] for r in rows})
    size = {f: 18 + 140 * i / max(len(fracs) - 1, 1) for i, f in enumerate(fracs)}
    for ax, (key, grows) in zip(axes, groups.items()):
        pts = [(100 * r["lost_mass_frac"], r["decode_tok_s"]) for r in grows]
        for stack in _stacks(grows):
            mine = [r for r in grows if r["stack"] == stack]
            ax.scatter([100 * r["lost_mass_frac"] for r in mine], [r["decode_tok_s"] for r in mine],
                       s=[size[r["capacity_frac"]] for r in mine], color=style[stack]["color"],
                       marker=style[stack]["marker"], alpha=0.75,
                       edgecolors="k", linewidths=0.4, label=style[stack]["label"])
        front = [pts[i] for i in front_2d(pts)]
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="k", lw=1, ls="--",
                label="Pareto front")
        for i in front_2d(pts):
            ax.annotate(str(grows[i]["capacity"]), pts[i], textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xlabel("lost routing mass (%, dropped + substituted)")
        ax.set_ylabel("decode tokens/s")
        ax.set_title(f"{_title(key, len(groups))}\nspeed vs quality (size = capacity, front labelled)", fontsize=9)
    _legend(fig, axes)
    for handle in fig.legends[0].legend_handles:
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([30])
    return fig


_PLOTTERS = {"knee": plot_knee, "collisions": plot_collisions, "speed": plot_speed, "pareto": plot_pareto}


def make_plots(rows: list[dict[str, Any]], out_dir: str | Path, kinds: Iterable[str] = KINDS,
               formats: Iterable[str] = FORMATS) -> list[Path]:
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in kinds:
        if kind not in _PLOTTERS:
            raise EmuError(f"unknown plot {kind!r}; expected some of {list(KINDS)}", key="--kind")
        fig = _PLOTTERS[kind](rows, plt)
        for fmt in formats:
            if fmt not in FORMATS:
                raise EmuError(f"unknown format {fmt!r}; expected png or svg", key="--format")
            path = out / f"{kind}.{fmt}"
            fig.savefig(path, metadata={"Date": None} if fmt == "svg" else None)
            written.append(path)
        plt.close(fig)
    return written
