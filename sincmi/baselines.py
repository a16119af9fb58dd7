"""Reference systems scored beside LIM: MFCC statistics, the standard handcrafted baseline."""

import torch
import torch.nn as nn
from speechbrain.lobes.features import MFCC


class MFCCStatistics(nn.Module):
    """Mean and standard deviation of 40 MFCCs over a chunk or a whole utterance.

    The handcrafted speaker baseline as the field uses it: 40 MFCCs from 40
    mel filters (25 ms windows, 10 ms hop), pooled into their mean and
    standard deviation (80 values). The standardisation with the training
    speakers' statistics that completes it is the verification back end
    (:mod:`sincmi.backend`), which every system is offered alike. No
    trainable weights; it has the encoder interface (``forward`` on chunks,
    ``embed_utterances`` on padded utterances), so the speaker-id probe and
    the verification stage treat it exactly like a trained encoder.

    Example
    -------
    >>> mfcc = MFCCStatistics(chunk_size=3200)
    >>> mfcc(torch.randn(2, 3200)).shape
    torch.Size([2, 80])
    """

    def __init__(self, chunk_size=3200, sample_rate=16000, n_mfcc=40, n_mels=40):
        super().__init__()
        self.chunk_size = chunk_size
        self.embedding_size = 2 * n_mfcc
        self.mfcc = MFCC(sample_rate=sample_rate, n_mfcc=n_mfcc, n_mels=n_mels, deltas=False, context=False)

    def forward(self, chunks, lens=None):
        """MFCC mean and standard deviation of each chunk, ``(batch, 2 * n_mfcc)``."""
        feats = self.mfcc(chunks)
        return torch.cat([feats.mean(dim=1), feats.std(dim=1)], dim=1)

    def embed_utterances(self, wavs, lens=None, shift=None, max_chunks=None):
        """MFCC mean and standard deviation over each utterance's own frames."""
        feats = self.mfcc(wavs)  # (batch, frames, n_mfcc)
        if lens is None:
            frames = torch.full((feats.shape[0],), feats.shape[1], device=feats.device)
        else:
            frames = torch.clamp(torch.round(lens.to(feats.device) * feats.shape[1]).long(), min=2)
        mask = (torch.arange(feats.shape[1], device=feats.device).unsqueeze(0) < frames.unsqueeze(1))
        mask = mask.unsqueeze(-1).to(feats.dtype)
        count = frames.unsqueeze(1).to(feats.dtype)
        mean = (feats * mask).sum(1) / count
        var = (((feats - mean.unsqueeze(1)) * mask) ** 2).sum(1) / (count - 1)
        return torch.cat([mean, var.sqrt()], dim=1)
