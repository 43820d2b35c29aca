"""LtdPolicy: learned depth and verify budget, rewarded by throughput (METHOD.md 6).

Depth head (queried after every draft call): MLP on [the W*W child scores of the last level sorted
(call 1: its W root children, floor-padded), log seq_len, calls made / max_draft_calls, the sampling
temperature (learned.temperature_feature), cost features] -> (P(stop), P(continue)). Size head (after
drafting): MLP on [the best `pool_topk` pool scores sorted, log seq_len, calls / max_draft_calls,
temperature, cost features] -> one output per budget in `budgets`: `radar train-policy` fits them to
each budget's reward (so the argmax is the budget of highest expected reward), and fits the depth head
to the better of stop / continue. Scores are divided by 10. Both run through ops.policy_step with
H = 0 (no LSTM). Deterministic by default (argmax); sample=True draws from the softmax of the outputs,
which for the size head is a near-uniform exploration draw (its outputs are rewards near 1), not a
trained stochastic policy.
Cost features are the calibrated costs relative to t_ar (PolicyCosts.features), so the same policy
sees when the machine's cost curve changes.

Format 2 options (docs/CONTROLLER_FORMAT.md): history=True inserts the sequence's history features
(base.HISTORY_FEATURES) after the context features of both heads. skip=True lets the policy stop before
the first draft call: the depth head is asked once more, at call 0 (no scores yet: every child score
learned.PRE_DRAFT_SCORE, calls_frac 0), and its "stop" there is a plain step (no draft call, V = 0). The size set
is unchanged: V = 0 follows from stopping at call 0, so there is one skip action, not two.
lookup=True (hybrid drafting, radar_ext.drafters.hybrid) inserts the cycle's context-lookup features
(base.LOOKUP_FEATURES: match length, occurrences, the best lookup node's calibrated probability) after the
history features; the merged pool's sorted scores already reach the size head. A config without the key
has lookup off, so policies saved before it decide bit for bit as before.
"""
from __future__ import annotations

import torch

from radar_ext.policies.base import (HISTORY_FEATURES, LOOKUP_FEATURES, BudgetStep, DraftStep, History, LookupInfo,
                                    PreDraftStep, lookup_features_of)
from radar_ext.policies.costs import PolicyCosts
from radar_ext.policies.learned import (FORMAT, MAX_SKIP_RUN, PRE_DRAFT_SCORE, SCORE_FLOOR, SCORE_SCALE,
                                        ControllerNet, FusedHead, LearnedPolicy, check_batch, check_features,
                                        check_flags, config_value, costs_from_config, decide, format2_flags,
                                        lookup_flag,
                                        must_draft, seq_len_feature, temperature_feature)

STOP, CONTINUE = 0, 1
PRE_DRAFT_BLOCK = 256  # positions whose pre-draft decisions are computed together (_pre_draft_memo)


CONTEXT_FEATURES = ["log_seq_len", "calls_frac", "temperature"]


def cost_feature_names(budgets) -> list:
    return ["t_draft/t_ar", "t_policy/t_ar"] + [f"t_verify({v})/t_ar" for v in budgets]


def depth_feature_names(W: int, budgets, history: bool = False, lookup: bool = False) -> list:
    return ([f"child_score_sorted_{i}" for i in range(W * W)] + CONTEXT_FEATURES
            + (HISTORY_FEATURES if history else []) + (LOOKUP_FEATURES if lookup else []) + cost_feature_names(budgets))


def size_feature_names(pool_topk: int, budgets, history: bool = False, lookup: bool = False) -> list:
    return ([f"pool_score_sorted_{i}" for i in range(pool_topk)] + CONTEXT_FEATURES
            + (HISTORY_FEATURES if history else []) + (LOOKUP_FEATURES if lookup else []) + cost_feature_names(budgets))


def depth_features(child_sorted: torch.Tensor, seq_len_f: torch.Tensor, calls_frac: torch.Tensor,
                   temperature_f: torch.Tensor, cost_f: torch.Tensor, history_f: torch.Tensor | None = None,
                   lookup_f: torch.Tensor | None = None) -> torch.Tensor:
    """child_sorted [B, W*W] (descending, floored), seq_len_f, calls_frac, temperature_f [B], cost_f [nc],
    history_f [B, 5] (base.history_features; None: a layout without history), lookup_f [B, 3]
    (base.lookup_features; None: a layout without lookup) -> [B, F]."""
    B = child_sorted.shape[0]
    hist = [] if history_f is None else [history_f.float().view(B, -1)]
    hist += [] if lookup_f is None else [lookup_f.float().view(B, -1)]
    return torch.cat([child_sorted / SCORE_SCALE, seq_len_f.view(B, 1), calls_frac.view(B, 1),
                      temperature_f.view(B, 1)] + hist + [cost_f.view(1, -1).expand(B, -1)], 1).float()


size_features = depth_features  # same layout with the pool's top scores in front


class LtdPolicy(LearnedPolicy):
    kind = "ltd"

    def __init__(self, tree_topk: int = 10, max_draft_calls: int = 12, budgets=(2, 4, 6, 8, 12, 16, 24, 32, 48, 60, 64),
                 costs=None, pool_topk: int = 64, mlp_hidden: int = 128, sample: bool = False, seed: int = 0,
                 generator: torch.Generator | None = None, history: bool = False, skip: bool = False,
                 max_skip_run: int = MAX_SKIP_RUN, batch_costs: bool = False, lookup: bool = False):
        """history: the heads also read the sequence's history features; skip: the depth head may stop
        before the first draft call (a plain step), with history at most max_skip_run times in a row. batch_costs: at
        batch size B > 1 the cost features are a row's share of the batch's costs (PolicyCosts.batch_features,
        from a `radar calibrate --batch-sizes` calibration); off, every B reads the B = 1 features (the
        layout is the same: a policy trained on costs of several B turns it on)."""
        for name, v in (("tree_topk", tree_topk), ("max_draft_calls", max_draft_calls), ("pool_topk", pool_topk),
                        ("mlp_hidden", mlp_hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LtdPolicy: {name} must be an int >= 1, got {v!r}")
        budgets = [int(v) for v in budgets]
        if not budgets or budgets != sorted(set(budgets)) or budgets[0] < 1:
            raise ValueError(f"LtdPolicy: budgets must be distinct increasing ints >= 1, got {budgets}")
        if costs is None:
            raise ValueError("LtdPolicy: costs are required (a calibration JSON path, dict or PolicyCosts): "
                             "its inputs include the calibrated cost features")
        check_flags("LtdPolicy", history, skip, max_skip_run)
        if not isinstance(lookup, bool):
            raise ValueError(f"LtdPolicy: lookup must be True or False, got {lookup!r}")
        self.costs = PolicyCosts.load(costs)
        self.tree_topk, self.max_draft_calls, self.budgets, self.pool_topk = tree_topk, max_draft_calls, budgets, pool_topk
        self.history, self.skip, self.max_skip_run, self.lookup = history, skip, max_skip_run, lookup
        if not isinstance(batch_costs, bool):
            raise ValueError(f"LtdPolicy: batch_costs must be True or False, got {batch_costs!r}")
        self.batch_costs = batch_costs
        self.sample = bool(sample)
        nc = len(cost_feature_names(budgets))
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            nx = len(CONTEXT_FEATURES) + len(HISTORY_FEATURES) * history + len(LOOKUP_FEATURES) * lookup + nc
            self.depth_net = ControllerNet(tree_topk * tree_topk + nx, 2, 0, mlp_hidden)
            self.size_net = ControllerNet(pool_topk + nx, len(budgets), 0, mlp_hidden)
        self.generator = generator or torch.Generator().manual_seed(seed)
        self.refresh()

    def cost_tensor(self) -> torch.Tensor:
        return torch.tensor(self.costs.features(self.budgets), dtype=torch.float32)

    # ------------------------------------------------------------------ the Policy interface
    def refresh(self) -> None:
        self.depth_head, self.size_head = FusedHead(self.depth_net), FusedHead(self.size_net)
        self._pre_draft_top = [PRE_DRAFT_SCORE / SCORE_SCALE] * (self.tree_topk * self.tree_topk)  # its sorted row
        self._cost_list = self.cost_tensor().tolist()
        self._batch_cost_lists = {1: self._cost_list}  # batch size -> cost features (batch_costs)
        self._pre_draft = {}  # (temperature, batch size, position block) -> greedy pre-draft decisions

    def _costs_at(self, batch_size: int) -> list:
        """The cost features at this batch size: float32-rounded as cost_tensor's, cached per B."""
        if not self.batch_costs or batch_size <= 1:
            return self._cost_list
        if batch_size not in self._batch_cost_lists:
            self._batch_cost_lists[batch_size] = torch.tensor(self.costs.batch_features(self.budgets, batch_size),
                                                              dtype=torch.float32).tolist()
        return self._batch_cost_lists[batch_size]

    def _features(self, scores: torch.Tensor | None, width: int, seq_len, draft_calls: int, temperature: float,
                  history: History | None = None, batch_size: int = 1, lookup: LookupInfo | None = None) -> torch.Tensor:
        """[1, F]: the best `width` of scores [1, K] (descending, floored at SCORE_FLOOR, floor-padded) / 10,
        log seq_len, calls_frac, temperature, cost features: the values depth_features / size_features build for
        training, bit for bit (one host copy and Python floats instead of a dozen small ATen ops, which
        cost ~4x their standalone time between the forwards of a decode loop; float64 division then
        rounding to float32 is exact rounding for float32 operands)."""
        if scores is None:  # before the first draft call: every child score PRE_DRAFT_SCORE (precomputed)
            row = self._pre_draft_top + [seq_len_feature(seq_len), 0.0, temperature_feature(temperature)]
        else:
            top = sorted((max(v, SCORE_FLOOR) for v in scores[0].tolist()), reverse=True)[:width]
            top += [SCORE_FLOOR] * (width - len(top))
            row = [v / SCORE_SCALE for v in top] + [seq_len_feature(seq_len), draft_calls / self.max_draft_calls,
                                                    temperature_feature(temperature)]
        if self.history:
            row += History.features_of(history)
        if self.lookup:
            row += lookup_features_of(lookup)
        return torch.tensor([row + self._costs_at(batch_size)], dtype=torch.float32)

    @property
    def pre_draft_lookup(self) -> bool:
        return self.skip and self.lookup

    def should_draft(self, step: PreDraftStep) -> bool:
        """skip=True: the depth head at call 0 (every child score PRE_DRAFT_SCORE); its stop is a plain step."""
        if not self.skip or must_draft(step, self.max_skip_run, self.history):
            return True
        if not self.history and not self.sample:
            return self._pre_draft_memo(step.seq_len, step.temperature, step.batch_size, getattr(step, "lookup", None))
        x = self._features(None, self.tree_topk * self.tree_topk, step.seq_len, 0, step.temperature,
                           step.history, step.batch_size, getattr(step, "lookup", None))
        return decide(self.depth_head(x), self.sample, self.generator) == CONTINUE

    def plans_plain_steps(self, first_seq_len: int, last_seq_len: int, temperature: float, batch_size: int = 1) -> bool:
        if not self.skip or self.history or self.lookup or self.sample:
            return False
        return not any(self._pre_draft_memo(s, temperature, batch_size) for s in range(first_seq_len, last_seq_len + 1))

    def _pre_draft_memo(self, seq_len: int, temperature: float, batch_size: int, lookup: LookupInfo | None = None) -> bool:
        """The greedy pre-draft decision of a policy without history features: a function of (position,
        temperature, batch size, and for a hybrid's policy what the lookup found) alone, so it is computed for
        PRE_DRAFT_BLOCK positions at once (one policy_step over their rows, the same per-row values as one row at
        a time) and kept. The lookup's values are few (match length and occurrences are small counts, the best
        score a cell of LookupScores' table), so a hybrid's cycle mostly finds its decision kept: ~2 us against
        ~0.1 ms for a policy call between two forwards."""
        block, i = divmod(int(seq_len), PRE_DRAFT_BLOCK)
        info = lookup or LookupInfo()  # (no lookup: the features of no occurrence)
        found = (info.match_len, info.count, info.best_score) if self.lookup else None
        key = (float(temperature), int(batch_size), block, found)
        got = self._pre_draft.get(key)
        if got is None:
            tail = [0.0, temperature_feature(temperature)]
            if self.lookup:
                tail = tail + lookup_features_of(info)
            costs = self._costs_at(batch_size)
            col = len(self._pre_draft_top)  # the position's column; the rest of the row is the same for the block
            rows = torch.tensor([self._pre_draft_top + [0.0] + tail + costs], dtype=torch.float32)
            rows = rows.expand(PRE_DRAFT_BLOCK, -1).clone()
            rows[:, col] = torch.tensor([seq_len_feature(block * PRE_DRAFT_BLOCK + j) for j in range(PRE_DRAFT_BLOCK)],
                                        dtype=torch.float32)
            probs = self.depth_head(rows)
            # the greedy choice of `decide` (the first largest: a tie stops)
            got = self._pre_draft[key] = (probs[:, CONTINUE] > probs[:, STOP]).tolist()  # host sync: once a block
        return got[i]

    def should_continue(self, step: DraftStep) -> bool:
        cs = step.child_scores
        check_batch(cs, "child_scores")
        if cs.shape[2] != self.tree_topk:
            raise ValueError(f"LtdPolicy was built for tree_topk = {self.tree_topk}, the drafter gives "
                             f"{cs.shape[2]} children per beam; use --tree-topk {self.tree_topk}")
        x = self._features(cs.reshape(1, -1), self.tree_topk * self.tree_topk, step.seq_len, step.draft_calls,
                           step.temperature, step.history, step.batch_size, step.lookup)
        return decide(self.depth_head(x), self.sample, self.generator) == CONTINUE

    def verify_budget(self, step: BudgetStep) -> int:
        check_batch(step.pool_scores, "pool_scores")
        x = self._features(step.pool_scores, self.pool_topk, step.seq_len, step.draft_calls, step.temperature,
                           step.history, step.batch_size, step.lookup)
        return self.budgets[decide(self.size_head(x), self.sample, self.generator)]

    # ------------------------------------------------------------------ I/O
    def nets(self) -> dict:
        return {"depth": self.depth_net, "size": self.size_net}

    def config_dict(self) -> dict:
        W = self.tree_topk
        return {"kind": self.kind, "format": FORMAT, "tree_topk": W, "max_draft_calls": self.max_draft_calls,
                "budgets": list(self.budgets), "pool_topk": self.pool_topk, "mlp_hidden": self.depth_net.mlp_hidden,
                "history": self.history, "skip": self.skip, "max_skip_run": self.max_skip_run, "lookup": self.lookup,
                "depth_features": depth_feature_names(W, self.budgets, self.history, self.lookup),
                "size_features": size_feature_names(self.pool_topk, self.budgets, self.history, self.lookup),
                "score_floor": SCORE_FLOOR, "depth_actions": ["stop", "continue"],
                "size_actions": [f"V={v}" for v in self.budgets], "costs": self.costs.to_dict(),
                **({"batch_costs": True} if self.batch_costs else {})}  # absent: the format 1/2 files as shipped

    @classmethod
    def from_config(cls, cfg: dict) -> "LtdPolicy":
        W = config_value(cfg, "tree_topk", "ltd")
        budgets = config_value(cfg, "budgets", "ltd")
        pool_topk = config_value(cfg, "pool_topk", "ltd")
        flags = format2_flags(cfg, "ltd")
        flags["lookup"] = lookup_flag(cfg, "ltd")
        check_features(cfg, "depth_features", depth_feature_names(W, budgets, flags["history"], flags["lookup"]), "ltd")
        check_features(cfg, "size_features", size_feature_names(pool_topk, budgets, flags["history"], flags["lookup"]),
                       "ltd")
        costs = costs_from_config(cfg)
        if costs is None:
            raise ValueError("ltd policy config is missing 'costs' (the calibration it was trained with)")
        return cls(tree_topk=W, max_draft_calls=config_value(cfg, "max_draft_calls", "ltd"), budgets=budgets,
                   costs=costs, pool_topk=pool_topk, mlp_hidden=config_value(cfg, "mlp_hidden", "ltd"),
                   batch_costs=cfg.get("batch_costs", False), **flags)

    def __repr__(self) -> str:
        return (f"LtdPolicy(tree_topk={self.tree_topk}, max_draft_calls={self.max_draft_calls}, "
                f"budgets={self.budgets}, history={self.history}, skip={self.skip}, "
                f"{'lookup=True, ' if self.lookup else ''}"
                f"{'sample' if self.sample else 'argmax'})")
