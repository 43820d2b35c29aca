"""The controller interface. Before a cycle's first draft call a policy may decline to draft
(`should_draft`: a plain step, a root-only tree verified with no draft call); after each draft call it
decides whether to make another one, and after drafting it may choose the verify budget V.
StaticPolicy (a fixed depth) is the baseline; the learned RADAR and LTD controllers and the
training-free ones (policies/adaptive.py) implement the same methods. Policies that adapt within a
sequence also get `start_sequence()` at the start of every generate call and `observe(CycleOutcome)`
after every cycle's acceptance (no-ops by default). `History` turns those outcomes into the sequence's
history features, which the decoder hands to every decision (docs/CONTROLLER_FORMAT.md).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch


@dataclass
class CostInfo:
    """Measured costs on this machine, running means in seconds (0.0 until measured)."""
    draft_call: float = 0.0   # one drafter forward
    verify: float = 0.0       # one target forward over a tree (at the recent mean V)
    policy: float = 0.0       # one policy decision
    mean_verify_budget: float = 0.0  # the V those verify times were measured at


HISTORY_FEATURES = ["accept_ema", "accept_last", "prev_best_prob", "prev_best_accepted", "history_empty"]
ACCEPT_SCALE = 8.0   # accepted lengths enter the features divided by this (about 0..1)


class History:
    """The sequence's recent history, from the outcomes of its cycles (CycleOutcome), the same for every
    policy and for episode collection (radar_ext/training/episodes.py), so training and inference see
    the same numbers. Only drafted cycles move it: a skipped cycle tells nothing about the drafter, so
    it only counts towards `skip_run` (consecutive skipped cycles, which bounds how long a learned
    policy may skip before it must probe the drafter again).
      ema            EMA (weight EMA_WEIGHT on the newest) of the drafted cycles' accepted lengths,
                     starting at the first one
      last           the last drafted cycle's accepted length
      best_prob      the last drafted cycle's best first-call guess probability (EAGLE: its best root
                     child's probability; lookup: the best root child's share of the occurrences)
      best_accepted  whether that guess was the first token the cycle emitted (0.0 / 1.0)
      drafted        drafted cycles so far in the sequence"""

    EMA_WEIGHT = 0.2

    def __init__(self):
        self.start()

    def start(self) -> None:
        self.ema, self.last, self.best_prob, self.best_accepted = 0.0, 0.0, 0.0, 0.0
        self.drafted, self.skip_run = 0, 0

    def observe(self, outcome: "CycleOutcome") -> None:
        if outcome.skipped:
            self.skip_run += 1
            return
        L = float(outcome.accepted_len)
        self.ema = L if self.drafted == 0 else (1.0 - self.EMA_WEIGHT) * self.ema + self.EMA_WEIGHT * L
        self.last = L
        self.best_prob = float(outcome.best_draft_prob)
        self.best_accepted = 1.0 if outcome.best_guess_accepted else 0.0
        self.drafted += 1
        self.skip_run = 0

    def features(self) -> list:
        """HISTORY_FEATURES' values (Python floats; float32 rounding happens where the row is built)."""
        return history_features(self.ema, self.last, self.best_prob, self.best_accepted, self.drafted)

    @staticmethod
    def features_of(history: "History | None") -> list:
        """The features of `history`, or of an empty one (a decision asked outside a decoder)."""
        return (history or _EMPTY).features()


def history_features(ema, last, best_prob, best_accepted, drafted):
    """HISTORY_FEATURES from the History state: numbers (inference) or tensors [...] (training, from the
    episodes' recorded state); the scalings are powers of two, so both give the same float32 bits."""
    if isinstance(ema, torch.Tensor):
        empty = (drafted == 0).float()
        return torch.stack([ema.float() / ACCEPT_SCALE, last.float() / ACCEPT_SCALE, best_prob.float(),
                            best_accepted.float(), empty], -1)
    return [ema / ACCEPT_SCALE, last / ACCEPT_SCALE, best_prob, best_accepted, 1.0 if drafted == 0 else 0.0]


_EMPTY = History()


LOOKUP_FEATURES = ["lookup_match_len", "lookup_count", "lookup_best_prob"]


@dataclass
class LookupInfo:
    """What the context lookup found for this cycle (HybridDrafter), known before the EAGLE side drafts; the
    episodes' lookup_match_len, lookup_count, lookup_best_score (0, 0, 0.0 without a lookup drafter)."""
    match_len: int = 0          # longest suffix match among the occurrences found (0: none)
    count: int = 0              # occurrences found (at most the lookup's max_matches)
    best_score: float = 0.0     # the best lookup node's calibrated score (a log acceptance probability)


def lookup_features(match_len, count, best_score):
    """LOOKUP_FEATURES: match length and count / ACCEPT_SCALE, and the best node's acceptance probability (0.0
    without an occurrence). Numbers (inference, Python floats) or tensors [...] (training, from the episodes);
    the scalings are powers of two and exp runs in float32 on both sides' float32 score, so both give the
    same bits."""
    if isinstance(match_len, torch.Tensor):
        p = torch.where(count > 0, torch.exp(best_score.float()), torch.zeros_like(best_score, dtype=torch.float32))
        return torch.stack([match_len.float() / ACCEPT_SCALE, count.float() / ACCEPT_SCALE, p], -1)
    p = float(torch.exp(torch.tensor(best_score, dtype=torch.float32))) if count > 0 else 0.0
    return [match_len / ACCEPT_SCALE, count / ACCEPT_SCALE, p]


def lookup_features_of(info: "LookupInfo | None") -> list:
    """The features of `info`, or of no lookup (an EAGLE-only drafter, a decision asked outside a decoder)."""
    info = info or _NO_LOOKUP
    return lookup_features(info.match_len, info.count, info.best_score)


_NO_LOOKUP = LookupInfo()


def guess_probability(score: float) -> float:
    """A guess's log-probability score -> its probability (0.0 for -inf: no guess)."""
    return math.exp(score) if score > -math.inf else 0.0


@dataclass
class PreDraftStep:
    """What the policy sees before a cycle's first draft call, to choose between drafting and a plain
    step (no draft call: the root alone is verified, one token for one target forward)."""
    seq_len: int                # tokens in the sequence so far (prompt + emitted, root included)
    costs: CostInfo             # measured costs
    history: History            # the sequence's history (History.features())
    temperature: float = 0.0    # the sampling temperature of the generation (0.0: greedy)
    batch_size: int = 1         # rows decoded together (the verify cost per row grows with it)
    lookup: "LookupInfo | None" = None  # the cycle's context lookup (Drafter.lookup_info), found before any draft call


@dataclass
class DraftStep:
    """What the policy sees after draft call number `draft_calls` of a cycle."""
    draft_calls: int            # calls made so far in this cycle (>= 1)
    beam_scores: torch.Tensor   # [B, W] float32 cumulative log-prob of the current beams, descending
    child_scores: torch.Tensor  # [B, N, W] float32 scores of this level's children (N = 1 on call 1)
    seq_len: int                # tokens in the sequence so far (prompt + emitted, root included)
    costs: CostInfo             # measured costs
    temperature: float = 0.0    # the sampling temperature of the generation (0.0: greedy)
    history: History | None = None  # the sequence's history (None: asked outside a decoder, read as empty)
    batch_size: int = 1         # rows decoded together (the verify cost per row grows with it)
    lookup: LookupInfo | None = None  # the cycle's context lookup (HybridDrafter; None: no lookup side)


@dataclass
class BudgetStep:
    """What the policy sees after drafting, to choose V."""
    pool_scores: torch.Tensor   # [B, C] float32 scores of every drafted node of the cycle
    draft_calls: int            # calls made in this cycle
    seq_len: int
    default_budget: int         # the decoder's verify_budget
    costs: CostInfo
    temperature: float = 0.0    # the sampling temperature of the generation (0.0: greedy)
    history: History | None = None  # the sequence's history (None: asked outside a decoder, read as empty)
    batch_size: int = 1         # rows decoded together
    lookup: LookupInfo | None = None  # the cycle's context lookup (HybridDrafter; None: no lookup side)


@dataclass
class CycleOutcome:
    """What a cycle earned, reported to the policy after acceptance (row 0; B = 1 for now)."""
    accepted_len: int           # draft tokens accepted (emitted = accepted_len + 1)
    draft_calls: int            # draft calls made in the cycle
    verify_budget: int          # draft tokens verified (root excluded)
    skipped: bool = False       # no draft call this cycle (the policy's plain step; or a drafter proposing nothing)
    best_draft_prob: float = 0.0      # probability of the drafter's best first-call guess (0.0: none)
    best_guess_accepted: bool = False  # that guess was the first token the cycle emitted


class Policy:
    """Base controller. `max_draft_calls` is a hard cap the decoder also uses to size its buffers."""

    max_draft_calls: int = 1
    # should_draft reads PreDraftStep.lookup: the decoder asks the drafter's lookup before the decision only then
    pre_draft_lookup: bool = False

    def fork(self) -> "Policy":
        """A policy for one more sequence of a batch (batch > 1: one controller per row, each with its own
        recurrent and history state): the same weights and settings. Every policy here replaces its state
        attributes rather than changing them in place, so a shallow copy is independent."""
        return copy.copy(self)

    def start_sequence(self) -> None:
        """Called once at the start of every generate call (per-sequence history goes back to zero)."""

    def reset(self) -> None:
        """Called at the start of every cycle (recurrent state goes back to zero)."""

    def observe(self, outcome: CycleOutcome) -> None:
        """Called after every cycle's acceptance with what it earned."""

    def should_draft(self, step: PreDraftStep) -> bool:
        """Before a cycle's first draft call: False for a plain step (no draft call, the root alone is
        verified). Default: always draft."""
        return True

    def plans_plain_steps(self, first_seq_len: int, last_seq_len: int, temperature: float, batch_size: int = 1) -> bool:
        """True when should_draft is known, before decoding, to answer False at every sequence length in
        [first_seq_len, last_seq_len]: its inputs there do not depend on what decoding does (no history, no
        lookup, greedy decisions). The decoder then decodes those cycles as plain decoding does, without the
        drafter's feature capture (RadarDecoder._generate_one). Default: False (asked cycle by cycle)."""
        return False

    def should_continue(self, step: DraftStep) -> bool:
        """After a draft call: True to make another call (never asked beyond max_draft_calls)."""
        raise NotImplementedError

    def verify_budget(self, step: BudgetStep) -> int:
        """After drafting: the number of draft tokens to verify. Default: the decoder's V."""
        return step.default_budget
