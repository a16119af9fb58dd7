"""Prepares any folder laid out as ``<data_folder>/<speaker>/**/*.{wav,flac}``, or any corpus
whose files can be listed by speaker (``speaker_files``, see ``docs/new_corpus.md``).

Used by the Demo recipe (on the synthetic corpus or on a user's recordings).
Speakers are split into *training* speakers (unlabelled pretraining and the
speaker-id probe: train / valid / test sentences) and *verification* speakers,
never seen in training, whose utterances form the verification trials.

Outputs in ``save_folder``: ``train.csv``, ``valid.csv``, ``test.csv``,
``verification.csv``, ``trials.txt`` (``label enrol test``), ``skipped.csv``.
"""

import hashlib
import itertools
import json
import logging
import os
import random

from sincmi.audio import AUDIO_EXTENSIONS, is_audio_file
from sincmi.prepare.manifest import (CorpusFile, by_speaker, manifest_rows, preparation_options, report_skipped,
                                     run_preparation, write_splits)

logger = logging.getLogger(__name__)

OUTPUTS = ["train.csv", "valid.csv", "test.csv", "verification.csv", "trials.txt"]


def find_speaker_files(data_folder):
    """Maps each speaker folder to its sorted audio files (relative paths)."""
    if not data_folder or not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"data_folder {data_folder!r} does not exist. Pass --data_folder=DIR with "
            "DIR/<speaker>/**/*.wav (or .flac, .m4a), or leave it null to synthesise the Demo corpus."
        )
    speakers = {}
    for spk in sorted(os.listdir(data_folder)):
        spk_dir = os.path.join(data_folder, spk)
        if not os.path.isdir(spk_dir):
            continue
        files = []
        for root, _, names in os.walk(spk_dir, followlinks=True):  # linked folders count
            for name in names:
                if is_audio_file(name):
                    files.append(os.path.relpath(os.path.join(root, name), data_folder))
        if files:
            speakers[spk] = sorted(files)
    if not speakers:
        raise ValueError(
            f"data_folder {data_folder!r} holds no audio: expected "
            f"<speaker>/**/*{{{','.join(AUDIO_EXTENSIONS)}}} below it."
        )
    return speakers


def held_out_counts(num_files, test_per_speaker, valid_per_speaker, max_held_out_share=0.5):
    """How many of a speaker's files go to test and to validation.

    At most ``floor(max_held_out_share * num_files)`` files are held out, so a
    speaker always keeps at least one training file; they are given to test
    and validation in turn (test first), up to what each asks for.

    Example
    -------
    >>> held_out_counts(4, 4, 2)  # 2 of 4 files held out: one each
    (1, 1)
    >>> held_out_counts(20, 4, 2)
    (4, 2)
    >>> held_out_counts(1, 4, 2), held_out_counts(3, 4, 2)
    ((0, 0), (1, 0))
    """
    budget = min(int(max_held_out_share * num_files), num_files - 1)
    n_test = n_valid = 0
    while budget > 0 and (n_test < test_per_speaker or n_valid < valid_per_speaker):
        if n_test < test_per_speaker and (n_test <= n_valid or n_valid >= valid_per_speaker):
            n_test += 1
        else:
            n_valid += 1
        budget -= 1
    return n_test, n_valid


def prepare_folder(data_folder, save_folder, sample_rate=16000, min_samples=3200, num_verification_speakers=20,
                   valid_per_speaker=2, test_per_speaker=4, max_trials=200000, seed=1234, resample=False,
                   max_held_out_share=0.5, speaker_files=None):
    """Writes the manifests of a speaker folder; skipped if already done.

    Arguments
    ---------
    data_folder : str
        ``<data_folder>/<speaker>/**/*.{wav,flac}``.
    save_folder : str
        Where the manifests are written.
    sample_rate : int
        The recipe's sample rate.
    min_samples : int
        Shortest usable file (one chunk); shorter files are skipped and listed.
    resample : bool
        Files at another sample rate: True keeps them (resampled when read;
        their rate is stored in the manifest), False skips them. Every
        skipped or changed file is listed in ``skipped.csv``
        (:func:`sincmi.prepare.manifest.inspect_audio` gives the checks).
    num_verification_speakers : int
        Speakers held out of training for verification trials.
    valid_per_speaker, test_per_speaker : int
        Sentences of each training speaker held out for validation and for the
        sentence-level speaker-id test.
    max_held_out_share : float
        At most this share of a speaker's files is held out (test first, then
        validation, one at a time), so that every training speaker keeps
        training audio; speakers with too few files get fewer held-out files,
        and the log says which.
    max_trials : int
        Verification uses every pair of held-out utterances, subsampled to at
        most this many trials.
    seed : int
        Seed of the speaker and sentence splits.
    speaker_files : dict, optional
        ``{speaker: [audio files, relative to data_folder]}`` for a corpus laid
        out otherwise; default: :func:`find_speaker_files` (one folder per speaker).
    """
    opts = preparation_options(locals(), leave_out=("save_folder", "speaker_files"))
    if speaker_files is not None and not any(speaker_files.values()):
        raise ValueError(f"speaker_files lists no audio file below {data_folder!r}")
    if speaker_files is not None:  # a changed listing is a changed preparation
        listing = json.dumps({spk: sorted(files) for spk, files in sorted(speaker_files.items())})
        opts["speaker_files_sha1"] = hashlib.sha1(listing.encode()).hexdigest()

    def prepare():
        listed = find_speaker_files(data_folder) if speaker_files is None else speaker_files
        files = [CorpusFile(os.path.join(data_folder, rel), "$data_root/" + rel.replace(os.sep, "/"),
                            spk + "-" + os.path.splitext(rel)[0].replace(os.sep, "-"), spk)
                 for spk, rels in sorted(listed.items()) for rel in sorted(rels)]
        rows, skipped, noted = manifest_rows(files, sample_rate, min_samples, resample, desc="Checking audio")
        report_skipped(save_folder, skipped, noted)
        logger.info(f"{len(rows)} usable files, {len(skipped)} skipped, {len(noted)} kept with a note")
        splits, counts = split_speakers(by_speaker(rows), data_folder, num_verification_speakers, valid_per_speaker,
                                        test_per_speaker, max_held_out_share, max_trials, seed)
        trials = splits.pop("trials")
        write_splits(save_folder, splits)
        with open(os.path.join(save_folder, "trials.txt"), "w") as f:
            f.writelines(f"{label} {enrol} {test}\n" for label, enrol, test in trials)
        return (f"Prepared {data_folder}: {counts['training']} training speakers "
                f"({len(splits['train'])}/{len(splits['valid'])}/{len(splits['test'])} train/valid/test "
                f"sentences), {counts['verification']} verification speakers ({len(splits['verification'])} "
                f"utterances, {counts['trials']} trials), {len(skipped)} skipped")

    run_preparation(save_folder, opts, OUTPUTS, prepare)


def split_speakers(rows, data_folder, num_verification_speakers, valid_per_speaker, test_per_speaker,
                   max_held_out_share, max_trials, seed):
    """The Demo's splits of ``{speaker: rows}``: ``train``/``valid``/``test`` sentences of the training
    speakers, the verification speakers' utterances and their ``trials``; and the counts."""
    names = sorted(rows)
    if len(names) - num_verification_speakers < 2 or num_verification_speakers < 2:
        raise ValueError(
            f"{data_folder}: {len(names)} speaker(s) with usable audio; "
            f"num_verification_speakers={num_verification_speakers} must be >= 2 and leave "
            ">= 2 training speakers. Add speakers or lower num_verification_speakers."
        )
    rng = random.Random(seed)
    rng.shuffle(names)
    verification_speakers = sorted(names[:num_verification_speakers])
    training_speakers = sorted(names[num_verification_speakers:])
    splits = {"train": [], "valid": [], "test": []}
    fell_back = []
    for spk in training_speakers:
        utts = list(rows[spk])
        rng.shuffle(utts)
        n_test, n_valid = held_out_counts(len(utts), test_per_speaker, valid_per_speaker, max_held_out_share)
        splits["test"] += utts[:n_test]
        splits["valid"] += utts[n_test : n_test + n_valid]
        splits["train"] += utts[n_test + n_valid :]
        if (n_test, n_valid) != (test_per_speaker, valid_per_speaker):
            fell_back.append(f"{spk} ({len(utts)} files: {n_test} test, {n_valid} valid)")
    if fell_back:
        logger.warning(
            f"{len(fell_back)} training speaker(s) have too few files for test_per_speaker={test_per_speaker} "
            f"and valid_per_speaker={valid_per_speaker} with at most {max_held_out_share:.0%} of a speaker's "
            f"files held out; fewer were held out: {', '.join(fell_back[:5])}{' ...' if len(fell_back) > 5 else ''}"
        )
    check_held_out_splits(splits, data_folder, len(training_speakers), valid_per_speaker, test_per_speaker,
                          max_held_out_share)
    verification = sorted((r for spk in verification_speakers for r in rows[spk]), key=lambda r: r["ID"])
    trials = [(int(a["spk_id"] == b["spk_id"]), a["ID"], b["ID"]) for a, b in itertools.combinations(verification, 2)]
    if len(trials) > max_trials:
        trials = sorted(rng.sample(trials, max_trials), key=lambda t: (t[1], t[2]))
    counts = {"training": len(training_speakers), "verification": len(verification_speakers), "trials": len(trials)}
    return {**splits, "verification": verification, "trials": trials}, counts


def check_held_out_splits(splits, data_folder, training_speakers, valid_per_speaker, test_per_speaker,
                          max_held_out_share):
    """Refuses an empty validation or test split, naming the option and the files a speaker needs."""
    for split, option, value in (("valid", "valid_per_speaker", valid_per_speaker),
                                 ("test", "test_per_speaker", test_per_speaker)):
        if not splits[split]:
            needed = next((n for n in range(1, 1000) if held_out_counts(
                n, test_per_speaker, valid_per_speaker, max_held_out_share)[split == "valid"]), None)
            raise ValueError(
                f"{data_folder}: the {split} split is empty: {option}={value} with max_held_out_share="
                f"{max_held_out_share} leaves no {split} file for any of the {training_speakers} training "
                f"speakers (each keeps at least half of its files for training). "
                + (f"This needs speakers with at least {needed} usable files; " if needed else "")
                + f"raise {option} or max_held_out_share, or add files."
            )
