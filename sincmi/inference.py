"""Using a trained encoder: utterance embeddings, verification, calibrated decisions.

:class:`SpeakerEncoder` loads a model folder written by ``python -m sincmi export``
(:mod:`sincmi.export`) in SpeechBrain's ``Pretrained`` style::

    from sincmi.inference import SpeakerEncoder
    model = SpeakerEncoder.from_hparams(source="pretrained/demo_lim")
    embedding = model.encode_file("a.wav")
    times, embeddings = model.encode_file("meeting.wav", window=1.5, hop=0.75)
    result = model.verify_files("a.wav", "b.wav")          # Bayes decision at p_target (calibrated)
    result = model.verify_files("a.wav", "b.wav", threshold="far=0.01")
    result.score, result.same_speaker, result.operating_point, result.llr

An utterance embedding is the mean of the L2-normalised embeddings of its
chunks (``chunk_size`` samples every ``shift`` samples), exactly as the
recipes' evaluation computes it (:func:`sincmi.encoder.utterance_embeddings`),
then the model's back end (e.g. whitening, fitted in the run); two embeddings
are scored by cosine, then normalised against the model's cohort when it
carries the run's score normalisation, and the score's log-likelihood ratio is
given by the run's calibration. A model scores as the run's table did for the
exported back end. The modules below (:class:`UtteranceEmbedder` and the
others) make the same folder work in SpeechBrain's ``EncoderClassifier`` and
``SpeakerRecognition``.
"""

import math
import os
from collections import namedtuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from speechbrain.inference.interfaces import Pretrained

from sincmi import audio, layout
from sincmi.audio import to_mono
from sincmi.backend import Backend
from sincmi.data import resampled
from sincmi.calibration import bayes_threshold
from sincmi.scoring import Cohort
from sincmi.encoder import chunk_embeddings, mean_unit_embedding, utterance_embeddings
from sincmi.thresholds import OperatingPoint, operating_point

Verification = namedtuple("Verification", "score same_speaker operating_point llr")
Verification.__doc__ = """A verification: the cosine ``score``, ``same_speaker`` (``score >
operating_point.threshold``; None without a threshold), the :class:`OperatingPoint` used and the
log-likelihood ratio ``llr`` of the score (None for a model without calibration)."""

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


class TooShortError(ValueError):
    """Audio too short to embed: fewer samples than one chunk."""


def check_length(samples, chunk_size, sample_rate, what="the audio", pad_short=False):
    """Refuses ``samples`` shorter than one chunk (unless ``pad_short``): one line naming what and why."""
    if samples < chunk_size and not pad_short:
        reason = "is empty" if samples == 0 else f"has {samples} samples ({samples / sample_rate:.3f} s)"
        raise TooShortError(f"{what} {reason}, shorter than one chunk ({chunk_size} samples, "
                            f"{chunk_size / sample_rate:.3f} s): too short to embed (pad_short=True zero-pads it)")


class WaveformScaling(nn.Module):
    """``compute_features`` of the SpeechBrain interfaces: each waveform at unit peak when the
    model was trained so (``normalize_peak``), else unchanged. Padding does not change a peak."""

    def __init__(self, normalize_peak=False):
        super().__init__()
        self.normalize_peak = normalize_peak

    def forward(self, wavs):
        if not self.normalize_peak:
            return wavs
        peak = wavs.abs().amax(dim=-1, keepdim=True)
        return torch.where(peak > 0, wavs / peak.clamp(min=1e-30), wavs)


class Unchanged(nn.Module):
    """``mean_var_norm`` of the SpeechBrain interfaces: the recipes normalise no features."""

    def forward(self, feats, lengths=None):
        return feats


class UnitLength(nn.Module):
    """``mean_var_norm_emb`` (``encode_batch(..., normalize=True)``): L2-normalised embeddings."""

    def forward(self, embeddings, lengths=None):
        return F.normalize(embeddings, dim=-1)


class UtteranceEmbedder(nn.Module):
    """``embedding_model``: padded waveforms ``(B, T)`` -> utterance embeddings ``(B, 1, D)``.

    The mean of the L2-normalised chunk embeddings (``chunk_size`` samples every
    ``shift``), then the model's back end: :func:`sincmi.encoder.utterance_embeddings`
    as the recipes' evaluation computes it. An utterance shorter than a chunk
    is refused (:class:`TooShortError`) unless ``pad_short``. The chunk
    embeddings of the last call are kept for :class:`SentenceClassifier`.
    """

    def __init__(self, encoder, shift, backend=None, sample_rate=16000, max_chunks=64, pad_short=False):
        super().__init__()
        self.encoder, self.shift, self.backend = encoder, shift, backend or Backend("none")
        self.sample_rate, self.max_chunks, self.pad_short = sample_rate, max_chunks, pad_short
        self.last = None

    def forward(self, wavs, wav_lens=None):
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        chunk = self.encoder.chunk_size
        samples = [wavs.shape[1]] * len(wavs) if wav_lens is None else \
            torch.round(wav_lens.float() * wavs.shape[1]).long().tolist()
        for i, n in enumerate(samples):
            check_length(n, chunk, self.sample_rate, f"utterance {i} of the batch", self.pad_short)
        raw, owner = chunk_embeddings(self.encoder, wavs, wav_lens, chunk, self.shift, self.max_chunks)
        out = self.backend(mean_unit_embedding(raw, owner, len(wavs)).cpu()).to(raw.device).unsqueeze(1)
        self.last = (out, raw, owner)
        return out


class SentenceClassifier(nn.Module):
    """``classifier``: the run's speaker classifier on the chunks of the utterances just embedded.

    ``classify_batch`` passes the embeddings of ``embedding_model``; a sentence's
    log-posteriors are those of the recipes (the sum of its chunks', as in
    :func:`sincmi.metrics.sentence_predictions`), normalised: ``(B, speakers)``.
    """

    def __init__(self, head, embedder):
        super().__init__()
        self.head = head
        self._embedder = [embedder]  # a reference, not a submodule: its weights belong to embedding_model

    def forward(self, embeddings):
        last = self._embedder[0].last
        if last is None or embeddings is not last[0]:
            raise ValueError("the speaker classifier scores the chunks of the utterances embedding_model "
                             "embedded last: call classify_batch or classify_file")
        _, raw, owner = last
        log_posteriors = self.head(raw)
        totals = torch.zeros(len(embeddings), log_posteriors.shape[1], device=raw.device, dtype=raw.dtype)
        totals.index_add_(0, owner, log_posteriors)
        return F.log_softmax(totals, dim=-1)


class SpeakerEncoder(Pretrained):
    """A trained encoder with the run's back end, score normalisation and calibration.

    Load with ``SpeakerEncoder.from_hparams(source=FOLDER)``, where FOLDER was
    written by ``python -m sincmi export`` (a local folder is used in place),
    or with ``savedir=`` from any source SpeechBrain can fetch: every file the
    model needs is a loadable of its ``pretrainer``. The same folder loads in
    SpeechBrain's ``EncoderClassifier`` and ``SpeakerRecognition``. Hparams
    used: ``sample_rate``, ``shift`` (chunk hop), ``threshold`` and
    ``operating_point`` (stored decision point), ``p_target`` (the prior of
    the Bayes decision on calibrated scores), ``backend``, ``cohort``,
    ``calibration``, ``score_summary``.
    """

    MODULES_NEEDED = ["embedding_model", "compute_features"]
    HPARAMS_NEEDED = ["sample_rate", "shift", "threshold"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(getattr(self.hparams, "embedding_model", None), UtteranceEmbedder):
            raise ValueError("this model folder was exported by an earlier sincmi: export it again "
                             "(python -m sincmi export EXPERIMENT FOLDER)")

    @classmethod
    def from_hparams(cls, source, hparams_file=layout.HPARAMS_FILE, savedir=None, **kwargs):
        """Loads an exported model folder (or any source SpeechBrain can fetch).

        A local folder is used in place: nothing is copied or downloaded.
        """
        if savedir is None and os.path.isdir(source):
            savedir = source
        return super().from_hparams(source, hparams_file=hparams_file, savedir=savedir, **kwargs)

    @property
    def encoder(self):
        return self.mods.embedding_model.encoder

    @property
    def backend(self):
        """The :class:`sincmi.backend.Backend` applied to utterance embeddings (``none``: raw)."""
        return self.mods.embedding_model.backend

    @property
    def cohort(self):
        """The :class:`sincmi.scoring.Cohort` of the model's score normalisation, or None without one."""
        return getattr(self.hparams, "cohort", None)

    @property
    def calibration(self):
        """The :class:`sincmi.calibration.Calibration` of the model's scores, or None without one."""
        calibration = getattr(self.hparams, "calibration", None)
        return calibration if calibration is not None and calibration.fitted else None

    @property
    def threshold(self):
        return self.hparams.threshold

    @property
    def score_summary(self):
        """The summary of the scored trials the threshold was chosen on (None if absent)."""
        holder = getattr(self.hparams, "score_summary", None)
        return None if holder is None else holder.summary

    def operating_point(self, threshold=None, p_target=None):
        """The :class:`sincmi.thresholds.OperatingPoint` of a decision.

        ``threshold``: None (the Bayes decision at ``p_target``, default the
        model's ``p_target``, when the model is calibrated; else its stored
        threshold, None if it has none), a score, or ``"eer"``, ``"far=0.01"``,
        ``"frr=0.05"`` chosen on the model's score summary.
        """
        if threshold is not None:
            return operating_point(self.score_summary, threshold)
        if self.calibration is not None:
            p_target = p_target or getattr(self.hparams, "p_target", None) or 0.01
            value = self.calibration.score_at(bayes_threshold(p_target))
            point = operating_point(self.score_summary, value) if self.score_summary else None
            return OperatingPoint(f"Bayes decision at p_target={p_target:g}", value,
                                  *(point[2:] if point else (None, None)))
        if self.threshold is None:
            return None
        name = getattr(self.hparams, "operating_point", None) or f"{self.threshold:g}"
        point = operating_point(self.score_summary, self.threshold) if self.score_summary else None
        return OperatingPoint(name, self.threshold, *(point[2:] if point else (None, None)))

    @torch.no_grad()
    def encode_batch(self, wavs, wav_lens=None, normalize=False):
        """Utterance embeddings of a padded batch ``(batch, time)`` at the model's rate.

        ``wav_lens`` are relative lengths (SpeechBrain convention). Returns
        ``(batch, D)``; ``normalize=True`` L2-normalises them. An utterance
        shorter than a chunk is refused (:class:`TooShortError`).
        """
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        wavs = wavs.to(self.device).float()
        if wav_lens is not None:
            wav_lens = wav_lens.to(self.device)
        emb = self.mods.embedding_model(self.mods.compute_features(wavs), wav_lens).squeeze(1)
        return F.normalize(emb, dim=-1) if normalize else emb

    @torch.no_grad()
    def encode_file(self, path, normalize=False, window=None, hop=None, pad_short=False):
        """Utterance embedding ``(D,)`` of an audio file, in bounded memory.

        With ``window`` (seconds): :class:`WindowEmbeddings`, the embeddings of
        windows every ``hop`` seconds (default: ``window / 2``), each that of
        the cut segment, see :func:`window_embeddings`. Empty files and files
        shorter than a chunk are refused (:class:`TooShortError`) unless
        ``pad_short``; unreadable ones raise ``ValueError`` naming the file.
        """
        info = audio.readable_info(path)
        rate = self.hparams.sample_rate
        check_length(int(info.frames * rate / info.samplerate), self.encoder.chunk_size, rate, path, pad_short)
        gain = "peak" if getattr(self.hparams, "normalize_peak", False) else None
        if window is not None:
            hop = window / 2 if hop is None else hop
            times, emb = window_embeddings(self.encoder, path, rate, self.hparams.shift, window, hop, gain)
            emb = self.backend(emb.cpu())
            return WindowEmbeddings(times, F.normalize(emb, dim=-1) if normalize else emb)
        if hop is not None:
            raise ValueError("hop needs a window (seconds)")
        emb = file_embedding(self.encoder, path, rate, self.hparams.shift, gain)
        emb = self.backend(emb.cpu()[None])[0]
        return F.normalize(emb, dim=-1) if normalize else emb

    def score(self, emb_a, emb_b):
        """The verification score of two embeddings as the recipes score trials: the back end's scorer (the
        cosine; PLDA's log-likelihood ratio), normalised against the model's cohort when it has one."""
        return (self.cohort or Cohort()).normalize(emb_a, emb_b, self.backend.scorer)  # Cohort(): not normalised

    def llr(self, score):
        """The log-likelihood ratio of a score (None when the model has no calibration)."""
        return None if self.calibration is None else float(self.calibration(score))

    def verify_files(self, path_a, path_b, threshold=None, p_target=None, pad_short=False):
        """:class:`Verification` of two files: score, decision, operating point, log-likelihood ratio.

        ``threshold``: None (calibrated models: the Bayes decision at
        ``p_target``; otherwise the stored threshold), a score, or an operating
        point (``"eer"``, ``"far=0.01"``, ``"frr=0.05"``) chosen on the model's
        score summary. ``same_speaker`` is ``score > threshold``, None when
        there is no threshold.
        """
        point = self.operating_point(threshold, p_target)
        score = self.score(self.encode_file(path_a, pad_short=pad_short), self.encode_file(path_b, pad_short=pad_short))
        decision = None if point is None else bool(score > point.threshold)
        return Verification(score, decision, point, self.llr(score))

    def _prepare_modules(self, freeze_params):
        super()._prepare_modules(freeze_params)
        self.mods.eval()


def chunk_count(num_samples, chunk_size, shift):
    """Chunks an utterance of ``num_samples`` gives (at least one).

    >>> chunk_count(16000, 3200, 1600)
    9
    """
    return max(math.floor((num_samples - chunk_size) / shift) + 1, 1)
