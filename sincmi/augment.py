"""Augmentations for LIM's positive pairs that SpeechBrain does not provide.

The recipes compose them with SpeechBrain's own (``speechbrain.augment``:
``AddNoise``, ``DropFreq``, ``DropChunk``, ...) in an ``Augmenter`` declared in
the yaml (``pair_augmentation``); :class:`sincmi.brains.LIMBrain` applies it
to the anchor chunks and to the positive chunks separately, so the two chunks
of a pair are changed independently and the encoder cannot match them by a
shared recording condition alone.
"""

import torch
import torch.nn as nn


class Crosstalk(nn.Module):
    """Adds other chunks of the batch as background speech (babble) at a random SNR.

    Each chunk gets the sum of ``speakers`` other chunks of the same batch
    (rolled by random offsets, so never itself), scaled to an SNR drawn
    uniformly in ``[snr_low, snr_high]`` dB. No noise files are needed: the
    training audio is its own babble corpus.

    Example
    -------
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(4, 3200)
    >>> y = Crosstalk(snr_low=10, snr_high=10)(x)
    >>> snr = 10 * torch.log10(x.pow(2).sum(1) / (y - x).pow(2).sum(1))
    >>> torch.allclose(snr, torch.full((4,), 10.0), atol=1e-3)
    True
    """

    def __init__(self, snr_low=5.0, snr_high=15.0, speakers=1):
        super().__init__()
        self.snr_low, self.snr_high, self.speakers = snr_low, snr_high, speakers

    def forward(self, waveforms):
        batch = waveforms.shape[0]
        if batch < 2:
            return waveforms
        babble = torch.zeros_like(waveforms)
        for _ in range(self.speakers):
            babble += waveforms.roll(int(torch.randint(1, batch, (1,))), dims=0)
        snr = self.snr_low + (self.snr_high - self.snr_low) * torch.rand(batch, 1, device=waveforms.device)
        power = waveforms.pow(2).mean(1, keepdim=True).clamp(min=1e-10)
        babble_power = babble.pow(2).mean(1, keepdim=True).clamp(min=1e-10)
        scale = torch.sqrt(power / (babble_power * 10 ** (snr / 10)))
        return waveforms + scale * babble
