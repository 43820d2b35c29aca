"""RadarPolicy: a learned stop rule for draft calls (METHOD.md 5).

State after draft call t: the W cumulative beam scores, sorted descending (raw log-probs, clamped at
SCORE_FLOOR so dead beams stay finite), and the generation's sampling temperature (0 for greedy;
learned.temperature_feature). An LSTM cell (hidden 128), reset at every cycle, runs over the states
of the cycle; an MLP on [h, state] (128 + W + 1 -> 128 -> ReLU -> 2) gives (P(stop), P(continue)).
One fused ops.policy_step per draft call. Deterministic argmax by default; `sample=True` draws.

Format 2 options (docs/CONTROLLER_FORMAT.md): history=True appends log seq_len and the sequence's
history features (base.HISTORY_FEATURES) to every state. skip=True adds a decision before the first
draft call: one LSTM step from the zero state on a state whose beam scores are all
learned.PRE_DRAFT_SCORE (nothing drafted yet: the root's empty path); "stop" there is a plain step (no draft call). The cycle's draft calls then start from
the zero state again (reset()), in training as at inference.
"""
from __future__ import annotations

import torch

from radar_ext.policies.base import HISTORY_FEATURES, CostInfo, DraftStep, History, PreDraftStep
from radar_ext.policies.costs import PolicyCosts
from radar_ext.policies.learned import (FORMAT, MAX_SKIP_RUN, PRE_DRAFT_SCORE, SCORE_FLOOR, ControllerNet,
                                        FusedHead, LearnedPolicy, check_batch, check_features, check_flags,
                                        config_value, costs_from_config, decide, format2_flags, must_draft,
                                        seq_len_feature, temperature_feature)

STOP, CONTINUE = 0, 1


def radar_features(beam_scores: torch.Tensor, temperature, extra: torch.Tensor | None = None) -> torch.Tensor:
    """beam_scores [..., W] (descending), temperature (a number or a tensor [...]) -> features [..., W + 1]
    float32: the clamped scores, then the temperature feature; with extra [..., 6] (log seq_len, then
    base.history_features) those after them (the history layout)."""
    s = beam_scores.float().clamp(min=SCORE_FLOOR)
    t = temperature_feature(temperature)
    t = t.expand(s.shape[:-1]) if isinstance(t, torch.Tensor) else s.new_full(s.shape[:-1], t)
    return torch.cat([s, t.unsqueeze(-1)] + ([] if extra is None else [extra.float()]), -1)


def radar_feature_names(W: int, history: bool = False) -> list:
    return ([f"beam_score_{i}" for i in range(W)] + ["temperature"]
            + (["log_seq_len"] + HISTORY_FEATURES if history else []))


class RadarPolicy(LearnedPolicy):
    kind = "radar"

    def __init__(self, tree_topk: int = 10, max_draft_calls: int = 12, lstm_hidden: int = 128,
                 mlp_hidden: int = 128, sample: bool = False, seed: int = 0, costs=None,
                 verify_budget: int | None = None, generator: torch.Generator | None = None, history: bool = False,
                 skip: bool = False, max_skip_run: int = MAX_SKIP_RUN):
        """history: every state also holds log seq_len and the sequence's history features; skip: a stop
        decision before the first draft call (a plain step), with history at most max_skip_run times in a row."""
        for name, v in (("tree_topk", tree_topk), ("max_draft_calls", max_draft_calls),
                        ("lstm_hidden", lstm_hidden), ("mlp_hidden", mlp_hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"RadarPolicy: {name} must be an int >= 1, got {v!r}")
        if verify_budget is not None and (not isinstance(verify_budget, int) or verify_budget < 1):
            raise ValueError(f"RadarPolicy: verify_budget must be None or an int >= 1, got {verify_budget!r}")
        check_flags("RadarPolicy", history, skip, max_skip_run)
        self.tree_topk, self.max_draft_calls = tree_topk, max_draft_calls
        self.history, self.skip, self.max_skip_run = history, skip, max_skip_run
        self.sample = bool(sample)
        self.costs = None if costs is None else PolicyCosts.load(costs)
        self.trained_verify_budget = verify_budget  # the V the policy was trained for (a hint for callers)
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            self.net = ControllerNet(len(radar_feature_names(tree_topk, history)), 2, lstm_hidden, mlp_hidden)
        self.generator = generator or torch.Generator().manual_seed(seed)
        self.refresh()

    # ------------------------------------------------------------------ the Policy interface
    def refresh(self) -> None:
        self.head = FusedHead(self.net)
        self._pre_draft = {}  # temperature -> the pre-draft decision of a policy without history (greedy)

    def reset(self) -> None:
        self.head.reset(1)

    def should_continue(self, step: DraftStep) -> bool:
        check_batch(step.beam_scores, "beam_scores")
        if step.beam_scores.shape[1] != self.tree_topk:
            raise ValueError(f"RadarPolicy was built for tree_topk = {self.tree_topk}, the drafter gives "
                             f"{step.beam_scores.shape[1]} beam scores; use --tree-topk {self.tree_topk}")
        # radar_features' values, built from one host copy (bit for bit: clamping a float32 in float64)
        row = [max(v, SCORE_FLOOR) for v in step.beam_scores.tolist()[0]]
        probs = self.head(self._row(row, step.temperature, step.seq_len, step.history))
        return decide(probs, self.sample, self.generator) == CONTINUE

    def should_draft(self, step: PreDraftStep) -> bool:
        """skip=True: one step from the zero state, every beam score PRE_DRAFT_SCORE; its stop is a plain step."""
        if not self.skip or must_draft(step, self.max_skip_run, self.history):
            return True
        self.head.reset(1)
        # without history its only input is the temperature: a greedy decision is kept per temperature
        memo = not self.history and not self.sample
        if memo and step.temperature in self._pre_draft:
            return self._pre_draft[step.temperature]
        probs = self.head(self._row([PRE_DRAFT_SCORE] * self.tree_topk, step.temperature, step.seq_len, step.history))
        d = decide(probs, self.sample, self.generator) == CONTINUE
        if memo:
            self._pre_draft[step.temperature] = d
        return d

    def plans_plain_steps(self, first_seq_len: int, last_seq_len: int, temperature: float, batch_size: int = 1) -> bool:
        if not self.skip or self.history or self.sample:
            return False
        return not self.should_draft(PreDraftStep(first_seq_len, CostInfo(), None, temperature, batch_size))

    def _row(self, scores: list, temperature, seq_len, history: History | None) -> torch.Tensor:
        row = scores + [temperature_feature(temperature)]
        if self.history:
            row += [seq_len_feature(seq_len)] + History.features_of(history)
        return torch.tensor([row], dtype=torch.float32)

    # ------------------------------------------------------------------ I/O
    def nets(self) -> dict:
        return {"net": self.net}

    def config_dict(self) -> dict:
        return {"kind": self.kind, "format": FORMAT, "tree_topk": self.tree_topk,
                "max_draft_calls": self.max_draft_calls, "lstm_hidden": self.net.lstm_hidden,
                "mlp_hidden": self.net.mlp_hidden, "features": radar_feature_names(self.tree_topk, self.history),
                "history": self.history, "skip": self.skip, "max_skip_run": self.max_skip_run,
                "score_floor": SCORE_FLOOR, "actions": ["stop", "continue"],
                "verify_budget": self.trained_verify_budget,
                "costs": None if self.costs is None else self.costs.to_dict()}

    @classmethod
    def from_config(cls, cfg: dict) -> "RadarPolicy":
        W = config_value(cfg, "tree_topk", "radar")
        flags = format2_flags(cfg, "radar")
        check_features(cfg, "features", radar_feature_names(W, flags["history"]), "radar")
        if cfg.get("actions") != ["stop", "continue"]:
            raise ValueError(f"radar policy config: actions must be ['stop', 'continue'], got {cfg.get('actions')}")
        return cls(tree_topk=W, max_draft_calls=config_value(cfg, "max_draft_calls", "radar"),
                   lstm_hidden=config_value(cfg, "lstm_hidden", "radar"),
                   mlp_hidden=config_value(cfg, "mlp_hidden", "radar"),
                   costs=costs_from_config(cfg), verify_budget=cfg.get("verify_budget"), **flags)

    def __repr__(self) -> str:
        return (f"RadarPolicy(tree_topk={self.tree_topk}, max_draft_calls={self.max_draft_calls}, "
                f"history={self.history}, skip={self.skip}, {'sample' if self.sample else 'argmax'})")
