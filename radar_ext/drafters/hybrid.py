"""HybridDrafter: the EAGLE head and context lookups in one draft tree, chosen by one controller (METHOD.md 9).

Per cycle:
  1. the EAGLE side drafts its pool (EagleDrafter.draft_pool: the policy decides the draft calls);
  2. the lookup side (an NgramDrafter over prompt + generated text) builds its trie of continuations,
     scored by LookupScores: calibrated log acceptance rates, the scale of EAGLE's cumulative log-probs;
  3. the trie merges into the pool: a lookup node whose parent and token match an EAGLE node is that
     node (no token twice among one node's children; its score is the larger of the two, which keeps
     every child at or below its parent), the others are appended as new nodes, and a lookup path may
     run deeper than the EAGLE tree;
  4. the policy chooses V from the merged pool's scores and the best V nodes form the tree.
Lookup nodes are deterministic proposals, so verification and acceptance (METHOD.md 4) are unchanged.
A lookup step (lookup_step(): a cycle without a draft call, asked before the policy's pre-draft decision) verifies
the lookup's best nodes alone when they pay under the calibrated costs: V maximises the expected tokens per
second (1 + the top V nodes' acceptance probabilities) / T_verify(V) against a plain step's 1 / t_plain
(lookup_step_budget); V = 0 (nothing pays, nothing found) leaves the cycle to the policy.
The tree's `source` says which side proposed each node (the bench's lookup share). The first-call guess
(History's best_prob) stays EAGLE's, so history features mean what the shipped policies were trained on.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from radar_ext.drafters.base import DraftRequest, Drafter
from radar_ext.drafters.eagle import EagleDrafter, tree_from_pool
from radar_ext.drafters.lookup_scores import COUNT_BUCKETS, LookupScores
from radar_ext.drafters.ngram import LookupTrie, NgramDrafter
from radar_ext.policies.base import BudgetStep, LookupInfo
from radar_ext.tree import SOURCE_BOTH, SOURCE_DRAFTER, SOURCE_LOOKUP, CandidatePool, DraftTree, root_only_tree, tree_of_best

LOOKUP_SCORES_FILE = "lookup_scores.json"  # shipped beside the head


def default_lookup() -> NgramDrafter:
    """The lookup side the shipped scores were calibrated for. Single-token matches are allowed (min_ngram 1):
    unlike the stand-alone NgramDrafter, a weak match costs nothing here unless its calibrated score earns
    it a place among the best V."""
    return NgramDrafter(max_ngram=4, min_ngram=1, max_depth=12, max_matches=8)


def default_scores_path(head_dir=None) -> Path:
    from radar_ext.models import default_head_path
    return Path(head_dir or default_head_path()) / LOOKUP_SCORES_FILE


def lookup_parts(owner: str, lookup, scores) -> tuple:
    """(lookup, scores) of a drafter with a lookup side: the defaults where None (default_lookup(), the shipped
    scores), checked."""
    lookup = default_lookup() if lookup is None else lookup
    if not isinstance(lookup, NgramDrafter):
        raise TypeError(f"{owner}: lookup must be an NgramDrafter, got {type(lookup).__name__}")
    if scores is None:
        scores = LookupScores.load(default_scores_path())
    if not isinstance(scores, LookupScores):
        raise TypeError(f"{owner}: scores must be LookupScores, got {type(scores).__name__}")
    return lookup, scores


class HybridDrafter(Drafter):
    def __init__(self, eagle: EagleDrafter, lookup: NgramDrafter | None = None, scores: LookupScores | None = None):
        if not isinstance(eagle, EagleDrafter):
            raise TypeError(f"HybridDrafter: eagle must be an EagleDrafter, got {type(eagle).__name__}")
        self.eagle = eagle
        self.lookup, self.scores = lookup_parts("HybridDrafter", lookup, scores)
        self.feature_layers = eagle.feature_layers
        self.last_trie: LookupTrie | None = None  # the lookup side of the last cycle (episode collection reads it)
        self._cycle_lookup = None  # (ends, match lengths, LookupInfo) found by lookup_info() for the coming draft()
        self._cycle_trie = None    # (trie, scores) built by lookup_step() for the same cycle

    @classmethod
    def from_pretrained(cls, head_dir, target, scores=None, lookup=None) -> "HybridDrafter":
        """The EAGLE head in head_dir and the lookup scores beside it (or `scores`, a path)."""
        eagle = EagleDrafter.from_pretrained(head_dir, target)
        return cls(eagle, lookup, LookupScores.load(scores or default_scores_path(head_dir)))

    def __repr__(self) -> str:
        return f"HybridDrafter({self.lookup!r}, {self.scores!r})"

    def check_target(self, target) -> None:
        self.eagle.check_target(target)

    def fork(self) -> "HybridDrafter":
        """One more row of a batch: its own EAGLE and lookup drafters (their sequence state is per row), the same
        head weights and lookup scores."""
        twin = super().fork()
        twin.eagle, twin.lookup = self.eagle.fork(), self.lookup.fork()
        twin._cycle_lookup = twin._cycle_trie = None
        return twin

    def start(self, input_ids, features, root) -> None:
        self._cycle_lookup = self._cycle_trie = None
        self.eagle.start(input_ids, features, root)
        self.lookup.start(input_ids, features, root)

    def commit(self, emitted, n_emitted, features) -> None:
        self._cycle_lookup = self._cycle_trie = None  # the context moved on
        self.eagle.commit(emitted, n_emitted, features)
        self.lookup.commit(emitted, n_emitted, features)

    def lookup_info(self) -> LookupInfo:
        """What the coming cycle's lookup finds, from its occurrences alone (found_info: the same LookupInfo as its
        scored trie gives, without building the trie, which a cycle the policy skips never needs); kept for
        draft()."""
        if self._cycle_lookup is None:
            ends, mlen = self.lookup.matches()
            self._cycle_lookup = (ends, mlen, found_info(self.lookup, self.scores, ends, mlen))
        return self._cycle_lookup[2]

    @torch.no_grad()
    def draft(self, req: DraftRequest) -> DraftTree:
        # the lookup first: it needs no draft call, and the policy may read what it found (LookupInfo)
        info, trie, scores = self._take_cycle(req)
        req = dataclasses.replace(req, lookup=info)
        drafted = self.eagle.draft_pool(req)
        return tree_from_pool(req, drafted, merge_lookup(drafted.pool, trie, scores))

    def _take_cycle(self, req: DraftRequest):
        """(LookupInfo, trie, scores) of the cycle being drafted, now taken (the next cycle looks up afresh)."""
        _check_one_row(self, req)
        info = self.lookup_info()
        trie, scores = self._scored_trie()
        self._cycle_lookup = self._cycle_trie = None
        self.last_trie = trie
        return info, trie, scores

    def _scored_trie(self):
        """The coming cycle's lookup trie and its nodes' scores (built once per cycle)."""
        if self._cycle_trie is None:
            self.lookup_info()
            ends, mlen, _ = self._cycle_lookup
            trie = self.lookup.trie(found=(ends, mlen))
            self._cycle_trie = (trie, self.scores.score(trie))
        return self._cycle_trie

    @torch.no_grad()
    def lookup_step(self, req: DraftRequest, step_costs: np.ndarray) -> DraftTree | None:
        """The cycle's lookup step: a tree of the lookup's best V nodes (no draft call, draft_calls 0, every node
        SOURCE_LOOKUP), V = lookup_step_budget(their scores, step_costs) capped at req.verify_budget, or None when
        V = 0 (the lookup found nothing, or nothing it found pays): then the policy decides the cycle and a
        draft() call reuses what was found. step_costs [V_max + 1]: seconds of a plain step (V = 0) and of a
        verify of V lookup tokens (lookup_step_costs)."""
        _check_one_row(self, req)
        if self.lookup_info().count == 0:
            return None
        V = lookup_step_budget(self._scored_trie()[1], step_costs[:req.verify_budget + 1])
        if V == 0:
            return None
        _, trie, scores = self._take_cycle(req)  # the cycle is taken: the next one looks up afresh
        return best_lookup_tree(req.root, trie, scores, V)


class LookupDrafter(HybridDrafter):
    """The hybrid tree's lookup side alone (the same lookup, scores and lookup steps), no draft head, no target
    features. draft() (a cycle the policy drafts) verifies the lookup's best nodes at the policy's verify budget over
    their scores, draft_calls 0. With LookupStepPolicy (every other cycle a plain step) it is the cost-aware lookup-only
    controller, `radar bench` method `lookup`: the lookup-only side the hybrid is compared with."""

    feature_layers = None

    def __init__(self, lookup: NgramDrafter | None = None, scores: LookupScores | None = None):
        self.eagle = None
        self.lookup, self.scores = lookup_parts("LookupDrafter", lookup, scores)
        self.last_trie, self._cycle_lookup, self._cycle_trie = None, None, None

    @classmethod
    def from_pretrained(cls, head_dir, target=None, scores=None, lookup=None) -> "LookupDrafter":
        """The lookup scores beside the head in head_dir (or `scores`, a path); the head itself is not loaded."""
        return cls(lookup, LookupScores.load(scores or default_scores_path(head_dir)))

    def __repr__(self) -> str:
        return f"LookupDrafter({self.lookup!r}, {self.scores!r})"

    def check_target(self, target) -> None:
        pass

    def fork(self) -> "LookupDrafter":
        twin = Drafter.fork(self)
        twin.lookup, twin._cycle_lookup, twin._cycle_trie = self.lookup.fork(), None, None
        return twin

    def start(self, input_ids, features, root) -> None:
        self._cycle_lookup = self._cycle_trie = None
        self.lookup.start(input_ids, None, root)

    def commit(self, emitted, n_emitted, features) -> None:
        self._cycle_lookup = self._cycle_trie = None
        self.lookup.commit(emitted, n_emitted, None)

    @torch.no_grad()
    def draft(self, req: DraftRequest) -> DraftTree:
        info, trie, scores = self._take_cycle(req)
        if trie.size == 0:
            return root_only_tree(req.root)
        V = req.policy.verify_budget(BudgetStep(torch.tensor([scores.tolist()], dtype=torch.float32), 0, req.seq_len,
                                                req.verify_budget, req.costs, req.temperature, req.history,
                                                batch_size=req.batch_size, lookup=info))
        return best_lookup_tree(req.root, trie, scores, max(0, min(int(V), trie.size)))


def _check_one_row(drafter, req: DraftRequest) -> None:
    if req.root.shape[0] != 1:
        raise NotImplementedError(f"{type(drafter).__name__}: batch size must be 1 for now, got {req.root.shape[0]}")


def best_lookup_tree(root: torch.Tensor, trie: LookupTrie, scores: np.ndarray, V: int) -> DraftTree:
    """The tree of root [1] and the trie's best V nodes by score (tree_of_best: scores fall along a path), every node
    SOURCE_LOOKUP, draft_calls 0."""
    return tree_of_best(root, trie.tokens.tolist(), trie.parents.tolist(), scores.tolist(), V, 0,
                        [SOURCE_LOOKUP] * trie.size)


def lookup_step_costs(costs, max_budget: int) -> np.ndarray:
    """[max_budget + 1] seconds: a plain step (index 0: PolicyCosts.plain_step) and a verify of V draft tokens
    (PolicyCosts.t_verify(V), index V), the table lookup_step_budget reads."""
    return np.array([costs.plain_step()] + [costs.t_verify(v) for v in range(1, max_budget + 1)], dtype=np.float64)


def lookup_step_budget(scores: np.ndarray, step_costs: np.ndarray) -> int:
    """How many of the lookup's nodes a cycle without a draft call should verify: the V in [0, len(step_costs))
    maximising (1 + sum of the best V nodes' exp(score)) / step_costs[V]. A node's score estimates log P(its path
    is accepted) (LookupScores), so the sum is the expected number of accepted lookup tokens; V = 0 is a plain
    step (1 token). Ties go to the smaller V. scores [K] float (any order)."""
    n = min(len(scores), len(step_costs) - 1)
    if n <= 0:
        return 0
    costs = np.asarray(step_costs, dtype=np.float64).tolist()
    best_v, best, gain = 0, 1.0 / costs[0], 1.0
    for v, s in enumerate(sorted(np.asarray(scores, dtype=np.float64).tolist(), reverse=True)[:n], 1):
        gain += math.exp(s)                    # host floats: a few dozen nodes, cheaper than numpy's calls
        if gain / costs[v] > best:
            best_v, best = v, gain / costs[v]
    return best_v


def found_info(lookup: NgramDrafter, scores: LookupScores, ends: np.ndarray, mlen: np.ndarray) -> LookupInfo:
    """lookup_info of the trie `lookup` builds from these occurrences (NgramDrafter.matches) and its scores, from
    the root's children alone: every occurrence passes through one (its continuation's first token), whose match
    length is the longest and count the number of the occurrences through it, and the best node is a root child
    (scores fall along a path) with score log_rate[its cell at depth 1] (the same float as LookupScores.score)."""
    if ends.size == 0:
        return LookupInfo()
    first = lookup.next_tokens(ends)
    best, count = {}, {}
    for tok, m in zip(first, mlen.tolist()):
        best[tok] = max(best.get(tok, 0), m)
        count[tok] = count.get(tok, 0) + 1
    lr, M = scores.log_rate, scores.max_match_len  # (LookupScores.cell of one node, in Python ints)
    top = max(float(lr[min(best[t], M) - 1, 0, min(count[t], COUNT_BUCKETS) - 1]) for t in best)
    return LookupInfo(int(mlen.max()), len(first), top)


def lookup_info(trie: LookupTrie, scores: np.ndarray) -> LookupInfo:
    """The cycle's LookupInfo: every occurrence passes through exactly one root child, so the root children's
    counts sum to the occurrences found; scores fall along a path, so the best node is a root child."""
    if trie.size == 0:
        return LookupInfo()
    return LookupInfo(int(trie.match_len.max()), int(trie.count[trie.parents < 0].sum()), float(scores.max()))


def trie_positions(pool: CandidatePool, trie: LookupTrie) -> list:
    """Each trie node's index in merge_lookup(pool, trie, ...): the pool node it is, or its appended slot."""
    C = pool.count
    index = dict(zip(zip(pool.parents[0, :C].tolist(), pool.tokens[0, :C].tolist()), range(C)))
    at, n_new = [], 0
    for tok, tp in zip(trie.tokens.tolist(), trie.parents.tolist()):
        j = index.get((at[tp] if tp >= 0 else -1, tok))
        if j is None:
            j, n_new = C + n_new, n_new + 1
        at.append(j)
    return at


def merge_lookup(pool: CandidatePool, trie: LookupTrie, lookup_scores: np.ndarray) -> CandidatePool:
    """A new pool: `pool`'s nodes (row 0; B = 1) then the lookup nodes no pool node already is.
    lookup_scores [K] float: the trie nodes' cumulative scores. A shared node keeps the larger score.
    Every node gets its source (SOURCE_DRAFTER / SOURCE_LOOKUP / SOURCE_BOTH). Built on host lists (tens of
    nodes) and copied to tensors once."""
    C = pool.count
    dev = pool.tokens.device
    tokens, parents = pool.tokens[0, :C].tolist(), pool.parents[0, :C].tolist()
    scores = pool.scores[0, :C].tolist()
    source = [SOURCE_DRAFTER] * C
    at = trie_positions(pool, trie)            # trie node -> merged index
    for tok, tp, s, j in zip(trie.tokens.tolist(), trie.parents.tolist(), lookup_scores.tolist(), at):
        if j >= C:                             # a lookup-only node, appended in trie order (its parent first)
            tokens.append(tok)
            parents.append(at[tp] if tp >= 0 else -1)
            scores.append(s)
            source.append(SOURCE_LOOKUP)
        else:                                  # both sides proposed it: one node, the larger score
            scores[j] = max(scores[j], s)
            source[j] = SOURCE_BOTH
    return CandidatePool.from_lists(tokens, parents, scores, source, dev)
