"""Drafters propose draft trees: an EAGLE-3 head (EagleDrafter) or prompt lookup (NgramDrafter)."""
from radar_ext.drafters.base import DraftRequest, Drafter
from radar_ext.drafters.eagle import EagleDrafter
from radar_ext.drafters.ngram import NgramDrafter

__all__ = ["DraftRequest", "Drafter", "EagleDrafter", "NgramDrafter"]
