"""Train a learned draft controller offline from `radar collect` episodes: `--kind radar` (REINFORCE
stop rule, METHOD.md 5) or `--kind ltd` (depth + verify-budget heads, throughput reward, METHOD.md 6).
Selects by expected throughput on the validation split and prints it against every static (n, V)
setting of the same episodes. Resumable (checkpoint.pt in --out-dir); the policy is written to
<out-dir>/best, loadable with `radar generate --policy PATH`."""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(p) -> None:
    from radar_ext.models import cache_dir

    p.add_argument("--kind", choices=("radar", "ltd"), required=True)
    p.add_argument("--episodes", type=Path, nargs="+", default=[cache_dir() / "episodes" / "default"],
                   help="one or more `radar collect` directories with the same W, max_draft_calls and budgets, "
                        "e.g. the T=0 and T=1 collections (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=None, help="default: <cache>/policy_runs/<kind>")
    p.add_argument("--costs", default=None,
                   help="calibration JSON (t_draft, t_policy, t_ar, T_verify curve); default: estimated from "
                        "the episodes' timings")
    p.add_argument("--prefix-len", type=float, default=None,
                   help="context length (tokens) the --costs calibration is read at (default: the mean sequence "
                        "length of the training cycles)")
    p.add_argument("--epochs", type=int, default=30, help="RADAR: epochs; LTD: epochs per phase")
    p.add_argument("--rounds", type=int, default=2, help="LTD: (size, depth) training rounds")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: radar 1e-4, ltd 1e-3)")
    p.add_argument("--gamma", type=float, default=0.99, help="RADAR discount")
    p.add_argument("--alpha", type=float, default=0.0, help="RADAR penalty per continue")
    p.add_argument("--beta", type=float, default=None, help="RADAR stop reward scale (default: t_ar)")
    p.add_argument("--verify-budget", type=int, default=60, help="RADAR: the fixed verify budget V")
    p.add_argument("--entropy", type=float, default=0.0,
                   help="LTD: entropy bonus per decision (keeps the heads from saturating on one action early)")
    p.add_argument("--reward", choices=("ratio", "rate"), default="ratio",
                   help="LTD reward: ratio = each cycle's (accepted + 1) / T_cycle (METHOD.md 6); rate = the "
                        "decoding's tokens/s (sum of tokens over sum of time) linearised around the best static "
                        "tree (default: %(default)s)")
    p.add_argument("--cost-curves", type=int, default=1,
                   help="LTD: train on the calibrated cost curve plus this many - 1 perturbed ones (draft call, "
                        "fixed verify cost and per-token verify cost each scaled by exp(U(-j, j))), so the policy "
                        "learns to read its cost inputs and can be moved to another machine's calibration "
                        "(LtdPolicy.from_pretrained(costs=...)); selection then scores every curve (default: 1)")
    p.add_argument("--cost-jitter", type=float, default=1.0,
                   help="LTD: j, the half-width of those log-scale factors (default: %(default)s, x0.37..x2.7)")
    p.add_argument("--history", action="store_true",
                   help="every decision also reads the sequence's history (EMA and last accepted length, the previous "
                        "cycle's best first-call guess probability and outcome); needs format-2 episodes")
    p.add_argument("--skip", action="store_true",
                   help="the policy may skip drafting before the first draft call (a plain step: 1 token for one "
                        "plain step through our own verify path: t_plain of the calibration, else t_ar)")
    p.add_argument("--max-skip-run", type=int, default=32,
                   help="with --skip: plain steps in a row after which the policy drafts again (default: %(default)s)")
    p.add_argument("--lookup", action="store_true",
                   help="LTD: the decisions also read the cycle's context lookup (match length, occurrences, the best "
                        "lookup node's calibrated score); needs `radar collect --drafter hybrid` episodes")
    p.add_argument("--batch-costs", action="store_true",
                   help="LTD: also train on a row's costs at every batch size the calibration measured (`radar "
                        "calibrate --batch-sizes 1,4,8`); the policy then reads the decoding's batch size through its "
                        "cost features, so one policy serves every B")
    p.add_argument("--extra-costs", nargs="+", default=[], metavar="PATH",
                   help="LTD: other machines' costs to train on as well, each a `radar calibrate` JSON or a shipped "
                        "policy's config.json (its stored costs): their curves, perturbed (--cost-curves) and batched "
                        "(--batch-costs) as the --costs one, join the training curves, so one policy reads every "
                        "machine's costs; the policy stores the --costs ones")
    p.add_argument("--machine-costs", nargs="+", default=[], metavar="PROFILE=PATH",
                   help="LTD: calibrations to store with the policy per machine profile (cpu-amx: the fused forward on "
                        "the AMX tile unit; cpu-vnni: its Q4_1 products in integers on AVX512-VNNI; cpu: float32 "
                        "tiles), e.g. cpu-amx=amx.json cpu-vnni=epyc.json; loaded without "
                        "a calibration, the policy reads the one of the machine it runs on (calibrations that record "
                        "their profile, from --costs and --extra-costs, are stored without this)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")


def run(args) -> int:
    from radar_ext.models import cache_dir
    from radar_ext.training.train_policy import TrainPolicyConfig, _check, train

    out = args.out_dir or cache_dir() / "policy_runs" / args.kind
    bad = [x for x in args.machine_costs if x.count("=") != 1 or not all(x.split("="))]
    if bad:
        print(f"radar train-policy: error: --machine-costs takes PROFILE=PATH, got {bad[0]!r}", file=sys.stderr)
        return 2
    cfg = TrainPolicyConfig(episodes=args.episodes, out_dir=out, kind=args.kind, costs=args.costs,
                            prefix_len=args.prefix_len,
                            epochs=args.epochs, rounds=args.rounds, batch_size=args.batch_size, lr=args.lr,
                            gamma=args.gamma, alpha=args.alpha, beta=args.beta, verify_budget=args.verify_budget,
                            entropy=args.entropy, reward=args.reward, cost_curves=args.cost_curves,
                            cost_jitter=args.cost_jitter, history=args.history, skip=args.skip,
                            max_skip_run=args.max_skip_run, lookup=args.lookup, batch_costs=args.batch_costs,
                            extra_costs=[str(x) for x in args.extra_costs],
                            machine_costs=dict(x.split("=") for x in args.machine_costs), seed=args.seed,
                            threads=args.threads)
    try:
        if args.threads < 0:
            raise ValueError(f"threads must be >= 0, got {args.threads}")
        _check(cfg)
        best = train(cfg)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e)
        for name in ("epochs", "rounds", "batch_size", "verify_budget", "lr", "gamma", "alpha", "beta", "entropy",
                     "threads", "prefix_len", "cost_curves", "cost_jitter", "max_skip_run"):
            if msg.startswith(name + " "):
                msg = "--" + name.replace("_", "-") + msg[len(name):]
        print(f"radar train-policy: error: {msg}", file=sys.stderr)
        return 2
    print(f"[radar] policy written to {best}")
    return 0
