"""Machine info, the printed table, the JSON file and the PNG."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from radar_ext.benchmark.aggregate import OVERALL

SCHEMA = "radar_ext.bench/1"


def machine_info() -> dict:
    import torch
    import transformers

    import radar_ext
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "radar_ext": radar_ext.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from radar_ext import ops
    info["cost_profile"] = ops.cost_profile()
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(radar_ext.__file__).parent, capture_output=True,
            text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def build_report(summary: dict, config: dict, machine: dict, records, interrupted=False,
                 settings=None) -> dict:
    return {"schema": SCHEMA, "methods": summary["methods"], "categories": summary["categories"],
            "comparisons": summary.get("comparisons", {}),
            "config": config, "machine": machine, "method_settings": settings or {},
            "interrupted": interrupted, "records": list(records)}


def write_json(report: dict, path) -> None:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def _range(cell, key, fmt):
    lo, hi = cell.get(key + "_min"), cell.get(key + "_max")
    if lo is None or cell.get("repeats", 1) < 2:
        return ""
    return f" [{format(lo, fmt)}-{format(hi, fmt)}]"


COLUMNS = ("method", "tok/s [min-max]", "decode tok/s", "vs HF [min-max]", "vs ar-fast [min-max]", "tau", "draft", "V",
           "skip (lookup)", "lookup", "policy", "exact", "n")


def table_rows(cell_by_method: dict) -> list:
    rows = []
    for m, c in cell_by_method.items():
        rows.append((m,
                     _f(c["tokens_per_s"], ".2f") + _range(c, "tokens_per_s", ".2f"),
                     _f(c.get("decode_tokens_per_s"), ".2f"),
                     (_f(c["speedup"], ".2f") + "x" if c["speedup"] is not None else "-")
                     + _range(c, "speedup", ".2f"),
                     (_f(c.get("speedup_vs_ar_fast"), ".2f") + "x" if c.get("speedup_vs_ar_fast") is not None else "-")
                     + _range(c, "speedup_vs_ar_fast", ".2f"),
                     _f(c["tau"], ".2f"), _f(c["draft_calls"], ".2f"), _f(c["verify_budget"], ".1f"),
                     "-" if c.get("skip_share") is None else f"{100 * c['skip_share']:.0f}%"
                     + ("" if not c.get("lookup_step_share") else f" ({100 * c['lookup_step_share']:.0f}%)"),
                     "-" if c.get("lookup_share") is None else f"{100 * c['lookup_share']:.0f}%",
                     "-" if c["policy_share"] is None else f"{100 * c['policy_share']:.1f}%",
                     "-" if c["exact_match"] is None else f"{100 * c['exact_match']:.0f}%",
                     str(c["answers"])))
    return rows


def format_table(summary: dict) -> str:
    """One block per category, then overall. Spread = min-max of per-repeat values."""
    blocks = []
    cats = list(summary["categories"]) + [OVERALL]
    for cat in cats:
        cells = {m: (v if cat == OVERALL else v["per_category"].get(cat)) for m, v in summary["methods"].items()}
        cells = {m: c for m, c in cells.items() if c is not None and c["answers"]}
        rows = [COLUMNS] + table_rows(cells)
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        lines = [f"== {cat} =="]
        for j, r in enumerate(rows):
            lines.append("  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(r, widths))))
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        blocks.append("\n".join(lines))
    comp = summary.get("comparisons") or {}
    if comp.get("best_opponent"):
        lines = [f"== learned vs the best training-free / grid-searched opponent ({comp['best_opponent']}): "
                 "paired per answer, geometric mean [95% interval] =="]
        for m, vs in comp.items():
            if m == "best_opponent":
                continue
            lines.append(f"{m}: " + "; ".join(f"{k} {v['ratio']:.3f} [{v['ci95'][0]:.3f}-{v['ci95'][1]:.3f}]"
                                             for k, v in vs.items() if v is not None))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot(report: dict, path) -> None:
    """Left: speedup vs the baseline per category and method (error bars: min-max over repeats).
    Right: accepted-length distribution per method (fraction of target forwards / cycles)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report["methods"]
    cats = list(report["categories"]) + [OVERALL]
    names = list(methods)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(10, 1.3 * len(cats) + 6), 4.8),
                                   gridspec_kw={"width_ratios": [max(2, len(cats) / 3), 1.4]})
    width = 0.8 / max(1, len(names))
    colors = {m: f"C{i % 10}" for i, m in enumerate(names)}  # one colour per method in both panels
    for i, m in enumerate(names):
        vals, lo, hi = [], [], []
        for c in cats:
            cell = methods[m] if c == OVERALL else methods[m]["per_category"].get(c)
            s = cell and cell.get("speedup")
            vals.append(s if s is not None else 0.0)
            lo.append(s - cell["speedup_min"] if s is not None else 0.0)
            hi.append(cell["speedup_max"] - s if s is not None else 0.0)
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(cats))]
        ax1.bar(xs, vals, width, yerr=[lo, hi], capsize=2, label=m, color=colors[m])
    ax1.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax1.set_xticks(range(len(cats)))
    ax1.set_xticklabels(cats, rotation=30, ha="right")
    ax1.set_ylabel("speedup vs ar (tokens/s ratio)")
    cfg = report.get("config", {})
    ax1.set_title(f"speedup per category (T={cfg.get('temperature')}, "
                  f"max_new_tokens={cfg.get('max_new_tokens')}, repeats={cfg.get('repeats')})", fontsize=9)
    ax1.legend(fontsize=8)
    drawn = 0
    for m in names:
        h = methods[m].get("accepted_hist") or []
        if m == "ar" or sum(h) == 0:
            continue
        n = sum(h)
        ax2.plot(range(len(h)), [c / n for c in h], marker="o", ms=3, color=colors[m],
                 label=f"{m} (tau {methods[m]['tau']:.2f})")
        drawn += 1
    ax2.set_xlabel("accepted length (draft tokens accepted per target forward)")
    ax2.set_ylabel("fraction of cycles")
    ax2.set_title("accepted-length distribution", fontsize=9)
    if drawn:
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no drafting method in this run", ha="center", va="center", transform=ax2.transAxes)
    fig.tight_layout()
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
