"""Sequential shards for LIM pretraining on large corpora (WebDataset tar files).

At VoxCeleb2 or LibriSpeech-960 size, reading two random chunks per pair from
separate files (:func:`sincmi.data.pair_dataset`) opens two files per pair and
starves a GPU. Here a manifest is packed once into tar shards of whole encoded
files (their bytes copied, nothing decoded), in WebDataset's format
(``<key>.<ext>`` audio and ``<key>.json`` segments, as SpeechBrain's large-data
recipes store them). Training (:class:`ShardPairs`) reads each shard
sequentially, decodes a file once and cuts ``pairs_per_segment`` pairs from
each of its segments, through a shuffle buffer; each rank and loader worker
reads its own shards with its own random stream, and the loop over the stream
runs across epochs (SpeechBrain's ``LoopedLoader``), so workers persist.

Pack (parallel, one process per shard group)::

    python -m sincmi shards results/VoxCeleb/lim_nce/1234/save/train.csv shards/ \\
        --data_root voxceleb2=/data/VoxCeleb2 voxceleb1=/data/VoxCeleb1

then train with ``--train_shards=shards/``. ``shards.json`` records the
manifests packed (with their SHA-1): a shard set that does not match the
manifests of the run is refused.
"""

import csv
import io
import itertools
import json
import logging
import math
import multiprocessing
import os

import numpy as np
import soundfile as sf
import torch

from sincmi.audio import PYAV_EXTENSIONS, decode_bytes, file_extension
from sincmi.data import pair_offsets, resampled
from sincmi.prepare.unlabelled import file_digest
from sincmi.progress import progress_bar

logger = logging.getLogger(__name__)

INDEX_FILE = "shards.json"
SKIPPED_FILE = "shards_skipped.csv"
SHARD_NAME = "shard-{:06d}.tar"


def _resolve(path, data_root):
    """``$name`` placeholders of a manifest path replaced by ``data_root`` (a folder or ``{name: folder}``)."""
    roots = data_root if isinstance(data_root, dict) else {"data_root": data_root or ""}
    for name, folder in roots.items():
        path = path.replace(f"${name}", folder or "")
    return path


def files_of_manifests(manifests, data_root):
    """``[(path, [segment, ...])]``: the manifests' rows grouped by audio file, in a fixed shuffled order.

    A segment is ``[id, start, stop, gain, sentence, rate]`` (``rate`` 0: the
    recipe's). Files are shuffled (seed 0) so that every shard mixes speakers.
    """
    by_file = {}
    for manifest in manifests:
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                path = _resolve(row["wav"], data_root)
                by_file.setdefault(path, []).append([
                    row["ID"], int(row["start"]), int(row["stop"]), float(row.get("gain") or 1.0),
                    row.get("sentence") or row["ID"], int(row.get("rate") or 0),
                ])
    files = sorted(by_file.items())
    order = np.random.default_rng(0).permutation(len(files))
    return [files[i] for i in order]


def _write_shard(job):
    """Writes one shard of ``(path, segments)`` items; returns ``(name, files, segments, skipped)``."""
    import webdataset as wds

    index, folder, items, first_key = job
    name = SHARD_NAME.format(index)
    skipped, files, segments = [], 0, 0
    tmp = os.path.join(folder, name + ".tmp")
    with wds.TarWriter(tmp) as writer:
        for offset, (path, rows) in enumerate(items):
            try:
                with open(path, "rb") as f:
                    encoded = f.read()
            except OSError as error:
                skipped.append((path, f"unreadable: {error.strerror or error}"))
                continue
            if not encoded:
                skipped.append((path, "empty file (0 bytes)"))
                continue
            key = f"{first_key + offset:010d}"
            writer.write({"__key__": key, "audio" + file_extension(path): encoded,
                          "json": {"file": path, "segments": rows}})
            files += 1
            segments += len(rows)
    os.replace(tmp, os.path.join(folder, name))
    return name, files, segments, skipped


def pack_shards(manifests, out_folder, data_root="", files_per_shard=500, jobs=None, progress=True):
    """Packs the audio files of ``manifests`` into WebDataset shards in ``out_folder``.

    Arguments
    ---------
    manifests : str or list of str
        Manifest CSVs (``ID,duration,wav,start,stop,spk_id,...``).
    out_folder : str
        Where ``shard-NNNNNN.tar``, ``shards.json`` and ``shards_skipped.csv`` go.
    data_root : str or dict
        What ``$data_root`` (or each ``$name``) in the manifests' paths stands for.
    files_per_shard : int
        Audio files per shard (500 VoxCeleb2 files: about 60 MB of AAC).
    jobs : int, optional
        Processes writing shards (default: every core).

    Returns
    -------
    dict
        The index written to ``shards.json``.

    Files that cannot be read are listed in ``shards_skipped.csv`` with the
    reason and logged; nothing is dropped silently.
    """
    manifests = [manifests] if isinstance(manifests, str) else list(manifests)
    os.makedirs(out_folder, exist_ok=True)
    files = files_of_manifests(manifests, data_root)
    if not files:
        raise ValueError(f"{', '.join(manifests)}: no rows to pack")
    groups = [files[i : i + files_per_shard] for i in range(0, len(files), files_per_shard)]
    work = [(i, out_folder, group, i * files_per_shard) for i, group in enumerate(groups)]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(work)))
    if jobs == 1:
        results = [_write_shard(job) for job in progress_bar(work, desc="Packing shards", enabled=progress)]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = list(progress_bar(pool.imap(_write_shard, work), desc="Packing shards", total=len(work),
                                        enabled=progress))
    skipped = [item for *_, bad in results for item in bad]
    with open(os.path.join(out_folder, SKIPPED_FILE), "w", newline="") as f:
        csv.writer(f).writerows([("file", "reason")] + skipped)
    if len(skipped) == len(files):
        raise ValueError(f"none of the {len(files)} files of {', '.join(manifests)} could be read (e.g. "
                         f"{skipped[0][0]}: {skipped[0][1]}): is --data_root right?")
    if skipped:
        logger.warning(f"{len(skipped)} file(s) not packed; see {os.path.join(out_folder, SKIPPED_FILE)}")
    index = {
        "manifests": [{"path": os.path.abspath(m), "sha1": file_digest(m)} for m in manifests],
        "files": sum(r[1] for r in results),
        "segments": sum(r[2] for r in results),
        "skipped": len(skipped),
        "shards": [{"name": name, "files": n, "segments": s} for name, n, s, _ in results],
    }
    with open(os.path.join(out_folder, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=1)
    logger.info(f"Packed {index['files']} files ({index['segments']} segments) into {len(results)} shards "
                f"in {out_folder}")
    return index


def read_index(folder, manifests=None):
    """The ``shards.json`` of ``folder``; with ``manifests``, refuses shards packed from other manifests."""
    path = os.path.join(folder, INDEX_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"train_shards {folder!r} holds no {INDEX_FILE}: pack the shards first "
                                f"(python -m sincmi shards MANIFEST {folder})")
    with open(path) as f:
        index = json.load(f)
    if manifests is not None:
        packed = sorted(m["sha1"] for m in index["manifests"])
        wanted = sorted(file_digest(m) for m in manifests)
        if packed != wanted:
            raise ValueError(
                f"the shards in {folder} were packed from {', '.join(m['path'] for m in index['manifests'])}, "
                f"which differ from this run's {', '.join(manifests)}: pack them again from these manifests"
            )
    missing = [s["name"] for s in index["shards"] if not os.path.isfile(os.path.join(folder, s["name"]))]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} shard(s) of {INDEX_FILE} are missing, e.g. {missing[0]}")
    return index


def decode_member(encoded, extension):
    """A shard member's audio as mono: int16 samples where soundfile can give them (4 times faster
    to decode than float for WAV), else float32. Returns ``(samples, scale)``: multiply by ``scale``."""
    if extension.lower() in PYAV_EXTENSIONS:
        data, _ = decode_bytes(encoded, extension)
        return (data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)), 1.0
    data, _ = sf.read(io.BytesIO(encoded), dtype="int16", always_2d=True)
    if data.shape[1] > 1:
        return data.mean(axis=1, dtype=np.float32), 1.0 / 32768
    return data[:, 0], 1.0 / 32768


def process_rank():
    """``(rank, world size)`` of this process (``(0, 1)`` outside ``torchrun``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardPairs(torch.utils.data.IterableDataset):
    """An endless stream of LIM pairs ``{id, sentence, anchor, positive}`` read from shards.

    Arguments
    ---------
    folder : str
        Shards written by :func:`pack_shards`.
    chunk_size : int
        Samples per chunk (the files are at the model's rate: rows with
        another ``rate`` are resampled when cut).
    seed : int
        With the rank, the worker and ``start_epoch``, seeds the stream.
    pairs_per_segment : int
        Pairs cut from each segment each time its file is read.
    shuffle_buffer : int
        Pairs mixed before they are yielded (pairs of one segment spread over
        about ``shuffle_buffer / pairs_per_segment`` segments' worth of batches).
    gain_range, min_pair_distance, sample_rate : see :func:`sincmi.data.pair_dataset`.
    manifests : list of str, optional
        The manifests the shards must have been packed from (checked).
    epoch_counter : optional
        The stage's ``EpochCounter``: its epoch when the stream starts keys
        the random stream, so that a resumed run does not replay the first epoch.

    Each rank and worker takes every ``(ranks x workers)``-th shard of an
    order shuffled anew on each pass (the same order on all of them, so that
    together they read every shard once per pass), and draws offsets and
    gains from ``numpy.random.default_rng([seed, rank, worker, epoch])``.
    A member that cannot be decoded is logged with its key and reason and
    skipped (``bad_members`` counts them).
    """

    splits_by_rank = True  # each rank reads its own shards (no DistributedSampler)

    def __init__(self, folder, chunk_size, seed=1234, pairs_per_segment=4, shuffle_buffer=4096, gain_range=None,
                 min_pair_distance=0, sample_rate=16000, manifests=None, epoch_counter=None):
        super().__init__()
        self.folder = folder
        self.index = read_index(folder, manifests)
        self.shards = [os.path.join(folder, s["name"]) for s in self.index["shards"]]
        self.chunk_size = chunk_size
        self.seed = seed
        self.pairs_per_segment = pairs_per_segment
        self.shuffle_buffer = shuffle_buffer
        self.gain_range = gain_range
        self.min_pair_distance = min_pair_distance
        self.sample_rate = sample_rate
        self.epoch_counter = epoch_counter
        self.bad_members = 0

    def __len__(self):
        """Pairs in one pass over the shards."""
        return self.index["segments"] * self.pairs_per_segment

    def stream_slot(self):
        """``(slot, slots, rank, worker)``: which share of the shards this process and worker read."""
        rank, world = process_rank()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers, rank, worker

    def __iter__(self):
        slot, slots, rank, worker = self.stream_slot()
        if len(self.shards) < slots:
            raise ValueError(f"{self.folder} holds {len(self.shards)} shard(s) for {slots} readers (ranks x "
                             "workers): pack with a smaller --files_per_shard")
        epoch = int(getattr(self.epoch_counter, "current", 0) or 0)
        rng = np.random.default_rng([self.seed, rank, worker, epoch])
        self._yielded = False
        pairs = self._pairs(self._my_shards(slot, slots, epoch), rng)
        yield from shuffled(pairs, self.shuffle_buffer, rng)

    def _my_shards(self, slot, slots, epoch):
        """This reader's shards, pass after pass (each pass in a new order common to all readers)."""
        for repeat in itertools.count():
            order = np.random.default_rng([self.seed, epoch, repeat]).permutation(len(self.shards))
            yield from (self.shards[i] for i in order[slot::slots])
            if repeat == 0 and not self._yielded:  # a whole pass without one usable pair: never loop silently
                raise ValueError(f"{self.folder}: no usable recording in this reader's shards (every member "
                                 "failed to decode; see the warnings above)")

    def _pairs(self, shards, rng):
        for shard in shards:
            for member in members(shard):
                try:
                    extension = next(k for k in member if k.startswith("audio."))[len("audio"):]
                    samples, scale = decode_member(member["audio" + extension], extension)
                    segments = json.loads(member["json"])["segments"]
                except Exception as error:  # a corrupt member: listed, never dropped silently
                    self.bad_members += 1
                    logger.warning(f"{shard}: member {member.get('__key__')!r} skipped: cannot decode "
                                   f"({type(error).__name__}: {error})")
                    continue
                for seg_id, start, stop, gain, sentence, rate in segments:
                    for pair in self._segment_pairs(samples, scale, seg_id, start, stop, gain, sentence, rate, rng):
                        self._yielded = True
                        yield pair

    def _segment_pairs(self, samples, scale, seg_id, start, stop, gain, sentence, rate, rng):
        rates = (rate, self.sample_rate) if rate and rate != self.sample_rate else None
        span = samples[start:stop]
        if rates is not None:  # another rate: the segment is resampled once, then cut
            span = resampled(torch.from_numpy(span.astype(np.float32) * scale), rates).numpy()
            scale = 1.0
        frames = self.chunk_size
        for _ in range(self.pairs_per_segment):
            first, second = pair_offsets(len(span), frames, self.min_pair_distance, rng)
            chunks = []
            for offset in (first, second):
                chunk = span[offset : offset + frames].astype(np.float32)
                if len(chunk) < frames:
                    chunk = np.pad(chunk, (0, frames - len(chunk)))
                factor = scale * gain
                if self.gain_range is not None:
                    low, high = self.gain_range
                    factor *= low + (high - low) * rng.random()
                chunks.append(torch.from_numpy(chunk * np.float32(factor)))
            yield {"id": seg_id, "sentence": sentence, "anchor": chunks[0], "positive": chunks[1]}


def members(shard):
    """The samples (``{"__key__", "audio.<ext>", "json"}``) of one shard, read sequentially.

    A shard that cannot be opened or is cut short is logged and its
    remaining members skipped.
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    def report(error):
        logger.warning(f"{shard}: unreadable from here on ({type(error).__name__}: {error}); members skipped")
        return False

    try:
        with open(shard, "rb") as stream:
            files = tar_file_iterator(stream, handler=report)
            yield from group_by_keys(({**f, "__url__": shard} for f in files), handler=report)
    except Exception as error:  # a truncated tar raises from the stream
        report(error)


def shuffled(items, size, rng):
    """``items`` through a shuffle buffer of ``size`` (each output a random one of the buffer).

    >>> list(shuffled(range(5), 1, np.random.default_rng(0)))
    [0, 1, 2, 3, 4]
    >>> sorted(shuffled(range(50), 8, np.random.default_rng(0))) == list(range(50))
    True
    """
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(size))
        yield buffer[i]
        buffer[i] = item
    order = rng.permutation(len(buffer)) if buffer else []
    yield from (buffer[i] for i in order)


def steps_per_epoch(pairs_per_epoch, batch_size, index_pairs):
    """Batches per epoch and process: ``pairs_per_epoch`` (default one pass) over every process's batches.

    >>> steps_per_epoch(102400, 128, 10**6)
    800
    """
    _, world = process_rank()
    pairs = pairs_per_epoch or index_pairs
    return max(1, math.ceil(pairs / (batch_size * world)))
