"""Calibrated costs a learned policy is trained with and stores (METHOD.md 7): seconds on the machine
the policy will run on. Read from a calibration JSON (`radar calibrate`, radar_ext/calibration.py) or
any plain dict with the keys t_draft, t_policy, t_ar and a T_verify(V) curve."""
from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PolicyCosts:
    t_draft: float          # one draft call
    t_policy: float         # one policy decision
    t_ar: float             # one plain autoregressive target forward (1 token): the LTD features' unit
    verify_budgets: list    # V of the measured verify curve, increasing
    verify_seconds: list    # T_verify(V) at those V
    t_plain: float | None = None  # one plain step through our own verify path (a skipped cycle); None: t_ar
    # batch > 1 (`radar calibrate --batch-sizes`): {B: {"plain": r, "V": [...], "verify": [...]}}, the batched
    # forward of B rows (root alone; V draft tokens per row) over the same forward at B = 1; None: not measured
    per_batch: dict | None = None

    def __post_init__(self):
        for name in ("t_draft", "t_policy", "t_ar"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"costs: {name} must be a finite number >= 0 (seconds), got {v!r}")
        if not self.t_ar > 0:
            raise ValueError(f"costs: t_ar must be > 0 (seconds of one target forward), got {self.t_ar!r}")
        if self.t_plain is not None and not (isinstance(self.t_plain, (int, float)) and math.isfinite(self.t_plain)
                                             and self.t_plain > 0):
            raise ValueError(f"costs: t_plain must be None or a finite number > 0 (seconds of one plain step), "
                             f"got {self.t_plain!r}")
        vb, vs = list(self.verify_budgets), list(self.verify_seconds)
        if not vb or len(vb) != len(vs):
            raise ValueError(f"costs: the T_verify curve needs matching non-empty V and seconds lists, "
                             f"got {len(vb)} V and {len(vs)} times")
        if vb != sorted(set(vb)):
            raise ValueError(f"costs: T_verify V values must be distinct and increasing, got {vb}")
        if any(not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0) for s in vs):
            raise ValueError(f"costs: T_verify seconds must be finite numbers > 0, got {vs}")
        self.verify_budgets = [int(v) for v in vb]
        self.verify_seconds = [float(s) for s in vs]
        if self.per_batch is not None:
            self.per_batch = {int(B): _check_batch_entry(B, e) for B, e in self.per_batch.items()}

    def t_verify(self, V: float) -> float:
        """T_verify(V): piecewise linear through the measured points, linear extrapolation outside; above the
        largest measured V never below its time (a noisy last segment that falls would otherwise price big
        trees near zero)."""
        vb, vs = self.verify_budgets, self.verify_seconds
        if len(vb) == 1:
            return vs[0]
        k = min(max(bisect.bisect_left(vb, V), 1), len(vb) - 1)
        v0, v1, s0, s1 = vb[k - 1], vb[k], vs[k - 1], vs[k]
        slope = (s1 - s0) / (v1 - v0)
        if V > v1:
            return max(s1 + max(slope, 0.0) * (V - v1), 1e-9)
        return max(s0 + slope * (V - v0), 1e-9)

    def plain_step(self) -> float:
        """Seconds of a skipped cycle's plain step (the root verified alone, no draft call): t_plain where
        the calibration gives it, else t_ar."""
        return self.t_ar if self.t_plain is None else self.t_plain

    def features(self, budgets) -> list:
        """Cost inputs of the LTD policies, unitless: t_draft, t_policy and T_verify(V) per budget,
        each over t_ar."""
        return [self.t_draft / self.t_ar, self.t_policy / self.t_ar] + [self.t_verify(v) / self.t_ar for v in budgets]

    def batch_entry(self, batch_size: int) -> dict | None:
        """The per_batch entry for a row of a batch of `batch_size` ({"plain": r, "V": [...], "verify": [...]},
        ratios over B = 1); None at B = 1 or with nothing calibrated. A calibrated B gives its own entry; a B
        between two calibrated sizes (B = 1 counts as calibrated: every ratio 1) gives the entry linear in B
        between them (a batched forward's cost grows about linearly with its rows: 2-core AMD EPYC, default
        target, `radar calibrate --batch-sizes 1,2,3,4,8`: the plain step at B = 1 / 2 / 3 / 4 / 8 8.9 / 11.3 /
        13.1 / 15.5 / 25.6 ms); a B above the largest calibrated gives the largest's (an underestimate: calibrate
        the sizes you serve)."""
        if not self.per_batch or batch_size <= 1:
            return None
        if batch_size in self.per_batch:
            return self.per_batch[batch_size]
        above = [b for b in self.per_batch if b > batch_size]
        if not above:
            return self.per_batch[max(self.per_batch)]
        hi = min(above)
        lo = max((b for b in self.per_batch if b < batch_size), default=1)
        e_hi = self.per_batch[hi]
        e_lo = self.per_batch.get(lo, {"plain": 1.0, "V": e_hi["V"], "verify": [1.0] * len(e_hi["V"])})
        a = (batch_size - lo) / (hi - lo)
        r_lo = PolicyCosts(0.0, 0.0, 1.0, e_lo["V"], e_lo["verify"]).t_verify
        r_hi = PolicyCosts(0.0, 0.0, 1.0, e_hi["V"], e_hi["verify"]).t_verify
        vs = sorted(set(e_lo["V"]) | set(e_hi["V"]))
        return {"plain": (1 - a) * e_lo["plain"] + a * e_hi["plain"], "V": vs,
                "verify": [(1 - a) * r_lo(v) + a * r_hi(v) for v in vs]}

    def batch_features(self, budgets, batch_size: int) -> list:
        """`features` for a row of a batch of `batch_size` (the measured ratios of `batch_entry`: a calibrated
        B's, linear between calibrated sizes, the largest's above them; the B = 1 features where none is
        calibrated). A row's share of a cycle at batch B, in units of its share of a plain step t_ar(B) / B
        (t_ar(B) = t_ar * the plain-forward ratio): its draft calls and decisions run alone
        (B * t / t_ar(B)), its tree in the batched forward (T_verify(V) * the verify ratio at V, / t_ar(B)).
        At B = 1 these are `features`."""
        e = self.batch_entry(batch_size)
        if e is None:
            return self.features(budgets)
        B = batch_size
        t_ar_b = self.t_ar * e["plain"]
        ratio = PolicyCosts(0.0, 0.0, 1.0, e["V"], e["verify"]).t_verify  # piecewise linear in V
        return ([B * self.t_draft / t_ar_b, B * self.t_policy / t_ar_b]
                + [self.t_verify(v) * ratio(v) / t_ar_b for v in budgets])

    def at_batch(self, batch_size: int, budgets=()) -> "PolicyCosts":
        """One row's costs at batch `batch_size` as a B = 1 curve (what training scores a batch with): its
        draft calls and decisions B times their seconds (run row by row, while the other rows wait), its
        tree verified and its plain step taken in the batched forward (T_verify(V) and the plain step times
        the measured ratios at B; its curve's points: both curves' and `budgets`). Its `features(budgets)` are
        `batch_features(budgets, batch_size)`, and its rate is the batch's over B, so a policy trained on it
        decides for a row of that batch. Only calibrated batch sizes (training scores measured costs)."""
        if batch_size == 1:
            return self
        if not self.per_batch or batch_size not in self.per_batch:
            raise ValueError(f"costs: batch size {batch_size} was not calibrated (calibrated: "
                             f"{sorted(self.per_batch or {})}); run `radar calibrate --batch-sizes` with it")
        e = self.per_batch[batch_size]
        ratio = PolicyCosts(0.0, 0.0, 1.0, e["V"], e["verify"]).t_verify
        vs = sorted(set(self.verify_budgets) | set(e["V"]) | {int(v) for v in budgets})
        return PolicyCosts(batch_size * self.t_draft, batch_size * self.t_policy, self.t_ar * e["plain"],
                           vs, [self.t_verify(v) * ratio(v) for v in vs], self.plain_step() * e["plain"])

    def to_dict(self) -> dict:
        d = {"t_draft": self.t_draft, "t_policy": self.t_policy, "t_ar": self.t_ar,
             "t_verify": {"V": list(self.verify_budgets), "seconds": list(self.verify_seconds)}}
        if self.t_plain is not None:
            d["t_plain"] = self.t_plain
        if self.per_batch:
            d["per_batch"] = {str(B): dict(e) for B, e in self.per_batch.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PolicyCosts":
        """Accepts {"t_draft", "t_policy", "t_ar", curve}; the curve under "t_verify" or "T_verify"
        as {"V": [...], "seconds": [...]}, as {V: seconds}, or as [[V, seconds], ...]; or as the
        separate lists "verify_budgets" + "verify_seconds"."""
        if not isinstance(d, dict):
            raise ValueError(f"costs must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("t_draft", "t_policy", "t_ar") if k not in d]
        if missing:
            raise ValueError(f"costs: missing key(s) {missing}; expected t_draft, t_policy, t_ar and a T_verify curve")
        curve = d.get("t_verify", d.get("T_verify"))
        if curve is None and "verify_budgets" in d:
            curve = {"V": d["verify_budgets"], "seconds": d.get("verify_seconds", [])}
        if curve is None:
            raise ValueError("costs: missing the T_verify(V) curve (key t_verify or T_verify)")
        if isinstance(curve, dict) and "V" in curve:
            vb, vs = list(curve["V"]), list(curve.get("seconds", curve.get("t", [])))
        elif isinstance(curve, dict):
            pts = sorted((int(k), v) for k, v in curve.items())
            vb, vs = [p[0] for p in pts], [p[1] for p in pts]
        elif isinstance(curve, (list, tuple)):
            pts = sorted((int(p[0]), p[1]) for p in curve)
            vb, vs = [p[0] for p in pts], [p[1] for p in pts]
        else:
            raise ValueError(f"costs: T_verify must be a dict or a list of [V, seconds], got {type(curve).__name__}")
        t_plain = d.get("t_plain")
        return cls(float(d["t_draft"]), float(d["t_policy"]), float(d["t_ar"]), vb, vs,
                   None if t_plain is None else float(t_plain), d.get("per_batch"))

    @classmethod
    def from_cost_model(cls, cm, tree_topk: int | None = None, prefix_len: float | None = None) -> "PolicyCosts":
        """From a `radar calibrate` CostModel (radar_ext/calibration.py), read at `prefix_len` tokens
        of context (default: the mean of the calibrated prefix lengths; pass the mean sequence length
        the policy will decide at, since T_verify grows with the prefix). t_draft is one later draft
        call; the "verify" curve holds everything of a cycle that does not scale with the number of
        draft calls (call 1's extra cost over a later call, tree build, the target forward, acceptance
        and commits), so n * t_draft + T_verify(V) + decisions * t_policy equals CostModel.t_cycle.
        Call 1's extra cost is negative when call 1 is the cheaper one (it runs on one row, a later
        call on W beams: measured so at W >= 6 on a 2-core AMD EPYC), which is exact as long as
        T_verify(V) stays positive. A noisy calibration of a tiny model can time a later call so slow
        that it would not; call 1's extra cost is then floored at minus half the cheapest V's
        cost, overestimating every cycle by the rest, instead of the calibration being refused.
        t_ar is the calibration's HF generate step (the speedup baseline, and the LTD features' unit);
        t_plain, what a skipped cycle costs in our decoder, is the calibration's plain step (the root alone
        through the same verify path, acceptance and commits), often far below HF's step; a calibration
        that predates that measurement gives the cycle without draft calls at the smallest calibrated V,
        an upper bound (one token more in the forward: ~8% dearer on the default target, enough to hide
        that plain steps pay where acceptance is low)."""
        if prefix_len is not None and not (isinstance(prefix_len, (int, float)) and math.isfinite(prefix_len)
                                           and prefix_len > 0):
            raise ValueError(f"prefix_len must be a finite number of tokens > 0, got {prefix_len!r}")
        p = None if prefix_len is None else float(prefix_len)
        t_next, vb, vs, t_plain = cls.model_parts(cm, tree_topk, p)
        f = cm.decoding_factors(tree_topk) if hasattr(cm, "decoding_factors") else None
        if f is not None:  # scaled to what whole cycles of real decoding cost (`radar calibrate --decoding`)
            from radar_ext.calibration import interp
            lo, hi = f["V"][0], f["V"][-1]  # outside the measured V: the nearest measured factor
            vs = [s * interp(f["V"], f["verify"], min(max(v, lo), hi)) for s, v in zip(vs, vb)]
            t_next, t_plain = t_next * f["next"], t_plain * f["plain"]
        return cls(float(t_next), float(cm.t_policy()), float(cm.t_ar(p)), vb, vs, float(t_plain),
                   cm.batch_ratios() or None)

    @staticmethod
    def model_parts(cm, tree_topk: int | None, p: float | None) -> tuple:
        """(t_next, V list, T_verify seconds per V, t_plain) of from_cost_model, from the CostModel's part-by-part
        timings alone (no scaling to decoding cycles), at prefix p."""
        t_next = cm.t_draft(2, tree_topk, p) - cm.t_draft(1, tree_topk, p)
        vb = [int(v) for v in cm.v_set]
        loop = cm.t_loop(p)  # the decode loop's own time, every cycle (0 for calibrations before it)
        base = [cm.t_verify(v, p) + cm.t_tree(v, p) + cm.t_overhead(v, p) + loop for v in vb]
        extra_first = max(cm.t_draft(1, tree_topk, p) - t_next, -0.5 * min(base))
        t_plain = cm.t_plain(p)
        if t_plain is None:
            t_plain = cm.t_verify(vb[0], p) + cm.t_overhead(vb[0], p)
        return t_next, vb, [b + extra_first for b in base], t_plain + loop

    @classmethod
    def load(cls, source, tree_topk: int | None = None, prefix_len: float | None = None) -> "PolicyCosts":
        """From a JSON path, a dict, a PolicyCosts, or a calibration CostModel (object or its JSON,
        read at tree_topk W, default the calibration's verify W, and at prefix_len tokens, default the
        mean calibrated prefix; both are ignored for plain cost dicts, which hold one curve)."""
        if isinstance(source, PolicyCosts):
            return source
        if hasattr(source, "t_tree") and hasattr(source, "v_set"):
            return cls.from_cost_model(source, tree_topk, prefix_len)
        if isinstance(source, dict) and str(source.get("schema", "")).startswith("radar_ext.calibration/"):
            from radar_ext.calibration import CostModel
            return cls.from_cost_model(CostModel.from_dict(source), tree_topk, prefix_len)
        if isinstance(source, (str, Path)):
            p = Path(source)
            if not p.is_file():
                raise FileNotFoundError(f"costs file {p} does not exist (run `radar calibrate` to measure one)")
            try:
                d = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"costs file {p} is not valid JSON: {e}") from None
            if isinstance(d, dict) and str(d.get("schema", "")).startswith("radar_ext.calibration/"):
                from radar_ext.calibration import CostModel
                return cls.from_cost_model(CostModel.from_dict(d, str(p)), tree_topk, prefix_len)
            if isinstance(d, dict) and "t_draft" not in d and isinstance(d.get("costs"), dict):
                d = d["costs"]
            return cls.from_dict(d)
        if isinstance(source, dict):
            return cls.from_dict(source)
        if hasattr(source, "to_dict"):
            return cls.from_dict(source.to_dict())
        raise TypeError(f"costs must be a path, a dict or a cost model, got {type(source).__name__}")


def _check_batch_entry(B, e) -> dict:
    """One per_batch entry {"plain": ratio, "V": [...], "verify": [ratios]} (ratios over B = 1, > 0)."""
    ok = (isinstance(e, dict) and isinstance(e.get("plain"), (int, float)) and e["plain"] > 0
          and isinstance(e.get("V"), list) and isinstance(e.get("verify"), list) and e["V"]
          and len(e["V"]) == len(e["verify"]) and e["V"] == sorted(set(e["V"]))
          and all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in e["verify"]))
    if not ok or int(B) < 1:
        raise ValueError(f"costs: per_batch[{B}] must be {{'plain': ratio > 0, 'V': increasing ints, 'verify': "
                         f"ratios > 0 per V}} for a batch size >= 1, got {e!r:.120}")
    return {"plain": float(e["plain"]), "V": [int(v) for v in e["V"]], "verify": [float(r) for r in e["verify"]]}
