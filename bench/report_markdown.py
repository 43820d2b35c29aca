"""Markdown tables from a `radar bench --out` JSON: overall and per category, every method with tokens/s,
the speedup over HF generate (`ar`) and over our own plain decoding (`ar-fast`), tau, draft calls, V,
policy share and exactness, then the learned controllers paired against the best opponent. For
docs/results.md and closing notes; reads the saved report, never re-runs anything.

    python bench/report_markdown.py results/bench_t0.json [--categories]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEAD = "| method | tok/s [min-max] | vs HF | vs ar-fast | tau | draft calls | V | policy | exact |"


def _x(cell, key) -> str:
    v = cell.get(key)
    if v is None:
        return "-"
    lo, hi = cell.get(key + "_min"), cell.get(key + "_max")
    spread = f" [{lo:.2f}-{hi:.2f}]" if lo is not None and cell.get("repeats", 1) > 1 else ""
    return f"{v:.2f}x{spread}"


def row(name: str, c: dict) -> str:
    tps = f"{c['tokens_per_s']:.1f} [{c['tokens_per_s_min']:.1f}-{c['tokens_per_s_max']:.1f}]"
    f = lambda k, fmt: "-" if c.get(k) is None else format(c[k], fmt)  # noqa: E731
    exact = "-" if c.get("exact_match") is None else f"{round(c['exact_match'] * c['exact_checked'])}/{c['exact_checked']}"
    pol = "-" if c.get("policy_share") is None else f"{100 * c['policy_share']:.1f}%"
    return (f"| {name} | {tps} | {_x(c, 'speedup')} | {_x(c, 'speedup_vs_ar_fast')} | {f('tau', '.2f')} | "
            f"{f('draft_calls', '.2f')} | {f('verify_budget', '.1f')} | {pol} | {exact} |")


def tables(report: dict, categories: bool = False) -> str:
    methods = report["methods"]
    cfg = report.get("config", {})
    out = [f"T = {cfg.get('temperature')}, {cfg.get('max_new_tokens')} new tokens, {cfg.get('repeats')} repeats, "
           f"{methods[next(iter(methods))]['answers'] // max(1, cfg.get('repeats') or 1)} answers per repeat; "
           f"machine: {report.get('machine', {}).get('cpu')}, {report.get('machine', {}).get('torch_threads')} threads",
           "", "**overall**", "", HEAD, "|" + "---|" * 9]
    out += [row(m, c) for m, c in methods.items()]
    if categories:
        for cat in report["categories"]:
            out += ["", f"**{cat}**", "", HEAD, "|" + "---|" * 9]
            out += [row(m, c["per_category"][cat]) for m, c in methods.items() if cat in c["per_category"]]
    comp = report.get("comparisons") or {}
    if comp.get("best_opponent"):
        out += ["", f"Learned controllers paired per answer (geometric mean of tokens/s ratios, 95% interval); "
                    f"best opponent by overall tokens/s: `{comp['best_opponent']}`", ""]
        for m, vs in comp.items():
            if m != "best_opponent":
                out.append(f"- {m}: " + "; ".join(f"{k} {v['ratio']:.3f} [{v['ci95'][0]:.3f}-{v['ci95'][1]:.3f}]"
                                                 for k, v in vs.items() if v))
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="a `radar bench --out` JSON file")
    p.add_argument("--categories", action="store_true", help="also one table per category")
    args = p.parse_args(argv)
    try:
        report = json.loads(Path(args.report).read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"report_markdown: error: cannot read {args.report}: {e}", file=sys.stderr)
        return 2
    if not isinstance(report, dict) or "methods" not in report:
        print(f"report_markdown: error: {args.report} is not a `radar bench` report (no 'methods')", file=sys.stderr)
        return 2
    print(tables(report, args.categories))
    return 0


if __name__ == "__main__":
    sys.exit(main())
