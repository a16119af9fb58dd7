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
