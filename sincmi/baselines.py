"""Reference systems scored beside LIM: mean MFCCs."""

import torch
import torch.nn as nn
from speechbrain.lobes.features import MFCC


class MeanMFCC(nn.Module):
    """Mean MFCC vector of a chunk or of a whole utterance (no trainable weights).

    It has the encoder interface (``forward`` on chunks, ``embed_utterances``
    on padded utterances), so the speaker-id probe and the verification back
    end treat it exactly like a trained encoder.

    Example
    -------
    >>> mfcc = MeanMFCC(chunk_size=3200)
    >>> mfcc(torch.randn(2, 3200)).shape
    torch.Size([2, 20])
    """

    def __init__(self, chunk_size=3200, sample_rate=16000, n_mfcc=20, n_mels=40):
        super().__init__()
        self.chunk_size = chunk_size
        self.embedding_size = n_mfcc
        self.mfcc = MFCC(
            sample_rate=sample_rate, n_mfcc=n_mfcc, n_mels=n_mels, deltas=False, context=False
        )

    def forward(self, chunks, lens=None):
        """Mean MFCCs of each chunk, ``(batch, n_mfcc)``."""
        return self.mfcc(chunks).mean(dim=1)

    def embed_utterances(self, wavs, lens=None, shift=None, max_chunks=None):
        """Mean MFCCs over each utterance's own frames, ``(batch, n_mfcc)``."""
        feats = self.mfcc(wavs)  # (batch, frames, n_mfcc)
        if lens is None:
            return feats.mean(dim=1)
        frames = torch.clamp(torch.round(lens * feats.shape[1]).long(), min=1)
        mask = torch.arange(feats.shape[1], device=feats.device).unsqueeze(0) < frames.unsqueeze(1)
        return (feats * mask.unsqueeze(-1)).sum(1) / frames.unsqueeze(1).to(feats.dtype)
