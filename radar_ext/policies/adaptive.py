"""Training-free adaptive controllers, as production engines ship them (METHOD.md 9). A learned
controller claims a gain only over the best of these (and the grid-searched static tree).

PminPolicy     llama.cpp's rule: stop drafting once the best beam's last-step probability falls below p_min.
EmaPolicy      SGLang-style adaptive steps: the depth follows an exponential moving average (weight 0.2)
               of the sequence's recent accepted lengths plus a margin, changed only when the target
               moves more than a hysteresis band away.
GoodputPolicy  vLLM-style adaptive verification: every pool node gets an estimated path acceptance
               probability (the head's own cumulative score through a calibration fitted on recorded
               episodes, fit_acceptance); nodes are admitted best first and V is the count that maximises
               expected (accepted + 1) / T_cycle under the calibrated cost curve; drafting goes on while
               the last call raised that best expected rate.

Their knobs are tuned on ShareGPT prompts by `radar tune-static --policy NAME` (never on the benchmark);
the tuned settings are JSON files (`read_setting` / `from_setting`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from radar_ext.policies.base import BudgetStep, CycleOutcome, DraftStep, Policy
from radar_ext.policies.costs import PolicyCosts

SETTING_SCHEMA = "radar_ext.adaptive_policy/1"


def _check_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


def _check_number(name: str, v, lo: float, hi: float | None = None, lo_open: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > lo if lo_open else v >= lo)
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        rng = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise ValueError(f"{name} must be a finite number {rng}, got {v!r}")
    return float(v)


def _row0(t: torch.Tensor, name: str) -> list:
    if t.shape[0] != 1:
        raise NotImplementedError(f"adaptive policies decide for batch size 1 for now, got {name} with batch {t.shape[0]}")
    return t[0].reshape(-1).tolist()  # host sync: one small copy per decision


class PminPolicy(Policy):
    """Stop once the best beam's last-step probability is below p_min (llama.cpp's `--draft-p-min`),
    or at max_draft_calls. The verify budget is the decoder's."""

    knob = "p_min"

    def __init__(self, p_min: float = 0.5, max_draft_calls: int = 8):
        self.p_min = _check_number("p_min", p_min, 0.0, 1.0)
        self.max_draft_calls = _check_int("max_draft_calls", max_draft_calls)
        self._prev_beams = None

    def reset(self) -> None:
        self._prev_beams = None

    def last_step_prob(self, step: DraftStep) -> float:
        """exp(best beam's score - its parent's score): call 1's best root child's probability, later the
        probability of the best child of this level given its parent beam."""
        children = _row0(step.child_scores, "child_scores")          # N parents x W children, row-major
        W = step.child_scores.shape[2]
        k = max(range(len(children)), key=children.__getitem__)      # the first of equal maxima
        parent = 0.0 if self._prev_beams is None else self._prev_beams[k // W]
        return math.exp(children[k] - parent) if children[k] > -math.inf else 0.0

    def should_continue(self, step: DraftStep) -> bool:
        p = self.last_step_prob(step)
        self._prev_beams = _row0(step.beam_scores, "beam_scores")
        return step.draft_calls < self.max_draft_calls and p >= self.p_min

    def __repr__(self) -> str:
        return f"PminPolicy(p_min={self.p_min:g}, max_draft_calls={self.max_draft_calls})"


class EmaPolicy(Policy):
    """Depth (draft calls) from an EMA of the sequence's accepted lengths: target = ema + margin, clamped to
    [1, max_draft_calls]; the depth moves to round(target) only when |target - depth| > hysteresis, so one
    lucky or unlucky cycle does not flip it. Each generate call starts at `start_draft_calls`. The verify
    budget is the decoder's."""

    knob = "margin"

    def __init__(self, margin: float = 1.0, weight: float = 0.2, hysteresis: float = 0.5, max_draft_calls: int = 8,
                 start_draft_calls: int = 2):
        self.margin = _check_number("margin", margin, 0.0)
        self.weight = _check_number("weight", weight, 0.0, 1.0, lo_open=True)
        self.hysteresis = _check_number("hysteresis", hysteresis, 0.0)
        self.max_draft_calls = _check_int("max_draft_calls", max_draft_calls)
        self.start_draft_calls = _check_int("start_draft_calls", start_draft_calls)
        if start_draft_calls > max_draft_calls:
            raise ValueError(f"start_draft_calls must be <= max_draft_calls = {max_draft_calls}, got {start_draft_calls}")
        self.start_sequence()

    def start_sequence(self) -> None:
        self.ema = None
        self.depth = self.start_draft_calls

    def observe(self, outcome: CycleOutcome) -> None:
        L = float(outcome.accepted_len)
        self.ema = L if self.ema is None else (1.0 - self.weight) * self.ema + self.weight * L
        target = min(max(self.ema + self.margin, 1.0), float(self.max_draft_calls))
        if abs(target - self.depth) > self.hysteresis:
            self.depth = int(min(max(round(target), 1), self.max_draft_calls))

    def should_continue(self, step: DraftStep) -> bool:
        return step.draft_calls < self.depth

    def __repr__(self) -> str:
        return (f"EmaPolicy(margin={self.margin:g}, weight={self.weight:g}, hysteresis={self.hysteresis:g}, "
                f"max_draft_calls={self.max_draft_calls})")


# ------------------------------------------------------------------------------------------------ goodput
class AcceptanceMap:
    """P(the acceptance walk reaches a node) ~ sigmoid(a * score + b), score = the node's cumulative draft
    log-probability; one (a, b) per sampling temperature it was fitted at (the nearest is used)."""

    def __init__(self, params: dict):
        if not isinstance(params, dict) or not params:
            raise ValueError(f"acceptance map must be a non-empty {{temperature: {{'a', 'b'}}}} dict, got {params!r}")
        self.params = {}
        for t, ab in params.items():
            if not (isinstance(ab, dict) and all(isinstance(ab.get(k), (int, float)) and math.isfinite(ab[k])
                                                 for k in ("a", "b"))):
                raise ValueError(f"acceptance map at temperature {t}: needs finite numbers 'a' and 'b', got {ab!r}")
            self.params[float(t)] = (float(ab["a"]), float(ab["b"]))

    def at(self, temperature: float) -> tuple:
        t = min(self.params, key=lambda k: (abs(k - float(temperature)), k))
        return self.params[t]

    def to_dict(self) -> dict:
        return {f"{t:g}": {"a": a, "b": b} for t, (a, b) in sorted(self.params.items())}


def fit_acceptance(episodes, steps: int = 300) -> dict:
    """(a, b) of sigmoid(a * score + b) by least squares on recorded episodes: for every cycle, stopping point
    n and budget V, the predicted expected accepted length (the summed reach probability of the best V pool
    nodes, which is exact: E[L] = sum over tree nodes of P(reach)) against the recorded one. Returns
    {"a", "b", "rmse", "cycles"}."""
    from radar_ext.training.train_policy import expected_tokens

    E = expected_tokens(episodes) - 1.0                                   # [C, N, nV] recorded E[L]
    top = episodes["pool_top"].double()                                  # [C, N, K] descending, -inf padded
    budgets = [int(v) for v in episodes.meta["budgets"]]
    K = top.shape[2]
    if E.shape[0] == 0:
        raise ValueError("fit_acceptance: the episodes hold no cycle")
    if max(budgets) > K:
        raise ValueError(f"fit_acceptance: budgets up to {max(budgets)} need pool_topk >= that, the episodes have {K}")
    valid = torch.isfinite(top)
    s = torch.where(valid, top, torch.zeros_like(top))
    sel = torch.zeros(len(budgets), K, dtype=torch.float64)               # [nV, K] 1 for the best V slots
    for i, v in enumerate(budgets):
        sel[i, :v] = 1.0
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn():
        opt.zero_grad()
        p = torch.sigmoid(ab[0] * s + ab[1]) * valid                     # [C, N, K]
        pred = p @ sel.T                                                  # [C, N, nV]
        loss = ((pred - E) ** 2).mean()
        loss.backward()
        return loss

    opt.step(loss_fn)
    with torch.no_grad():
        p = torch.sigmoid(ab[0] * s + ab[1]) * valid
        rmse = float(((p @ sel.T - E) ** 2).mean().sqrt())
    a, b = ab.detach().tolist()
    return {"a": a, "b": b, "rmse": rmse, "cycles": int(E.shape[0])}


class GoodputPolicy(Policy):
    """Expected-goodput control (module docstring). costs: a calibration (PolicyCosts.load source);
    acceptance: an AcceptanceMap or its dict. G_n(V) = (1 + sum of the best V reach estimates) /
    (n * t_draft + T_verify(V) + n * t_policy); V = argmax_V G_n(V) (ties: the smaller V) up to
    max_verify_budget; after call n drafting continues while max_V G_n > max_V G_{n-1} (G_0 = one plain
    forward, 1 / t_ar)."""

    knob = "tree_topk"

    def __init__(self, costs, acceptance, max_draft_calls: int = 8, max_verify_budget: int = 64):
        self.costs = PolicyCosts.load(costs)
        self.acceptance = acceptance if isinstance(acceptance, AcceptanceMap) else AcceptanceMap(acceptance)
        self.max_draft_calls = _check_int("max_draft_calls", max_draft_calls)
        self.max_verify_budget = _check_int("max_verify_budget", max_verify_budget)
        c = self.costs
        self._t_verify = torch.tensor([c.t_verify(v) for v in range(1, self.max_verify_budget + 1)], dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        self._top = torch.empty(0, dtype=torch.float64)   # best pool scores so far, descending
        self._best = 1.0 / self.costs.t_ar                # G_0: a plain forward

    def goodput(self, scores: torch.Tensor, draft_calls: int, temperature: float) -> torch.Tensor:
        """scores [K] descending pool scores (K <= max_verify_budget) -> G(V) for V = 1..K, float64 [K]."""
        a, b = self.acceptance.at(temperature)
        reach = torch.sigmoid(a * scores.double() + b)
        c = self.costs
        fixed = draft_calls * (c.t_draft + c.t_policy)
        return (1.0 + reach.cumsum(0)) / (fixed + self._t_verify[:scores.shape[0]])

    def should_continue(self, step: DraftStep) -> bool:
        if step.child_scores.shape[0] != 1:
            raise NotImplementedError(f"GoodputPolicy decides for batch size 1 for now, got batch {step.child_scores.shape[0]}")
        new = step.child_scores[0].reshape(-1).double()
        new = new[torch.isfinite(new)]
        self._top = torch.cat([self._top, new]).sort(descending=True).values[:self.max_verify_budget]
        if self._top.numel() == 0:
            return False
        best = float(self.goodput(self._top, step.draft_calls, step.temperature).max())  # host sync: one float
        grew, self._best = best > self._best, best
        return grew and step.draft_calls < self.max_draft_calls

    def verify_budget(self, step: BudgetStep) -> int:
        s = _row0(step.pool_scores, "pool_scores")
        top = torch.tensor(sorted((v for v in s if v > -math.inf), reverse=True)[:self.max_verify_budget],
                           dtype=torch.float64)
        if top.numel() == 0:
            return 1
        g = self.goodput(top, step.draft_calls, step.temperature).tolist()
        return max(range(len(g)), key=g.__getitem__) + 1   # the first (smallest V) of equal maxima

    def __repr__(self) -> str:
        return (f"GoodputPolicy(max_draft_calls={self.max_draft_calls}, max_verify_budget={self.max_verify_budget}, "
                f"acceptance={self.acceptance.to_dict()})")


# ------------------------------------------------------------------------------------------------ settings
ADAPTIVE = {"pmin": PminPolicy, "ema": EmaPolicy, "goodput": GoodputPolicy}


def read_setting(path, kind: str) -> dict:
    """A tuned setting (`radar tune-static --policy KIND`): {"schema", "policy": KIND, "policy_kwargs": {...},
    "tree_topk", "verify_budget", ...}; errors name the file and what is wrong."""
    if kind not in ADAPTIVE:
        raise ValueError(f"kind must be one of {sorted(ADAPTIVE)}, got {kind!r}")
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no tuned {kind} setting at {path} (run `radar tune-static --policy {kind}`)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("policy") != kind or not isinstance(obj.get("policy_kwargs"), dict):
        raise ValueError(f"{path} is not a tuned {kind} setting (needs \"policy\": {kind!r} and a \"policy_kwargs\" object)")
    for k in ("tree_topk", "verify_budget"):
        _check_int(f"{path}: {k}", obj.get(k))
    return obj


def from_setting(setting: dict, costs=None):
    """(policy, tree_topk, verify_budget) from a read_setting dict; `costs` (a calibration) replaces the one
    stored in a goodput setting, as `--policy-costs` does for the learned policies."""
    kind = setting["policy"]
    kwargs = dict(setting["policy_kwargs"])
    if kind == "goodput" and costs is not None:
        kwargs["costs"] = costs
    return ADAPTIVE[kind](**kwargs), int(setting["tree_topk"]), int(setting["verify_budget"])
