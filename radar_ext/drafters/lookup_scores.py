"""LookupScores: calibrated scores for context-lookup nodes, on the scale of EAGLE's cumulative
log-probabilities, so one best-V selection ranks both kinds of node (METHOD.md 9).

A lookup node's score = its parent's score + log r(match length, depth, agreeing occurrences), r being
the rate at which the target accepted such a node when its parent was accepted, measured by replaying
lookups against the target's own greedy answers to training prompts (radar_ext.training.lookup_fit).
The root's score is 0 (EAGLE's convention), so a path's score estimates log P(the whole path is
accepted), as EAGLE's cumulative log-probability does for its nodes. Every r < 1, so a child never
scores above its parent and the best V of a pool stays closed under "parent of".

Cells: match length 1..max_match_len (longer matches are capped), depth 1..max_depth, agreeing
occurrences in COUNT_BUCKETS (1, 2, 3, 4 or more). A sparse cell is smoothed towards its coarser cell
(depth -> depth and match length -> all three) with `smoothing` pseudo-counts.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

SCHEMA = "radar_ext.lookup_scores/1"
COUNT_BUCKETS = 4          # agreeing occurrences 1, 2, 3, >= 4
RATE_BOUNDS = (1e-4, 0.999)  # r stays < 1 so scores strictly decrease along a path


class LookupScores:
    def __init__(self, log_rate: np.ndarray, source: dict | None = None, nodes: np.ndarray | None = None):
        """log_rate [max_match_len, max_depth, COUNT_BUCKETS] float: log acceptance rate per cell."""
        log_rate = np.asarray(log_rate, dtype=np.float64)
        if log_rate.ndim != 3 or log_rate.shape[2] != COUNT_BUCKETS or min(log_rate.shape) < 1:
            raise ValueError(f"log_rate must be [max_match_len, max_depth, {COUNT_BUCKETS}] with sizes >= 1, "
                             f"got shape {list(log_rate.shape)}")
        if not np.all(np.isfinite(log_rate)) or np.any(log_rate >= 0):
            raise ValueError("log_rate must hold finite values < 0 (rates in (0, 1)), "
                             f"got values in [{log_rate.min()}, {log_rate.max()}]")
        self.log_rate = log_rate
        self.max_match_len, self.max_depth = log_rate.shape[:2]
        self.source = dict(source or {})
        self.nodes = nodes

    # ------------------------------------------------------------------ scoring
    def cell(self, match_len, depth, count):
        """Table indices of nodes [K] (numpy int arrays): capped to the table's range."""
        m = np.clip(np.asarray(match_len), 1, self.max_match_len) - 1
        d = np.clip(np.asarray(depth), 1, self.max_depth) - 1
        c = np.clip(np.asarray(count), 1, COUNT_BUCKETS) - 1
        return m, d, c

    def score(self, trie) -> np.ndarray:
        """Cumulative scores [K] float64 of a LookupTrie's nodes (parents come before children)."""
        step = self.log_rate[self.cell(trie.match_len, trie.depth, trie.count)].tolist()
        out = []
        for s, p in zip(step, trie.parents.tolist()):  # a few dozen nodes; parents first, so one pass suffices
            out.append(s + out[p] if p >= 0 else s)
        return np.array(out, dtype=np.float64)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, cols: dict, max_match_len: int, max_depth: int, smoothing: float = 4.0,
            source: dict | None = None) -> "LookupScores":
        """cols: match_len, depth, count, hit [N] int arrays (lookup_fit.replay) -> the smoothed table."""
        for name in ("match_len", "depth", "count", "hit"):
            if name not in cols:
                raise ValueError(f"cols must hold match_len, depth, count and hit arrays; missing {name!r}")
        if not smoothing > 0:
            raise ValueError(f"smoothing must be > 0, got {smoothing}")
        hit = np.asarray(cols["hit"], dtype=np.float64)
        if hit.size == 0:
            raise ValueError("cols hold no lookup node: nothing to calibrate on")
        shape = (max_match_len, max_depth, COUNT_BUCKETS)
        tmp = cls(np.full(shape, -1.0))
        m, d, c = tmp.cell(cols["match_len"], cols["depth"], cols["count"])
        n = np.zeros(shape)
        h = np.zeros(shape)
        np.add.at(n, (m, d, c), 1.0)
        np.add.at(h, (m, d, c), hit)
        k = float(smoothing)
        g = (h.sum() + k * 0.5) / (n.sum() + k)                                       # all nodes
        rd = (h.sum((0, 2)) + k * g) / (n.sum((0, 2)) + k)                            # [D]
        rmd = (h.sum(2) + k * rd[None, :]) / (n.sum(2) + k)                           # [M, D]
        r = (h + k * rmd[:, :, None]) / (n + k)                                       # [M, D, C]
        r = np.clip(r, *RATE_BOUNDS)
        return cls(np.log(r), source=source, nodes=n.astype(np.int64))

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "max_match_len": self.max_match_len, "max_depth": self.max_depth,
             "count_buckets": COUNT_BUCKETS, "log_rate": self.log_rate.tolist(), "source": self.source}
        if self.nodes is not None:
            d["nodes"] = self.nodes.tolist()
        return d

    def save(self, path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path) -> "LookupScores":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"lookup scores {str(path)!r} not found (fit them with "
                                    "`python -m radar_ext.training.lookup_fit`)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"lookup scores {str(path)!r} are not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"lookup scores {str(path)!r}: schema must be {SCHEMA!r}, "
                             f"got {d.get('schema') if isinstance(d, dict) else type(d).__name__!r}")
        nodes = np.asarray(d["nodes"], dtype=np.int64) if "nodes" in d else None
        return cls(np.asarray(d["log_rate"]), source=d.get("source"), nodes=nodes)

    def describe(self) -> str:
        """The rates by depth (rows) and match length (columns), for one agreeing occurrence and for >= 4."""
        lines = []
        for ci, label in ((0, "1 occurrence"), (COUNT_BUCKETS - 1, f">= {COUNT_BUCKETS} occurrences")):
            lines.append(f"acceptance rate, {label}: depth x match length 1..{self.max_match_len}")
            for di in range(self.max_depth):
                lines.append(f"  d={di + 1:2d} " + " ".join(f"{math.exp(v):.2f}" for v in self.log_rate[:, di, ci]))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"LookupScores(max_match_len={self.max_match_len}, max_depth={self.max_depth})"
