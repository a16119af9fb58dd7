"""Using a trained encoder: utterance embeddings and verification.

:class:`SpeakerEncoder` loads an exported model folder (``tools/export_model.py``)
in SpeechBrain's ``Pretrained`` style::

    from sincmi.inference import SpeakerEncoder
    model = SpeakerEncoder.from_hparams(source="pretrained/demo_lim")
    embedding = model.encode_file("a.wav")
    score, same_speaker = model.verify_files("a.wav", "b.wav")

An utterance embedding is the mean of the L2-normalised embeddings of its
chunks (``chunk_size`` samples every ``shift`` samples), exactly as the
recipes' evaluation computes it (:func:`sincmi.encoder.utterance_embeddings`).
"""

import math
import os

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.inference.interfaces import Pretrained
from torch.utils.data import DataLoader
from tqdm import tqdm

from sincmi.data import resampled
from sincmi.encoder import utterance_embeddings


def read_audio(path, sample_rate):
    """Reads a whole file as mono float32 at ``sample_rate`` (down-mixed, resampled)."""
    wav, rate = sf.read(path, dtype="float32", always_2d=True)
    wav = torch.from_numpy(wav.mean(axis=1))
    return resampled(wav, (rate, sample_rate))


def file_embedding(encoder, path, sample_rate, shift, gain=None, block_chunks=512, max_chunks=64):
    """Utterance embedding of a file, read ``block_chunks`` chunks at a time.

    The chunks and their mean are those of :func:`sincmi.encoder.utterance_embeddings`
    on the whole file, but memory stays bounded by the block whatever the
    file's length. Files at another sample rate are read whole and resampled.

    Arguments
    ---------
    encoder : torch.nn.Module
        Chunk encoder with ``chunk_size`` (in eval mode).
    path : str
        Audio file.
    sample_rate : int
        The encoder's sample rate.
    shift : int
        Hop between chunks, in samples.
    gain : float or None
        Scale applied to the samples; None: 1, or ``"peak"`` for unit peak
        amplitude (as recipes trained with ``normalize_peak``).
    """
    chunk = encoder.chunk_size
    info = sf.info(path)
    whole = None
    if info.samplerate != sample_rate:
        whole = read_audio(path, sample_rate)
    total = whole.shape[0] if whole is not None else info.frames
    if gain == "peak":
        peak = _peak(path) if whole is None else float(whole.abs().max())
        gain = 1.0 / peak if peak > 0 else 1.0
    device = next(encoder.parameters()).device
    n_chunks = chunk_count(total, chunk, shift)
    emb_sum, count = None, 0
    for first in range(0, n_chunks, block_chunks):
        last = min(first + block_chunks, n_chunks)
        start, frames = first * shift, (last - first - 1) * shift + chunk
        if whole is not None:
            wav = whole[start : start + frames]
        else:
            data, _ = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
            wav = torch.from_numpy(data.mean(axis=1))
        if wav.shape[0] < chunk:  # a file shorter than one chunk: zero-padded, as in evaluation
            wav = F.pad(wav, (0, chunk - wav.shape[0]))
        if gain is not None:
            wav = wav * gain
        chunks = wav.to(device).unfold(0, chunk, shift)
        for i in range(0, len(chunks), max_chunks):
            emb = F.normalize(encoder(chunks[i : i + max_chunks]), dim=-1).sum(0)
            emb_sum = emb if emb_sum is None else emb_sum + emb
        count += len(chunks)
    return emb_sum / count


def _peak(path, block=16000 * 60):
    peak = 0.0
    for data in sf.blocks(path, blocksize=block, dtype="float32", always_2d=True):
        peak = max(peak, float(np.abs(data.mean(axis=1)).max()) if len(data) else 0.0)
    return peak


class SpeakerEncoder(Pretrained):
    """A trained SincNet encoder: embeddings and same-speaker decisions.

    Load with ``SpeakerEncoder.from_hparams(source=FOLDER)``, where FOLDER holds
    the ``hyperparams.yaml`` and ``encoder.ckpt`` written by
    ``tools/export_model.py``; local folders need no network. Hparams used:
    ``sample_rate``, ``shift`` (chunk hop), ``threshold`` (cosine score from
    which two utterances are called the same speaker; null if unknown),
    ``normalize_peak`` (scale each file to unit peak, as in training).
    """

    MODULES_NEEDED = ["encoder"]
    HPARAMS_NEEDED = ["sample_rate", "shift", "threshold"]

    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", savedir=None, **kwargs):
        """Loads an exported model folder (or any source SpeechBrain can fetch).

        A local folder is used in place: nothing is copied or downloaded.
        """
        if savedir is None and os.path.isdir(source):
            savedir = source
        return super().from_hparams(source, hparams_file=hparams_file, savedir=savedir, **kwargs)

    @property
    def encoder(self):
        return self.mods.encoder

    @property
    def threshold(self):
        return self.hparams.threshold

    @torch.no_grad()
    def encode_batch(self, wavs, wav_lens=None, normalize=False):
        """Utterance embeddings of a padded batch ``(batch, time)`` at the model's rate.

        ``wav_lens`` are relative lengths (SpeechBrain convention). Returns
        ``(batch, D)``; ``normalize=True`` L2-normalises them.
        """
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        wavs = wavs.to(self.device).float()
        if wav_lens is not None:
            wav_lens = wav_lens.to(self.device)
        emb = utterance_embeddings(self.encoder, wavs, wav_lens, self.encoder.chunk_size, self.hparams.shift)
        return F.normalize(emb, dim=-1) if normalize else emb

    @torch.no_grad()
    def encode_file(self, path, normalize=False):
        """Utterance embedding ``(D,)`` of an audio file, in bounded memory."""
        gain = "peak" if getattr(self.hparams, "normalize_peak", False) else None
        emb = file_embedding(self.encoder, path, self.hparams.sample_rate, self.hparams.shift, gain)
        return F.normalize(emb, dim=-1) if normalize else emb

    def score(self, emb_a, emb_b):
        """Cosine similarity of two embeddings (the recipes' verification score)."""
        return float(F.cosine_similarity(emb_a.flatten(), emb_b.flatten(), dim=0))

    def verify_files(self, path_a, path_b, threshold=None):
        """``(score, same_speaker)`` for two files.

        ``same_speaker`` is ``score >= threshold`` with the model's stored
        threshold (or the one given); None when neither is known.
        """
        score = self.score(self.encode_file(path_a), self.encode_file(path_b))
        threshold = self.threshold if threshold is None else threshold
        return score, (None if threshold is None else bool(score >= threshold))

    def _prepare_modules(self, freeze_params):
        super()._prepare_modules(freeze_params)
        self.mods.eval()


@torch.no_grad()
def embed_dataset(encoder, dataset, device="cpu", batch_size=8, shift=None, progress=True, sampler=None):
    """Utterance embeddings of every item of a sentence dataset.

    Arguments
    ---------
    encoder : torch.nn.Module
        A chunk encoder (``SincNetEncoder`` or anything with ``chunk_size``
        and, optionally, its own ``embed_utterances``).
    dataset : DynamicItemDataset
        Items with ``id`` and ``sig`` (see :func:`sincmi.data.sentence_dataset`).
    shift : int, optional
        Hop between chunks (default: half a chunk).
    sampler : torch.utils.data.Sampler, optional
        The items to embed (default: all, in order).

    Returns
    -------
    dict
        ``{id: embedding}`` on the CPU.
    """
    encoder = encoder.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=PaddedBatch, sampler=sampler)
    embeddings = {}
    for batch in tqdm(loader, desc="Embedding utterances", disable=not progress):
        wavs, lens = batch.sig
        wavs, lens = wavs.to(device), lens.to(device)
        if hasattr(encoder, "embed_utterances"):
            emb = encoder.embed_utterances(wavs, lens, shift=shift)
        else:
            emb = utterance_embeddings(encoder, wavs, lens, encoder.chunk_size, shift)
        for utt_id, vector in zip(batch.id, emb.cpu()):
            embeddings[utt_id] = vector
    return embeddings


def chunk_count(num_samples, chunk_size, shift):
    """Chunks an utterance of ``num_samples`` gives (at least one).

    >>> chunk_count(16000, 3200, 1600)
    9
    """
    return max(math.floor((num_samples - chunk_size) / shift) + 1, 1)
