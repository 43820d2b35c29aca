"""`RadarDecoder.generate`'s arguments, read the way Hugging Face `generate` reads them.

A user swaps `model.generate(...)` for `RadarDecoder(...).generate(...)` with the same arguments, so
every argument HF's `generate` takes is either honoured, accepted because it cannot change a
batch-1 decoding's output (`pad_token_id`, `use_cache`, ...), or refused by name when it is set to
a value that would change the output (`num_beams=4`, `repetition_penalty=1.3`, ...). Nothing is
silently dropped: an argument HF does not know either is an error naming it, as in HF.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

from radar_ext.acceptance import SamplingParams

DEFAULT_MAX_NEW_TOKENS = 128  # when neither max_new_tokens nor a max_length is set anywhere

# Arguments that change what HF's generate returns, with the one value RadarDecoder reproduces.
# Checked both as keyword arguments and on the generation_config in use.
UNSUPPORTED = {
    "num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 1, "penalty_alpha": None,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None,
    "min_length": 0, "min_new_tokens": None, "max_time": None, "stop_strings": None,
    "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None,
    "sequence_bias": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
    "renormalize_logits": False, "guidance_scale": None, "watermarking_config": None,
    "token_healing": False, "dola_layers": None, "prompt_lookup_num_tokens": None,
    "assistant_early_exit": None, "return_dict_in_generate": False, "output_scores": False,
    "output_logits": False, "output_attentions": False, "output_hidden_states": False,
}
# Keyword-only objects of HF's generate that RadarDecoder does not run (None: not given).
UNSUPPORTED_OBJECTS = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "assistant_model",
                       "negative_prompt_ids", "negative_prompt_attention_mask", "custom_generate",
                       "assistant_tokenizer", "tokenizer")
# Accepted and ignored: they cannot change the output of one unpadded sequence.
NO_EFFECT = ("pad_token_id", "bos_token_id", "use_cache", "synced_gpus", "length_penalty", "early_stopping",
             "diversity_penalty", "cache_implementation", "low_memory")


@dataclass
class GenerationSettings:
    max_new_tokens: int
    do_sample: bool
    sampling: SamplingParams
    eos_token_ids: tuple            # empty: no EOS stop


def resolve(prompt_len: int, generation_config, target_config, *, max_new_tokens=None, max_length=None,
            do_sample=None, temperature=None, top_p=None, top_k=None, eos_token_id=None,
            extra: dict | None = None) -> GenerationSettings:
    """Settings of one generate call. Explicit arguments win over `generation_config` (else the
    target's), as in HF; then max_new_tokens 128, greedy, temperature 1, top_p 1, top_k 0.
    Length: max_new_tokens wins over max_length (HF's precedence); a max_length (argument, or set on
    the config) counts the prompt, as in HF. `extra`: the other keyword arguments of the call."""
    base = generation_config if generation_config is not None else target_config
    extra = dict(extra or {})

    def from_config(name):
        return getattr(base, name, None) if base is not None else None

    for name in UNSUPPORTED_OBJECTS:
        if extra.pop(name, None) is not None:
            raise NotImplementedError(f"generate({name}=...) is not supported by RadarDecoder")
    for name, default in UNSUPPORTED.items():
        given = extra.pop(name, None)  # an argument overrides the config's value, as in HF
        where, v = ((f"generate({name}=...)", given) if given is not None
                    else (f"generation_config.{name}", from_config(name)))
        if v is not None and not _same(v, default):
            raise NotImplementedError(f"{where} = {v!r} is not supported by RadarDecoder (only {default!r})")
    for name in NO_EFFECT:
        extra.pop(name, None)
    if extra:
        raise TypeError(f"generate() got arguments that neither RadarDecoder nor HF generate use: {sorted(extra)}")

    max_new_tokens = _length(prompt_len, max_new_tokens, max_length, base)
    do_sample = bool(_pick(do_sample, from_config("do_sample"), False))
    temperature = _pick(temperature, from_config("temperature"), 1.0)
    top_p = _pick(top_p, from_config("top_p"), 1.0)
    top_k = _pick(top_k, from_config("top_k"), 0)
    eos = _pick(eos_token_id, from_config("eos_token_id"), None)
    if do_sample:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0 when sampling, got {temperature!r}")
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0: off), got {top_k!r}")
    eos_ids = _eos_ids(eos)
    return GenerationSettings(max_new_tokens, do_sample, SamplingParams(float(temperature), int(top_k), float(top_p)),
                              eos_ids)


def _pick(value, from_config, default):
    if value is not None:
        return value
    return default if from_config is None else from_config


def _same(v, default) -> bool:
    try:
        return bool(v == default)
    except Exception:  # an object whose == is not a plain truth value (a tensor, a list of lists)
        return False


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _length(prompt_len: int, max_new_tokens, max_length, base) -> int:
    """New tokens to generate at most (HF: max_new_tokens, else max_length - prompt length)."""
    if max_new_tokens is not None:
        if not _is_count(max_new_tokens) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        return max_new_tokens
    if max_length is not None:
        where = "max_length"
    else:
        cfg_new = getattr(base, "max_new_tokens", None) if base is not None else None
        if cfg_new is not None:
            if not _is_count(cfg_new) or cfg_new < 1:
                raise ValueError(f"generation_config.max_new_tokens must be an int >= 1, got {cfg_new!r}")
            return cfg_new
        max_length = _set_max_length(base)
        if max_length is None:
            return DEFAULT_MAX_NEW_TOKENS
        where = "generation_config.max_length"
    if not _is_count(max_length) or max_length < 1:
        raise ValueError(f"{where} must be an int >= 1, got {max_length!r}")
    if max_length <= prompt_len:
        raise ValueError(f"{where} = {max_length} counts the prompt, which already has {prompt_len} tokens: "
                         f"nothing is left to generate; set max_new_tokens instead")
    return max_length - prompt_len


def _set_max_length(base):
    """The config's max_length only where it was set away from GenerationConfig's default (20): the
    target's own default config then keeps RadarDecoder's max_new_tokens default."""
    if base is None or getattr(base, "max_length", None) is None or not hasattr(base, "to_diff_dict"):
        return None
    return base.to_diff_dict().get("max_length")


def _eos_ids(eos) -> tuple:
    if eos is None:
        return ()
    items = (eos.reshape(-1).tolist() if hasattr(eos, "reshape")       # a tensor / array of ids
             else list(eos) if isinstance(eos, (list, tuple)) else [eos])
    try:
        ids = tuple(operator.index(e) for e in items if not isinstance(e, bool))
    except TypeError:
        ids = ()
    if not items or len(ids) != len(items) or min(ids) < 0:
        raise ValueError(f"eos_token_id must be a token id >= 0 or a list of them, got {eos!r}")
    return ids
