"""Shared machinery of the learned controllers (RadarPolicy, LtdPolicy): the controller networks in
plain torch (for training), their packing into the fused `policy_step` op's argument layout (for
inference), input features, and safetensors + config.json I/O."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from radar_ext import ops
from radar_ext.policies.base import Policy
from radar_ext.policies.costs import PolicyCosts

FORMAT = 2          # what save_pretrained writes (docs/CONTROLLER_FORMAT.md)
FORMATS = (1, 2)    # what loads: format 1 (no history features, no skip action) decides as it always did
MAX_SKIP_RUN = 32   # default: consecutive plain steps after which a skipping policy drafts again
# Every beam / child score of the state before the first draft call: the only path is the root's empty one,
# whose log-probability is 0 (drafted scores are < 0). Not SCORE_FLOOR: a state of all-floor scores drives
# the nets' first layer to +-hundreds, which saturates the decision before training can shape it.
PRE_DRAFT_SCORE = 0.0
SCORE_FLOOR = -40.0   # -inf (dead beams, padding) and very unlikely scores are clamped here
SCORE_SCALE = 10.0    # LTD inputs: scores / 10 (RADAR keeps the raw log-probs, METHOD.md 5)
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class ControllerNet(nn.Module):
    """Optional LSTM cell (hidden H, may be 0) then MLP on cat(h, features): F (+H) -> G -> ReLU -> O.
    Same arithmetic as ops.policy_step; `step` returns logits (training), `pack` the op arguments."""

    def __init__(self, n_features: int, n_out: int, lstm_hidden: int = 0, mlp_hidden: int = 128):
        super().__init__()
        self.n_features, self.n_out, self.lstm_hidden, self.mlp_hidden = n_features, n_out, lstm_hidden, mlp_hidden
        self.lstm = nn.LSTMCell(n_features, lstm_hidden) if lstm_hidden else None
        self.fc1 = nn.Linear(lstm_hidden + n_features, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, n_out)

    def zero_state(self, batch: int):
        z = torch.zeros(batch, self.lstm_hidden)
        return z, z.clone()

    def step(self, x, h, c):
        """x [B, F], h, c [B, H] -> (logits [B, O], h_new, c_new)."""
        if self.lstm is not None:
            h, c = self.lstm(x, (h, c))
        return self.fc2(torch.relu(self.fc1(torch.cat([h, x], 1)))), h, c

    @torch.no_grad()
    def pack(self) -> tuple:
        """(w_ih, w_hh, b, w1, b1, w2, b2) in policy_step's layout (b = b_ih + b_hh, float32, contiguous)."""
        F, H = self.n_features, self.lstm_hidden
        if self.lstm is not None:
            w_ih, w_hh = self.lstm.weight_ih, self.lstm.weight_hh
            b = self.lstm.bias_ih + self.lstm.bias_hh
        else:
            w_ih, w_hh, b = torch.zeros(0, F), torch.zeros(0, 0), torch.zeros(0)
        return tuple(t.detach().float().contiguous().clone() for t in
                     (w_ih, w_hh, b, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias))


class FusedHead:
    """Inference wrapper: one ops.policy_step call per decision, recurrent state kept here."""

    def __init__(self, net: ControllerNet):
        self.weights = net.pack()
        self.H = net.lstm_hidden
        self.h = self.c = None

    def reset(self, batch: int = 1):
        self.h = torch.zeros(batch, self.H)
        self.c = torch.zeros(batch, self.H)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        if self.h is None or self.h.shape[0] != features.shape[0]:
            self.reset(features.shape[0])
        probs, self.h, self.c = ops.policy_step(features, self.h, self.c, *self.weights)
        return probs


def decide(probs: torch.Tensor, sample: bool, generator) -> int:
    """Index of the chosen action of row 0: argmax (ties -> lower index) or a draw."""
    if sample:
        return int(torch.multinomial(probs[0], 1, generator=generator))  # host sync: one decision
    p = probs.tolist()[0]  # host sync: one decision; a host copy, not argmax + item (two cold ATen ops)
    return max(range(len(p)), key=p.__getitem__)  # the first of equal maxima


def check_batch(t: torch.Tensor, name: str) -> None:
    if t.shape[0] != 1:
        raise NotImplementedError(f"learned policies decide for batch size 1 for now, got {name} with batch {t.shape[0]}")


def sorted_padded(scores: torch.Tensor, width: int) -> torch.Tensor:
    """scores [B, K] -> [B, width]: the best `width` descending, clamped at SCORE_FLOOR, floor-padded."""
    s = torch.sort(scores.float().clamp(min=SCORE_FLOOR), dim=1, descending=True).values[:, :width]
    if s.shape[1] < width:
        s = torch.cat([s, s.new_full((s.shape[0], width - s.shape[1]), SCORE_FLOOR)], 1)
    return s


TEMPERATURE_CAP = 2.0  # temperatures above this look like this one to the policies


def temperature_feature(temperature) -> torch.Tensor | float:
    """The generation's sampling temperature clamped to [0, TEMPERATURE_CAP] (0: greedy). Acceptance
    falls as the temperature rises (at T = 1 a drafted token is accepted with the target's probability
    of it, not by matching its argmax), so the depth and budget that pay differ."""
    if isinstance(temperature, torch.Tensor):
        return temperature.float().clamp(0.0, TEMPERATURE_CAP)
    return min(max(float(temperature), 0.0), TEMPERATURE_CAP)


def seq_len_feature(seq_len) -> torch.Tensor | float:
    """log(1 + seq_len) / 8: about 0..1 over typical lengths."""
    if isinstance(seq_len, torch.Tensor):
        return torch.log1p(seq_len.float()) / 8.0
    return math.log1p(seq_len) / 8.0


# ----------------------------------------------------------------------------- I/O

class LearnedPolicy(Policy):
    kind = ""
    machine_costs: dict = {}       # cost profile -> PolicyCosts (from_pretrained, train-policy set their own dict)
    costs_source = "constructor"   # where `costs` came from: "given", "stored", "stored for <profile>"

    def config_dict(self) -> dict:
        raise NotImplementedError

    def nets(self) -> dict:
        """name -> ControllerNet (weights are saved as '<name>.<param>')."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Re-pack the fused weights after the nets changed (training, loading)."""
        raise NotImplementedError

    def fork(self) -> "LearnedPolicy":
        twin = super().fork()
        twin.refresh()  # its own fused heads: their LSTM state is per sequence (the nets are shared, read only)
        return twin

    def save_pretrained(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {f"{name}.{k}": v.detach().float().contiguous().clone()
                 for name, net in self.nets().items() for k, v in net.state_dict().items()}
        save_file(state, str(path / WEIGHTS), metadata={"format": "pt", "kind": self.kind})
        cfg = self.config_dict()
        if self.machine_costs:
            cfg["machine_costs"] = {prof: c.to_dict() for prof, c in self.machine_costs.items()}
        (path / CONFIG).write_text(json.dumps(cfg, indent=1))

    @classmethod
    def read_config(cls, path) -> dict:
        path = Path(path)
        if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
            raise FileNotFoundError(f"{path} is not a saved policy: it needs {CONFIG} and {WEIGHTS} "
                                    "(write one with `radar train-policy`)")
        cfg = json.loads((path / CONFIG).read_text())
        if cfg.get("format") not in FORMATS:
            raise ValueError(f"{path / CONFIG}: policy format {cfg.get('format')!r} is not supported "
                             f"(expected one of {list(FORMATS)})")
        return cfg

    @classmethod
    def from_pretrained(cls, path=None, costs=None, prefix_len: float | None = None, drafter: str = "eagle"):
        """A saved policy directory (config.json + model.safetensors); None: the one shipped for the
        default target and head and `drafter` (radar_ext/data/policies/<target>/<kind>, models.default_policy_path).
        costs: this machine's calibration (a `radar calibrate` JSON path, a CostModel, a PolicyCosts or
        a cost dict), read at the policy's tree_topk and at prefix_len tokens (default: the calibration's
        mean prefix); it replaces the calibration stored with the policy. Without it, a policy that stores
        calibrations per machine profile (`machine_costs`, `radar train-policy --machine-costs`) reads the one
        of this machine's ops.cost_profile(), else its stored `costs` (`policy.costs_source` says which).
        An LTD policy's inputs are its cost features, so a policy trained on several cost curves (`radar
        train-policy --cost-curves`, `--extra-costs`) moves to this machine's curve; RADAR's decisions do not read costs (they are kept for reference)."""
        from safetensors.torch import load_file

        if path is None:
            from radar_ext.models import default_policy_path
            path = default_policy_path(cls.kind, drafter)
        cfg = cls.read_config(path)
        if cfg.get("kind") != cls.kind:
            raise ValueError(f"{Path(path) / CONFIG} holds a {cfg.get('kind')!r} policy, not {cls.kind!r}; "
                             f"load it with its own class or radar_ext.policies.load_policy")
        policy = cls.from_config(cfg)
        state = load_file(str(Path(path) / WEIGHTS))
        for name, net in policy.nets().items():
            want = net.state_dict()
            got = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            if set(got) != set(want):
                raise ValueError(f"{Path(path) / WEIGHTS}: the {name} weights {sorted(got)} do not match the "
                                 f"config's network {sorted(want)}")
            for k, v in want.items():
                if tuple(got[k].shape) != tuple(v.shape):
                    raise ValueError(f"{Path(path) / WEIGHTS}: {name}.{k} has shape {list(got[k].shape)}, the "
                                     f"config ({CONFIG}) implies {list(v.shape)}")
            net.load_state_dict(got)
        policy.machine_costs = machine_costs_from_config(cfg, Path(path) / CONFIG)
        if costs is not None:
            policy.costs = PolicyCosts.load(costs, tree_topk=policy.tree_topk, prefix_len=prefix_len)
            policy.costs_source = "given"
        else:
            from radar_ext.ops import cost_profile
            profile = cost_profile()
            # a VNNI machine whose policy has no calibration for it reads the plain AVX-512 one (the nearest)
            found = next((p for p in (profile, "cpu" if profile == "cpu-vnni" else None) if p in policy.machine_costs),
                         None)
            if found is not None:
                policy.costs = policy.machine_costs[found]
                policy.costs_source = f"stored for {found}"
            else:
                policy.costs_source = "stored"
        policy.refresh()
        return policy

    @classmethod
    def from_config(cls, cfg: dict):
        raise NotImplementedError


def config_value(cfg: dict, key: str, kind: str):
    if key not in cfg:
        raise ValueError(f"{kind} policy config is missing {key!r}")
    return cfg[key]


def format2_flags(cfg: dict, kind: str) -> dict:
    """history, skip and max_skip_run of a policy config: format 1 has neither feature (its layouts are
    format 2's with both off); format 2 must state all three."""
    if cfg.get("format") == 1:
        return {"history": False, "skip": False, "max_skip_run": MAX_SKIP_RUN}
    flags = {k: config_value(cfg, k, kind) for k in ("history", "skip", "max_skip_run")}
    for k in ("history", "skip"):
        if not isinstance(flags[k], bool):
            raise ValueError(f"{kind} policy config: {k} must be true or false, got {flags[k]!r}")
    return flags


def lookup_flag(cfg: dict, kind: str) -> bool:
    """A policy config's lookup flag (hybrid drafting's lookup features): optional, absent = off, so configs
    written before it load and decide unchanged."""
    v = cfg.get("lookup", False)
    if not isinstance(v, bool):
        raise ValueError(f"{kind} policy config: lookup must be true or false, got {v!r}")
    return v


def check_flags(kind: str, history, skip, max_skip_run) -> None:
    for name, v in (("history", history), ("skip", skip)):
        if not isinstance(v, bool):
            raise ValueError(f"{kind}: {name} must be True or False, got {v!r}")
    if isinstance(max_skip_run, bool) or not isinstance(max_skip_run, int) or max_skip_run < 1:
        raise ValueError(f"{kind}: max_skip_run must be an int >= 1, got {max_skip_run!r}")


def must_draft(step, max_skip_run: int, reads_history: bool) -> bool:
    """A skipping policy that reads the history features drafts once `max_skip_run` plain steps ran in a
    row: skipped cycles leave those features as they were, so without a probe one decision to skip would
    repeat to the end. A policy that does not read them learns nothing from a probe (its pre-draft inputs,
    temperature, position, costs and lookup, move without one), so it is never forced: a forced draft
    there is a cycle its own decision called a loss."""
    return reads_history and step.history is not None and step.history.skip_run >= max_skip_run


def check_features(cfg: dict, key: str, expected: list, kind: str) -> None:
    got = cfg.get(key)
    if got != expected:
        raise ValueError(f"{kind} policy config: {key} = {got} does not match the features this version "
                         f"computes ({expected}); retrain the policy")


def machine_costs_from_config(cfg: dict, where) -> dict:
    """A policy config's optional `machine_costs`: {cost profile: PolicyCosts} (absent: {})."""
    raw = cfg.get("machine_costs", {})
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in raw.items()):
        raise ValueError(f"{where}: machine_costs must map a cost profile name to a costs object, got {raw!r}")
    try:
        return {prof: PolicyCosts.from_dict(c) for prof, c in raw.items()}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: machine_costs holds an invalid costs object ({type(e).__name__}: {e})") from None


def costs_from_config(cfg: dict):
    c = cfg.get("costs")
    return None if c is None else PolicyCosts.from_dict(c)
