"""Train an EAGLE-3 head on self-distillation data with training-time test (METHOD.md 2).

Step 1 is teacher-forced on the target's features; steps 2..K unroll the head on its own outputs.
A query of step k at position t sees the step-1 keys at positions <= t (the committed prefix, built
from real target features) and its own chain: the step-2..k keys at position t. That is exactly what
a beam at draft depth k sees at inference (prefix + its ancestors), computed for every t at once.

Loss at step k, position t: cross-entropy of the head's draft-vocab distribution against the
target's own next-token distribution at position t+k (top-k probabilities recorded in the features
stage, restricted to the draft vocabulary and renormalised), on assistant positions only.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..eagle_head import EagleConfig, EagleHead
from .data import default_data_dir


DEFAULT_DRAFT_VOCAB = 8192


@dataclass
class TrainConfig:
    data_dir: Path
    out_dir: Path                 # checkpoints + final head
    draft_vocab_size: int | None = None  # None: 8192 for a new head, an --init-from head's own size
    unroll_steps: int = 5         # K: training-time-test depth
    step_weight_decay: float = 0.8  # loss weight of step k = decay**(k-1)
    epochs: float = 2.0
    lr: float = 6e-4
    warmup_steps: int = 20
    tokens_per_batch: int = 3072
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 100   # optimizer steps
    eval_every: int = 0           # 0 = once per epoch
    max_eval_sequences: int = 40
    # bfloat16 autocast for the forward/backward matmuls (fp32 master weights, fp32 optimizer state,
    # loss in fp32). With AMX/AVX512-BF16 a step runs several times faster than in fp32.
    amp_bf16: bool = True
    init_from: Path | None = None  # warm start from a saved head (published layout); keeps its draft vocab
                                   # unless draft_vocab_size grows it
    num_layers: int | None = None  # decoder layers (None: 1 for a new head, an --init-from head's own); with
                                   # init_from, more than the head has adds layers that start as the identity
    extra_intermediate_size: int | None = None  # MLP width of layers 1.. (None: the head's intermediate_size)
    hard_label_weight: float = 0.0  # weight of the target-top-1 cross-entropy mixed into the soft loss (ttt_loss)
    new_layer_lr: float | None = None  # peak rate of the layers num_layers adds to an init_from head (None: lr)

    def __post_init__(self):
        # checked here, when the config is built, so `radar train-draft --stage all` refuses it before gen
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ValueError(f"--warmup-steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.num_layers is not None and not (isinstance(self.num_layers, int) and self.num_layers >= 1):
            raise ValueError(f"--num-layers must be an integer >= 1, got {self.num_layers!r}")
        if not (isinstance(self.hard_label_weight, (int, float)) and 0.0 <= self.hard_label_weight <= 1.0):
            raise ValueError(f"--hard-label-weight must be a number in [0, 1], got {self.hard_label_weight!r}")
        if self.new_layer_lr is not None and not (isinstance(self.new_layer_lr, (int, float)) and self.new_layer_lr > 0):
            raise ValueError(f"--new-layer-lr must be a number > 0, got {self.new_layer_lr!r}")
        if self.extra_intermediate_size is not None and not (
                isinstance(self.extra_intermediate_size, int) and self.extra_intermediate_size >= 1):
            raise ValueError(f"--extra-intermediate-size must be an integer >= 1, got {self.extra_intermediate_size!r}")
        one_layer = self.num_layers == 1 or (self.num_layers is None and self.init_from is None)
        if self.extra_intermediate_size is not None and one_layer:
            raise ValueError(_no_later_layers(self.extra_intermediate_size))


def _no_later_layers(extra_intermediate_size) -> str:
    return (f"--extra-intermediate-size {extra_intermediate_size} sizes the MLP of the decoder layers after the first, "
            "and this head has only one: add --num-layers 2 or more")


# ----------------------------------------------------------------------------- data

@dataclass
class Sequence:
    tokens: torch.Tensor      # [T] int64
    features: torch.Tensor    # [T, 3H] fp16
    top_ids: torch.Tensor     # [T, k] int64 (target ids)
    top_probs: torch.Tensor   # [T, k] fp16
    prompt_len: int
    heldout: bool


def load_sequences(data_dir: Path) -> list[Sequence]:
    from safetensors import safe_open
    seqs = []
    feats = sorted(data_dir.glob("feat_*.safetensors"))
    if not feats:
        raise FileNotFoundError(f"no feature shards (feat_*.safetensors) in {data_dir}: run the `gen` and "
                                "`features` stages first (`radar train-draft --stage gen` / `--stage features`)")
    for fp in feats:
        gp = data_dir / fp.name.replace("feat_", "gen_")
        with safe_open(str(gp), "pt") as g, safe_open(str(fp), "pt") as f:
            meta = json.loads(g.metadata()["meta"])
            tokens, lengths = g.get_tensor("tokens").long(), g.get_tensor("lengths").tolist()
            plens = g.get_tensor("prompt_lengths").tolist()
            feat, tid, tpr = f.get_tensor("features"), f.get_tensor("top_ids").long(), f.get_tensor("top_probs")
        start = 0
        for i, L in enumerate(lengths):
            sl = slice(start, start + L)
            seqs.append(Sequence(tokens[sl], feat[sl], tid[sl], tpr[sl], plens[i], bool(meta["heldout"][i])))
            start += L
    return seqs


def top1_counts(seqs: list[Sequence], vocab_size: int) -> torch.Tensor:
    """[vocab_size] int64: how often the target predicts each token (top-1) on assistant positions of
    the training split."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for s in seqs:
        if not s.heldout:
            counts += torch.bincount(s.top_ids[max(s.prompt_len - 1, 0):, 0], minlength=vocab_size)
    return counts


def choose_draft_vocab(seqs: list[Sequence], size: int, vocab_size: int, always=()) -> tuple[torch.Tensor, float]:
    """The `size` target tokens the target most often predicts (top-1) on assistant positions of the
    training split; returns (ids sorted by frequency, coverage of those predictions)."""
    counts = top1_counts(seqs, vocab_size)
    for t in always:
        counts[t] = counts.max() + 1
    ids = counts.argsort(descending=True, stable=True)[:size]
    coverage = float(counts[ids].sum()) / max(1, int(counts.sum()))
    return ids, coverage


def draft_vocab_coverage(seqs: list[Sequence], vocab_ids: torch.Tensor, vocab_size: int) -> float:
    """Fraction of the target's top-1 predictions (assistant positions, training split) in `vocab_ids`."""
    counts = top1_counts(seqs, vocab_size)
    return float(counts[vocab_ids].sum()) / max(1, int(counts.sum()))


def make_batches(seqs: list[Sequence], tokens_per_batch: int, rng: random.Random) -> list[list[Sequence]]:
    order = sorted(seqs, key=lambda s: len(s.tokens))
    batches, cur, cur_max = [], [], 0
    for s in order:
        m = max(cur_max, len(s.tokens))
        if cur and m * (len(cur) + 1) > tokens_per_batch:
            batches.append(cur)
            cur, m = [], len(s.tokens)
        cur.append(s)
        cur_max = m
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(batch: list[Sequence], t2d: torch.Tensor, dtype):
    """-> tokens [B, T], features [B, T, 3H], soft targets as (draft ids [B, T, k], probs [B, T, k]),
    valid_pred [B, T] (position t's target distribution is trained on)."""
    B, T = len(batch), max(len(s.tokens) for s in batch)
    k = batch[0].top_ids.shape[1]
    tokens = torch.zeros(B, T, dtype=torch.int64)
    feats = torch.zeros(B, T, batch[0].features.shape[1], dtype=dtype)
    tids = torch.zeros(B, T, k, dtype=torch.int64)
    tprobs = torch.zeros(B, T, k, dtype=torch.float32)
    valid = torch.zeros(B, T, dtype=torch.bool)
    for i, s in enumerate(batch):
        L = len(s.tokens)
        tokens[i, :L] = s.tokens
        feats[i, :L] = s.features.to(dtype)
        d = t2d[s.top_ids]                       # -1 where not in the draft vocabulary
        p = s.top_probs.float() * (d >= 0)
        tids[i, :L] = d.clamp(min=0)
        tprobs[i, :L] = p / p.sum(-1, keepdim=True).clamp(min=1e-9)
        # position t predicts token t+1: train where that token is an assistant token present in the data
        valid[i, max(s.prompt_len - 1, 0):L - 1] = p.sum(-1)[max(s.prompt_len - 1, 0):L - 1] > 0
    return tokens, feats, tids, tprobs, valid


# ----------------------------------------------------------------------------- the unrolled forward

def ttt_forward(head: EagleHead, embed: torch.nn.Embedding, tokens, feats, K: int):
    """Training-time test. tokens [B, T], feats [B, T, 3H]. Returns the head's output hidden states
    per step: a list of K tensors [B, T, H]; step k's output at position t predicts the token at t+k+1
    (its target distribution is the target's at position t+k). The LM head is applied by the caller
    on trained positions only: on a CPU it is the most expensive part. Every decoder layer of a deeper
    head attends the same way (its own step-1 keys causally, then its own keys of steps 2..k at t)."""
    B, T = tokens.shape
    layer = head.midlayer
    pos = torch.arange(T)[None].expand(B, T)
    # input token of step k at position t is tokens[t + k] (zero-padded past the end; masked in the loss)
    padded = torch.cat([tokens, tokens.new_zeros(B, K)], 1)
    hidden = head.fc(feats)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    plain = head.plain_layers()
    states = [_TttKeys() for _ in range(1 + len(plain))]
    outs = []
    for k in range(1, K + 1):
        emb = embed(padded[:, k:k + T])
        o = _ttt_attend(layer.self_attn, layer.attn_input(hidden, emb), pos + (k - 1), states[0], causal)
        hidden = layer.finish(hidden, o)
        for j, (_, pl) in enumerate(plain, start=1):
            o = _ttt_attend(pl.self_attn, pl.attn_input(hidden), pos + (k - 1), states[j], causal)
            hidden = pl.finish(hidden, o)
        outs.append(hidden)
    return outs


class _TttKeys:
    """One layer's keys/values in training-time test: step 1's [B, Hq, T, D] and steps 2..k's."""

    def __init__(self):
        self.k1 = self.v1 = None
        self.diag_k, self.diag_v = [], []


def _ttt_attend(attn, x, pos, st: _TttKeys, causal):
    c = attn.cfg
    B, T = x.shape[:2]
    rep = c.num_attention_heads // c.num_key_value_heads
    scale = 1.0 / math.sqrt(c.head_dim)
    q, kk, vv = attn.project(x, pos)
    if st.k1 is None:
        st.k1 = kk.repeat_interleave(rep, 1)
        st.v1 = vv.repeat_interleave(rep, 1)
    else:
        st.diag_k.append(kk.repeat_interleave(rep, 1))
        st.diag_v.append(vv.repeat_interleave(rep, 1))
    s1 = torch.matmul(q, st.k1.transpose(-1, -2)) * scale          # [B, Hq, T, T]
    s1 = s1.masked_fill(~causal, float("-inf"))
    sd = [(q * dk).sum(-1, keepdim=True) * scale for dk in st.diag_k]  # each [B, Hq, T, 1]
    p = torch.softmax(torch.cat([s1] + sd, -1), -1)
    o = torch.matmul(p[..., :T], st.v1)
    for i, dv in enumerate(st.diag_v):
        o = o + p[..., T + i:T + i + 1] * dv
    return attn.o_proj(o.transpose(1, 2).reshape(B, T, -1))


def step_mask(valid, k: int):
    """[B, T] bool: positions t whose step-k prediction is trained (target position t+k is valid)."""
    B, T = valid.shape
    m = torch.zeros(B, T, dtype=torch.bool)
    m[:, :T - k] = valid[:, k:]
    return m


def ttt_loss(head, hidden_steps, tids, tprobs, valid, decay: float, hard_weight: float = 0.0):
    """Weighted soft cross-entropy over steps; also returns per-step top-1 agreement counts.
    hard_weight w mixes in the cross-entropy of the target's top-1 token (what greedy verification
    accepts): (1 - w) * soft + w * hard, the hard term over positions whose top-1 the head can draft."""
    B, T = valid.shape
    total, wsum, stats = 0.0, 0.0, []
    for k, hidden in enumerate(hidden_steps, start=1):
        # step k at t is trained against the target distribution at position t+k
        m = step_mask(valid, k)
        if not m.any():
            stats.append((0, 0))
            continue
        lp = torch.log_softmax(head.logits(hidden[m]).float(), -1)
        ids = tids[:, k:][m[:, :T - k]]
        pr = tprobs[:, k:][m[:, :T - k]]
        ce = -(pr * lp.gather(-1, ids)).sum(-1).mean()
        if hard_weight:
            top_in = pr[:, 0] > 0                      # the target's top-1 is in the draft vocabulary
            hard = -(lp.gather(-1, ids[:, :1])[:, 0] * top_in).sum() / top_in.sum().clamp(min=1)
            ce = (1 - hard_weight) * ce + hard_weight * hard
        w = decay ** (k - 1)
        total = total + w * ce
        wsum += w
        correct = (lp.argmax(-1) == ids[:, 0]).sum().item()  # host sync: metrics
        stats.append((correct, int(m.sum())))
    return total / max(wsum, 1e-9), stats


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(head, embed, seqs, t2d, K, dtype) -> dict:
    """Held-out metrics: per-step top-1 agreement with the target, and the chain acceptance rate
    alpha_k (fraction of assistant positions where steps 1..k all agree), a proxy of tau for a
    single-chain draft: tau_chain = 1 + sum_k alpha_k."""
    head.eval()
    agree = torch.zeros(K)
    chain = torch.zeros(K)
    n_pos = 0
    for s in seqs:
        tokens, feats, tids, tprobs, valid = collate([s], t2d, dtype)
        hiddens = ttt_forward(head, embed, tokens, feats, K)
        T = tokens.shape[1]
        ok_chain = None
        base = valid[0].clone()
        for k in range(1, K + 1):
            pred = head.logits(hiddens[k - 1][0]).argmax(-1)    # [T]
            ok = torch.zeros(T, dtype=torch.bool)
            ok[:T - k] = (pred[:T - k] == tids[0, k:, 0]) & valid[0, k:]
            ok_chain = ok if ok_chain is None else ok_chain & ok
            agree[k - 1] += ok[base].sum()
            chain[k - 1] += ok_chain[base].sum()
        n_pos += int(base.sum())
    head.train()
    n = max(n_pos, 1)
    alpha = (chain / n).tolist()
    return {"positions": n_pos, "top1_agree": (agree / n).tolist(), "alpha": alpha,
            "tau_chain": 1.0 + sum(alpha)}


# ----------------------------------------------------------------------------- training loop

def _load_target_embedding_and_lm_head():
    from safetensors import safe_open
    from ..models import _converted_dir, load_default_target
    d = _converted_dir()
    if not (d / "model.safetensors").is_file():
        load_default_target()
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        emb = f.get_tensor("model.embed_tokens.weight")
        norm = f.get_tensor("model.norm.weight")
        keys = set(f.keys())
        lm = f.get_tensor("lm_head.weight") if "lm_head.weight" in keys else emb
    cfg = json.loads((d / "config.json").read_text())
    return emb, norm, lm, cfg


def new_head(hcfg: EagleConfig, vocab_ids, lm_w, norm_w, train_seqs) -> EagleHead:
    """A fresh head whose output layer starts as the target's own (logits are right from step 0)."""
    head = EagleHead(hcfg)
    head.set_draft_vocab(vocab_ids)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.dim() == 2 and not name.startswith("lm_head"):
                torch.nn.init.normal_(p, 0.0, 0.02)
        head.lm_head.weight.copy_(lm_w[vocab_ids])
        head.norm.weight.copy_(norm_w)
        # target features are large (RMS ~70, outliers ~2.5e4 on attention-sink positions): scale fc's
        # init so that its output starts at RMS ~1 instead of swamping the residual stream
        sample = torch.cat([s.features[:256].float() for s in train_seqs[:64]])
        feat_rms = float(sample.pow(2).mean().sqrt())
        head.fc.weight.normal_(0.0, 1.0 / (math.sqrt(head.fc.in_features) * feat_rms))
    return head


def grow_draft_vocab(head: EagleHead, size: int, counts: torch.Tensor) -> EagleHead:
    """A copy of `head` with a draft vocabulary of `size` tokens: its own tokens first, in their order and
    with their trained lm_head rows, then the target tokens it lacks that `counts` (top-1 predictions)
    ranks highest, whose rows start as the mean of the old rows: a new token's logit is then the mean old
    logit, below the top one, so the head's greedy choices are unchanged at the start. Neither the
    target's own rows nor zeros are: a trained head's output state was never pushed away from tokens it
    could not draft, and its logits are often below 0 (held-out top-1 of the round-5 head grown to 16384:
    0.509 -> 0.002 with the target's rows, 0.388 with zeros)."""
    import dataclasses

    old_ids = head.to_target_ids(torch.arange(head.config.draft_vocab_size))
    ranked = counts.argsort(descending=True, stable=True)
    fresh = ranked[~head.t2d[ranked]][: size - old_ids.numel()]
    if old_ids.numel() + fresh.numel() != size:
        raise ValueError(f"draft vocabulary of {size} tokens asked for, the target has only {counts.numel()}")
    grown = EagleHead(dataclasses.replace(head.config, draft_vocab_size=size))
    state = {k: v for k, v in head.state_dict().items() if not k.startswith("lm_head") and k not in ("d2t", "t2d")}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"lm_head.weight", "d2t", "t2d"}:
        raise RuntimeError(f"grow_draft_vocab: unexpected state layout (missing {missing}, unexpected {unexpected})")
    grown.set_draft_vocab(torch.cat([old_ids, fresh]))
    with torch.no_grad():
        grown.lm_head.weight[: old_ids.numel()] = head.lm_head.weight
        grown.lm_head.weight[old_ids.numel():] = head.lm_head.weight.mean(0)
    return grown


def rng_state_to_json(rng: random.Random) -> str:
    """The batch-order generator's state as JSON text (a checkpoint stores it beside the tensors)."""
    version, internal, gauss = rng.getstate()
    return json.dumps([version, list(internal), gauss])


def rng_state_from_json(text: str) -> tuple:
    """rng_state_to_json's text -> the tuple random.Random.setstate takes (JSON has no tuples)."""
    version, internal, gauss = json.loads(text)
    return version, tuple(internal), gauss


def deepen(head: EagleHead, num_layers: int, extra_intermediate_size: int | None = None, seed: int = 0) -> EagleHead:
    """A copy of `head` with `num_layers` decoder layers: its own layers and weights unchanged, then plain
    layers whose residual branches start at zero (o_proj and down_proj zero, the rest small random), so
    the deeper head computes exactly what `head` did until training moves them."""
    import dataclasses

    c = head.config
    if num_layers < c.num_hidden_layers:
        raise ValueError(f"--num-layers {num_layers} is below the head's {c.num_hidden_layers}: a warm start keeps "
                         "or adds layers")
    if c.num_hidden_layers > 1 and extra_intermediate_size not in (None, c.extra_intermediate_size):
        raise ValueError(f"--extra-intermediate-size {extra_intermediate_size}: the head's later layers are "
                         f"{c.extra_intermediate_size} wide")
    if num_layers == 1 and extra_intermediate_size is not None:
        raise ValueError(_no_later_layers(extra_intermediate_size))
    if num_layers == c.num_hidden_layers:
        return head
    deep = EagleHead(dataclasses.replace(c, num_hidden_layers=num_layers,
                                         extra_intermediate_size=extra_intermediate_size or c.extra_intermediate_size))
    missing, unexpected = deep.load_state_dict(head.state_dict(), strict=False)
    fresh = [str(i) for i in range(c.num_hidden_layers, num_layers)]
    if unexpected or any(not (m.startswith("layers.") and m.split(".")[1] in fresh) for m in missing):
        raise RuntimeError(f"deepen: unexpected state layout (missing {missing}, unexpected {unexpected})")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in fresh:
            for name, p in deep.layers[i].named_parameters():
                if name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
                    p.zero_()
                elif p.dim() == 2:
                    p.normal_(0.0, 0.02, generator=g)
    return deep


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a head; returns the directory of the final head."""
    from tqdm import tqdm
    from transformers import LlamaConfig

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    emb_w, norm_w, lm_w, tcfg_d = _load_target_embedding_and_lm_head()
    tcfg = LlamaConfig(**{k: v for k, v in tcfg_d.items() if k not in ("architectures",)})
    embed = torch.nn.Embedding.from_pretrained(emb_w, freeze=True)

    t0 = time.time()
    seqs = load_sequences(cfg.data_dir)
    train_seqs = [s for s in seqs if not s.heldout]
    eval_seqs = [s for s in seqs if s.heldout][: cfg.max_eval_sequences]
    eos = tcfg_d.get("eos_token_id")
    n_train_tok = sum(len(s.tokens) for s in train_seqs)
    old_layers = None  # an init_from head's own layer count
    if cfg.init_from is not None:
        # warm start: keep the earlier head's weights and its draft vocabulary (its lm_head rows)
        head = EagleHead.from_pretrained(cfg.init_from, dtype=torch.float32).train()
        if head.config.vocab_size != tcfg.vocab_size or head.config.target_hidden_size != tcfg.hidden_size:
            raise ValueError(f"--init-from {cfg.init_from}: head (vocab {head.config.vocab_size}, target hidden "
                             f"{head.config.target_hidden_size}) does not fit the target (vocab {tcfg.vocab_size}, "
                             f"hidden {tcfg.hidden_size})")
        if cfg.draft_vocab_size is not None and cfg.draft_vocab_size < head.config.draft_vocab_size:
            raise ValueError(f"--draft-vocab-size {cfg.draft_vocab_size} is below the --init-from head's "
                             f"{head.config.draft_vocab_size}: a warm start keeps or grows the draft vocabulary")
        if cfg.draft_vocab_size is not None and cfg.draft_vocab_size > head.config.draft_vocab_size:
            head = grow_draft_vocab(head, cfg.draft_vocab_size, top1_counts(seqs, tcfg.vocab_size)).train()
        old_layers = head.config.num_hidden_layers
        if cfg.num_layers is not None or cfg.extra_intermediate_size is not None:
            head = deepen(head, cfg.num_layers or head.config.num_hidden_layers, cfg.extra_intermediate_size,
                          seed=cfg.seed).train()
        vocab_ids = head.to_target_ids(torch.arange(head.config.draft_vocab_size))
        coverage = draft_vocab_coverage(seqs, vocab_ids, tcfg.vocab_size)
    else:
        size = DEFAULT_DRAFT_VOCAB if cfg.draft_vocab_size is None else cfg.draft_vocab_size
        vocab_ids, coverage = choose_draft_vocab(seqs, size, tcfg.vocab_size,
                                                 always=[eos] if isinstance(eos, int) else [])
        head = new_head(EagleConfig.for_target(tcfg, draft_vocab_size=size, num_hidden_layers=cfg.num_layers or 1,
                                               extra_intermediate_size=cfg.extra_intermediate_size),
                        vocab_ids, lm_w, norm_w, train_seqs)
    print(f"[train] {len(train_seqs)} train / {len(eval_seqs)} held-out sequences, {n_train_tok} train tokens, "
          f"draft vocab {len(vocab_ids)} covers {coverage:.4f} of target top-1 predictions "
          f"(loaded in {time.time() - t0:.1f}s), {head.config.num_hidden_layers} decoder layer(s), "
          f"{head.num_parameters() / 1e6:.2f} M parameters"
          + (f", warm start from {cfg.init_from}" if cfg.init_from else ""),
          flush=True)
    t2d = head.target_to_draft()
    dtype = torch.float32

    steps_per_epoch = len(make_batches(train_seqs, cfg.tokens_per_batch, random.Random(0)))
    total_steps = max(1, int(cfg.epochs * steps_per_epoch))
    # the layers a warm start adds may learn at their own rate (new_layer_lr); every group follows one schedule
    added = [] if old_layers is None else list(range(old_layers, head.config.num_hidden_layers))
    new_params = [p for i in added for p in head.layers[str(i)].parameters()]
    new_ids = {id(p) for p in new_params}
    groups = [{"params": [p for p in head.parameters() if id(p) not in new_ids]}]
    lr_scales = [1.0]
    if new_params:
        groups.append({"params": new_params})
        lr_scales.append((cfg.new_layer_lr or cfg.lr) / cfg.lr)
        print(f"[train] added layers {added} ({sum(p.numel() for p in new_params) / 1e6:.2f} M parameters) at peak "
              f"lr {cfg.new_layer_lr or cfg.lr:g}, the rest at {cfg.lr:g}", flush=True)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def lr_at(step):
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        prog = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog))))

    ckpt = cfg.out_dir / "checkpoint.pt"
    step, history, best = 0, [], None
    if ckpt.is_file():
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        history = json.loads(state["history"])
        best = json.loads(state["best"]) if state.get("best") else None
        rng.setstate(rng_state_from_json(state["rng"]) if isinstance(state["rng"], str) else state["rng"])
        print(f"[train] resumed at step {step}/{total_steps}", flush=True)
    (cfg.out_dir / "train_config.json").write_text(json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}, indent=1))

    def save_ckpt():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"head": head.state_dict(), "opt": opt.state_dict(), "step": torch.tensor(step),
                    "history": json.dumps(history), "best": json.dumps(best) if best else "",
                    "rng": rng_state_to_json(rng)}, str(tmp))
        os.replace(tmp, ckpt)

    def run_eval(tag):
        nonlocal best
        m = evaluate(head, embed, eval_seqs, t2d, cfg.unroll_steps, dtype)
        m.update(step=step, tag=tag, elapsed_s=round(time.time() - t_start, 1))
        history.append(m)
        print(f"[eval step {step}] top1/step {[round(a, 3) for a in m['top1_agree']]} "
              f"alpha {[round(a, 3) for a in m['alpha']]} tau_chain {m['tau_chain']:.3f}", flush=True)
        if best is None or m["tau_chain"] > best["tau_chain"]:
            best = m
            head.save_pretrained(cfg.out_dir / "best")
        return m

    head.train()
    t_start = time.time()
    if step == 0 and cfg.init_from is not None:
        run_eval("init")  # the warm start's own held-out figures: the bar the new training must clear
    bar = tqdm(total=total_steps, initial=step, desc="train head", unit="step")
    epoch_batches, done_in_epoch = [], 0
    eval_every = cfg.eval_every or steps_per_epoch
    while step < total_steps:
        if not epoch_batches:
            # deterministic epoch order from (seed, epoch index): resume replays the same order
            epoch = step // steps_per_epoch
            epoch_batches = make_batches(train_seqs, cfg.tokens_per_batch, random.Random(cfg.seed * 1000 + epoch))
            done_in_epoch = step % steps_per_epoch
            epoch_batches = epoch_batches[done_in_epoch:]
            if not epoch_batches:
                continue
        batch = epoch_batches.pop(0)
        tokens, feats, tids, tprobs, valid = collate(batch, t2d, dtype)
        for g, scale in zip(opt.param_groups, lr_scales):
            g["lr"] = lr_at(step) * scale
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.amp_bf16):
            hiddens = ttt_forward(head, embed, tokens, feats, cfg.unroll_steps)
            loss, stats = ttt_loss(head, hiddens, tids, tprobs, valid, cfg.step_weight_decay, cfg.hard_label_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        acc = [c / max(n, 1) for c, n in stats]
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc1=f"{acc[0]:.2f}", accK=f"{acc[-1]:.2f}")
        if step % cfg.checkpoint_every == 0:
            save_ckpt()
        if step % eval_every == 0 or step == total_steps:
            run_eval("epoch" if step % steps_per_epoch == 0 else "periodic")
            save_ckpt()
    bar.close()
    final = cfg.out_dir / "final"
    head.save_pretrained(final)
    (cfg.out_dir / "history.json").write_text(json.dumps(history, indent=1))
    print(f"[train] done: {step} steps in {time.time() - t_start:.0f}s; best tau_chain "
          f"{best['tau_chain'] if best else float('nan'):.3f} saved in {cfg.out_dir / 'best'}", flush=True)
    return cfg.out_dir / "best"


def add_train_arguments(p) -> None:
    """The head-training options, shared by `python -m radar_ext.training.train_head` and `radar train-draft`."""
    p.add_argument("--draft-vocab-size", type=int, default=None,
                   help=f"draft vocabulary (tokens the head can propose; default {DEFAULT_DRAFT_VOCAB}, or the "
                        "--init-from head's own); with --init-from, a size above the head's grows it by the "
                        "most-predicted tokens it lacks (their rows start as the mean old row)")
    p.add_argument("--unroll-steps", type=int, default=5, help="training-time-test depth K")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps,
                   help="linear learning-rate warm-up steps before the cosine decay (a warm start may want more)")
    p.add_argument("--tokens-per-batch", type=int, default=3072)
    p.add_argument("--eval-every", type=int, default=0, help="optimizer steps between evaluations (0: per epoch)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-amp", action="store_true", help="train in plain fp32 (default: bfloat16 autocast)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="warm start from a saved head directory (e.g. the shipped head); keeps its draft vocabulary "
                        "unless --draft-vocab-size grows it")
    p.add_argument("--num-layers", type=int, default=None,
                   help="decoder layers of the head (default 1, or the --init-from head's own); with --init-from, "
                        "a number above the head's adds plain Llama layers that start as the identity")
    p.add_argument("--extra-intermediate-size", type=int, default=None,
                   help="MLP width of layers 2.. of a deeper head (default: the first layer's, 1536 for the default "
                        "target; 768 keeps a two-layer head under 25 MB in fp16)")
    p.add_argument("--hard-label-weight", type=float, default=0.0,
                   help="mix the cross-entropy of the target's top-1 token (what greedy verification accepts) into "
                        "the soft loss: (1 - w) * soft + w * hard (default 0: soft only)")
    p.add_argument("--new-layer-lr", type=float, default=None,
                   help="peak learning rate of the layers --num-layers adds to an --init-from head (default: --lr); "
                        "same warm-up and cosine schedule")


def train_config_from_args(a) -> TrainConfig:
    """The TrainConfig of parsed add_train_arguments options plus --data-dir / --out-dir (default
    <cache>/head_runs/default)."""
    out = a.out_dir or (a.data_dir.parent.parent / "head_runs" / "default")
    return TrainConfig(data_dir=a.data_dir, out_dir=out, draft_vocab_size=a.draft_vocab_size,
                       unroll_steps=a.unroll_steps, epochs=a.epochs, lr=a.lr, warmup_steps=a.warmup_steps,
                       tokens_per_batch=a.tokens_per_batch, eval_every=a.eval_every, threads=a.threads,
                       amp_bf16=not a.no_amp, init_from=a.init_from, num_layers=a.num_layers,
                       extra_intermediate_size=a.extra_intermediate_size, new_layer_lr=a.new_layer_lr,
                       hard_label_weight=a.hard_label_weight)


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(description="Train an EAGLE-3 head on self-distillation data")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out-dir", type=Path, default=None)
    add_train_arguments(p)
    train(train_config_from_args(p.parse_args(argv)))


if __name__ == "__main__":
    main()
