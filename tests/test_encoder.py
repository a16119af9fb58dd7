"""SincNet encoder: reference shapes, sinc filters, chunking, utterance embeddings."""

import math

import pytest
import torch

from sincmi.encoder import SincConv, SincNetEncoder, chunk_waveforms, iter_chunks, utterance_embeddings


def test_reference_configuration_shapes():
    enc = SincNetEncoder()  # SincNet TIMIT defaults
    assert enc.conv_output_shape == (60, 107)
    feats = enc.conv_features(torch.randn(2, 3200))
    assert feats.shape == (2, 60, 107)
    out = enc(torch.randn(2, 3200))
    assert out.shape == (2, 2048) and enc.embedding_size == 2048
    sinc = enc.conv_blocks[0].conv
    assert (sinc.out_channels, sinc.kernel_size) == (80, 251)


def test_wrong_chunk_shape_is_explained():
    enc = SincNetEncoder(chunk_size=800, sinc_filters=4, sinc_kernel=51, conv_channels=[4],
                         conv_kernels=[5], fc_sizes=[8])
    with pytest.raises(ValueError, match=r"\(batch, 800\)"):
        enc(torch.randn(2, 900))


def test_sinc_filters_pass_their_band():
    conv = SincConv(out_channels=10, kernel_size=251, sample_rate=16000)
    f1, f2 = conv.cutoffs()
    filters = conv.filters().detach().squeeze(1)
    spectrum = torch.fft.rfft(filters, n=8192).abs()
    freqs = torch.fft.rfftfreq(8192)  # fraction of fs
    for i in range(10):
        centre = (f1[i] + f2[i]).item() / 2
        in_band = spectrum[i, (freqs - centre).abs().argmin()]
        outside = f2[i].item() + 0.1 if f2[i].item() < 0.38 else f1[i].item() - 0.1
        far = spectrum[i, (freqs - outside).abs().argmin()]
        assert in_band > 0.5 and far < 0.1 * in_band
    # Mel initialisation: bands widen with frequency.
    widths = (f2 - f1).squeeze()
    assert (widths[1:] > widths[:-1]).all()


def test_sinc_centre_tap_is_unit_gain():
    conv = SincConv(out_channels=3, kernel_size=11)
    taps = conv.filters().detach().squeeze(1)
    assert torch.allclose(taps[:, 5], torch.ones(3))  # window(centre) = 1, normalised by 2(f2-f1)


def test_chunking_covers_only_complete_chunks():
    wavs = torch.arange(20.0).repeat(2, 1)
    chunks, owner = chunk_waveforms(wavs, torch.tensor([1.0, 0.5]), chunk_size=8, shift=4)
    # length 20 -> starts 0, 4, 8, 12; length 10 -> start 0 only
    assert owner.tolist() == [0, 0, 0, 0, 1]
    assert chunks[3].tolist() == list(range(12, 20))
    # shorter than one chunk: one zero-padded chunk
    chunks, owner = chunk_waveforms(torch.ones(1, 5), None, chunk_size=8, shift=4)
    assert chunks.shape == (1, 8) and chunks[0, 5:].abs().sum() == 0


def test_iter_chunks_gives_the_chunks_of_chunk_waveforms_in_batches():
    wavs = torch.randn(3, 50)
    lens = torch.tensor([1.0, 0.4, 0.7])
    chunks, owner = chunk_waveforms(wavs, lens, chunk_size=8, shift=3)
    pieces = list(iter_chunks(wavs, lens, chunk_size=8, shift=3, max_chunks=4))
    assert [len(c) for c, _ in pieces[:-1]] == [4] * (len(pieces) - 1)
    assert torch.equal(torch.cat([c for c, _ in pieces]), chunks)
    assert torch.equal(torch.cat([o for _, o in pieces]), owner)


def test_utterance_embedding_is_mean_of_normalised_chunks():
    def encoder(chunks):  # 2-D "embedding": mean and max of each chunk
        return torch.stack([chunks.mean(1), chunks.max(1).values], dim=1)

    wav = torch.randn(1, 40)
    emb = utterance_embeddings(encoder, wav, None, chunk_size=10, shift=10)
    chunks = wav.view(4, 10)
    expected = torch.nn.functional.normalize(encoder(chunks), dim=1).mean(0)
    assert torch.allclose(emb[0], expected, atol=1e-6)
    # Padding does not leak into a shorter utterance of the same batch.
    padded = torch.cat([wav, torch.zeros(1, 40)], dim=1)
    batch = torch.cat([padded, torch.randn(1, 80)])
    emb = utterance_embeddings(encoder, batch, torch.tensor([0.5, 1.0]), chunk_size=10, shift=10)
    assert torch.allclose(emb[0], expected, atol=1e-6)
    assert math.isclose(float(emb.shape[1]), 2.0)
