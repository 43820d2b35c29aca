"""Benchmark harness: question loading, aggregation math, report schema, plotting, method errors,
and a tiny end-to-end run on a random Llama."""
from __future__ import annotations

import json
from collections import Counter
import math
import re

import pytest
import torch

from conftest import load_bench_script
from radar_ext.benchmark import (BASELINE, METHODS, BenchContext, BenchOptions, MethodUnavailable,
                                 QuestionFileError, RunConfig, UnknownMethod, aggregate, build_report,
                                 format_table, load_questions, mismatches, parse_methods, plot,
                                 run_benchmark, select_questions, write_json)
from radar_ext.benchmark.methods import HFGenerate, read_static_gs
from radar_ext.benchmark.runner import balanced_orders, method_order
from radar_ext.benchmark.questions import Question
from radar_ext.benchmark.runner import ForwardCounter

# ---------------------------------------------------------------- questions


def _write(tmp_path, lines, name="q.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_spec_bench_loading_multi_turn(tmp_path):
    p = _write(tmp_path, [
        json.dumps({"question_id": 81, "category": "writing", "turns": ["a", "b"], "reference": ["x"]}),
        "",
        json.dumps({"question_id": "q2", "category": "math", "turns": ["c"]}),
    ])
    qs = load_questions(str(p))
    assert qs == [Question(81, "writing", ("a", "b")), Question("q2", "math", ("c",))]


@pytest.mark.parametrize("line, msg", [
    ('{"question_id": 1, "category": "w", "turns": ["a"]', "q.jsonl:2: not valid JSON"),
    ('[1, 2]', "q.jsonl:2: expected a JSON object, got list"),
    ('{"question_id": 1, "turns": ["a"]}', "q.jsonl:2: missing field(s) category"),
    ('{"question_id": 1, "category": "w", "turns": []}', "q.jsonl:2: turns must be a non-empty list"),
    ('{"question_id": 1, "category": "w", "turns": "hello"}', "q.jsonl:2: turns must be a non-empty list"),
    ('{"question_id": 1, "category": "w", "turns": ["a", 3]}', "q.jsonl:2: turns[1] must be a non-empty string"),
    ('{"question_id": 1.5, "category": "w", "turns": ["a"]}', "q.jsonl:2: question_id must be"),
    ('{"question_id": 1, "category": "", "turns": ["a"]}', "q.jsonl:2: category must be a non-empty string"),
    ('{"question_id": 0, "category": "w", "turns": ["a"]}', "q.jsonl:2: duplicate question_id 0 (first on line 1)"),
])
def test_spec_bench_malformed_lines_name_the_line(tmp_path, line, msg):
    p = _write(tmp_path, [json.dumps({"question_id": 0, "category": "w", "turns": ["x"]}), line])
    with pytest.raises(QuestionFileError) as e:
        load_questions(str(p))
    assert msg in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(QuestionFileError, match="--questions: no such file"):
        load_questions(str(tmp_path / "nope.jsonl"))
    with pytest.raises(QuestionFileError, match="no questions"):
        load_questions(str(_write(tmp_path, [""])))


def test_humaneval_builtin():
    qs = load_questions("humaneval")
    assert len(qs) == 164 and qs[0].question_id == "HumanEval/0"
    assert all(q.category == "humaneval" and len(q.turns) == 1 for q in qs)
    assert "def has_close_elements" in qs[0].turns[0]


def test_select_round_robin_and_categories():
    qs = [Question(i, c, ("t",)) for i, c in enumerate("aaabbc")]
    assert [q.question_id for q in select_questions(qs, limit=4)] == [0, 1, 3, 5]
    assert [q.question_id for q in select_questions(qs, categories=["b", "c"])] == [3, 4, 5]
    assert [q.question_id for q in select_questions(qs, categories=["a"], limit=2)] == [0, 1]
    assert len(select_questions(qs, limit=100)) == 6
    with pytest.raises(QuestionFileError, match="--categories: unknown category z; this file has a, b, c"):
        select_questions(qs, categories=["z"])

# ---------------------------------------------------------------- aggregation


def _rec(method, repeat, qid, cat, seconds, new_tokens=10, turn=0, **kw):
    r = {"method": method, "repeat": repeat, "question_id": qid, "category": cat, "turn": turn,
         "seconds": seconds, "new_tokens": new_tokens, "output_ids": [1] * new_tokens}
    r.update(kw)
    return r


def test_aggregation_math():
    recs = []
    # ar: 10 tokens per answer; repeat 0 takes 1 s per answer, repeat 1 takes 2 s
    for rep, s in ((0, 1.0), (1, 2.0)):
        recs += [_rec("ar", rep, 1, "x", s), _rec("ar", rep, 2, "y", s),
                 _rec("ar", rep, 2, "y", s, turn=1)]
    # fast: x answers twice as fast, y answers four times as fast; stats per answer
    for rep, s in ((0, 1.0), (1, 2.0)):
        recs += [_rec("fast", rep, 1, "x", s / 2, accepted_hist=[1, 1, 2], cycles=4, draft_calls=8.0,
                      verify_tokens=20.0, policy_seconds=0.1 * s / 2, exact=True, skipped_cycles=1),
                 _rec("fast", rep, 2, "y", s / 4, accepted_hist=[0, 0, 0, 4], cycles=4, draft_calls=4.0,
                      verify_tokens=40.0, exact=False, skipped_cycles=0),
                 _rec("fast", rep, 2, "y", s / 4, turn=1, accepted_hist=[0, 2], cycles=2, draft_calls=2.0,
                      verify_tokens=10.0, exact=True)]
    s = aggregate(recs, ["ar", "fast"])
    assert s["categories"] == ["x", "y"]
    ar, fast = s["methods"]["ar"], s["methods"]["fast"]
    assert ar["tokens_per_s"] == pytest.approx((10 + 5) / 2)
    assert ar["tokens_per_s_min"] == pytest.approx(5) and ar["tokens_per_s_max"] == pytest.approx(10)
    assert ar["tokens_per_s_std"] == pytest.approx(2.5)
    assert ar["speedup"] == pytest.approx(1.0)
    # fast, repeat 0: 30 tokens in 0.5 + 0.25 + 0.25 = 1 s -> 30 tok/s vs ar 10 tok/s -> 3x
    assert fast["tokens_per_s_max"] == pytest.approx(30) and fast["speedup"] == pytest.approx(3.0)
    assert fast["speedup_min"] == pytest.approx(3.0) and fast["speedup_max"] == pytest.approx(3.0)
    assert fast["per_category"]["x"]["speedup"] == pytest.approx(2.0)
    assert fast["per_category"]["y"]["speedup"] == pytest.approx(4.0)
    # summed hist (two repeats): [2, 6, 4, 8] -> tau = (1*2 + 2*6 + 3*4 + 4*8) / 20
    assert fast["accepted_hist"] == [2, 6, 4, 8]
    assert fast["tau"] == pytest.approx((2 + 12 + 12 + 32) / 20)
    assert fast["draft_calls"] == pytest.approx(2 * 14 / 20)
    assert fast["verify_budget"] == pytest.approx(2 * 70 / 20)
    # skip share per cycle over the answers that report it (the third answer does not): 2 of 16 cycles
    assert fast["skip_share"] == pytest.approx(2 / 16) and ar["skip_share"] is None
    assert fast["per_category"]["x"]["skip_share"] == pytest.approx(0.25)
    assert fast["per_category"]["y"]["skip_share"] == pytest.approx(0.0)
    # policy share only over answers that report policy time: 0.1 of their seconds
    assert fast["policy_share"] == pytest.approx(0.1)
    assert fast["exact_match"] == pytest.approx(4 / 6) and fast["exact_checked"] == 6
    assert ar["exact_match"] is None and ar["tau"] is None
    assert fast["per_category"]["y"]["exact_match"] == pytest.approx(0.5)
    text = format_table(s)
    assert "== x ==" in text and "== overall ==" in text and "3.00x [3.00-3.00]" in text
    x_block = text.split("== y ==")[0].splitlines()
    header = re.split(r"\s{2,}", next(l for l in x_block if l.startswith("method")))
    row = re.split(r"\s{2,}", next(l for l in x_block if l.startswith("fast")))
    assert header[header.index("V") + 1] == "skip (lookup)" and row[header.index("skip (lookup)")] == "25%"


def test_decoder_stats_carry_the_skipped_cycles():
    """RadarDecoder's DecodeStats -> the runner's record: skipped_cycles, summed per cell into skip_share."""
    from radar_ext.benchmark.methods import decoder_stats
    from radar_ext.decoder import DecodeStats
    st = DecodeStats(tokens=20, seconds=1.0, cycles=10, skipped_cycles=4, lookup_steps=3, draft_calls=12,
                     verify_tokens=30, accepted_hist=[6, 2, 2])
    rec = decoder_stats(st)
    assert rec["skipped_cycles"] == 4 and rec["lookup_steps"] == 3 and rec["cycles"] == 10 and st.skip_share == 0.4
    assert st.as_dict()["skip_share"] == 0.4 and st.as_dict()["lookup_step_share"] == 0.3
    assert "skipped=4 lookup_steps=3" in st.summary()
    summary = aggregate([_rec("m", 0, 1, "x", 1.0, **rec), _rec("ar", 0, 1, "x", 2.0)], ["ar", "m"])
    cell = summary["methods"]["m"]
    assert cell["skip_share"] == pytest.approx(0.4) and cell["lookup_step_share"] == pytest.approx(0.3)
    assert summary["methods"]["ar"]["lookup_step_share"] is None
    row = re.split(r"\s{2,}", next(l for l in format_table(summary).splitlines() if l.startswith("m ")))
    assert "40% (30%)" in row


def test_speedup_vs_ar_fast_and_paired_comparisons():
    recs = []
    # ar 10 tok/s, ar-fast 20, static-gs 25, pmin 40 on q1 / 20 on q2, ltd 30 on both
    for rep in (0, 1):
        for q in (1, 2):
            recs += [_rec("ar", rep, q, "x", 1.0), _rec("ar-fast", rep, q, "x", 0.5), _rec("static-gs", rep, q, "x", 0.4),
                     _rec("pmin", rep, q, "x", 0.25 if q == 1 else 0.5), _rec("ltd", rep, q, "x", 1 / 3)]
    names = ["ar", "ar-fast", "static-gs", "pmin", "ltd"]
    s = aggregate(recs, names)
    m = s["methods"]
    assert m["ar-fast"]["speedup"] == pytest.approx(2.0) and m["ar-fast"]["speedup_vs_ar_fast"] == pytest.approx(1.0)
    assert m["ltd"]["speedup"] == pytest.approx(3.0) and m["ltd"]["speedup_vs_ar_fast"] == pytest.approx(1.5)
    assert m["ltd"]["per_category"]["x"]["speedup_vs_ar_fast"] == pytest.approx(1.5)
    assert m["ar"]["speedup_vs_ar_fast"] == pytest.approx(0.5)
    # best opponent by overall tok/s: pmin (40 tok/s over 0.75 s per pair of answers = 26.7) > static-gs (25)
    comp = s["comparisons"]
    assert comp["best_opponent"] == "pmin"
    # ltd vs pmin per answer: 30/40 and 30/20 -> geometric mean sqrt(0.75 * 1.5)
    assert comp["ltd"]["vs best"]["ratio"] == pytest.approx(math.sqrt(0.75 * 1.5))
    assert comp["ltd"]["vs static-gs"]["ratio"] == pytest.approx(1.2)
    assert comp["ltd"]["vs static-gs"]["ci95"] == pytest.approx([1.2, 1.2])
    assert comp["ltd"]["vs best"]["answers"] == 4
    text = format_table(s)
    assert "vs ar-fast" in text and "1.50x [1.50-1.50]" in text and "best training-free" in text
    # without ar-fast in the run the column is empty, not wrong
    s2 = aggregate([r for r in recs if r["method"] != "ar-fast"], ["ar", "ltd"])
    assert s2["methods"]["ltd"]["speedup_vs_ar_fast"] is None and s2["comparisons"] == {}


def test_speedup_needs_pairing_and_mismatch_positions():
    recs = [_rec("ar", 0, 1, "x", 1.0), _rec("m", 0, 1, "x", 0.5), _rec("m", 0, 2, "x", 0.5)]
    # m has an answer ar lacks: its speedup is not computed on unpaired answers
    assert aggregate(recs, ["ar", "m"])["methods"]["m"]["speedup"] is None
    a = _rec("ar", 0, 1, "x", 1.0, new_tokens=4)
    a["output_ids"] = [1, 2, 3, 4]
    b = _rec("m", 0, 1, "x", 1.0, new_tokens=4, exact=False)
    b["output_ids"] = [1, 2, 9, 4]
    assert mismatches([a, b]) == [("m", 0, 1, 0, 2)]


def test_forward_counter_derived_stats():
    class Fake:
        calls = [(None, 8), (torch.tensor([[7, 8, 8, 9]]), 4), (torch.tensor([10]), 1), (torch.tensor([11]), 4)]
    # prompt 7 tokens (the prefill also carried a candidate); cycles start at 7, 10, 11 (tree
    # positions: the root is the minimum); the answer has 9 tokens -> ends at 6 + 9 = 15
    st = ForwardCounter.derived_stats(Fake, 7, 9)
    # cycles emit 3, 1, 4 -> accepted 2, 0, 3; the prefill is no cycle
    assert st["target_forwards"] == 4 and st["cycles"] == 3 and st["accepted_hist"] == [1, 0, 1, 1]
    assert st["verify_tokens"] == pytest.approx(3 + 0 + 3)
    Fake.calls = Fake.calls[:1]  # a one-token answer: the prefill only
    assert ForwardCounter.derived_stats(Fake, 7, 1) == {"target_forwards": 1, "accepted_hist": [], "cycles": 0,
                                                          "verify_tokens": 0.0}
    Fake.calls = [(None, 7), (torch.tensor([6]), 1)]  # 1 input cannot emit 3 tokens: another pattern
    assert "accepted_hist" not in ForwardCounter.derived_stats(Fake, 7, 3)
    Fake.calls = [(None, 7), (torch.tensor([7]), 1), (torch.tensor([6]), 1)]  # going backwards
    assert "accepted_hist" not in ForwardCounter.derived_stats(Fake, 7, 3)

# ---------------------------------------------------------------- report, plot, methods


def test_report_json_schema_and_plot(tmp_path):
    recs = [_rec("ar", r, q, c, 1.0) for r in (0, 1) for q, c in ((1, "x"), (2, "y"))]
    recs += [_rec("hf-pld", r, q, c, 0.8, accepted_hist=[3, 1], cycles=4, exact=True)
             for r in (0, 1) for q, c in ((1, "x"), (2, "y"))]
    s = aggregate(recs, ["ar", "hf-pld"])
    rep = build_report(s, {"temperature": 0.0, "max_new_tokens": 10, "repeats": 2}, {"cpu": "test"}, recs)
    out = tmp_path / "sub" / "r.json"
    write_json(rep, out)
    back = json.loads(out.read_text())
    assert set(back) >= {"methods", "config", "machine", "records", "categories", "schema", "interrupted"}
    for name in ("ar", "hf-pld"):
        m = back["methods"][name]
        for k in ("tokens_per_s", "speedup", "tau", "draft_calls", "verify_budget", "exact_match",
                  "per_category", "policy_share", "tokens_per_s_min", "tokens_per_s_max"):
            assert k in m, (name, k)
        assert set(m["per_category"]) == {"x", "y"}
    assert back["methods"]["hf-pld"]["speedup"] == pytest.approx(1.25)
    assert len(back["records"]) == 8
    png = tmp_path / "p.png"
    plot(back, png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize("kind", ["pmin", "ema", "goodput"])
def test_adaptive_methods_need_a_tuned_setting(tmp_path, kind):
    opts = BenchOptions(drafter_path=str(_head_dir(tmp_path)))
    with pytest.raises(MethodUnavailable, match=f"no tuned {kind} setting at .*{kind}.json.*--{kind} FILE"):
        METHODS[kind].check(opts)
    f = tmp_path / "x.json"
    f.write_text(json.dumps({"policy": kind, "policy_kwargs": {}, "tree_topk": 4, "verify_budget": 0}))
    opts = BenchOptions(drafter_path=str(_head_dir(tmp_path)), adaptive_paths={kind: str(f)})
    with pytest.raises(MethodUnavailable, match="verify_budget must be an int >= 1, got 0"):
        METHODS[kind].check(opts)


def _head_dir(tmp_path):
    d = tmp_path / "head"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}")
    return d


def test_method_errors(tmp_path):
    with pytest.raises(UnknownMethod, match="unknown method 'nope'; known: ar, ar-fast, hf-pld"):
        parse_methods("ar,nope")
    with pytest.raises(UnknownMethod, match="--methods: give"):
        parse_methods(" , ")
    assert parse_methods("hf-pld,ar,hf-pld") == ["hf-pld", "ar"]
    missing = tmp_path / "gs.json"
    with pytest.raises(MethodUnavailable, match="static-gs.*gs.json"):
        read_static_gs(missing)
    missing.write_text(json.dumps({"max_draft_calls": 6, "tree_topk": 0}))
    with pytest.raises(MethodUnavailable, match="bad or missing: tree_topk, verify_budget"):
        read_static_gs(missing)
    missing.write_text(json.dumps({"max_draft_calls": 6, "tree_topk": 8, "verify_budget": 48}))
    assert read_static_gs(missing)["verify_budget"] == 48


def test_cli_errors(capsys):
    from radar_ext.cli import main
    assert main(["bench", "--questions", "humaneval", "--methods", "ar,bogus"]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err
    assert main(["bench", "--questions", "humaneval", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens must be >= 1, got 0" in capsys.readouterr().err
    assert main(["bench", "--questions", "humaneval", "--categories", "math"]) == 2
    assert "--categories: unknown category math" in capsys.readouterr().err
    assert main(["bench", "--questions", "humaneval", "--max-turns", "0"]) == 2
    assert "--max-turns must be >= 1, got 0" in capsys.readouterr().err
    for bad in ("8,10", "8,x,60", "8,10,0"):
        assert main(["bench", "--questions", "humaneval", "--static-tree", bad]) == 2
        assert "--static-tree must be three ints >= 1 'CALLS,W,V'" in capsys.readouterr().err
    assert main(["bench", "--questions", "humaneval", "--policy-costs", "/nonexistent/cal.json"]) == 2
    assert "--policy-costs '/nonexistent/cal.json' is not a file" in capsys.readouterr().err


def test_static_tree_option_sets_the_static_method():
    from radar_ext.commands.bench import parse_static_tree
    assert parse_static_tree(None) is None
    setting = parse_static_tree("3,6,4")
    assert setting == {"max_draft_calls": 3, "tree_topk": 6, "verify_budget": 4}
    static = METHODS["static"].__new__(METHODS["static"])  # _setting needs no loaded model
    ctx = BenchContext(None, None, None, None, options=BenchOptions(static_tree=setting))
    assert static._setting(ctx) == setting
    default = BenchContext(None, None, None, None, options=BenchOptions())
    assert static._setting(default) == {"max_draft_calls": 8, "tree_topk": 10, "verify_budget": 60}

# ---------------------------------------------------------------- tiny end-to-end


class TinyChatTokenizer:
    """Tokenizer-free chat path: characters -> ids 3..62, role markers 63/62, eos 2."""
    eos_token_id = 2
    pad_token_id = 0

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        ids = [1]
        for m in messages:
            ids += [63 if m["role"] == "user" else 62] + [3 + ord(c) % 59 for c in m["content"][:48]]
        return ids + ([62] if add_generation_prompt else [])

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) * 2 for i in ids if i > 2)  # repetitive, so lookup finds matches


@pytest.fixture(scope="module")
def tiny_ctx():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      eos_token_id=2, bos_token_id=1, pad_token_id=0)
    model = LlamaForCausalLM(cfg).to(torch.float64).eval()  # float64: no near-ties flip argmax
    return BenchContext(model, TinyChatTokenizer(), eos_token_id=2, pad_token_id=0, options=BenchOptions())


QS = [Question(1, "writing", ("hello there hello there", "again please")),
      Question("b", "math", ("one two one two one two",))]


def _tiny_methods():
    names = ["ar", "ar-fast", "hf-pld"]
    try:
        METHODS["ngram"].check(BenchOptions())
        names.append("ngram")
    except MethodUnavailable:
        pass
    return names


def test_tiny_end_to_end(tiny_ctx, tmp_path):
    names = _tiny_methods()
    cfg = RunConfig(methods=names, max_new_tokens=12, temperature=0.0, repeats=2, seed=3)
    res = run_benchmark(tiny_ctx, QS, cfg, progress=False)
    assert not res.interrupted and res.questions_done == 4
    assert len(res.records) == 2 * 3 * len(names)  # repeats x turns x methods
    by = {(r["method"], r["repeat"], str(r["question_id"]), r["turn"]): r for r in res.records}
    for (m, rep, q, t), r in by.items():
        assert 1 <= r["new_tokens"] <= 12 and r["seconds"] > 0 and r["target_forwards"] >= 1
        if m != BASELINE:
            assert r["exact"] is True, (m, q, t)
    # multi-turn: turn 2 carries the first turn and its answer
    assert by[("ar", 0, "1", 1)]["prompt_tokens"] > by[("ar", 0, "1", 0)]["prompt_tokens"] + 20
    # ar: one target forward per token
    assert all(r["accepted_hist"] == [r["new_tokens"] - 1] and r["target_forwards"] == r["new_tokens"]
               for r in res.records if r["method"] == "ar")
    # methods in the balanced orders, one per question and repeat
    for slot, (rep, q) in enumerate((rep, q) for rep in (0, 1) for q in ("1", "b")):
        order = sorted(names, key=lambda m: by[(m, rep, q, 0)]["order"])
        assert order == method_order(names, slot), (rep, q, order)
    s = aggregate(res.records, names)
    assert s["methods"]["ar"]["speedup"] == pytest.approx(1.0)
    assert s["methods"]["ar"]["tau"] == pytest.approx(1.0)
    assert s["methods"]["hf-pld"]["exact_match"] == 1.0 and s["methods"]["hf-pld"]["repeats"] == 2
    # ar-fast: our own plain decoding, one target forward per token, exact
    assert s["methods"]["ar-fast"]["exact_match"] == 1.0 and s["methods"]["ar-fast"]["tau"] == pytest.approx(1.0)
    assert s["methods"]["ar-fast"]["draft_calls"] == 0 and s["methods"]["ar-fast"]["speedup_vs_ar_fast"] == pytest.approx(1.0)
    assert s["methods"]["ar-fast"]["skip_share"] == 0 and s["methods"][BASELINE]["skip_share"] is None
    assert s["methods"]["hf-pld"]["tau"] >= 1.0


def test_sampling_is_seeded_and_unchecked(tiny_ctx):
    cfg = RunConfig(methods=["ar"], max_new_tokens=8, temperature=1.0, repeats=1, seed=5, warmup=0)
    a = run_benchmark(tiny_ctx, QS[1:], cfg, progress=False).records
    b = run_benchmark(tiny_ctx, QS[1:], cfg, progress=False).records
    assert [r["output_ids"] for r in a] == [r["output_ids"] for r in b]
    assert all(r["exact"] is None for r in a)


def test_ctrl_c_keeps_complete_questions(tiny_ctx, monkeypatch):
    class Interrupting(HFGenerate):
        name = "ar"
        calls = 0

        def generate(self, *a, **kw):
            type(self).calls += 1
            if type(self).calls > 4:  # warm-up (1) + question 1 (2 turns) + question b (1) -> 5th call
                raise KeyboardInterrupt
            return super().generate(*a, **kw)

    monkeypatch.setitem(METHODS, "ar", Interrupting)
    cfg = RunConfig(methods=["ar", "hf-pld"], max_new_tokens=6, repeats=2)
    res = run_benchmark(tiny_ctx, QS, cfg, progress=False, log=lambda s: None)
    assert res.interrupted
    done = {(r["repeat"], str(r["question_id"])) for r in res.records}
    # every kept question has both methods on all its turns
    for rep, q in done:
        turns = 2 if q == "1" else 1
        assert sum(1 for r in res.records if (r["repeat"], str(r["question_id"])) == (rep, q)) == 2 * turns
    assert res.questions_done == len(done) >= 1
    assert not math.isnan(aggregate(res.records, ["ar", "hf-pld"])["methods"]["hf-pld"]["speedup"])


def test_cli_finish_writes_table_json_and_plot(tiny_ctx, tmp_path, capsys):
    import argparse

    from radar_ext.commands import bench
    names = ["ar", "hf-pld"]
    res = run_benchmark(tiny_ctx, QS[1:], RunConfig(methods=names, max_new_tokens=6, warmup=0), progress=False)
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--questions", "x.jsonl", "--out", str(tmp_path / "r.json"),
                         "--plot", str(tmp_path / "r.png"), "--repeats", "1"])
    assert bench.finish(res, names, QS[1:], args, tiny_ctx) == 0
    out = capsys.readouterr().out
    assert "== math ==" in out and "== overall ==" in out and "hf-pld" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["config"]["methods"] == names and rep["config"]["questions_run"] == 1
    assert rep["machine"]["cores"] >= 1 and rep["machine"]["torch"] == torch.__version__
    assert rep["methods"]["hf-pld"]["exact_match"] == 1.0 and len(rep["records"]) == 2
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    # nothing complete (interrupted before the first question) -> exit 130, no files
    empty = type(res)(interrupted=True)
    assert bench.finish(empty, names, QS, p.parse_args(["--questions", "x", "--out", str(tmp_path / "e.json")]),
                        tiny_ctx) == 130
    assert not (tmp_path / "e.json").exists()


def test_bench_heads_arguments_and_paired_interval(tmp_path, capsys):
    """bench/bench_heads.py: --tree parsing, the paired interval of per-question differences, and its
    refusals (one head, a directory without config.json, a malformed tree) before loading anything."""
    import argparse
    mod = load_bench_script("bench_heads")
    assert mod.parse_tree("1,6,2") == (1, 6, 2)
    for bad in ("1,6", "a,b,c", "0,6,2"):
        with pytest.raises(argparse.ArgumentTypeError, match="--tree"):
            mod.parse_tree(bad)
    m, lo, hi = mod.paired_interval([0.1, 0.3, 0.2, 0.2])
    half = 1.96 * math.sqrt(((0.1 - 0.2) ** 2 + (0.3 - 0.2) ** 2) / 3) / 2
    assert m == pytest.approx(0.2) and lo == pytest.approx(0.2 - half) and hi == pytest.approx(0.2 + half)
    assert math.isnan(mod.paired_interval([0.5])[1])
    head = tmp_path / "h"
    head.mkdir()
    (head / "config.json").write_text("{}")
    for argv, msg in (([str(head)], "at least two"), ([str(head), str(tmp_path)], "no config.json")):
        with pytest.raises(SystemExit):
            mod.main(["--heads", *argv, "--questions", "humaneval"])
        assert msg in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(["--heads", str(head), str(head), "--questions", "humaneval", "--tree", "8,10"])
    assert "--tree must be three ints >= 1 'CALLS,W,V'" in capsys.readouterr().err


def test_report_markdown_tables(tmp_path, capsys):
    md = load_bench_script("report_markdown")
    recs = []
    for rep in (0, 1):
        for q, cat in ((1, "x"), (2, "y")):
            recs += [_rec("ar", rep, q, cat, 1.0), _rec("ar-fast", rep, q, cat, 0.5),
                     _rec("static-gs", rep, q, cat, 0.4, exact=True, accepted_hist=[2, 2], cycles=4),
                     _rec("ltd", rep, q, cat, 0.25, exact=q == 1, policy_seconds=0.01, accepted_hist=[0, 4], cycles=4,
                          draft_calls=8.0, verify_tokens=12.0)]
    names = ["ar", "ar-fast", "static-gs", "ltd"]
    report = build_report(aggregate(recs, names), {"temperature": 0.0, "max_new_tokens": 10, "repeats": 2},
                          {"cpu": "test cpu", "torch_threads": 2}, recs)
    path = tmp_path / "r.json"
    write_json(report, path)
    assert md.main([str(path), "--categories"]) == 0
    out = capsys.readouterr().out
    assert "| ltd | 40.0 [40.0-40.0] | 4.00x [4.00-4.00] | 2.00x [2.00-2.00] | 2.00 | 2.00 | 3.0 | 4.0% | 2/4 |" in out
    assert "**y**" in out and "best opponent by overall tokens/s: `static-gs`" in out
    assert "- ltd: vs static-gs 1.600 [1.600-1.600]" in out
    (tmp_path / "bad.json").write_text("[]")
    assert md.main([str(tmp_path / "bad.json")]) == 2
    assert "is not a `radar bench` report" in capsys.readouterr().err


def test_generate_kwargs_reach_every_method(tiny_ctx):
    """--generate-kwargs goes to every method's generate, HF's and ours: with repetition_penalty 1.5 the
    answers change, and every method's answer is still identical to ar's with the same setting."""
    import dataclasses
    names = _tiny_methods()
    cfg = RunConfig(methods=names, max_new_tokens=12, temperature=0.0, repeats=1, seed=3, warmup=0)
    plain = run_benchmark(tiny_ctx, QS[1:], cfg, progress=False).records
    ctx = dataclasses.replace(tiny_ctx, options=BenchOptions(generate_kwargs={"repetition_penalty": 1.5}))
    recs = run_benchmark(ctx, QS[1:], cfg, progress=False).records
    assert {r["method"] for r in recs} == set(names) and len(names) > 1
    assert all(r["exact"] is True for r in recs if r["method"] != BASELINE)
    ar_plain = next(r for r in plain if r["method"] == BASELINE)["output_ids"]
    assert next(r for r in recs if r["method"] == BASELINE)["output_ids"] != ar_plain


def test_generate_kwargs_cli_errors(capsys):
    from radar_ext.cli import main
    for bad, msg in (("{", "--generate-kwargs must be a JSON object"), ("[1]", "--generate-kwargs must be a JSON object"),
                     ('{"temperature": 0.5}', r"\['temperature'\] are set by the runner"),
                     ('{"repetition_penaltyy": 1.2}', r"\['repetition_penaltyy'\] are not HF generation config fields")):
        assert main(["bench", "--questions", "humaneval", "--generate-kwargs", bad]) == 2
        err = capsys.readouterr().err
        assert re.search(msg, err), err


def test_lookup_share_of_hybrid_answers():
    """DecodeStats' lookup_accepted / shared_accepted -> the record -> the cell's share of accepted draft tokens,
    shown in the table's lookup column; methods without lookups show '-'."""
    from radar_ext.benchmark.methods import decoder_stats
    from radar_ext.decoder import DecodeStats
    st = DecodeStats(tokens=20, seconds=1.0, cycles=10, draft_calls=12, verify_tokens=30, accepted_hist=[4, 2, 4],
                     lookup_accepted=3, shared_accepted=2)   # 2 + 8 = 10 accepted draft tokens
    rec = decoder_stats(st)
    assert rec["lookup_accepted"] == 3 and rec["shared_accepted"] == 2
    plain = decoder_stats(DecodeStats(tokens=20, seconds=1.0, cycles=10, accepted_hist=[10]))
    s = aggregate([_rec("hyb", 0, 1, "x", 1.0, **rec), _rec("hyb", 0, 2, "x", 1.0, **rec),
                   _rec("ar", 0, 1, "x", 2.0), _rec("ar", 0, 2, "x", 2.0), _rec("eagle", 0, 1, "x", 1.0, **plain),
                   _rec("eagle", 0, 2, "x", 1.0, **plain)], ["ar", "hyb", "eagle"])
    hyb = s["methods"]["hyb"]
    assert hyb["lookup_share"] == pytest.approx(0.3) and hyb["shared_share"] == pytest.approx(0.2)
    assert s["methods"]["ar"]["lookup_share"] is None and s["methods"]["eagle"]["lookup_share"] is None
    lines = format_table(s).split("== overall ==")[1].splitlines()
    header = re.split(r"\s{2,}", next(l for l in lines if l.startswith("method")))
    row = re.split(r"\s{2,}", next(l for l in lines if l.startswith("hyb")))
    assert row[header.index("lookup")] == "30%"
    row = re.split(r"\s{2,}", next(l for l in lines if l.startswith("eagle")))
    assert row[header.index("lookup")] == "-"


@pytest.mark.parametrize("kind", ["hybrid-static", "hybrid-ltd", "hybrid-pmin"])
def test_hybrid_methods_need_lookup_scores(tmp_path, kind):
    head = _head_dir(tmp_path)
    (head / "static_tree.json").write_text(json.dumps({"max_draft_calls": 1, "tree_topk": 4, "verify_budget": 3}))
    (head / "pmin.json").write_text(json.dumps({"policy": "pmin", "policy_kwargs": {}, "tree_topk": 4,
                                                "verify_budget": 3}))
    opts = BenchOptions(drafter_path=str(head))
    with pytest.raises(MethodUnavailable, match=f"method '{kind}' needs calibrated lookup scores: the shipped lookup "
                                                r"scores '.*lookup_scores.json' is not a file.*--lookup-scores FILE"):
        METHODS[kind].check(opts)
    opts = BenchOptions(drafter_path=str(head), lookup_scores_path=str(tmp_path / "nope.json"))
    with pytest.raises(MethodUnavailable, match="--lookup-scores '.*nope.json' is not a file"):
        METHODS[kind].check(opts)
    (head / "lookup_scores.json").write_text("{}")
    METHODS[kind].check(BenchOptions(drafter_path=str(head)))


def test_hybrid_static_setting():
    """hybrid-static: the grid-searched static setting unless --hybrid-static gives one (then no static_tree.json
    is needed)."""
    from radar_ext.commands.bench import parse_static_tree
    assert parse_static_tree("2,4,6", "--hybrid-static") == {"max_draft_calls": 2, "tree_topk": 4, "verify_budget": 6}
    with pytest.raises(ValueError, match="--hybrid-static must be three ints"):
        parse_static_tree("2,4", "--hybrid-static")
    m = METHODS["hybrid-static"].__new__(METHODS["hybrid-static"])
    ctx = BenchContext(None, None, None, None, BenchOptions(hybrid_static={"max_draft_calls": 2, "tree_topk": 4,
                                                                         "verify_budget": 6}))
    assert m._setting(ctx) == {"max_draft_calls": 2, "tree_topk": 4, "verify_budget": 6}


def test_batch_memory_runs_each_method_in_its_own_process(tmp_path, monkeypatch, capsys):
    """bench/batch_memory.py: its refusals by name, one child process per method (the child's command
    line carries the settings), peaks compared with HF's (`ar`), and a failed child named."""
    import json as _json
    import subprocess
    import types
    mod = load_bench_script("batch_memory")
    q = tmp_path / "q.jsonl"
    q.write_text('{"question_id": 1, "category": "c", "turns": ["hi"]}\n')
    for argv, msg in ((["--batch-size", "0"], "--batch-size"), (["--questions", str(tmp_path / "no")], "--questions"),
                      (["--policy-costs", str(tmp_path / "no.json")], "--policy-costs")):
        with pytest.raises(SystemExit):
            mod.parse_args(["--questions", str(q)] + argv if argv[0] != "--questions" else argv)
        assert msg in capsys.readouterr().err
    calls = []
    peaks = {"ar": 1000.0, "ltd": 1300.0}

    def fake_run(cmd, capture_output, text):
        calls.append(cmd)
        m = cmd[cmd.index("--child") + 1]
        if m == "bad":
            return types.SimpleNamespace(returncode=1, stdout="", stderr="Traceback: boom\n")
        res = {"method": m, "batch_size": 4, "rss_before_mb": 900.0, "peak_mb": peaks[m], "growth_mb": peaks[m] - 900,
               "new_tokens": 8}
        return types.SimpleNamespace(returncode=0, stdout="log line\nRESULT " + _json.dumps(res) + "\n", stderr="")
    monkeypatch.setattr(subprocess, "run", fake_run)
    out = tmp_path / "m.json"
    assert mod.main(["--questions", str(q), "--batch-size", "4", "--methods", "ar,ltd", "--out", str(out)]) == 0
    assert [c[c.index("--child") + 1] for c in calls] == ["ar", "ltd"]
    assert all(c[c.index("--batch-size") + 1] == "4" for c in calls)
    got = _json.loads(out.read_text())["results"]
    assert [r["peak_vs_ar"] for r in got] == [1.0, pytest.approx(1.3)]
    assert "1.30x" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="method 'bad'"):
        mod.main(["--questions", str(q), "--methods", "ar,bad"])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8])
def test_method_orders_are_carryover_balanced(n):
    """Every order a permutation, every method first equally often, and every ordered pair (a right before b)
    equally often over the cycle: a rotation of one order would put the same method before b every time."""
    orders = balanced_orders(n)
    assert len(orders) == (2 * n if n % 2 else n)
    assert all(sorted(o) == list(range(n)) for o in orders)
    firsts = Counter(o[0] for o in orders)
    assert len(set(firsts.values())) == 1 and len(firsts) == n
    pairs = Counter((a, b) for o in orders for a, b in zip(o, o[1:]))
    if n > 1:
        assert len(pairs) == n * (n - 1) and len(set(pairs.values())) == 1, pairs
    assert method_order(["x", "y", "z"][:min(n, 3)], 0)[0] == "x"
    with pytest.raises(ValueError, match="n must be"):
        balanced_orders(0)
