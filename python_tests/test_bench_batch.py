"""The batched benchmark (`radar bench --batch-size B` / `--batch-sizes`): left padding, per-row answers cut at
EOS, every row checked against its single-row greedy output, the summary's ratios, the plot, the CLI's errors."""
import json

import pytest
import torch

from radar_ext.benchmark import BenchOptions
from radar_ext.benchmark.batch import (format_batch_table, left_pad, plot_throughput, row_answers,
                                       run_batch_benchmark, summarize)
from radar_ext.benchmark.questions import Question
from radar_ext.commands.bench import parse_batch_sizes, resolve_methods
from test_bench import TinyChatTokenizer, tiny_ctx  # noqa: F401  (tiny_ctx: the same module fixture)




QS = [Question(i, "writing", (text,)) for i, text in
      enumerate(["hello there hello there", "one two one two one two", "abc", "a much longer question, twice: "
                 "a much longer question", "x y z x y z"])]


def test_left_pad_and_row_answers():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    out = torch.tensor([[5, 6, 7, 9, 2, 0], [0, 0, 8, 4, 4, 4]])
    assert row_answers(out, 3, {2}) == [[9, 2], [4, 4, 4]]


def test_batched_methods_are_exact_and_summarized(tiny_ctx, tmp_path):
    methods = ["ar", "ar-fast", "ngram"]
    records = run_batch_benchmark(tiny_ctx, QS, methods, [1, 2, 4], max_new_tokens=10, repeats=1, log=lambda s: None)
    # per B: ceil(5 / B) batches per method
    assert len(records) == (5 + 3 + 2) * len(methods)
    for r in records:
        assert r.exact is not None and all(r.exact), (r.method, r.batch_size, r.question_ids, r.answers)
        assert len(r.new_tokens) == len(r.question_ids) and all(1 <= n <= 10 for n in r.new_tokens)
    summary = summarize(records, methods)
    assert list(summary) == [1, 2, 4]
    for B, cell in summary.items():
        assert cell["ar"]["vs_ar"] == pytest.approx(1.0) and cell["ar-fast"]["vs_ar-fast"] == pytest.approx(1.0)
        assert cell["ngram"]["rows_exact"] == cell["ngram"]["rows_checked"] == 5
        assert cell["ngram"]["tau"] >= 1.0 and cell["ar"]["tau"] is None
        assert cell["ar"]["tokens"] == cell["ngram"]["tokens"]  # same answers, same token counts
    table = format_batch_table(summary)
    assert table.count("\n") == 3 * len(methods)
    plot_throughput(summary, tmp_path / "b.png", "tiny")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_batch_size_arguments():
    assert parse_batch_sizes(None, None) == []
    assert parse_batch_sizes(4, None) == [4]
    assert parse_batch_sizes(None, "8,1,4,4") == [1, 4, 8]
    with pytest.raises(ValueError, match="not both"):
        parse_batch_sizes(2, "1,2")
    with pytest.raises(ValueError, match="batch sizes must be >= 1"):
        parse_batch_sizes(None, "0,2")
    with pytest.raises(ValueError, match="comma-separated ints"):
        parse_batch_sizes(None, "a,b")
    with pytest.raises(ValueError, match="method 'hf-pld' cannot run batched"):
        resolve_methods("ar,hf-pld", BenchOptions(), batched=True)
    assert resolve_methods("ar-fast", BenchOptions(), batched=True) == ["ar", "ar-fast"]


def test_cli_batch_run_writes_json_and_plot(tiny_ctx, tmp_path, monkeypatch, capsys):
    import radar_ext.commands.bench as bench
    from radar_ext.cli import main

    monkeypatch.setattr(bench, "load_target", lambda: (tiny_ctx.target, tiny_ctx.tokenizer))
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("\n".join(json.dumps({"question_id": q.question_id, "category": q.category,
                                           "turns": list(q.turns)}) for q in QS))
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["bench", "--questions", str(qfile), "--methods", "ar,ar-fast", "--batch-sizes", "1,3",
                 "--max-new-tokens", "6", "--repeats", "1", "--out", str(out), "--plot", str(png),
                 "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"1", "3"} and report["config"]["batch_sizes"] == [1, 3]
    assert all(all(r["exact"]) for r in report["records"])
    assert png.stat().st_size > 1000 and "ar-fast" in capsys.readouterr().out
    assert main(["bench", "--questions", str(qfile), "--batch-size", "0"]) == 2


def test_static_gs_b_runs_each_batch_sizes_own_tree(tiny_ctx, tmp_path):
    """static-gs-b: B = 1 runs static_tree.json's top-level tree, B = 2 its by_batch["2"] tree (here one draft
    token a row, against four at B = 1), every row exact; a B with no tuned tree is refused by name before
    any timing."""
    from radar_ext import EagleDrafter
    from radar_ext.benchmark import BenchContext, MethodUnavailable
    head = tmp_path / "head"
    EagleDrafter.init_random(tiny_ctx.target, seed=1).save_pretrained(head)
    tree = {"max_draft_calls": 2, "tree_topk": 2, "verify_budget": 4,
            "by_batch": {"2": {"max_draft_calls": 1, "tree_topk": 2, "verify_budget": 1}}}
    (head / "static_tree.json").write_text(json.dumps(tree))
    ctx = BenchContext(tiny_ctx.target, tiny_ctx.tokenizer, eos_token_id=2, pad_token_id=0,
                       options=BenchOptions(drafter_path=str(head)))
    records = run_batch_benchmark(ctx, QS[:3], ["ar-fast", "static-gs-b"], [1, 2], max_new_tokens=8, repeats=1,
                                  warmup=False, log=lambda s: None)
    assert all(all(r.exact) for r in records)
    mean_v = {B: sum(r.stats["verify_tokens"] for r in records if r.method == "static-gs-b" and r.batch_size == B)
              / sum(r.stats["cycles"] - r.stats["skipped_cycles"] for r in records
                    if r.method == "static-gs-b" and r.batch_size == B) for B in (1, 2)}
    assert mean_v[2] == pytest.approx(1.0) and mean_v[1] > 1.0, mean_v
    with pytest.raises(MethodUnavailable, match=r"no tree tuned for batch size 4 \(tuned: \[2\]\)"):
        run_batch_benchmark(ctx, QS[:3], ["static-gs-b"], [1, 4], max_new_tokens=8, log=lambda s: None)
