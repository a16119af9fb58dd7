"""Augmentations for LIM's positive pairs that SpeechBrain does not provide.

The recipes compose them with SpeechBrain's own (``speechbrain.augment``:
``AddNoise``, ``DropFreq``, ``DropChunk``, ...) in an ``Augmenter`` declared in
the yaml (``pair_augmentation``); :class:`sincmi.brains.LIMBrain` applies it
to the anchor chunks and to the positive chunks separately, so the two chunks
of a pair are changed independently and the encoder cannot match them by a
shared recording condition alone.
"""

import os

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


def write_room_impulse_responses(folder, count=64, sample_rate=16000, rt60_low=0.2, rt60_high=0.8,
                                 drr_low=-5.0, drr_high=10.0, seed=0):
    """Writes ``count`` generated room impulse responses and their SpeechBrain CSV; returns the CSV's path.

    Each is the statistical room model: a direct-path impulse followed by
    Gaussian noise decaying by 60 dB over a reverberation time drawn in
    ``[rt60_low, rt60_high]`` s, at a direct-to-reverberant ratio drawn in
    ``[drr_low, drr_high]`` dB. The files (``rir_<k>.wav``) and ``rirs.csv``
    (``ID, duration, wav, wav_format, wav_opts``, what ``AddReverb`` reads) are
    written once; the seed fixes them.
    """
    import csv

    import numpy as np
    import soundfile

    path = os.path.join(folder, "rirs.csv")
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(count):
        rt60 = rng.uniform(rt60_low, rt60_high)
        t = np.arange(int(rt60 * sample_rate)) / sample_rate
        tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)  # exp(-6.9) = -60 dB
        tail *= np.sqrt(10 ** (-rng.uniform(drr_low, drr_high) / 10) / np.sum(tail ** 2))
        rir = np.concatenate([[1.0], tail]).astype(np.float32)
        wav = os.path.join(folder, f"rir_{k}.wav")
        soundfile.write(wav, rir / np.abs(rir).max(), sample_rate)
        rows.append([f"rir_{k}", len(rir) / sample_rate, os.path.abspath(wav), "wav", ""])
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ID", "duration", "wav", "wav_format", "wav_opts"])
        writer.writerows(rows)
    os.replace(tmp, path)  # complete, whatever other process writes the same files
    return path


class GeneratedReverb(nn.Module):
    """SpeechBrain's ``AddReverb`` with room impulse responses generated on first use (no download).

    The responses (:func:`write_room_impulse_responses`) go to ``folder``;
    the other arguments are theirs. One response per call, as ``AddReverb`` does.
    """

    def __init__(self, folder, count=64, sample_rate=16000, rt60_low=0.2, rt60_high=0.8, seed=0):
        super().__init__()
        self.settings = dict(folder=folder, count=count, sample_rate=sample_rate, rt60_low=rt60_low,
                             rt60_high=rt60_high, seed=seed)
        self.reverb = None

    def forward(self, waveforms):
        if self.reverb is None:
            from speechbrain.augment.time_domain import AddReverb

            rate = self.settings["sample_rate"]
            self.reverb = AddReverb(write_room_impulse_responses(**self.settings), reverb_sample_rate=rate,
                                    clean_sample_rate=rate)
        return self.reverb(waveforms)


class SameLength(nn.Module):
    """Runs an augmentation that changes the length (speed perturbation) and restores the input's length.

    A longer output is cut to the input's length, a shorter one extended by
    its own reflection, so a chunk stays ``chunk_size`` samples.

    Example
    -------
    >>> from speechbrain.augment.time_domain import SpeedPerturb
    >>> SameLength(SpeedPerturb(16000, speeds=[90]))(torch.randn(2, 3200)).shape
    torch.Size([2, 3200])
    """

    def __init__(self, augmentation):
        super().__init__()
        self.augmentation = augmentation

    def forward(self, waveforms):
        out = self.augmentation(waveforms)
        size = waveforms.shape[1]
        if out.shape[1] >= size:
            return out[:, :size]
        return torch.nn.functional.pad(out.unsqueeze(1), (0, size - out.shape[1]), mode="reflect").squeeze(1)
