"""Offline episodes for the learned controllers (METHOD.md 5 and 6 Decision).

Each cycle drafts at full depth (max_draft_calls N, tree_topk W) and records what any controller
could have seen and earned:
  beam_scores   [N, W]       the W beam scores after every draft call (descending)
  child_scores  [N, W, W]    the W*W child scores of each level (call 1: one row of W, rest -inf)
  pool_top      [N, K]       the best K pool scores after n calls, descending, -inf padded
  accept_dist   [N, nV, D+1] for every stopping point n and budget V, the exact distribution of the
                             accepted length of the tree "best V of the pool after n calls"
  t_draft [N], t_verify, verify_nodes, seq_len, accepted_len (of the full tree, which advances the text)
  (D = N; a hybrid collection's lookup paths may run deeper: D = max(N, the lookup's max_depth))
Format 2 adds what a controller knows before drafting (docs/CONTROLLER_FORMAT.md), each [] per cycle:
  hist_accept_ema, hist_accept_last, hist_best_prob, hist_best_accepted (float32), hist_drafted (int64)
                             the policies' History state before the cycle (base.History, fed the
                             cycles of this text, whose accepted lengths are the full trees')
  batch_size (int64)         rows decoded together (1 for now)
  lookup_match_len, lookup_count (int64), lookup_best_score (float32)
                             context-lookup features (0: no lookup drafter in the collection; with a
                             HybridDrafter, its LookupInfo: the cycle's lookup before drafting)
A hybrid collection (drafter "hybrid") records the merged pool: the lookup nodes are in it from call 1, so
the pool after n calls is not a prefix of the full one (tree_sets_staged, hybrid_stages); pool_top holds the
merged pool's scores, beam_scores and child_scores stay EAGLE's (the depth decisions' inputs).
A skipped cycle needs no record: it earns exactly 1 token for one plain forward (t_ar, calibrated).
Format-1 directories still load (Episodes.has_history False); training a history policy on them fails.

Drafting is deterministic given the prefix and the pool after n calls is a prefix of the full pool,
so every (n, V) tree is a subset of the full pool. All of them are verified in ONE target forward
over their union (each node's logits depend only on its ancestors, which every tree containing it
also contains). Probability that the sampling walk reaches node u = product of the target's p along
its path (distinct children are visited in a fixed order, so child x is accepted with unconditional
probability p(x)); P(L >= d) = sum of reach over the tree's nodes at depth d. Greedy: p is the
one-hot of the target's argmax, which makes every distribution a one-hot.

The text advances with the lossless acceptance of the full tree (n = N, V = max), so it is the
target's own. Shards are written atomically and skipped when present (resumable).
"""
from __future__ import annotations

import json
import os
import random
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from radar_ext import kv_cache
from radar_ext.acceptance import SamplingParams, greedy_accept, sample_accept, target_probs
from radar_ext.drafters.base import DraftRequest
from radar_ext.drafters.hybrid import lookup_info
from radar_ext.policies import CostInfo, CycleOutcome, History, StaticPolicy
from radar_ext.policies.base import guess_probability
from radar_ext.tree import make_tree
from radar_ext.verifier import prefill, verify

DEFAULT_BUDGETS = (2, 4, 6, 8, 12, 16, 24, 32, 48, 60, 64)
FORMAT = 2
FORMATS = (1, 2)  # what loads
# Keys of the meta JSON that must agree when a collection is resumed.
_RESUME_KEYS = ("format", "tree_topk", "max_draft_calls", "budgets", "temperature", "pool_topk", "head",
                "target", "prompt_offset", "seed", "max_new_tokens", "val_fraction", "prompts_per_shard", "drafter",
                "questions")
TENSOR_KEYS_V1 = ("beam_scores", "child_scores", "pool_top", "accept_dist", "t_draft", "t_verify",
                  "verify_nodes", "seq_len", "accepted_len", "prompt")
HISTORY_KEYS = ("hist_accept_ema", "hist_accept_last", "hist_best_prob", "hist_best_accepted", "hist_drafted")
LOOKUP_KEYS = ("lookup_match_len", "lookup_count", "lookup_best_score")
TENSOR_KEYS = TENSOR_KEYS_V1 + HISTORY_KEYS + ("batch_size",) + LOOKUP_KEYS


def tensor_keys(fmt: int) -> tuple:
    """The per-cycle fields of an episodes format."""
    return TENSOR_KEYS_V1 if fmt == 1 else TENSOR_KEYS


# ----------------------------------------------------------------------------- pure functions

def tree_sets(scores: torch.Tensor, counts: list, budgets) -> torch.Tensor:
    """Membership of every (n, V) tree. scores [C] pool scores, counts[n-1] = pool size after n calls.
    Returns member [N, nV, C] bool: best min(V, count_n) nodes of the first count_n, by stable
    descending score (ties -> lower index), exactly as CandidatePool.best."""
    C = scores.shape[0]
    member = torch.zeros(len(counts), len(budgets), C, dtype=torch.bool)
    for n, cnt in enumerate(counts):
        order = torch.sort(scores[:cnt], descending=True, stable=True).indices
        for k, V in enumerate(budgets):
            member[n, k, order[:min(V, cnt)]] = True
    return member


def tree_sets_staged(stage_scores: torch.Tensor, budgets) -> torch.Tensor:
    """Membership of every (n, V) tree when the pool after n calls is not a prefix of the full pool (a hybrid
    pool: the lookup nodes are there from call 1, and a lookup node EAGLE drafts later is one node with the
    larger score). stage_scores [N, G]: each node's score after n calls, -inf where the node is not in that
    pool. Returns member [N, nV, G] bool: the best min(V, available) by stable descending score."""
    N, G = stage_scores.shape
    member = torch.zeros(N, len(budgets), G, dtype=torch.bool)
    for n in range(N):
        avail = int(torch.isfinite(stage_scores[n]).sum())
        order = torch.sort(stage_scores[n], descending=True, stable=True).indices
        for k, V in enumerate(budgets):
            member[n, k, order[:min(V, avail)]] = True
    return member


def hybrid_stages(eagle_pool, counts: list, trie, lookup_scores):
    """The merged pool of a full-depth hybrid cycle in one index space (EAGLE's nodes, then the lookup-only
    ones, as merge_lookup builds it) and every node's score after n calls [N, G]: EAGLE nodes drafted by call n
    score as in decoding (the larger of EAGLE's and the lookup's where both proposed them), later EAGLE nodes
    only as lookup nodes when the lookup proposed them, -inf otherwise. Returns (merged pool, stage scores)."""
    from radar_ext.drafters.hybrid import merge_lookup, trie_positions
    merged = merge_lookup(eagle_pool, trie, lookup_scores)
    G, Ce = merged.count, eagle_pool.count
    look = torch.full((G,), -float("inf"))
    at = trie_positions(eagle_pool, trie)
    if at:
        look[torch.tensor(at)] = torch.tensor(lookup_scores, dtype=torch.float32)
    eag = torch.full((G,), -float("inf"))
    eag[:Ce] = eagle_pool.scores[0, :Ce].float().cpu()
    idx = torch.arange(G)
    stages = torch.stack([torch.where(idx < c, torch.maximum(eag, look), look) for c in counts])
    return merged, stages


def reach_probs(parents: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """parents [U] (node 0 = root, parents before children), q [U] = target p at the parent of the
    node's token. Returns reach [U] float64: probability the acceptance walk reaches each node."""
    reach = torch.ones(parents.shape[0], dtype=torch.float64)
    par, qq = parents.tolist(), q.double().tolist()
    for i in range(1, len(par)):
        reach[i] = reach[par[i]] * qq[i]
    return reach


def accept_distributions(member: torch.Tensor, depth: torch.Tensor, reach: torch.Tensor, max_depth: int) -> torch.Tensor:
    """member [..., U] bool over non-root nodes, depth [U] (>= 1), reach [U] float64.
    Returns dist [..., max_depth + 1] float32: P(accepted length = L) for each tree."""
    onehot = torch.nn.functional.one_hot(depth - 1, max_depth).double() * reach.unsqueeze(1)  # [U, D]
    ge = member.double() @ onehot                                              # [..., D] P(L >= d)
    ones = torch.ones(*ge.shape[:-1], 1, dtype=torch.float64)
    zeros = torch.zeros_like(ones)
    ge = torch.cat([ones, ge, zeros], -1)                                      # P(L >= 0..D+1)
    return (ge[..., :-1] - ge[..., 1:]).clamp(min=0).float()


def node_probs(logits: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, sampling) -> torch.Tensor:
    """logits [U, V] target logits at the nodes, tokens/parents [U]. q[i] = p_parent(i)(token i)
    (q[0] = 1). Greedy (sampling None): p is the one-hot of the argmax."""
    par = parents.clamp(min=0)
    if sampling is None:
        q = (logits.argmax(-1)[par] == tokens).double()
    else:
        probs = target_probs(logits, sampling)                                 # [U, V]
        q = probs[par, tokens].double()
    q[0] = 1.0
    return q


def subtree(tokens, parents, keep: torch.Tensor, draft_calls: int):
    """The DraftTree of the union nodes `keep` [K] (ascending, keep[0] = 0 the root, closed under parent)."""
    new_of = torch.full((tokens.shape[0] + 1,), -1, dtype=torch.int64)
    new_of[keep + 1] = torch.arange(keep.shape[0])
    sub_par = new_of[parents[keep] + 1]
    return make_tree(tokens[keep].view(1, -1), sub_par.view(1, -1), torch.tensor([keep.shape[0]]), draft_calls)


# ----------------------------------------------------------------------------- one sequence

class _Recorder:
    """Called by EagleDrafter after each draft call; keeps references and the per-call wall time."""

    def __init__(self):
        self.pool = None
        self.counts, self.beams, self.children, self.times = [], [], [], []
        self.t_last = time.perf_counter()

    def __call__(self, calls, pool, beam_scores, child_scores):
        t = time.perf_counter()
        self.times.append(t - self.t_last)
        self.pool = pool
        self.counts.append(pool.count)
        self.beams.append(beam_scores[0])
        self.children.append(child_scores[0])
        self.t_last = time.perf_counter()  # the recorder's own time is not a draft call's


class EpisodeCollector:
    def __init__(self, target, drafter, max_draft_calls: int = 12, tree_topk: int = 10,
                 budgets=DEFAULT_BUDGETS, temperature: float = 0.0, pool_topk: int = 64):
        from radar_ext.drafters.hybrid import HybridDrafter
        self.hybrid = isinstance(drafter, HybridDrafter)
        self.eagle = drafter.eagle if self.hybrid else drafter
        if not hasattr(self.eagle, "recorder"):
            raise TypeError(f"drafter must be an EagleDrafter or a HybridDrafter (its EAGLE side records the pool per "
                            f"call), got {type(drafter).__name__}")
        if isinstance(max_draft_calls, bool) or not isinstance(max_draft_calls, int) or max_draft_calls < 1:
            raise ValueError(f"max_draft_calls must be an int >= 1, got {max_draft_calls!r}")
        if isinstance(tree_topk, bool) or not isinstance(tree_topk, int) or tree_topk < 1:
            raise ValueError(f"tree_topk must be an int >= 1, got {tree_topk!r}")
        budgets = tuple(int(v) for v in budgets)
        if not budgets or list(budgets) != sorted(set(budgets)) or budgets[0] < 1:
            raise ValueError(f"budgets must be distinct increasing ints >= 1, got {list(budgets)}")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        self.target, self.drafter = target, drafter
        self.N, self.W, self.budgets, self.K = max_draft_calls, tree_topk, budgets, pool_topk
        self.sampling = SamplingParams(float(temperature)) if temperature > 0 else None
        self.temperature = float(temperature)

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, max_new_tokens: int, eos_ids=(), generator=None) -> dict:
        """Decode one prompt [1, P]; returns the per-cycle tensors (TENSOR_KEYS but `prompt`) stacked
        over cycles, plus `tokens` [T] the emitted text."""
        tgt, dr = self.target, self.drafter
        P = input_ids.shape[1]
        cache = kv_cache.new_target_cache(tgt)
        res = prefill(tgt, cache, input_ids, dr.feature_layers)
        if self.sampling is None:
            root = res.logits[:, -1].argmax(-1)
        else:
            root = torch.multinomial(target_probs(res.logits[:, -1], self.sampling), 1, generator=generator).view(-1)
        dr.start(input_ids, res.features, root)
        emitted = [int(root)]
        rows = []
        history = History()
        while len(emitted) < max_new_tokens and emitted[-1] not in eos_ids:
            before = _history_row(history)
            row, out = self._cycle(cache, P + len(emitted) - 1, emitted[-1], generator)
            history.observe(row.pop("outcome"))
            row = {**before, **row}  # the cycle's own lookup fields (hybrid) replace the zeros
            rows.append(row)
            for t in out:
                emitted.append(t)
                if t in eos_ids or len(emitted) >= max_new_tokens:
                    break
        batch = {k: torch.stack([r[k] for r in rows]) if rows else torch.empty(0) for k in (rows[0] if rows else {})}
        batch["tokens"] = torch.tensor(emitted, dtype=torch.int64)
        return batch

    def _cycle(self, cache, prefix_len, root_token: int, generator):
        """One full-depth cycle whose root (the last emitted token) sits at prefix_len.
        Returns (record, emitted tokens)."""
        N, W, dr = self.N, self.W, self.drafter
        root = torch.tensor([root_token])
        rec = _Recorder()
        self.eagle.recorder = rec
        try:
            rec.t_last = time.perf_counter()
            dr.draft(DraftRequest(root=root, seq_len=prefix_len + 1, tree_topk=W, verify_budget=self.budgets[-1],
                                  policy=StaticPolicy(N), costs=CostInfo(), temperature=self.temperature))
        finally:
            self.eagle.recorder = None
        if len(rec.counts) != N:
            raise RuntimeError(f"expected {N} draft calls, the drafter made {len(rec.counts)}")
        pool, stages, lookup = rec.pool, None, {}
        if self.hybrid:  # the merged pool in one index space, and each node's score after n calls
            lsc = dr.scores.score(dr.last_trie)
            pool, stages = hybrid_stages(rec.pool, rec.counts, dr.last_trie, lsc)
            info = lookup_info(dr.last_trie, lsc)
            lookup = dict(lookup_match_len=torch.tensor(info.match_len), lookup_count=torch.tensor(info.count),
                          lookup_best_score=torch.tensor(info.best_score, dtype=torch.float32))
        C = pool.count
        scores, ptok, ppar = pool.scores[0, :C].cpu(), pool.tokens[0, :C].cpu(), pool.parents[0, :C].cpu()
        member = (tree_sets(scores, rec.counts, self.budgets) if stages is None
                  else tree_sets_staged(stages, self.budgets))                 # [N, nV, C]
        union = member.any(0).any(0).nonzero().view(-1)                        # [U-1] ascending pool idx
        # union tree: node 0 = root, node k + 1 = pool index union[k]
        node_of = torch.zeros(C + 1, dtype=torch.int64)
        node_of[union + 1] = torch.arange(1, union.shape[0] + 1)
        tokens = torch.cat([root, ptok[union]])
        parents = torch.cat([torch.tensor([-1]), node_of[ppar[union] + 1]])
        tree = make_tree(tokens.view(1, -1), parents.view(1, -1), torch.tensor([tokens.shape[0]]), N)
        t0 = time.perf_counter()
        vr = verify(self.target, cache, tree, prefix_len, dr.feature_layers)
        t_verify = time.perf_counter() - t0
        logits = vr.logits[0].cpu()                                            # [U, V]
        q = node_probs(logits, tokens, parents, self.sampling)
        reach = reach_probs(parents, q)
        depth = tree.depth[0].cpu()
        # a lookup path may run deeper than N calls: hybrid distributions reach the lookup's max_depth
        D = max(N, dr.lookup.max_depth) if self.hybrid else N
        dist = accept_distributions(member[:, :, union], depth[1:], reach[1:], D)  # [N, nV, D+1]
        # advance with the full tree (n = N, V = max): its nodes inside the union
        keep = torch.cat([torch.tensor([0]), member[N - 1, -1, union].nonzero().view(-1) + 1])
        sub = subtree(tokens, parents, keep, N)
        sub_logits = vr.logits[:, keep.to(vr.logits.device)]
        acc = (greedy_accept(sub, sub_logits) if self.sampling is None
               else sample_accept(sub, sub_logits, self.sampling, generator))
        n = acc.accepted_len[0] + 1
        if self.sampling is None and float(dist[N - 1, -1, n - 1]) != 1.0:
            raise RuntimeError(f"greedy walk accepted {n - 1} tokens but the recorded distribution says "
                               f"{dist[N - 1, -1].tolist()}")
        path = keep[acc.path[0, :n].cpu()]
        kv_cache.commit_path(cache, prefix_len, path.to(vr.logits.device))
        feats = vr.features[:, path.to(vr.features.device)] if vr.features is not None else None
        dr.commit(acc.tokens, n, feats)
        # per-call controller inputs
        child = torch.full((N, W, W), -float("inf"))
        for k, cs in enumerate(rec.children):
            child[k, :cs.shape[0]] = cs.float().cpu()
        pool_top = torch.full((N, self.K), -float("inf"))
        for k, cnt in enumerate(rec.counts):
            avail = scores[:cnt] if stages is None else stages[k]   # -inf (absent nodes) sort last
            top = torch.sort(avail, descending=True).values[:self.K]
            pool_top[k, :top.shape[0]] = top
        # the first-call guess (call 1 adds the root children in score order: pool index 0 is the best)
        outcome = CycleOutcome(int(n - 1), N, tokens.shape[0] - 1, False, guess_probability(float(rec.beams[0][0])),
                               int(acc.tokens[0, 0]) == int(ptok[0]))
        row = dict(outcome=outcome, beam_scores=torch.stack(rec.beams).float().cpu(), child_scores=child, pool_top=pool_top,
                   accept_dist=dist, t_draft=torch.tensor(rec.times, dtype=torch.float32),
                   t_verify=torch.tensor(t_verify, dtype=torch.float32),
                   verify_nodes=torch.tensor(tokens.shape[0] - 1), seq_len=torch.tensor(prefix_len + 1),
                   accepted_len=torch.tensor(n - 1), **lookup)
        return row, acc.tokens[0, :n].tolist()


def _history_row(h: History) -> dict:
    """The format-2 fields known before a cycle: the History state, batch size 1, no lookup drafter."""
    f32, i64 = torch.float32, torch.int64
    return dict(hist_accept_ema=torch.tensor(h.ema, dtype=f32), hist_accept_last=torch.tensor(h.last, dtype=f32),
                hist_best_prob=torch.tensor(h.best_prob, dtype=f32),
                hist_best_accepted=torch.tensor(h.best_accepted, dtype=f32),
                hist_drafted=torch.tensor(h.drafted, dtype=i64), batch_size=torch.tensor(1, dtype=i64),
                lookup_match_len=torch.tensor(0, dtype=i64), lookup_count=torch.tensor(0, dtype=i64),
                lookup_best_score=torch.tensor(0.0, dtype=f32))


# ----------------------------------------------------------------------------- dataset

@dataclass
class CollectConfig:
    out_dir: Path
    num_prompts: int = 64
    # Prompts [0, prompt_offset) of the seed-0 shuffle of ShareGPT first turns are the head's training
    # set (`radar train-draft` default --num-prompts 4096); episodes come from the next ones.
    prompt_offset: int = 4096
    val_fraction: float = 0.1
    prompts_per_shard: int = 8
    max_new_tokens: int = 256
    max_prompt_tokens: int = 384
    max_draft_calls: int = 12
    tree_topk: int = 10
    budgets: tuple = DEFAULT_BUDGETS
    temperature: float = 0.0
    pool_topk: int = 64
    seed: int = 0
    threads: int = 0
    head: str | None = None
    drafter: str = "eagle"          # "eagle" or "hybrid" (EAGLE pool + context lookups, radar_ext.drafters.hybrid)
    lookup_scores: str | None = None  # hybrid: calibrated lookup scores (default: lookup_scores.json beside the head)
    # A Spec-Bench .jsonl file: first turns of its questions (num_prompts of them, round-robin over categories as
    # `radar bench --limit` picks them) instead of ShareGPT. For measuring the controllers on the benchmark's own
    # cycles (bench/controller_ceiling.py); `radar train-policy` refuses such episodes.
    questions: str | None = None


def is_validation(conv_id: str, val_fraction: float) -> bool:
    """Train/validation split by prompt (a hash of the conversation id, stable across runs)."""
    return zlib.crc32(("episodes:" + conv_id).encode()) % 10000 < round(val_fraction * 10000)


def _meta(cfg: CollectConfig, target_name: str) -> dict:
    d = {k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "threads")}
    d["budgets"] = list(cfg.budgets)
    d.update(format=FORMAT, target=target_name, head=str(cfg.head) if cfg.head else "default")
    return d


def check_config(cfg: CollectConfig) -> None:
    for name in ("num_prompts", "prompts_per_shard", "max_new_tokens", "max_prompt_tokens", "max_draft_calls",
                 "tree_topk", "pool_topk"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if cfg.prompt_offset < 0:
        raise ValueError(f"prompt_offset must be >= 0, got {cfg.prompt_offset}")
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if not cfg.temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {cfg.temperature}")
    if cfg.drafter not in ("eagle", "hybrid"):
        raise ValueError(f"drafter must be 'eagle' or 'hybrid', got {cfg.drafter!r}")
    if cfg.questions is not None and not Path(cfg.questions).is_file():
        raise ValueError(f"questions must be a Spec-Bench .jsonl file, got {cfg.questions!r} (no such file)")
    if cfg.lookup_scores is not None and cfg.drafter != "hybrid":
        raise ValueError(f"lookup_scores needs drafter 'hybrid', got drafter {cfg.drafter!r}")
    b = list(cfg.budgets)
    if not b or b != sorted(set(b)) or b[0] < 1:
        raise ValueError(f"budgets must be distinct increasing ints >= 1, got {b}")


def shard_plan(prompts: list, cfg: CollectConfig) -> list:
    """[(shard name, [(global index, conv id, input ids)])], train and val shards separately."""
    plan = []
    for split in ("train", "val"):
        items = [p for p in prompts if is_validation(p[1], cfg.val_fraction) == (split == "val")]
        for s in range(0, len(items), cfg.prompts_per_shard):
            plan.append((f"{split}_{s // cfg.prompts_per_shard:05d}", items[s:s + cfg.prompts_per_shard]))
    return plan


def collect(cfg: CollectConfig, target=None, tokenizer=None, drafter=None, prompts=None) -> Path:
    """Write episode shards to cfg.out_dir. `prompts`: optional [(conv id, input ids list)] (tests);
    default: ShareGPT first turns in the target's chat template. Returns the meta path."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if target is None:
        from radar_ext.drafters import EagleDrafter
        from radar_ext.models import DEFAULT_TARGET_NAME, load_default, load_default_target
        if cfg.head:
            target, tokenizer = load_default_target()
            drafter = EagleDrafter.from_pretrained(cfg.head, target)
        else:
            target, tokenizer, drafter = load_default()
        target_name = DEFAULT_TARGET_NAME
        if cfg.drafter == "hybrid":
            from radar_ext.drafters import HybridDrafter, LookupScores
            from radar_ext.drafters.hybrid import default_scores_path
            drafter = HybridDrafter(drafter, None, LookupScores.load(cfg.lookup_scores or default_scores_path(cfg.head)))
    else:
        target_name = getattr(target.config, "_name_or_path", "") or target.config.model_type
    if prompts is None:
        prompts = _question_prompts(cfg, tokenizer) if cfg.questions else _sharegpt_prompts(cfg, tokenizer)
    indexed = [(i, cid, ids) for i, (cid, ids) in enumerate(prompts)]
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = _meta(cfg, target_name)
    meta_path = out / "episodes_meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        old.setdefault("drafter", "eagle")  # collections from before hybrid drafting: EAGLE only
        bad = [k for k in _RESUME_KEYS if old.get(k) != meta.get(k)]
        if bad:
            raise ValueError(f"{out} holds episodes collected with other settings ({', '.join(f'{k}: {old.get(k)!r} != {meta.get(k)!r}' for k in bad)}); "
                             "use another --out-dir")
    plan = shard_plan(indexed, cfg)
    meta["shards"] = {name: [cid for _, cid, _ in items] for name, items in plan}
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)
    eos_ids = _eos_ids(target, tokenizer)
    col = EpisodeCollector(target, drafter, cfg.max_draft_calls, cfg.tree_topk, cfg.budgets, cfg.temperature, cfg.pool_topk)
    todo = [(name, items) for name, items in plan if not (out / f"{name}.safetensors").exists()]
    bar = tqdm(total=sum(len(items) for _, items in todo), desc="collect prompts", unit="prompt")
    t_start, n_cycles, n_tok = time.perf_counter(), 0, 0
    for name, items in todo:
        rows = []
        for k, (gi, cid, ids) in enumerate(items):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + gi)
            ep = col.run(torch.tensor([ids], dtype=torch.int64), cfg.max_new_tokens, eos_ids, gen)
            n_tok += ep["tokens"].shape[0]
            if ep["tokens"].shape[0] and "accept_dist" in ep:
                c = ep["accept_dist"].shape[0]
                ep["prompt"] = torch.full((c,), k, dtype=torch.int64)
                rows.append(ep)
                n_cycles += c
            bar.update(1)
            bar.set_postfix(cycles=n_cycles, tok_s=f"{n_tok / (time.perf_counter() - t_start):.1f}")
        tensors = {key: torch.cat([r[key] for r in rows]).contiguous() for key in TENSOR_KEYS} if rows else \
            _empty_shard(cfg)
        path = out / f"{name}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"conv_ids": json.dumps([cid for _, cid, _ in items])})
        os.replace(tmp, path)
    bar.close()
    return meta_path


def _empty_shard(cfg, fmt: int = FORMAT):
    N, W, nV = cfg.max_draft_calls, cfg.tree_topk, len(cfg.budgets)
    D = N
    if getattr(cfg, "drafter", "eagle") == "hybrid":   # as EpisodeCollector._cycle: lookup paths reach deeper
        from radar_ext.drafters.hybrid import default_lookup
        D = max(N, default_lookup().max_depth)
    out = dict(beam_scores=torch.zeros(0, N, W), child_scores=torch.zeros(0, N, W, W),
               pool_top=torch.zeros(0, N, cfg.pool_topk), accept_dist=torch.zeros(0, N, nV, D + 1),
               t_draft=torch.zeros(0, N), t_verify=torch.zeros(0), verify_nodes=torch.zeros(0, dtype=torch.int64),
               seq_len=torch.zeros(0, dtype=torch.int64), accepted_len=torch.zeros(0, dtype=torch.int64),
               prompt=torch.zeros(0, dtype=torch.int64))
    if fmt >= 2:
        out.update({k: v.reshape(1)[:0] for k, v in _history_row(History()).items()})  # 0-d fields -> [0]
    return out


def _eos_ids(target, tokenizer) -> tuple:
    eos = getattr(getattr(target, "generation_config", None), "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    return () if eos is None else tuple(int(e) for e in ([eos] if isinstance(eos, int) else eos))


def _question_prompts(cfg: CollectConfig, tokenizer) -> list:
    """("category/question id", input ids) of the first turns of the num_prompts questions of cfg.questions
    that `radar bench --limit` runs (picked round-robin over categories, in file order), in the target's
    chat template, every length kept (as the benchmark runs them)."""
    from radar_ext.benchmark import load_questions, select_questions
    from radar_ext.benchmark.runner import encode_chat

    qs = select_questions(load_questions(cfg.questions), limit=cfg.num_prompts)
    return [(f"{q.category}/{q.question_id}", encode_chat(tokenizer, [{"role": "user", "content": q.turns[0]}]))
            for q in qs]


def _sharegpt_prompts(cfg: CollectConfig, tokenizer) -> list:
    """(conv id, input ids) of ShareGPT first turns [prompt_offset, +num_prompts) of the seed-0 shuffle
    (the head's data stage uses the same shuffle), rendered with the target's chat template."""
    from radar_ext.training.data import first_user_turns, render_prompt

    turns = first_user_turns()
    random.Random(0).shuffle(turns)
    out = []
    for cid, q in turns[cfg.prompt_offset:]:
        if len(out) >= cfg.num_prompts:
            break
        ids = render_prompt(tokenizer, q)
        if len(ids) <= cfg.max_prompt_tokens:
            out.append((cid, ids))
    if not out:
        raise ValueError(f"no ShareGPT prompt left after prompt_offset = {cfg.prompt_offset}")
    return out


@dataclass
class Episodes:
    """All cycles of one split, concatenated (field shapes as in the module docstring, leading C)."""
    meta: dict
    tensors: dict = field(default_factory=dict)

    @property
    def cycles(self) -> int:
        return int(self.tensors["accept_dist"].shape[0])

    @property
    def has_history(self) -> bool:
        """Format 2: the History state and the batch / lookup fields of every cycle are recorded."""
        return all(k in self.tensors for k in HISTORY_KEYS)

    def history_features(self) -> torch.Tensor:
        """[C, 5] float32 base.history_features of every cycle (what the policies saw before it)."""
        from radar_ext.policies.base import history_features
        self._require_format2("history features", "history")
        t = self.tensors
        return history_features(t["hist_accept_ema"], t["hist_accept_last"], t["hist_best_prob"],
                                t["hist_best_accepted"], t["hist_drafted"])

    def lookup_features(self) -> torch.Tensor:
        """[C, 3] float32 base.lookup_features of every cycle (zeros' features where no lookup drafter ran)."""
        from radar_ext.policies.base import lookup_features
        self._require_format2("lookup fields", "lookup features")
        t = self.tensors
        return lookup_features(t["lookup_match_len"], t["lookup_count"], t["lookup_best_score"])

    def _require_format2(self, what: str, purpose: str) -> None:
        if not self.has_history:
            where = self.meta.get("merged_from") or self.meta.get("path", "these episodes")
            raise ValueError(f"{where}: episodes format {self.meta.get('format')!r} records no {what}; "
                             f"collect them again with `radar collect` (format 2) to train a policy with {purpose}")

    def __getitem__(self, key):
        return self.tensors[key]


# Meta keys that must agree for episodes of several collections to be trained on together.
_MERGE_KEYS = ("format", "tree_topk", "max_draft_calls", "budgets", "pool_topk")


def load_episodes(path, split: str) -> Episodes:
    """Load the `train` or `val` shards of a `radar collect` directory, or of several (a list of
    directories, e.g. the T=0 and T=1 collections of one head): their cycles are concatenated and
    their W, N, budgets and pool_topk must agree; meta["temperature"] becomes the list of theirs.
    Besides the stored fields, `temperature` [C] float32 is every cycle's collection temperature and
    `prompt_index` [C] int64 its prompt's position in meta["prompt_ids"] (the shards' conversation ids;
    "category/question id" for episodes recorded on benchmark questions).
    split "all": the train cycles, then the validation ones (for scoring, not for training)."""
    if split == "all":
        tr, va = load_episodes(path, "train"), load_episodes(path, "val")
        return _concat([tr, va], dict(tr.meta))
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        raise ValueError("episodes: expected at least one `radar collect` directory, got none")
    loaded = [_load_one(Path(p), split) for p in paths]
    if len(loaded) == 1:
        return loaded[0]
    meta = dict(loaded[0].meta)
    for p, ep in zip(paths[1:], loaded[1:]):
        bad = [k for k in _MERGE_KEYS if ep.meta.get(k) != meta.get(k)]
        if bad:
            raise ValueError(f"episodes {p} cannot be merged with {paths[0]}: they differ in "
                             + ", ".join(f"{k} ({ep.meta.get(k)!r} vs {meta.get(k)!r})" for k in bad))
    meta["temperature"] = [ep.meta.get("temperature") for ep in loaded]
    meta["merged_from"] = [str(p) for p in paths]
    meta["questions"] = next((ep.meta["questions"] for ep in loaded if ep.meta.get("questions")), None)
    return _concat(loaded, meta)


def _concat(parts: list, meta: dict) -> Episodes:
    """parts' cycles in order under `meta`; prompt_index renumbered into the joined meta["prompt_ids"]."""
    ids, index = [], []
    for ep in parts:
        index.append(ep["prompt_index"] + len(ids))
        ids += ep.meta["prompt_ids"]
    tensors = {k: torch.cat([ep[k] for ep in parts]) for k in parts[0].tensors if k != "prompt_index"}
    tensors["prompt_index"] = torch.cat(index)
    meta["prompt_ids"] = ids
    return Episodes(meta, tensors)


def _load_one(path: Path, split: str) -> Episodes:
    from safetensors import safe_open

    meta_path = path / "episodes_meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not an episodes directory (no episodes_meta.json); run `radar collect` first")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") not in FORMATS:
        raise ValueError(f"{meta_path}: episodes format {meta.get('format')!r} is not supported "
                         f"(expected one of {list(FORMATS)})")
    meta["path"] = str(path)
    shards = sorted(path.glob(f"{split}_*.safetensors"))
    parts, stored_ids = [], []
    for s in shards:  # each shard opened once: its tensors and its prompts' ids (metadata conv_ids)
        with safe_open(str(s), "pt") as f:
            parts.append({k: f.get_tensor(k) for k in f.keys()})
            stored_ids.append((f.metadata() or {}).get("conv_ids"))
    # every cycle's prompt: prompt_index [C] into meta["prompt_ids"] (the shards' conversation / question ids)
    meta["prompt_ids"], index = [], []
    for s, p, stored in zip(shards, parts, stored_ids):
        n = int(p["prompt"].max()) + 1 if p["prompt"].numel() else 0
        ids = json.loads(stored) if stored else [f"{s.stem}/{i}" for i in range(n)]
        index.append(p["prompt"] + len(meta["prompt_ids"]))
        meta["prompt_ids"] += ids
    keys = tensor_keys(meta["format"])
    for s, p in zip(shards, parts):
        missing = [k for k in keys if k not in p]
        if missing:
            raise ValueError(f"{s}: episodes format {meta['format']} needs the fields {missing}")
    tensors = (_empty_shard(_cfg_from_meta(meta), meta["format"]) if not parts else
               {k: torch.cat([p[k] for p in parts]) for k in keys})
    temperature = meta.get("temperature")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
        raise ValueError(f"{meta_path}: temperature must be a number >= 0, got {temperature!r}")
    tensors["temperature"] = torch.full((tensors["accept_dist"].shape[0],), float(temperature))
    tensors["prompt_index"] = torch.cat(index) if index else torch.zeros(0, dtype=torch.int64)
    return Episodes(meta, tensors)


def _cfg_from_meta(meta):
    return CollectConfig(out_dir=Path("."), max_draft_calls=meta["max_draft_calls"], tree_topk=meta["tree_topk"],
                         budgets=tuple(meta["budgets"]), pool_topk=meta["pool_topk"],
                         drafter=meta.get("drafter", "eagle"))
