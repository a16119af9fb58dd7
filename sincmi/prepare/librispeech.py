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
from sincmi.prepare.manifest import (
    already_prepared,
    inspect_many,
    mark_prepared,
    peak_gain,
    report_skipped,
    write_manifest,
)
from sincmi.progress import progress_bar

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


def prepare_librispeech(
    data_folder,
    save_folder,
    subsets=("train-clean-100",),
    train_seconds=12.0,
    valid_per_speaker=1,
    test_per_speaker=None,
    trim_silence=False,
    trim_db=-40.0,
    normalize_peak=False,
    sample_rate=16000,
    min_samples=3200,
    seed=1234,
    resample=False,
    prepare_jobs=None,
):
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
    opts = {
        "data_folder": os.path.abspath(data_folder) if data_folder else data_folder,
        "subsets": list(subsets),
        "train_seconds": train_seconds,
        "valid_per_speaker": valid_per_speaker,
        "test_per_speaker": test_per_speaker,
        "trim_silence": trim_silence,
        "trim_db": trim_db,
        "normalize_peak": normalize_peak,
        "sample_rate": sample_rate,
        "min_samples": min_samples,
        "seed": seed,
        "resample": resample,
    }
    if already_prepared(save_folder, opts, OUTPUTS):
        logger.info(f"Manifests in {save_folder} are up to date, skipping preparation")
        return
    if not data_folder or not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"data_folder {data_folder!r} does not exist: pass --data_folder=<folder holding "
            "LibriSpeech/ or its subsets>."
        )
    paths = []
    for subset in subsets:
        root = find_subset(data_folder, subset)
        for folder, _, names in os.walk(root, followlinks=True):
            paths += [os.path.join(folder, n) for n in names if is_audio_file(n)]
    os.makedirs(save_folder, exist_ok=True)

    by_speaker, skipped, noted = {}, [], []
    paths = sorted(paths)
    checks = inspect_many(paths, sample_rate, min_samples, resample, jobs=prepare_jobs, desc="Checking LibriSpeech")
    for path, check in zip(progress_bar(paths, desc="Preparing LibriSpeech"), checks):
        utt = os.path.splitext(os.path.basename(path))[0]
        if check.reason:
            skipped.append((path, check.reason))
            continue
        noted += [(path, note) for note in check.notes]
        rate = check.rate
        start, stop, gain = 0, check.frames, 1.0
        if trim_silence or normalize_peak:
            wav = read_audio(path).mean(axis=1)
            if trim_silence:
                start, stop = trim_bounds(wav, rate, trim_db)
            if (stop - start) * sample_rate / rate < min_samples:
                skipped.append((path, f"too short after trimming ({stop - start} samples)"))
                continue
            if normalize_peak:
                gain = peak_gain(wav[start:stop])
                if gain is None:
                    skipped.append((path, "silent (all samples are zero)"))
                    continue
        speaker = utt.split("-")[0]
        by_speaker.setdefault(speaker, []).append(
            {
                "ID": utt,
                "duration": round((stop - start) / rate, 4),
                "wav": "$data_root/" + os.path.relpath(path, data_folder).replace(os.sep, "/"),
                "start": start,
                "stop": stop,
                "spk_id": speaker,
                "gain": gain,
                "rate": rate if rate != sample_rate else "",
            }
        )
    report_skipped(save_folder, skipped, noted)
    if not by_speaker:
        raise ValueError(f"{data_folder}: no usable utterance in subsets {list(subsets)} (see skipped.csv)")

    rng = random.Random(seed)
    splits = {"train": [], "valid": [], "test": []}
    for speaker in sorted(by_speaker):
        utts = sorted(by_speaker[speaker], key=lambda r: r["ID"])
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
    for name, rows in splits.items():
        write_manifest(os.path.join(save_folder, f"{name}.csv"), sorted(rows, key=lambda r: r["ID"]))
    mark_prepared(save_folder, opts)
    logger.info(
        f"Prepared LibriSpeech {list(subsets)}: {len(by_speaker)} speakers, "
        f"{len(splits['train'])}/{len(splits['valid'])}/{len(splits['test'])} train/valid/test "
        f"utterances, {len(skipped)} skipped"
    )
