"""The EAGLE head's rotary embedding: plain RoPE unchanged, and the scaled kinds a published head may
carry (Llama 3.1 heads: rope_scaling llama3), read from the published `rope_scaling` key or transformers
5's `rope_parameters`, rotate exactly as the Llama target's own rotary embedding does."""
import json

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from radar_ext.eagle_head import EagleConfig, EagleHead

LLAMA31 = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
           "original_max_position_embeddings": 64, "rope_type": "llama3"}
YARN = {"factor": 4.0, "original_max_position_embeddings": 64, "rope_type": "yarn"}


def head_dict(**extra):
    return {"architectures": ["LlamaForCausalLMEagle3"], "hidden_size": 64, "intermediate_size": 96,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50, "draft_vocab_size": 20,
            "max_position_embeddings": 512, "rope_theta": 5000.0, **extra}


def target_cos_sin(scaling, positions):
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=512,
                      rope_parameters=None if scaling is None else {**scaling, "rope_theta": 5000.0},
                      rope_theta=5000.0)
    rot = LlamaRotaryEmbedding(cfg)
    x = torch.zeros(1, positions.shape[1], 64)
    return rot(x, positions)                                  # cos, sin [1, T, 16]


@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
@pytest.mark.parametrize("scaling", [LLAMA31, YARN, {"factor": 2.0, "rope_type": "linear"}, None])
def test_head_rotates_as_the_target(key, scaling):
    d = head_dict(**({key: dict(scaling)} if scaling is not None else {}))
    head = EagleHead.init_random(EagleConfig.from_dict(d), seed=0)
    pos = torch.tensor([[0, 1, 7, 63, 64, 200, 511]])
    cos, sin = head.midlayer.self_attn.rope_cos_sin(pos, torch.float32)   # [1, 1, T, 16]
    want_cos, want_sin = target_cos_sin(scaling, pos)
    # scaled: transformers' own frequencies, the same bits; plain: the head's float64 formula rounded once
    # vs HF's float32 one differ by an ulp of inv_freq: up to ~511 x 6e-8 rad at position 511
    tol = 2e-6 if scaling is not None else 5e-5
    torch.testing.assert_close(cos[:, 0], want_cos, rtol=0, atol=tol)
    torch.testing.assert_close(sin[:, 0], want_sin, rtol=0, atol=tol)
    if scaling is not None:  # a scaled head really differs from plain RoPE at these positions
        plain, _ = target_cos_sin(None, pos)
        assert (cos[:, 0] - plain).abs().max() > 1e-2


def test_plain_rope_is_unchanged():
    """No scaling: the float64 formula rounded to float32, as before."""
    head = EagleHead.init_random(EagleConfig.from_dict(head_dict()), seed=0)
    hd = 16
    want = (1.0 / (5000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))).float()
    assert torch.equal(head.midlayer.self_attn.inv_freq, want)
    assert head.midlayer.self_attn.attention_scaling == 1.0


def test_scaling_survives_save_and_load(tmp_path):
    head = EagleHead.init_random(EagleConfig.from_dict(head_dict(rope_scaling=dict(LLAMA31))), seed=0)
    head.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["rope_scaling"] == LLAMA31
    back = EagleHead.from_pretrained(tmp_path)
    assert torch.equal(back.midlayer.self_attn.inv_freq, head.midlayer.self_attn.inv_freq)


def test_for_target_takes_the_targets_scaling():
    tc = LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                     num_hidden_layers=6, vocab_size=50, max_position_embeddings=512,
                     rope_parameters={**LLAMA31, "rope_theta": 5000.0})
    cfg = EagleConfig.for_target(tc, draft_vocab_size=20)
    assert cfg.rope_scaling() == LLAMA31
    head = EagleHead.init_random(cfg, seed=0)
    pos = torch.arange(0, 300, 13)[None]
    cos, _ = head.midlayer.self_attn.rope_cos_sin(pos, torch.float32)
    torch.testing.assert_close(cos[:, 0], target_cos_sin(LLAMA31, pos)[0], rtol=0, atol=2e-6)
    plain = EagleConfig.for_target(LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=6,
                                               intermediate_size=96, vocab_size=50))
    assert plain.rope_scaling() is None and "rope_scaling" not in plain.to_dict()


@pytest.mark.parametrize("kind", ["dynamic", "longrope", "made-up"])
def test_run_time_scaling_is_refused_at_load(kind):
    with pytest.raises(ValueError, match=rf"EAGLE head config: rope_scaling type '{kind}' is not supported "
                                         r"\(supported: \['linear', 'llama3', 'yarn'\]\)"):
        EagleConfig.from_dict(head_dict(rope_scaling={"rope_type": kind, "factor": 2.0}))
