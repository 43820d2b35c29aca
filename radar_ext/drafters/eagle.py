"""EagleDrafter: the EAGLE-3 head drafting a dynamic tree (METHOD.md 3).

Head cache convention (radar_ext/eagle_head.py): entry t is the pair (target feature of position t,
embedding of token t+1) at position id t. Per cycle:
  call 1    consumes the pending pairs (the previous cycle's accepted path, or the prompt) with a
            causal mask; its last output gives the root's children (top-W: the first beams).
  call k>1  runs the W beams at once, all at position id P-1+(k-1) (P = committed entries), each
            seeing the committed entries, its own ancestors' speculative entries and itself.
After drafting the speculative entries are cropped; the next cycle's call 1 re-encodes the
accepted path from the target's true features. A skipped cycle (the policy's plain step, no draft()
call) commits one more pair; pending pairs accumulate until the next call 1 consumes them all in one
causal call, so drafting resumes at any cycle for the cost of one call over a few more rows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from radar_ext import ops
from radar_ext.drafters.base import DraftRequest, Drafter
from radar_ext.policies.base import BudgetStep, DraftStep
from radar_ext.head_forward import MAX_FUSED_ROWS
from radar_ext.tree import CandidatePool, DraftTree

log = logging.getLogger(__name__)


@dataclass
class DraftedPool:
    """The EAGLE side of one cycle, before best-V selection."""
    pool: CandidatePool         # every drafted node (tokens, parents, scores [B, C]), cumulative log-probs
    draft_calls: int            # head forwards made (host int)
    guess_token: torch.Tensor   # [B] int64 the best root child (History's best_prob)
    guess_score: torch.Tensor   # [B] float32 its log-probability


class EagleDrafter(Drafter):
    def __init__(self, head, target, fast_linear: bool = True, fused: bool = True, head_weights: str = "auto"):
        """fast_linear: a float32 CPU head runs its few-row linears on the radar_ext::skinny_linear kernel
        during draft(), from exact 16-bit copies of the weights where fp16 / bf16 holds them (a head
        loaded from an fp16 checkpoint, as the shipped one): radar_ext.fast_linear with weights16, a
        no-op elsewhere. Measured on the default head (static 2/4/2, three dev questions, the settings
        alternating in one process, identical outputs): 5.91 ms per draft call on MKL, 5.33 on the
        float32 kernel, 4.27 from the fp16 copies; 17.7 / 18.4 / 19.0 tok/s.
        fused: each draft call is one radar_ext::eagle_forward call (radar_ext.head_forward: the whole head
        call torch-free, from `head_weights` "f16" (the exact 16-bit copies), "q8_0" or "q8_vnni"
        (radar_ext.head_forward); "auto": "q8_vnni" where the CPU has AVX512-VNNI (a draft call ~0.35 ms cheaper
        inside decoding on the 2-core EPYC, the same acceptance), else "f16") where the head and the CPU qualify
        (`fused_reason` says why not); a prompt-sized call 1 and any other case take EagleHead's own forward."""
        from radar_ext.eagle_head import default_feature_layers
        from radar_ext.fast_linear import FastLinear
        from radar_ext.head_forward import WEIGHT_FORMATS

        if head_weights == "auto":
            head_weights = "q8_vnni" if ops.vnni_linear_supported() else "f16"
        if head_weights not in WEIGHT_FORMATS:
            raise ValueError(f"head_weights must be 'auto' or one of {WEIGHT_FORMATS}, got {head_weights!r}")
        self.fused, self.head_weights = bool(fused), head_weights
        self._fused = None          # the HeadForward, built by start()
        self.fused_reason = None    # why the fused call is not used (None: used, or fused=False)

        self.head = head
        self._head_linears = FastLinear(head, enabled=fast_linear, sdpa_gqa=False, weights16=True)
        self.embed = target.get_input_embeddings()
        cfg = head.config
        self.feature_layers = list(cfg.feature_layers or default_feature_layers(target.config.num_hidden_layers))
        self.check_target(target)
        self.cache = None
        # pairs committed since the last call 1, in chunks (skipped cycles append one each; call 1 joins them once)
        self._pending_feats = []     # [B, n_i, F]
        self._pending_tokens = []    # [B, n_i]
        # Optional observer (episode collection, radar_ext/training/episodes.py): called after every
        # draft call as recorder(draft_calls, pool, beam_scores [B, W], child_scores [B, N, W]).
        self.recorder = None

    # ------------------------------------------------------------------ construction and I/O
    @classmethod
    def from_pretrained(cls, path, target, fast_linear: bool = True, fused: bool = True,
                        head_weights: str = "auto") -> "EagleDrafter":
        from radar_ext.eagle_head import EagleHead

        dtype = next(target.parameters()).dtype
        return cls(EagleHead.from_pretrained(path, dtype=dtype), target, fast_linear=fast_linear, fused=fused,
                   head_weights=head_weights)

    @classmethod
    def init_random(cls, target, draft_vocab: int | None = None, seed: int = 0) -> "EagleDrafter":
        """An untrained head shaped for `target` (exactness tests: the output must not depend on it)."""
        from radar_ext.eagle_head import EagleConfig, EagleHead

        cfg = EagleConfig.for_target(target.config, draft_vocab_size=draft_vocab)
        dtype = next(target.parameters()).dtype
        return cls(EagleHead.init_random(cfg, seed=seed).to(dtype), target)

    def save_pretrained(self, path) -> None:
        self.head.save_pretrained(path)

    def check_target(self, target) -> None:
        cfg = self.head.config
        vocab = target.get_output_embeddings().weight.shape[0]
        if cfg.vocab_size != vocab:
            raise ValueError(f"EAGLE head vocab_size must equal the target's vocabulary ({vocab}), got {cfg.vocab_size}")
        if cfg.target_hidden_size != target.config.hidden_size:
            raise ValueError(f"EAGLE head target_hidden_size must equal the target's hidden_size "
                             f"({target.config.hidden_size}), got {cfg.target_hidden_size}")
        n_states = target.config.num_hidden_layers + 1
        bad = [i for i in self.feature_layers if not -n_states <= i < n_states]
        if bad:
            raise ValueError(f"EAGLE head feature_layers must index the target's {n_states} hidden states, got {bad}")

    def fork(self) -> "EagleDrafter":
        """A drafter for one more row of a batch. The twins share this drafter's fused head call, built here
        once (its weight copies are read only, its rotary table replaced when it grows, never changed in place):
        a twin that built its own would copy every head weight again, once per row and generate call."""
        self._prepare_fused()
        return super().fork()

    # ------------------------------------------------------------------ the sequence
    def start(self, input_ids, features, root) -> None:
        from radar_ext.eagle_head import HeadCache

        if input_ids.shape[0] != 1:
            raise NotImplementedError(f"EagleDrafter: batch size must be 1 for now, got {input_ids.shape[0]}")
        self.cache = HeadCache()
        self._prepare_fused()
        self._pending_feats = [features]                                        # [B, P, F]
        self._pending_tokens = [torch.cat([input_ids[:, 1:], root.view(-1, 1)], 1)]  # [B, P]

    def _prepare_fused(self) -> None:
        """The fused head call for this sequence: built once, its weight copies refreshed if the head changed."""
        from radar_ext.head_forward import HeadForward, head_forward_reason

        if not self.fused:
            self._fused = None
            return
        reason = head_forward_reason(self.head, self.embed)
        if reason is not None:
            if reason != self.fused_reason:
                log.info("radar_ext: EAGLE head runs its own forward, not the fused call (%s)", reason)
            self._fused, self.fused_reason = None, reason
            return
        if self._fused is None or self._fused.head is not self.head or self._fused.weights != self.head_weights:
            self._fused = HeadForward(self.head, self.embed, self.head_weights)
        else:
            self._fused.refresh()
        self.fused_reason = None

    def commit(self, emitted, n_emitted, features) -> None:
        # after skipped cycles the chunks pile up (one append each, joined once by the next call 1)
        self._pending_feats.append(features)                                    # [B, n, F]
        self._pending_tokens.append(emitted[:, :n_emitted])                     # [B, n]

    def drop_pending(self) -> None:
        """Forget the pairs committed since the last call 1 (a caller that rewinds the head cache to a
        saved length and commits the same pairs again, as radar_ext.calibration does)."""
        self._pending_feats, self._pending_tokens = [], []

    def _pending_rows(self) -> int:
        return sum(t.shape[1] for t in self._pending_tokens)

    def _take_pending(self):
        """(features [B, n, F], tokens [B, n]) committed since the last call 1, now handed to it."""
        if not self._pending_tokens:
            raise RuntimeError("EagleDrafter.draft: nothing committed since the last draft; call commit() "
                               "(or start()) first")
        f, t = self._pending_feats, self._pending_tokens
        self._pending_feats, self._pending_tokens = [], []
        return (f[0], t[0]) if len(t) == 1 else (torch.cat(f, 1), torch.cat(t, 1))

    @torch.no_grad()
    def draft(self, req: DraftRequest) -> DraftTree:
        drafted = self.draft_pool(req)
        return tree_from_pool(req, drafted, drafted.pool)

    @torch.no_grad()
    def draft_pool(self, req: DraftRequest) -> "DraftedPool":
        """The draft calls of one cycle (the policy decides how many), without the verify budget and the
        tree: the pool a HybridDrafter merges its lookup candidates into before choosing the best V."""
        if self._fused is not None and self._pending_rows() <= MAX_FUSED_ROWS:
            return self._draft(req)
        with self._head_linears:
            return self._draft(req)

    def _call(self, hidden, tokens, positions, attn_mask, last_only: bool):
        """One head call: (draft logits [B, M or 1, Vd], out_hidden [B, M, H]); the new K/V go to the cache."""
        if self._fused is not None and tokens.shape[1] <= MAX_FUSED_ROWS:
            return self._fused(tokens, hidden, positions, self.cache, attn_mask, last_only)
        B, M = tokens.shape
        out = self.head(hidden, self.embed(tokens), positions.expand(B, M), self.cache, attn_mask=attn_mask)
        return self.head.logits(out[:, -1:] if last_only else out), out

    def _draft(self, req: DraftRequest) -> "DraftedPool":
        head, cache, W = self.head, self.cache, req.tree_topk
        B = req.root.shape[0]
        dev = req.root.device
        policy = req.policy
        max_calls = policy.max_draft_calls
        pool = CandidatePool(B, W + (max_calls - 1) * W * W, dev)

        # call 1: the pending pairs, causal over the committed cache
        feats, tokens = self._take_pending()                                    # now into the head cache
        n_new = tokens.shape[1]
        pos = torch.arange(cache.length, cache.length + n_new, device=dev)
        logits, out = self._call(feats, tokens, pos, None, True)                # [B, 1, Vd], [B, n, H]
        committed = cache.length
        hidden = out[:, -1:]                                                    # [B, 1, H]
        exp = ops.topk_expand(logits.float(), torch.zeros(B, 1, device=dev), W)
        ids = head.to_target_ids(exp.child_ids[:, 0])                           # [B, W]
        beam_pool = pool.add(ids, torch.full_like(ids, -1), exp.child_scores[:, 0]).expand(B, W)
        beam_ids, beam_scores = ids, exp.child_scores[:, 0]                     # children in score order
        hidden = hidden.expand(B, W, -1)                                        # parent output per beam
        calls = 1
        policy.reset()
        guess_token, guess_score = ids[:, 0], beam_scores[:, 0]                 # [B] the best root child
        step = DraftStep(calls, beam_scores, exp.child_scores, req.seq_len, req.costs, req.temperature, req.history,
                         req.batch_size, req.lookup)
        if self.recorder is not None:
            self.recorder(calls, pool, beam_scores, exp.child_scores)
        vis = torch.zeros(B, W, 0, dtype=torch.bool, device=dev)                # [B, W, spec entries]
        eye = torch.eye(W, dtype=torch.bool, device=dev).expand(B, W, W)
        neg = torch.finfo(out.dtype).min
        while calls < max_calls and policy.should_continue(step):
            # call k: the W beams at one position, tree attention over [committed | own ancestors]
            vis = torch.cat([vis, eye], 2)                                      # [B, W, (k-1)W]
            mask = torch.zeros(B, 1, W, committed + vis.shape[2], dtype=out.dtype, device=dev)
            mask[:, 0, :, committed:].masked_fill_(~vis, neg)
            pos = torch.full((W,), committed - 1 + calls, dtype=torch.int64, device=dev)
            logits, out = self._call(hidden, beam_ids, pos, mask, False)        # [B, W, Vd], [B, W, H]
            calls += 1
            exp = ops.topk_expand(logits.float(), beam_scores, W)
            child_ids = head.to_target_ids(exp.child_ids)                       # [B, W, W]
            child_pool = pool.add(child_ids.view(B, W * W),
                                  beam_pool.unsqueeze(2).expand(B, W, W).reshape(B, W * W),
                                  exp.child_scores.view(B, W * W)).view(1, W, W)
            # j of each chosen child inside its parent's top-W (ids within one parent are distinct)
            parent_ids = exp.child_ids.gather(1, exp.next_parent.unsqueeze(2).expand(B, W, W))  # [B, W, W]
            j = (parent_ids == exp.next_ids.unsqueeze(2)).long().argmax(2)      # [B, W]
            beam_pool = child_pool.expand(B, W, W).reshape(B, W * W).gather(1, exp.next_parent * W + j)
            beam_ids = head.to_target_ids(exp.next_ids)
            beam_scores = exp.next_scores
            hidden = out.gather(1, exp.next_parent.unsqueeze(2).expand(B, W, out.shape[2]))
            vis = vis.gather(1, exp.next_parent.unsqueeze(2).expand(B, W, vis.shape[2]))
            step = DraftStep(calls, beam_scores, exp.child_scores, req.seq_len, req.costs, req.temperature,
                             req.history, req.batch_size, req.lookup)
            if self.recorder is not None:
                self.recorder(calls, pool, beam_scores, exp.child_scores)
        cache.crop(committed)  # drop the speculative entries of calls 2..k
        return DraftedPool(pool, calls, guess_token, guess_score)


def tree_from_pool(req: DraftRequest, drafted: "DraftedPool", pool) -> DraftTree:
    """The cycle's tree: the policy's verify budget V over `pool` (the drafted pool, or a HybridDrafter's merged
    one), its best V nodes, and the first call's guess for the history features."""
    budget = req.policy.verify_budget(BudgetStep(pool.scores[:, :pool.count], drafted.draft_calls, req.seq_len,
                                                 req.verify_budget, req.costs, req.temperature, req.history,
                                                 batch_size=req.batch_size, lookup=req.lookup))
    tree = pool.to_tree(req.root, budget, drafted.draft_calls)
    tree.guess_token, tree.guess_score = drafted.guess_token, drafted.guess_score
    return tree
