"""The head's data stages pick the prompts they say they pick: `gen` answers the prompts
[start_prompt, start_prompt + num_prompts) of the shuffled ShareGPT order into absolutely numbered
shards (a later round takes fresh prompts), and `ref` never takes a conversation whose question gen
already answered."""
import json
import random

import pytest
import torch
from safetensors import safe_open

from radar_ext.training import data

QUESTIONS = [f"question number {i:02d} about something" for i in range(24)]


class _Tok:
    eos_token_id = 0
    pad_token_id = 0
    padding_side = "right"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize, return_dict):
        # one id per word of the question (+ a marker), so each prompt's ids identify its question
        return [7] + [1 + int(w) for w in messages[0]["content"].split() if w.isdigit()]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3, 4, 5]}


class _Target:
    """generate() appends the prompt's last id twice, then EOS."""

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        new = torch.stack([input_ids[:, -1], input_ids[:, -1], torch.zeros_like(input_ids[:, -1])], dim=1)
        return torch.cat([input_ids, new[:, :max_new_tokens]], dim=1)


@pytest.fixture
def fake_sharegpt(monkeypatch):
    turns = [(f"c{i}", q) for i, q in enumerate(QUESTIONS)]
    monkeypatch.setattr(data, "first_user_turns", lambda *a, **k: list(turns))
    monkeypatch.setattr(data, "first_exchanges", lambda *a, **k: [(c, q, "an answer") for c, q in turns])
    monkeypatch.setattr(data, "is_heldout", lambda cid: False)
    return turns


def _shard_questions(path):
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return meta["conv_ids"]


def test_gen_start_prompt_takes_that_range_into_absolute_shards(tmp_path, fake_sharegpt):
    order = list(fake_sharegpt)
    random.Random(0).shuffle(order)
    cfg = data.GenConfig(out_dir=tmp_path, num_prompts=6, start_prompt=4, batch_size=2, max_new_tokens=3)
    data.generate_shards(cfg, target=_Target(), tokenizer=_Tok())
    names = sorted(p.name for p in tmp_path.glob("gen_*.safetensors"))
    assert names == ["gen_00002.safetensors", "gen_00003.safetensors", "gen_00004.safetensors"]
    got = [c for n in names for c in _shard_questions(tmp_path / n)]
    assert sorted(got) == sorted(c for c, _ in order[4:10])
    with safe_open(str(tmp_path / names[0]), "pt") as f:
        lengths, plens = f.get_tensor("lengths"), f.get_tensor("prompt_lengths")
    assert (lengths - plens).tolist() == [3, 3]  # two copies of the last id and the kept EOS
    assert json.loads((tmp_path / "gen_config.json").read_text())["start_prompt"] == 4


def test_gen_start_prompt_must_be_a_multiple_of_the_batch(tmp_path, fake_sharegpt):
    cfg = data.GenConfig(out_dir=tmp_path, num_prompts=4, start_prompt=3, batch_size=2)
    with pytest.raises(ValueError, match="start_prompt"):
        data.generate_shards(cfg, target=_Target(), tokenizer=_Tok())


def test_ref_skips_every_prompt_gen_answered(tmp_path, fake_sharegpt, monkeypatch):
    gen_order = list(fake_sharegpt)
    random.Random(0).shuffle(gen_order)
    # ref's own list in another order, as first_exchanges' filter gives in the real data
    ref_order = [(c, q, "an answer") for c, q in reversed(fake_sharegpt)]
    monkeypatch.setattr(data, "first_exchanges", lambda *a, **k: list(ref_order))
    n = data.write_reference_shards(tmp_path, _Tok(), num_prompts=100, skip_prompts=8, shard_size=4)
    names = sorted(p.name for p in tmp_path.glob("gen_ref_*.safetensors"))
    assert names[0] == "gen_ref_00002.safetensors"  # numbered from skip_prompts // shard_size
    got = {c for name in names for c in _shard_questions(tmp_path / name)}
    assert len(got) == n > 0
    assert not got & {c for c, _ in gen_order[:8]}
    shuffled = list(ref_order)
    random.Random(0).shuffle(shuffled)
    assert got == {c for c, _, _ in shuffled[8:]} - {c for c, _ in gen_order[:8]}
    with pytest.raises(ValueError, match="skip_prompts"):
        data.write_reference_shards(tmp_path, _Tok(), num_prompts=4, skip_prompts=6, shard_size=4)


def test_ref_exclude_gen_prompts_takes_from_the_start_without_gen_questions(tmp_path, fake_sharegpt, monkeypatch):
    gen_order = list(fake_sharegpt)
    random.Random(0).shuffle(gen_order)
    ref_order = [(c, q, "an answer") for c, q in reversed(fake_sharegpt)]
    monkeypatch.setattr(data, "first_exchanges", lambda *a, **k: list(ref_order))
    n = data.write_reference_shards(tmp_path, _Tok(), num_prompts=100, skip_prompts=0, shard_size=4,
                                    exclude_gen_prompts=16)
    got = {c for p in tmp_path.glob("gen_ref_*.safetensors") for c in _shard_questions(p)}
    assert len(got) == n == 24 - 16  # every conversation whose question gen did not answer
    assert got == {c for c, _ in gen_order[16:]}
    with pytest.raises(ValueError, match="exclude_gen_prompts"):
        data.write_reference_shards(tmp_path, _Tok(), num_prompts=4, skip_prompts=0, shard_size=4,
                                    exclude_gen_prompts=-1)


def test_stages_refuse_a_start_past_the_end(tmp_path, fake_sharegpt):
    cfg = data.GenConfig(out_dir=tmp_path, num_prompts=4, start_prompt=24, batch_size=2)
    with pytest.raises(ValueError, match="past the end of the 24"):
        data.generate_shards(cfg, target=_Target(), tokenizer=_Tok())
    with pytest.raises(ValueError, match="past the end of the 24"):
        data.write_reference_shards(tmp_path, _Tok(), num_prompts=4, skip_prompts=24, shard_size=4)
    assert not list(tmp_path.glob("gen_*"))


def _train_draft_ref(tmp_path, monkeypatch, *extra):
    import radar_ext.models as models
    from radar_ext.cli import main
    monkeypatch.setattr(models, "load_default_tokenizer", lambda *a, **k: _Tok())
    rc = main(["train-draft", "--stage", "ref", "--data-dir", str(tmp_path), "--gen-batch-size", "8",
               "--ref-prompts", "100", *extra])
    assert rc == 0
    return {c for p in tmp_path.glob("gen_ref_*.safetensors") for c in _shard_questions(p)}


def test_train_draft_ref_with_a_low_ref_skip_still_drops_the_gen_prompts(tmp_path, fake_sharegpt, monkeypatch):
    gen_order = list(fake_sharegpt)
    random.Random(0).shuffle(gen_order)
    # gen answered prompts 0-15; ref from position 0 must drop exactly those questions
    got = _train_draft_ref(tmp_path, monkeypatch, "--num-prompts", "16", "--ref-skip", "0")
    assert got == {c for c, _ in gen_order[16:]}


def test_train_draft_ref_exclude_gen_prompts_overrides_and_is_checked(tmp_path, fake_sharegpt, monkeypatch):
    gen_order = list(fake_sharegpt)
    random.Random(0).shuffle(gen_order)
    got = _train_draft_ref(tmp_path, monkeypatch, "--num-prompts", "16", "--ref-skip", "0",
                           "--ref-exclude-gen-prompts", "20")
    assert got == {c for c, _ in gen_order[20:]}
    with pytest.raises(SystemExit, match="--ref-exclude-gen-prompts"):
        _train_draft_ref(tmp_path / "b", monkeypatch, "--ref-skip", "0", "--ref-exclude-gen-prompts", "-1")


def test_train_draft_passes_warmup_steps_to_the_head_training(tmp_path, monkeypatch):
    """`radar train-draft --stage train --warmup-steps N` reaches TrainConfig (and is checked there,
    before any stage runs); without the flag TrainConfig's own default stands."""
    import radar_ext.training.train_head as th
    from radar_ext.cli import main
    seen = []
    monkeypatch.setattr(th, "train", lambda cfg: seen.append(cfg.warmup_steps) or tmp_path)
    assert main(["train-draft", "--stage", "train", "--data-dir", str(tmp_path), "--warmup-steps", "60"]) == 0
    assert main(["train-draft", "--stage", "train", "--data-dir", str(tmp_path)]) == 0
    assert seen == [60, th.TrainConfig.warmup_steps]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--warmup-steps must be an integer >= 0"):
        main(["train-draft", "--stage", "train", "--data-dir", str(tmp_path), "--warmup-steps", "-3"])
    # --stage all refuses it before the hour of gen and features, not after
    monkeypatch.setattr(data, "generate_shards", lambda *a, **k: pytest.fail("gen ran before the check"))
    with pytest.raises(ValueError, match="--warmup-steps must be an integer >= 0"):
        main(["train-draft", "--stage", "all", "--data-dir", str(tmp_path), "--warmup-steps", "-3"])
