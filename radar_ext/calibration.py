"""Hardware calibration (METHOD.md 7): what a cycle's parts cost on this machine, in seconds.

`calibrate()` measures, for one target + drafter:
  draft     one draft call at each tree_topk W: call 1 (it re-encodes the `pending` tokens the
            previous cycle accepted) separately from the later calls (W beams at once); every timed
            draft follows an untimed target forward, as in decoding, where the verify has evicted the
            head's weights from the caches (timed in a loop of drafts alone, call 1 read 0.9 ms on the
            AMX Xeon against the 1.3-1.8 ms decoding pays);
  verify    T_verify(V): one target forward (`radar_ext.verifier.verify`) over a real draft tree of
            V draft tokens (right after the smallest draft that holds V nodes, as decoding drafts:
            `verify_draft_shape`, and after an untimed cycle of the same shape: a verify right after a
            much larger one runs up to ~15% slower on the 2-core Xeon), at each prefix length, plus the
            tree build and the acceptance + cache commit around it;
  policy    one decision of a policy (StaticPolicy by default, or any Policy / callable);
  plain     a skipped cycle as the decoder runs it: the root alone through the same verify path
            (the drafter's target features captured), acceptance and commits; the 1-token forward
            is ~8% cheaper than V = 1's 2-token one, which is what a skip decision weighs;
  ar        the target's plain 1-token decode step, and its per-token cost inside HF `generate`;
  decoding  (optional, `measure_decoding`, `radar calibrate --decoding`) whole cycles of real decoding with static
            trees of 1-3 draft calls and with plain steps, which the policies' costs are scaled to
            (`CostModel.decoding_factors`).
Every figure is a `Stat` (median, p10, p90 over the repeats, after warm-up). Cycles are timed
inside the real code paths: a stamping policy records the clock at each `should_continue`, so the
draft calls are split without touching the drafter. The prefix is random token ids (the cost of a
forward does not depend on which tokens it sees).

`CostModel` holds the result, is saved as JSON and is what the learned policies and
`radar tune-static` read: `t_verify(V)`, `t_draft(calls)`, `t_policy()`, `t_ar()`, `t_cycle(...)`.
Offline tooling: nothing in the decoding loop imports this module.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

from radar_ext.policies.base import Policy

SCHEMA = "radar_ext.calibration/1"
# Every V up to 8: T_verify is a staircase, not a line. The few-row kernels work in tiles of 4 x-rows
# (V + 1 rows with the root), so on the 2-core AVX-512 machine of 2026-12-02 V = 2 and 3 cost the same,
# V = 4 costs 28% more, and V = 7 less than V = 5 or 6; a curve sampled at 2, 4, 6 interpolated V = 3
# 20% too dear and its policies never chose it.
DEFAULT_V_SET = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64)
# Decoding mostly runs at 100-300 tokens of context (a chat prompt + up to a few hundred new tokens);
# below the shortest prefix a cost is read as flat, so the curve starts at 128.
DEFAULT_PREFIX_LENS = (128, 512)
DEFAULT_TREE_TOPKS = (4, 6, 8, 10)


class CalibrationError(ValueError):
    """A calibration file or request that cannot be used (the message names the field)."""


# ---------------------------------------------------------------------------------------- Stat
@dataclass
class Stat:
    """Summary of repeated timings, in seconds."""
    median: float
    p10: float
    p90: float
    n: int

    @classmethod
    def of(cls, samples) -> "Stat":
        import numpy as np
        if len(samples) == 0:
            raise CalibrationError("no timing samples to summarise")
        a = np.asarray(samples, dtype=np.float64)
        return cls(float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)), int(a.size))

    @classmethod
    def from_dict(cls, d, where: str) -> "Stat":
        if not isinstance(d, dict) or any(k not in d for k in ("median", "p10", "p90", "n")):
            raise CalibrationError(f"{where} must be an object with median, p10, p90, n; got {d!r:.80}")
        return cls(float(d["median"]), float(d["p10"]), float(d["p90"]), int(d["n"]))


# ------------------------------------------------------------------------------- interpolation
def interp(xs, ys, x: float) -> float:
    """Piecewise linear through the points (xs ascending). Below the first point: the first value
    (a cost does not fall below what was measured); above the last: the last segment extended
    (costs keep growing with V and with the prefix)."""
    if len(xs) != len(ys) or not xs:
        raise CalibrationError(f"interp needs as many xs as ys (>= 1), got {len(xs)} and {len(ys)}")
    if len(xs) == 1 or x <= xs[0]:
        return float(ys[0])
    for i in range(1, len(xs)):
        if x <= xs[i]:
            f = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return float(ys[i - 1] + f * (ys[i] - ys[i - 1]))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(max(ys[-1] + slope * (x - xs[-1]), 0.0))


def isotonic(ys) -> list:
    """Non-decreasing least-squares fit of ys (pool adjacent violators, equal weights)."""
    blocks = []  # [sum, count]
    for y in ys:
        blocks.append([float(y), 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
    return [s / n for s, n in blocks for _ in range(n)]


def _interp_keyed(table: dict, x: float) -> float:
    """table {x: Stat or float} -> median interpolated at x."""
    xs = sorted(table)
    ys = [table[k].median if isinstance(table[k], Stat) else float(table[k]) for k in xs]
    return interp(xs, ys, x)


# ----------------------------------------------------------------------------------- CostModel
@dataclass
class CostModel:
    """Measured costs of one target + drafter on one machine (seconds; medians unless noted)."""
    name: str
    target: str                       # target config _name_or_path
    drafter: str                      # repr of the drafter
    prefix_lens: list                 # [int] prefix lengths the curves were taken at
    v_set: list                       # [int] verify budgets of the T_verify curve
    tree_topks: list                  # [int] W of the draft-call timings
    verify_tree_topk: int             # the widest W measured: t_draft's default (verify trees: verify_draft_shape)
    max_draft_calls: int              # draft calls per timed draft (call 1 + max_draft_calls - 1 later)
    pending: int                      # tokens re-encoded by call 1 (accepted length + 1 of a cycle)
    verify: dict                      # {prefix_len: {V: Stat}} one target forward over a V-token tree
    tree_build: dict                  # {prefix_len: {V: Stat}} best-V selection + build_tree after drafting
    overhead: dict                    # {prefix_len: {V: Stat}} greedy acceptance + cache commits
    draft_first: dict                 # {W: {prefix_len: Stat}} draft call 1
    draft_next: dict                  # {W: {prefix_len: Stat}} one later draft call
    ar_step: dict                     # {prefix_len: Stat} target forward on 1 token + argmax
    ar_generate: dict                 # {prefix_len: Stat} per new token inside HF generate (the bench baseline)
    plain_step: dict = field(default_factory=dict)  # {prefix_len: Stat} a skipped cycle (root-only verify +
                                      # acceptance + commits); {}: not measured (calibrations before it)
    decode_step: dict = field(default_factory=dict)  # {prefix_len: Stat} per new token of our own plain decoding
                                      # (RadarDecoder(target).generate): the plain step with the decode loop around
                                      # it; {}: not measured (calibrations before it)
    policy_name: str = "StaticPolicy"
    policy_decision: Stat | None = None  # one should_continue
    policy_budget: Stat | None = None    # one verify_budget choice
    machine: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    # `--batch-sizes`: {B: {"plain": seconds, "verify": {V: seconds}}} medians of one batched verify forward
    # (radar_ext.verifier.verify_rows) of B rows at the first prefix length, root alone / V draft tokens each
    batch: dict = field(default_factory=dict)
    # `--decoding`: whole cycles of real decoding (measure_decoding): {"prefix_len": P, "new_tokens": N,
    # "tree_topk": W, "plain": seconds a cycle, "cycles": {calls: {V: seconds a cycle}}}; {}: not measured
    decoding: dict = field(default_factory=dict)

    # -------------------------------------------------------------- costs
    def _prefix(self, prefix_len):
        return float(sum(self.prefix_lens) / len(self.prefix_lens)) if prefix_len is None else float(prefix_len)

    def _curve(self, table: dict, V: float, prefix_len) -> float:
        """{prefix: {V: Stat}} -> interpolate in V on each prefix curve, then in the prefix."""
        if V < 0:
            raise CalibrationError(f"verify_budget V must be >= 0, got {V}")
        return _interp_keyed({p: _interp_keyed(c, V) for p, c in table.items()}, self._prefix(prefix_len))

    def t_verify(self, V: float, prefix_len: float | None = None) -> float:
        """One target forward over a tree of V draft tokens (root extra), at prefix_len (default:
        the mean of the measured prefix lengths). Read from the non-decreasing fit of each prefix's
        measured medians over V (`isotonic`): a bigger tree never costs less, while the raw medians
        do dip (10-40% p10-p90 spread on a 2-core CPU) and a policy trained on a dip (V=2 "cheaper"
        than V=1) learns the noise."""
        fits = {}
        for p, curve in self.verify.items():
            vs = sorted(curve)
            fits[p] = dict(zip(vs, isotonic([curve[v].median for v in vs])))
        return self._curve(fits, V, prefix_len)

    def t_tree(self, V: float, prefix_len: float | None = None) -> float:
        """Best-V selection and tree building after the last draft call."""
        return self._curve(self.tree_build, V, prefix_len)

    def t_overhead(self, V: float, prefix_len: float | None = None) -> float:
        """Acceptance and cache commits of one cycle."""
        return self._curve(self.overhead, V, prefix_len)

    def t_draft(self, calls: int = 1, tree_topk: int | None = None, prefix_len: float | None = None) -> float:
        """The drafter's time for a cycle of `calls` draft calls: call 1 + (calls - 1) later calls.
        tree_topk: default the verify curve's W; other W are interpolated between measured ones."""
        if calls < 0:
            raise CalibrationError(f"calls must be >= 0, got {calls}")
        if calls == 0:
            return 0.0
        W = self.verify_tree_topk if tree_topk is None else tree_topk
        p = self._prefix(prefix_len)
        first = _interp_keyed({w: _interp_keyed(t, p) for w, t in self.draft_first.items()}, W)
        nxt = _interp_keyed({w: _interp_keyed(t, p) for w, t in self.draft_next.items()}, W)
        return first + (calls - 1) * nxt

    def t_policy(self) -> float:
        """One policy decision (0 when none was measured)."""
        return self.policy_decision.median if self.policy_decision is not None else 0.0

    def t_ar(self, prefix_len: float | None = None) -> float:
        """Seconds per token of the target's own greedy `generate` (the speedup baseline). It is the
        difference of two generate calls, so on a tiny model with few tokens timing noise can take it
        to 0 (clamped): then, or when it was not measured, the bare 1-token step stands in for it."""
        gen = self.ar_generate
        usable = bool(gen) and all(s.median > 0 for s in gen.values())
        return _interp_keyed(gen if usable else self.ar_step, self._prefix(prefix_len))

    def t_ar_step(self, prefix_len: float | None = None) -> float:
        """One bare 1-token target forward + argmax."""
        return _interp_keyed(self.ar_step, self._prefix(prefix_len))

    def t_plain(self, prefix_len: float | None = None) -> float | None:
        """A skipped cycle (root-only verify through the decoder's path, acceptance, commits), None when
        the calibration predates its measurement."""
        return _interp_keyed(self.plain_step, self._prefix(prefix_len)) if self.plain_step else None

    def t_loop(self, prefix_len: float | None = None) -> float:
        """The decode loop's own time per cycle beyond the measured cycle parts (emitting and checking the tokens,
        the verify's Python around the forward, stats): our plain decoding's per-token time minus the plain step,
        >= 0; 0 when the calibration predates that measurement. Every cycle pays it, drafted or not."""
        if not self.decode_step or not self.plain_step:
            return 0.0
        p = self._prefix(prefix_len)
        return max(0.0, _interp_keyed(self.decode_step, p) - _interp_keyed(self.plain_step, p))

    def t_cycle(self, calls: int, V: int, tree_topk: int | None = None, prefix_len: float | None = None,
                batch_size: int = 1) -> float:
        """Predicted wall time of one cycle: draft calls, one policy decision per call, tree build,
        verify, acceptance and commits. batch_size B > 1: a cycle of B rows, each drafting, building
        and committing on its own (B times those costs) and verified together (T_verify(V) times the
        calibrated batched-forward ratio at V, `verify_ratio`)."""
        per_row = (self.t_draft(calls, tree_topk, prefix_len) + calls * self.t_policy()
                   + self.t_tree(V, prefix_len) + self.t_overhead(V, prefix_len) + self.t_loop(prefix_len))
        return batch_size * per_row + self.t_verify(V, prefix_len) * self.verify_ratio(V, batch_size)

    def predicted_tokens_per_second(self, tau: float, calls: int, V: int, tree_topk: int | None = None,
                                    prefix_len: float | None = None, batch_size: int = 1) -> float:
        """Tokens/s of the whole batch (B rows of tau tokens a cycle each)."""
        return batch_size * tau / self.t_cycle(calls, V, tree_topk, prefix_len, batch_size)

    def verify_ratio(self, V: float, batch_size: int = 1) -> float:
        """A verify of B rows of V draft tokens over the same verify of one row, as `radar calibrate
        --batch-sizes` measured it (interpolated in V); 1 at B = 1; an uncalibrated B is refused by name."""
        if batch_size == 1:
            return 1.0
        ratios = self.batch_ratios()
        if batch_size not in ratios:
            raise CalibrationError(f"batch size {batch_size} was not calibrated (calibrated: {sorted(self.batch)}); "
                                   f"run `radar calibrate --batch-sizes 1,{batch_size}`")
        e = ratios[batch_size]
        return interp(e["V"], e["verify"], V)

    def cost_info(self, V: int, tree_topk: int | None = None, prefix_len: float | None = None):
        """The decoder-side `CostInfo` (what policies see) filled from the calibration."""
        from radar_ext.policies.base import CostInfo
        return CostInfo(draft_call=self.t_draft(2, tree_topk, prefix_len) - self.t_draft(1, tree_topk, prefix_len),
                        verify=self.t_verify(V, prefix_len), policy=self.t_policy(), mean_verify_budget=float(V))

    def decoding_factors(self, tree_topk: int | None = None) -> dict | None:
        """How far real decoding (`decoding`, measure_decoding) sits from the part-by-part model at the decoding's
        prefix: {"next": f, "V": [...], "verify": [f per V], "plain": f}, each measured / modelled, for a later
        draft call, the rest of a drafted cycle at V (everything that does not scale with the calls), and a plain
        step; None when decoding was not measured. The later call's measured cost is the least-squares slope of
        a cycle's time over its calls (mean over the V measured at several call counts; the part-by-part value
        where none was), floored at a quarter of the modelled one; the rest of a drafted cycle at V is the mean
        over the call counts measured at V of the cycle's time less that many later calls. tree_topk: the W the model is read at (default: the
        decoding's)."""
        d = self.decoding
        if not d:
            return None
        from radar_ext.policies.costs import PolicyCosts
        P, W = d["prefix_len"], d["tree_topk"] if tree_topk is None else tree_topk
        t_next, vb, vs_model, plain_model = PolicyCosts.model_parts(self, W, P)  # what the model says there
        at = {}  # V -> the call counts measured at V
        for c, row in d["cycles"].items():
            for V in row:
                at.setdefault(V, []).append(c)
        vs = sorted(at)
        slopes = []
        for V in vs:
            cs = sorted(at[V])
            if len(cs) > 1:
                m = sum(cs) / len(cs)
                slopes.append(sum((c - m) * d["cycles"][c][V] for c in cs) / sum((c - m) ** 2 for c in cs))
        slope = max(sum(slopes) / len(slopes), 0.25 * t_next) if slopes else t_next
        rest = [sum(d["cycles"][c][V] - c * slope for c in at[V]) / len(at[V]) for V in vs]
        return {"next": slope / t_next, "V": vs, "verify": [r / interp(vb, vs_model, V) for r, V in zip(rest, vs)],
                "plain": d["plain"] / plain_model}

    def batch_ratios(self) -> dict:
        """PolicyCosts.per_batch: {B: {"plain": r, "V": [...], "verify": [...]}}, every batched time over the
        same forward at B = 1 ({} when no batch was calibrated)."""
        if 1 not in self.batch or len(self.batch) < 2:
            return {}
        one = self.batch[1]
        vs = sorted(one["verify"])
        return {B: {"plain": e["plain"] / one["plain"], "V": vs, "verify": [e["verify"][v] / one["verify"][v] for v in vs]}
                for B, e in sorted(self.batch.items()) if B > 1}

    # -------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        def stats(table):
            return {str(k): (asdict(v) if isinstance(v, Stat) else stats(v)) for k, v in table.items()}

        d = {"schema": SCHEMA}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            if k in _NESTED:
                v = stats(v)
            elif isinstance(v, Stat):
                v = asdict(v)
            d[k] = v
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "calibration") -> "CostModel":
        if not isinstance(d, dict):
            raise CalibrationError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise CalibrationError(f"{where}: schema must be {SCHEMA!r}, got {d.get('schema')!r}")
        missing = [k for k, f in cls.__dataclass_fields__.items()
                   if k not in d and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise CalibrationError(f"{where}: missing field(s) {', '.join(missing)}")

        def stats(table, depth, name):
            if not isinstance(table, dict) or not table:
                raise CalibrationError(f"{where}: {name} must be a non-empty object, got {table!r:.80}")
            try:
                return {int(k): (Stat.from_dict(v, f"{where}: {name}[{k}]") if depth == 1
                                 else stats(v, depth - 1, f"{name}[{k}]")) for k, v in table.items()}
            except ValueError as e:
                if isinstance(e, CalibrationError):
                    raise
                raise CalibrationError(f"{where}: {name} keys must be ints, got {list(table)!r:.80}") from None

        kw = {}
        for k in cls.__dataclass_fields__:
            if k not in d:
                continue
            v = d[k]
            if k in _NESTED:
                v = {} if (k in ("ar_generate", "plain_step", "decode_step") and not v) else stats(v, _NESTED[k], k)  # {}: not measured
            elif k in ("policy_decision", "policy_budget"):
                v = None if v is None else Stat.from_dict(v, f"{where}: {k}")
            elif k == "decoding":
                v = check_decoding(v or {}, where)
            elif k == "batch":
                try:
                    v = {int(B): {"plain": float(e["plain"]), "verify": {int(V): float(t) for V, t in e["verify"].items()}}
                         for B, e in (v or {}).items()}
                except (TypeError, KeyError, ValueError, AttributeError):
                    raise CalibrationError(f"{where}: batch must be {{B: {{'plain': seconds, 'verify': {{V: seconds}}}}}}, "
                                           f"got {v!r:.80}") from None
            kw[k] = v
        return cls(**kw)

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "CostModel":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise CalibrationError(f"no calibration file {str(path)!r}; measure one with `radar calibrate`") from None
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path} is not valid JSON ({e})") from None
        return cls.from_dict(d, str(path))

    # -------------------------------------------------------------- display
    def format_table(self) -> str:
        """The T_verify(V) curve per prefix length (ms, median [p10-p90]) and the scalar costs."""
        ms = lambda s: f"{1e3 * s.median:7.2f} [{1e3 * s.p10:.2f}-{1e3 * s.p90:.2f}]"  # noqa: E731
        prefixes = sorted(self.verify)
        head = ["V"] + [f"verify P={p} ms" for p in prefixes] + [f"x V=1 P={p}" for p in prefixes] + \
               [f"tree+accept P={prefixes[-1]} ms"]
        rows = [head]
        for V in sorted(self.verify[prefixes[0]]):
            r = [str(V)] + [ms(self.verify[p][V]) for p in prefixes]
            r += [f"{self.verify[p][V].median / self.verify[p][min(self.verify[p])].median:.2f}" for p in prefixes]
            last = prefixes[-1]
            r.append(f"{1e3 * (self.tree_build[last][V].median + self.overhead[last][V].median):.2f}")
            rows.append(r)
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(s.rjust(w) for s, w in zip(r, widths)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append("")
        for W in sorted(self.draft_first):
            parts = [f"P={p}: call 1 {ms(self.draft_first[W][p]).strip()} ms, later {ms(self.draft_next[W][p]).strip()} ms"
                     for p in sorted(self.draft_first[W])]
            lines.append(f"draft call W={W:<3} " + "; ".join(parts))
        for p in sorted(self.ar_step):
            g = f", per token in HF generate {ms(self.ar_generate[p]).strip()} ms" if p in self.ar_generate else ""
            lines.append(f"AR P={p}: 1-token forward {ms(self.ar_step[p]).strip()} ms{g}")
        for p in sorted(self.plain_step):
            lines.append(f"plain step (skipped cycle) P={p}: {ms(self.plain_step[p]).strip()} ms")
        for p in sorted(self.decode_step):
            lines.append(f"our plain decoding P={p}: {ms(self.decode_step[p]).strip()} ms per token (the decode loop "
                         f"adds {1e3 * self.t_loop(p):.2f} ms a cycle)")
        f = self.decoding_factors()
        if f is not None:
            d = self.decoding
            lines.append(f"decoding (P={d['prefix_len']}, {d['new_tokens']} new tokens, W={d['tree_topk']}): plain step "
                         f"{1e3 * d['plain']:.2f} ms a cycle; " + "; ".join(
                             f"{c} call(s) V " + "/".join(map(str, sorted(row))) + " " + "/".join(
                                 f"{1e3 * row[V]:.2f}" for V in sorted(row)) + " ms" for c, row in sorted(d["cycles"].items())))
            lines.append(f"decoding over the part-by-part model: later draft call x{f['next']:.2f}, plain step "
                         f"x{f['plain']:.2f}, the rest of a cycle x" + "/".join(f"{x:.2f}" for x in f["verify"])
                         + " at V " + "/".join(map(str, f["V"])))
        if self.policy_decision is not None:
            b = f", verify_budget {1e6 * self.policy_budget.median:.1f} us" if self.policy_budget else ""
            lines.append(f"policy {self.policy_name}: one decision {1e6 * self.policy_decision.median:.1f} us "
                         f"[{1e6 * self.policy_decision.p10:.1f}-{1e6 * self.policy_decision.p90:.1f}]{b}")
        return "\n".join(lines)


_NESTED = {"verify": 2, "tree_build": 2, "overhead": 2, "draft_first": 2, "draft_next": 2,
           "ar_step": 1, "ar_generate": 1, "plain_step": 1, "decode_step": 1}


def default_path(name: str) -> Path:
    """Where calibrations live: <radar_ext cache>/calibration/<name>.json."""
    from radar_ext.models import cache_dir
    return cache_dir() / "calibration" / f"{name}.json"


# ---------------------------------------------------------------------------------- measuring
class _StampPolicy(Policy):
    """Stops after `calls` draft calls and records the clock at every decision, so the draft calls
    of one `draft()` are timed in place. Reports max_draft_calls = calls + 1 so that
    `should_continue` is also asked after the last call (the decoder skips it at the cap)."""

    def __init__(self, calls: int):
        self.set_calls(calls)
        self.stamps, self.steps, self.budget_steps = [], [], []

    def set_calls(self, calls: int) -> None:
        self.calls, self.max_draft_calls = calls, calls + 1

    def clear(self):
        self.stamps, self.steps, self.budget_steps = [], [], []

    def should_continue(self, step):
        self.stamps.append(time.perf_counter())
        self.steps.append(step)
        return step.draft_calls < self.calls

    def verify_budget(self, step):
        self.budget_steps.append(step)
        return step.default_budget


def verify_draft_shape(tree_topks, max_draft_calls: int, V: int) -> tuple[int, int]:
    """(W, calls): the smallest draft whose pool holds V nodes (W + (calls - 1) * W^2 >= V), the tree a verify of
    budget V is timed on. Decoding verifies right after its own short draft (1-2 calls at W = 4 for the learned
    policies), and a verify after a long wide draft runs slower (the default target after 8 calls at W = 10:
    +1.2 ms on a 7-9 ms verify, the caches refilled), so timing every V after the widest draft overstated T_verify
    against the plain step."""
    for W in sorted(tree_topks):
        for calls in range(1, max_draft_calls + 1):
            if W + (calls - 1) * W * W >= V:
                return W, calls
    return max(tree_topks), max_draft_calls


def _head_length(drafter):
    cache = getattr(drafter, "cache", None)
    return getattr(cache, "length", None)


def _crop_head(drafter, length):
    cache = getattr(drafter, "cache", None)
    if cache is not None and length is not None:
        cache.crop(length)
    if hasattr(drafter, "drop_pending"):  # commits append until the next draft call; the bench recommits
        drafter.drop_pending()


def _policy_timer(policy, max_draft_calls):
    """(name, decide(step) -> None, budget(step) -> None or None, reset) for a Policy or a callable."""
    from radar_ext.policies import Policy, StaticPolicy
    if policy is None:
        policy = StaticPolicy(max_draft_calls)
    if isinstance(policy, Policy):
        return repr(policy), policy.should_continue, policy.verify_budget, policy.reset
    if callable(policy):
        name = getattr(policy, "__qualname__", type(policy).__name__)
        return name, policy, None, (lambda: None)
    raise TypeError(f"policy must be a radar_ext Policy or a callable taking a DraftStep, got {type(policy).__name__}")


def check_lists(v_set, prefix_lens, tree_topks, max_position=None) -> None:
    for name, xs in (("v_set", v_set), ("prefix_lens", prefix_lens), ("tree_topks", tree_topks)):
        if not xs or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in xs):
            raise CalibrationError(f"{name} must be a non-empty list of ints >= 1, got {list(xs)!r}")
        if len(set(xs)) != len(xs):
            raise CalibrationError(f"{name} must not repeat values, got {list(xs)!r}")
    if max_position is not None and max(prefix_lens) + max(v_set) + 2 > max_position:
        raise CalibrationError(f"prefix_lens: the longest prefix + the largest V ({max(prefix_lens)} + "
                               f"{max(v_set)}) must fit the target's max_position_embeddings = {max_position}")


class _PrefixBench:
    """One prefix of P random tokens in the target's cache and the drafter's, and the timed steps
    of a cycle on it. Every step starts from the same state (`reset`): caches cropped back to the
    prefix, and the drafter holding the same `pending` accepted tokens (tokens and target features
    of a real tree path) for call 1 to re-encode."""

    def __init__(self, target, drafter, P: int, pending: int, W: int, max_calls: int, V: int, gen,
                 linears=None, fused: bool = False):
        import contextlib

        import torch

        from radar_ext import kv_cache
        from radar_ext.verifier import prefill, verify
        self.target, self.drafter, self.P = target, drafter, P
        self.fused = bool(fused)  # RadarDecoder(fused_forward=...): verify through radar_ext::llama_forward
        # the decoder's verify-time setting (radar_ext.fast_linear), so T_verify is what decoding pays
        self.linears = linears if linears is not None else contextlib.nullcontext()
        self.layers = drafter.feature_layers
        self.stamp = _StampPolicy(max_calls)
        self.plain_decoder = None  # RadarDecoder(target) for decode_generate, built on first use
        vocab = target.get_input_embeddings().weight.shape[0]
        self.ids = torch.randint(0, vocab, (1, P), generator=gen).to(next(target.parameters()).device)
        self.cache = kv_cache.new_target_cache(target)
        res = prefill(target, self.cache, self.ids, self.layers)
        self.root = res.logits[:, -1].argmax(-1)                                  # [1]
        drafter.start(self.ids, res.features, self.root)
        tree, *_ = self.draft(W, V)               # consumes the whole prompt
        self.head_len = _head_length(drafter)
        out = verify(target, self.cache, tree, P, self.layers, fused=self.fused)
        longest = int((tree.paths[0] >= 0).sum(1).argmax())  # host sync: once per prefix
        path = tree.paths[0, longest]
        path = path[path >= 0][:pending]                                          # root + accepted nodes
        self.pending_tokens = torch.cat([tree.tokens[:, path[1:]],
                                         out.logits[:, path[-1]].argmax(-1, keepdim=True)], 1)  # [1, n]
        self.pending_feats = out.features[:, path] if out.features is not None else None  # [1, n, F]
        self.pending = self.pending_tokens.shape[1]
        self.reset()

    def reset(self):
        from radar_ext import kv_cache
        kv_cache.crop(self.cache, self.P)
        _crop_head(self.drafter, self.head_len)
        self.drafter.commit(self.pending_tokens, self.pending, self.pending_feats)

    def draft(self, W: int, V: int):
        """(tree, call 1 seconds, [later calls' seconds], tree build seconds)."""
        from radar_ext.drafters.base import DraftRequest
        from radar_ext.policies.base import CostInfo
        self.stamp.clear()
        req = DraftRequest(root=self.root, seq_len=self.P + 1, tree_topk=W, verify_budget=V, policy=self.stamp,
                           costs=CostInfo())
        t0 = time.perf_counter()
        tree = self.drafter.draft(req)
        t1 = time.perf_counter()
        s = self.stamp.stamps
        return tree, s[0] - t0, [b - a for a, b in zip(s, s[1:])], t1 - s[-1]

    def cycle(self, W: int, V: int):
        """One whole cycle: (draft, verify seconds, acceptance + commits seconds)."""
        from radar_ext import kv_cache
        from radar_ext.acceptance import greedy_accept
        from radar_ext.verifier import verify
        d = self.draft(W, V)
        tree = d[0]
        t0 = time.perf_counter()
        with self.linears:
            out = verify(self.target, self.cache, tree, self.P, self.layers, fused=self.fused)
        t1 = time.perf_counter()
        acc = greedy_accept(tree, out.logits)
        n = acc.accepted_len[0] + 1
        path = acc.path[0, :n]
        kv_cache.commit_path(self.cache, self.P, path)
        self.drafter.commit(acc.tokens, n, out.features[:, path] if out.features is not None else None)
        return d, t1 - t0, time.perf_counter() - t1

    def plain_cycle(self) -> float:
        """A skipped cycle as RadarDecoder runs it: the root alone through verify (with the drafter's feature
        layers, which keep its state current), greedy acceptance, cache and drafter commits."""
        from radar_ext import kv_cache
        from radar_ext.acceptance import greedy_accept
        from radar_ext.tree import root_only_tree
        from radar_ext.verifier import verify
        t0 = time.perf_counter()
        tree = root_only_tree(self.root)
        with self.linears:
            out = verify(self.target, self.cache, tree, self.P, self.layers, fused=self.fused)
        acc = greedy_accept(tree, out.logits)
        n = acc.accepted_len[0] + 1
        path = acc.path[0, :n]
        kv_cache.commit_path(self.cache, self.P, path)
        self.drafter.commit(acc.tokens, n, out.features[:, path] if out.features is not None else None)
        return time.perf_counter() - t0

    def target_step(self) -> None:
        """One untimed target forward of the root on the prefix (its cache slot is cropped by the next
        reset): what runs between two draft calls 1 in decoding, and evicts the head's weights from the
        caches as the verify does there."""
        from radar_ext.tree import root_only_tree
        from radar_ext.verifier import verify
        with self.linears:
            verify(self.target, self.cache, root_only_tree(self.root), self.P, self.layers, fused=self.fused)

    def ar_step(self) -> float:
        """The plain decode step: one token through the target on the prefix cache, argmax read."""
        t0 = time.perf_counter()
        o = self.target(input_ids=self.root.view(1, 1), past_key_values=self.cache, use_cache=True)
        int(o.logits[0, -1].argmax())  # host sync: generate reads the token too
        return time.perf_counter() - t0

    def decode_generate(self, n_tokens: int) -> float:
        """Seconds per new token of our own plain decoding (RadarDecoder(target) on this verify path, greedy),
        as ar_generate times HF's: the difference of a 1-token and an (N + 1)-token generate over the tokens
        between them (the prefill cancels). A random prompt may hit EOS early: the tokens actually made count."""
        if self.plain_decoder is None:
            from radar_ext.decoder import RadarDecoder
            self.plain_decoder = RadarDecoder(self.target, None, fused_forward=self.fused)
        dec = self.plain_decoder
        t0 = time.perf_counter()
        n1 = dec.generate(self.ids, max_new_tokens=1, do_sample=False).shape[1]
        t1 = time.perf_counter()
        n2 = dec.generate(self.ids, max_new_tokens=n_tokens + 1, do_sample=False).shape[1]
        t2 = time.perf_counter()
        return max((t2 - t1) - (t1 - t0), 0.0) / max(n2 - n1, 1)

    def ar_generate(self, n_tokens: int) -> float:
        """Seconds per new token inside HF generate: (N + 1 tokens - 1 token) / N, the prefill cancels."""
        import torch
        g = dict(attention_mask=torch.ones_like(self.ids), do_sample=False, pad_token_id=0, eos_token_id=None)
        t0 = time.perf_counter()
        self.target.generate(self.ids, max_new_tokens=1, min_new_tokens=1, **g)
        t1 = time.perf_counter()
        self.target.generate(self.ids, max_new_tokens=n_tokens + 1, min_new_tokens=n_tokens + 1, **g)
        t2 = time.perf_counter()
        return max((t2 - t1) - (t1 - t0), 0.0) / n_tokens


def measure_batch_costs(target, batch_sizes, v_set, prefix_len: int, *, warmup: int = 3, repeats: int = 10,
                        seed: int = 0, linears=None, feature_layers=None, fused: bool = False) -> dict:
    """CostModel.batch: for each B, the median seconds of one batched verify forward (verify_rows, the
    decoder's own batch path) of B rows of `prefix_len` random tokens, each row the root alone ("plain")
    or a chain of V draft tokens ("verify"; the shape of a tree does not change its cost, its size does).
    B = 1 is always measured: the policies read every B as a ratio over it."""
    import contextlib

    import torch

    from radar_ext import kv_cache
    from radar_ext.tree import make_tree
    from radar_ext.verifier import prefill_rows, verify_rows

    linears = linears if linears is not None else contextlib.nullcontext()
    gen = torch.Generator().manual_seed(seed)
    vocab = target.get_input_embeddings().weight.shape[0]
    device = next(target.parameters()).device
    out = {}
    for B in sorted(set(batch_sizes) | {1}):
        ids = torch.randint(0, vocab, (B, prefix_len), generator=gen).to(device)
        cache = kv_cache.new_target_cache(target)
        pads = torch.zeros(B, dtype=torch.int64, device=device)
        prefill_rows(target, cache, ids, pads, feature_layers)
        lengths = torch.full((B,), prefix_len, dtype=torch.int64, device=device)
        times = {}
        for V in [0] + sorted(v_set):
            tokens = torch.randint(0, vocab, (B, V + 1), generator=gen).to(device)
            parents = (torch.arange(V + 1, device=device) - 1).expand(B, V + 1).contiguous()  # a chain
            tree = make_tree(tokens, parents, torch.full((B,), V + 1, dtype=torch.int64, device=device))
            samples = []
            for r in range(warmup + repeats):
                t0 = time.perf_counter()
                with linears:
                    verify_rows(target, cache, tree, lengths, pads, feature_layers, fused=fused)
                if r >= warmup:
                    samples.append(time.perf_counter() - t0)
                kv_cache.crop(cache, prefix_len)
            times[V] = Stat.of(samples).median
        out[B] = {"plain": times.pop(0), "verify": times}
    return out


DEFAULT_DECODING_CALLS = (1, 2, 3)
DEFAULT_DECODING_V = (1, 2, 3, 4, 6, 8, 12)


def check_decoding(d: dict, where: str = "calibration") -> dict:
    """CostModel.decoding from JSON ({} stays {}): ints for the keys, floats > 0 for the seconds."""
    if not d:
        return {}
    try:
        out = {"prefix_len": int(d["prefix_len"]), "new_tokens": int(d["new_tokens"]), "tree_topk": int(d["tree_topk"]),
               "plain": float(d["plain"]),
               "cycles": {int(c): {int(V): float(t) for V, t in row.items()} for c, row in d["cycles"].items()}}
    except (TypeError, KeyError, ValueError, AttributeError):
        raise CalibrationError(f"{where}: decoding must be {{'prefix_len', 'new_tokens', 'tree_topk', 'plain': seconds, "
                               f"'cycles': {{calls: {{V: seconds}}}}}}, got {d!r:.80}") from None
    times = [out["plain"]] + [t for row in out["cycles"].values() for t in row.values()]
    if not out["cycles"] or any(not row for row in out["cycles"].values()) or not all(t > 0 for t in times):
        raise CalibrationError(f"{where}: decoding needs at least one (calls, V) cycle time and every time > 0")
    return out


class _PlainEveryCycle(Policy):
    """A plain step every cycle, decided cycle by cycle (not planned up front), so each one pays what a
    learned policy's skipped cycle pays: the drafter's features captured, its pending tokens growing."""
    max_draft_calls = 1

    def should_draft(self, step) -> bool:
        return False

    def should_continue(self, step) -> bool:
        return False


def measure_decoding(target, drafter, *, prefix_len: int = 128, new_tokens: int = 48, tree_topk: int = 4,
                     calls=DEFAULT_DECODING_CALLS, v_set=DEFAULT_DECODING_V, prompts: int = 3, repeats: int = 3,
                     seed: int = 0, fused_forward: bool = True, tick=None) -> dict:
    """CostModel.decoding: seconds a cycle of real decoding (RadarDecoder.generate, greedy, after the prefill) with a
    static tree of `calls` draft calls at `tree_topk` and verify budget V, for every (calls, V), and with a plain step
    every cycle (only (calls, V) whose pool holds V nodes, `pool_holds`); each the total over `prompts` prompts of `prefix_len` random tokens x `repeats` (rounds interleave the
    settings, so a drift of the machine's speed spreads over all of them): the median over those generate calls of
    a call's time after its prefill over its cycles. These are what a
    policy's choices cost in decoding, the Python of the loop and the caches the head and the target evict from each
    other included, which the part-by-part timings above miss: on a 2-core AMD EPYC (default target, 2026-12-07) a
    later draft call cost 0.5-1.7 ms in decoding against ~0.75 ms timed in a loop. PolicyCosts.from_cost_model reads
    them where present."""
    import torch

    from radar_ext.decoder import RadarDecoder
    from radar_ext.policies import StaticPolicy

    _check_ints((("prefix_len", prefix_len, 1), ("new_tokens", new_tokens, 2), ("tree_topk", tree_topk, 1),
                 ("prompts", prompts, 1), ("repeats", repeats, 1)))
    settings = decoding_settings(tree_topk, calls, v_set)
    gen = torch.Generator().manual_seed(seed)
    vocab = target.get_input_embeddings().weight.shape[0]
    ids = [torch.randint(0, vocab, (1, prefix_len), generator=gen) for _ in range(prompts)]
    decoders = {}
    for c, V in settings:
        policy = _PlainEveryCycle() if c == 0 else StaticPolicy(c)
        decoders[c, V] = RadarDecoder(target, drafter, policy, tree_topk=tree_topk, verify_budget=max(V, 1),
                                      fused_forward=fused_forward)
    samples = {k: [] for k in settings}
    for r in range(repeats + 1):  # round 0: warm-up
        order = settings[r % len(settings):] + settings[:r % len(settings)]
        for key in order:
            dec = decoders[key]
            for x in ids:
                dec.generate(x, max_new_tokens=new_tokens, do_sample=False)
                st = dec.last_stats
                if r > 0 and st.cycles:
                    samples[key].append((st.seconds - st.time_prefill) / st.cycles)
            if tick is not None:
                tick()
    cycles = {}
    for c, V in settings[1:]:
        cycles.setdefault(c, {})[V] = Stat.of(samples[c, V]).median
    return {"prefix_len": prefix_len, "new_tokens": new_tokens, "tree_topk": tree_topk,
            "plain": Stat.of(samples[0, 0]).median, "cycles": cycles}


def decoding_settings(tree_topk: int, calls=DEFAULT_DECODING_CALLS, v_set=DEFAULT_DECODING_V) -> list:
    """measure_decoding's settings in the order it keeps: (0, 0) the plain step, then (calls, V) by calls and V
    where the pool holds V nodes (`pool_holds`)."""
    for k, xs in (("calls", calls), ("v_set", v_set)):
        if not xs or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in xs) or len(set(xs)) != len(xs):
            raise CalibrationError(f"{k} must be a non-empty list of distinct ints >= 1, got {list(xs)!r}")
    settings = [(0, 0)] + [(c, V) for c in sorted(calls) for V in sorted(v_set) if pool_holds(tree_topk, c, V)]
    if len(settings) == 1:
        raise CalibrationError(f"no (calls, V) in calls {list(calls)} x v_set {list(v_set)} fits the pool of tree_topk "
                               f"{tree_topk} (W + (calls - 1) * W^2 nodes)")
    return settings


def _check_ints(checks) -> None:
    """(name, value, lowest) triples: each value an int (not a bool) >= lowest, else CalibrationError naming it."""
    for k, v, lo in checks:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise CalibrationError(f"{k} must be an int >= {lo}, got {v!r}")


def pool_holds(tree_topk: int, calls: int, V: int) -> bool:
    """Whether `calls` draft calls at tree_topk W draft at least V nodes (W + (calls - 1) * W^2): a static tree with
    fewer verifies all it has, so its cycle says nothing about V."""
    return tree_topk + (calls - 1) * tree_topk * tree_topk >= V


def calibrate(target, drafter, policy=None, *, fused_forward: bool = True, **kwargs) -> CostModel:
    """Measure the CostModel of `target` + `drafter` (`_calibrate` below), with the target's checks made
    once (radar_ext.lean_forward.pinned), as RadarDecoder.generate makes them."""
    from radar_ext import lean_forward
    with lean_forward.pinned(target, native=True, fused=fused_forward):
        return _calibrate(target, drafter, policy, fused_forward=fused_forward, **kwargs)


def _calibrate(target, drafter, policy=None, *, name: str = "calibration", v_set=DEFAULT_V_SET,
              prefix_lens=DEFAULT_PREFIX_LENS, tree_topks=DEFAULT_TREE_TOPKS, max_draft_calls: int = 8,
              pending: int = 3, warmup: int = 3, repeats: int = 20, ar_tokens: int = 32, ar_repeats: int = 5,
              seed: int = 0, progress: bool = False, log=None, fast_linear: bool = True,
              batch_sizes=(), fused_forward: bool) -> CostModel:
    """Measure the CostModel of `target` + `drafter` (see the module docstring). `policy`: a
    Policy or a callable(DraftStep) whose decision is timed (default StaticPolicy). The verify trees
    are the drafter's own trees at W = max(tree_topks) after `max_draft_calls` calls. ar_tokens = 0
    skips the HF generate measurement. fast_linear: as RadarDecoder's option (on by default), so the verify
    curve is the one decoding pays; fused_forward: as RadarDecoder's option (verify through the fused C++
    forward; on by default, as there). batch_sizes: also measure the batched verify forward at these B
    (measure_batch_costs, at the shortest prefix length; CostModel.batch)."""
    import torch

    from radar_ext import fast_linear as fl
    use_fast = bool(fast_linear) and fl.applies_to(target)
    # (the fused forward reads no nn.Linear: the decoder does not enter fast_linear around it)
    linears = fl.fast_linear(target, enabled=use_fast and not fused_forward, quantized=True)

    v_set, prefix_lens, tree_topks = sorted(v_set), sorted(prefix_lens), sorted(tree_topks)
    check_lists(v_set, prefix_lens, tree_topks, getattr(target.config, "max_position_embeddings", None))
    _check_ints((("max_draft_calls", max_draft_calls, 1), ("pending", pending, 1), ("warmup", warmup, 0),
                 ("repeats", repeats, 1), ("ar_tokens", ar_tokens, 0), ("ar_repeats", ar_repeats, 1)))
    if pending > 1 + max_draft_calls:
        raise CalibrationError(f"pending must be <= max_draft_calls + 1 = {max_draft_calls + 1}, got {pending}")
    pol_name, decide, budget, reset = _policy_timer(policy, max_draft_calls)
    W_verify, V_max = max(tree_topks), max(v_set)
    gen = torch.Generator().manual_seed(seed)
    rounds = warmup + repeats
    total = len(prefix_lens) * (rounds * (len(tree_topks) + len(v_set) + 2) + ar_repeats * (ar_tokens > 0))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="calibrate", unit="run", leave=False)
    tick = (lambda: bar.update(1)) if bar is not None else (lambda: None)
    say = log or (lambda s: None)
    timed = lambda r: r >= warmup  # noqa: E731  (the first `warmup` rounds are not recorded)

    verify_t, build_t, over_t, first_t, next_t, ar_t, gen_t, plain_t = {}, {}, {}, {}, {}, {}, {}, {}
    decode_t = {}
    decisions, budgets = [], []
    t_start = time.perf_counter()
    with torch.no_grad():
        for P in prefix_lens:
            bench = _PrefixBench(target, drafter, P, pending, W_verify, max_draft_calls, V_max, gen, linears,
                                 fused_forward)
            # draft calls at each W (call 1 apart from the later ones)
            firsts, nexts = {W: [] for W in tree_topks}, {W: [] for W in tree_topks}
            bench.stamp.set_calls(max_draft_calls)
            for r in range(rounds):
                for W in tree_topks:
                    bench.target_step()  # as in decoding, call 1 follows a target forward (cold head weights)
                    bench.reset()
                    _, f, n, _ = bench.draft(W, V_max)
                    if timed(r):
                        firsts[W].append(f)
                        nexts[W].extend(n)
                        if len(decisions) < 200:  # the policy is timed on these full-depth drafts' steps
                            decisions.append(list(bench.stamp.steps))
                            budgets.extend(bench.stamp.budget_steps)
                    tick()
            for W in tree_topks:
                first_t.setdefault(W, {})[P] = Stat.of(firsts[W])
                next_t.setdefault(W, {})[P] = Stat.of(nexts[W])
            # the verify curve with the tree build and acceptance/commits around it; V rotated per round
            vt, bt, ot = ({V: [] for V in v_set} for _ in range(3))
            for r in range(rounds):
                for V in v_set[r % len(v_set):] + v_set[:r % len(v_set)]:
                    W, calls = verify_draft_shape(tree_topks, max_draft_calls, V)
                    bench.stamp.set_calls(calls)
                    bench.reset()
                    bench.cycle(W, V)  # untimed: the cycle before a timed one is of the same shape, as in decoding
                    bench.reset()
                    (_, _, _, build), t_verify, t_commit = bench.cycle(W, V)
                    if timed(r):
                        vt[V].append(t_verify)
                        bt[V].append(build)
                        ot[V].append(t_commit)
                    tick()
            verify_t[P], build_t[P], over_t[P] = ({V: Stat.of(x[V]) for V in v_set} for x in (vt, bt, ot))
            # a skipped cycle (what a policy's plain step costs), then the target's bare 1-token step and the
            # per-token cost of HF generate (the speedup baseline)
            for table, step in ((plain_t, bench.plain_cycle), (ar_t, bench.ar_step)):
                times = []
                for r in range(rounds):
                    bench.reset()
                    t = step()
                    if timed(r):
                        times.append(t)
                    tick()
                table[P] = Stat.of(times)
            if ar_tokens > 0:  # our own plain decoding per token, the decode loop included
                bench.decode_generate(ar_tokens)  # warm-up
                dec_steps = [bench.decode_generate(ar_tokens) for _ in range(ar_repeats)]
                decode_t[P] = Stat.of(dec_steps)
                bench.ar_generate(ar_tokens)  # warm-up
                per_token = []
                for _ in range(ar_repeats):
                    per_token.append(bench.ar_generate(ar_tokens))
                    tick()
                gen_t[P] = Stat.of(per_token)
            bench.reset()
            say(f"[calibrate] prefix {P}: verify V={v_set[0]} {1e3 * verify_t[P][v_set[0]].median:.2f} ms, "
                f"V={V_max} {1e3 * verify_t[P][V_max].median:.2f} ms")
    batch = {}
    if batch_sizes:
        if any(isinstance(B, bool) or not isinstance(B, int) or B < 1 for B in batch_sizes):
            raise CalibrationError(f"batch_sizes must be ints >= 1, got {list(batch_sizes)}")
        batch = measure_batch_costs(target, batch_sizes, v_set, prefix_lens[0], warmup=warmup, repeats=repeats,
                                    seed=seed, linears=linears, feature_layers=drafter.feature_layers,
                                    fused=fused_forward)
        say("[calibrate] batched verify: " + ", ".join(
            f"B={B} plain {1e3 * e['plain']:.1f} ms" for B, e in batch.items()))
    dec_t, bud_t = _time_policy(decisions, budgets, decide, budget, reset, warmup)
    if bar is not None:
        bar.close()

    from radar_ext.benchmark.report import machine_info
    machine = machine_info()
    machine["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine["fast_linear"] = bool(use_fast and linears.active)
    machine["fused_forward"] = bool(fused_forward)
    settings = dict(warmup=warmup, repeats=repeats, ar_tokens=ar_tokens, ar_repeats=ar_repeats, seed=seed,
                    prefix="random token ids", seconds=time.perf_counter() - t_start,
                    dtype=str(next(target.parameters()).dtype).replace("torch.", ""))
    return CostModel(
        name=name, target=str(getattr(target.config, "_name_or_path", "") or type(target).__name__),
        drafter=type(drafter).__name__ + (f"(draft_vocab={drafter.head.config.draft_vocab_size})"
                                          if hasattr(drafter, "head") else ""),
        prefix_lens=list(prefix_lens), v_set=list(v_set), tree_topks=list(tree_topks),
        verify_tree_topk=W_verify, max_draft_calls=max_draft_calls, pending=bench.pending,
        verify=verify_t, tree_build=build_t, overhead=over_t, draft_first=first_t, draft_next=next_t,
        ar_step=ar_t, ar_generate=gen_t, plain_step=plain_t, decode_step=decode_t, policy_name=pol_name, policy_decision=Stat.of(dec_t),
        policy_budget=Stat.of(bud_t) if bud_t else None, machine=machine, settings=settings, batch=batch)


def _time_policy(decisions, budgets, decide, budget, reset, warmup):
    """Seconds of each decision on the recorded draft steps (reset before each cycle's sequence),
    and of each verify_budget choice (budget None: not a Policy, nothing to time)."""
    for _ in range(max(1, warmup)):
        reset()
        for s in decisions[0]:
            decide(s)
    dec_t, bud_t = [], []
    for seq in decisions:
        reset()
        for s in seq:
            t0 = time.perf_counter()
            decide(s)
            dec_t.append(time.perf_counter() - t0)
    if budget is not None:
        for s in budgets:
            t0 = time.perf_counter()
            budget(s)
            bud_t.append(time.perf_counter() - t0)
    return dec_t, bud_t


def plot(model: CostModel, path) -> None:
    """Left: T_verify(V) per prefix length (p10-p90 band) with the AR step for scale.
    Right: one draft call (call 1 and later calls) against W."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, P in enumerate(sorted(model.verify)):
        c = f"C{i}"
        Vs = sorted(model.verify[P])
        s = [model.verify[P][V] for V in Vs]
        a.plot(Vs, [1e3 * x.median for x in s], "o-", color=c, label=f"verify, prefix {P}")
        a.fill_between(Vs, [1e3 * x.p10 for x in s], [1e3 * x.p90 for x in s], color=c, alpha=0.2)
        if P in model.ar_step:
            a.axhline(1e3 * model.ar_step[P].median, color=c, ls=":", label=f"AR 1-token step, prefix {P}")
    a.set_xlabel("verify budget V (draft tokens per target forward)")
    a.set_ylabel("ms")
    a.set_title("T_verify(V)")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    Ws = sorted(model.draft_first)
    for i, P in enumerate(sorted(model.prefix_lens)):
        b.plot(Ws, [1e3 * model.draft_first[W][P].median for W in Ws], "o-", color=f"C{i}",
               label=f"call 1 (re-encodes {model.pending}), prefix {P}")
        b.plot(Ws, [1e3 * model.draft_next[W][P].median for W in Ws], "s--", color=f"C{i}",
               label=f"later call, prefix {P}")
    b.set_xlabel("tree_topk W")
    b.set_ylabel("ms")
    b.set_title("one draft call")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    m = model.machine
    fig.suptitle(f"{model.name}: {m.get('cpu', '?')}, {m.get('torch_threads', '?')} threads, "
                 f"torch {m.get('torch', '?')}, {m.get('date', '')}", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
