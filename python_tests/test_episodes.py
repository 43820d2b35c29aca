"""Episode collection on a tiny random Llama + untrained EAGLE head: the recorded per-(n, V)
accepted-length distributions equal what decoding with StaticPolicy(n) at budget V does (greedy,
cycle by cycle), the T=1 distributions are distributions and match a Monte-Carlo of sample_accept,
the text is the target's own, and the on-disk dataset resumes."""
import json

import pytest
import torch

from radar_ext import EagleDrafter, RadarDecoder, StaticPolicy
from radar_ext.acceptance import SamplingParams, sample_accept
from radar_ext.training.episodes import (CollectConfig, EpisodeCollector, accept_distributions, collect,
                                         load_episodes, node_probs, reach_probs, tree_sets)
from radar_ext.tree import make_tree
from test_decoder import tiny_llama

VOCAB = 13  # a small vocabulary so that an untrained head's drafts get accepted now and then
N, W, BUDGETS = 4, 4, (2, 4, 7, 12)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab=VOCAB)


@pytest.fixture(scope="module")
def drafter(model):
    return EagleDrafter.init_random(model, seed=1)


def prompt(seed, n=9):
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def test_greedy_distributions_match_static_decoding(model, drafter):
    col = EpisodeCollector(model, drafter, max_draft_calls=N, tree_topk=W, budgets=BUDGETS)
    seen = set()
    for seed in (3, 4):
        ids = prompt(seed)
        ep = col.run(ids, 24)
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             pad_token_id=0)
        assert torch.equal(ep["tokens"], ref[0, ids.shape[1]:])          # the text is the target's own
        full = torch.cat([ids[0], ep["tokens"]])
        dist = ep["accept_dist"]
        assert ((dist == 0) | (dist == 1)).all() and torch.equal(dist.sum(-1), torch.ones(dist.shape[:-1]))
        for c in range(dist.shape[0]):
            s = int(ep["seq_len"][c])
            for n in range(1, N + 1):
                for k, V in enumerate(BUDGETS):
                    # one cycle of the real decoder from the same prefix: prefill emits the root, the
                    # cycle emits >= 1 more token, so max_new_tokens=2 stops after exactly one cycle
                    dec = RadarDecoder(model, drafter, StaticPolicy(n), tree_topk=W, verify_budget=V)
                    dec.generate(full[:s - 1].view(1, -1), max_new_tokens=2)
                    hist = dec.last_stats.accepted_hist
                    assert dec.last_stats.cycles == 1
                    got = int(dist[c, n - 1, k].argmax())
                    assert hist[got] == 1 and sum(hist) == 1, (seed, c, n, V, hist, dist[c, n - 1, k])
                    seen.add(got)
        assert torch.equal(ep["accepted_len"], dist[:, -1, -1].argmax(-1))
    assert max(seen) >= 2  # the check covered accepted drafts, not only rejections


class _HistoryRecorder(StaticPolicy):
    """StaticPolicy that records the History state the decoder shows it before every cycle."""

    def start_sequence(self):
        self.seen = []

    def should_draft(self, step):
        h = step.history
        self.seen.append((h.ema, h.last, h.best_prob, h.best_accepted, h.drafted))
        return True


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_history_fields_are_what_the_decoder_shows_its_policy(model, drafter, temperature):
    """Format 2: before every cycle the collector records the History state that RadarDecoder, decoding
    with the full tree (StaticPolicy(N), the largest V), hands to its policy: the same History class fed
    the same outcomes (EMA and last accepted length, best first-call guess probability and hit); batch
    size 1 and zero lookup features."""
    col = EpisodeCollector(model, drafter, max_draft_calls=N, tree_topk=W, budgets=BUDGETS, temperature=temperature)
    policy = _HistoryRecorder(N)
    dec = RadarDecoder(model, drafter, policy, tree_topk=W, verify_budget=BUDGETS[-1])
    hits = 0
    for seed in (3, 4):
        ids = prompt(seed)
        ep = col.run(ids, 24, generator=torch.Generator().manual_seed(seed))
        kw = dict(do_sample=True, temperature=1.0, generator=torch.Generator().manual_seed(seed)) if temperature else {}
        out = dec.generate(ids, max_new_tokens=24, **kw)
        if temperature:  # the two draw differently; the history must still be the recorded outcomes'
            L = ep["accepted_len"].tolist()
            ema = L[0]
            for c in range(1, len(L)):
                assert float(ep["hist_accept_last"][c]) == L[c - 1]
                assert float(ep["hist_accept_ema"][c]) == pytest.approx(ema)
                ema = 0.8 * ema + 0.2 * L[c]
            assert ep["hist_drafted"].tolist() == list(range(len(L)))
            continue
        assert torch.equal(out[0, ids.shape[1]:], ep["tokens"])
        got = list(zip(*(ep[k].tolist() for k in ("hist_accept_ema", "hist_accept_last", "hist_best_prob",
                                                     "hist_best_accepted", "hist_drafted"))))
        want = [tuple(torch.tensor(v[:4], dtype=torch.float32).tolist()) + (v[4],) for v in policy.seen]
        # exact but for the guess probability: the collector's head reads target features of its union
        # tree's forward, the decoder's of its own tree's (the same numbers up to float rounding)
        assert [g[:2] + g[3:] for g in got] == [w[:2] + w[3:] for w in want]
        assert [g[2] for g in got] == pytest.approx([w[2] for w in want], rel=1e-5, abs=1e-7)
        hits += sum(ep["hist_best_accepted"].tolist())
        assert ep["batch_size"].tolist() == [1] * len(got) and not ep["lookup_count"].any()
        assert not ep["lookup_match_len"].any() and not ep["lookup_best_score"].any()
        # the previous cycle's best guess is its best root child: probability exp(its score)
        torch.testing.assert_close(ep["hist_best_prob"][1:], ep["beam_scores"][:-1, 0, 0].exp(), rtol=1e-6, atol=0)
    if not temperature:
        assert hits > 0  # some guesses were accepted: the hit field was exercised both ways


def test_sampling_distributions(model, drafter):
    col = EpisodeCollector(model, drafter, max_draft_calls=N, tree_topk=W, budgets=BUDGETS, temperature=1.0)
    ep = col.run(prompt(5), 30, generator=torch.Generator().manual_seed(0))
    dist = ep["accept_dist"]
    assert (dist >= 0).all()
    torch.testing.assert_close(dist.sum(-1), torch.ones(dist.shape[:-1]), rtol=0, atol=1e-5)
    assert ((dist > 1e-3) & (dist < 1 - 1e-3)).any()          # genuinely spread, not one-hot
    # a deeper or bigger tree can only accept more: P(L >= d) is monotone in V at fixed n
    ge = dist.flip(-1).cumsum(-1).flip(-1)
    assert (ge[:, :, 1:] >= ge[:, :, :-1] - 1e-5).all()


def test_sampling_distribution_matches_monte_carlo():
    """accept_distributions on a hand-made tree vs repeated sample_accept walks over it."""
    V = 6
    # union tree: root(0) -> 1:tok1, 2:tok3, 3:tok4; 1 -> 4:tok0, 5:tok2; 2 -> 6:tok5; 4 -> 7:tok3
    tokens = torch.tensor([2, 1, 3, 4, 0, 2, 5, 3])
    parents = torch.tensor([-1, 0, 0, 0, 1, 1, 2, 4])
    logits = torch.randn(8, V, generator=torch.Generator().manual_seed(0)) * 1.5
    logits[:, 1] += 1.0          # make some drafts likely
    logits[:, 3] += 0.8
    params = SamplingParams(1.0)
    reach = reach_probs(parents, node_probs(logits, tokens, parents, params))
    full = make_tree(tokens.view(1, -1), parents.view(1, -1), torch.tensor([8]))
    depth = full.depth[0]
    for keep in ([0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 4, 7]):
        keep_t = torch.tensor(keep)
        member = torch.zeros(1, 7, dtype=torch.bool)
        member[0, keep_t[1:] - 1] = True
        dist = accept_distributions(member, depth[1:], reach[1:], 3)[0]
        assert abs(float(dist.sum()) - 1) < 1e-6
        new_of = {o: i for i, o in enumerate(keep)}
        sub = make_tree(tokens[keep_t].view(1, -1), torch.tensor([[-1] + [new_of[int(parents[k])] for k in keep[1:]]]),
                        torch.tensor([len(keep)]))
        g = torch.Generator().manual_seed(1)
        n_mc = 4000
        counts = torch.zeros(4)
        for _ in range(n_mc):
            counts[sample_accept(sub, logits[keep_t].unsqueeze(0), params, g).accepted_len[0]] += 1
        mc = counts / n_mc
        assert (mc - dist).abs().max() < 0.03, (keep, dist, mc)   # ~4 standard errors at 4000 draws


def test_tree_sets_match_candidate_pool_best():
    from radar_ext.tree import CandidatePool

    g = torch.Generator().manual_seed(2)
    scores = -torch.rand(22, generator=g).round(decimals=1) * 5      # ties on purpose
    counts = [4, 13, 22]
    member = tree_sets(scores, counts, (3, 5, 30))
    for n, cnt in enumerate(counts):
        pool = CandidatePool(1, cnt, "cpu")
        pool.add(torch.arange(cnt).view(1, -1), torch.full((1, cnt), -1), scores[:cnt].view(1, -1))
        for k, V in enumerate((3, 5, 30)):
            want = torch.zeros(22, dtype=torch.bool)
            want[pool.best(V)[0]] = True
            assert torch.equal(member[n, k], want)


def test_collect_dataset_resume_and_split(model, drafter, tmp_path):
    prompts = [(f"p{i}", prompt(10 + i, 5 + i).view(-1).tolist()) for i in range(6)]
    cfg = CollectConfig(out_dir=tmp_path, num_prompts=6, max_new_tokens=12, max_draft_calls=N, tree_topk=W,
                        budgets=BUDGETS, val_fraction=0.5, prompts_per_shard=2, pool_topk=16)
    collect(cfg, target=model, drafter=drafter, prompts=prompts)
    meta = json.loads((tmp_path / "episodes_meta.json").read_text())
    assert meta["tree_topk"] == W and meta["max_draft_calls"] == N and meta["budgets"] == list(BUDGETS)
    assert meta["temperature"] == 0.0 and "target" in meta and "head" in meta
    train_ids = [c for name, ids in meta["shards"].items() if name.startswith("train") for c in ids]
    val_ids = [c for name, ids in meta["shards"].items() if name.startswith("val") for c in ids]
    assert sorted(train_ids + val_ids) == sorted(p[0] for p in prompts) and not set(train_ids) & set(val_ids)
    tr, va = load_episodes(tmp_path, "train"), load_episodes(tmp_path, "val")
    assert tr.cycles + va.cycles > 6
    assert tuple(tr["accept_dist"].shape[1:]) == (N, len(BUDGETS), N + 1)
    assert tuple(tr["child_scores"].shape[1:]) == (N, W, W) and tuple(tr["pool_top"].shape[1:]) == (N, 16)
    assert torch.isinf(tr["child_scores"][:, 0, 1:]).all() and torch.isfinite(tr["child_scores"][:, 0, 0]).all()
    assert (tr["t_draft"] > 0).all() and (tr["t_verify"] > 0).all()
    assert meta["format"] == 2 and tr.has_history and tuple(tr.history_features().shape) == (tr.cycles, 5)
    # resume: present shards are skipped (not rewritten)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.safetensors")}
    collect(cfg, target=model, drafter=drafter, prompts=prompts)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.safetensors")} == mtimes
    (tmp_path / sorted(mtimes)[0]).unlink()
    collect(cfg, target=model, drafter=drafter, prompts=prompts)
    assert (tmp_path / sorted(mtimes)[0]).exists()
    # other settings in the same directory are refused
    cfg.budgets = (2, 4)
    with pytest.raises(ValueError, match="budgets"):
        collect(cfg, target=model, drafter=drafter, prompts=prompts)
    # a collection stopped before its val shards (train shards come first) loads an empty val split with
    # every format-2 field, so it can be combined with a separately collected validation directory
    for v in tmp_path.glob("val_*.safetensors"):
        v.unlink()
    va = load_episodes(tmp_path, "val")
    assert va.cycles == 0 and va.has_history and tuple(va.history_features().shape) == (0, 5)
    both = load_episodes([tmp_path, tmp_path], "train")
    assert both.cycles == 2 * tr.cycles


class _ChatTokenizer:
    """apply_chat_template of a tokenizer: the user message's characters as token ids (mod VOCAB)."""

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        assert add_generation_prompt and tokenize and [m["role"] for m in messages] == ["user"]
        return [1] + [ord(c) % VOCAB for c in messages[0]["content"]] + [2]


def test_collect_on_benchmark_questions_is_for_measurement_only(model, drafter, tmp_path):
    from radar_ext.training.episodes import _question_prompts, check_config
    from radar_ext.training.train_policy import TrainPolicyConfig, train

    qfile = tmp_path / "q.jsonl"
    rows = [("writing", 1, "ab"), ("writing", 2, "cde"), ("math", 3, "fg"), ("coding", 4, "hij"), ("math", 5, "k")]
    qfile.write_text("".join(json.dumps({"question_id": i, "category": c, "turns": [t, "second turn"]}) + "\n"
                             for c, i, t in rows))
    cfg = CollectConfig(out_dir=tmp_path / "ep", num_prompts=4, max_new_tokens=8, max_draft_calls=N, tree_topk=W,
                        budgets=BUDGETS, val_fraction=0.0, prompts_per_shard=2, pool_topk=16, questions=str(qfile))
    prompts = _question_prompts(cfg, _ChatTokenizer())
    # first turns of 4 questions picked round-robin over categories, in file order, as `radar bench --limit`
    assert [cid for cid, _ in prompts] == ["writing/1", "writing/2", "math/3", "coding/4"]
    assert prompts[2][1] == [1, ord("f") % VOCAB, ord("g") % VOCAB, 2]
    collect(cfg, target=model, drafter=drafter, prompts=prompts)
    meta = json.loads((cfg.out_dir / "episodes_meta.json").read_text())
    assert meta["questions"] == str(qfile)
    ep = load_episodes(cfg.out_dir, "all")
    assert ep.cycles > 4 and sorted(ep.meta["prompt_ids"]) == sorted(cid for cid, _ in prompts)
    # every cycle's prompt: the cycles of one prompt are contiguous, each prompt's first cycle at its seq_len
    # (prompt + the root token), so prompt_index maps cycles to the right question
    idx = ep["prompt_index"].tolist()
    firsts = {i: ep["seq_len"][idx.index(i)].item() for i in set(idx)}
    lens = dict(prompts)
    assert all(firsts[i] == len(lens[ep.meta["prompt_ids"][i]]) + 1 for i in firsts)
    both = load_episodes([cfg.out_dir, cfg.out_dir], "all")  # merged: indices renumbered into the joined ids
    assert both.meta["prompt_ids"] == 2 * ep.meta["prompt_ids"] and both.meta["questions"] == str(qfile)
    assert both["prompt_index"].tolist() == idx + [i + len(ep.meta["prompt_ids"]) for i in idx]
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from controller_ceiling import categories
    cats = dict(categories(ep))
    assert set(cats) == {"writing", "math", "coding"}
    assert [c for c in cats["writing"].tolist()] == [ep.meta["prompt_ids"][i].startswith("writing/") for i in idx]
    with pytest.raises(ValueError, match="recorded on benchmark questions"):
        train(TrainPolicyConfig(episodes=cfg.out_dir, out_dir=tmp_path / "run", kind="ltd"), log=lambda *_: None)
    # the same directory without --questions is another collection
    cfg.questions = None
    with pytest.raises(ValueError, match="questions"):
        collect(cfg, target=model, drafter=drafter, prompts=prompts)
    cfg.questions = str(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="questions must be a Spec-Bench .jsonl file"):
        check_config(cfg)


def test_collector_argument_errors(model, drafter):
    from radar_ext import NgramDrafter

    with pytest.raises(TypeError, match="drafter must be an EagleDrafter or a HybridDrafter"):
        EpisodeCollector(model, NgramDrafter())
    with pytest.raises(ValueError, match="budgets must be distinct increasing"):
        EpisodeCollector(model, drafter, budgets=(4, 2))
    with pytest.raises(ValueError, match="max_draft_calls must be an int >= 1, got 0"):
        EpisodeCollector(model, drafter, max_draft_calls=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        EpisodeCollector(model, drafter, temperature=-1.0)


def test_hybrid_distributions_match_static_decoding(model, drafter):
    """A HybridDrafter collection: every (n, V) distribution is what hybrid decoding with StaticPolicy(n) at budget
    V accepts (the merged pool after n calls holds the lookup nodes from call 1 on), and the lookup fields are the
    cycle's LookupInfo."""
    import math

    import numpy as np

    from radar_ext import HybridDrafter, LookupScores, NgramDrafter
    from radar_ext.drafters.lookup_scores import COUNT_BUCKETS
    hyb = HybridDrafter(drafter, NgramDrafter(max_ngram=3, min_ngram=1, max_depth=6),
                        LookupScores(np.full((3, 6, COUNT_BUCKETS), math.log(0.6))))
    col = EpisodeCollector(model, hyb, max_draft_calls=N, tree_topk=W, budgets=BUDGETS)
    ids = prompt(5, n=6).repeat(1, 3)                                     # repeats: the lookup finds them
    ep = col.run(ids, 16)
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(ep["tokens"], ref[0, ids.shape[1]:])
    assert int(ep["lookup_count"].max()) >= 1 and int(ep["lookup_match_len"].max()) >= 1
    full = torch.cat([ids[0], ep["tokens"]])
    dist = ep["accept_dist"]
    from radar_ext.tree import SOURCE_LOOKUP
    with_lookup, draft = [], hyb.draft

    def recording_draft(req):  # which decoded trees held lookup-only nodes
        tree = draft(req)
        with_lookup.append(bool((tree.source == SOURCE_LOOKUP).any()))
        return tree

    for c in range(dist.shape[0]):
        s = int(ep["seq_len"][c])
        for n in range(1, N + 1):
            for k, V in enumerate(BUDGETS):
                dec = RadarDecoder(model, hyb, StaticPolicy(n), tree_topk=W, verify_budget=V)
                hyb.draft = recording_draft
                dec.generate(full[:s - 1].view(1, -1), max_new_tokens=2)
                hist = dec.last_stats.accepted_hist
                got = int(dist[c, n - 1, k].argmax())
                assert hist[got] == 1 and sum(hist) == 1, (c, n, V, hist, dist[c, n - 1, k])
    del hyb.draft
    assert sum(with_lookup) >= 3  # lookup-only nodes were in the compared trees: the staging was exercised
