"""LibriSpeech speaker identification, as in SincNet.

Reads ``LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` for
the subsets named (``train-clean-100``, ``train-clean-360``, ...). The label
is the speaker id (the first field), not speaker-chapter; transcripts are not
needed.

Split, per speaker and deterministic for a seed: utterances (in a seeded
order) go to training until ``train_seconds`` of audio are reached (SincNet
used 12-15 s per speaker), the next ``valid_per_speaker`` to validation, and
the rest (or the next ``test_per_speaker``) to test.

Optional energy-based trimming cuts leading and trailing frames more than
``trim_db`` below the loudest frame; it becomes ``start``/``stop``.

Outputs in ``save_folder``: ``train.csv``, ``valid.csv``, ``test.csv``,
``skipped.csv``.
"""

import logging
import os
import random

import numpy as np

from sincmi.audio import is_audio_file, read_audio
from sincmi.prepare.manifest import (CorpusFile, by_speaker, manifest_rows, peak_gain, preparation_options,
                                     report_skipped, run_preparation, write_splits)

logger = logging.getLogger(__name__)

OUTPUTS = ["train.csv", "valid.csv", "test.csv"]


def find_subset(data_folder, subset):
    """``data_folder/<subset>`` or ``data_folder/LibriSpeech/<subset>``."""
    for root in (data_folder, os.path.join(data_folder, "LibriSpeech")):
        if os.path.isdir(os.path.join(root, subset)):
            return os.path.join(root, subset)
    found = sorted(os.listdir(data_folder))[:10] if os.path.isdir(data_folder) else "nothing"
    raise ValueError(
        f"{data_folder} is not a LibriSpeech root with subset {subset!r}: expected "
        f"[LibriSpeech/]{subset}/<speaker>/<chapter>/<id>.flac below it, found {found}."
    )


def trim_bounds(wav, sample_rate, trim_db=-40.0, frame_ms=25):
    """First and last sample of the frames within ``trim_db`` of the loudest frame.

    Example
    -------
    >>> wav = np.concatenate([np.zeros(800), np.ones(1600), np.zeros(800)])
    >>> trim_bounds(wav, 16000)
    (800, 2400)
    """
    frame = max(1, int(sample_rate * frame_ms / 1000))
    frames = len(wav) // frame
    if frames == 0:
        return 0, len(wav)
    energy = (wav[: frames * frame].reshape(frames, frame) ** 2).mean(axis=1)
    level = 10 * np.log10(energy + 1e-12)
    loud = np.flatnonzero(level >= level.max() + trim_db)
    return int(loud[0] * frame), int(min(len(wav), (loud[-1] + 1) * frame))


def prepare_librispeech(data_folder, save_folder, subsets=("train-clean-100",), train_seconds=12.0,
                        valid_per_speaker=1, test_per_speaker=None, trim_silence=False, trim_db=-40.0,
                        normalize_peak=False, sample_rate=16000, min_samples=3200, seed=1234, resample=False,
                        prepare_jobs=None):
    """Writes the LibriSpeech speaker-id manifests; skipped if already done.

    Arguments
    ---------
    data_folder : str
        Folder holding the subsets, or their ``LibriSpeech`` parent.
    subsets : list of str
        Subsets to read.
    train_seconds : float
        Training audio per speaker.
    valid_per_speaker : int
        Utterances per speaker for validation.
    test_per_speaker : int or None
        Utterances per speaker for test; None: all the remaining ones.
    trim_silence, trim_db : bool, float
        Energy-based trimming and its threshold relative to the loudest frame.
    normalize_peak : bool
        Scale each utterance to unit peak (``gain`` column).
    sample_rate : int
        Sample rate of the files (LibriSpeech: 16000).
    min_samples : int
        Shortest usable utterance, in samples.
    seed : int
        Seed of the per-speaker utterance order.
    resample : bool
        Files at another sample rate than ``sample_rate``: True keeps them
        (resampled when read), False skips them. Every skipped or changed file
        is listed in ``skipped.csv`` (see :func:`sincmi.prepare.manifest.inspect_audio`).
    prepare_jobs : int, optional
        Processes checking the files (default: every core).
    """
    opts = preparation_options(locals())

    def prepare():
        if not data_folder or not os.path.isdir(data_folder):
            raise FileNotFoundError(f"data_folder {data_folder!r} does not exist: pass --data_folder=<folder "
                                    "holding LibriSpeech/ or its subsets>.")
        paths = []
        for subset in subsets:
            for folder, _, names in os.walk(find_subset(data_folder, subset), followlinks=True):
                paths += [os.path.join(folder, n) for n in names if is_audio_file(n)]
        files = [CorpusFile(path, "$data_root/" + os.path.relpath(path, data_folder).replace(os.sep, "/"),
                            utterance(path), utterance(path).split("-")[0]) for path in sorted(paths)]
        rows, skipped, noted = manifest_rows(
            files, sample_rate, min_samples, resample, jobs=prepare_jobs, desc="Checking LibriSpeech",
            make_rows=lambda file, check: utterance_rows(file, check, trim_silence, trim_db, normalize_peak,
                                                         sample_rate, min_samples))
        report_skipped(save_folder, skipped, noted)
        if not rows:
            raise ValueError(f"{data_folder}: no usable utterance in subsets {list(subsets)} (see skipped.csv)")
        speakers = by_speaker(rows)
        splits = duration_splits(speakers, train_seconds, valid_per_speaker, test_per_speaker, seed)
        write_splits(save_folder, splits)
        return (f"Prepared LibriSpeech {list(subsets)}: {len(speakers)} speakers, {len(splits['train'])}/"
                f"{len(splits['valid'])}/{len(splits['test'])} train/valid/test utterances, {len(skipped)} skipped")

    run_preparation(save_folder, opts, OUTPUTS, prepare)


def utterance(path):
    return os.path.splitext(os.path.basename(path))[0]


def utterance_rows(file, check, trim_silence, trim_db, normalize_peak, sample_rate, min_samples):
    """The row of a usable utterance (trimmed, with its peak gain, when asked), or why it is skipped."""
    rate, start, stop, gain = check.rate, 0, check.frames, 1.0
    if trim_silence or normalize_peak:
        wav = read_audio(file.path).mean(axis=1)
        if trim_silence:
            start, stop = trim_bounds(wav, rate, trim_db)
        if (stop - start) * sample_rate / rate < min_samples:
            return f"too short after trimming ({stop - start} samples)"
        if normalize_peak:
            gain = peak_gain(wav[start:stop])
            if gain is None:
                return "silent (all samples are zero)"
    return [{"ID": file.utt_id, "duration": round((stop - start) / rate, 4), "wav": file.wav, "start": start,
             "stop": stop, "spk_id": file.speaker, "gain": gain, "rate": rate if rate != sample_rate else ""}]


def duration_splits(speakers, train_seconds, valid_per_speaker, test_per_speaker, seed):
    """SincNet's LibriSpeech protocol: ``train_seconds`` of each speaker's shuffled utterances for training,
    then ``valid_per_speaker`` for validation and the rest (at most ``test_per_speaker``) for test."""
    rng = random.Random(seed)
    splits = {"train": [], "valid": [], "test": []}
    for spk in sorted(speakers):
        utts = sorted(speakers[spk], key=lambda r: r["ID"])
        rng.shuffle(utts)
        total, n_train = 0.0, 0
        while n_train < len(utts) and (n_train == 0 or total < train_seconds):
            total += utts[n_train]["duration"]
            n_train += 1
        rest = utts[n_train:]
        splits["train"] += utts[:n_train]
        splits["valid"] += rest[:valid_per_speaker]
        test = rest[valid_per_speaker:]
        splits["test"] += test if test_per_speaker is None else test[:test_per_speaker]
    return splits
