"""StaticPolicy: a fixed number of draft calls per cycle and the decoder's fixed verify budget
(the EAGLE-3 static-depth tree; `max_draft_calls = 8` is EAGLE-3's "depth 7")."""
from __future__ import annotations

from radar_ext.policies.base import DraftStep, Policy


class StaticPolicy(Policy):
    def __init__(self, max_draft_calls: int = 8):
        if isinstance(max_draft_calls, bool) or not isinstance(max_draft_calls, int) or max_draft_calls < 1:
            raise ValueError(f"max_draft_calls must be an int >= 1, got {max_draft_calls!r}")
        self.max_draft_calls = max_draft_calls

    def should_continue(self, step: DraftStep) -> bool:
        return step.draft_calls < self.max_draft_calls

    def __repr__(self) -> str:
        return f"StaticPolicy(max_draft_calls={self.max_draft_calls})"


class LookupStepPolicy(Policy):
    """Never drafts: every cycle is the drafter's lookup step where its lookup nodes pay (RadarDecoder's lookup steps,
    at temperature 0, read this policy's calibrated costs) or else a plain step. With a LookupDrafter it is the
    cost-aware lookup-only controller (`radar bench` method `lookup`). costs: a calibration JSON path, dict or
    PolicyCosts (a learned policy's `costs`, so both price the same verify curve)."""

    max_draft_calls = 1

    def __init__(self, costs):
        from radar_ext.policies.costs import PolicyCosts
        if costs is None:
            raise ValueError("LookupStepPolicy: costs are required (a calibration JSON path, dict or PolicyCosts)")
        self.costs = costs if isinstance(costs, PolicyCosts) else PolicyCosts.load(costs)

    def should_draft(self, step) -> bool:
        return False

    def plans_plain_steps(self, first_seq_len: int, last_seq_len: int, temperature: float, batch_size: int = 1) -> bool:
        """Sampling or a batch: the decoder takes no lookup steps there, so every cycle is a plain step, known up
        front (it then decodes as `ar-fast` does). Greedy at batch size 1: asked cycle by cycle."""
        return temperature > 0 or batch_size > 1

    def should_continue(self, step: DraftStep) -> bool:
        return False

    def __repr__(self) -> str:
        return "LookupStepPolicy()"
