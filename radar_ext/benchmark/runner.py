"""The paired protocol: one process, the same prompts for every method, warm-up first, methods
interleaved per question (in a carryover-balanced order, `method_order`: over a cycle of orders every method
runs right after every other equally often, so no method always follows the same one, as a plain rotation
makes it), answers timed as the wall time of the whole generate call (tokenization and chat templating are
outside the timer).

Multi-turn questions run turn by turn: each method keeps its own conversation, so turn 2 sees that
method's own answer to turn 1 (as in Spec-Bench). A question's records are kept only when every
method finished it, so Ctrl-C leaves complete, paired questions.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import torch

from radar_ext.benchmark.methods import BASELINE, METHODS, BenchContext


def encode_chat(tokenizer, messages) -> list:
    """Chat template -> token ids (handles the list / BatchEncoding return types of transformers)."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(t) for t in out]


class ForwardCounter:
    """Counts target forwards and where each one starts, via a forward pre-hook on the target's
    decoder stack (every forward of every method goes through it; the lean verify forward calls it as an
    observer). Tensors are only referenced during the timed call and read afterwards, so the hook adds
    no host/device sync."""

    def __init__(self, target):
        base = target.get_decoder() if hasattr(target, "get_decoder") else target
        self.calls = []  # (position tensor or None, n_tokens)
        self.starts = []  # time.perf_counter() at the start of each forward
        self._handle = base.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        pos = kwargs.get("position_ids")
        if pos is None:
            pos = kwargs.get("cache_position")
        self.calls.append((pos, int(ids.shape[1])))
        self.starts.append(time.perf_counter())

    # radar_ext.lean_forward calls this hook itself (lean_forward.observer_hook) instead of leaving its
    # fast verify path for the model's forward: the counter must not change what it measures.
    _hook.radar_observer = True

    def reset(self):
        self.calls = []
        self.starts = []

    def prefill_seconds(self, t0: float) -> float | None:
        """Seconds from t0 (the generate call) to the start of the first target forward after the prefill:
        the prefill, plus, for HF's assisted methods, their first draft. None without a second forward."""
        return self.starts[1] - t0 if len(self.starts) > 1 else None

    def derived_stats(self, prompt_len: int, new_tokens: int) -> dict:
        """Per-cycle accepted lengths from consecutive start positions (method-agnostic).

        As in RadarDecoder's own stats, a cycle is a target forward after the prefill. Cycle i emits
        r[i+1] - r[i] tokens, r[i] being its first input position (the root: the last emitted token,
        not yet seen by the target); the run ends at r = P - 1 + new_tokens. Draft tokens sent =
        inputs - 1. The prefill (and any draft tokens it carried, as HF prompt lookup does) is not a
        cycle: the forward count includes it, the histogram does not."""
        starts = [0 if p is None else int(p.reshape(-1).min()) for p, _ in self.calls]  # host reads, after timing
        out = {"target_forwards": len(starts)}
        roots = starts[1:] + [prompt_len - 1 + new_tokens]
        emitted = [roots[i + 1] - roots[i] for i in range(len(roots) - 1)]
        # a forward of n inputs emits 1..n tokens; otherwise the method's forwards follow another pattern
        if all(1 <= e <= n for e, (_, n) in zip(emitted, self.calls[1:])):
            hist = [0] * max(emitted, default=0)
            for e in emitted:
                hist[e - 1] += 1
            out.update(accepted_hist=hist, cycles=len(emitted),
                       verify_tokens=float(sum(n - 1 for _, n in self.calls[1:])))
        return out

    def close(self):
        self._handle.remove()


@dataclass
class RunConfig:
    methods: list
    max_new_tokens: int = 128
    temperature: float = 0.0
    repeats: int = 1
    seed: int = 0
    warmup: int = 1


@dataclass
class RunResult:
    records: list = field(default_factory=list)
    interrupted: bool = False
    questions_done: int = 0
    settings: dict = field(default_factory=dict)  # method -> what it was built with


def _seed(seed: int, repeat: int, qid, turn: int) -> int:
    return zlib.crc32(f"{seed}:{repeat}:{qid}:{turn}".encode()) & 0x7FFFFFFF


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_methods(ctx: BenchContext, names) -> dict:
    out = {}
    for n in names:
        cls = METHODS[n]
        cls.check(ctx.options)
        out[n] = cls(ctx)
    return out


def answer(ctx, method, counter, messages, cfg, repeat, qid, turn) -> dict:
    """One timed answer. Returns the raw record (without exactness) and the decoded text."""
    device = next(ctx.target.parameters()).device
    prompt = encode_chat(ctx.tokenizer, messages)
    input_ids = torch.tensor([prompt], dtype=torch.long, device=device)
    seed = _seed(cfg.seed, repeat, qid, turn)
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    counter.reset()
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = method.generate(input_ids, cfg.max_new_tokens, cfg.temperature, gen)
    _sync(device)
    seconds = time.perf_counter() - t0
    new = out[0, len(prompt):].tolist()
    rec = {"prompt_tokens": len(prompt), "new_tokens": len(new), "seconds": seconds,
           "output_ids": new, "prefill_seconds": counter.prefill_seconds(t0)}
    rec.update(counter.derived_stats(len(prompt), len(new)))
    rec.update(method.stats())  # the method's own numbers win over the derived ones
    split = rec.get("time_split")
    if split and split.get("prefill") is not None:  # our decoders time their prefill themselves
        rec["prefill_seconds"] = float(split["prefill"])
    text = ctx.tokenizer.decode(new, skip_special_tokens=True)
    return rec, text


def run_benchmark(ctx: BenchContext, questions, cfg: RunConfig, progress=True, log=print) -> RunResult:
    if BASELINE not in cfg.methods:
        raise ValueError(f"methods must include the baseline {BASELINE!r} (speedup and exactness are "
                         f"measured against it), got {cfg.methods}")
    methods = build_methods(ctx, cfg.methods)
    result = RunResult(settings={n: getattr(m, "settings", {}) for n, m in methods.items()})
    counter = ForwardCounter(ctx.target)
    try:
        if cfg.warmup and questions:
            warm = [{"role": "user", "content": questions[0].turns[0]}]
            wcfg = RunConfig(cfg.methods, min(cfg.max_new_tokens, 16), cfg.temperature, 1, cfg.seed)
            try:
                for _ in range(cfg.warmup):
                    for m in methods.values():
                        answer(ctx, m, counter, warm, wcfg, -1, "warmup", 0)
            except KeyboardInterrupt:
                log("\ninterrupted during warm-up: nothing measured")
                result.interrupted = True
                return result
        _run_loop(ctx, questions, cfg, methods, counter, result, progress, log)
    finally:
        counter.close()
    return result


def balanced_orders(n: int) -> list:
    """Williams' carryover-balanced orders of n methods (indices): n orders for even n, 2n for odd n, each a
    permutation, in which every method comes right after every other one equally often (a rotation of one
    order keeps every method's predecessor: whatever a method leaves behind, caches, allocator state, heat,
    would always fall on the same next method)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:  # 0, 1, n-1, 2, n-2, ...
        if len(first) % 2:
            first.append(lo)
            lo += 1
        else:
            first.append(hi)
            hi -= 1
    orders = [[(x + i) % n for x in first] for i in range(n)]
    return orders + [o[::-1] for o in orders] if n % 2 else orders


def method_order(names: list, slot: int) -> list:
    """The methods' order for the slot-th timed unit (question or batch) of a run: balanced_orders in turn."""
    orders = balanced_orders(len(names))
    return [names[i] for i in orders[slot % len(orders)]]


def _run_loop(ctx, questions, cfg, methods, counter, result, progress, log):
    from tqdm.auto import tqdm

    names = list(cfg.methods)
    total = cfg.repeats * len(questions)
    bar = tqdm(total=total, desc="bench", unit="q", disable=not progress, dynamic_ncols=True)
    try:
        for repeat in range(cfg.repeats):
            for qi, q in enumerate(questions):
                order = method_order(names, repeat * len(questions) + qi)
                pending = []
                for name in order:
                    bar.set_postfix_str(f"{q.category} {q.question_id} {name}")
                    messages = []
                    for turn, user in enumerate(q.turns):
                        messages.append({"role": "user", "content": user})
                        rec, text = answer(ctx, methods[name], counter, messages, cfg, repeat,
                                           q.question_id, turn)
                        messages.append({"role": "assistant", "content": text})
                        rec = {"repeat": repeat, "question_id": q.question_id, "category": q.category,
                               "turn": turn, "method": name, "order": order.index(name), **rec}
                        pending.append(rec)
                _mark_exact(pending, cfg.temperature)
                result.records.extend(pending)
                result.questions_done += 1
                bar.update(1)
    except KeyboardInterrupt:
        result.interrupted = True
        log(f"\ninterrupted: keeping {result.questions_done} complete question(s) of {total}")
    finally:
        bar.close()


def _mark_exact(records, temperature):
    """At T=0 every answer is compared token by token with the baseline's answer to the same turn."""
    base = {r["turn"]: r["output_ids"] for r in records if r["method"] == BASELINE}
    for r in records:
        r["exact"] = (None if temperature > 0 or r["method"] == BASELINE
                      else r["output_ids"] == base.get(r["turn"]))
