"""`radar` command line: one subcommand per module in radar_ext/commands (imported lazily, so
`radar --help` stays fast and a missing optional dependency only affects its own subcommand)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "generate": ("radar_ext.commands.generate", "generate text with RadarDecoder"),
    "demo": ("radar_ext.commands.demo", "the embedded default: plain greedy vs RadarDecoder on one prompt"),
    "train-draft": ("radar_ext.commands.train_draft", "build self-distillation data and train an EAGLE-3 head"),
    "bench": ("radar_ext.commands.bench", "end-to-end benchmark against the peers"),
    "collect": ("radar_ext.commands.collect", "record offline episodes for the learned draft controllers"),
    "train-policy": ("radar_ext.commands.train_policy", "train a RADAR or LTD controller from the episodes"),
    "calibrate": ("radar_ext.commands.calibrate", "measure draft, verify, policy and AR costs on this machine"),
    "tune-static": ("radar_ext.commands.tune_static", "grid-search the static tree (calls x V x W) on ShareGPT prompts"),
}


def _available():
    return {n: v for n, v in SUBCOMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def main(argv=None) -> int:

    parser = argparse.ArgumentParser(prog="radar", description="radar_ext: learned dynamic draft trees "
                                     "for lossless speculative decoding of Hugging Face causal LMs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (mod_name, help_text) in _available().items():
        mod = importlib.import_module(mod_name)
        modules[name] = mod
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
