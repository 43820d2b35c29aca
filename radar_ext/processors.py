"""HF generate's logits processors, stopping criteria and dict outputs inside the draft tree.

`RadarDecoder.generate` builds, for each call, the very `LogitsProcessorList` and
`StoppingCriteriaList` the target's own `generate` would build from the same arguments (transformers'
`_get_logits_processor` / `_get_stopping_criteria`, HF's order, user lists merged in HF's way), and uses
them so that the output is the one `target.generate` gives:

- Processors, per tree node: a node's logits are processed with that node's own prefix (prompt, with
  any left padding, + emitted tokens + the node's ancestors) as `input_ids` [1, prefix_len + depth],
  exactly the call HF makes when it reaches that prefix. This runs along the acceptance walk, so it
  costs accepted length + 1 processor calls per cycle, the calls HF makes for the same tokens. Greedy
  takes the processed argmax; sampling applies METHOD.md 4 to the processed probabilities (so the output
  follows the target's processed distribution). A user `logits_processor` is called the same way: once
  per prefix, with a batch of one row. The drafter ignores processors (it only proposes).
- Stopping criteria beyond EOS and the length limit (`stopping_criteria`, `stop_strings`, `max_time`)
  are called once per emitted token with input_ids = prompt + emitted up to that token, so a cycle that
  accepted several tokens is cut exactly where HF stops.
- `return_dict_in_generate=True` returns HF's `GenerateDecoderOnlyOutput`; `output_scores` /
  `output_logits` hold one row [1, V] per emitted token: the processed scores / raw logits at the
  position before it (for an accepted tree node, its parent node).

With no processor and no score output (plain greedy), or with only temperature / top_k / top_p
sampling, none of this runs: the decoder keeps its vectorised acceptance (zero cost).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from radar_ext.acceptance import Acceptance, draw, walk_accept

# Processors the vectorised sampling path applies itself (acceptance.SamplingParams, HF's order).
_FAST_WARPERS = ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper")


@dataclass
class Processing:
    """One generate call's HF processors, extra stopping criteria and output requests."""
    prompt: torch.Tensor                     # [1, P] int64 input_ids as given (left padding included, as HF sees it)
    processors: list                         # HF LogitsProcessorList in HF's order; empty: none
    criteria: list | None                    # StoppingCriteriaList checked per emitted token; None: none
    walk: bool                               # accept node by node through `processors` (else the fast paths)
    return_dict: bool = False
    output_scores: bool = False
    output_logits: bool = False
    scores: list = field(default_factory=list)  # [1, V] float32 processed scores, one per emitted token
    logits: list = field(default_factory=list)  # [1, V] float32 raw logits, one per emitted token

    @classmethod
    def build(cls, prompt, processors, criteria, do_sample: bool, user_processors: bool, return_dict: bool,
              output_scores: bool, output_logits: bool) -> "Processing":
        """user_processors: the call passed a logits_processor list (merged into `processors` by HF)."""
        output_scores, output_logits = return_dict and output_scores, return_dict and output_logits
        # the vectorised sampling path rebuilds exactly generate's own temperature / top-k / top-p warpers
        fast = not processors or (do_sample and not user_processors
                                  and all(type(p).__name__ in _FAST_WARPERS for p in processors))
        walk = not fast or output_scores or output_logits
        return cls(prompt, processors, criteria or None, walk, return_dict, output_scores, output_logits)

    # ------------------------------------------------------------------ processors
    def node_scores(self, prefix: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Processed scores [1, V] of one position: prefix [1, L] int64, raw [1, V] float32 logits."""
        scores = self.processors(prefix, raw.clone()) if self.processors else raw  # clone: processors may write in place
        if self.output_scores:
            self.scores.append(scores.clone())
        if self.output_logits:
            self.logits.append(raw.clone())
        return scores

    def first_token(self, raw: torch.Tensor, do_sample: bool, generator) -> torch.Tensor:
        """The token after the prompt [1] from the prefill's last logits raw [1, V]."""
        scores = self.node_scores(self.prompt, raw.float())
        if not do_sample:
            return scores.argmax(-1)
        return torch.tensor([draw(torch.softmax(scores[0], -1), generator)], device=raw.device)

    def accept(self, tree, logits: torch.Tensor, emitted: torch.Tensor, do_sample: bool, generator) -> Acceptance:
        """Acceptance walk over the tree (logits [1, M, V]) with each visited node's logits processed
        with its own prefix: prompt + emitted [1, E] (the root is emitted's last token) + ancestors."""
        base = torch.cat([self.prompt, emitted.to(self.prompt.device)], 1)       # [1, P + E]

        def scores_at(path_tokens: list, raw: torch.Tensor) -> torch.Tensor:
            ids = base if not path_tokens else torch.cat([base, base.new_tensor([path_tokens])], 1)
            return self.node_scores(ids, raw)

        return walk_accept(tree, logits, scores_at, do_sample, generator)

    # ------------------------------------------------------------------ stopping
    def cut(self, emitted: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Check the extra stopping criteria after each token of out [1, n] (emitted [1, E] before it):
        returns out cut right after the first token that stops, and whether one did."""
        if self.criteria is None:
            return out, False
        seq = torch.cat([self.prompt, emitted.to(self.prompt.device), out.to(self.prompt.device)], 1)
        start = seq.shape[1] - out.shape[1]
        for j in range(out.shape[1]):
            # HF passes the scores recorded so far (None unless output_scores): this token's is the last
            scores = tuple(self.scores[:emitted.shape[1] + j + 1]) if self.output_scores else None
            if bool(self.criteria(seq[:, :start + j + 1], scores).any()):  # host sync: one bool per token
                return out[:, :j + 1], True
        return out, False

    # ------------------------------------------------------------------ output
    def output(self, sequences: torch.Tensor):
        """HF's return value: sequences [1, P + N], or GenerateDecoderOnlyOutput with return_dict_in_generate."""
        if not self.return_dict:
            return sequences
        from transformers.generation import GenerateDecoderOnlyOutput

        n = sequences.shape[1] - self.prompt.shape[1]
        return GenerateDecoderOnlyOutput(
            sequences=sequences,
            scores=tuple(self.scores[:n]) if self.output_scores else None,
            logits=tuple(self.logits[:n]) if self.output_logits else None,
            attentions=None, hidden_states=None, past_key_values=None)
