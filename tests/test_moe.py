"""DeepSeekMoE / Mixtral routing and dispatch, checked against transformers' own MoE modules."""

from __future__ import annotations

import pytest
import torch

from llmzoo.moe import MoE, MoESpec

D = 24


def fill_loud(ours: MoE, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        if ours.router.score_bias is not None:
            ours.router.score_bias.copy_(0.2 * torch.randn(ours.router.score_bias.shape, generator=g))


def copy_into_reference(ours: MoE, ref: torch.nn.Module) -> None:
    """Our stacked gate/up/down → HF's fused gate_up_proj (E, 2F, D) and down_proj (E, D, F)."""
    with torch.no_grad():
        ref.gate.weight.copy_(ours.router.weight)
        if ours.router.score_bias is not None:
            ref.gate.e_score_correction_bias.copy_(ours.router.score_bias)
        ref.experts.gate_up_proj.copy_(torch.cat([ours.experts.gate, ours.experts.up], dim=1))
        ref.experts.down_proj.copy_(ours.experts.down)
        if ours.shared is not None:
            for n in ("gate", "up", "down"):
                getattr(ref.shared_experts, f"{n}_proj").load_state_dict(getattr(ours.shared, n).state_dict())


def deepseek_v3_pair(n_group=4, topk_group=2):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    hf = DeepseekV3Config(hidden_size=D, num_attention_heads=4, num_key_value_heads=4, moe_intermediate_size=8, n_routed_experts=16, num_experts_per_tok=3,
                          n_group=n_group, topk_group=topk_group, n_shared_experts=2, norm_topk_prob=True,
                          routed_scaling_factor=2.5)
    spec = MoESpec(n_experts=16, top_k=3, d_expert=8, n_shared_experts=2, score="sigmoid", n_groups=n_group,
                   topk_groups=topk_group, group_score="top2_sum", norm_topk=True, routed_scale=2.5,
                   score_bias=True)
    return spec, DeepseekV3MoE(hf)


def deepseek_v2_pair(mlp_bias=True):
    from transformers import DeepseekV2Config
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe

    hf = DeepseekV2Config(hidden_size=D, num_attention_heads=4, moe_intermediate_size=8, n_routed_experts=12, num_experts_per_tok=3,
                          n_group=4, topk_group=2, topk_method="group_limited_greedy", n_shared_experts=2,
                          routed_scaling_factor=1.7, mlp_bias=mlp_bias)
    spec = MoESpec(n_experts=12, top_k=3, d_expert=8, n_shared_experts=2, shared_bias=mlp_bias, score="softmax",
                   n_groups=4, topk_groups=2, group_score="max", norm_topk=False, routed_scale=1.7)
    return spec, DeepseekV2Moe(hf)


def mixtral_pair():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    hf = MixtralConfig(hidden_size=D, num_attention_heads=4, num_key_value_heads=2, intermediate_size=8, num_local_experts=8, num_experts_per_tok=2)
    spec = MoESpec(n_experts=8, top_k=2, d_expert=8, score="softmax", norm_topk=True)
    return spec, MixtralSparseMoeBlock(hf)


PAIRS = {"deepseek_v3": deepseek_v3_pair, "deepseek_v2": deepseek_v2_pair, "mixtral": mixtral_pair}


@pytest.mark.parametrize("family", list(PAIRS))
def test_moe_matches_transformers(family):
    spec, ref = PAIRS[family]()
    ours = MoE(spec, D)
    fill_loud(ours, seed=3)
    copy_into_reference(ours, ref)
    x = torch.randn(2, 16, D, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert (got - want).abs().max() <= 1e-5
    assert want.abs().max() > 0.1
    _, ref_experts = ref.gate(x)[1:]
    assert torch.equal(torch.bincount(ref_experts.flatten(), minlength=spec.n_experts), ours.load)


@pytest.mark.parametrize("family", ["deepseek_v3", "deepseek_v2"])
def test_group_limit_excludes_experts(family):
    """The parity above is only meaningful if group limiting changes some token's choice."""
    spec, _ = PAIRS[family]()
    ours = MoE(spec, D)
    fill_loud(ours, seed=3)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(4))
    _, grouped, scores = ours.router(x)
    bias = ours.router.score_bias if ours.router.score_bias is not None else 0
    free = (scores + bias).topk(spec.top_k, dim=-1).indices
    differs = [set(a.tolist()) != set(b.tolist()) for a, b in zip(grouped, free)]
    assert any(differs)
    groups = grouped // (spec.n_experts // spec.n_groups)
    assert all(len(set(g.tolist())) <= spec.topk_groups for g in groups)


def test_score_bias_selects_but_does_not_weigh():
    spec, _ = deepseek_v3_pair(n_group=1, topk_group=1)
    ours = MoE(spec, D)
    fill_loud(ours, seed=5)
    x = torch.randn(8, D, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours.router.score_bias.zero_()
        ours.router.score_bias[0] = 100.0  # expert 0 always chosen
    weights, experts, scores = ours.router(x)
    assert (experts == 0).any(-1).all()
    chosen = scores.gather(1, experts)
    torch.testing.assert_close(weights, chosen / chosen.sum(-1, keepdim=True) * spec.routed_scale)


def test_each_expert_runs_at_most_once_per_forward():
    spec, _ = deepseek_v3_pair()
    ours = MoE(spec, D)
    fill_loud(ours, seed=7)
    calls: list[tuple[int, int]] = []
    original = ours.experts.expert

    def counted(i, x, *rest):
        calls.append((i, x.shape[0]))
        return original(i, x, *rest)

    ours.experts.expert = counted
    x = torch.randn(4, 16, D, generator=torch.Generator().manual_seed(8))
    ours(x)
    ids = [i for i, _ in calls]
    assert len(ids) == len(set(ids))  # at most once each
    assert set(ids) == set(torch.nonzero(ours.load).flatten().tolist())  # exactly the loaded ones
    assert sum(n for _, n in calls) == 4 * 16 * spec.top_k  # each (token, slot) computed once
    assert ours.load.sum() == 4 * 16 * spec.top_k


def test_router_aux_outputs():
    spec, _ = mixtral_pair()
    ours = MoE(spec, D)
    fill_loud(ours, seed=9)
    x = torch.randn(2, 5, D, requires_grad=True)
    ours(x)
    assert ours.load.shape == (8,) and ours.load.sum() == 2 * 5 * 2
    torch.testing.assert_close(ours.mean_score.sum(), torch.tensor(1.0))  # softmax rows average to 1
    ours.mean_score.pow(2).sum().backward()
    assert ours.router.weight.grad is not None and ours.router.weight.grad.abs().sum() > 0


def gpt_oss_spec():
    return MoESpec(n_experts=8, top_k=3, d_expert=8, score="softmax", norm_topk=True, router_bias=True,
                   expert_bias=True, swiglu_limit=0.5, swiglu_alpha=1.702, up_offset=1.0)  # limit reached


def llama4_spec():
    return MoESpec(n_experts=8, top_k=1, d_expert=8, score="sigmoid", n_shared_experts=1, weigh_input=True)


SPECS = {**{f: (lambda f=f: PAIRS[f]()[0]) for f in PAIRS}, "gpt_oss": gpt_oss_spec, "llama4": llama4_spec}


@pytest.mark.parametrize("tokens", [1, 4, 64])
@pytest.mark.parametrize("family", list(SPECS))
def test_grouped_experts_equal_per_expert_loop(family, tokens):
    """Inference runs three grouped GEMMs over the sorted routes; training one matmul per loaded
    expert. Same routes, same sums: equal to float32 rounding for decode (1, 4 tokens) and prefill."""
    ours = MoE(SPECS[family](), D)
    fill_loud(ours, seed=11)
    x = torch.randn(tokens, D, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        grouped = ours(x)
    looped = ours(x)  # parameters require grad: the per-expert path
    assert looped.requires_grad and not grouped.requires_grad
    assert grouped.abs().max() > 0.1
    torch.testing.assert_close(grouped, looped.detach(), atol=1e-6, rtol=1e-6)


def test_grouped_experts_skip_other_ranks_routes():
    """Under expert parallelism a route to another rank's expert arrives as id E (one past the end):
    it adds nothing, in both paths."""
    spec = gpt_oss_spec()
    ours = MoE(spec, D)
    fill_loud(ours, seed=13)
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(14))
    weights, experts, _ = ours.router(x)
    mine = experts < spec.n_experts // 2
    local = experts.masked_fill(~mine, spec.n_experts)  # this rank's ids only, others past the end
    with torch.no_grad():
        got = ours.experts(x, weights, local)
        kept = ours.experts(x, weights.masked_fill(~mine, 0.0), experts)  # the same routes, weighted 0
    assert got.abs().max() > 0.1 and (~mine).any() and mine.any()
    torch.testing.assert_close(got, kept, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got, ours.experts(x, weights, local).detach(), atol=1e-6, rtol=1e-6)  # loop
