"""The drafter interface: propose a DraftTree rooted at the last emitted token, then learn what the
target accepted. EagleDrafter and NgramDrafter implement it; the decoder loop never looks inside."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from radar_ext.policies.base import CostInfo, History, LookupInfo, Policy
from radar_ext.tree import DraftTree


@dataclass
class DraftRequest:
    root: torch.Tensor    # [B] int64 last emitted token, not yet seen by the target
    seq_len: int          # tokens so far (prompt + emitted, root included)
    tree_topk: int        # W
    verify_budget: int    # V (the policy may lower or raise it)
    policy: Policy
    costs: CostInfo
    temperature: float = 0.0  # the generation's sampling temperature (0.0: greedy), passed to the policy
    history: History | None = None  # the sequence's history, passed to the policy's decisions
    batch_size: int = 1   # rows decoded together (passed to the policy's decisions)
    lookup: LookupInfo | None = None  # the cycle's context lookup (set by HybridDrafter), passed to the decisions


class Drafter:
    """Base drafter. `feature_layers`: indices into the target's `output_hidden_states` tuple the
    drafter needs at the accepted positions (None: it needs no target features)."""

    feature_layers: list | None = None

    def check_target(self, target) -> None:
        """Raise if this drafter cannot serve `target` (e.g. a vocabulary mismatch)."""

    def fork(self) -> "Drafter":
        """A drafter for one more sequence of a batch (batch > 1: one drafter per row): the same weights
        and settings, sharing nothing that start() / draft() / commit() change in place."""
        return copy.copy(self)

    def start(self, input_ids: torch.Tensor, features: torch.Tensor | None, root: torch.Tensor) -> None:
        """A new sequence: prompt input_ids [B, P], target features at the prompt [B, P, F] or None,
        root [B] the first emitted token."""
        raise NotImplementedError

    def draft(self, req: DraftRequest) -> DraftTree:
        raise NotImplementedError

    def lookup_step(self, req: DraftRequest, step_costs) -> DraftTree | None:
        """A tree this drafter proposes without a draft call, asked before the policy's pre-draft decision (a
        HybridDrafter's lookup step: its lookup's best nodes where they pay under step_costs, the calibrated seconds
        of a plain step and of verifying V draft tokens, radar_ext.drafters.hybrid.lookup_step_costs), or None:
        the policy decides the cycle. Default: None."""
        return None

    def lookup_info(self) -> LookupInfo | None:
        """What this drafter's context lookup finds for the coming cycle, before any draft call (the pre-draft
        decision reads it), or None for a drafter without one. A HybridDrafter keeps what it found for the
        cycle's draft()."""
        return None

    def commit(self, emitted: torch.Tensor, n_emitted: int, features: torch.Tensor | None) -> None:
        """After acceptance. emitted [B, D+1] accepted draft tokens then the bonus (-1 padded),
        n_emitted = accepted_len + 1; features [B, n_emitted, F] target features at the root and
        the accepted nodes (None unless feature_layers is set). Also called after a skipped cycle
        (no draft() call before it: emitted holds the bonus token only); a drafter keeps what every
        commit since its last draft() brought, so drafting can resume at any cycle."""
        raise NotImplementedError
