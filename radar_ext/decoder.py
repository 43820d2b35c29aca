"""RadarDecoder: lossless tree speculative decoding for stock Hugging Face causal LMs.

One cycle = draft (drafter + policy; or, when the policy declines before the first draft call, a plain
step: the root alone) -> build tree -> verify (one target forward) -> accept -> commit caches.
`generate` below is the whole algorithm; the detail lives in the callees.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from radar_ext import kv_cache, lean_forward
from radar_ext.acceptance import Acceptance, draw, greedy_accept, sample_accept, target_probs
from radar_ext.drafters.base import DraftRequest, Drafter
from radar_ext.drafters.plain import PlainDrafter
from radar_ext.generation_args import GenerationSettings, resolve as resolve_generation_args
from radar_ext.fast_linear import applies_to as fast_linear_applies, fast_linear as fast_linear_ctx
from radar_ext.policies import CostInfo, CycleOutcome, History, Policy, PreDraftStep, StaticPolicy
from radar_ext.policies.base import guess_probability
from radar_ext.tree import SOURCE_BOTH, SOURCE_LOOKUP, root_only_tree, stack_trees
from radar_ext.verifier import prefill, prefill_each_row, verify, verify_rows

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class DecodeStats:
    tokens: int = 0                 # new tokens emitted
    seconds: float = 0.0            # wall time of generate()
    cycles: int = 0                 # target forwards after the prefill (batch > 1: rows verified, summed)
    forwards: int = 0               # target forwards after the prefill (= cycles at batch 1)
    skipped_cycles: int = 0         # cycles without a draft call: the policy's plain steps and lookup steps
    lookup_steps: int = 0           # of those, cycles that verified context-lookup nodes (Drafter.lookup_step)
    draft_calls: int = 0            # summed over cycles
    verify_tokens: int = 0          # draft tokens verified, summed over cycles (root excluded)
    accepted_hist: list = field(default_factory=list)  # accepted_hist[n] = cycles accepting n drafts
    lookup_accepted: int = 0        # accepted draft tokens only a context lookup proposed (hybrid trees)
    shared_accepted: int = 0        # accepted draft tokens both the drafter and a lookup proposed (hybrid trees)
    time_prefill: float = 0.0
    time_draft: float = 0.0         # drafter forwards (policy excluded)
    time_policy: float = 0.0
    time_verify: float = 0.0        # target forwards over trees
    time_other: float = 0.0         # acceptance, cache commits, streaming, bookkeeping

    @property
    def tau(self) -> float:
        """Mean (accepted length + 1) over the cycles (the prefill's first token not counted)."""
        return sum((n + 1) * c for n, c in enumerate(self.accepted_hist)) / self.cycles if self.cycles else 0.0

    @property
    def mean_draft_calls(self) -> float:
        return self.draft_calls / self.cycles if self.cycles else 0.0

    @property
    def mean_verify_budget(self) -> float:
        return self.verify_tokens / self.cycles if self.cycles else 0.0

    @property
    def skip_share(self) -> float:
        return self.skipped_cycles / self.cycles if self.cycles else 0.0

    @property
    def lookup_step_share(self) -> float:
        return self.lookup_steps / self.cycles if self.cycles else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(tau=self.tau, mean_draft_calls=self.mean_draft_calls,
                 mean_verify_budget=self.mean_verify_budget, skip_share=self.skip_share,
                 lookup_step_share=self.lookup_step_share, tokens_per_second=self.tokens_per_second)
        return d

    def summary(self) -> str:
        t = self.seconds or 1.0
        return (f"tokens={self.tokens} time={self.seconds:.2f}s tok/s={self.tokens_per_second:.2f} "
                f"cycles={self.cycles} skipped={self.skipped_cycles} lookup_steps={self.lookup_steps} tau={self.tau:.2f} "
                f"draft_calls={self.mean_draft_calls:.2f} "
                f"V={self.mean_verify_budget:.1f} accepted_hist={self.accepted_hist} | time: "
                f"prefill {self.time_prefill / t:.0%} draft {self.time_draft / t:.0%} "
                f"policy {self.time_policy / t:.0%} verify {self.time_verify / t:.0%} "
                f"other {self.time_other / t:.0%}")


class _TimedPolicy(Policy):
    """Forwards to the real policy and adds its time to the stats (policy share of the cycle)."""

    def __init__(self, policy: Policy, stats: DecodeStats):
        self.policy, self.stats = policy, stats
        self.max_draft_calls = policy.max_draft_calls
        self.pre_draft_lookup = policy.pre_draft_lookup

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.stats.time_policy += time.perf_counter() - t0

    def start_sequence(self):
        return self._timed(self.policy.start_sequence)

    def reset(self):
        return self._timed(self.policy.reset)

    def observe(self, outcome):
        return self._timed(self.policy.observe, outcome)

    def should_draft(self, step):
        return self._timed(self.policy.should_draft, step)

    def plans_plain_steps(self, *args):
        return self._timed(self.policy.plans_plain_steps, *args)

    def should_continue(self, step):
        return self._timed(self.policy.should_continue, step)

    def verify_budget(self, step):
        return self._timed(self.policy.verify_budget, step)


class RadarDecoder:
    def __init__(self, target, drafter: Drafter | None = None, policy: Policy | None = None, tree_topk: int = 10,
                 verify_budget: int = 60, fast_linear: bool = True, lean_verify: bool = True,
                 fused_forward: bool = True, greedy_head: bool = True, lookup_steps: bool = True):
        """drafter: None (PlainDrafter) decodes one token per target forward through the same verify path
        (our own plain decoding: token-identical to HF greedy generate, the `ar-fast` baseline).
        fast_linear: verify forwards of a float32 CPU target use the few-row skinny_linear kernel
        and sdpa attention without K/V copies (radar_ext.fast_linear; the target is changed only during
        those forwards), where it applies (float32 CPU target, AVX-512 kernel available; elsewhere it is
        a no-op). On by default: on an idle 2-core AVX-512 machine at 2 threads it makes a verify
        forward 1.08x faster at 2 tree tokens, 1.23x at 4, 1.33x at 8, 1.12x at 16 (bench/bench_verify.py).
        Linears whose float32 weights are exact GGUF Q4_1 / Q8_0 dequantizations (a model loaded from a GGUF
        file, as the default target) run from those blocks (radar_ext.quant, skinny_linear_quant: same bits,
        1/6 or 1/4 of the bytes; the default target's verify of 1 / 4 / 8 tree tokens 31 / 37 / 50 ms against
        48 / 54 / 59 on the float32 kernel and HF's own 1-token step 47, bench/bench_verify.py).
        fast_linear=False keeps every verify on the target's own linears.
        lean_verify: a plain Llama target with sdpa attention verifies through radar_ext.lean_forward
        (the same ops and bits without transformers' per-call plumbing; a 2-3 token verify of the
        default target is ~7% faster than through the model's forward, bench/bench_verify.py); False runs every verify through the model's own forward.
        fused_forward (on by default; CPU, float32 Llama): the lean verify runs as one torch-free C++ call
        (radar_ext::llama_forward; radar_ext.lean_forward.fused_reason says when it cannot, and the lean
        forward runs, the reason logged once). Its logits equal HF's up to float32 rounding (max |dlogit|
        1.5e-5..4.8e-5 on the default target, as the lean path's quantized linears: 1.1e-5..5e-5), greedy
        output identical to HF's on every dev-set answer; on the default target a 1 / 4 / 8 token verify takes
        9.0 / 12.9 / 20.3 ms against 15.0 / 21.7 / 28.5 (bench/bench_verify.py). False: the lean forward.
        greedy_head (on by default; with fused_forward): greedy decoding without logits processors or score
        outputs takes the LM head's argmax without computing all its logits where the head is Q8_0 blocks and the
        CPU has AVX512-VNNI (radar_ext.lean_forward.greedy_head_usable): every logit is bounded from an int8 copy
        of the hidden state and only the few that can be the largest are computed exactly, so the same tokens
        as the logits' argmax (csrc/kernels/argmax_head.h). False: the logits, every verify.
        lookup_steps (on by default): at temperature 0 and batch size 1, a drafter with a context lookup (HybridDrafter)
        is asked before every pre-draft decision for a lookup step (Drafter.lookup_step: its lookup's best nodes
        verified without a draft call, where they pay under the policy's calibrated costs, PolicyCosts); only
        policies that carry such costs (the learned ones) take them. False: the policy decides every cycle."""
        model_type = getattr(getattr(target, "config", None), "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise NotImplementedError(f"target model_type must be one of {list(SUPPORTED_MODEL_TYPES)}, "
                                      f"got {model_type!r}")
        drafter = PlainDrafter() if drafter is None else drafter
        if not isinstance(drafter, Drafter):
            raise TypeError(f"drafter must be a radar_ext Drafter (EagleDrafter, NgramDrafter) or None (plain "
                            f"decoding), got {type(drafter).__name__}")
        policy = StaticPolicy() if policy is None else policy
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a radar_ext Policy (e.g. StaticPolicy), got {type(policy).__name__}")
        for name, v in (("tree_topk", tree_topk), ("verify_budget", verify_budget)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        drafter.check_target(target)
        self.target, self.drafter, self.policy = target, drafter, policy
        self.tree_topk, self.verify_budget = tree_topk, verify_budget
        self.fast_linear = bool(fast_linear) and fast_linear_applies(target)
        self.lean_verify = bool(lean_verify)
        self.fused_forward = bool(fused_forward)
        self.greedy_head = bool(greedy_head)
        if not isinstance(lookup_steps, bool):
            raise ValueError(f"lookup_steps must be True or False, got {lookup_steps!r}")
        self.lookup_steps = lookup_steps
        self._step_costs = None  # this call's lookup-step cost table (_lookup_step_costs), None: no lookup steps
        self.costs = CostInfo()
        self.history = History()  # the sequence's history features, handed to every policy decision
        self.last_stats = DecodeStats()

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, max_new_tokens=None, do_sample=None, temperature=None,
                 top_p=None, top_k=None, eos_token_id=None, streamer=None, generation_config=None,
                 generator: torch.Generator | None = None, *, inputs=None, max_length=None, **kwargs):
        """Like `target.generate`: returns LongTensor [B, prompt + new], or HF's GenerateDecoderOnlyOutput
        with return_dict_in_generate=True. Arguments are merged as HF merges them (call > `generation_config`
        > the target's > HF's defaults: 20 new tokens with HF's warning when no length is set, greedy).
        `generator` drives the sampling draws. Logits processors (`repetition_penalty`, ...,
        `logits_processor=`, called once per prefix) and stopping criteria (`stop_strings`, `max_time`,
        `stopping_criteria=`, checked per emitted token) run as in HF (radar_ext.processors); what is not
        reproduced is refused by name (radar_ext.generation_args, docs/generate_parity.md)."""
        t_start = time.perf_counter()
        given, pads = self._check_inputs(_one_input(input_ids, inputs), attention_mask)
        cfg = resolve_generation_args(self.target, given, pads, generation_config,
                                      max_new_tokens=max_new_tokens, max_length=max_length, do_sample=do_sample,
                                      temperature=temperature, top_p=top_p, top_k=top_k, eos_token_id=eos_token_id,
                                      has_attention_mask=attention_mask is not None, extra=kwargs)
        _check_generator(generator, given.device)
        stats = self.last_stats = DecodeStats()
        self._step_costs = self._lookup_step_costs(cfg, given.shape[0])
        # the target is checked once per call, not before every verify (lean_forward.pinned)
        with lean_forward.pinned(self.target, native=True, fused=self.fused_forward):
            if given.shape[0] > 1:
                out = self._generate_batch(given, pads, streamer, cfg, generator, stats)
                return cfg.processing.output(_finish_stats(out, stats, t_start))
            return self._generate_one(given, pads, streamer, cfg, generator, stats, t_start)

    def _generate_one(self, given, pads, streamer, cfg, generator, stats, t_start):
        """Batch 1."""
        n_pad = pads[0]
        input_ids = given[:, n_pad:]  # left padding: HF's positions start at the first real token, so drop it
        policy = _TimedPolicy(self.policy, stats)
        if streamer is not None:
            streamer.put(given.cpu())  # HF protocol: the prompt first (TextStreamer may skip it)
        policy.start_sequence()
        self.history.start()
        cache, out = self._prefill(input_ids, cfg, stats, generator)
        self._linears = fast_linear_ctx(self.target, enabled=self.fast_linear, quantized=True)  # entered by _verify only
        P = input_ids.shape[1]
        temperature = cfg.sampling.temperature if cfg.do_sample else 0.0
        # every cycle a plain step, known before decoding: decode as plain decoding does (no feature capture for a
        # drafter that will never draft, no per-cycle decision); the same trees, so the same tokens
        plain = self._step_costs is None and policy.plans_plain_steps(P + 1, P + cfg.max_new_tokens - 1, temperature)
        drafter = None if plain else self.drafter
        emitted = out.new_empty(1, 0)
        while True:
            out, stopped = cfg.processing.cut(emitted, out)  # stopping criteria, per emitted token
            emitted = torch.cat([emitted, out], 1)  # tokens of this cycle, already checked for EOS/limit
            if streamer is not None:
                streamer.put(out[0].cpu())
            if emitted.shape[1] >= cfg.max_new_tokens or self._hit_eos(out, cfg) or stopped:
                break
            if plain:
                stats.skipped_cycles += 1
                tree = root_only_tree(emitted[:, -1])
            else:
                tree = self._draft(self.drafter, policy, self.history, emitted[:, -1], P + emitted.shape[1], stats, cfg)
            res = self._verify(cache, tree, P + emitted.shape[1] - 1, stats, drafter, cfg)
            acc = self._accept(tree, res, cfg, generator, emitted)
            out = self._commit(cache, tree, acc, res.features, P + emitted.shape[1] - 1, cfg, emitted.shape[1], stats,
                               drafter)
            if not plain:
                outcome = _outcome(tree, acc)
                self.history.observe(outcome)
                policy.observe(outcome)
        if streamer is not None:
            streamer.end()
        stats.tokens = emitted.shape[1]
        return cfg.processing.output(_finish_stats(torch.cat([given, emitted.to(given.device)], 1), stats, t_start))

    def _generate_batch(self, given, pads, streamer, cfg, generator, stats):
        """B > 1 (docs/BATCH.md): every row drafts its own tree with its own controller decision, one
        rectangular verify [B, M] on a dense cache with per-row lengths, then every row accepts, moves its
        path to its own slots and stops on its own EOS / max_new_tokens; a finished row leaves the batch."""
        _check_batch_settings(given.shape[0], streamer, cfg)
        plain = self._plans_plain_batch(given, pads, cfg)
        cache, batch = self._prefill_batch(given, pads, cfg, generator, stats, plain)
        self._linears = fast_linear_ctx(self.target, enabled=self.fast_linear, quantized=True)
        skips = plain and not isinstance(self.drafter, PlainDrafter)  # the controller's plain steps, counted
        while batch.size:
            if plain:  # plain decoding's batch: every row the root alone, no draft, no decision
                trees, tree = None, root_only_tree(batch.roots)
                stats.skipped_cycles += batch.size if skips else 0
            else:
                trees = [self._draft(batch.drafters[b], batch.policies[b], batch.histories[b], batch.roots[b:b + 1],
                                     batch.seq_len(b), stats, cfg, batch.size) for b in range(batch.size)]
                tree = stack_trees(trees)                                      # [B, M], unused nodes masked
            start, res = self._verify_rows(cache, tree, batch, stats, plain, cfg)
            acc = self._accept(tree, res, cfg, generator, None)
            self._commit_rows(cache, start, trees, acc, res.features, batch, cfg, stats)
            batch.drop_finished(cache)
        stats.tokens = sum(len(e) for e in batch.emitted)
        return batch.output(given, cfg.pad_token_id)

    def _plans_plain_batch(self, given, pads, cfg) -> bool:
        """True when the batch is plain decoding from the start: the drafter is PlainDrafter, or the controller
        plans plain steps (Policy.plans_plain_steps) for every row's whole answer at every batch size the call
        passes through with more than one row (B, B - 1, ..., 2, as rows finish). The batch then decodes as
        `ar-fast` does: no feature capture, no drafter, no per-row decision. Its last row, once alone, stays
        plain (the head never saw the target's features of this call, so it cannot draft there)."""
        if isinstance(self.drafter, PlainDrafter):
            return True
        temperature = cfg.sampling.temperature if cfg.do_sample else 0.0
        P = given.shape[1]
        return all(self.policy.plans_plain_steps(P - pad + 1, P - pad + cfg.max_new_tokens - 1, temperature, size)
                   for size in range(given.shape[0], 1, -1) for pad in sorted(set(pads)))

    # ------------------------------------------------------------------ steps
    def _prefill(self, input_ids, cfg, stats, generator):
        t0 = time.perf_counter()
        cache = kv_cache.new_target_cache(self.target)
        res = prefill(self.target, cache, input_ids, self.drafter.feature_layers,
                      fused=self.fused_forward and self.lean_verify)
        root = self._first_token(res.logits[:, -1], cfg, generator)            # [B]
        self.drafter.start(input_ids, res.features, root)
        stats.time_prefill += time.perf_counter() - t0
        return cache, root.view(-1, 1)

    def _lookup_step_costs(self, cfg, batch_size: int):
        """The cost table of this call's lookup steps (drafters.hybrid.lookup_step_costs over the policy's PolicyCosts),
        or None where none are taken: lookup_steps off, sampling or logits processors (the lookup scores are rates
        of greedy acceptance), a batch (B > 1), a drafter without lookup steps, a policy without calibrated costs."""
        from radar_ext.drafters.hybrid import lookup_step_costs
        from radar_ext.policies.costs import PolicyCosts

        costs = getattr(self.policy, "costs", None)
        if (not self.lookup_steps or cfg.do_sample or cfg.processing.walk or batch_size != 1
                or type(self.drafter).lookup_step is Drafter.lookup_step or not isinstance(costs, PolicyCosts)):
            return None
        return lookup_step_costs(costs, self.verify_budget)  # ~60 curve reads, once per generate

    def _draft(self, drafter, policy, history, root, seq_len, stats, cfg, batch_size: int = 1):
        """One sequence's tree: root [1] its last emitted token, seq_len its prompt + emitted tokens."""
        t0 = time.perf_counter()
        t_policy = stats.time_policy
        req = DraftRequest(root=root, seq_len=seq_len, tree_topk=self.tree_topk,
                           verify_budget=self.verify_budget, policy=policy, costs=self.costs,
                           temperature=cfg.sampling.temperature if cfg.do_sample else 0.0, history=history,
                           batch_size=batch_size)
        if self._step_costs is not None:
            tree = drafter.lookup_step(req, self._step_costs)
            if tree is not None:  # lookup nodes that pay without a draft call: the policy is not asked
                stats.skipped_cycles += 1
                stats.lookup_steps += 1
                stats.verify_tokens += tree.verify_budget
                stats.time_draft += time.perf_counter() - t0
                return tree
        lookup = drafter.lookup_info() if policy.pre_draft_lookup else None
        if not policy.should_draft(PreDraftStep(req.seq_len, self.costs, history, req.temperature, batch_size, lookup)):
            stats.skipped_cycles += 1
            return root_only_tree(req.root)  # a plain step: no draft call, the drafter catches up next time
        tree = drafter.draft(req)
        dt = time.perf_counter() - t0 - (stats.time_policy - t_policy)
        stats.time_draft += dt
        stats.draft_calls += tree.draft_calls
        stats.verify_tokens += tree.verify_budget
        if tree.draft_calls:
            self.costs.draft_call = _ema(self.costs.draft_call, dt / tree.draft_calls)
        return tree

    def _linears_ctx(self):
        """fast_linear's context for a verify, or none once the fused forward runs (the pinned forward's last
        call took it: it reads no nn.Linear, and entering fast_linear costs ~0.06 ms a verify)."""
        return contextlib.nullcontext() if lean_forward.last_fused(self.target) else self._linears

    def _greedy(self, cfg) -> bool:
        """Whether this call's verifies may take the greedy head (VerifyOut.argmax instead of logits)."""
        return self.greedy_head and self.fused_forward and not cfg.do_sample and not cfg.processing.walk

    def _verify(self, cache, tree, prefix_len, stats, drafter, cfg):
        """VerifyOut of one sequence's tree; drafter: the one that drafts this sequence (its feature layers are
        captured), None for none."""
        t0 = time.perf_counter()
        with self._linears_ctx():
            res = verify(self.target, cache, tree, prefix_len, drafter.feature_layers if drafter is not None else None,
                         lean=self.lean_verify, fused=self.fused_forward, greedy=self._greedy(cfg))
        self._note_verify(t0, stats, 1, tree.verify_budget)
        return res

    def _verify_rows(self, cache, tree, batch, stats, plain: bool, cfg):
        """Batch > 1: (the tree block's first slot, VerifyOut: features [B, M, F] or None; None when `plain`: no
        drafter reads them)."""
        t0 = time.perf_counter()
        start = kv_cache.cache_length(cache)
        with self._linears_ctx():
            res = verify_rows(self.target, cache, tree, batch.lengths, batch.pads,
                              None if plain else self.drafter.feature_layers, lean=self.lean_verify,
                              fused=self.fused_forward, greedy=self._greedy(cfg))
        self._note_verify(t0, stats, batch.size, tree.tokens.shape[1] - 1)
        return start, res

    def _note_verify(self, t0, stats, rows: int, verify_budget: int) -> None:
        """One target forward of `rows` sequences, begun at t0: its time, and the measured costs the policies read."""
        dt = time.perf_counter() - t0
        stats.time_verify += dt
        stats.cycles += rows
        stats.forwards += 1
        self.costs.verify = _ema(self.costs.verify, dt)
        self.costs.mean_verify_budget = _ema(self.costs.mean_verify_budget, float(verify_budget))

    def _accept(self, tree, res, cfg, generator, emitted) -> Acceptance:
        if res.logits is None:  # the greedy head's argmax (_greedy)
            return greedy_accept(tree, None, res.argmax)
        if cfg.processing.walk:  # processors or score outputs: node by node, each with its own prefix
            return cfg.processing.accept(tree, res.logits, emitted, cfg.do_sample, generator)
        if cfg.do_sample:
            return sample_accept(tree, res.logits, cfg.sampling, generator)
        return greedy_accept(tree, res.logits)

    def _commit(self, cache, tree, acc, features, prefix_len, cfg, n_done, stats, drafter):
        """Compact the target cache to the accepted path, tell the drafter (None: no drafter to tell), and return
        the tokens this cycle emits [1, n], cut at the first EOS and at max_new_tokens."""
        n = acc.accepted_len[0] + 1
        path = acc.path[0, :n]
        kv_cache.commit_path(cache, prefix_len, path)
        if drafter is not None:
            drafter.commit(acc.tokens, n, features[:, path] if features is not None else None)
        _count_accepted(stats, tree, path, n)
        out = acc.tokens[:, :n]
        n_keep = min(n, cfg.max_new_tokens - n_done)
        if cfg.eos_token_ids:
            eos = cfg.eos_token_ids
            hit = next((i for i, t in enumerate(out[0, :n_keep].tolist()) if t in eos), None)  # host sync: n ints
            if hit is not None:
                n_keep = hit + 1               # stop right after the first EOS
        return out[:, :n_keep]

    def _commit_rows(self, cache, start, trees, acc, features, batch, cfg, stats):
        """Batch > 1: every row's accepted path to its own cache slots, its drafter and controller told (trees
        None: a batch of plain decoding, neither drafts), its tokens cut at its first EOS and at max_new_tokens."""
        n_keep = torch.tensor(acc.accepted_len, dtype=torch.int64) + 1                 # [B]
        kv_cache.commit_rows(cache, start, batch.lengths, acc.path, n_keep.to(batch.lengths.device))
        batch.lengths += n_keep.to(batch.lengths.device)
        eos = set(cfg.eos_token_ids)
        paths, tokens = acc.path.tolist(), acc.tokens.tolist()  # host sync: a few ints per row
        for b, n in enumerate(n_keep.tolist()):
            _count_accepted(stats, None if trees is None else trees[b], paths[b], n)
            if trees is not None:
                feats = features[b:b + 1, paths[b][:n]] if features is not None else None
                batch.drafters[b].commit(acc.tokens[b:b + 1], n, feats)
                outcome = _outcome(trees[b], acc, b)
                batch.histories[b].observe(outcome)
                batch.policies[b].observe(outcome)
            batch.emit(b, tokens[b][:n], cfg.max_new_tokens, eos)

    def _prefill_batch(self, given, pads, cfg, generator, stats, plain: bool):
        """plain: the batch never drafts (_plans_plain_batch): its rows get PlainDrafters, the prompt's
        features are not captured."""
        t0 = time.perf_counter()
        B = given.shape[0]
        cache = kv_cache.new_target_cache(self.target)
        pads_t = torch.tensor(pads, dtype=torch.int64, device=given.device)
        drafter = PlainDrafter() if plain else self.drafter
        # each row alone at its own length (no compute on left padding), its K/V into the batch's dense cache
        res = prefill_each_row(self.target, cache, given, pads, drafter.feature_layers,
                               fused=self.fused_forward and self.lean_verify)
        roots = self._first_token(res.logits[:, -1], cfg, generator)                  # [B]
        batch = _Batch(rows=list(range(B)), lengths=torch.full((B,), given.shape[1], dtype=torch.int64,
                                                                 device=given.device),
                       pads=pads_t, prompt_lens=[given.shape[1] - p for p in pads], roots=roots.clone(),
                       drafters=[drafter.fork() for _ in range(B)],
                       policies=[_TimedPolicy(self.policy.fork(), stats) for _ in range(B)],
                       histories=[History() for _ in range(B)], emitted=[[] for _ in range(B)], done=[False] * B)
        for b in range(B):
            feats = res.features[b:b + 1, pads[b]:] if res.features is not None else None
            batch.drafters[b].start(given[b:b + 1, pads[b]:], feats, roots[b:b + 1])
            batch.policies[b].start_sequence()
            batch.emit(b, [int(roots[b])], cfg.max_new_tokens, set(cfg.eos_token_ids))  # host sync: B ints
        stats.time_prefill += time.perf_counter() - t0
        batch.drop_finished(cache)
        return cache, batch

    # ------------------------------------------------------------------ helpers
    def _first_token(self, logits, cfg, generator):
        """The token after the prompt from the prefill logits [B, V]."""
        if cfg.processing.walk:
            return cfg.processing.first_token(logits, cfg.do_sample, generator)
        if not cfg.do_sample:
            return logits.argmax(-1)
        probs = target_probs(logits, cfg.sampling)                                # [B, V]
        return torch.tensor([draw(row, generator) for row in probs], device=logits.device)

    @staticmethod
    def _hit_eos(out, cfg) -> bool:
        return bool(cfg.eos_token_ids) and int(out[0, -1]) in cfg.eos_token_ids  # host sync: 1 int

    def _check_inputs(self, input_ids, attention_mask) -> tuple[torch.Tensor, int]:
        """input_ids on the target's device and the number of left-padding positions (attention_mask
        zeros before the prompt)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.int64 or input_ids.dim() != 2:
            got = f"{input_ids.dtype} {list(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an int64 tensor [B, prompt_len], got {got}")
        B, P = input_ids.shape
        if B < 1:
            raise ValueError(f"input_ids must hold at least one sequence (batch size >= 1), got {list(input_ids.shape)}")
        if P < 1:
            raise ValueError(f"input_ids must hold at least one token, got an empty prompt {list(input_ids.shape)}")
        vocab = self.target.get_input_embeddings().weight.shape[0]
        lo, hi = int(input_ids.min()), int(input_ids.max())  # host sync: once per generate
        if lo < 0 or hi >= vocab:
            raise ValueError(f"input_ids must be token ids in [0, {vocab}), got values in [{lo}, {hi}]")
        pads = [0] * B if attention_mask is None else _left_padding(attention_mask, B, P)
        limit = getattr(self.target.config, "max_position_embeddings", None)
        if limit is not None and P - min(pads) >= limit:
            raise ValueError(f"input_ids: prompt length must be < the model's max_position_embeddings = {limit}, "
                             f"got {P - min(pads)}")
        return input_ids.to(self.target.device), pads


def _left_padding(attention_mask, B: int, P: int) -> list:
    """Zeros before the prompt in each row of a [B, P] attention_mask (HF's left padding), per row; any
    other zero (right padding, holes) and a row of padding only are refused."""
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, P):
        got = list(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a tensor with the shape of input_ids {[B, P]}, got {got}")
    pads = []
    for b, row in enumerate(attention_mask.tolist()):  # host sync: once per generate
        if any(v not in (0, 1) for v in row):
            raise ValueError("attention_mask must hold only 0 and 1")
        n_pad = row.index(1) if 1 in row else P
        where = "" if B == 1 else f" (row {b})"
        if n_pad == P:
            raise ValueError(f"attention_mask: row {b} is all padding; every sequence needs at least one token")
        if 0 in row[n_pad:]:
            raise NotImplementedError(f"attention_mask: only left padding (zeros before the prompt, then ones) is "
                                      f"supported, got {row if P <= 16 else 'zeros after the first one'}{where}")
        pads.append(n_pad)
    return pads


def _one_input(input_ids, inputs):
    """HF names the prompt `inputs` (its first positional argument) or `input_ids`; take either, once."""
    if input_ids is not None and inputs is not None:
        raise ValueError("pass the prompt once: as input_ids or as inputs, not both")
    if input_ids is None and inputs is None:
        raise ValueError("input_ids must be given (an int64 tensor [B, prompt_len])")
    return input_ids if input_ids is not None else inputs


def _outcome(tree, acc, row: int = 0) -> CycleOutcome:
    """What the cycle earned for batch row `row` (tree: that row's own one-row tree), with the drafter's
    first-call guess and whether it was the first token emitted (History's best_prob / best_accepted)."""
    n = acc.accepted_len[row]
    if tree.guess_token is None:
        return CycleOutcome(n, tree.draft_calls, tree.verify_budget, skipped=tree.draft_calls == 0)
    if acc.tokens.device.type == "cpu":  # host values already: two reads, no ATen call
        score, hit = float(tree.guess_score[0]), int(acc.tokens[row, 0]) == int(tree.guess_token[0])
    else:
        score, hit = torch.stack([tree.guess_score[0].float(),
                                  (acc.tokens[row, 0] == tree.guess_token[0]).float()]).tolist()  # host sync: 2 floats
        hit = hit == 1.0
    return CycleOutcome(n, tree.draft_calls, tree.verify_budget, False, guess_probability(score), hit)


def _count_accepted(stats: DecodeStats, tree, path, n: int) -> None:
    """A cycle that emitted n tokens (path: its accepted nodes, root first, in `tree`, that sequence's one-row
    tree, None for a plain step): the accepted-length histogram, and which accepted draft tokens came from
    context lookups."""
    stats.accepted_hist.extend([0] * (n - len(stats.accepted_hist)))
    stats.accepted_hist[n - 1] += 1
    if tree is not None and tree.source is not None and n > 1:
        src = tree.source[0, path[1:n]].tolist()  # host sync: a few ints per cycle
        stats.lookup_accepted += src.count(SOURCE_LOOKUP)
        stats.shared_accepted += src.count(SOURCE_BOTH)


def _ema(old: float, new: float, rate: float = 0.1) -> float:
    return new if old == 0.0 else (1 - rate) * old + rate * new


def _finish_stats(out, stats: DecodeStats, t_start: float):
    stats.seconds = time.perf_counter() - t_start
    stats.time_other = max(0.0, stats.seconds - stats.time_prefill - stats.time_draft - stats.time_policy
                           - stats.time_verify)
    return out


def _check_generator(generator, device) -> None:
    """A CPU generator serves any target (its draws are copied over, acceptance.uniform); one on an
    accelerator must be on the target's own device."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu" and generator.device != torch.device(device):
        raise ValueError(f"generator must be on the CPU or on the target's device ({device}), got one on "
                         f"{generator.device}")


def _check_batch_settings(B: int, streamer, cfg) -> None:
    if streamer is not None:
        raise ValueError(f"streamer: streaming supports batch size 1 only (as HF's TextStreamer), got batch size {B}")
    p = cfg.processing
    if p.walk or p.criteria is not None:
        raise NotImplementedError(
            f"generate at batch size {B}: logits processors beyond temperature / top_k / top_p, extra stopping "
            "criteria (stop_strings, max_time, stopping_criteria) and output_scores / output_logits are "
            "supported at batch size 1 only")


@dataclass
class _Batch:
    """The live rows of a batched generate (B > 1). Finished rows leave (drop_finished)."""
    rows: list             # [B] host ints: each live row's index in the caller's batch
    lengths: torch.Tensor  # [B] int64 cache slots in use per row (its left padding included)
    pads: torch.Tensor     # [B] int64 left-padding slots at the start of each row
    prompt_lens: list      # [B] host ints: real prompt tokens per row
    roots: torch.Tensor    # [B] int64 each row's last emitted token (the root of its next tree)
    drafters: list         # [B] one Drafter per row (Drafter.fork)
    policies: list         # [B] one controller per row (Policy.fork, timed)
    histories: list        # [B] one History per row
    emitted: list          # [B_caller] host int lists: every caller row's emitted tokens (kept when it leaves)
    done: list             # [B] host bools: the row hit EOS or max_new_tokens this cycle

    @property
    def size(self) -> int:
        return len(self.rows)

    def seq_len(self, b: int) -> int:
        return self.prompt_lens[b] + len(self.emitted[self.rows[b]])

    def emit(self, b: int, tokens: list, max_new_tokens: int, eos: set) -> None:
        """Row b's tokens of this cycle, cut at max_new_tokens and right after its first EOS."""
        out = self.emitted[self.rows[b]]
        for t in tokens[:max_new_tokens - len(out)]:
            out.append(t)
            if t in eos:
                break
        self.done[b] = len(out) >= max_new_tokens or out[-1] in eos
        self.roots[b] = out[-1]

    def drop_finished(self, cache) -> None:
        keep = [b for b in range(self.size) if not self.done[b]]
        if len(keep) == self.size:
            return
        idx = torch.tensor(keep, dtype=torch.int64, device=self.lengths.device)
        self.lengths, self.pads, self.roots = self.lengths[idx], self.pads[idx], self.roots[idx]
        if keep:
            kv_cache.select_rows(cache, idx, int(self.lengths.max()))  # host sync: the new longest row
        for name in ("rows", "prompt_lens", "drafters", "policies", "histories", "done"):
            setattr(self, name, [getattr(self, name)[b] for b in keep])

    def output(self, given: torch.Tensor, pad_token_id) -> torch.Tensor:
        """[B, P + longest]: each row's tokens, then pad_token_id after a row that finished early (HF)."""
        longest = max(len(e) for e in self.emitted)
        new = given.new_full((given.shape[0], longest), pad_token_id if pad_token_id is not None else 0)
        for b, e in enumerate(self.emitted):
            new[b, :len(e)] = torch.tensor(e, dtype=torch.int64)
        return torch.cat([given, new], 1)
