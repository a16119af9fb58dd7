"""The MFCC-statistics baseline and the verification back ends."""

import pytest
import torch

from sincmi.backend import Backend
from sincmi.baselines import MFCCStatistics


def test_mfcc_statistics_are_the_mean_and_std_of_40_mfccs():
    torch.manual_seed(0)
    model = MFCCStatistics()
    wav = torch.randn(1, 16000)
    feats = model.mfcc(wav)[0]
    assert feats.shape[1] == 40
    expected = torch.cat([feats.mean(0), feats.std(0)])
    assert torch.allclose(model.embed_utterances(wav)[0], expected, atol=1e-5)
    assert torch.allclose(model(wav)[0], expected, atol=1e-5)


def test_padding_does_not_change_an_utterances_statistics():
    torch.manual_seed(0)
    model = MFCCStatistics()
    short, long = torch.randn(8000), torch.randn(16000)
    batch = torch.stack([torch.nn.functional.pad(short, (0, 8000)), long])
    lens = torch.tensor([0.5, 1.0])
    together = model.embed_utterances(batch, lens)
    alone = model.embed_utterances(short.unsqueeze(0))[0]
    # The padded copy sees a frame or two more at its edge; statistics agree closely.
    assert float((together[0] - alone).norm() / alone.norm()) < 0.01
    assert torch.allclose(together[1], model.embed_utterances(long.unsqueeze(0))[0], atol=1e-5)


def test_standardize_uses_training_statistics_only():
    train = torch.tensor([[0.0, 100.0], [2.0, 300.0], [4.0, 200.0]])
    backend = Backend("standardize", train)
    out = backend(torch.tensor([[2.0, 200.0], [6.0, 400.0]]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    centred = Backend("center", train)(torch.tensor([[2.0, 200.0]]))
    assert torch.allclose(centred, torch.zeros(1, 2))
    assert Backend("none")(train) is train


def test_unknown_or_unfitted_backend_is_explained():
    with pytest.raises(ValueError, match="unknown; choose one of"):
        Backend("plda")
    with pytest.raises(ValueError, match="needs the embeddings of at least 2 training utterances"):
        Backend("standardize")


def test_whiten_makes_the_training_covariance_the_identity():
    torch.manual_seed(0)
    train = torch.randn(500, 4) @ torch.tensor([[3.0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0.1, 0], [0, 0, 0, 2]])
    from sincmi import backend as backends

    out = Backend("whiten", train)(train).double()
    cov = out.T @ out / len(out)
    # Without shrinkage the covariance would be the identity; with it every
    # eigenvalue v becomes v / (v + s * mean variance).
    train_cov = torch.cov(train.T.double(), correction=0)
    values = torch.linalg.eigvalsh(train_cov)
    shrunk = values / (values + backends.WHITEN_SHRINKAGE * train_cov.diagonal().mean())
    assert torch.allclose(torch.linalg.eigvalsh(cov), shrunk, atol=1e-4)
    assert out.mean(0).abs().max() < 1e-5
