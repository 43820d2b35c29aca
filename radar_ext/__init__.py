"""radar_ext: learned dynamic draft trees (RADAR, LTD) for lossless speculative decoding of
Hugging Face causal LMs. Public names are imported lazily so `import radar_ext` stays cheap."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "RadarDecoder": "radar_ext.decoder",
    "EagleDrafter": "radar_ext.drafters",
    "NgramDrafter": "radar_ext.drafters",
    "HybridDrafter": "radar_ext.drafters",
    "LookupDrafter": "radar_ext.drafters",
    "LookupScores": "radar_ext.drafters",
    "PlainDrafter": "radar_ext.drafters",
    "StaticPolicy": "radar_ext.policies",
    "LookupStepPolicy": "radar_ext.policies",
    "RadarPolicy": "radar_ext.policies",
    "LtdPolicy": "radar_ext.policies",
    "PminPolicy": "radar_ext.policies",
    "EmaPolicy": "radar_ext.policies",
    "GoodputPolicy": "radar_ext.policies",
    "EagleHead": "radar_ext.eagle_head",
    "EagleConfig": "radar_ext.eagle_head",
    "load_default": "radar_ext.models",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'radar_ext' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)
