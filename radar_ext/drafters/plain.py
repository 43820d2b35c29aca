"""PlainDrafter: proposes nothing. Every cycle is a root-only tree, so RadarDecoder decodes one token per
target forward through its own verify path (lean forward, exact quantized linears): our own plain
decoding (`RadarDecoder(target, drafter=None)`, bench method `ar-fast`), token-identical to HF greedy
`generate`. It is the baseline that separates the forward's gain from the speculation's."""
from __future__ import annotations

from radar_ext.drafters.base import DraftRequest, Drafter
from radar_ext.tree import DraftTree, root_only_tree


class PlainDrafter(Drafter):
    feature_layers = None  # no target features: the verify forward skips the hidden-state capture

    def start(self, input_ids, features, root) -> None:
        pass

    def draft(self, req: DraftRequest) -> DraftTree:
        return root_only_tree(req.root)

    def commit(self, emitted, n_emitted, features) -> None:
        pass

    def __repr__(self) -> str:
        return "PlainDrafter()"
