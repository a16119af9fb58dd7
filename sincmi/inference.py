"""Using a trained encoder: utterance embeddings and verification.

:class:`SpeakerEncoder` loads a model folder written by ``python -m sincmi export`` (:mod:`sincmi.export`)
in SpeechBrain's ``Pretrained`` style::

    from sincmi.inference import SpeakerEncoder
    model = SpeakerEncoder.from_hparams(source="pretrained/demo_lim")
    embedding = model.encode_file("a.wav")
    times, embeddings = model.encode_file("meeting.wav", window=1.5, hop=0.75)
    result = model.verify_files("a.wav", "b.wav")          # the stored threshold
    result = model.verify_files("a.wav", "b.wav", threshold="far=0.01")
    result.score, result.same_speaker, result.operating_point

An utterance embedding is the mean of the L2-normalised embeddings of its
chunks (``chunk_size`` samples every ``shift`` samples), exactly as the
recipes' evaluation computes it (:func:`sincmi.encoder.utterance_embeddings`),
then the model's back end (``backend.npz``: e.g. whitening, fitted in the run);
two embeddings are scored by cosine, then normalised against the model's
cohort when it carries the run's score normalisation. A model scores as the
run's table did for the exported back end.
"""

import json
import math
import os
from collections import namedtuple

import numpy as np
import torch
import torch.nn.functional as F
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.inference.interfaces import Pretrained
from torch.utils.data import DataLoader

from sincmi import audio
from sincmi.audio import to_mono
from sincmi.backend import Backend
from sincmi.data import resampled
from sincmi.encoder import utterance_embeddings
from sincmi.scoring import cohort_statistics, normalize_scores
from sincmi.thresholds import OperatingPoint, operating_point
from sincmi.progress import progress_bar

Verification = namedtuple("Verification", "score same_speaker operating_point")
Verification.__doc__ = """A verification: the cosine ``score``, ``same_speaker`` (``score >
operating_point.threshold``; None without a threshold) and the :class:`OperatingPoint` used."""

WindowEmbeddings = namedtuple("WindowEmbeddings", "times embeddings")
WindowEmbeddings.__doc__ = """Embeddings over time: ``times`` ``(n, 2)`` start and end of each
window in seconds, ``embeddings`` ``(n, D)``."""


def read_audio(path, sample_rate):
    """Reads a whole file as mono float32 at ``sample_rate`` (down-mixed, resampled)."""
    wav = torch.from_numpy(to_mono(audio.read_audio(path)))
    return resampled(wav, (audio.audio_info(path).samplerate, sample_rate))


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
    info = audio.audio_info(path)
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
            wav = torch.from_numpy(to_mono(audio.read_audio(path, start, frames)))
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
    for data in audio.read_blocks(path, block):
        peak = max(peak, float(np.abs(data.mean(axis=1)).max()) if len(data) else 0.0)
    return peak


def window_starts(total, window, hop):
    """Start samples of the windows of a ``total``-sample file: every ``hop``
    samples while a whole window fits, or one window over a shorter file.

    >>> window_starts(100, 40, 20), window_starts(30, 40, 20)
    ([0, 20, 40, 60], [0])
    """
    return list(range(0, max(total - window, 0) + 1, hop))


def window_embeddings(encoder, path, sample_rate, shift, window, hop, gain=None, max_chunks=64):
    """Embeddings of ``window``-second windows every ``hop`` seconds of a file.

    Each window's embedding is that of the cut segment as an utterance (its
    chunks every ``shift`` samples, peak-normalised on its own with
    ``gain="peak"``), read from the file one window at a time: memory does
    not grow with the file's length. Windows are cut at the file's own rate
    and resampled to ``sample_rate``. Returns :class:`WindowEmbeddings`.
    """
    if not (window > 0 and hop > 0):
        raise ValueError(f"window and hop must be positive seconds, got window={window!r}, hop={hop!r}")
    info = audio.audio_info(path)
    rate = info.samplerate
    length, step = int(round(window * rate)), int(round(hop * rate))
    if length < 1 or step < 1:
        raise ValueError(f"window={window} s and hop={hop} s are shorter than one sample at {rate} Hz")
    device = next(encoder.parameters()).device
    times, embeddings = [], []
    for start in window_starts(info.frames, length, step):
        data = audio.read_audio(path, start, length)
        wav = resampled(torch.from_numpy(data.mean(axis=1)), (rate, sample_rate))
        if gain == "peak" and wav.abs().max() > 0:
            wav = wav / wav.abs().max()
        emb = utterance_embeddings(encoder, wav.to(device)[None], None, encoder.chunk_size, shift, max_chunks)
        embeddings.append(emb[0].cpu())
        times.append((start / rate, (start + len(data)) / rate))
    return WindowEmbeddings(torch.tensor(times, dtype=torch.float64), torch.stack(embeddings))


class SpeakerEncoder(Pretrained):
    """A trained SincNet encoder: embeddings and same-speaker decisions.

    Load with ``SpeakerEncoder.from_hparams(source=FOLDER)``, where FOLDER holds
    the ``hyperparams.yaml`` and ``encoder.ckpt`` written by
    ``python -m sincmi export``; local folders need no network. Hparams used:
    ``sample_rate``, ``shift`` (chunk hop), ``threshold`` (cosine score above
    which two utterances are called the same speaker; null if unknown),
    ``operating_point`` (how it was chosen), ``normalize_peak`` (scale each
    file to unit peak, as in training). ``score_summary.json``, when the
    folder has one, lets :meth:`verify_files` pick other operating points.
    """

    MODULES_NEEDED = ["encoder"]
    HPARAMS_NEEDED = ["sample_rate", "shift", "threshold"]
    BACKEND_FILE, COHORT_FILE = "backend.npz", "cohort.npz"

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

    def _model_file(self, name):
        folder = getattr(self.hparams, "savedir", None)
        return os.path.join(str(folder), name) if folder else name

    @property
    def backend(self):
        """The :class:`sincmi.backend.Backend` applied to utterance embeddings (``none``: raw)."""
        if not hasattr(self, "_backend"):
            name = getattr(self.hparams, "backend", None) or "none"
            if name == "none":
                self._backend = Backend("none")
            else:
                path = self._model_file(self.BACKEND_FILE)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"the model's back end is {name!r} but {path} is missing: export it again")
                self._backend = Backend.load(path)
        return self._backend

    @property
    def cohort(self):
        """``(M, D)`` cohort embeddings of the model's score normalisation, or None without one."""
        if not hasattr(self, "_cohort"):
            self._cohort = None
            if getattr(self.hparams, "score_norm", None):
                path = self._model_file(self.COHORT_FILE)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"the model normalises scores ({self.hparams.score_norm}) but {path} "
                                            "is missing: export it again")
                with np.load(path) as arrays:
                    self._cohort = torch.from_numpy(arrays["embeddings"])
        return self._cohort

    @property
    def threshold(self):
        return self.hparams.threshold

    @property
    def score_summary(self):
        """The summary of the scored trials the threshold was chosen on (None if absent)."""
        if not hasattr(self, "_score_summary"):
            folder = getattr(self.hparams, "savedir", None)
            path = os.path.join(str(folder), "score_summary.json") if folder else None
            self._score_summary = None
            if path and os.path.isfile(path):
                with open(path) as f:
                    self._score_summary = json.load(f)
        return self._score_summary

    def operating_point(self, threshold=None):
        """The :class:`sincmi.thresholds.OperatingPoint` that ``threshold`` names.

        None: the model's stored threshold (None if it has none); a number:
        that score; ``"eer"``, ``"far=0.01"``, ``"frr=0.05"``: chosen on the
        model's score summary.
        """
        if threshold is None:
            if self.threshold is None:
                return None
            name = getattr(self.hparams, "operating_point", None) or f"{self.threshold:g}"
            point = operating_point(self.score_summary, self.threshold) if self.score_summary else None
            return OperatingPoint(name, self.threshold, *(point[2:] if point else (None, None)))
        return operating_point(self.score_summary, threshold)

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
        emb = self.backend(emb.cpu()).to(emb.device)
        return F.normalize(emb, dim=-1) if normalize else emb

    @torch.no_grad()
    def encode_file(self, path, normalize=False, window=None, hop=None):
        """Utterance embedding ``(D,)`` of an audio file, in bounded memory.

        With ``window`` (seconds): :class:`WindowEmbeddings`, the embeddings of
        windows every ``hop`` seconds (default: ``window / 2``), each that of
        the cut segment, see :func:`window_embeddings`.
        """
        gain = "peak" if getattr(self.hparams, "normalize_peak", False) else None
        if window is not None:
            hop = window / 2 if hop is None else hop
            times, emb = window_embeddings(self.encoder, path, self.hparams.sample_rate, self.hparams.shift,
                                           window, hop, gain)
            emb = self.backend(emb.cpu())
            return WindowEmbeddings(times, F.normalize(emb, dim=-1) if normalize else emb)
        if hop is not None:
            raise ValueError("hop needs a window (seconds)")
        emb = file_embedding(self.encoder, path, self.hparams.sample_rate, self.hparams.shift, gain)
        emb = self.backend(emb.cpu()[None])[0]
        return F.normalize(emb, dim=-1) if normalize else emb

    def score(self, emb_a, emb_b):
        """The verification score of two embeddings: their cosine, as the recipes score trials,
        normalised against the model's cohort when it carries the run's score normalisation."""
        pair = F.normalize(torch.stack([emb_a.flatten(), emb_b.flatten()]).float().cpu(), dim=1)
        score = (pair[0] * pair[1]).sum()
        if self.cohort is not None:
            method = self.hparams.score_norm
            top_k = getattr(self.hparams, "cohort_top_k", None) if method == "as-norm" else None
            mean, std = cohort_statistics(pair, self.cohort, top_k)
            score = normalize_scores(score[None], torch.tensor([0]), torch.tensor([1]), mean, std, method)[0]
        return float(score)

    def verify_files(self, path_a, path_b, threshold=None):
        """:class:`Verification` of two files: score, decision, operating point.

        ``threshold``: None (the model's stored one), a score, or an operating
        point (``"eer"``, ``"far=0.01"``, ``"frr=0.05"``) chosen on the
        model's score summary. ``same_speaker`` is ``score > threshold``, None
        when there is no threshold.
        """
        point = self.operating_point(threshold)
        score = self.score(self.encode_file(path_a), self.encode_file(path_b))
        return Verification(score, None if point is None else bool(score > point.threshold), point)

    def _prepare_modules(self, freeze_params):
        super()._prepare_modules(freeze_params)
        self.mods.eval()


@torch.no_grad()
def embed_dataset(encoder, dataset, device="cpu", batch_size=8, shift=None, progress=True, sampler=None,
                  num_workers=0, max_chunks=64):
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
    num_workers : int
        Loader processes reading (and decoding) the utterances while the
        encoder runs: at Vox1-E/H size the reading is no longer serial.
    max_chunks : int
        Chunks encoded per forward call (``eval_chunks_per_batch``).

    Returns
    -------
    dict
        ``{id: embedding}`` on the CPU.
    """
    encoder = encoder.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=PaddedBatch, sampler=sampler,
                        num_workers=num_workers, prefetch_factor=4 if num_workers else None)
    embeddings = {}
    for batch in progress_bar(loader, desc="Embedding utterances", enabled=progress):
        wavs, lens = batch.sig
        wavs, lens = wavs.to(device), lens.to(device)
        with torch.no_grad():
            if hasattr(encoder, "embed_utterances"):
                emb = encoder.embed_utterances(wavs, lens, shift=shift, max_chunks=max_chunks)
            else:
                emb = utterance_embeddings(encoder, wavs, lens, encoder.chunk_size, shift, max_chunks)
        for utt_id, vector in zip(batch.id, emb.cpu()):
            embeddings[utt_id] = vector
    return embeddings


def chunk_count(num_samples, chunk_size, shift):
    """Chunks an utterance of ``num_samples`` gives (at least one).

    >>> chunk_count(16000, 3200, 1600)
    9
    """
    return max(math.floor((num_samples - chunk_size) / shift) + 1, 1)
