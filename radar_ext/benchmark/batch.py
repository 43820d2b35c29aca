"""Batched benchmark (`radar bench --batch-size B` / `--batch-sizes 1,4,8`): the questions' first turns
run in batches of B left-padded prompts, every method on the same batches, paired in one process.

Protocol: for each B, an untimed warm-up call per method on the first batch; then per repeat and batch the
methods in a carryover-balanced order (runner.method_order), each timed as the wall time of its whole batched generate call.
tokens/s = the batch's new tokens (each row up to and including its EOS, padding after it not counted)
/ the call's seconds, summed over the batches; per-sequence latency = the mean call time (every row of a
batch is returned when the call returns). At temperature 0 every row of every method at every B is
compared with that question's single-row greedy output (`ar` at B = 1, the target's own generate).
Peak memory: the largest resident set size sampled (every 2 ms, /proc/self/statm) during the call minus
the size when it started; the allocator keeps freed pages, so it is an approximate, per-call figure.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from radar_ext.benchmark.methods import BASELINE, METHODS, BenchContext
from radar_ext.benchmark.runner import encode_chat, method_order

OWN_PLAIN = "ar-fast"


@dataclass
class BatchRecord:
    method: str
    batch_size: int
    repeat: int
    question_ids: list             # [B] the batch's questions
    seconds: float                 # wall time of the batched generate call
    new_tokens: list               # [B] each row's new tokens (up to and including its EOS)
    peak_mb: float                 # RSS growth during the call, MiB (approximate)
    stats: dict = field(default_factory=dict)  # the method's own stats (ours: tau, mean V, ...)
    answers: list = field(default_factory=list)  # [B] each row's new token ids (up to its EOS)
    exact: list | None = None      # [B] row == its single-row greedy output (T = 0), None: not checked


def left_pad(rows: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids [B, P], attention_mask [B, P]) with HF's left padding."""
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, P - len(r):] = torch.tensor(r, dtype=torch.int64)
        mask[b, P - len(r):] = 1
    return ids, mask


def row_answers(out: torch.Tensor, prompt_len: int, eos_ids: set) -> list:
    """[B, P + N] -> each row's new tokens up to and including its first EOS (HF pads after it)."""
    answers = []
    for row in out[:, prompt_len:].tolist():
        cut = next((k + 1 for k, t in enumerate(row) if t in eos_ids), len(row))
        answers.append(row[:cut])
    return answers


class _PeakRss:
    """Samples this process's resident set size in a thread while a call runs."""

    def __init__(self, period: float = 0.002):
        self.period, self.peak, self._stop = period, 0, threading.Event()
        import os
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _batches(items: list, B: int) -> list:
    return [items[i:i + B] for i in range(0, len(items), B)]


def _eos_set(eos) -> set:
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def run_batch_benchmark(ctx: BenchContext, questions, methods: list, batch_sizes: list, max_new_tokens: int,
                        temperature: float = 0.0, repeats: int = 1, warmup: bool = True, seed: int = 0,
                        log=print) -> list:
    """Every method on the questions' first turns in batches of each B; returns the BatchRecords."""
    from radar_ext.benchmark.runner import build_methods

    impl = build_methods(ctx, methods)
    prompts = [(q.question_id, encode_chat(ctx.tokenizer, [{"role": "user", "content": q.turns[0]}]))
               for q in questions]
    pad_id = ctx.pad_token_id if ctx.pad_token_id is not None else 0
    eos = _eos_set(ctx.eos_token_id)
    reference = {}  # question id -> its single-row greedy answer (T = 0)
    records = []
    for name in methods:  # methods tuned per batch size (static-gs-b) are checked before any timing
        if hasattr(impl[name], "check_batches"):
            impl[name].check_batches(batch_sizes)
    for B in sorted(batch_sizes):
        for name in methods:
            if hasattr(impl[name], "at_batch"):
                impl[name].at_batch(B)
        groups = _batches(prompts, B)
        if warmup:
            ids, mask = left_pad([p for _, p in groups[0]], pad_id)
            for name in methods:
                impl[name].generate(ids, min(8, max_new_tokens), temperature, None, attention_mask=mask)
        for r in range(repeats):
            for k, group in enumerate(groups):
                ids, mask = left_pad([p for _, p in group], pad_id)
                order = method_order(methods, r * len(groups) + k)
                for name in order:
                    g = torch.Generator().manual_seed(seed + 1000 * r + k) if temperature > 0 else None
                    with _PeakRss() as mem:
                        t0 = time.perf_counter()
                        out = impl[name].generate(ids, max_new_tokens, temperature, g, attention_mask=mask)
                        seconds = time.perf_counter() - t0
                    answers = row_answers(out, ids.shape[1], eos)
                    qids = [q for q, _ in group]
                    if temperature == 0 and name == BASELINE and B == 1:
                        reference.setdefault(qids[0], answers[0])
                    records.append(BatchRecord(name, B, r, qids, seconds, [len(a) for a in answers],
                                               mem.growth_mb, impl[name].stats(), answers))
                log(f"[bench] B={B} repeat {r + 1}/{repeats} batch {k + 1}/{len(groups)} done")
    if temperature == 0:
        _mark_exact(ctx, records, prompts, reference, max_new_tokens, eos)
    return records


def _mark_exact(ctx, records, prompts, reference, max_new_tokens, eos) -> None:
    """Compare every row with its question's single-row greedy answer (computed where B = 1 did not run)."""
    by_id = dict(prompts)
    for qid, p in by_id.items():
        if qid not in reference:
            ids = torch.tensor([p])
            out = ctx.target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False, eos_token_id=ctx.eos_token_id, pad_token_id=ctx.pad_token_id)
            reference[qid] = row_answers(out, ids.shape[1], eos)[0]
    for rec in records:
        rec.exact = [a == reference[q] for q, a in zip(rec.question_ids, rec.answers)]


def summarize(records: list, methods: list) -> dict:
    """{B: {method: tokens/s, latency, tau, mean V, peak memory, exact rows, speedups vs ar and ar-fast}}."""
    out = {}
    for B in sorted({r.batch_size for r in records}):
        cell = {}
        for m in methods:
            rs = [r for r in records if r.batch_size == B and r.method == m]
            if not rs:
                continue
            tokens, seconds = sum(sum(r.new_tokens) for r in rs), sum(r.seconds for r in rs)
            cycles = sum(r.stats.get("cycles", 0) for r in rs)
            hist = [0] * max((len(r.stats.get("accepted_hist", [])) for r in rs), default=0)
            for r in rs:
                for n, c in enumerate(r.stats.get("accepted_hist", [])):
                    hist[n] += c
            exact = [e for r in rs if r.exact is not None for e in r.exact]
            cell[m] = {
                "tokens_per_second": tokens / seconds if seconds else 0.0,
                "latency_per_sequence_s": seconds / len(rs),
                "tokens": tokens, "seconds": seconds, "calls": len(rs),
                "tau": sum((n + 1) * c for n, c in enumerate(hist)) / cycles if cycles else None,
                "mean_verify_budget": sum(r.stats.get("verify_tokens", 0.0) for r in rs) / cycles if cycles else None,
                "peak_mb": max(r.peak_mb for r in rs),
                "rows_exact": sum(exact) if exact else None, "rows_checked": len(exact),
            }
        for m, c in cell.items():
            for base in (BASELINE, OWN_PLAIN):
                b = cell.get(base)
                c[f"vs_{base}"] = c["tokens_per_second"] / b["tokens_per_second"] if b and b["tokens_per_second"] else None
        out[B] = cell
    return out


def format_batch_table(summary: dict) -> str:
    lines = [f"{'B':>3} {'method':<10} {'tok/s':>8} {'vs ar':>6} {'vs ar-fast':>10} {'lat/seq s':>9} "
             f"{'tau':>5} {'V':>5} {'peak MiB':>8} {'exact':>7}"]
    for B, cell in summary.items():
        for m, c in cell.items():
            f = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
            lines.append(f"{B:>3} {m:<10} {c['tokens_per_second']:>8.2f} {f(c['vs_ar'], '.2f'):>6} "
                         f"{f(c['vs_ar-fast'], '.2f'):>10} {c['latency_per_sequence_s']:>9.2f} {f(c['tau'], '.2f'):>5} "
                         f"{f(c['mean_verify_budget'], '.1f'):>5} {c['peak_mb']:>8.1f} "
                         f"{(str(c['rows_exact']) + '/' + str(c['rows_checked'])) if c['rows_checked'] else '-':>7}")
    return "\n".join(lines)


def plot_throughput(summary: dict, path, title: str = "") -> None:
    """Total tokens/s against the batch size, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(summary)
    methods = list(dict.fromkeys(m for cell in summary.values() for m in cell))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, m in enumerate(methods):
        xs = [B for B in sizes if m in summary[B]]
        ax.plot(xs, [summary[B][m]["tokens_per_second"] for B in xs], marker="o", label=m, color=f"C{i % 10}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(B) for B in sizes])
    ax.set_xlabel("batch size B")
    ax.set_ylabel("total tokens/s")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
