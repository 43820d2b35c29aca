"""Offline training of the learned controllers from `radar collect` episodes (METHOD.md 5, 6).

RADAR: REINFORCE. Per cycle, sample stop/continue after each draft call (forced stop at
max_draft_calls), sample the accepted length L from the recorded distribution at the chosen n and
the training budget V; reward -alpha per continue and beta * (L + 1) / T(n) at the stop,
T(n) = T_verify(V) + n * (t_draft + t_policy); discount gamma; baseline = mean return per step.

LTD: throughput reward E[L + 1] / T_cycle(n, V), T_cycle = n * t_draft + T_verify(V) + t_policy per
decision. Offline policy gradient with the exact expectation (every action's reward is known from
the recorded distributions, so the expected reward is differentiated directly instead of sampled):
size head with the depth head frozen, then depth with size frozen, `rounds` times.

Model selection: EXPECTED THROUGHPUT on the validation split, sum E[L + 1] / sum E[T_cycle] over
cycles with the deterministic (argmax) policy, compared with every static (n, V) of the same episodes.
Episodes of several temperatures (T=0 and T=1 collections) are scored per temperature against that
temperature's best static (n, V), and the selection score is the geometric mean of those ratios, so
the many cheap greedy cycles cannot buy a loss at T=1.

Skip (docs/CONTROLLER_FORMAT.md): with `skip` a policy may stop before the first draft call (n = 0, a
plain step). Such a cycle earns exactly 1 token in T_skip = t_plain + t_policy (one plain step through
our verify path, from the calibration, else t_ar; and the pre-draft decision), and every drafted cycle
pays that decision's t_policy too. With `history` every decision also reads the History features
recorded before the cycle (format-2 episodes). The recorded cycles advance the text with the full tree, so their history is the
full tree's, not the policy's own (shallower) one: an offline approximation the dev-set benchmark checks.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from radar_ext.policies.costs import PolicyCosts
from radar_ext.policies.learned import PRE_DRAFT_SCORE, seq_len_feature, sorted_padded, temperature_feature
from radar_ext.policies.ltd import CONTINUE, STOP, LtdPolicy, depth_features, size_features
from radar_ext.policies.radar import RadarPolicy, radar_features
from radar_ext.training.episodes import Episodes, load_episodes


@dataclass
class TrainPolicyConfig:
    episodes: Path | list           # one `radar collect` directory or several (merged)
    out_dir: Path
    kind: str = "radar"             # radar | ltd
    costs: str | None = None        # calibration JSON; None: estimated from the episodes' own timings
    prefix_len: float | None = None  # context length the calibration is read at; None: the training cycles' mean
    epochs: int = 30                # RADAR: epochs; LTD: epochs per phase
    rounds: int = 2                 # LTD: (size, depth) rounds
    batch_size: int = 256
    lr: float | None = None         # default: RADAR 1e-4 (METHOD.md 5), LTD 1e-3
    gamma: float = 0.99
    alpha: float = 0.0              # RADAR: penalty per continue
    beta: float | None = None       # RADAR: stop reward scale; default t_ar (reward ~ speedup over AR)
    verify_budget: int = 60         # RADAR: the fixed V (must be in the episodes' budget set)
    entropy: float = 0.0            # LTD: bonus on the mean entropy of the trained head's decisions
    reward: str = "ratio"           # LTD: ratio (per-cycle tokens/s) or rate (the decoding's tokens/s, linearised)
    cost_curves: int = 1            # LTD: train on the calibrated curve plus cost_curves - 1 perturbed ones
    cost_jitter: float = 1.0        # LTD: half-width of the perturbation's log-scale factors
    lstm_hidden: int = 128
    mlp_hidden: int = 128
    history: bool = False           # every decision also reads the History features (format-2 episodes)
    skip: bool = False              # a decision before the first draft call: a plain step (n = 0)
    max_skip_run: int = 32          # skipping policies draft after this many plain steps in a row
    lookup: bool = False            # LTD: the decisions also read the cycle's context-lookup features (hybrid episodes)
    batch_costs: bool = False       # LTD: also train on each calibrated batch size's curve (PolicyCosts.at_batch)
    extra_costs: list = field(default_factory=list)  # LTD: other machines' calibrations (or policy configs) whose
                                    # curves (perturbed and batched as the main one's) join the training curves
    machine_costs: dict = field(default_factory=dict)  # cost profile (ops.COST_PROFILES) -> calibration or policy
                                    # config: stored with the policy, read where ops.cost_profile() matches
    seed: int = 0
    threads: int = 0


# ----------------------------------------------------------------------------- evaluation

def expected_tokens(ep: Episodes) -> torch.Tensor:
    """E[L + 1] per cycle, stopping point and budget: [C, N, nV] float64."""
    dist = ep["accept_dist"].double()                                    # [C, N, nV, N+1]
    return (dist * torch.arange(1, dist.shape[-1] + 1, dtype=torch.float64)).sum(-1)


def verify_times(costs: PolicyCosts, W: int, N: int, budgets) -> torch.Tensor:
    """T_verify of the tree actually sent for every (n, V): [N, nV] float64. The pool after n calls
    holds W + (n - 1) W^2 nodes, so a budget above that verifies the whole pool (CandidatePool.best)."""
    return torch.tensor([[costs.t_verify(min(v, W + (n - 1) * W * W)) for v in budgets] for n in range(1, N + 1)],
                        dtype=torch.float64)


def decisions(n: torch.Tensor, N: int) -> torch.Tensor:
    """Depth decisions made when stopping after n calls (none is asked at the cap N)."""
    return torch.clamp(n, max=N - 1)


def hybrid_verify_times(ep: Episodes, costs: PolicyCosts) -> torch.Tensor:
    """T_verify of the tree each cycle of a hybrid collection sends for every (n, V): [C, N, nV] float64. Its
    pool after n calls is the EAGLE pool plus the lookup nodes (pool_top's finite entries), so a budget
    verifies min(V, that cycle's pool) nodes: not the EAGLE pool's count, which would price a 24-node tree of
    lookups as 4 nodes. A full pool_top (K entries: the pool may be larger) verifies V."""
    budgets = ep.meta["budgets"]
    top = ep["pool_top"]
    nodes = torch.isfinite(top).sum(-1)                                       # [C, N]
    nodes = torch.where(nodes >= top.shape[-1], max(budgets), nodes)
    V = torch.minimum(torch.tensor(budgets).view(1, 1, -1), nodes.unsqueeze(-1)).clamp(min=1)  # [C, N, nV]
    table = torch.tensor([costs.t_verify(v) for v in range(int(V.max()) + 1)], dtype=torch.float64)
    return table[V]


def cycle_times(ep: Episodes, costs: PolicyCosts, policy: bool = True, size_decision: bool = True,
                skip: bool = False) -> torch.Tensor:
    """T_cycle of every cycle, stopping point and budget: [C, N, nV] float64, n t_draft + T_verify(V), plus with
    `policy` one t_policy per depth decision, (size_decision) one for the budget and (skip) one for the
    decision before the first call. EAGLE collections: the same for every cycle (verify_times); hybrid ones:
    each cycle's own pool size (hybrid_verify_times)."""
    N = ep.meta["max_draft_calls"]
    n = torch.arange(1, N + 1, dtype=torch.float64).view(N, 1)
    if ep.meta.get("drafter", "eagle") == "hybrid":
        T = n * costs.t_draft + hybrid_verify_times(ep, costs)
    else:
        T = (n * costs.t_draft + verify_times(costs, ep.meta["tree_topk"], N, ep.meta["budgets"])).expand(
            ep["pool_top"].shape[0], N, len(ep.meta["budgets"]))
    if policy:
        T = T + (decisions(n, N) + int(size_decision) + int(skip)) * costs.t_policy
    return T


def skip_time(costs: PolicyCosts, policy: bool = True) -> float:
    """T of a skipped cycle: one plain step (PolicyCosts.plain_step: the calibration's t_plain, else t_ar),
    plus with `policy` the decision that chose it."""
    return costs.plain_step() + (costs.t_policy if policy else 0.0)


def plain_throughput(costs: PolicyCosts) -> float:
    """Our own plain decoding's tokens/s under these costs (every cycle a plain step, no decision)."""
    return 1.0 / costs.plain_step()


def static_grid(ep: Episodes, costs: PolicyCosts) -> torch.Tensor:
    """Expected throughput (tokens/s) of every static (n, V): [N, nV] float64."""
    return expected_tokens(ep).sum(0) / cycle_times(ep, costs, policy=False).sum(0)


def best_static_throughput(ep: Episodes, costs: PolicyCosts, v_idx: int | None = None) -> float:
    """The best static throughput of these cycles; with v_idx, the best n at that budget (RADAR's
    opponent: it verifies one fixed V)."""
    grid = static_grid(ep, costs)
    return float((grid if v_idx is None else grid[:, v_idx]).max())


def subset(ep: Episodes, mask: torch.Tensor) -> Episodes:
    """The cycles where mask [C] is True."""
    return Episodes(ep.meta, {k: v[mask] for k, v in ep.tensors.items()})


def temperatures(ep: Episodes) -> list:
    """The distinct collection temperatures of the cycles, ascending."""
    return sorted(set(ep["temperature"].tolist()))


def policy_throughput(ep: Episodes, costs: PolicyCosts, n: torch.Tensor, v_idx: torch.Tensor,
                      size_decision: bool, skip: bool = False) -> dict:
    """Expected throughput of per-cycle choices n [C] (1..N; with skip 0..N, 0 a plain step: 1 token in
    skip_time), v_idx [C] (index into budgets; ignored where n = 0, whose V is 0)."""
    if not skip and bool((n < 1).any()):
        raise ValueError("n: a stopping point 0 (a skipped cycle) needs skip=True")
    E = expected_tokens(ep)
    C = E.shape[0]
    drafted = n > 0
    nd = n.clamp(min=1)
    e = torch.where(drafted, E[torch.arange(C), nd - 1, v_idx], torch.ones(C, dtype=torch.float64))
    t = torch.where(drafted, cycle_times(ep, costs, size_decision=size_decision, skip=skip)[torch.arange(C), nd - 1, v_idx],
                    torch.full((C,), skip_time(costs), dtype=torch.float64))
    budgets = torch.tensor(ep.meta["budgets"])
    V = torch.where(drafted, budgets[v_idx], 0)
    return {"throughput": float(e.sum() / t.sum()), "tau": float(e.mean()), "mean_draft_calls": float(n.double().mean()),
            "mean_verify_budget": float(V.double().mean()), "cycles": C,
            "skip_share": float((~drafted).double().mean()) if C else 0.0}


def oracle_throughput(ep: Episodes, costs: PolicyCosts, v_idx: int | None = None, skip: bool = False) -> dict:
    """The ceiling of any controller on these cycles: the best per-cycle choice of (n, V) (with v_idx:
    of n at that V; with skip also n = 0, a plain step) knowing every cycle's expected accepted length,
    maximising sum E[L + 1] / sum T (Dinkelbach's iteration: choose argmax E - lambda T per cycle, set
    lambda to the ratio reached; it stops at the exact maximum). Costs as policy_throughput's, with one
    size decision unless v_idx."""
    E = expected_tokens(ep)
    C = E.shape[0]
    T = cycle_times(ep, costs, size_decision=v_idx is None, skip=skip)
    if v_idx is not None:
        E, T = E[:, :, v_idx:v_idx + 1], T[:, :, v_idx:v_idx + 1]
    if C == 0:
        return {"throughput": 0.0, "cycles": 0, "mean_draft_calls": 0.0, "skip_share": 0.0}
    Ef, Tf = E.reshape(C, -1), T.reshape(C, -1)
    if skip:  # action 0: the plain step
        Ef = torch.cat([torch.ones(C, 1, dtype=torch.float64), Ef], 1)
        Tf = torch.cat([torch.full((C, 1), skip_time(costs), dtype=torch.float64), Tf], 1)
    lam, a = 0.0, None
    for _ in range(100):
        a_new = (Ef - lam * Tf).argmax(1)
        if a is not None and torch.equal(a_new, a):
            break
        a = a_new
        lam = float(Ef.gather(1, a.view(C, 1)).sum() / Tf.gather(1, a.view(C, 1)).sum())
    if skip:
        n = torch.where(a == 0, 0, (a - 1) // E.shape[2] + 1)
        return {"throughput": lam, "cycles": C, "mean_draft_calls": float(n.double().mean()),
                "skip_share": float((a == 0).double().mean())}
    return {"throughput": lam, "cycles": C, "mean_draft_calls": float((a // E.shape[2]).double().mean() + 1),
            "skip_share": 0.0}


def radar_extra(policy: RadarPolicy, ep: Episodes) -> torch.Tensor | None:
    """[C, 6] the history layout's extra inputs (log seq_len, the History features), None without history."""
    if not policy.history:
        return None
    return torch.cat([seq_len_feature(ep["seq_len"]).view(-1, 1), ep.history_features()], 1)


def radar_skip_input(beams: torch.Tensor, temperature, extra) -> torch.Tensor:
    """The state of the decision before the first draft call (beams [C, N, W]): every beam score
    PRE_DRAFT_SCORE."""
    return radar_features(torch.full(beams.shape[:1] + beams.shape[2:], PRE_DRAFT_SCORE), temperature, extra)


def radar_decisions(policy: RadarPolicy, beams: torch.Tensor, temperature, extra, calls: int) -> list:
    """A RadarPolicy's (stop, continue) logits [C, 2] at every decision of the cycles beams [C, N, W], in
    order, with the recurrent state as at inference: before the first call (skip only: one step from the
    zero state), then after calls 1..`calls` from the zero state again (the drafter's reset())."""
    net, C = policy.net, beams.shape[0]
    out = [net.step(radar_skip_input(beams, temperature, extra), *net.zero_state(C))[0]] if policy.skip else []
    h, c = net.zero_state(C)
    for t in range(calls):
        logits, h, c = net.step(radar_features(beams[:, t], temperature, extra), h, c)
        out.append(logits)
    return out


@torch.no_grad()
def radar_logits(policy: RadarPolicy, ep: Episodes):
    """(pre [C, 2] or None, calls [C, K, 2]): radar_decisions on every recorded cycle, K = min(N,
    max_draft_calls) - 1."""
    beams = ep["beam_scores"]
    C, N, _ = beams.shape
    out = radar_decisions(policy, beams, ep["temperature"], radar_extra(policy, ep), min(N, policy.max_draft_calls) - 1)
    pre = out.pop(0) if policy.skip else None
    return pre, torch.stack(out, 1) if out else torch.zeros(C, 0, 2)


@torch.no_grad()
def radar_choices(policy: RadarPolicy, ep: Episodes) -> torch.Tensor:
    """Argmax stopping point n [C] of a RadarPolicy on every recorded cycle (radar_logits); with skip,
    n = 0 where it stops before the first call."""
    C, N = ep["beam_scores"].shape[:2]
    pre, calls = radar_logits(policy, ep)
    n = torch.full((C,), N, dtype=torch.int64)
    if pre is not None:
        n[pre[:, STOP] >= pre[:, CONTINUE]] = 0
    for t in range(calls.shape[1]):
        stop = (calls[:, t, STOP] >= calls[:, t, CONTINUE]) & (n == N)
        n[stop] = t + 1
    return n.clamp(max=policy.max_draft_calls)


def _ltd_inputs(policy: LtdPolicy, ep: Episodes):
    """Depth features [C, N, Fd] and size features [C, N, Fs] of every cycle and stopping point, and with
    skip the depth features at call 0 [C, Fd] (every child score PRE_DRAFT_SCORE), else None."""
    child, pool = ep["child_scores"], ep["pool_top"]
    C, N, W, _ = child.shape
    cost = policy.cost_tensor()
    sl = seq_len_feature(ep["seq_len"])
    tf = temperature_feature(ep["temperature"])
    hf = ep.history_features() if policy.history else None
    lf = ep.lookup_features() if getattr(policy, "lookup", False) else None
    fd, fs = [], []
    for t in range(N):
        frac = torch.full((C,), (t + 1) / policy.max_draft_calls)
        fd.append(depth_features(sorted_padded(child[:, t].reshape(C, -1), W * W), sl, frac, tf, cost, hf, lf))
        fs.append(size_features(sorted_padded(pool[:, t], policy.pool_topk), sl, frac, tf, cost, hf, lf))
    f0 = (depth_features(torch.full((C, W * W), PRE_DRAFT_SCORE), sl, torch.zeros(C), tf, cost, hf, lf)
          if policy.skip else None)
    return torch.stack(fd, 1), torch.stack(fs, 1), f0


@torch.no_grad()
def ltd_choices(policy: LtdPolicy, ep: Episodes, feats=None):
    """Argmax (n [C], v_idx [C]) of an LtdPolicy on every recorded cycle (with skip, n = 0 where the depth
    head stops at call 0; v_idx there is unused)."""
    fd, fs, f0 = feats or _ltd_inputs(policy, ep)
    C, N, _ = fd.shape
    n = torch.full((C,), N, dtype=torch.int64)
    if f0 is not None:
        logits, _, _ = policy.depth_net.step(f0, *policy.depth_net.zero_state(C))
        n[logits[:, STOP] >= logits[:, CONTINUE]] = 0
    for t in range(N - 1):
        logits, _, _ = policy.depth_net.step(fd[:, t], *policy.depth_net.zero_state(C))
        stop = (logits[:, STOP] >= logits[:, CONTINUE]) & (n == N)
        n[stop] = t + 1
    logits, _, _ = policy.size_net.step(fs[torch.arange(C), n.clamp(min=1) - 1], *policy.size_net.zero_state(C))
    return n, logits.argmax(1)


def evaluate(policy, ep: Episodes, costs: PolicyCosts, v_idx_fixed: int | None = None) -> dict:
    """policy_throughput over all cycles, plus per temperature (`by_temperature`: the policy's and that
    temperature's best static throughput, for RADAR the best static at its fixed V, and their ratio;
    plain decoding's throughput; the oracle of the policy's own action set and `room`, the share of the
    oracle's gain over the best static that the policy gets) and `score`, the geometric mean of those
    ratios (the selection criterion). `skip_share`: cycles the policy makes plain steps."""
    skip = bool(getattr(policy, "skip", False))
    if isinstance(policy, RadarPolicy):
        n = radar_choices(policy, ep)
        v, size_decision = torch.full_like(n, v_idx_fixed), False
    else:
        (n, v), size_decision = ltd_choices(policy, ep), True
    res = policy_throughput(ep, costs, n, v, size_decision, skip)
    res.update(history=bool(getattr(policy, "history", False)), skip=skip)
    temp = ep["temperature"]
    res["by_temperature"], logs = {}, []
    for t in temperatures(ep):
        m = temp == t
        sub = subset(ep, m)
        r = policy_throughput(sub, costs, n[m], v[m], size_decision, skip)
        best = best_static_throughput(sub, costs, None if size_decision else v_idx_fixed)  # RADAR: at its own V
        r.update(best_static=best, ratio=r["throughput"] / best, plain=plain_throughput(costs))
        logs.append(math.log(r["ratio"]))
        res["by_temperature"][f"{t:g}"] = r
    res["score"] = math.exp(sum(logs) / len(logs)) if logs else 0.0
    return res


def oracle_room(policy_tps: float, best_static: float, oracle_tps: float) -> float | None:
    """The share of the oracle's gain over the best static that a policy gets (None: no room)."""
    room = oracle_tps - best_static
    return (policy_tps - best_static) / room if room > 1e-12 * max(oracle_tps, 1.0) else None


# ----------------------------------------------------------------------------- costs

def costs_from_episodes(ep: Episodes, t_policy: float) -> PolicyCosts:
    """A rough PolicyCosts from the episodes' own timings (draft call mean; T_verify(V) from a
    least-squares line through (union size, verify seconds)); for smoke runs without a calibration."""
    t_draft = float(ep["t_draft"].double().mean())
    x, y = ep["verify_nodes"].double(), ep["t_verify"].double()
    if x.numel() > 1 and float(x.var()) > 0:
        b = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
        b = max(b, 0.0)
    else:
        b = 0.0
    a = max(float(y.mean()) - b * float(x.mean()), 1e-6)
    budgets = ep.meta["budgets"]
    return PolicyCosts(t_draft, t_policy, a, [0] + list(budgets), [a] + [a + b * v for v in budgets])


def measure_policy_time(policy, W: int, repeats: int = 200) -> float:
    """Seconds of one fused decision on this machine (median of `repeats`)."""
    from radar_ext.policies.base import CostInfo, DraftStep

    step = DraftStep(2, torch.sort(torch.randn(1, W), descending=True).values, torch.randn(1, W, W), 100, CostInfo())
    policy.reset()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.should_continue(step)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


# ----------------------------------------------------------------------------- training

def _radar_reinforce_step(policy, opt, ep, idx, v_idx, costs, cfg, beta, gen, extra=None):
    """One REINFORCE update on the cycles idx (extra [C, 6]: radar_extra of the episodes, for a history
    policy). With skip, decision 0 comes before the first call (one step from the zero state; its stop
    is a plain step, n = 0, which earns beta * 1 / skip_time) and the calls' steps start from the zero
    state again. Returns (mean return, mean n)."""
    beams, dist = ep["beam_scores"][idx], ep["accept_dist"][idx, :, v_idx]  # [B, N, W], [B, N, N+1]
    temp = ep["temperature"][idx]
    ex = None if extra is None else extra[idx]
    B, N, _ = beams.shape
    s = int(policy.skip)
    logps, acts = [], []
    for logits in radar_decisions(policy, beams, temp, ex, N - 1):   # the LSTM runs on whatever is sampled
        logp = torch.log_softmax(logits, 1)
        a = torch.multinomial(logp.exp().detach(), 1, generator=gen).view(B)
        logps.append(logp.gather(1, a.view(B, 1)).view(B))
        acts.append(a)
    K = len(acts)                                                        # decision steps
    if K == 0:
        return 0.0, float(N)
    acts = torch.stack(acts, 1)                                          # [B, K]
    logps = torch.stack(logps, 1)
    stopped = (acts == STOP)
    first = torch.where(stopped.any(1), stopped.float().argmax(1), torch.full((B,), K - 1))  # last decision index
    n = torch.where(stopped.any(1), first + 1 - s, torch.full((B,), N))  # calls made
    nd = n.clamp(min=1)
    L = torch.multinomial(dist[torch.arange(B), nd - 1].clamp(min=0) + 1e-12, 1, generator=gen).view(B)
    T = cycle_times(ep, costs, size_decision=False, skip=bool(s))[idx, nd - 1, v_idx]
    if s:
        L = torch.where(n == 0, 0, L)
        T = torch.where(n == 0, skip_time(costs), T)
    steps = torch.arange(K)
    alive = steps.view(1, K) <= first.view(B, 1)                         # decisions actually taken
    r = torch.where(alive & (acts == CONTINUE), -cfg.alpha, 0.0).double()
    r[torch.arange(B), first] += beta * (L + 1).double() / T             # at the stop (or the cap)
    G = torch.zeros(B, K, dtype=torch.float64)
    run = torch.zeros(B, dtype=torch.float64)
    for t in reversed(range(K)):
        run = r[:, t] + cfg.gamma * run * alive[:, t]
        G[:, t] = run
    # baseline: the mean return per step among the batch's cycles of the same temperature (a state
    # input, so still unbiased; greedy and sampled cycles have very different returns)
    base = torch.zeros(B, K, dtype=torch.float64)
    for t in temp.unique():
        m = temp == t
        base[m] = (G[m] * alive[m]).sum(0) / alive[m].sum(0).clamp(min=1)
    adv = ((G - base) * alive).float()
    loss = -(logps * adv).sum() / B
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(G[:, 0].mean()), float(n.double().mean())


@torch.no_grad()
def _radar_skip_targets(policy: RadarPolicy, ep: Episodes, v_idx: int, costs: PolicyCosts):
    """What RADAR's skip phase fits, from the policy as the earlier phase left it (every cycle drafted):
    (the pre-draft label [C]: STOP where a plain step pays, its weight [C], the later decisions' actions [C, K]
    to keep). A cycle's advantage of the plain step is the throughput's own, linearised around the drafting
    policy's rate lam at that temperature: (1 - lam T_skip) - (E[L + 1] - lam T_cycle), so for cycles that the
    pre-draft inputs cannot tell apart the fitted decision skips exactly when plain decoding's 1 / T_skip beats
    the drafting's sum E / sum T; weights scaled by lam times the mean drafted cycle time per temperature."""
    with _SkipAction(policy, False):
        n = radar_choices(policy, ep)
        _, calls = radar_logits(policy, ep)
    C = n.shape[0]
    E = expected_tokens(ep)[torch.arange(C), n - 1, v_idx]
    T = cycle_times(ep, costs, size_decision=False, skip=True)[torch.arange(C), n - 1, v_idx]
    T0 = skip_time(costs)
    adv = torch.empty(C, dtype=torch.float64)
    temp = ep["temperature"]
    for t in temp.unique():
        m = temp == t
        lam = float(E[m].sum() / T[m].sum())
        adv[m] = ((1.0 - lam * T0) - (E[m] - lam * T[m])) / (lam * float(T[m].mean()))
    label = torch.where(adv > 0, STOP, CONTINUE)
    return label, adv.abs().float(), calls.argmax(2)


def _radar_skip_step(policy, opt, ep, idx, targets, extra=None) -> float:
    """One update of RADAR's skip phase on the cycles idx: the pre-draft decision (one step from the zero
    state) fitted to _radar_skip_targets' labels by cross-entropy weighted by the advantage at stake, and the
    later decisions held at the actions they took before (cross-entropy to them: one network makes both).
    Returns the weighted share of pre-draft decisions that agree with their labels."""
    label, w, keep = (x[idx] for x in targets)
    beams, temp = ep["beam_scores"][idx], ep["temperature"][idx]
    ex = None if extra is None else extra[idx]
    out = radar_decisions(policy, beams, temp, ex, keep.shape[1])
    pre = out[0]
    ce = torch.nn.functional.cross_entropy(pre, label, reduction="none")
    loss = (w * ce).sum() / w.sum().clamp(min=1e-12)
    if keep.shape[1]:
        later = torch.stack(out[1:], 1)                                     # [B, K, 2]
        loss = loss + torch.nn.functional.cross_entropy(later.reshape(-1, 2), keep.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        return float((w * (pre.argmax(1) == label).float()).sum() / w.sum().clamp(min=1e-12))


def _ltd_rewards(ep, costs, reward: str = "ratio", skip: bool = False) -> torch.Tensor:
    """Reward of every (cycle, n, V): [C, N, nV], scaled per temperature so that its best static
    (n, V) has mean reward 1.0 (cycles of every temperature weigh alike; greedy cycles' rewards differ
    far more between actions and would otherwise dominate).
    ratio: E[L + 1] / T_cycle, each cycle's own tokens per second (METHOD.md 6).
    rate:  1 + (E[L + 1] - lambda T_cycle) / (lambda T_best), lambda the best static throughput
           sum E / sum T and T_best its cycle time: the linearisation of the decoding's tokens per
           second (sum of tokens / sum of time, not the mean of per-cycle ratios) around that static
           tree, whose gradient in any one cycle's choice is the throughput's own. A ratio reward
           overpays cheap cycles: it may take a short cycle that accepts little over a longer one that
           adds tokens at more than the running rate."""
    return _ltd_reward_table(ep, costs, reward, skip)[0]


def _ltd_reward_table(ep, costs, reward: str = "ratio", skip: bool = False):
    """(_ltd_rewards [C, N, nV], the skipped cycle's reward [C] in the same scale): a plain step's 1 token
    in skip_time; with skip every drafted cycle also pays the pre-draft decision."""
    E = expected_tokens(ep)
    T = cycle_times(ep, costs, skip=skip)                                   # [C, N, nV]
    T0 = skip_time(costs)
    temp = ep["temperature"]
    R0 = torch.empty(E.shape[0], dtype=torch.float64)
    if reward == "ratio":
        R = E / T
        for t in temp.unique():
            m = temp == t
            scale = R[m].mean(0).max()
            R[m] = R[m] / scale
            R0[m] = (1.0 / T0) / scale
        return R.float(), R0.float()
    if reward != "rate":
        raise ValueError(f"reward must be 'ratio' or 'rate', got {reward!r}")
    R = torch.empty_like(E)
    for t in temp.unique():
        m = temp == t
        Tm = T[m].mean(0)
        thr = E[m].mean(0) / Tm                                             # static (n, V) throughputs
        k = int(thr.argmax())
        lam, t_best = float(thr.reshape(-1)[k]), float(Tm.reshape(-1)[k])
        R[m] = 1 + (E[m] - lam * T[m]) / (lam * t_best)
        R0[m] = 1 + (1.0 - lam * T0) / (lam * t_best)
    return R.float(), R0.float()


def perturbed_costs(costs: PolicyCosts, draft: float, base: float, slope: float) -> PolicyCosts:
    """The calibrated curve with its draft call scaled by `draft`, its smallest-V verify by `base` and
    every step above it by `slope`, the plain step (t_plain) like the smallest-V verify (t_ar and t_policy
    kept; the policies see costs relative to t_ar):
    the same staircase on a machine whose draft calls, fixed verify cost and per-token verify cost
    differ."""
    s0 = costs.verify_seconds[0]
    return PolicyCosts(costs.t_draft * draft, costs.t_policy, costs.t_ar, list(costs.verify_budgets),
                       [s0 * base + max(v - s0, 0.0) * slope for v in costs.verify_seconds],
                       None if costs.t_plain is None else costs.t_plain * base)


def cost_curves(costs: PolicyCosts, k: int, jitter: float, seed: int) -> list:
    """[(name, PolicyCosts)]: the calibrated curve first, then k - 1 perturbed ones whose three factors
    are exp(u), u ~ U(-jitter, jitter), seeded (the same list on every resume)."""
    g = torch.Generator().manual_seed(seed + 7919)
    out = [("calibrated", costs)]
    for _ in range(k - 1):
        d, b, sl = torch.exp((torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1) * jitter).tolist()
        out.append((f"draft x{d:.2f}, verify base x{b:.2f}, slope x{sl:.2f}", perturbed_costs(costs, d, b, sl)))
    return out


class _AtCosts:
    """Context: the policy's cost features set to `costs` (restored on exit)."""

    def __init__(self, policy, costs: PolicyCosts):
        self.policy, self.costs = policy, costs

    def __enter__(self):
        self.saved = self.policy.costs
        self.policy.costs = self.costs
        self.policy.refresh()
        return self.policy

    def __exit__(self, *exc):
        self.policy.costs = self.saved
        self.policy.refresh()


class _SkipAction:
    """Context: the policy's skip action on or off (restored on exit)."""

    def __init__(self, policy, on: bool):
        self.policy, self.on = policy, bool(on)

    def __enter__(self):
        self.saved = self.policy.skip
        self.policy.skip = self.on and self.saved
        self.policy.refresh()
        return self.policy

    def __exit__(self, *exc):
        self.policy.skip = self.saved
        self.policy.refresh()


def _skip_phase(phase: str, cfg: TrainPolicyConfig) -> bool:
    """Whether `phase` trains and scores with the skip action. Both kinds learn it in a last phase of their own
    ("skip": LTD a depth phase, RADAR more REINFORCE epochs), after the earlier phases fitted the policy with
    every cycle drafted. Learned together from the start, the plain step beats the untrained policy on every
    cycle: RADAR's episodes then end at the skip and its later decisions stop learning; LTD's heads go on
    learning behind the skip, but every later state ties on the validation score (all cycles skipped) and
    each phase restarts from the first of them."""
    return cfg.skip and phase == "skip"


def evaluate_curves(policy, ep: Episodes, curves, v_idx=None) -> dict:
    """evaluate() at each cost curve, the policy's cost features set to that curve; score = the
    geometric mean of the curves' scores."""
    per = {}
    for name, c in curves:
        with _AtCosts(policy, c):
            per[name] = evaluate(policy, ep, c, v_idx)
    res = dict(per[curves[0][0]])
    res["score"] = math.exp(sum(math.log(max(r["score"], 1e-12)) for r in per.values()) / len(per))
    res["curves"] = {k: {"score": r["score"], "throughput": r["throughput"], "mean_draft_calls": r["mean_draft_calls"],
                         "mean_verify_budget": r["mean_verify_budget"]} for k, r in per.items()}
    return res


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the rows' softmax distributions."""
    lp = torch.log_softmax(logits, -1)
    return -(lp.exp() * lp).sum(-1).mean()


def _ltd_size_step(policy, opt, fs, R, n, entropy=0.0):
    """One update of the size head: its outputs are fitted by least squares to the recorded reward of
    every budget, R(c, m, v) (the episodes hold all of them), so at inference their argmax is the
    budget of highest expected reward given the features. Stopping points m: the one the frozen depth
    head picks (weight 1/2) and every other (1/2 spread evenly), since a size head trained only where
    the depth head stops now would leave every other depth with an untrained budget and the next
    depth phase would learn to avoid those depths for that reason alone. (Maximising
    sum_v softmax_v R_v instead saturates: Adam keeps pushing the logits of the action that is best
    on average until the gradient of every other region has vanished.) entropy: a bonus on the mean
    entropy of softmax(outputs), as for the depth head. fs [B, N, F], R [B, N, nV], n [B] (0: skipped). Returns the
    weighted reward of the head's argmax budgets."""
    B, N, F = fs.shape
    w = torch.full((B, N), 0.5 / N)
    w[torch.arange(B), n.clamp(min=1) - 1] += torch.where(n > 0, 0.5, 0.0)  # skipped (n = 0): evenly spread
    w[n == 0] += 0.5 / N
    q, _, _ = policy.size_net.step(fs.reshape(B * N, F), *policy.size_net.zero_state(B * N))
    q = q.view(B, N, -1)
    loss = (w * ((q - R) ** 2).mean(2)).sum(1).mean()
    opt.zero_grad()
    (loss - entropy * _entropy(q.view(B * N, -1))).backward()
    opt.step()
    with torch.no_grad():
        got = R.gather(2, q.argmax(2, keepdim=True)).squeeze(2)
    return float((w * got).sum(1).mean())


def _ltd_depth_step(policy, opt, fd, Rn, entropy=0.0):
    """One update of the depth head by backward induction on the recorded cycles, which hold the
    reward R(c, n) of every stopping point. At each call t (as if reached) the better action is
    known given the current head's later decisions: stop if R(c, t) > V(c, t + 1), the reward of
    going on and stopping where the current head would (argmax, as at inference; V(c, N) = R(c, N)).
    The head is fitted to that action by cross-entropy weighted by |R(c, t) - V(c, t + 1)|, the
    reward at stake: for two actions this has the same optimum as the expected reward, and it keeps
    learning where a saturated softmax would not (maximising sum_n P(stop at n) R(c, n) directly weighs
    call t by the chance of reaching it, so once call 1 learns to stop every later decision stops
    learning, and Adam drives the logits to +-60 on a gradient that never changes sign).
    (+ entropy * mean decision entropy.) fd [B, N, F], Rn [B, N]. Returns the current head's
    reward from call 1."""
    B, N, _ = fd.shape
    logits, _, _ = policy.depth_net.step(fd[:, :N - 1].reshape(B * (N - 1), -1),
                                         *policy.depth_net.zero_state(B * (N - 1)))
    with torch.no_grad():
        stops = (logits[:, STOP] >= logits[:, CONTINUE]).view(B, N - 1)
        V = torch.empty(B, N)
        V[:, N - 1] = Rn[:, N - 1]
        for t in reversed(range(N - 1)):
            V[:, t] = torch.where(stops[:, t], Rn[:, t], V[:, t + 1])
        adv = Rn[:, :N - 1] - V[:, 1:]                                     # > 0: stopping at t pays
        label = torch.where(adv > 0, STOP, CONTINUE).view(-1)
        w = adv.abs().view(-1)
    ce = torch.nn.functional.cross_entropy(logits, label, reduction="none")
    opt.zero_grad()
    ((w * ce).sum() / w.sum().clamp(min=1e-12) - entropy * _entropy(logits)).backward()
    opt.step()
    return float(V[:, 0].mean())


def train(cfg: TrainPolicyConfig, log=print) -> Path:
    """Train, select by validation expected throughput, write <out_dir>/best (the policy) and
    report.json. Resumes from <out_dir>/checkpoint.pt."""
    from tqdm import tqdm

    _check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_ep, val_ep = load_episodes(cfg.episodes, "train"), load_episodes(cfg.episodes, "val")
    if train_ep.meta.get("questions"):
        raise ValueError(f"episodes {cfg.episodes} were recorded on benchmark questions ({train_ep.meta['questions']}), "
                         "for measurement only; train on ShareGPT episodes (`radar collect` without --questions)")
    if train_ep.cycles == 0:
        raise ValueError(f"{cfg.episodes} has no training cycles; run `radar collect` with more prompts")
    if val_ep.cycles == 0:
        log("[train-policy] warning: the validation split is empty; selecting on the training split")
        val_ep = train_ep
    meta = train_ep.meta
    W, N, budgets = meta["tree_topk"], meta["max_draft_calls"], list(meta["budgets"])
    if cfg.history:  # refused here, before any work, when the episodes are format 1
        train_ep.history_features(), val_ep.history_features()
    if cfg.lookup and (cfg.kind != "ltd" or meta.get("drafter", "eagle") != "hybrid"):
        raise ValueError(f"lookup features need --kind ltd and episodes collected with --drafter hybrid, got --kind "
                         f"{cfg.kind} and drafter {meta.get('drafter', 'eagle')!r} episodes")
    flags = dict(history=cfg.history, skip=cfg.skip, max_skip_run=cfg.max_skip_run)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    lr = cfg.lr or (1e-4 if cfg.kind == "radar" else 1e-3)

    if cfg.kind == "radar":
        if cfg.verify_budget not in budgets:
            raise ValueError(f"--verify-budget {cfg.verify_budget} is not in the episodes' budget set {budgets}")
        v_idx = budgets.index(cfg.verify_budget)
        probe = RadarPolicy(W, N, cfg.lstm_hidden, cfg.mlp_hidden, seed=cfg.seed, **flags)
    else:
        v_idx = None
        probe = None
    costs = _costs(cfg, train_ep, probe, W, N, budgets, log)
    if cfg.kind == "radar":
        policy = RadarPolicy(W, N, cfg.lstm_hidden, cfg.mlp_hidden, seed=cfg.seed, costs=costs,
                             verify_budget=cfg.verify_budget, **flags)
        phases = [("radar", 0)]
    else:
        if cfg.batch_costs and not costs.per_batch:
            raise ValueError("batch_costs needs a calibration with batched verify times (`radar calibrate "
                             "--batch-sizes 1,4,8`); the given costs have none")
        policy = LtdPolicy(W, N, budgets, costs, pool_topk=meta["pool_topk"], mlp_hidden=cfg.mlp_hidden, seed=cfg.seed,
                           lookup=cfg.lookup, batch_costs=cfg.batch_costs, **flags)
        phases = [(p, r) for r in range(cfg.rounds) for p in ("size", "depth")]
    if cfg.skip:  # the pre-draft decision is learned last, against a policy that already drafts well (_skip_phase)
        phases.append(("skip", len(phases)))
    opts = {"radar": lambda: torch.optim.Adam(policy.net.parameters(), lr=lr),
            "size": lambda: torch.optim.Adam(policy.size_net.parameters(), lr=lr),
            "depth": lambda: torch.optim.Adam(policy.depth_net.parameters(), lr=lr),
            "skip": lambda: torch.optim.Adam((policy.net if cfg.kind == "radar" else policy.depth_net).parameters(), lr=lr)}
    beta = cfg.beta if cfg.beta is not None else costs.t_ar

    grid = static_grid(val_ep, costs)
    best_static = divmod(int(grid.argmax()), len(budgets))
    state = {"phase": 0, "epoch": 0, "best": -1.0, "best_state": None, "history": []}
    ckpt = out / "checkpoint.pt"
    opt = None
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        if saved["config"] != _ckpt_config(cfg):
            raise ValueError(f"{ckpt} was written with other settings ({saved['config']}); use another --out-dir")
        for name, net in policy.nets().items():
            net.load_state_dict(saved["nets"][name])
        state = saved["state"]
        gen.set_state(saved["rng"])
        if state["phase"] < len(phases):
            opt = opts[phases[state["phase"]][0]]()
            if saved.get("opt") is not None:
                opt.load_state_dict(saved["opt"])
        log(f"[train-policy] resumed from {ckpt}: phase {state['phase']}, epoch {state['epoch']}")

    curves = []
    for m, (tag, base) in enumerate([("", costs)] + _extra_costs(cfg, costs, W, train_ep, log)):
        seed = cfg.seed + 100003 * m
        curves += [(tag + name, c) for name, c in cost_curves(base, cfg.cost_curves, cfg.cost_jitter, seed)]
        if cfg.batch_costs:  # a row of each calibrated batch, as B = 1 curves whose features are batch_features(B)
            for B in sorted(b for b in (base.per_batch or {}) if b > 1):
                curves += [(f"{tag}B={B} {name}", c) for name, c in
                           cost_curves(base.at_batch(B, budgets), cfg.cost_curves, cfg.cost_jitter, seed + B)]
    K = len(curves)
    if K > 1:
        log("[train-policy] cost curves: " + "; ".join(name for name, _ in curves))
    ltd_train, R_train = [], []   # per cost curve: (depth, size, call-0) features and rewards of the training cycles
    radar_train_extra = radar_extra(policy, train_ep) if cfg.kind == "radar" else None
    if cfg.kind == "ltd":
        for _, c in curves:
            with _AtCosts(policy, c):
                ltd_train.append(_ltd_inputs(policy, train_ep))
            R_train.append(_ltd_reward_table(train_ep, c, cfg.reward, cfg.skip))

    def validate(skip_on: bool):
        with _SkipAction(policy, skip_on):
            return evaluate_curves(policy, val_ep, curves, v_idx) if K > 1 else evaluate(policy, val_ep, costs, v_idx)
    C = train_ep.cycles
    radar_targets = None  # RADAR's skip phase: _radar_skip_targets, from the policy the phase starts with
    total = len(phases) * cfg.epochs
    bar = tqdm(total=total, initial=state["phase"] * cfg.epochs + state["epoch"], desc=f"train {cfg.kind}", unit="epoch")
    while state["phase"] < len(phases):
        phase, rnd = phases[state["phase"]]
        skip_on = _skip_phase(phase, cfg)
        if opt is None:
            opt = opts[phase]()
            if phase == "skip" and state["epoch"] == 0:
                state["best"] = -1.0  # the phases before were scored without the skip action
        perm = torch.randperm(C, generator=gen)
        stats = []
        if phase == "skip" and cfg.kind == "radar" and radar_targets is None:
            radar_targets = _radar_skip_targets(policy, train_ep, v_idx, costs)
        if phase == "size":
            with torch.no_grad():
                n_frozen = [ltd_choices(policy, train_ep, (fd, fs, None))[0] for fd, fs, _ in ltd_train]
        if phase in ("depth", "skip"):
            Rn, Fd = [], []  # per curve: the reward of every stopping point and the depth features there
            with torch.no_grad():
                for (fd, fs, f0), (R, R0) in zip(ltd_train, R_train):
                    lg, _, _ = policy.size_net.step(fs.reshape(C * N, -1), *policy.size_net.zero_state(C * N))
                    v_frozen = lg.argmax(1).view(C, N)
                    r = R.gather(2, v_frozen.unsqueeze(2)).squeeze(2)            # [C, N]
                    if skip_on:  # stopping point 0: the plain step, decided from the call-0 features
                        r, fd = torch.cat([R0.view(C, 1), r], 1), torch.cat([f0.unsqueeze(1), fd], 1)
                    Rn.append(r)
                    Fd.append(fd)
        # RADAR's steps read policy.skip: set once per epoch (its exit refreshes the fused weights after the updates)
        with _SkipAction(policy, skip_on):
            for s in range(0, C, cfg.batch_size):
                idx = perm[s:s + cfg.batch_size]
                # one cost curve per batch (always the calibrated one when training on a single curve)
                k = int(torch.randint(K, (1,), generator=gen)) if K > 1 else 0
                if cfg.kind == "radar" and skip_on:
                    stats.append(_radar_skip_step(policy, opt, train_ep, idx, radar_targets, radar_train_extra))
                elif cfg.kind == "radar":
                    stats.append(_radar_reinforce_step(policy, opt, train_ep, idx, v_idx, costs, cfg, beta, gen,
                                                       radar_train_extra)[0])
                elif phase == "size":
                    stats.append(_ltd_size_step(policy, opt, ltd_train[k][1][idx], R_train[k][0][idx], n_frozen[k][idx],
                                                cfg.entropy))
                else:
                    stats.append(_ltd_depth_step(policy, opt, Fd[k][idx], Rn[k][idx], cfg.entropy))
        res = validate(skip_on)
        state["epoch"] += 1
        res.update(phase=phase, round=rnd, epoch=state["epoch"], train_objective=sum(stats) / max(len(stats), 1))
        state["history"].append(res)
        if res["score"] > state["best"]:
            state["best"] = res["score"]
            state["best_state"] = {k: {p: v.clone() for p, v in net.state_dict().items()} for k, net in policy.nets().items()}
        bar.set_postfix(phase=f"{phase}{rnd}", val_tok_s=f"{res['throughput']:.2f}", score=f"{res['score']:.3f}",
                        best=f"{state['best']:.3f}",
                        n=f"{res['mean_draft_calls']:.2f}", V=f"{res['mean_verify_budget']:.0f}")
        bar.update(1)
        if state["epoch"] >= cfg.epochs:
            state["phase"] += 1
            state["epoch"] = 0
            opt = None
            if state["best_state"] is not None:
                # next phase starts from the best policy so far (the frozen head is the selected one)
                for k, net in policy.nets().items():
                    net.load_state_dict(state["best_state"][k])
                policy.refresh()
        _save_checkpoint(ckpt, cfg, policy, state, opt, gen)
    bar.close()

    for k, net in policy.nets().items():
        net.load_state_dict(state["best_state"][k])
    policy.refresh()
    policy.machine_costs = _machine_costs(cfg, costs, W, train_ep, log)
    best_dir = out / "best"
    policy.save_pretrained(best_dir)
    final = evaluate(policy, val_ep, costs, v_idx)
    report = _report(cfg, final, grid, budgets, best_static, costs, val_ep, v_idx, train_ep.cycles)
    if K > 1:
        report["cost_curves"] = _curve_report(policy, val_ep, curves)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    log(_format_report(report, grid, budgets))
    return best_dir


def _costs(cfg, train_ep, probe, W, N, budgets, log) -> PolicyCosts:
    if probe is None:
        probe = LtdPolicy(W, N, budgets, costs={"t_draft": 1.0, "t_policy": 0.0, "t_ar": 1.0, "t_verify": {1: 1.0}},
                          pool_topk=train_ep.meta["pool_topk"], mlp_hidden=cfg.mlp_hidden)
    t_pol = measure_policy_time(probe, W)
    if cfg.costs:
        # T_verify grows with the context: read the calibration where the policy will decide (by default
        # the training cycles' mean sequence length, ~180 tokens on ShareGPT answers of 128 tokens)
        prefix = _prefix_len(cfg, train_ep)
        costs = PolicyCosts.load(cfg.costs, tree_topk=W, prefix_len=prefix)
        if _calibrated_policy(cfg.costs) == "StaticPolicy":
            # the calibration timed a trivial policy: use this controller's own fused decision time
            costs.t_policy = t_pol
        log(f"[train-policy] costs from {cfg.costs} at prefix {prefix:.0f}: t_draft {costs.t_draft * 1e3:.2f} ms/call, T_verify(V) "
            f"{costs.t_verify(budgets[0]) * 1e3:.2f}..{costs.t_verify(budgets[-1]) * 1e3:.2f} ms (V {budgets[0]}.."
            f"{budgets[-1]}), t_ar {costs.t_ar * 1e3:.2f} ms, t_policy {costs.t_policy * 1e6:.0f} us")
        return costs
    costs = costs_from_episodes(train_ep, t_pol)
    log(f"[train-policy] no --costs: estimated from the episodes' timings (t_draft {costs.t_draft * 1e3:.2f} ms, "
        f"T_verify(0) {costs.t_ar * 1e3:.2f} ms, T_verify({budgets[-1]}) {costs.t_verify(budgets[-1]) * 1e3:.2f} ms, "
        f"t_policy {t_pol * 1e6:.0f} us); use `--costs` with a `radar calibrate` JSON for real runs")
    return costs


def _prefix_len(cfg, train_ep) -> float:
    """The context length calibrations are read at: --prefix-len, else the training cycles' mean sequence length."""
    return cfg.prefix_len if cfg.prefix_len is not None else float(train_ep["seq_len"].double().mean())


def _costs_beside(cfg, path, costs: PolicyCosts, W: int, train_ep) -> PolicyCosts:
    """Another machine's costs, a `radar calibrate` JSON (read as --costs is) or a policy's config.json (its stored
    costs), with this policy's own decision time."""
    c = PolicyCosts.load(path, tree_topk=W, prefix_len=_prefix_len(cfg, train_ep))
    return dataclasses.replace(c, t_policy=costs.t_policy)


def _extra_costs(cfg, costs: PolicyCosts, W: int, train_ep, log) -> list:
    """[(tag, PolicyCosts)] of cfg.extra_costs (_costs_beside)."""
    out = []
    for k, path in enumerate(cfg.extra_costs):
        c = _costs_beside(cfg, path, costs, W, train_ep)
        if cfg.batch_costs and not c.per_batch:
            log(f"[train-policy] extra costs {path}: no batched verify times, its B = 1 curves only")
        log(f"[train-policy] extra costs {k + 1} from {path}: t_draft {c.t_draft * 1e3:.2f} ms/call, T_verify(V) "
            f"{c.t_verify(1) * 1e3:.2f}..{c.verify_seconds[-1] * 1e3:.2f} ms, t_ar {c.t_ar * 1e3:.2f} ms")
        out.append((f"machine {k + 2}: ", c))
    return out


def _machine_costs(cfg, costs: PolicyCosts, W: int, train_ep, log) -> dict:
    """{cost profile: PolicyCosts} the policy stores: cfg.machine_costs, plus every --costs / --extra-costs
    calibration that records its machine's profile (`radar calibrate` writes machine.cost_profile), each read
    by _costs_beside."""
    paths = {}
    for path in [cfg.costs] + list(cfg.extra_costs):
        prof = _recorded_profile(path) if path else None
        if prof is not None:
            paths.setdefault(prof, path)
    paths.update(cfg.machine_costs)
    out = {}
    for prof, path in sorted(paths.items()):
        out[prof] = _costs_beside(cfg, path, costs, W, train_ep)
        log(f"[train-policy] stored for machine profile {prof}: the costs of {path}")
    return out


def _recorded_profile(path):
    """machine.cost_profile of a `radar calibrate` JSON (None when it records none, or is not one)."""
    d = _calibration_json(path)
    prof = d.get("machine", {}).get("cost_profile") if d is not None else None
    return prof if isinstance(prof, str) else None


def _calibration_json(path):
    """The parsed `radar calibrate` JSON at path (None for anything else: plain cost dicts, policy configs)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return d if isinstance(d, dict) and str(d.get("schema", "")).startswith("radar_ext.calibration/") else None


def _calibrated_policy(path):
    """policy_name of a `radar calibrate` JSON (None for plain cost dicts)."""
    d = _calibration_json(path)
    return None if d is None else d.get("policy_name", "StaticPolicy")


def _ckpt_config(cfg) -> dict:
    d = {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, (list, tuple)) else v)
         for k, v in asdict(cfg).items()}
    d.pop("threads")
    return d


def _save_checkpoint(path, cfg, policy, state, opt, gen) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"config": _ckpt_config(cfg), "nets": {k: n.state_dict() for k, n in policy.nets().items()},
                "state": state, "opt": None if opt is None else opt.state_dict(), "rng": gen.get_state()}, tmp)
    os.replace(tmp, path)


def _report(cfg, final, grid, budgets, best_static, costs, val_ep, v_idx, n_train) -> dict:
    bn, bv = best_static
    rep = {"kind": cfg.kind, "validation_cycles": val_ep.cycles, "train_cycles": n_train, "costs": costs.to_dict(),
           "policy": final,
           "best_static": {"max_draft_calls": bn + 1, "verify_budget": budgets[bv], "throughput": float(grid[bn, bv])},
           "static_grid": {"budgets": budgets, "throughput": grid.tolist()}}
    if v_idx is not None:
        col = grid[:, v_idx]
        k = int(col.argmax())
        rep["best_static_at_V"] = {"max_draft_calls": k + 1, "verify_budget": budgets[v_idx], "throughput": float(col[k])}
    rep["gain_over_best_static"] = final["throughput"] / rep["best_static"]["throughput"] - 1
    rep["plain"] = {"throughput": plain_throughput(costs),
                    "gain_over_best_static": plain_throughput(costs) / rep["best_static"]["throughput"] - 1}
    # the ceiling: a controller that knew each cycle's outcome, per temperature, against the static
    # opponent the policy is scored against (RADAR: at its V), without and with the skip action; `room`:
    # the share of the ceiling of the policy's own action set that the policy gets
    rep["oracle"] = {}
    for t in temperatures(val_ep):
        sub = subset(val_ep, val_ep["temperature"] == t)
        best = best_static_throughput(sub, costs, v_idx)
        o = oracle_throughput(sub, costs, v_idx)
        o["gain_over_best_static"] = o["throughput"] / best - 1
        with_skip = oracle_throughput(sub, costs, v_idx, skip=True)
        o["with_skip"] = dict(with_skip, gain_over_best_static=with_skip["throughput"] / best - 1)
        mine = with_skip if cfg.skip else o
        o["policy_room"] = oracle_room(final["by_temperature"][f"{t:g}"]["throughput"], best, mine["throughput"])
        rep["oracle"][f"{t:g}"] = o
    return rep


def at_curve(policy, ep: Episodes, costs: PolicyCosts) -> dict:
    """An LTD policy given `costs` as its cost features, against the best static (n, V) under the same
    costs, both in that curve's expected tokens/s on `ep`."""
    budgets = ep.meta["budgets"]
    grid = static_grid(ep, costs)
    bn, bv = divmod(int(grid.argmax()), len(budgets))
    best = float(grid[bn, bv])
    with _AtCosts(policy, costs):
        r = evaluate(policy, ep, costs)
    return {"costs": costs.to_dict(),
            "best_static": {"max_draft_calls": bn + 1, "verify_budget": budgets[bv], "throughput": best},
            "policy": {"throughput": r["throughput"], "mean_draft_calls": r["mean_draft_calls"],
                       "mean_verify_budget": r["mean_verify_budget"], "score": r["score"]},
            "gain_over_best_static": r["throughput"] / best - 1}


def _curve_report(policy, ep: Episodes, curves) -> list:
    """at_curve() for every cost curve the policy was trained on."""
    return [{"curve": name, **at_curve(policy, ep, c)} for name, c in curves]


def _format_report(rep, grid, budgets) -> str:
    lines = [f"expected throughput on the validation split ({rep['validation_cycles']} cycles), tokens/s:",
             "  static n\\V " + " ".join(f"{v:>7d}" for v in budgets)]
    for n in range(grid.shape[0]):
        lines.append(f"  {n + 1:>10d} " + " ".join(f"{x:7.2f}" for x in grid[n].tolist()))
    p, b = rep["policy"], rep["best_static"]
    lines.append(f"  best static: n={b['max_draft_calls']} V={b['verify_budget']}: {b['throughput']:.2f} tok/s")
    if "best_static_at_V" in rep:
        s = rep["best_static_at_V"]
        lines.append(f"  best static at V={s['verify_budget']}: n={s['max_draft_calls']}: {s['throughput']:.2f} tok/s")
    if "plain" in rep:
        lines.append(f"  plain decoding: {rep['plain']['throughput']:.2f} tok/s")
    lines.append(f"  learned {rep['kind']}{' +history' if p.get('history') else ''}{' +skip' if p.get('skip') else ''}: "
                 f"{p['throughput']:.2f} tok/s (tau {p['tau']:.2f}, draft calls "
                 f"{p['mean_draft_calls']:.2f}, V {p['mean_verify_budget']:.1f}, skipped {p.get('skip_share', 0.0):.1%}) -> "
                 f"{rep['gain_over_best_static']:+.1%} vs the best static")
    for t, r in p.get("by_temperature", {}).items():
        o = rep.get("oracle", {}).get(t)
        ceiling = ""
        if o:
            ceiling = f"; oracle {o['gain_over_best_static']:+.1%}"
            if "with_skip" in o:
                ceiling += (f", with skip {o['with_skip']['gain_over_best_static']:+.1%} "
                            f"(skips {o['with_skip']['skip_share']:.1%})")
            if o.get("policy_room") is not None:
                ceiling += f"; the policy gets {o['policy_room']:.0%} of its room"
        lines.append(f"    T={t}: {r['throughput']:.2f} tok/s vs its best static {r['best_static']:.2f} ({r['ratio'] - 1:+.1%}; "
                     f"{r['cycles']} cycles, tau {r['tau']:.2f}, draft calls {r['mean_draft_calls']:.2f}, "
                     f"V {r['mean_verify_budget']:.1f}, skipped {r.get('skip_share', 0.0):.1%}{ceiling})")
    for c in rep.get("cost_curves", []):
        b, q = c["best_static"], c["policy"]
        lines.append(f"  at {c['curve']}: best static n={b['max_draft_calls']} V={b['verify_budget']} "
                     f"{b['throughput']:.2f} tok/s, learned {q['throughput']:.2f} (draft calls {q['mean_draft_calls']:.2f}, "
                     f"V {q['mean_verify_budget']:.1f}) -> {c['gain_over_best_static']:+.1%}")
    return "\n".join(lines)


def _check(cfg: TrainPolicyConfig) -> None:
    if cfg.kind not in ("radar", "ltd"):
        raise ValueError(f"kind must be 'radar' or 'ltd', got {cfg.kind!r}")
    from radar_ext.ops import COST_PROFILES
    if not isinstance(cfg.machine_costs, dict):
        raise ValueError(f"machine_costs must map a cost profile to a path, got {cfg.machine_costs!r}")
    for prof, path in cfg.machine_costs.items():
        if prof not in COST_PROFILES:
            raise ValueError(f"--machine-costs: unknown cost profile {prof!r}, expected one of {list(COST_PROFILES)}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--machine-costs {prof}={path}: no such file (a `radar calibrate` JSON or a "
                                    "policy's config.json)")
    if cfg.machine_costs and cfg.kind != "ltd":
        raise ValueError("machine_costs needs kind 'ltd' (RADAR's decisions do not read costs)")
    for name in ("history", "skip"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(cfg, name)!r}")
    if isinstance(cfg.max_skip_run, bool) or not isinstance(cfg.max_skip_run, int) or cfg.max_skip_run < 1:
        raise ValueError(f"max_skip_run must be an int >= 1, got {cfg.max_skip_run!r}")
    for name in ("epochs", "rounds", "batch_size", "verify_budget", "lstm_hidden", "mlp_hidden"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if not 0 < cfg.gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {cfg.gamma}")
    if not (math.isfinite(cfg.entropy) and cfg.entropy >= 0):
        raise ValueError(f"entropy must be a finite number >= 0, got {cfg.entropy}")
    if not (math.isfinite(cfg.alpha) and cfg.alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {cfg.alpha}")
    if cfg.beta is not None and not cfg.beta > 0:
        raise ValueError(f"beta must be > 0, got {cfg.beta}")
    if cfg.reward not in ("ratio", "rate"):
        raise ValueError(f"reward must be 'ratio' or 'rate', got {cfg.reward!r}")
    if isinstance(cfg.cost_curves, bool) or not isinstance(cfg.cost_curves, int) or cfg.cost_curves < 1:
        raise ValueError(f"cost_curves must be an int >= 1, got {cfg.cost_curves!r}")
    if not (math.isfinite(cfg.cost_jitter) and cfg.cost_jitter >= 0):
        raise ValueError(f"cost_jitter must be a finite number >= 0, got {cfg.cost_jitter}")
    if not isinstance(cfg.extra_costs, (list, tuple)):
        raise ValueError(f"extra_costs must be a list of paths, got {cfg.extra_costs!r}")
    for path in cfg.extra_costs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"extra_costs: {path} is not a file (a `radar calibrate` JSON or a policy's "
                                    "config.json)")
    if cfg.extra_costs and cfg.kind != "ltd":
        raise ValueError("extra_costs trains an LTD policy on several machines' cost curves: it needs --kind ltd")
    if not isinstance(cfg.batch_costs, bool):
        raise ValueError(f"batch_costs must be True or False, got {cfg.batch_costs!r}")
    if cfg.batch_costs and cfg.kind != "ltd":
        raise ValueError("batch_costs needs kind 'ltd' (RADAR's inputs hold no cost features)")
    if cfg.cost_curves > 1 and cfg.kind != "ltd":
        raise ValueError("cost_curves > 1 needs kind 'ltd' (RADAR's inputs hold no cost features)")
    if cfg.prefix_len is not None and not (math.isfinite(cfg.prefix_len) and cfg.prefix_len > 0):
        raise ValueError(f"prefix_len must be a finite number of tokens > 0, got {cfg.prefix_len}")
