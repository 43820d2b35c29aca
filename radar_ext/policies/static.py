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
