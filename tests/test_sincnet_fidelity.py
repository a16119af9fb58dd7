"""The paper yamls' encoder follows SincNet's own formulas (dnn_models.py): LayerNorm and FC initialisation."""

import glob
import math
import os

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from conftest import ROOT
from sincmi.encoder import SincNetEncoder, SincNetLayerNorm

PAPER_YAMLS = sorted(p for recipe in ("TIMIT", "LibriSpeech", "VoxCeleb")
                     for p in glob.glob(os.path.join(ROOT, "recipes", recipe, "hparams", "*.yaml")))


def sincnet_reference_norm(x, gamma, beta, eps=1e-6):
    """SincNet's LayerNorm, written from its definition: gamma * (x - mean) / (std + eps) + beta over
    the last dimension, std the unbiased (n - 1) one."""
    n = x.shape[-1]
    mean = x.sum(-1, keepdim=True) / n
    std = (((x - mean) ** 2).sum(-1, keepdim=True) / (n - 1)).sqrt()
    return gamma * (x - mean) / (std + eps) + beta


@pytest.fixture(scope="module")
def paper_encoder():
    with open(os.path.join(ROOT, "recipes", "TIMIT", "hparams", "lim_nce.yaml")) as f:
        return load_hyperpyyaml(f, {"data_folder": None})["encoder"].eval()


@pytest.mark.parametrize("path", PAPER_YAMLS, ids=lambda p: "/".join(p.split(os.sep)[-3::2]))
def test_every_paper_yaml_asks_for_sincnet_formulas(path):
    with open(path) as f:
        text = f.read()
    assert "\nlayer_norm: sincnet" in text and "\nfc_init: sincnet" in text
    assert "    layer_norm: !ref <layer_norm>" in text and "    fc_init: !ref <fc_init>" in text


@pytest.mark.parametrize("scale", [0.3, 1e-4])  # a loud chunk, and a quiet one where PyTorch's differs most
def test_layer_norms_follow_sincnets_formula(paper_encoder, scale):
    torch.manual_seed(0)
    norms = [paper_encoder.input_norm, paper_encoder.fc[0]]
    assert all(isinstance(norm, SincNetLayerNorm) for norm in norms)
    for norm in norms:
        features = norm.gain.shape[0]
        with torch.no_grad():
            norm.gain.uniform_(0.5, 1.5), norm.bias.uniform_(-0.1, 0.1)
        x = scale * torch.randn(3, features)
        torch.testing.assert_close(norm(x), sincnet_reference_norm(x, norm.gain, norm.bias), rtol=1e-5, atol=1e-6)
    # Convolution blocks: each channel over time (norm_over: time), gain and bias per channel and frame
    block = paper_encoder.conv_blocks[1]
    assert block.layer_norm == "sincnet" and block.norm_over == "time" and not block.fast
    x = scale * torch.randn(2, 80, block.gain.shape[-1] * 3 + 4)
    with torch.no_grad():
        out = block(x)
        conv = torch.nn.functional.max_pool1d(block.conv(x), 3)
        expected = torch.nn.functional.leaky_relu(sincnet_reference_norm(conv, block.gain, block.bias), 0.2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # PyTorch's LayerNorm is another function: the yamls' choice is visible in the numbers
    torch_norm = torch.nn.functional.layer_norm(x[0, 0], x.shape[-1:])
    relative = (torch_norm - sincnet_reference_norm(x[0, 0], 1.0, 0.0)).norm() / torch_norm.norm()
    assert relative > (1e-3 if scale < 1e-3 else 1e-5)


def test_fully_connected_weights_follow_sincnets_initialisation(paper_encoder):
    linears = [m for m in paper_encoder.fc if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6420, 2048), (2048, 2048), (2048, 2048)]
    for layer in linears:
        bound = math.sqrt(0.01 / (layer.in_features + layer.out_features))
        weight = layer.weight.detach()
        assert weight.abs().max() <= bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)  # uniform on [-b, b]
        assert torch.count_nonzero(layer.bias) == 0
    # PyTorch's default (bound 1 / sqrt(in)) is 11.5 times wider for the first layer, 14 for the others
    default = torch.nn.Linear(6420, 2048).weight.detach().abs().max().item()
    assert 11 < default / math.sqrt(0.01 / (6420 + 2048)) < 12


def test_the_demo_keeps_pytorchs_layer_norm_and_initialisation():
    encoder = SincNetEncoder(chunk_size=800, sinc_filters=4, sinc_kernel=33, conv_channels=[4], conv_kernels=[5],
                             fc_sizes=[8])
    assert isinstance(encoder.input_norm, torch.nn.LayerNorm) and encoder.config["layer_norm"] == "torch"
    with open(os.path.join(ROOT, "recipes", "Demo", "hparams", "lim_nce.yaml")) as f:
        assert "layer_norm" not in f.read()
