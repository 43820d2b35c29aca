"""Draft tree structure: the candidate pool filled by the draft calls, best-V selection, and the
`DraftTree` handed to verification (tokens, parents, depth, ancestor mask, root-to-leaf paths).

Node 0 of every tree is the root (the last emitted token the target has not seen yet). Nodes are in
creation order, so a parent always has a lower index than its children (METHOD.md 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from radar_ext import ops


SOURCE_DRAFTER, SOURCE_LOOKUP, SOURCE_BOTH = 0, 1, 2


@dataclass
class DraftTree:
    tokens: torch.Tensor   # [B, M] int64 target token ids, node 0 = root, -1 padded
    parents: torch.Tensor  # [B, M] int64 parent node index, root -1, padding -1
    n_nodes: torch.Tensor  # [B] int64 real nodes per row (root included), in [1, M]
    depth: torch.Tensor    # [B, M] int64 root 0, padding -1 (= position offset from the root)
    mask: torch.Tensor     # [B, M, M] bool node i sees node j iff j is i or an ancestor of i
    paths: torch.Tensor    # [B, P, M] int64 root-to-leaf node paths, one row per leaf, -1 padded
    n_paths: torch.Tensor  # [B] int64 leaves per row
    draft_calls: int = 0   # drafter forward passes spent on this tree (host int)
    guess_token: torch.Tensor | None = None  # [B] int64 the drafter's best first-call guess (None: no draft)
    guess_score: torch.Tensor | None = None  # [B] float32 its log-probability (History's best_prob)
    source: torch.Tensor | None = None  # [B, M] int8 who proposed each node (hybrid trees; None: one drafter):
                                        # SOURCE_DRAFTER (root too), SOURCE_LOOKUP only, SOURCE_BOTH

    @property
    def verify_budget(self) -> int:
        """Draft tokens sent to the target (root excluded), for row 0 (B = 1 for now)."""
        return self.tokens.shape[1] - 1


def make_tree(tokens: torch.Tensor, parents: torch.Tensor, n_nodes: torch.Tensor,
              draft_calls: int = 0) -> DraftTree:
    """tokens, parents [B, M] int64 (node 0 = root, parent -1) -> DraftTree via the build_tree op."""
    mask, depth, paths, n_paths = ops.build_tree(parents, n_nodes)
    # Only the first max(n_paths) path rows can be non-empty; keep the verifier's gathers small.
    n_rows = int(n_paths.max())  # host sync: one small read per cycle
    return DraftTree(tokens, parents, n_nodes, depth, mask, paths[:, :n_rows], n_paths, draft_calls)


def root_only_tree(root: torch.Tensor) -> DraftTree:
    """A tree with no draft tokens (plain autoregressive step). root [B] int64."""
    B = root.shape[0]
    dev = root.device
    tokens = root.view(B, 1)
    parents = torch.full((B, 1), -1, dtype=torch.int64, device=dev)
    return DraftTree(tokens, parents, torch.ones(B, dtype=torch.int64, device=dev),
                     torch.zeros(B, 1, dtype=torch.int64, device=dev),
                     torch.ones(B, 1, 1, dtype=torch.bool, device=dev),
                     torch.zeros(B, 1, 1, dtype=torch.int64, device=dev),
                     torch.ones(B, dtype=torch.int64, device=dev), 0)


class CandidatePool:
    """Every drafted node of one cycle, preallocated for `capacity` nodes (root not stored).

    `parents` holds pool indices; -1 means "child of the root". Scores are cumulative
    log-probabilities, so a child never scores above its parent and best-V is closed under parent.
    """

    def __init__(self, batch: int, capacity: int, device):
        self.tokens = torch.empty(batch, capacity, dtype=torch.int64, device=device)   # [B, C]
        self.parents = torch.empty(batch, capacity, dtype=torch.int64, device=device)  # [B, C]
        self.scores = torch.empty(batch, capacity, dtype=torch.float32, device=device)  # [B, C]
        self.source = None  # [B, C] int8 who proposed each node (a hybrid pool; None: one drafter)
        self.count = 0

    @classmethod
    def from_lists(cls, tokens: list, parents: list, scores: list, source: list | None = None,
                   device=None) -> "CandidatePool":
        """A full one-row pool (capacity = its nodes) from host lists: tokens, parents (pool indices, -1 the root),
        scores (rounded to float32) and optionally source (int8 SOURCE_* values)."""
        n = len(tokens)
        pool = cls.__new__(cls)
        pool.tokens = torch.tensor(tokens, dtype=torch.int64, device=device).view(1, n)
        pool.parents = torch.tensor(parents, dtype=torch.int64, device=device).view(1, n)
        pool.scores = torch.tensor(scores, dtype=torch.float32, device=device).view(1, n)
        pool.source = None if source is None else torch.tensor(source, dtype=torch.int8, device=device).view(1, n)
        pool.count = n
        return pool

    def add(self, tokens: torch.Tensor, parents: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Append K nodes: tokens, parents [B, K] int64, scores [B, K] float32.
        Returns their pool indices [K] int64 (same for every row)."""
        K = tokens.shape[1]
        if self.count + K > self.tokens.shape[1]:
            raise RuntimeError(f"candidate pool overflow: capacity {self.tokens.shape[1]}, "
                               f"have {self.count}, adding {K}")
        sl = slice(self.count, self.count + K)
        self.tokens[:, sl] = tokens
        self.parents[:, sl] = parents
        self.scores[:, sl] = scores
        self.count += K
        return torch.arange(sl.start, sl.stop, device=tokens.device)

    def best(self, verify_budget: int) -> torch.Tensor:
        """Pool indices of the best `verify_budget` nodes, ascending (parents first). [B, V]"""
        V = min(verify_budget, self.count)
        scores = self.scores[:, :self.count]
        # Stable descending sort: ties go to the lower (older) index, so a parent, whose score is
        # >= its child's, always ranks before the child and the picked set is closed under parent.
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :V]
        return torch.sort(order, dim=1).values

    def to_tree(self, root: torch.Tensor, verify_budget: int, draft_calls: int) -> DraftTree:
        """The tree of the root [B] plus the best V pool nodes."""
        B = root.shape[0]
        if B == 1 and root.device.type == "cpu":
            return self._to_tree_one(root, verify_budget, draft_calls)
        picked = self.best(verify_budget)                           # [B, V]
        V = picked.shape[1]
        dev = root.device
        # pool index -> tree node index (picked[k] becomes node k + 1; the root is node 0)
        node_of = torch.zeros(B, self.count + 1, dtype=torch.int64, device=dev)  # slot 0 = "-1"
        node_of.scatter_(1, picked + 1, torch.arange(1, V + 1, device=dev).expand(B, V))
        pool_parent = self.parents[:, :self.count].gather(1, picked)  # [B, V], -1 = root
        tokens = torch.cat([root.view(B, 1), self.tokens[:, :self.count].gather(1, picked)], 1)
        parents = torch.cat([torch.full((B, 1), -1, dtype=torch.int64, device=dev),
                             node_of.gather(1, pool_parent + 1)], 1)
        n_nodes = torch.full((B,), V + 1, dtype=torch.int64, device=dev)
        tree = make_tree(tokens, parents, n_nodes, draft_calls)
        if self.source is not None:
            tree.source = torch.cat([torch.full((B, 1), SOURCE_DRAFTER, dtype=torch.int8, device=dev),
                                     self.source[:, :self.count].gather(1, picked)], 1)
        return tree

    def _to_tree_one(self, root: torch.Tensor, verify_budget: int, draft_calls: int) -> DraftTree:
        """to_tree of one CPU row on host lists (a pool holds tens of nodes): the same nodes in the same order as
        best()'s stable sort, ~10 ATen calls fewer a cycle."""
        C = self.count
        return tree_of_best(root, self.tokens[0, :C].tolist(), self.parents[0, :C].tolist(),
                            self.scores[0, :C].tolist(), verify_budget, draft_calls,
                            None if self.source is None else self.source[0, :C].tolist())


def tree_of_best(root: torch.Tensor, tokens: list, parents: list, scores: list, verify_budget: int, draft_calls: int,
                 source: list | None = None) -> DraftTree:
    """The tree of root [1] and the best verify_budget of C nodes given as host lists (parents: node indices, -1 the
    root, parents first; scores falling along a path; source: SOURCE_* per node or None), in node order. Ties go to
    the older node (Python's sort is stable with reverse=True too), so the picked set is closed under parent, as in
    CandidatePool.best."""
    C = len(tokens)
    V = max(0, min(verify_budget, C))
    picked = sorted(sorted(range(C), key=scores.__getitem__, reverse=True)[:V])
    node_of = {p: k + 1 for k, p in enumerate(picked)}     # node index -> tree node (the root is node 0)
    dev = root.device
    tree = make_tree(torch.tensor([[int(root[0])] + [tokens[p] for p in picked]], dtype=torch.int64, device=dev),
                     torch.tensor([[-1] + [node_of.get(parents[p], 0) for p in picked]], dtype=torch.int64, device=dev),
                     torch.tensor([V + 1], dtype=torch.int64, device=dev), draft_calls)
    if source is not None:
        tree.source = torch.tensor([[SOURCE_DRAFTER] + [source[p] for p in picked]], dtype=torch.int8, device=dev)
    return tree




def stack_trees(trees: list) -> DraftTree:
    """One rectangular DraftTree [B, M] from B one-row trees of any sizes (batch > 1, docs BATCH.md):
    M = the largest tree; a smaller row's unused nodes are -1 padded (token -1, depth -1, seen by no
    real node), and its paths pad to the batch's [P, L] with -1. draft_calls: the batch's sum."""
    M = max(t.tokens.shape[1] for t in trees)
    P = max(t.paths.shape[1] for t in trees)
    L = max(t.paths.shape[2] for t in trees)
    if M == 1:  # every row a plain step (a one-node tree is the root alone): one root-only tree, no padding
        return root_only_tree(torch.cat([t.tokens for t in trees]).view(-1))

    def pad(x, *shape):  # x [1, ...] -> [1, *shape], -1 (or False) beyond its own extent
        out = x.new_full((1, *shape), False if x.dtype == torch.bool else -1)
        out[(slice(None), *(slice(0, n) for n in x.shape[1:]))] = x
        return out

    return DraftTree(torch.cat([pad(t.tokens, M) for t in trees]), torch.cat([pad(t.parents, M) for t in trees]),
                     torch.cat([t.n_nodes for t in trees]), torch.cat([pad(t.depth, M) for t in trees]),
                     torch.cat([pad(t.mask, M, M) for t in trees]), torch.cat([pad(t.paths, P, L) for t in trees]),
                     torch.cat([t.n_paths for t in trees]), sum(t.draft_calls for t in trees))
