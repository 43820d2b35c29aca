"""`RadarDecoder.generate`'s arguments, read the way Hugging Face `generate` reads them.

A user swaps `model.generate(...)` for `RadarDecoder(...).generate(...)` with the same arguments, so
the arguments are merged exactly as HF merges them (call arguments > the passed `generation_config` >
the target's `generation_config` > transformers' global defaults, `max_new_tokens` over `max_length`,
20 new tokens with HF's warning when no length is set anywhere), and every argument is either honoured
(lengths, EOS, sampling, every logits processor and stopping criterion `generate` builds, the dict
outputs; radar_ext.processors), accepted because it cannot change a batch-1 decoding's output
(`pad_token_id`, `use_cache`, ...), or refused by name with the reason when it is set to a value that
would change the output (`num_beams=4`: beam search is not a speculative method). Nothing is silently
dropped: an argument HF does not know either is an error naming it, as in HF.

The processors, criteria and length are built by the target's own `generate` helpers
(`_prepare_generation_config`, `_prepare_special_tokens`, `_prepare_generated_length`,
`_validate_generated_length`, `_get_logits_processor`, `_get_stopping_criteria`; transformers 5.23,
pinned in requirements.txt), so they are HF's, in HF's order, with HF's warnings. The table of every
argument and the test that covers it is docs/generate_parity.md.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

from radar_ext.acceptance import SamplingParams
from radar_ext.processors import Processing

# Arguments that change what HF's generate returns and that RadarDecoder does not reproduce, with the
# values it reproduces (those that change nothing) and why. Checked on the merged config (argument, else generation_config).
UNSUPPORTED = {
    "num_beams": ((1,), "beam search is not a speculative method (RadarDecoder reproduces greedy and sampling)"),
    "num_beam_groups": ((1,), "group beam search is not a speculative method"),
    "num_return_sequences": ((1,), "one sequence per prompt (batch size 1)"),
    "force_words_ids": ((None,), "constrained beam search is not a speculative method"),
    "constraints": ((None,), "constrained beam search is not a speculative method"),
    "guidance_scale": ((None, 1), "classifier-free guidance needs a second, unconditional target pass per token"),
    "watermarking_config": ((None,), "watermarking processors are not verified per tree node"),
    "token_healing": ((False,), "token healing rewrites the prompt before decoding"),
    "dola_layers": ((None,), "DoLa contrasts early-exit layers, a different decoding method"),
    "prompt_lookup_num_tokens": ((None,), "prompt lookup is HF's own speculative method; use NgramDrafter"),
    "assistant_early_exit": ((None,), "assisted decoding is HF's own speculative method"),
    "use_mtp": ((None, False), "multi-token-prediction drafting is HF's own speculative method"),
    "speculation_type": ((None,), "HF's own speculative methods (e.g. dflash) are not RadarDecoder's"),
    "output_attentions": ((False,), "the verify forward's attentions are over the draft tree, not HF's per-step ones"),
    "output_hidden_states": ((False,), "the verify forward's hidden states are over the draft tree, not HF's per-step ones"),
}
# Keyword-only objects of HF's generate that RadarDecoder does not run (None: not given), and why.
UNSUPPORTED_OBJECTS = {
    "assistant_model": "assisted decoding is HF's own speculative method; RadarDecoder is the speculative method",
    "assistant_tokenizer": "assisted decoding is HF's own speculative method",
    "negative_prompt_ids": "classifier-free guidance needs a second, unconditional target pass per token",
    "negative_prompt_attention_mask": "classifier-free guidance needs a second, unconditional target pass per token",
    "custom_generate": "it replaces generate's decoding loop",
}
# Objects RadarDecoder runs as HF does (radar_ext.processors).
OBJECTS = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "tokenizer")
# Accepted and ignored besides being set on the config: they cannot change the output of one sequence.
NO_EFFECT = ("synced_gpus",)
# Inputs HF's generate forwards to the model: RadarDecoder runs the prompt from input_ids only.
MODEL_INPUTS = ("past_key_values", "inputs_embeds", "position_ids", "cache_position", "token_type_ids",
                "decoder_input_ids", "encoder_outputs")


@dataclass
class GenerationSettings:
    max_new_tokens: int
    do_sample: bool
    sampling: SamplingParams
    eos_token_ids: tuple            # empty: no EOS stop
    processing: Processing | None = None  # HF's processors, extra stopping criteria, dict outputs (radar_ext.processors)
    pad_token_id: int | None = None  # HF's pad token (eos when unset): fills a batch row after its EOS


def resolve(target, given: torch.Tensor, n_pad, generation_config, *, max_new_tokens=None, max_length=None,
            do_sample=None, temperature=None, top_p=None, top_k=None, eos_token_id=None,
            has_attention_mask: bool = False, extra: dict | None = None) -> GenerationSettings:
    """Settings of one generate call on `target` for the prompts `given` [B, P] (n_pad left-padding
    positions included, as HF sees it: an int, or a list with one count per row). Explicit arguments (None: not given) and `extra`, the call's
    other keyword arguments, are merged with `generation_config` as HF's generate merges them."""
    extra = dict(extra or {})
    objects = {name: extra.pop(name, None) for name in OBJECTS}
    for name, why in UNSUPPORTED_OBJECTS.items():
        if extra.pop(name, None) is not None:
            raise NotImplementedError(f"generate({name}=...) is not supported by RadarDecoder: {why}")
    for name in NO_EFFECT:
        extra.pop(name, None)
    # checked before HF's config does, which raises with messages that do not name the call's argument
    if max_new_tokens is not None and (not _is_count(max_new_tokens) or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if max_length is not None and (not _is_count(max_length) or max_length < 1):
        raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
    explicit = dict(max_new_tokens=max_new_tokens, max_length=max_length, do_sample=do_sample,
                    temperature=temperature, top_p=top_p, top_k=top_k, eos_token_id=eos_token_id)
    kwargs = {**{k: v for k, v in explicit.items() if v is not None}, **extra}
    target_gc = target.generation_config
    P = given.shape[1]
    # HF generate's own test for "no length set anywhere" (then 20 new tokens, with its warning)
    has_default_max_length = (kwargs.get("max_length") is None and getattr(generation_config, "max_length", None) is None
                              and target_gc.max_length is None)
    has_default_min_length = (kwargs.get("min_length") is None and getattr(generation_config, "min_length", None) is None
                              and target_gc.min_length is None)

    def where(name):
        if name in kwargs:
            return f"generate({name}=...)"
        return f"generation_config.{name}" if generation_config is not None else f"target.generation_config.{name}"

    def refuse_unsupported(values):
        for name, (ok, why) in UNSUPPORTED.items():
            v = values(name)
            if v is not None and not any(_same(v, o) for o in ok):
                only = " or ".join(repr(o) for o in ok)
                raise NotImplementedError(f"{where(name)} = {v!r} is not supported by RadarDecoder (only {only}): {why}")

    refuse_unsupported(kwargs.get)  # before HF's config validation, which raises its own errors for some
    gc, unused = target._prepare_generation_config(generation_config, **kwargs)
    refuse_unsupported(lambda name: getattr(gc, name, None))
    mode = str(getattr(gc.get_generation_mode(), "value", gc.get_generation_mode()))
    if mode == "contrastive_search":
        raise NotImplementedError(f"{where('penalty_alpha')} = {gc.penalty_alpha!r} with top_k = {gc.top_k!r} selects "
                                  "contrastive search, which RadarDecoder does not reproduce: it re-ranks by "
                                  "hidden-state similarity, not a speculative method")
    if mode not in ("greedy_search", "sample"):  # a flag this table does not know yet selects another method
        raise NotImplementedError(f"generate's arguments select HF's {mode!r} mode; RadarDecoder reproduces greedy "
                                  "and sampling decoding only")
    unused = sorted(k for k in unused if k not in UNSUPPORTED)
    inputs = [k for k in unused if k in MODEL_INPUTS]
    if inputs:
        raise NotImplementedError(f"generate() model inputs {inputs} are not supported by RadarDecoder: it runs "
                                  "the prompt from input_ids (and attention_mask) only")
    if unused:
        raise TypeError(f"generate() got arguments that neither RadarDecoder nor HF generate use: {unused}")

    if gc.max_new_tokens is not None:
        if not _is_count(gc.max_new_tokens) or gc.max_new_tokens < 1:
            raise ValueError(f"{_named('max_new_tokens', kwargs, where)} must be an int >= 1, got {gc.max_new_tokens!r}")
    elif not has_default_max_length:
        if not _is_count(gc.max_length) or gc.max_length < 1:
            raise ValueError(f"{_named('max_length', kwargs, where)} must be an int >= 1, got {gc.max_length!r}")
        if gc.max_length <= P:
            raise ValueError(f"{_named('max_length', kwargs, where)} = {gc.max_length} counts the prompt, which already has {P} "
                             "tokens: nothing is left to generate; set max_new_tokens instead")
    eos_ids = _eos_ids(gc.eos_token_id)
    do_sample = bool(gc.do_sample)
    if do_sample:
        _check_sampling(gc.temperature, gc.top_p, gc.top_k)

    # HF generate's steps 3, 6 and 8, on the target itself: special tokens as tensors, the length
    # (max_new_tokens over max_length; 20 new tokens by default, capped at max_position_embeddings),
    # its length warnings, then its processors and stopping criteria
    target._prepare_special_tokens(gc, has_attention_mask, device=given.device, batch_size=given.shape[0])
    gc = target._prepare_generated_length(gc, has_default_max_length, has_default_min_length, "input_ids", P, given)
    target._validate_generated_length(gc, P, has_default_max_length)
    user_processors = _object_list(objects["logits_processor"], "logits_processor", "LogitsProcessorList")
    user_criteria = _object_list(objects["stopping_criteria"], "stopping_criteria", "StoppingCriteriaList")
    fn = objects["prefix_allowed_tokens_fn"]
    if fn is not None and not callable(fn):
        raise TypeError(f"prefix_allowed_tokens_fn must be callable (batch_id, input_ids) -> list of token ids, "
                        f"got {type(fn).__name__}")
    pads = [n_pad] * given.shape[0] if isinstance(n_pad, int) else list(n_pad)
    mask = None
    if any(pads):  # HF keeps the attention mask only when it has zeros (repetition_penalty then skips the padding)
        mask = torch.ones_like(given)
        for b, p in enumerate(pads):
            mask[b, :p] = 0
    processors = target._get_logits_processor(
        generation_config=gc, input_ids_seq_length=P, encoder_input_ids=given, prefix_allowed_tokens_fn=fn,
        logits_processor=user_processors, device=given.device, model_kwargs={"attention_mask": mask})
    criteria = target._get_stopping_criteria(generation_config=gc, stopping_criteria=user_criteria,
                                             tokenizer=objects["tokenizer"])
    max_new = gc.max_length - P
    from transformers.generation import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

    extra_criteria = StoppingCriteriaList()
    for c in criteria:
        # a user MaxLengthCriteria / EosTokenCriteria replaces generate's own (HF's merge): use its values
        if isinstance(c, MaxLengthCriteria):
            if any(c is u for u in user_criteria):
                max_new = c.max_length - P
                if max_new < 1:
                    raise ValueError(f"stopping_criteria: MaxLengthCriteria(max_length={c.max_length}) counts the "
                                     f"prompt, which already has {P} tokens: nothing is left to generate")
        elif isinstance(c, EosTokenCriteria):
            if any(c is u for u in user_criteria):
                eos_ids = tuple(int(e) for e in c.eos_token_id.reshape(-1).tolist())
        else:
            extra_criteria.append(c)
    processing = Processing.build(given, processors, extra_criteria, do_sample, len(user_processors) > 0,
                                  bool(gc.return_dict_in_generate), bool(gc.output_scores), bool(gc.output_logits))
    sampling = SamplingParams(float(gc.temperature), int(gc.top_k), float(gc.top_p)) if do_sample else SamplingParams()
    pad = gc._pad_token_tensor
    pad_id = None if pad is None else int(pad.reshape(-1)[0])  # host sync: once per generate
    return GenerationSettings(max_new, do_sample, sampling, eos_ids, processing, pad_id)


def _named(name, kwargs, where):
    """A length argument by its plain name when the call set it, else where the config set it."""
    return name if name in kwargs else where(name)


def _check_sampling(temperature, top_p, top_k):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0 when sampling, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0: off), got {top_k!r}")


def _object_list(value, name: str, kind: str):
    """A user's LogitsProcessorList / StoppingCriteriaList (a plain list of callables is taken too)."""
    from transformers.generation import LogitsProcessorList, StoppingCriteriaList

    cls = LogitsProcessorList if kind == "LogitsProcessorList" else StoppingCriteriaList
    if value is None:
        return cls()
    if not isinstance(value, (list, tuple)) or not all(callable(v) for v in value):
        raise TypeError(f"{name} must be a {kind} (a list of callables), got {type(value).__name__}")
    return value if isinstance(value, cls) else cls(value)


def _same(v, default) -> bool:
    try:
        return bool(v == default)
    except Exception:  # an object whose == is not a plain truth value (a tensor, a list of lists)
        return False


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
