"""The controller interface. A policy decides, after each draft call, whether to make another one,
and after drafting it may choose the verify budget V. StaticPolicy (a fixed depth) is the baseline;
the learned RADAR and LTD controllers and the training-free ones (policies/adaptive.py) implement the
same two methods. Policies that adapt within a sequence also get `start_sequence()` at the start of
every generate call and `observe(CycleOutcome)` after every cycle's acceptance (no-ops by default).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CostInfo:
    """Measured costs on this machine, running means in seconds (0.0 until measured)."""
    draft_call: float = 0.0   # one drafter forward
    verify: float = 0.0       # one target forward over a tree (at the recent mean V)
    policy: float = 0.0       # one policy decision
    mean_verify_budget: float = 0.0  # the V those verify times were measured at


@dataclass
class DraftStep:
    """What the policy sees after draft call number `draft_calls` of a cycle."""
    draft_calls: int            # calls made so far in this cycle (>= 1)
    beam_scores: torch.Tensor   # [B, W] float32 cumulative log-prob of the current beams, descending
    child_scores: torch.Tensor  # [B, N, W] float32 scores of this level's children (N = 1 on call 1)
    seq_len: int                # tokens in the sequence so far (prompt + emitted, root included)
    costs: CostInfo             # measured costs
    temperature: float = 0.0    # the sampling temperature of the generation (0.0: greedy)


@dataclass
class BudgetStep:
    """What the policy sees after drafting, to choose V."""
    pool_scores: torch.Tensor   # [B, C] float32 scores of every drafted node of the cycle
    draft_calls: int            # calls made in this cycle
    seq_len: int
    default_budget: int         # the decoder's verify_budget
    costs: CostInfo
    temperature: float = 0.0    # the sampling temperature of the generation (0.0: greedy)


@dataclass
class CycleOutcome:
    """What a cycle earned, reported to the policy after acceptance (row 0; B = 1 for now)."""
    accepted_len: int           # draft tokens accepted (emitted = accepted_len + 1)
    draft_calls: int            # draft calls made in the cycle
    verify_budget: int          # draft tokens verified (root excluded)


class Policy:
    """Base controller. `max_draft_calls` is a hard cap the decoder also uses to size its buffers."""

    max_draft_calls: int = 1

    def start_sequence(self) -> None:
        """Called once at the start of every generate call (per-sequence history goes back to zero)."""

    def reset(self) -> None:
        """Called at the start of every cycle (recurrent state goes back to zero)."""

    def observe(self, outcome: CycleOutcome) -> None:
        """Called after every cycle's acceptance with what it earned."""

    def should_continue(self, step: DraftStep) -> bool:
        """After a draft call: True to make another call (never asked beyond max_draft_calls)."""
        raise NotImplementedError

    def verify_budget(self, step: BudgetStep) -> int:
        """After drafting: the number of draft tokens to verify. Default: the decoder's V."""
        return step.default_budget
