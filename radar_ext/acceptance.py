"""Acceptance rules over a verified draft tree (METHOD.md 4).

Greedy: follow the target's argmax from the root; the first node whose children do not contain it
ends the walk and the argmax there is the bonus token. Vectorised over the root-to-leaf paths.

Sampling (lossless): at each node visit the distinct children in index order; accept child x with
probability p(x) of the (renormalised) warped target distribution (the draft is treated as
deterministic); on rejection set p(x) = 0 and renormalise; when every child is rejected, the bonus
token is drawn from what is left of p. A tree node can then only be emitted with its target
probability, so the output distribution equals the target's.

walk_accept: the same two rules node by node, where each visited node's logits first go through a
caller's function (HF's logits processors with that node's own prefix, radar_ext.processors); used
when generate has processors beyond temperature / top-k / top-p, or returns per-token scores.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from radar_ext.tree import DraftTree


@dataclass
class Acceptance:
    path: torch.Tensor    # [B, D+1] int64 tree nodes root..last accepted node, -1 padded
    tokens: torch.Tensor  # [B, D+1] int64 emitted tokens: accepted draft tokens then the bonus, -1 padded
    accepted_len: list    # [B] host ints: accepted draft tokens per row (emitted = accepted_len + 1)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def warpers(self) -> tuple:
        """HF's own logits warpers in HF generate's order, so "the target's distribution" is the
        same distribution `target.generate(do_sample=True)` samples from. Built once per setting (they keep
        no state; importing them from transformers' lazy module cost ~0.1 ms a cycle)."""
        return _warpers(self.temperature, self.top_k, self.top_p)


@functools.lru_cache(maxsize=64)
def _warpers(temperature: float, top_k: int, top_p: float) -> tuple:
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    out = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k != 0:
        out.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return tuple(out)


def target_probs(logits: torch.Tensor, params: SamplingParams, warpers=None) -> torch.Tensor:
    """Warped target distribution. logits [N, V] -> probs [N, V] float32."""
    scores = logits.float()
    for w in (params.warpers() if warpers is None else warpers):
        scores = w(None, scores)
    return torch.softmax(scores, dim=-1)


def greedy_accept(tree: DraftTree, logits: torch.Tensor | None, pred: torch.Tensor | None = None) -> Acceptance:
    """logits [B, M, V], or pred [B, M] int64: their argmax (VerifyOut.argmax, the greedy head's). The longest
    root-to-leaf prefix that matches the target's argmax."""
    if pred is None:
        if logits is None:
            raise ValueError("greedy_accept: give logits [B, M, V] or their argmax pred [B, M], got neither")
        pred = logits.argmax(dim=-1)                               # [B, M]
    if pred.shape[1] == 1:  # root-only trees (plain steps): the argmax alone, no walk (~15 ATen ops fewer)
        return Acceptance(torch.zeros(pred.shape[0], 1, dtype=torch.int64, device=pred.device), pred,
                          [0] * pred.shape[0])
    if pred.shape[0] == 1 and pred.device.type == "cpu":
        got = _greedy_walk(tree, pred)
        if got is not None:
            return got
    paths = tree.paths                                             # [B, P, D+1]
    B, P, L = paths.shape
    safe = paths.clamp(min=0)
    node_tok = tree.tokens.gather(1, safe.view(B, -1)).view(B, P, L)
    want = pred.gather(1, safe.view(B, -1)).view(B, P, L)          # argmax at each path node
    match = (node_tok[..., 1:] == want[..., :-1]) & (paths[..., 1:] >= 0)  # [B, P, L-1]
    acc = match.long().cumprod(dim=-1).sum(dim=-1)                 # [B, P]
    best = acc.argmax(dim=-1)                                      # [B] first longest path
    acc_len = acc.gather(1, best.view(B, 1)).view(B)
    path = paths[torch.arange(B), best]                            # [B, L]
    keep = torch.arange(L, device=paths.device) <= acc_len.view(B, 1)
    path = torch.where(keep, path, torch.full_like(path, -1))
    tokens = torch.full_like(path, -1)
    # accepted draft tokens (path nodes 1..acc) then the bonus = argmax at the last accepted node
    tokens[:, :-1] = torch.where(keep[:, 1:], node_tok[torch.arange(B), best, 1:], -1)
    last = path.gather(1, acc_len.view(B, 1))                      # [B, 1]
    tokens.scatter_(1, acc_len.view(B, 1), pred.gather(1, last))
    return Acceptance(path, tokens, acc_len.tolist())  # host sync: the loop needs the lengths


def _greedy_walk(tree: DraftTree, pred: torch.Tensor) -> Acceptance | None:
    """greedy_accept of one CPU row as a walk from the root over host lists: at each node the child whose token is
    the target's argmax there. With distinct tokens among every node's children (what the drafters make) that
    child is unique and the walk ends on the same longest matching path, so the same Acceptance as the tensor
    code, for 2 ATen ops instead of ~15 (~0.2 ms a drafted cycle on a 2-core CPU); None (the tensor code decides)
    where two children of a node on the walk carry the argmax token."""
    M = pred.shape[1]
    pred = pred[0].tolist()                                         # host sync: M ints
    tokens, parents = tree.tokens[0].tolist(), tree.parents[0].tolist()
    L = tree.paths.shape[2]
    path, out = [0], []
    node = 0
    while True:
        want, nxt = pred[node], -1
        for j in range(node + 1, M):  # children come after their parent (creation order)
            if parents[j] == node and tokens[j] == want:
                if nxt >= 0:
                    return None
                nxt = j
        if nxt < 0:
            break
        path.append(nxt)
        out.append(want)
        node = nxt
    acc = len(out)
    out.append(pred[node])  # the bonus: the target's argmax at the last accepted node
    pad = [-1] * (L - acc - 1)
    return Acceptance(torch.tensor([path + pad], dtype=torch.int64), torch.tensor([out + pad], dtype=torch.int64),
                      [acc])


def uniform(shape, generator, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) draws of `shape` on `device`, from `generator` (None: the default generator of `device`).
    A generator on another device (a CPU torch.Generator with a CUDA target) draws on its own device and
    the draws are copied over, so a seed gives the same stream on every target device."""
    if generator is None:
        return torch.rand(shape, dtype=dtype, device=device)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device == torch.device(device):
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)
    return torch.rand(shape, generator=generator, dtype=dtype, device=generator.device).to(device)


def draw(p: torch.Tensor, generator=None) -> int:
    """One token from the unnormalised probabilities p [V] >= 0 (sum > 0): inverse CDF over a float64
    running sum, so token i is drawn with probability p[i] / sum(p) and a zero-mass token never.
    Same distribution as torch.multinomial(p, 1), which costs ~1.3 ms on a 49k vocabulary on a 2-core
    CPU, ~25x this, and would be paid on every sampled cycle (the bonus token)."""
    cdf = torch.cumsum(p, 0, dtype=torch.float64)                             # [V]
    u = uniform((1,), generator, p.device, torch.float64) * cdf[-1]
    i = int(torch.searchsorted(cdf, u, right=True))  # host sync: the token; first i with cdf[i] > u
    if i >= p.numel() or not bool(p[i] > 0):  # u rounded up to the total: the last token with mass
        i = int(torch.nonzero(p > 0)[-1])
    return i


def sample_node(p: torch.Tensor, child_tokens: list, generator) -> tuple[int, int]:
    """One node of the sampling walk. p [V] float32 target probs at the node (modified in place).
    Returns (index of the accepted child or -1, token emitted: the child's token or the bonus)."""
    for k, x in enumerate(child_tokens):
        u = uniform((), generator, p.device)
        total = p.sum()
        if bool(u * total < p[x]):  # host sync: one accept/reject decision
            return k, x
        p[x] = 0.0
    total = p.sum()
    if not bool(total > 0):  # host sync; cannot happen unless all mass sat on rejected tokens
        raise RuntimeError("sampling acceptance: residual distribution is empty")
    return -1, draw(p, generator)  # host sync: the bonus token


def sample_accept(tree: DraftTree, logits: torch.Tensor, params: SamplingParams, generator=None) -> Acceptance:
    """logits [B, M, V]. Lossless sampling walk from the root (B = 1 rows processed one by one)."""
    B, M, _ = logits.shape
    warpers = params.warpers()
    if M == 1:  # root-only trees (plain steps): one draw per row, no walk (sample_node with no child: the draw)
        probs = target_probs(logits[:, 0], params, warpers)                     # [B, V]
        drawn = [draw(probs[b], generator) for b in range(B)]
        dev = tree.tokens.device
        return Acceptance(torch.zeros(B, 1, dtype=torch.int64, device=dev),
                          torch.tensor(drawn, dtype=torch.int64, device=dev).view(B, 1), [0] * B)
    tokens_h = tree.tokens.tolist()                                # host sync: tree structure
    parents_h = tree.parents.tolist()
    n_nodes = tree.n_nodes.tolist()
    D = tree.paths.shape[2]
    path = torch.full((B, D), -1, dtype=torch.int64)
    out = torch.full((B, D), -1, dtype=torch.int64)
    acc_lens = []
    for b in range(B):
        children = [[] for _ in range(n_nodes[b])]
        for i in range(1, n_nodes[b]):
            children[parents_h[b][i]].append(i)
        node, n = 0, 0
        path[b, 0] = 0
        while True:
            p = target_probs(logits[b, node:node + 1], params, warpers)[0]
            kids = children[node]
            k, tok = sample_node(p, [tokens_h[b][c] for c in kids], generator)
            out[b, n] = tok
            if k < 0:
                break
            node = kids[k]
            n += 1
            path[b, n] = node
        acc_lens.append(n)
    dev = tree.tokens.device
    return Acceptance(path.to(dev), out.to(dev), acc_lens)


def walk_accept(tree: DraftTree, logits: torch.Tensor, scores_at, do_sample: bool, generator=None) -> Acceptance:
    """logits [1, M, V]. The acceptance walk from the root where each visited node's logits first go through
    scores_at(path_tokens, raw [1, V]) -> processed scores [1, V] (path_tokens: the draft tokens from the
    root's child down to the node, host ints). Greedy: the processed argmax picks the child (the first child
    holding it) or is the bonus token. Sampling: the rule of `sample_node` on softmax(processed scores).
    Only visited nodes are processed: accepted length + 1 calls, one per emitted token, in order."""
    B, M, _ = logits.shape
    if B != 1:
        raise NotImplementedError(f"walk_accept: batch size must be 1, got {B}")
    tokens_h = tree.tokens[0].tolist()                            # host sync: tree structure
    parents_h = tree.parents[0].tolist()
    n_nodes = int(tree.n_nodes[0])
    children = [[] for _ in range(n_nodes)]
    for i in range(1, n_nodes):
        children[parents_h[i]].append(i)
    D = tree.paths.shape[2]
    path = torch.full((1, D), -1, dtype=torch.int64)
    out = torch.full((1, D), -1, dtype=torch.int64)
    node, n, path_tokens = 0, 0, []
    path[0, 0] = 0
    while True:
        scores = scores_at(path_tokens, logits[0, node:node + 1].float())     # [1, V]
        kids = children[node]
        kid_tokens = [tokens_h[c] for c in kids]
        if do_sample:
            k, tok = sample_node(torch.softmax(scores[0], dim=-1), kid_tokens, generator)
        else:
            tok = int(scores[0].argmax())  # host sync: the target's processed choice (ties: lowest index, as HF)
            k = kid_tokens.index(tok) if tok in kid_tokens else -1
        out[0, n] = tok
        if k < 0:
            break
        node = kids[k]
        path_tokens.append(tok)
        n += 1
        path[0, n] = node
    dev = tree.tokens.device
    return Acceptance(path.to(dev), out.to(dev), [n])
