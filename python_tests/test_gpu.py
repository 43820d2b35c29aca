"""End to end on a GPU (`make gpu-test`; every test here skips without one): the tiny random Llama decoded
on cuda with both drafters and each policy is token-identical to HF generate on cuda; policy_step and
build_tree give the CPU's bits on cuda; the tuning replay and the lean-forward gate with a cuda target.
The per-op CUDA tests live with their ops (test_op_*.py, test_quant.py, test_acceptance.py,
test_device_routing.py); `pytest -m cuda` runs them all."""
import pytest
import torch

from radar_ext import EagleDrafter, NgramDrafter, RadarDecoder, StaticPolicy, ops
from radar_ext.lean_forward import lean_forward_reason
from radar_ext.policies import LtdPolicy, RadarPolicy
from test_decoder import VOCAB, prompts, reference, tiny_llama
from test_policies import BUDGETS, COSTS


def make_policy(kind):
    if kind == "static":
        return StaticPolicy(3)
    if kind == "radar":
        return RadarPolicy(tree_topk=3, max_draft_calls=4, seed=3)
    return LtdPolicy(tree_topk=3, max_draft_calls=4, budgets=BUDGETS, costs=COSTS, pool_topk=8, seed=3)


@pytest.fixture(scope="module")
def cuda_model():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    return tiny_llama("sdpa").to("cuda")


@pytest.mark.parametrize("policy", ["static", "radar", "ltd"])
@pytest.mark.parametrize("kind", ["ngram", "eagle"])
def test_greedy_on_cuda_equals_hf_generate_on_cuda(cuda, cuda_model, kind, policy):
    drafter = NgramDrafter(max_ngram=3, min_ngram=1) if kind == "ngram" else EagleDrafter.init_random(cuda_model, seed=1)
    dec = RadarDecoder(cuda_model, drafter, make_policy(policy), tree_topk=3, verify_budget=7)
    for ids, n in zip(prompts(), (1, 9, 30)):
        ids = ids.to(cuda)
        out = dec.generate(ids, max_new_tokens=n)
        assert out.device.type == "cuda"
        assert torch.equal(out, reference(cuda_model, ids, n)), (kind, policy, n)


def test_policy_step_and_build_tree_same_bits_on_cuda(cuda):
    g = torch.Generator().manual_seed(2)
    B, F, H, G, O = 5, 11, 128, 64, 2
    args = [torch.randn(s, generator=g) * 0.5 for s in [(B, F), (B, H), (B, H), (4 * H, F), (4 * H, H), (4 * H,),
                                                        (G, H + F), (G,), (O, G), (O,)]]
    want = ops.policy_step(*args)
    got = ops.policy_step(*[a.to(cuda) for a in args])
    for k, (gg, w) in enumerate(zip(got, want)):
        assert torch.equal(gg.cpu().view(torch.int32), w.view(torch.int32)), f"policy_step output {k}"
    parents = torch.tensor([[-1, 0, 0, 1, 1, 3, -1], [-1, 0, 1, 2, -1, -1, -1]])
    n_nodes = torch.tensor([6, 4])
    for gg, w in zip(ops.build_tree(parents.to(cuda), n_nodes.to(cuda)), ops.build_tree(parents, n_nodes)):
        assert torch.equal(gg.cpu(), w)


def test_lean_forward_stays_off_cuda(cuda, cuda_model):
    assert lean_forward_reason(cuda_model).startswith("model is on cuda")


def test_static_replay_on_cuda(cuda, cuda_model):
    from radar_ext.static_search import greedy_answers, replay_answer
    ids = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(1)).to(cuda)
    answer = greedy_answers(cuda_model, [ids], 8, None)[0]
    rep = replay_answer(cuda_model, EagleDrafter.init_random(cuda_model, seed=1), ids, answer, 2, 2, [1, 3])
    assert rep.accepted.shape == (answer.shape[1] - 1, 2, 2)
