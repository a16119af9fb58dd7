"""Manifests -> SpeechBrain datasets.

Three views of a manifest (``ID,duration,wav,start,stop,spk_id``):

* :func:`pair_dataset`: two random chunks of each sentence (LIM pretraining);
* :func:`chunk_dataset`: one random labelled chunk per sentence (speaker id);
* :func:`sentence_dataset`: whole sentences (evaluation; chunked in the Brain).

Audio is read with soundfile, and only the frames needed: a chunk read never
loads the whole file.
"""

import math
import os
import random

import soundfile as sf
import speechbrain as sb
import torch
import torchaudio.functional as AF
from speechbrain.dataio.dataio import load_data_csv
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from tqdm import tqdm


def read_segment(path, start, frames, audio=None):
    """Reads ``frames`` samples from ``start`` as a mono float32 tensor.

    Multi-channel audio is down-mixed by averaging channels. ``audio`` is an
    optional ``{path: waveform}`` cache (:func:`preload_audio`); files in it
    are sliced instead of read.
    """
    if audio is not None and path in audio:
        return audio[path][start : start + frames]
    data, _ = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
    return torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0])


def preload_audio(data, progress=True):
    """Reads every file of a manifest into memory: ``{path: mono float32 tensor}``.

    For corpora that fit in RAM (TIMIT: about 1.2 GB as float32), so that
    training reads no file at all. With ``num_workers > 0`` the loader's
    worker processes share these tensors with the main process.
    """
    paths = sorted({row["wav"] for row in data.values()})
    audio = {}
    for path in tqdm(paths, desc="Loading audio into memory", disable=not progress):
        info = sf.info(path)
        audio[path] = read_segment(path, 0, info.frames).share_memory_()
    return audio


def resampled(wav, resample):
    """``wav`` resampled by ``resample = (file_rate, model_rate)``; None: unchanged."""
    if resample is None or resample[0] == resample[1]:
        return wav
    return AF.resample(wav, resample[0], resample[1])


def random_chunk(path, start, stop, chunk_size, gain_range=None, gain=1.0, resample=None, audio=None):
    """Reads one chunk at a uniformly random offset inside ``[start, stop)``.

    ``gain`` scales the samples (the manifest's per-sentence gain);
    ``gain_range`` draws a further random gain (augmentation); ``resample``
    ``(file_rate, model_rate)`` reads the file span that covers ``chunk_size``
    samples at the model's rate and resamples it; ``audio`` is the optional
    in-memory cache of :func:`preload_audio`.
    """
    span = stop - start
    frames = chunk_size
    if resample is not None and resample[0] != resample[1]:
        frames = math.ceil(chunk_size * resample[0] / resample[1])
    offset = start + int(torch.randint(0, max(span - frames, 0) + 1, (1,)))
    chunk = resampled(read_segment(path, offset, frames, audio), resample)[:chunk_size]
    if chunk.shape[0] < chunk_size:  # segment shorter than a chunk: zero-pad
        chunk = torch.nn.functional.pad(chunk, (0, chunk_size - chunk.shape[0]))
    if gain_range is not None:
        low, high = gain_range
        gain = gain * (low + (high - low) * float(torch.rand(())))
    return chunk * gain if gain != 1.0 else chunk


def load_manifest(csv_path, data_root):
    """Reads a manifest into SpeechBrain's ``{id: row}`` form.

    ``data_root`` replaces ``$data_root`` in the paths; a dict replaces several
    placeholders (``{"voxceleb1": ..., "voxceleb2": ...}``).
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"manifest {csv_path} is missing: run the recipe's preparation first")
    replacements = data_root if isinstance(data_root, dict) else {"data_root": data_root}
    data = load_data_csv(csv_path, replacements=replacements)
    for row in data.values():
        row["start"] = int(row["start"])
        row["stop"] = int(row["stop"])
        row["gain"] = float(row.get("gain") or 1.0)
        row["rate"] = int(row.get("rate") or 0)  # 0: the recipe's sample rate
    return data


def _with_defaults(data):
    """Rows with the optional columns filled in (``gain`` 1, ``rate`` 0 = the recipe's)."""
    return {key: {"gain": 1.0, "rate": 0, **row} for key, row in data.items()}


def _row_resample(rate, resample, sample_rate):
    """``(file_rate, model_rate)`` for a row: its own ``rate`` if set, else the dataset's."""
    if rate:
        return (rate, resample[1] if resample else sample_rate)
    return resample


def pair_dataset(data, chunk_size, gain_range=None, resample=None, audio=None, sample_rate=16000):
    """Dataset of ``(anchor, positive)`` chunk pairs, one pair per sentence.

    Arguments
    ---------
    data : dict
        ``{id: row}`` from :func:`load_manifest`.
    chunk_size : int
        Samples per chunk.
    gain_range : tuple of float, optional
        Random gain applied to each chunk independently.
    resample : tuple of int, optional
        ``(file_rate, model_rate)`` when they differ.
    audio : dict, optional
        In-memory waveforms from :func:`preload_audio`.
    sample_rate : int
        The model's rate, for rows whose ``rate`` column says their file has
        another one (resampled when read).

    Output keys: ``id``, ``sentence``, ``anchor``, ``positive``. ``sentence``
    is the row's ``sentence`` column when the manifest has one (segments of one
    recording share it, so they are never negatives of each other), else its id.
    """
    data = {key: {**row, "sentence": row.get("sentence") or key} for key, row in _with_defaults(data).items()}
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("wav", "start", "stop", "gain", "rate")
    @sb.utils.data_pipeline.provides("anchor", "positive")
    def pair_pipeline(wav, start, stop, gain, rate):
        rs = _row_resample(rate, resample, sample_rate)
        yield random_chunk(wav, start, stop, chunk_size, gain_range, gain, rs, audio)
        yield random_chunk(wav, start, stop, chunk_size, gain_range, gain, rs, audio)

    dataset.add_dynamic_item(pair_pipeline)
    dataset.set_output_keys(["id", "sentence", "anchor", "positive"])
    return dataset


def chunk_dataset(data, chunk_size, label_encoder, gain_range=None, resample=None, audio=None, sample_rate=16000):
    """Dataset of one random labelled chunk per sentence (other arguments: see :func:`pair_dataset`).

    Output keys: ``id``, ``chunk``, ``spk_id_encoded``.
    """
    dataset = DynamicItemDataset(_with_defaults(data))

    @sb.utils.data_pipeline.takes("wav", "start", "stop", "gain", "rate")
    @sb.utils.data_pipeline.provides("chunk")
    def chunk_pipeline(wav, start, stop, gain, rate):
        rs = _row_resample(rate, resample, sample_rate)
        return random_chunk(wav, start, stop, chunk_size, gain_range, gain, rs, audio)

    dataset.add_dynamic_item(chunk_pipeline)
    _add_label_pipeline(dataset, label_encoder)
    dataset.set_output_keys(["id", "chunk", "spk_id_encoded"])
    return dataset


def sentence_dataset(data, label_encoder=None, resample=None, sample_rate=16000):
    """Dataset of whole sentences (``id``, ``sig`` and, with labels, ``spk_id_encoded``)."""
    dataset = DynamicItemDataset(_with_defaults(data))

    @sb.utils.data_pipeline.takes("wav", "start", "stop", "gain", "rate")
    @sb.utils.data_pipeline.provides("sig")
    def sentence_pipeline(wav, start, stop, gain, rate):
        sig = resampled(read_segment(wav, start, stop - start), _row_resample(rate, resample, sample_rate))
        return sig * gain if gain != 1.0 else sig

    dataset.add_dynamic_item(sentence_pipeline)
    keys = ["id", "sig"]
    if label_encoder is not None:
        _add_label_pipeline(dataset, label_encoder)
        keys.append("spk_id_encoded")
    dataset.set_output_keys(keys)
    return dataset


def _add_label_pipeline(dataset, label_encoder):
    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id_encoded")
    def label_pipeline(spk_id):
        return torch.LongTensor([label_encoder.encode_label(spk_id)])

    dataset.add_dynamic_item(label_pipeline)


def speaker_label_encoder(data, path):
    """Creates (or reloads from ``path``) the speaker label encoder of ``data``."""
    encoder = CategoricalEncoder()
    encoder.load_or_create(path, from_iterables=[sorted({row["spk_id"] for row in data.values()})])
    return encoder


def label_subset(data, fraction, seed=1234):
    """Keeps a fraction of the labelled sentences of every speaker.

    Each speaker keeps ``ceil(fraction * n)`` of its n sentences (at least
    one), chosen with a fixed seed, so every class stays represented.

    Example
    -------
    >>> data = {f"u{i}": {"spk_id": "ab"[i % 2]} for i in range(10)}
    >>> kept = label_subset(data, 0.4)  # ceil(0.4 * 5) = 2 of each speaker's 5
    >>> sorted(row["spk_id"] for row in kept.values())
    ['a', 'a', 'b', 'b']
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return data
    by_speaker = {}
    for utt_id in sorted(data):
        by_speaker.setdefault(data[utt_id]["spk_id"], []).append(utt_id)
    rng = random.Random(seed)
    keep = set()
    for spk in sorted(by_speaker):
        ids = by_speaker[spk]
        keep.update(rng.sample(ids, max(1, math.ceil(fraction * len(ids)))))
    return {utt_id: data[utt_id] for utt_id in sorted(keep)}
