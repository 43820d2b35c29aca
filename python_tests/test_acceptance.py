"""Acceptance rules: greedy walk on hand-made trees, and statistical losslessness of the sampling
rule end to end (the decoder's token distribution vs the target's exact distribution), with a
deliberately wrong rule shown to fail the same threshold."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import radar_ext.acceptance as acceptance
from radar_ext import RadarDecoder, StaticPolicy
from radar_ext.acceptance import SamplingParams, greedy_accept, sample_accept, target_probs
from radar_ext.drafters import Drafter
from radar_ext.tree import make_tree


def tree_of(tokens, parents):
    t = torch.tensor([tokens])
    return make_tree(t, torch.tensor([parents]), torch.tensor([len(tokens)]))


def onehot_logits(argmaxes, vocab=8):
    logits = torch.zeros(1, len(argmaxes), vocab)
    logits[0, torch.arange(len(argmaxes)), torch.tensor(argmaxes)] = 5.0
    return logits


def test_greedy_walk():
    # root(5) -> a(1) -> c(3); root -> b(2) -> d(4); a -> e(6)
    tree = tree_of([5, 1, 2, 3, 4, 6], [-1, 0, 0, 1, 2, 1])
    # target: after root 2, after b 4, after d 7  => accept b, d, bonus 7
    acc = greedy_accept(tree, onehot_logits([2, 0, 4, 0, 7, 0]))
    assert acc.accepted_len == [2]
    assert acc.path[0, :3].tolist() == [0, 2, 4] and acc.tokens[0, :3].tolist() == [2, 4, 7]
    assert (acc.tokens[0, 3:] == -1).all() and (acc.path[0, 3:] == -1).all()
    # target wants a token no child has: nothing accepted, bonus = argmax at the root
    acc = greedy_accept(tree, onehot_logits([7, 0, 0, 0, 0, 0]))
    assert acc.accepted_len == [0] and acc.tokens[0, 0].item() == 7 and acc.path[0, 0].item() == 0
    # deeper branch through a: root->a->e, e is a leaf so the bonus comes from e's argmax
    acc = greedy_accept(tree, onehot_logits([1, 6, 0, 0, 0, 3]))
    assert acc.accepted_len == [2] and acc.tokens[0, :3].tolist() == [1, 6, 3]


def test_greedy_host_walk_equals_the_tensor_code(monkeypatch):
    """One CPU row takes the walk over host lists (_greedy_walk): on random trees it gives the tensor code's
    Acceptance exactly (path, tokens, lengths), and leaves the decision to it (None) exactly where two children
    of a node on the walk carry the target's argmax token."""
    import random
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    walked = handed = 0
    for _ in range(400):
        M = rng.randint(2, 24)
        parents = [-1] + [rng.randrange(j) for j in range(1, M)]
        vocab = rng.choice([3, 40])
        tokens = [rng.randrange(vocab) for _ in range(M)]
        logits = torch.randn(1, M, vocab, generator=g)
        for j in range(M):  # make long accepted paths likely: the argmax is some child's token
            kids = [c for c in range(M) if parents[c] == j]
            if kids and rng.random() < 0.8:
                logits[0, j, tokens[rng.choice(kids)]] += 10.0
        tree = tree_of(tokens, parents)
        walk = acceptance._greedy_walk(tree, logits.argmax(-1))
        with monkeypatch.context() as m:
            m.setattr(acceptance, "_greedy_walk", lambda *a: None)
            ref = greedy_accept(tree, logits)
        # is there a node on the reference path (or its end) with two children carrying its argmax?
        pred = logits[0].argmax(-1).tolist()
        path = [n for n in ref.path[0].tolist() if n >= 0]
        dup = any(sum(1 for c in range(M) if parents[c] == n and tokens[c] == pred[n]) > 1 for n in path)
        assert (walk is None) == dup
        if walk is None:
            handed += 1
            continue
        walked += 1
        assert torch.equal(walk.path, ref.path) and torch.equal(walk.tokens, ref.tokens)
        assert walk.accepted_len == ref.accepted_len and walk.tokens.dtype == walk.path.dtype == torch.int64
    assert walked > 100 and handed > 20
    # the decoder's entry point takes the walk for one row and the tensor code for two
    tree = tree_of([5, 1, 2], [-1, 0, 0])
    calls = []
    monkeypatch.setattr(acceptance, "_greedy_walk", lambda *a: calls.append(1))
    greedy_accept(tree, onehot_logits([2, 0, 4]))
    assert calls == [1]


def test_greedy_root_only():
    tree = tree_of([4], [-1])
    acc = greedy_accept(tree, onehot_logits([2]))
    assert acc.accepted_len == [0] and acc.tokens.tolist() == [[2]] and acc.path.tolist() == [[0]]


def test_greedy_root_only_rows_equal_the_tree_walk():
    """Root-only trees (plain steps, a batch of them) take the one-argmax path: the same Acceptance as the
    general walk over the same trees (a second, unused node appended to each row makes it run)."""
    from radar_ext.tree import root_only_tree
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 11, generator=g)
    logits[:, 0, 5] = -1e9  # the child below (token 5) is never the root's argmax: the walk accepts nothing
    fast = greedy_accept(root_only_tree(torch.tensor([1, 2, 3])), logits[:, :1])
    assert fast.tokens.dtype == torch.int64 and fast.path.tolist() == [[0]] * 3 and fast.accepted_len == [0, 0, 0]
    assert fast.tokens[:, 0].tolist() == logits[:, 0].argmax(-1).tolist()
    for b in range(3):  # root + one child: the general code, the same emitted token and path
        walk = greedy_accept(tree_of([4, 5], [-1, 0]), logits[b:b + 1])
        assert walk.accepted_len == [0] and walk.tokens[0, 0] == fast.tokens[b, 0] and walk.path[0, 0] == 0


def test_sample_accept_onehot_is_greedy():
    """With all mass on one token the sampling walk must follow it exactly."""
    tree = tree_of([5, 1, 2, 3, 4, 6], [-1, 0, 0, 1, 2, 1])
    logits = onehot_logits([2, 0, 4, 0, 7, 0]) * 100
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        acc = sample_accept(tree, logits, SamplingParams(), g)
        assert acc.accepted_len == [2] and acc.tokens[0, :3].tolist() == [2, 4, 7]


def test_target_probs_match_hf_warpers():
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    p = target_probs(logits, SamplingParams(temperature=0.7, top_k=5, top_p=0.8))
    assert torch.allclose(p.sum(-1), torch.ones(3))
    assert ((p > 0).sum(-1) <= 5).all()
    assert torch.equal(target_probs(logits, SamplingParams()), torch.softmax(logits, -1))


def test_root_only_sampling_is_one_draw_per_row_from_the_warped_distribution():
    """Plain steps (root-only trees, B = 3) take sample_accept's shortcut: per row the draw of the walk's bonus
    token (sample_node with no child) from the same generator stream, the same tokens; warpers are built
    once per setting."""
    from radar_ext.tree import root_only_tree
    logits = torch.randn(3, 1, 50, generator=torch.Generator().manual_seed(1)) * 2
    params = SamplingParams(temperature=0.8, top_k=7, top_p=0.9)
    assert params.warpers() is SamplingParams(temperature=0.8, top_k=7, top_p=0.9).warpers()
    tree = root_only_tree(torch.tensor([4, 5, 6]))
    for seed in range(20):
        acc = sample_accept(tree, logits, params, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        want = [acceptance.sample_node(target_probs(logits[b, 0:1], params)[0], [], g)[1] for b in range(3)]
        assert acc.tokens.tolist() == [[t] for t in want] and acc.path.tolist() == [[0]] * 3
        assert acc.accepted_len == [0, 0, 0]
        probs = target_probs(logits[:, 0], params)
        assert all(probs[b, t] > 0 for b, t in enumerate(want))  # never a token the warpers removed


# ------------------------------------------------------------------ statistical losslessness

VOCAB = 6
PARAMS = SamplingParams(temperature=1.3, top_k=5, top_p=0.97)


class FixedTreeDrafter(Drafter):
    """Proposes the same tree every cycle: root -> 0, 1, 2; 0 -> 0, 3; 1 -> 4."""

    def start(self, input_ids, features, root):
        pass

    def commit(self, emitted, n_emitted, features):
        pass

    def draft(self, req):
        t = torch.tensor([[int(req.root[0]), 0, 1, 2, 0, 3, 4]])
        p = torch.tensor([[-1, 0, 0, 0, 1, 1, 2]])
        return make_tree(t, p, torch.tensor([7]), draft_calls=1)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(cfg).eval()


def exact_distribution(model, prompt):
    """P(new tokens 2, 3) of the target's own warped sampling, summed over token 1: [V, V]."""
    def probs(seq):
        with torch.no_grad():
            return target_probs(model(torch.tensor([seq])).logits[0, -1:], PARAMS)[0].double()
    out = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    p1 = probs(prompt)
    for a in range(VOCAB):
        p2 = probs(prompt + [a])
        for b in range(VOCAB):
            out[b] += p1[a] * p2[b] * probs(prompt + [a, b])
    return out


def empirical_distribution(model, prompt, n, policy=None, cycles=None):
    """cycles: a list that gets (skipped, drafted) cycle counts per generate call."""
    dec = RadarDecoder(model, FixedTreeDrafter(), policy or StaticPolicy(1), verify_budget=6)
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    ids = torch.tensor([prompt])
    for _ in range(n):
        out = dec.generate(ids, max_new_tokens=3, do_sample=True, temperature=PARAMS.temperature,
                           top_k=PARAMS.top_k, top_p=PARAMS.top_p, generator=g)
        counts[out[0, -2], out[0, -1]] += 1
        if cycles is not None:
            s = dec.last_stats
            cycles.append((s.skipped_cycles, s.cycles - s.skipped_cycles))
    return counts / n


N_SAMPLES = 800


def tv_threshold(exact, n):
    """The largest TV that 400 simulated n-sample draws from the exact distribution reach: what
    sampling noise alone produces (about 0.1 here); a lossless rule stays below it."""
    g = torch.Generator().manual_seed(0)
    flat = exact.flatten().float()
    draws = torch.multinomial(flat.expand(400, -1), n, replacement=True, generator=g)
    freq = torch.zeros(400, flat.numel()).scatter_add_(1, draws, torch.ones(400, n)) / n
    return (0.5 * (freq - flat).abs().sum(1)).max().item()


def tv_of_decoder(model, policy=None, cycles=None):
    prompt = [1, 2, 3]
    exact = exact_distribution(model, prompt)
    assert abs(exact.sum().item() - 1) < 1e-6
    tv = 0.5 * (empirical_distribution(model, prompt, N_SAMPLES, policy, cycles) - exact).abs().sum().item()
    return tv, tv_threshold(exact, N_SAMPLES)


def test_sampling_is_lossless(small_model):
    tv, threshold = tv_of_decoder(small_model)
    assert tv < threshold, (tv, threshold)


def test_sampling_is_lossless_with_skipped_cycles(small_model):
    """The first cycle after the prefill is a plain step (no draft), the next one drafts the fixed tree:
    the two new tokens measured are then one of each, and their joint distribution is the target's."""
    from test_decoder import SkipPattern
    cycles = []
    tv, threshold = tv_of_decoder(small_model, SkipPattern((False, True), depth=1), cycles)
    assert tv < threshold, (tv, threshold)
    assert all(skipped == 1 and drafted >= 1 for skipped, drafted in cycles), cycles[:5]


def test_wrong_rule_fails_the_same_test(small_model, monkeypatch):
    """Bonus drawn from the unmodified p (rejected tokens not removed): biased towards drafted
    tokens. The statistical test above must be able to see that."""
    def wrong_sample_node(p, child_tokens, generator):
        original = p.clone()
        for k, x in enumerate(child_tokens):
            u = torch.rand((), generator=generator)
            if bool(u * p.sum() < p[x]):
                return k, x
            p[x] = 0.0
        return -1, int(torch.multinomial(original, 1, generator=generator))

    monkeypatch.setattr(acceptance, "sample_node", wrong_sample_node)
    tv, threshold = tv_of_decoder(small_model)
    assert tv > threshold, (tv, threshold)


def test_draw_matches_the_distribution_and_never_a_zero():
    """acceptance.draw (inverse CDF, the bonus and first-token draw): frequencies of 40k draws match p / sum(p)
    within 4 standard errors, zero-mass tokens never come, the same generator seed gives the same draws, and a
    uniform rounded up to the total still lands on a token with mass."""
    from radar_ext.acceptance import draw
    p = torch.tensor([0.0, 1.5, 0.0, 0.9, 0.6, 0.0, 3.0, 0.0])
    g = torch.Generator().manual_seed(5)
    n = 40000
    counts = torch.bincount(torch.tensor([draw(p, g) for _ in range(n)]), minlength=p.numel()).double()
    want = (p / p.sum()).double()
    se = (want * (1 - want) / n).sqrt()
    assert ((counts / n - want).abs() <= 4 * se + 1e-12).all(), (counts / n, want)
    assert counts[p == 0].sum() == 0
    a = [draw(p, torch.Generator().manual_seed(9)) for _ in range(3)]
    assert a == [draw(p, torch.Generator().manual_seed(9)) for _ in range(3)]
    real_rand = torch.rand
    try:  # u * total == total: searchsorted runs past the end; the last token with mass is taken
        torch.rand = lambda *a, **k: real_rand(*a, **k) * 0 + 1.0
        assert draw(p) == 6
        assert draw(torch.tensor([0.0, 2.0, 0.0])) == 1
    finally:
        torch.rand = real_rand


# ---- the generator and the target's device -------------------------------------------------------

def _strict_rand(real_rand):
    """torch.rand as a GPU sees it: a generator must live on the device it draws for."""
    def rand(*args, generator=None, device=None, **kwargs):
        if generator is not None and torch.device(device if device is not None else "cpu").type != generator.device.type:
            raise RuntimeError(f"Expected a '{torch.device(device).type}' device type for generator but found "
                               f"'{generator.device.type}'")
        return real_rand(*args, generator=generator, device=device, **kwargs)
    return rand


def test_a_cpu_generator_serves_another_device(monkeypatch):
    """A CPU torch.Generator with a target on another device (CUDA in use; meta here) draws on the CPU and
    copies the draws over: no device-mismatch error, and the same stream a CPU target gets."""
    monkeypatch.setattr(torch, "rand", _strict_rand(torch.rand))
    g = torch.Generator().manual_seed(4)
    u = acceptance.uniform((3,), g, torch.device("meta"), torch.float64)
    assert u.device.type == "meta" and u.dtype == torch.float64 and u.shape == (3,)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(acceptance.uniform((5,), g1, torch.device("cpu")), torch.rand((5,), generator=g2))
    assert acceptance.uniform((2,), None, torch.device("meta")).device.type == "meta"  # the device's own default


def test_a_generator_that_is_not_one_is_named():
    p = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match=r"^generator must be a torch.Generator or None, got int$"):
        acceptance.draw(p, 1234)


def test_cuda_target_with_a_cpu_generator(cuda):
    """Sampling acceptance on CUDA logits with a CPU generator: runs, and gives the CPU run's tokens."""
    tree = tree_of([5, 1, 2, 3], [-1, 0, 0, 1])
    logits = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=0.9)
    for seed in range(5):
        on_cpu = sample_accept(tree, logits, params, torch.Generator().manual_seed(seed))
        cuda_tree = make_tree(tree.tokens.to(cuda), tree.parents.to(cuda), tree.n_nodes.to(cuda))
        on_gpu = sample_accept(cuda_tree, logits.to(cuda), params, torch.Generator().manual_seed(seed))
        # the same uniforms on both (the CPU stream); the softmaxes differ in the last bits at most
        assert on_gpu.tokens.cpu().tolist() == on_cpu.tokens.tolist(), seed
        p = torch.softmax(logits[0, 0], -1)
        assert acceptance.draw(p.to(cuda), torch.Generator().manual_seed(seed)) == acceptance.draw(
            p, torch.Generator().manual_seed(seed))
