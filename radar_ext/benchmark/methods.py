"""The decoding methods the benchmark compares, as small adapters behind one registry.

Each adapter class has
- `name`, `summary`;
- `check(options)` (classmethod, cheap, runs before any model is loaded): raises `MethodUnavailable`
  naming the method and what is missing (a class this version does not have, shipped weights, a file);
- `__init__(ctx)`: builds the method on the loaded target;
- `generate(input_ids [B, P], max_new_tokens, temperature, generator, attention_mask=None) -> LongTensor
  [B, P + N]`: the only call the runner times (B > 1: left-padded rows, radar_ext.benchmark.batch);
- `stats() -> dict`: what the method itself reports about its last call (may be empty), read after
  the timer stopped. Additive keys: `cycles`, `draft_calls`, `verify_tokens`, `policy_seconds`,
  `accepted_hist` (list, index = accepted length). The runner fills missing ones from its own count
  of target forwards.
"""
from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path


class MethodUnavailable(RuntimeError):
    """A known method that cannot run in this installation (message says why)."""


class UnknownMethod(ValueError):
    pass


@dataclass
class BenchOptions:
    """Paths and knobs the adapters need, before the target is loaded."""
    drafter_path: str | None = None      # EAGLE-3 head directory; default: models.default_head_path()
    static_gs_path: str | None = None    # grid-searched static setting; default: static_tree.json beside the head
    static_tree: dict | None = None      # `static` setting (max_draft_calls, tree_topk, verify_budget); None: 8/10/60
    radar_policy_path: str | None = None
    ltd_policy_path: str | None = None
    policy_costs: str | None = None      # calibration JSON the learned policies read instead of their stored one
    ngram_max: int | None = None         # NgramDrafter(max_ngram=...) override
    ngram_budget: int = 15               # verify_budget of `ngram`: 16 tree tokens stay in the flat part
                                         # of a CPU target forward's cost (2..16 tokens cost about the same)
    pld_tokens: int = 10                 # HF prompt_lookup_num_tokens
    lookup_scores_path: str | None = None  # hybrid methods' calibrated lookup scores; default: lookup_scores.json
                                         # beside the head (radar_ext.training.lookup_fit)
    hybrid_static: dict | None = None    # `hybrid-static` setting (max_draft_calls, tree_topk, verify_budget);
                                         # None: the grid-searched static setting (static_tree.json)
    adaptive_paths: dict = field(default_factory=dict)  # pmin / ema / goodput -> tuned setting JSON;
                                         # default: <kind>.json beside the head (`radar tune-static --policy`)
    generate_kwargs: dict = field(default_factory=dict)  # more generate() arguments for every method, HF's
                                         # and ours (`radar bench --generate-kwargs`, e.g. repetition_penalty)
    fused_forward: bool = True           # our methods: RadarDecoder(fused_forward=...) (`radar bench --no-fused-forward`)
    lookup_steps: bool = True            # our methods: RadarDecoder(lookup_steps=...) (`radar bench --no-lookup-steps`)


@dataclass
class BenchContext:
    """The loaded target and what the adapters share (the EAGLE drafter is loaded once, lazily)."""
    target: object
    tokenizer: object
    eos_token_id: object                 # int, list of int or None
    pad_token_id: int | None
    options: BenchOptions = field(default_factory=BenchOptions)
    drafter: object = None               # the EagleDrafter, loaded on first use
    hybrid: object = None                # the HybridDrafter over that EagleDrafter, built on first use

    def eagle_drafter(self):
        if self.drafter is None:
            EagleDrafter = _import("radar_ext.drafters", "EagleDrafter", "eagle drafter")
            self.drafter = EagleDrafter.from_pretrained(eagle_head_path(self.options), self.target)
        return self.drafter

    def hybrid_drafter(self):
        """The EAGLE head (shared with the EAGLE-only methods: every generate restarts it) plus lookups."""
        if self.hybrid is None:
            from radar_ext.drafters import HybridDrafter, LookupScores
            self.hybrid = HybridDrafter(self.eagle_drafter(), None, LookupScores.load(lookup_scores_path(self.options)))
        return self.hybrid


def eagle_head_path(options: BenchOptions) -> Path:
    if options.drafter_path:
        return Path(options.drafter_path)
    from radar_ext.models import default_head_path
    return default_head_path()


def _check_head(options: BenchOptions, method: str) -> None:
    path = eagle_head_path(options)
    if not (path / "config.json").is_file():
        where = "--drafter" if options.drafter_path else "the shipped EAGLE-3 head"
        raise MethodUnavailable(f"method {method!r} needs an EAGLE-3 head: {where} {str(path)!r} has no "
                                "config.json (not shipped in this version; pass --drafter DIR)")


def lookup_scores_path(options: BenchOptions) -> Path:
    if options.lookup_scores_path:
        return Path(options.lookup_scores_path)
    from radar_ext.drafters.hybrid import LOOKUP_SCORES_FILE
    return eagle_head_path(options) / LOOKUP_SCORES_FILE


def _check_lookup_scores(options: BenchOptions, method: str) -> None:
    path = lookup_scores_path(options)
    if not path.is_file():
        where = "--lookup-scores" if options.lookup_scores_path else "the shipped lookup scores"
        raise MethodUnavailable(f"method {method!r} needs calibrated lookup scores: {where} {str(path)!r} is not "
                                "a file (fit them with `python -m radar_ext.training.lookup_fit`, or pass "
                                "--lookup-scores FILE)")


def _import(module: str, name: str, method: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise MethodUnavailable(f"method {method!r} needs {module}.{name}, which is not available in "
                                f"this version ({type(e).__name__}: {e})") from None


def sampling_kwargs(temperature: float) -> dict:
    # Plain temperature sampling for every method: top_k=0 and top_p=1.0 switch HF's filters off
    # (its default top_k is 50), so all methods sample from the same distribution.
    if temperature > 0:
        return dict(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
    return dict(do_sample=False)


class HFGenerate:
    """`ar`: the target's own `generate`, the 1.00x baseline."""
    name = "ar"
    summary = "the target's own HF generate (baseline)"
    extra: dict = {}

    @classmethod
    def check(cls, options: BenchOptions) -> None:
        pass

    def __init__(self, ctx: BenchContext):
        from transformers import GenerationConfig
        self.ctx = ctx
        self._base = GenerationConfig(eos_token_id=ctx.eos_token_id, pad_token_id=ctx.pad_token_id,
                                      **self._extra(ctx))
        unused = self._base.update(**ctx.options.generate_kwargs)
        if unused:
            raise ValueError(f"--generate-kwargs: {sorted(unused)} are not HF generation config fields")

    def _extra(self, ctx) -> dict:
        return {}

    def generate(self, input_ids, max_new_tokens, temperature, generator=None, attention_mask=None):
        import copy
        cfg = copy.deepcopy(self._base)
        cfg.update(max_new_tokens=max_new_tokens, **sampling_kwargs(temperature))
        # HF generate has no generator argument: the runner seeds torch's global RNG before the call.
        import torch
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask  # batches: left padding
        return self.ctx.target.generate(input_ids, attention_mask=mask, generation_config=cfg)

    def stats(self) -> dict:
        return {}


class HFPromptLookup(HFGenerate):
    """`hf-pld`: HF prompt lookup decoding (n-gram candidates from the context, linear verification)."""
    name = "hf-pld"
    summary = "HF prompt lookup decoding (prompt_lookup_num_tokens)"

    def _extra(self, ctx) -> dict:
        return dict(prompt_lookup_num_tokens=ctx.options.pld_tokens)


class _DecoderMethod:
    """Ours: RadarDecoder with a drafter and a policy (built by `_parts`)."""
    name = ""
    summary = ""

    @classmethod
    def check(cls, options: BenchOptions) -> None:
        _import("radar_ext.decoder", "RadarDecoder", cls.name)

    def __init__(self, ctx: BenchContext):
        RadarDecoder = _import("radar_ext.decoder", "RadarDecoder", self.name)
        drafter, policy, kwargs = self._parts(ctx)
        kwargs = {**kwargs, "fused_forward": bool(ctx.options.fused_forward),
                  "lookup_steps": bool(ctx.options.lookup_steps)}
        self.decoder = RadarDecoder(ctx.target, drafter, policy=policy, **kwargs)
        self.settings = {"drafter": repr(self.decoder.drafter), "policy": repr(self.decoder.policy), **kwargs}
        self.ctx = ctx
        params = inspect.signature(self.decoder.generate).parameters
        self._takes_generator = "generator" in params

    def _parts(self, ctx):
        raise NotImplementedError

    def generate(self, input_ids, max_new_tokens, temperature, generator=None, attention_mask=None):
        kw = dict(max_new_tokens=max_new_tokens, eos_token_id=self.ctx.eos_token_id,
                  **sampling_kwargs(temperature), **self.ctx.options.generate_kwargs)
        if self._takes_generator and generator is not None:
            kw["generator"] = generator
        if attention_mask is not None:  # batches: left padding, and HF's pad token after a row's EOS
            kw.update(attention_mask=attention_mask, pad_token_id=self.ctx.pad_token_id)
        return self.decoder.generate(input_ids, **kw)

    def stats(self) -> dict:
        return decoder_stats(getattr(self.decoder, "last_stats", None))


def decoder_stats(stats) -> dict:
    """RadarDecoder.last_stats (DecodeStats: totals over the answer) -> the runner's additive keys."""
    if stats is None:
        return {}
    return {"cycles": int(stats.cycles), "skipped_cycles": int(stats.skipped_cycles),
            "lookup_steps": int(getattr(stats, "lookup_steps", 0)), "draft_calls": float(stats.draft_calls),
            "lookup_accepted": int(getattr(stats, "lookup_accepted", 0)),
            "shared_accepted": int(getattr(stats, "shared_accepted", 0)),
            "verify_tokens": float(stats.verify_tokens), "accepted_hist": [int(c) for c in stats.accepted_hist],
            "policy_seconds": float(stats.time_policy),
            "time_split": {"prefill": stats.time_prefill, "draft": stats.time_draft, "policy": stats.time_policy,
                           "verify": stats.time_verify, "other": stats.time_other}}


class ArFast(_DecoderMethod):
    """`ar-fast`: our own plain decoding, the speculation's own 1.00x."""
    name = "ar-fast"
    summary = "RadarDecoder(target, drafter=None): one token per forward through our own verify path"

    def _parts(self, ctx):
        return None, None, {}


class Ngram(_DecoderMethod):
    name = "ngram"
    summary = "RadarDecoder + NgramDrafter (prompt lookup drafting through the tree path)"

    @classmethod
    def check(cls, options):
        super().check(options)
        _import("radar_ext.drafters", "NgramDrafter", cls.name)
        _import("radar_ext.policies", "StaticPolicy", cls.name)

    def _parts(self, ctx):
        NgramDrafter = _import("radar_ext.drafters", "NgramDrafter", self.name)
        StaticPolicy = _import("radar_ext.policies", "StaticPolicy", self.name)
        drafter = NgramDrafter() if ctx.options.ngram_max is None else NgramDrafter(max_ngram=ctx.options.ngram_max)
        # one lookup per cycle (draft_calls = 1): the policy and tree_topk do not shape an n-gram tree
        return drafter, StaticPolicy(max_draft_calls=1), dict(tree_topk=10,
                                                              verify_budget=ctx.options.ngram_budget)


class Static(_DecoderMethod):
    name = "static"
    summary = "RadarDecoder + EagleDrafter + StaticPolicy(max_draft_calls=8), tree_topk=10, verify_budget=60"
    setting = dict(max_draft_calls=8, tree_topk=10, verify_budget=60)

    @classmethod
    def check(cls, options):
        super().check(options)
        _import("radar_ext.drafters", "EagleDrafter", cls.name)
        _import("radar_ext.policies", "StaticPolicy", cls.name)
        _check_head(options, cls.name)

    def _setting(self, ctx) -> dict:
        return dict(ctx.options.static_tree or self.setting)

    def _parts(self, ctx):
        StaticPolicy = _import("radar_ext.policies", "StaticPolicy", self.name)
        s = self._setting(ctx)
        return (ctx.eagle_drafter(), StaticPolicy(max_draft_calls=int(s["max_draft_calls"])),
                dict(tree_topk=int(s["tree_topk"]), verify_budget=int(s["verify_budget"])))


STATIC_GS_FILE = "static_tree.json"  # shipped beside the head (as `radar demo` reads it)
STATIC_GS_KEYS = ("max_draft_calls", "tree_topk", "verify_budget")


def static_gs_path(options: BenchOptions) -> Path:
    if options.static_gs_path:
        return Path(options.static_gs_path)
    return eagle_head_path(options) / STATIC_GS_FILE


def read_static_gs(path: Path) -> dict:
    """The grid-searched static setting: a JSON object with max_draft_calls, tree_topk, verify_budget
    (ints >= 1); other keys (e.g. how it was searched) are kept in the report config only."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MethodUnavailable(f"method 'static-gs' needs the grid-searched setting {path}, which is "
                                "not shipped in this version (run the tune-static tool, or pass "
                                "--static-gs FILE)") from None
    except json.JSONDecodeError as e:
        raise MethodUnavailable(f"method 'static-gs': {path} is not valid JSON ({e})") from None
    bad = _bad_static_keys(obj)
    if bad:
        raise MethodUnavailable(f"method 'static-gs': {path} must hold ints >= 1 for "
                                f"{', '.join(STATIC_GS_KEYS)}; bad or missing: {', '.join(bad)}")
    return obj


class StaticGS(Static):
    name = "static-gs"
    summary = "like static, with the grid-searched (max_draft_calls, tree_topk, verify_budget)"

    @classmethod
    def check(cls, options):
        super().check(options)
        read_static_gs(static_gs_path(options))

    def _setting(self, ctx):
        return read_static_gs(static_gs_path(ctx.options))


def _bad_static_keys(obj) -> list:
    """STATIC_GS_KEYS that `obj` does not hold as ints >= 1."""
    return [k for k in STATIC_GS_KEYS if not (isinstance(obj, dict) and isinstance(obj.get(k), int)
                                              and not isinstance(obj.get(k), bool) and obj[k] >= 1)]


def read_static_gs_batch(path: Path, batch_size: int) -> dict:
    """The static setting grid-searched for `batch_size`: by_batch[B] of the static_tree.json (`radar
    tune-static --batch-size B --install`), its top level at B = 1."""
    obj = read_static_gs(path)
    if batch_size == 1:
        return obj
    entry = (obj.get("by_batch") or {}).get(str(batch_size))
    if entry is None:
        raise MethodUnavailable(f"method 'static-gs-b': {path} has no tree tuned for batch size {batch_size} "
                                f"(tuned: {sorted(int(b) for b in obj.get('by_batch') or {}) or 'none'}); run "
                                f"`radar tune-static --batch-size {batch_size} --install`")
    bad = _bad_static_keys(entry)
    if bad:
        raise MethodUnavailable(f"method 'static-gs-b': {path} by_batch[{batch_size}] must hold ints >= 1 for "
                                f"{', '.join(STATIC_GS_KEYS)}; bad or missing: {', '.join(bad)}")
    return entry


class StaticGSBatch(StaticGS):
    """static-gs with the tree tuned for the batch size the batched benchmark runs (`at_batch`)."""
    name = "static-gs-b"
    summary = ("like static-gs, with the tree grid-searched for the run's batch size (static_tree.json's by_batch[B] "
               "from `radar tune-static --batch-size B --install`; B = 1: static-gs's tree)")
    batch_size = 1

    def _setting(self, ctx):
        return read_static_gs_batch(static_gs_path(ctx.options), self.batch_size)

    def check_batches(self, batch_sizes) -> None:
        """MethodUnavailable, naming the file and B, where a batch size has no tuned tree (before any timing)."""
        for B in batch_sizes:
            read_static_gs_batch(static_gs_path(self.ctx.options), B)

    def at_batch(self, batch_size: int) -> None:
        """Rebuild the decoder with the tree tuned for `batch_size` (the batched runner calls it per B)."""
        if batch_size != self.batch_size:
            self.batch_size = batch_size
            _DecoderMethod.__init__(self, self.ctx)


class _Learned(Static):
    policy_class = ""
    option = ""
    drafter_kind = "eagle"  # whose shipped policy runs without --radar-policy / --ltd-policy

    @classmethod
    def check(cls, options):
        super().check(options)
        _import("radar_ext.policies", cls.policy_class, cls.name)

    def _parts(self, ctx):
        Policy = _import("radar_ext.policies", self.policy_class, self.name)
        path = getattr(ctx.options, self.option)
        costs = ctx.options.policy_costs
        if costs and not Path(costs).is_file():  # else the FileNotFoundError below would blame the weights
            raise ValueError(f"--policy-costs {costs!r} is not a file (a `radar calibrate` JSON)")
        try:
            policy = Policy.from_pretrained(path or None, costs=costs, drafter=self.drafter_kind)
        except (FileNotFoundError, TypeError) as e:
            raise MethodUnavailable(f"method {self.name!r}: no shipped {self.policy_class} weights "
                                    f"({type(e).__name__}: {e}); pass --{self.option.replace('_path', '').replace('_', '-')} "
                                    "PATH") from None
        # the policy's own W (it checks the drafter's beams) and, for RADAR, the V it was trained for
        return ctx.eagle_drafter(), policy, dict(tree_topk=policy.tree_topk,
                                                 verify_budget=getattr(policy, "trained_verify_budget", None) or 60)


class Radar(_Learned):
    name = "radar"
    summary = "RadarDecoder + EagleDrafter + RadarPolicy (learned stop rule)"
    policy_class = "RadarPolicy"
    option = "radar_policy_path"


class Ltd(_Learned):
    name = "ltd"
    summary = "RadarDecoder + EagleDrafter + LtdPolicy (learned depth and verify budget)"
    policy_class = "LtdPolicy"
    option = "ltd_policy_path"


def adaptive_setting_path(options: BenchOptions, kind: str) -> Path:
    given = (options.adaptive_paths or {}).get(kind)
    return Path(given) if given else eagle_head_path(options) / f"{kind}.json"


class _Adaptive(Static):
    """A training-free adaptive controller (radar_ext.policies.adaptive) with its tuned setting."""
    kind = ""

    @classmethod
    def check(cls, options):
        super().check(options)
        cls._setting_of(options)

    @classmethod
    def _setting_of(cls, options):
        from radar_ext.policies.adaptive import read_setting
        path = adaptive_setting_path(options, cls.kind)
        try:
            return read_setting(path, cls.kind)
        except (FileNotFoundError, ValueError) as e:
            raise MethodUnavailable(f"method {cls.name!r}: {e} (or pass --{cls.kind} FILE)") from None

    def _parts(self, ctx):
        from radar_ext.policies.adaptive import from_setting
        policy, W, V = from_setting(self._setting_of(ctx.options), costs=ctx.options.policy_costs)
        return ctx.eagle_drafter(), policy, dict(tree_topk=W, verify_budget=V)


class Pmin(_Adaptive):
    name = kind = "pmin"
    summary = "RadarDecoder + EagleDrafter + PminPolicy (llama.cpp's p-min stop rule, tuned p)"


class Ema(_Adaptive):
    name = kind = "ema"
    summary = "RadarDecoder + EagleDrafter + EmaPolicy (SGLang-style depth from an EMA of accepted lengths)"


class Goodput(_Adaptive):
    name = kind = "goodput"
    summary = "RadarDecoder + EagleDrafter + GoodputPolicy (vLLM-style expected-goodput depth and V)"


class _Hybrid:
    """Mixin: the same method with the HybridDrafter (EAGLE pool + context lookups, radar_ext.drafters.hybrid)
    in place of the EagleDrafter; everything else (policy, W, V) as the EAGLE-only method builds it (a learned
    policy: the one shipped for hybrid drafting where there is one, models.default_policy_path)."""
    drafter_kind = "hybrid"

    @classmethod
    def check(cls, options):
        super().check(options)
        _import("radar_ext.drafters", "HybridDrafter", cls.name)
        _check_lookup_scores(options, cls.name)

    def _parts(self, ctx):
        drafter, policy, kwargs = super()._parts(ctx)
        return ctx.hybrid_drafter(), policy, kwargs


class HybridStatic(_Hybrid, StaticGS):
    name = "hybrid-static"
    summary = ("RadarDecoder + HybridDrafter + StaticPolicy: the grid-searched static tree's calls and W (or "
               "--hybrid-static), best V of EAGLE and lookup nodes by calibrated score")

    @classmethod
    def check(cls, options):
        if options.hybrid_static is not None:  # a given setting needs no static_tree.json
            Static.check.__func__(cls, options)
            _import("radar_ext.drafters", "HybridDrafter", cls.name)
            _check_lookup_scores(options, cls.name)
        else:
            super().check(options)

    def _setting(self, ctx):
        return dict(ctx.options.hybrid_static) if ctx.options.hybrid_static else super()._setting(ctx)


class HybridRadar(_Hybrid, Radar):
    name = "hybrid-radar"
    summary = "RadarDecoder + HybridDrafter + RadarPolicy"


class HybridLtd(_Hybrid, Ltd):
    name = "hybrid-ltd"
    summary = "RadarDecoder + HybridDrafter + LtdPolicy (V from the merged pool's scores)"


class HybridPmin(_Hybrid, Pmin):
    name = "hybrid-pmin"
    summary = "RadarDecoder + HybridDrafter + PminPolicy (pmin's tuned setting)"


class HybridEma(_Hybrid, Ema):
    name = "hybrid-ema"
    summary = "RadarDecoder + HybridDrafter + EmaPolicy (ema's tuned setting)"


class HybridGoodput(_Hybrid, Goodput):
    name = "hybrid-goodput"
    summary = "RadarDecoder + HybridDrafter + GoodputPolicy (goodput's tuned setting; V from the merged pool)"


class Lookup(HybridLtd):
    """`lookup`: the hybrid's lookup side alone under the same costs: the lookup-only opponent of `hybrid-ltd`."""
    name = "lookup"
    summary = ("RadarDecoder + LookupDrafter + LookupStepPolicy: context lookups alone, each cycle the lookup's "
               "calibrated best nodes where they pay under the costs hybrid-ltd reads (lookup steps, T = 0), else a "
               "plain step")

    def _parts(self, ctx):
        from radar_ext.drafters import LookupDrafter
        from radar_ext.policies import LookupStepPolicy
        hybrid, policy, kwargs = super()._parts(ctx)
        return LookupDrafter(hybrid.lookup.fork(), hybrid.scores), LookupStepPolicy(policy.costs), kwargs


METHODS = {m.name: m for m in (HFGenerate, ArFast, HFPromptLookup, Ngram, Lookup, Static, StaticGS, StaticGSBatch, Pmin, Ema,
                               Goodput, Radar, Ltd, HybridStatic, HybridPmin, HybridEma, HybridGoodput, HybridRadar, HybridLtd)}
BASELINE = "ar"
OWN_BASELINE = "ar-fast"  # our own plain decoding: speedup_vs_ar_fast is the speculation's own gain


def parse_methods(spec: str) -> list:
    """'ar,hf-pld,...' -> names in the given order, duplicates dropped; unknown names are an error."""
    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if not names:
        raise UnknownMethod(f"--methods: give a comma-separated list of {', '.join(METHODS)}; got {spec!r}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UnknownMethod(f"--methods: unknown method{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))}; known: {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def availability(options: BenchOptions) -> dict:
    """name -> None if available, else the reason (for `--methods all` and the help text)."""
    out = {}
    for name, cls in METHODS.items():
        try:
            cls.check(options)
            out[name] = None
        except MethodUnavailable as e:
            out[name] = str(e)
    return out
