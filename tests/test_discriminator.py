"""Critics: the fast pairwise path equals the direct definition."""

import pytest
import torch

from sincmi.discriminator import BilinearDiscriminator, CosineDiscriminator, MLPDiscriminator


def test_mlp_pairwise_equals_mlp_on_concatenation():
    torch.manual_seed(0)
    critic = MLPDiscriminator(6, 10, num_layers=2)
    a, b = torch.randn(4, 6), torch.randn(5, 6)
    index = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 1]])
    fast = critic.pairwise(a, b, index)
    # Direct: one Linear on [z1; z2], then the rest of the MLP.
    weight = torch.cat([critic.first.weight, critic.second.weight], dim=1)
    for i in range(4):
        for k in range(2):
            x = torch.cat([a[i], b[index[i, k]]])
            hidden = weight @ x + critic.first.bias
            direct = critic.rest(hidden.unsqueeze(0)).squeeze()
            assert torch.allclose(fast[i, k], direct, atol=1e-5)


def test_cosine_and_bilinear_definitions():
    torch.manual_seed(1)
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    cos = CosineDiscriminator(init_scale=4.0, init_bias=-1.0)
    expected = 4.0 * torch.nn.functional.cosine_similarity(a, b) - 1.0
    assert torch.allclose(cos(a, b), expected, atol=1e-5)
    bil = BilinearDiscriminator(5)
    with torch.no_grad():
        bil.weight.copy_(torch.randn(5, 5))
        bil.bias.fill_(0.5)
    expected = torch.einsum("nd,de,ne->n", a, bil.weight, b) + 0.5
    assert torch.allclose(bil(a, b), expected, atol=1e-5)


def test_the_yamls_critic_is_one_override_away_and_made_alone():
    import os

    from hyperpyyaml import load_hyperpyyaml

    from conftest import ROOT
    from sincmi.discriminator import CosineDiscriminator, MLPDiscriminator, build_critic

    path = os.path.join(ROOT, "recipes", "Demo", "hparams", "lim_bce.yaml")
    with open(path) as f:
        assert isinstance(load_hyperpyyaml(f)["discriminator"], CosineDiscriminator)
    with open(path) as f:
        hparams = load_hyperpyyaml(f, {"critic": "mlp"})
    critic = hparams["discriminator"]
    assert isinstance(critic, MLPDiscriminator) and critic.first.out_features == hparams["critic_hidden_size"]
    assert hparams["pretrain_modules"]["discriminator"] is critic
    with pytest.raises(ValueError, match=r"critic='dot' is invalid: choose one of \['cosine', 'mlp'\]"):
        build_critic({"cosine": CosineDiscriminator, "mlp": MLPDiscriminator}, "dot", 8)


def mlp_by_definition(critic, z1, z2, slope):
    """The paper's critic written out: Linear on [z1; z2], then (LeakyReLU(slope), Linear) per layer."""
    linears = [critic.first] + [m for m in critic.rest if isinstance(m, torch.nn.Linear)]
    weight = torch.cat([critic.first.weight, critic.second.weight], dim=1)
    hidden = torch.cat([z1, z2], dim=-1) @ weight.T + critic.first.bias
    for linear in linears[1:]:
        hidden = linear(torch.nn.functional.leaky_relu(hidden, slope))
    return hidden.squeeze(-1)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("slope", [0.2, 0.05])
def test_mlp_all_negatives_path_equals_its_definition(num_layers, slope):
    """Every other item of the batch as a negative (LIM's default): the grid path (fused for one layer),
    its scores and its gradients, against the MLP written out pair by pair."""
    torch.manual_seed(num_layers)
    critic = MLPDiscriminator(6, 12, num_layers=num_layers, negative_slope=slope).double()
    a = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([[j for j in range(5) if j != i] for i in range(5)])  # 4 of 5: the grid path
    fast = critic.pairwise(a, b, index)
    direct = torch.stack([torch.stack([mlp_by_definition(critic, a[i], b[j], slope) for j in row])
                          for i, row in enumerate(index.tolist())])
    assert torch.allclose(fast, direct, atol=1e-10)
    weights = torch.randn(5, 4, dtype=torch.float64)
    grads_fast = torch.autograd.grad((fast * weights).sum(), [a, b, *critic.parameters()])
    grads_direct = torch.autograd.grad((direct * weights).sum(), [a, b, *critic.parameters()])
    for fast_grad, direct_grad in zip(grads_fast, grads_direct):
        assert torch.allclose(fast_grad, direct_grad, atol=1e-9)
