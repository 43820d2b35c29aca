"""Training-time test must compute exactly what the drafter computes at inference: step k of
`ttt_forward` at position t == the head run with its KV cache on the committed pairs 0..t and then
unrolled k-1 times on its own outputs (a chain of beams), METHOD.md 2."""
import pytest
import torch

from radar_ext.eagle_head import EagleConfig, EagleHead, HeadCache
from radar_ext.training.train_head import (Sequence, choose_draft_vocab, draft_vocab_coverage, step_mask,
                                           ttt_forward)

TOL = dict(rtol=1e-4, atol=1e-5)


def _tiny(seed=0, layers=1):
    cfg = EagleConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=40, draft_vocab_size=40, target_hidden_size=32, max_position_embeddings=64,
                      num_hidden_layers=layers, extra_intermediate_size=24 if layers > 1 else None)
    head = EagleHead.init_random(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial norms so that a wrong input order cannot pass
        for name, p in head.named_parameters():
            if p.dim() == 1:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    embed = torch.nn.Embedding(40, 32)
    torch.nn.init.normal_(embed.weight, 0.0, 1.0, generator=g)
    return head.eval(), embed


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("T,K", [(1, 1), (7, 3), (12, 4)])
def test_ttt_forward_matches_cached_chain(T, K, layers):
    head, embed = _tiny(layers=layers)
    g = torch.Generator().manual_seed(T * 10 + K)
    tokens = torch.randint(0, 40, (1, T), generator=g)
    feats = torch.randn(1, T, 96, generator=g) * 3
    with torch.no_grad():
        steps = ttt_forward(head, embed, tokens, feats, K)
        padded = torch.cat([tokens, tokens.new_zeros(1, K)], 1)
        for t in range(T):
            cache = HeadCache()
            pos = torch.arange(t + 1)[None]
            out = head(feats[:, :t + 1], embed(padded[:, 1:t + 2]), pos, cache)   # committed pairs 0..t
            hidden = out[:, -1:]
            torch.testing.assert_close(hidden[0, 0], steps[0][0, t], **TOL)
            for k in range(2, K + 1):
                # a beam at depth k: position t+k-1, sees the committed entries and its own chain
                hidden = head(hidden, embed(padded[:, t + k:t + k + 1]), torch.tensor([[t + k - 1]]), cache)
                torch.testing.assert_close(hidden[0, 0], steps[k - 1][0, t], **TOL)


def test_ttt_forward_steps_differ_from_teacher_forcing():
    # the unrolled steps must really feed the head's own outputs (not the target features again)
    head, embed = _tiny(3)
    tokens = torch.randint(0, 40, (1, 9), generator=torch.Generator().manual_seed(5))
    feats = torch.randn(1, 9, 96, generator=torch.Generator().manual_seed(6)) * 3
    with torch.no_grad():
        s1, s2 = ttt_forward(head, embed, tokens, feats, 2)
    assert not torch.allclose(s1, s2)


def test_deepen_starts_as_the_identity_and_round_trips(tmp_path):
    """A head deepened by plain layers computes exactly what it did (their residual branches start at
    zero), trains them (non-zero gradients reach the new layers' o_proj / down_proj), and saves and loads
    in the multi-layer layout; a one-layer head's config stays the published one."""
    import json
    from radar_ext.training.train_head import deepen

    head, embed = _tiny(4)
    g = torch.Generator().manual_seed(8)
    tokens = torch.randint(0, 40, (1, 10), generator=g)
    feats = torch.randn(1, 10, 96, generator=g) * 3
    deep = deepen(head, 3, extra_intermediate_size=24).eval()
    assert deep.config.num_hidden_layers == 3 and [i for i, _ in deep.plain_layers()] == [1, 2]
    with torch.no_grad():
        a = ttt_forward(head, embed, tokens, feats, 3)
        b = ttt_forward(deep, embed, tokens, feats, 3)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    out = ttt_forward(deep, embed, tokens, feats, 2)
    deep.logits(out[1]).logsumexp(-1).sum().backward()
    assert deep.layers["2"].self_attn.o_proj.weight.grad.abs().sum() > 0
    assert deep.layers["1"].mlp.down_proj.weight.grad.abs().sum() > 0

    head.save_pretrained(tmp_path / "one")
    cfg1 = json.loads((tmp_path / "one" / "config.json").read_text())
    assert cfg1["num_hidden_layers"] == 1 and "extra_intermediate_size" not in cfg1
    with torch.no_grad():
        for p in deep.layers["2"].parameters():
            p.add_(0.01)  # a trained-looking layer, so that a dropped or misplaced one cannot pass
    deep.save_pretrained(tmp_path / "deep", dtype=torch.float32)
    cfg3 = json.loads((tmp_path / "deep" / "config.json").read_text())
    assert cfg3["num_hidden_layers"] == 3 and cfg3["extra_intermediate_size"] == 24
    back = EagleHead.from_pretrained(tmp_path / "deep")
    with torch.no_grad():
        for x, y in zip(ttt_forward(deep, embed, tokens, feats, 3), ttt_forward(back, embed, tokens, feats, 3)):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="--num-layers 2 is below the head's 3"):
        deepen(back, 2)
    with pytest.raises(ValueError, match="--extra-intermediate-size 32"):
        deepen(back, 4, extra_intermediate_size=32)


def test_head_cache_crops_every_layer():
    head, embed = _tiny(5, layers=2)
    cache = HeadCache()
    with torch.no_grad():
        head(torch.randn(1, 6, 96), embed(torch.arange(6)[None]), torch.arange(6)[None], cache)
        assert cache.length == cache.layer(1).length == 6
        head(torch.randn(1, 2, 32), embed(torch.arange(2)[None]), torch.tensor([[6, 6]]), cache)
        cache.crop(6)
    assert cache.length == cache.layer(1).length == 6


def test_step_mask_shifts_validity():
    valid = torch.tensor([[False, True, True, True, False]])
    assert step_mask(valid, 1).tolist() == [[True, True, True, False, False]]
    assert step_mask(valid, 2).tolist() == [[True, True, False, False, False]]


def _seq(top1, prompt_len=1, heldout=False):
    n = len(top1)
    ids = torch.stack([torch.tensor(top1), torch.zeros(n, dtype=torch.int64)], 1)
    return Sequence(torch.zeros(n, dtype=torch.int64), torch.zeros(n, 6), ids, torch.ones(n, 2), prompt_len, heldout)


def test_draft_vocab_choice_and_coverage():
    seqs = [_seq([9, 3, 3, 3, 5, 5, 7]), _seq([8, 8, 8, 8, 8], heldout=True)]  # held-out never counts
    ids, cov = choose_draft_vocab(seqs, 2, 10)
    assert ids.tolist() == [3, 5] and cov == pytest.approx(5 / 7)  # 7 positions from prompt_len - 1 = 0
    assert draft_vocab_coverage(seqs, ids, 10) == pytest.approx(5 / 7)
    assert draft_vocab_coverage(seqs, torch.tensor([7]), 10) == pytest.approx(1 / 7)


def test_grow_draft_vocab_keeps_trained_rows_and_adds_the_most_predicted():
    """Growing a warm-started head's draft vocabulary: the old tokens keep their draft ids and trained
    lm_head rows, the new ones are the most-predicted tokens it lacked (by count), their rows the mean old
    row (below the top logit); every other weight is unchanged, so logits over the old tokens are unchanged."""
    from radar_ext.training.train_head import grow_draft_vocab
    cfg = EagleConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=40, draft_vocab_size=8, target_hidden_size=32, max_position_embeddings=64)
    head = EagleHead.init_random(cfg, seed=3)
    old_ids = torch.tensor([5, 1, 30, 7, 2, 11, 39, 0])
    head.set_draft_vocab(old_ids)
    counts = torch.zeros(40, dtype=torch.int64)
    counts[[5, 12, 20, 1, 33]] = torch.tensor([50, 40, 30, 20, 10])  # 5 and 1 are already drafted
    grown = grow_draft_vocab(head, 11, counts)
    assert grown.config.draft_vocab_size == 11
    assert grown.to_target_ids(torch.arange(11)).tolist() == old_ids.tolist() + [12, 20, 33]
    assert torch.equal(grown.lm_head.weight[:8], head.lm_head.weight)
    assert torch.allclose(grown.lm_head.weight[8:], head.lm_head.weight.mean(0).expand(3, -1))
    assert int(grown.t2d.sum()) == 11 and bool(grown.t2d[33]) and not bool(grown.t2d[3])
    old_state, new_state = head.state_dict(), grown.state_dict()
    for k, v in old_state.items():
        if not k.startswith("lm_head") and k not in ("d2t", "t2d"):
            assert torch.equal(new_state[k], v), k
    with pytest.raises(ValueError, match="only 40"):
        grow_draft_vocab(head, 41, counts)


@pytest.mark.parametrize("bad", ["-1", "2.5"])
def test_warmup_steps_is_checked_before_any_work(tmp_path, bad):
    """`--warmup-steps` below 0 (or not an integer) is refused by name before the target loads."""
    from radar_ext.training.train_head import main
    if bad == "2.5":
        with pytest.raises(SystemExit):  # argparse: invalid int value
            main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--warmup-steps", bad])
        return
    with pytest.raises(ValueError, match="--warmup-steps must be an integer >= 0"):
        main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--warmup-steps", bad])


@pytest.mark.parametrize("flag,bad,expected", [("--num-layers", "0", "an integer >= 1"),
                                               ("--extra-intermediate-size", "-4", "an integer >= 1"),
                                               ("--new-layer-lr", "0", "a number > 0")])
def test_layer_options_are_checked_before_any_work(tmp_path, flag, bad, expected):
    """`--num-layers` below 1, a non-positive `--extra-intermediate-size` or `--new-layer-lr` are refused by
    name before the target loads (an empty --data-dir would otherwise fail later, on the missing data)."""
    from radar_ext.training.train_head import main
    with pytest.raises(ValueError, match=f"{flag} must be {expected}"):
        main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), flag, bad])


@pytest.mark.parametrize("extra", [[], ["--num-layers", "1"]])
def test_extra_intermediate_size_needs_a_later_layer(tmp_path, extra):
    """--extra-intermediate-size on a one-layer head (a new head without --num-layers, or --num-layers 1) sizes
    nothing: refused by name before any work instead of silently ignored."""
    from radar_ext.training.train_head import main
    with pytest.raises(ValueError, match="--extra-intermediate-size 768 sizes the MLP of the decoder layers after "
                                         "the first, and this head has only one: add --num-layers 2"):
        main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--extra-intermediate-size", "768",
              *extra])


def test_deepen_refuses_extra_intermediate_size_for_a_one_layer_head():
    """A warm start from a one-layer head with --extra-intermediate-size but no --num-layers (deepen(head, 1, x))
    used to return the head unchanged; it is refused by name."""
    from radar_ext.training.train_head import deepen
    head, _ = _tiny(6)
    with pytest.raises(ValueError, match="--extra-intermediate-size 24 sizes the MLP"):
        deepen(head, 1, extra_intermediate_size=24)
    assert deepen(head, 1) is head


def test_hard_label_weight_mixes_the_top1_cross_entropy():
    """ttt_loss with hard_weight w = (1 - w) * soft CE + w * CE of the target's top-1 token, the hard term
    only where that token is in the draft vocabulary (its recorded probability is > 0)."""
    from radar_ext.training.train_head import ttt_loss
    head, _ = _tiny(6)
    g = torch.Generator().manual_seed(9)
    T = 6
    hidden = [torch.randn(1, T, 32, generator=g)]
    tids = torch.randint(0, 40, (1, T, 3), generator=g)
    tprobs = torch.tensor([[0.6, 0.3, 0.1]]).repeat(T, 1)[None].clone()
    tprobs[0, 3] = torch.tensor([0.0, 0.7, 0.3])  # position 3's top-1 is not draftable
    valid = torch.ones(1, T, dtype=torch.bool)
    with torch.no_grad():
        soft, _ = ttt_loss(head, hidden, tids, tprobs, valid, 0.8)
        mixed, _ = ttt_loss(head, hidden, tids, tprobs, valid, 0.8, hard_weight=0.25)
        lp = torch.log_softmax(head.logits(hidden[0][0, :T - 1]).float(), -1)   # step 1 at t -> target at t+1
        ids, pr = tids[0, 1:], tprobs[0, 1:]
        want_soft = -(pr * lp.gather(-1, ids)).sum(-1).mean()
        keep = pr[:, 0] > 0
        want_hard = -lp.gather(-1, ids[:, :1])[keep, 0].mean()
    torch.testing.assert_close(soft, want_soft)
    torch.testing.assert_close(mixed, 0.75 * want_soft + 0.25 * want_hard)
    assert not torch.isclose(mixed, soft)


def test_hard_label_weight_is_checked(tmp_path):
    from radar_ext.training.train_head import main
    with pytest.raises(ValueError, match=r"--hard-label-weight must be a number in \[0, 1\]"):
        main(["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--hard-label-weight", "1.5"])


def test_checkpoint_rng_state_round_trips():
    """The batch-order generator's state survives the checkpoint's JSON: a resumed run draws what the
    uninterrupted one would (before, JSON's lists made random.setstate raise on every resume)."""
    import random
    from radar_ext.training.train_head import rng_state_from_json, rng_state_to_json
    rng = random.Random(3)
    rng.random()
    text = rng_state_to_json(rng)
    want = [rng.random() for _ in range(5)]
    back = random.Random(0)
    back.setstate(rng_state_from_json(text))
    assert [back.random() for _ in range(5)] == want
