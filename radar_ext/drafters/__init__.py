"""Drafters propose draft trees: an EAGLE-3 head (EagleDrafter), prompt lookup (NgramDrafter), both in one
tree (HybridDrafter), or nothing (PlainDrafter: one token per forward, our own plain decoding)."""
from radar_ext.drafters.base import DraftRequest, Drafter
from radar_ext.drafters.eagle import EagleDrafter
from radar_ext.drafters.hybrid import HybridDrafter, LookupDrafter
from radar_ext.drafters.lookup_scores import LookupScores
from radar_ext.drafters.ngram import NgramDrafter
from radar_ext.drafters.plain import PlainDrafter

__all__ = ["DraftRequest", "Drafter", "EagleDrafter", "HybridDrafter", "LookupDrafter", "LookupScores", "NgramDrafter", "PlainDrafter"]
