"""radar_ext.models.unmap_weights: a model loaded from safetensors keeps its values, its tied
weights and its outputs, with every tensor moved out of the file mapping."""
import torch
from transformers import LlamaForCausalLM

from radar_ext.models import unmap_weights
from test_decoder import tiny_llama


def test_unmap_weights_keeps_values_and_tying(tmp_path):
    src = tiny_llama("sdpa")
    src.config.tie_word_embeddings = True
    src.tie_weights()
    src.save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = {n: (t.data_ptr(), t.detach().clone()) for n, t in model.state_dict(keep_vars=True).items()}
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        ref = model(ids).logits
    unmap_weights(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight     # still one Parameter
    for n, t in model.state_dict(keep_vars=True).items():
        ptr, value = before[n]
        assert torch.equal(t, value) and t.data_ptr() != ptr, n
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
