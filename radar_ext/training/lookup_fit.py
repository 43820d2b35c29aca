"""Calibrate the hybrid drafter's lookup scores (radar_ext.drafters.lookup_scores) on training prompts.

Two stages, both resumable:
  texts  the target's own greedy answers to ShareGPT first turns (the collect command's shuffle and
         offset: prompts after the head's training prompts, never the dev benchmark), decoded with our
         own plain decoding (token-identical to HF greedy), written one JSON line per prompt.
  fit    a replay: greedy acceptance depends only on the final greedy text, so every position of an
         answer can serve as a cycle root. At each root the lookup side builds its trie from the context
         (prompt + answer so far) exactly as in decoding, and every node whose parent lies on the true
         continuation records (match length, depth, agreeing occurrences, whether its token is the true
         next one). The acceptance rate per cell, smoothed towards coarser cells, becomes the table.

    python -m radar_ext.training.lookup_fit texts --out ~/.cache/radar_ext/lookup_texts/sharegpt.jsonl
    python -m radar_ext.training.lookup_fit fit ~/.cache/radar_ext/lookup_texts/sharegpt.jsonl --out scores.json
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch


def answer_texts(out: Path, num_prompts: int, prompt_offset: int, max_new_tokens: int,
                 max_prompt_tokens: int = 384, threads: int = 0, log=print) -> Path:
    """Append {conv_id, prompt_len, tokens} lines to `out` for prompts not yet there (resume)."""
    from radar_ext.decoder import RadarDecoder
    from radar_ext.models import load_default_target
    from radar_ext.training.data import first_user_turns, render_prompt

    if threads:
        torch.set_num_threads(threads)
    done = set()
    if out.is_file():
        done = {json.loads(line)["conv_id"] for line in out.read_text().splitlines() if line.strip()}
    target, tok = load_default_target(verbose=False)
    turns = first_user_turns()
    random.Random(0).shuffle(turns)   # the same shuffle as `radar collect` and the head's data stage
    dec = RadarDecoder(target)        # own plain decoding: the target's greedy text
    eos = target.generation_config.eos_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    n, t0 = len(done), time.time()
    with out.open("a") as f:
        for cid, q in turns[prompt_offset:]:
            if n >= num_prompts:
                break
            ids = render_prompt(tok, q)
            if len(ids) > max_prompt_tokens:
                continue
            if cid in done:
                continue
            res = dec.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, eos_token_id=eos)
            f.write(json.dumps({"conv_id": cid, "prompt_len": len(ids), "tokens": res[0].tolist()}) + "\n")
            f.flush()
            n += 1
            log(f"[lookup-fit] texts {n}/{num_prompts} ({time.time() - t0:.0f}s)")
    return out


def read_texts(path) -> list:
    """[(prompt_len, tokens)] from a texts file."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no texts (run the `texts` stage first)")
    return [(int(r["prompt_len"]), [int(t) for t in r["tokens"]]) for r in rows]


def replay(texts, make_lookup, max_depth: int):
    """Every root position of every text -> arrays (match_len, depth, count, hit) over the nodes whose
    parent is on the true continuation. make_lookup() -> a fresh NgramDrafter."""
    cols = {"match_len": [], "depth": [], "count": [], "hit": []}
    for P, toks in texts:
        if P < 1 or P >= len(toks):
            continue
        lk = make_lookup()
        lk.start(torch.tensor([toks[:P]]), None, torch.tensor([toks[P]]))
        for pos in range(P, len(toks) - 1):     # root = toks[pos]; truth = toks[pos + 1:]
            trie = lk.trie(max_depth)
            if trie.size:
                truth = toks[pos + 1:pos + 1 + max_depth]
                on_path = np.zeros(trie.size + 1, dtype=bool)   # slot 0: the root (always on the path)
                on_path[0] = True
                for i in range(trie.size):                      # parents come before children
                    d = int(trie.depth[i])
                    if not on_path[int(trie.parents[i]) + 1] or d > len(truth):
                        continue
                    hit = int(trie.tokens[i]) == truth[d - 1]
                    on_path[i + 1] = hit
                    cols["match_len"].append(int(trie.match_len[i]))
                    cols["depth"].append(d)
                    cols["count"].append(int(trie.count[i]))
                    cols["hit"].append(hit)
            lk.commit(torch.tensor([[toks[pos + 1]]]), 1, None)
    return {k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}


def main(argv=None) -> int:
    from radar_ext.drafters.lookup_scores import LookupScores
    from radar_ext.drafters.hybrid import default_lookup
    from radar_ext.models import cache_dir

    p = argparse.ArgumentParser(prog="python -m radar_ext.training.lookup_fit", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    t = sub.add_parser("texts", help="the target's greedy answers to ShareGPT training prompts")
    t.add_argument("--out", type=Path, default=cache_dir() / "lookup_texts" / "sharegpt.jsonl")
    t.add_argument("--num-prompts", type=int, default=48)
    t.add_argument("--prompt-offset", type=int, default=4096)
    t.add_argument("--max-new-tokens", type=int, default=128)
    t.add_argument("--threads", type=int, default=0)
    f = sub.add_parser("fit", help="replay lookups over the texts and write the score table")
    f.add_argument("texts", type=Path)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--smoothing", type=float, default=4.0, help="pseudo-counts towards the coarser cell")
    args = p.parse_args(argv)
    if args.stage == "texts":
        for name in ("num_prompts", "max_new_tokens"):
            if getattr(args, name) < 1:
                print(f"lookup_fit: error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}",
                      file=sys.stderr)
                return 2
        answer_texts(args.out, args.num_prompts, args.prompt_offset, args.max_new_tokens, threads=args.threads)
        return 0
    texts = read_texts(args.texts)
    lk = default_lookup()
    cols = replay(texts, default_lookup, lk.max_depth)
    scores = LookupScores.fit(cols, max_match_len=lk.max_ngram, max_depth=lk.max_depth, smoothing=args.smoothing,
                              source={"texts": str(args.texts), "answers": len(texts), "lookup": repr(lk),
                                      "nodes": int(cols["hit"].size)})
    scores.save(args.out)
    print(f"[lookup-fit] {cols['hit'].size} nodes from {len(texts)} answers, hit rate "
          f"{cols['hit'].mean() if cols['hit'].size else 0:.3f}; wrote {args.out}")
    print(scores.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
