"""Manifests -> SpeechBrain datasets.

Three views of a manifest (``ID,duration,wav,start,stop,spk_id``):

* :func:`pair_dataset`: two random chunks of each sentence (LIM pretraining);
* :func:`fixed_pair_dataset`: pairs drawn once, the same every epoch (LIM validation);
* :func:`chunk_dataset`: one random labelled chunk per sentence (speaker id);
* :func:`sentence_dataset`: whole sentences (evaluation; chunked in the Brain).

Manifests are read into :class:`~sincmi.manifest_table.ManifestTable` (columns,
not a dict per row); the training datasets (pairs, labelled chunks) read their
rows from its arrays, so a million-row manifest costs tens of MB and loader
workers share it without copying. Audio is read through :mod:`sincmi.audio`, and
only the frames needed: a chunk read of a WAV or FLAC file never loads the
whole file. For corpora of a million files, LIM reads shards instead
(:mod:`sincmi.shards`).
"""

import math
import os
import random

import numpy as np
import speechbrain as sb
import torch
import torchaudio.functional as AF
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder

from sincmi.audio import read_audio, to_mono
from sincmi.manifest_table import ManifestTable, as_table
from sincmi.progress import progress_bar


def read_segment(path, start, frames, audio=None):
    """Reads ``frames`` samples from ``start`` as a mono float32 tensor.

    Multi-channel audio is down-mixed by averaging channels. ``audio`` is an
    optional ``{path: waveform}`` cache (:func:`preload_audio`); files in it
    are sliced instead of read.
    """
    if audio is not None and path in audio:
        return audio[path][start : start + frames]
    return torch.from_numpy(to_mono(read_audio(path, start, frames)))


def preload_audio(data, progress=True):
    """Reads every file of a manifest into memory: ``{path: mono float32 tensor}``.

    For corpora that fit in RAM (TIMIT: about 1.2 GB as float32), so that
    training reads no file at all. With ``num_workers > 0`` the loader's
    worker processes share these tensors with the main process.
    """
    paths = sorted({row["wav"] for row in data.values()})
    audio = {}
    for path in progress_bar(paths, desc="Loading audio into memory", enabled=progress):
        audio[path] = read_segment(path, 0, -1).share_memory_()
    return audio


def resampled(wav, rates):
    """``wav`` resampled by ``rates = (file_rate, model_rate)``; None: unchanged."""
    if rates is None or rates[0] == rates[1]:
        return wav
    return AF.resample(wav, rates[0], rates[1])


def random_chunk(path, start, stop, chunk_size, gain_range=None, gain=1.0, rates=None, audio=None, offset=None):
    """Reads one chunk at a uniformly random offset inside ``[start, stop)``.

    ``gain`` scales the samples (the manifest's per-sentence gain);
    ``gain_range`` draws a further random gain (augmentation); ``rates``
    ``(file_rate, model_rate)`` reads the file span that covers ``chunk_size``
    samples at the model's rate and resamples it; ``audio`` is the optional
    in-memory cache of :func:`preload_audio`; ``offset`` (from ``start``, in
    file samples) replaces the random one.
    """
    frames = file_frames(chunk_size, rates)
    if offset is None:
        offset = int(torch.randint(0, max(stop - start - frames, 0) + 1, (1,)))
    chunk = resampled(read_segment(path, start + offset, frames, audio), rates)[:chunk_size]
    if chunk.shape[0] < chunk_size:  # segment shorter than a chunk: zero-pad
        chunk = torch.nn.functional.pad(chunk, (0, chunk_size - chunk.shape[0]))
    if gain_range is not None:
        low, high = gain_range
        gain = gain * (low + (high - low) * float(torch.rand(())))
    return chunk * gain if gain != 1.0 else chunk


def file_frames(chunk_size, rates=None):
    """File samples that hold ``chunk_size`` samples at the model's rate."""
    if rates is not None and rates[0] != rates[1]:
        return math.ceil(chunk_size * rates[0] / rates[1])
    return chunk_size


def pair_offsets(span, frames, min_distance=0, generator=None):
    """Random offsets of two chunks of ``frames`` samples in a segment of ``span``.

    The two offsets are at least ``min_distance`` apart when the segment
    allows it (0: independent uniform draws, the paper's sampling); in a
    segment too short for that, they are as far apart as it allows. Both are
    uniform over the offsets that satisfy the distance. ``generator``: the
    ``torch.Generator`` or ``numpy.random.Generator`` to draw from (default:
    torch's global one).

    Example
    -------
    >>> _ = torch.manual_seed(0)
    >>> all(abs(a - b) >= 3200 for a, b in (pair_offsets(16000, 3200, 3200) for _ in range(200)))
    True
    >>> sorted(pair_offsets(4000, 3200, 3200))  # too short: the two ends
    [0, 800]
    """
    last = max(span - frames, 0)
    first = _randint(last + 1, generator)
    distance = min(min_distance, last)
    if distance <= 0:
        return first, _randint(last + 1, generator)
    # Offsets at least `distance` from `first`: [0, first - distance] and [first + distance, last].
    below = max(first - distance + 1, 0)
    above = max(last - (first + distance) + 1, 0)
    if below + above == 0:  # `first` is near the middle of a short segment: use the ends
        return (0, last) if first - 0 < last - first else (last, 0)
    pick = _randint(below + above, generator)
    return first, pick if pick < below else first + distance + (pick - below)


def _randint(high, generator=None):
    """A uniform integer in ``[0, high)`` from a torch or NumPy generator (None: torch's global one)."""
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(high))
    return int(torch.randint(0, high, (1,), generator=generator))


def load_manifest(csv_path, data_root):
    """Reads a manifest into a :class:`~sincmi.manifest_table.ManifestTable` (columns, not a dict per row).

    It is a read-only ``{id: row}`` mapping as SpeechBrain's ``load_data_csv``
    gives; ``data_root`` replaces ``$data_root`` in the paths; a dict replaces
    several placeholders (``{"voxceleb1": ..., "voxceleb2": ...}``).
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"manifest {csv_path} is missing: run the recipe's preparation first")
    replacements = data_root if isinstance(data_root, dict) else {"data_root": data_root}
    return ManifestTable.from_csv(csv_path, replacements)


def _with_defaults(data):
    """Rows with the optional columns filled in (``gain`` 1, ``rate`` 0 = the recipe's)."""
    return {key: {"gain": 1.0, "rate": 0, **row} for key, row in data.items()}


def _row_rates(rate, rates, sample_rate):
    """``(file_rate, model_rate)`` for a row: its own ``rate`` if set, else the dataset's."""
    if rate:
        return (rate, rates[1] if rates else sample_rate)
    return rates


class _TableDataset(torch.utils.data.Dataset):
    """Items made from the rows of a :class:`~sincmi.manifest_table.ManifestTable`, read column by column
    (no dict per row is held: loader workers share the arrays without copying them)."""

    def __init__(self, data, chunk_size, gain_range=None, rates=None, audio=None, sample_rate=16000):
        self.table = as_table(data)
        self.chunk_size = chunk_size
        self.gain_range = gain_range
        self.rates = rates
        self.audio = audio
        self.sample_rate = sample_rate
        self.numbers = self.table.numbers

    def __len__(self):
        return len(self.table)

    def _fields(self, i):
        """``(wav, start, stop, gain, (file_rate, model_rate) or None)`` of row ``i``."""
        rate = int(self.numbers["rate"][i])
        return (self.table.text("wav", i), int(self.numbers["start"][i]), int(self.numbers["stop"][i]),
                float(self.numbers["gain"][i]), _row_rates(rate, self.rates, self.sample_rate))


class PairDataset(_TableDataset):
    """``{id, sentence, anchor, positive}``: two random chunks of row ``i`` (see :func:`pair_dataset`)."""

    def __init__(self, data, chunk_size, gain_range=None, rates=None, audio=None, sample_rate=16000,
                 min_pair_distance=0):
        super().__init__(data, chunk_size, gain_range, rates, audio, sample_rate)
        self.min_pair_distance = min_pair_distance
        self.has_sentence = "sentence" in self.table.strings

    def __getitem__(self, i):
        wav, start, stop, gain, rs = self._fields(i)
        key = self.table.key(i)
        distance = file_frames(self.min_pair_distance, rs) if self.min_pair_distance else 0
        first, second = pair_offsets(stop - start, file_frames(self.chunk_size, rs), distance)
        chunks = [random_chunk(wav, start, stop, self.chunk_size, self.gain_range, gain, rs, self.audio, offset=o)
                  for o in (first, second)]
        sentence = (self.table.text("sentence", i) if self.has_sentence else "") or key
        return {"id": key, "sentence": sentence, "anchor": chunks[0], "positive": chunks[1]}


class ChunkDataset(_TableDataset):
    """``{id, chunk, spk_id_encoded}``: one random labelled chunk of row ``i`` (see :func:`chunk_dataset`)."""

    def __init__(self, data, chunk_size, label_encoder, gain_range=None, rates=None, audio=None, sample_rate=16000):
        super().__init__(data, chunk_size, gain_range, rates, audio, sample_rate)
        codes, speakers = self.table.strings["spk_id"]
        self.labels = np.array([label_encoder.encode_label(s.decode()) for s in speakers], dtype=np.int64)[codes]

    def __getitem__(self, i):
        wav, start, stop, gain, rs = self._fields(i)
        chunk = random_chunk(wav, start, stop, self.chunk_size, self.gain_range, gain, rs, self.audio)
        return {"id": self.table.key(i), "chunk": chunk, "spk_id_encoded": torch.LongTensor([self.labels[i]])}


def pair_dataset(data, chunk_size, gain_range=None, rates=None, audio=None, sample_rate=16000,
                 min_pair_distance=0):
    """Dataset of ``(anchor, positive)`` chunk pairs, one pair per sentence.

    Arguments
    ---------
    data : ManifestTable or dict
        The rows (:func:`load_manifest`, or ``{id: row}``).
    chunk_size : int
        Samples per chunk.
    gain_range : tuple of float, optional
        Random gain applied to each chunk independently.
    rates : tuple of int, optional
        ``(file_rate, model_rate)`` when they differ.
    audio : dict, optional
        In-memory waveforms from :func:`preload_audio`.
    sample_rate : int
        The model's rate, for rows whose ``rate`` column says their file has
        another one (resampled when read).
    min_pair_distance : int
        Least distance between the starts of the two chunks of a pair, in
        samples of the model's rate (:func:`pair_offsets`); 0 draws them
        independently (the paper), so they may overlap.

    Items are dicts with ``id``, ``sentence``, ``anchor``, ``positive``
    (batch them with SpeechBrain's ``PaddedBatch``). ``sentence`` is the row's
    ``sentence`` column when the manifest has one (segments of one recording
    share it, so they are never negatives of each other), else its id.
    """
    return PairDataset(data, chunk_size, gain_range, rates, audio, sample_rate, min_pair_distance)


def fixed_pair_dataset(data, chunk_size, seed, pairs_per_sentence=1, rates=None, audio=None, sample_rate=16000,
                       min_pair_distance=0):
    """LIM's validation pairs: ``pairs_per_sentence`` pairs of each sentence, drawn once from ``seed``.

    The same pairs, in the same batches, every epoch, so that the validation
    loss that chooses the best checkpoint changes only with the model, not
    with a redraw of the pairs. Items are in an order shuffled once (each
    batch mixes speakers); the pairs of one sentence share its ``sentence``
    key, so they are never negatives of each other. Other arguments and the
    output keys: see :func:`pair_dataset`.

    Example
    -------
    >>> rows = {"a": {"wav": "a.wav", "start": 0, "stop": 8000}, "b": {"wav": "b.wav", "start": 0, "stop": 8000}}
    >>> pairs = fixed_pair_dataset(rows, 3200, seed=1, pairs_per_sentence=2)
    >>> sorted(pairs.data_ids)
    ['a/pair0', 'a/pair1', 'b/pair0', 'b/pair1']
    >>> offsets = [(pairs.data[i]["first"], pairs.data[i]["second"]) for i in pairs.data_ids]
    >>> offsets == [(fixed_pair_dataset(rows, 3200, seed=1, pairs_per_sentence=2).data[i]["first"],
    ...              fixed_pair_dataset(rows, 3200, seed=1, pairs_per_sentence=2).data[i]["second"])
    ...             for i in pairs.data_ids]
    True
    """
    if pairs_per_sentence < 1:
        raise ValueError(f"valid_pairs_per_sentence must be >= 1, got {pairs_per_sentence}")
    generator = torch.Generator().manual_seed(seed)
    rows = {}
    for key, row in sorted(_with_defaults(data).items()):
        rs = _row_rates(row["rate"], rates, sample_rate)
        distance = file_frames(min_pair_distance, rs) if min_pair_distance else 0
        for i in range(pairs_per_sentence):
            first, second = pair_offsets(row["stop"] - row["start"], file_frames(chunk_size, rs), distance, generator)
            rows[f"{key}/pair{i}"] = {**row, "sentence": row.get("sentence") or key, "first": first, "second": second}
    order = torch.randperm(len(rows), generator=generator).tolist()
    keys = list(rows)
    dataset = DynamicItemDataset({keys[i]: rows[keys[i]] for i in order})

    @sb.utils.data_pipeline.takes("wav", "start", "stop", "gain", "rate", "first", "second")
    @sb.utils.data_pipeline.provides("anchor", "positive")
    def fixed_pair_pipeline(wav, start, stop, gain, rate, first, second):
        rs = _row_rates(rate, rates, sample_rate)
        yield random_chunk(wav, start, stop, chunk_size, None, gain, rs, audio, offset=first)
        yield random_chunk(wav, start, stop, chunk_size, None, gain, rs, audio, offset=second)

    dataset.add_dynamic_item(fixed_pair_pipeline)
    dataset.set_output_keys(["id", "sentence", "anchor", "positive"])
    return dataset


def chunk_dataset(data, chunk_size, label_encoder, gain_range=None, rates=None, audio=None, sample_rate=16000):
    """Dataset of one random labelled chunk per sentence (other arguments: see :func:`pair_dataset`).

    Items: ``id``, ``chunk``, ``spk_id_encoded``.
    """
    return ChunkDataset(data, chunk_size, label_encoder, gain_range, rates, audio, sample_rate)


def sentence_dataset(data, label_encoder=None, rates=None, sample_rate=16000):
    """Dataset of whole sentences (``id``, ``sig`` and, with labels, ``spk_id_encoded``)."""
    dataset = DynamicItemDataset(_with_defaults(data))

    @sb.utils.data_pipeline.takes("wav", "start", "stop", "gain", "rate")
    @sb.utils.data_pipeline.provides("sig")
    def sentence_pipeline(wav, start, stop, gain, rate):
        sig = resampled(read_segment(wav, start, stop - start), _row_rates(rate, rates, sample_rate))
        return sig * gain if gain != 1.0 else sig

    dataset.add_dynamic_item(sentence_pipeline)
    keys = ["id", "sig"]
    if label_encoder is not None:
        _add_label_pipeline(dataset, label_encoder)
        keys.append("spk_id_encoded")
    dataset.set_output_keys(keys)
    return dataset


def rate_pair(hparams):
    """``(file rate, model rate)``: the files' ``file_sample_rate`` (default: ``sample_rate``) and the model's.

    >>> rate_pair({"sample_rate": 8000, "file_sample_rate": 16000}), rate_pair({"sample_rate": 16000})
    ((16000, 8000), (16000, 16000))
    """
    return hparams.get("file_sample_rate") or hparams["sample_rate"], hparams["sample_rate"]


class RecipeDatasets:
    """Every dataset of a recipe, built from its hparams in one place.

    So that no recipe can leave a setting out, the recipes build their
    datasets only through this: ``chunk_size``, ``sample_rate``,
    ``file_sample_rate`` (optional: the files' rate, resampled when it
    differs), ``random_gain`` (optional: training chunks only),
    ``min_pair_distance`` (optional), ``seed`` and ``valid_pairs_per_sentence``
    (optional, default 1: LIM's fixed validation pairs) and the in-memory
    ``audio`` cache.

    Example
    -------
    >>> sets = RecipeDatasets({"chunk_size": 800, "sample_rate": 8000, "file_sample_rate": 16000})
    >>> sets.rates, sets.file_frames
    ((16000, 8000), 1600)
    """

    def __init__(self, hparams, audio=None):
        self.chunk_size = hparams["chunk_size"]
        self.sample_rate = hparams["sample_rate"]
        self.gain = hparams.get("random_gain")
        self.min_pair_distance = hparams.get("min_pair_distance") or 0
        rates = rate_pair(hparams)
        self.rates = None if rates[0] == rates[1] else rates
        self.file_frames = file_frames(self.chunk_size, self.rates)
        self.audio = audio
        self.seed = hparams.get("seed", 1234)
        self.valid_pairs_per_sentence = hparams.get("valid_pairs_per_sentence") or 1

    def pairs(self, rows, train=True):
        """LIM's chunk pairs: random ones with the random gain (:func:`pair_dataset`) in training,
        the fixed validation pairs (:func:`fixed_pair_dataset`) otherwise."""
        if train:
            return pair_dataset(rows, self.chunk_size, self.gain, self.rates, self.audio, self.sample_rate,
                                self.min_pair_distance)
        return fixed_pair_dataset(rows, self.chunk_size, self.seed, self.valid_pairs_per_sentence, self.rates,
                                  self.audio, self.sample_rate, self.min_pair_distance)

    def chunks(self, rows, label_encoder):
        """Random labelled training chunks (:func:`chunk_dataset`), with the random gain."""
        return chunk_dataset(rows, self.chunk_size, label_encoder, self.gain, self.rates, self.audio,
                             self.sample_rate)

    def sentences(self, rows, label_encoder=None):
        """Whole sentences for evaluation (:func:`sentence_dataset`)."""
        return sentence_dataset(rows, label_encoder, self.rates, self.sample_rate)


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


def label_subset(data, fraction, seed=1234, min_samples=1):
    """Keeps the labels of a fraction of every speaker's training audio.

    The share is of each speaker's samples, not of its sentences, so that it
    holds whatever the number of sentences (a speaker with 2 sentences and
    ``fraction=0.2`` keeps a fifth of its audio, not one of its 2 sentences).
    Each speaker's sentences are taken in a random order fixed by ``seed``:
    whole while they fit, then the first part of the next one, cut to the
    remaining budget (``stop`` moves); a remainder shorter than
    ``min_samples`` (one chunk) is left out. Every speaker keeps at least
    ``min_samples`` samples, so every class stays represented.

    Example
    -------
    >>> rows = {f"u{i}": {"spk_id": "ab"[i % 2], "start": 0, "stop": 1000, "duration": 0.0625}
    ...         for i in range(6)}
    >>> kept = label_subset(rows, 0.5)  # each speaker: 1,500 of its 3,000 samples
    >>> sorted((row["spk_id"], row["stop"] - row["start"]) for row in kept.values())
    [('a', 500), ('a', 1000), ('b', 500), ('b', 1000)]
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return data
    by_speaker = {}
    for utt_id in sorted(data):
        by_speaker.setdefault(data[utt_id]["spk_id"], []).append(utt_id)
    rng = random.Random(seed)
    kept = {}
    for spk in sorted(by_speaker):
        ids = by_speaker[spk]
        rng.shuffle(ids)
        total = sum(data[i]["stop"] - data[i]["start"] for i in ids)
        budget, taken = max(round(fraction * total), min_samples), 0
        for utt_id in ids:
            row = data[utt_id]
            length = row["stop"] - row["start"]
            if budget < min(min_samples, length) and taken:
                break  # what is left is shorter than a chunk
            if length > budget:
                cut = min(max(budget, min_samples), length)
                row = {**row, "stop": row["start"] + cut}
                if "duration" in row:
                    row["duration"] = round(float(row["duration"]) * cut / length, 4)
            kept[utt_id] = row
            taken += 1
            budget -= row["stop"] - row["start"]
    return {utt_id: kept[utt_id] for utt_id in sorted(kept)}

