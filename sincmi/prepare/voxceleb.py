"""VoxCeleb speaker verification: training segments and official trial lists.

Layouts read (nothing is downloaded):

* VoxCeleb1: ``<voxceleb1_folder>/wav/<spk>/<video>/<utt>.wav`` (dev and
  test together, as distributed) and the trial lists in the official format
  ``label enrol test`` with paths relative to ``wav/``:
  ``veri_test2.txt`` (VoxCeleb1-O cleaned), ``list_test_all2.txt`` (-E),
  ``list_test_hard2.txt`` (-H).
* VoxCeleb2 dev as distributed (AAC, read with PyAV) or converted to wav:
  ``<voxceleb2_folder>/<spk>/<video>/<utt>.m4a`` (or ``.wav``).

Training manifests cut every utterance into segments of ``segment_seconds``
(the last, shorter one is kept when it holds at least one chunk); the rows of
one utterance share a ``sentence`` column so that LIM never takes two
segments of one recording as a negative pair. Speakers that appear in the
trial list are removed from training.

Outputs in ``save_folder``: ``train.csv`` and ``valid.csv`` (segments;
validation = one utterance of each of ``valid_speakers`` training speakers,
held out of training, so that both LIM and a speaker classifier can be
validated), ``verification.csv`` (whole trial utterances), ``trials.txt``
(trial list with utterance ids), ``skipped.csv``. Audio paths start with
``$voxceleb1/`` or ``$voxceleb2/``.
"""

import logging
import os
import random

from sincmi.audio import is_audio_file
from sincmi.scoring import read_trials
from sincmi.prepare.manifest import (CorpusFile, by_speaker, manifest_rows, preparation_options, report_skipped,
                                     run_preparation, write_splits)

logger = logging.getLogger(__name__)

OUTPUTS = ["train.csv", "valid.csv", "verification.csv", "trials.txt"]


def utterance_id(relative_path):
    """``id10270/x6uYqmx31kE/00001.wav`` -> ``id10270-x6uYqmx31kE-00001``."""
    return os.path.splitext(relative_path)[0].replace("\\", "/").replace("/", "-")


def list_wavs(root):
    """Relative paths of ``<spk>/<video>/<utt>.<ext>`` below ``root`` (any audio extension: .wav, .m4a...)."""
    found = []
    for folder, _, names in os.walk(root, followlinks=True):
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names if is_audio_file(n)]
    return sorted(found)


def read_official_trials(path):
    """Reads ``label enrol test`` (paths relative to VoxCeleb1 ``wav/``), refusing an empty list."""
    trials = read_trials(path)
    if not trials:
        raise ValueError(f"{path}: the trial list is empty")
    return trials


def segment_rows(utt, rel_wav, spk, frames, sample_rate, segment_samples, min_samples):
    """Manifest rows for the segments of one utterance."""
    rows = []
    for k, start in enumerate(range(0, frames, segment_samples)):
        stop = min(start + segment_samples, frames)
        if stop - start < min_samples:
            break
        rows.append(
            {
                "ID": f"{utt}_{k}",
                "duration": round((stop - start) / sample_rate, 4),
                "wav": rel_wav,
                "start": start,
                "stop": stop,
                "spk_id": spk,
                "sentence": utt,
            }
        )
    return rows


def prepare_voxceleb(voxceleb1_folder, save_folder, trial_list="veri_test2.txt", voxceleb2_folder=None,
                     train_sets=("voxceleb1",), segment_seconds=3.0, valid_speakers=20, sample_rate=16000,
                     min_samples=3200, seed=1234, resample=False, verify_samples=True, prepare_jobs=None):
    """Writes the VoxCeleb manifests and trial list; skipped if already done.

    Arguments
    ---------
    voxceleb1_folder : str
        Holds ``wav/`` (and usually the trial lists).
    trial_list : str
        Trial list file: a path, or a name inside ``voxceleb1_folder``.
    voxceleb2_folder : str, optional
        VoxCeleb2 dev as distributed, ``<spk>/<video>/<utt>.m4a``, or as wav.
    train_sets : list of str
        ``voxceleb1`` and/or ``voxceleb2``: the utterances used for training
        (without the trial list's speakers).
    segment_seconds : float
        Length of the training segments.
    valid_speakers : int
        Training speakers that give one utterance each to validation.
    resample : bool
        Trial utterances at another sample rate: True keeps them (resampled
        when read), False skips them; training recordings at another rate are
        always skipped. Every skipped or changed file is listed in
        ``skipped.csv`` (see :func:`sincmi.prepare.manifest.inspect_audio`).
    verify_samples : bool
        Read every training recording whole to find truncated files and
        NaN/infinite samples (VoxCeleb2 is large: False checks headers only).
    prepare_jobs : int, optional
        Processes reading the files (default: every core).
    """
    arguments = preparation_options(locals(), folders=("voxceleb1_folder", "voxceleb2_folder"))
    wav_root, trial_path = check_voxceleb_inputs(voxceleb1_folder, trial_list, voxceleb2_folder, train_sets)
    opts = {**arguments, "trial_list": os.path.abspath(trial_path), "train_sets": sorted(train_sets)}

    def prepare():
        official = read_official_trials(trial_path)
        trial_files = sorted({p for _, a, b in official for p in (a, b)})
        trial_speakers = {p.replace("\\", "/").split("/")[0] for p in trial_files}
        files = [CorpusFile(os.path.join(wav_root, rel), "$voxceleb1/wav/" + rel.replace(os.sep, "/"),
                            utterance_id(rel), rel.split("/")[0]) for rel in trial_files]
        verification, skipped, noted = manifest_rows(files, sample_rate, min_samples, resample, jobs=prepare_jobs,
                                                     desc="Checking trial utterances")
        usable = {row["ID"] for row in verification}
        trials = [(label, a, b) for label, a, b in official if utterance_id(a) in usable and utterance_id(b) in usable]
        if len(trials) < len(official):
            logger.warning(f"{len(official) - len(trials)} trial(s) dropped: an utterance is unusable (skipped.csv)")
        sources = [("$voxceleb1/wav/", wav_root)] if "voxceleb1" in train_sets else []
        if "voxceleb2" in train_sets:
            sources.append(("$voxceleb2/", voxceleb2_folder))
        segments = []
        for prefix, root in sources:
            files = [CorpusFile(os.path.join(root, rel), prefix + rel.replace(os.sep, "/"), utterance_id(rel),
                                rel.replace(os.sep, "/").split("/")[0])
                     for rel in list_wavs(root) if rel.replace(os.sep, "/").split("/")[0] not in trial_speakers]
            rows, skipped_here, noted_here = manifest_rows(
                files, sample_rate, min_samples, resample, verify_samples, prepare_jobs, desc=f"Checking {root}",
                make_rows=lambda file, check: training_segments(file, check, sample_rate, segment_seconds,
                                                                min_samples))
            segments += rows
            skipped += skipped_here
            noted += noted_here
        report_skipped(save_folder, skipped, noted)
        train, valid, speakers = hold_out_validation(by_speaker(segments), valid_speakers, seed)
        write_splits(save_folder, {"train": train, "valid": valid, "verification": verification}, sort=False)
        with open(os.path.join(save_folder, "trials.txt"), "w") as f:
            f.writelines(f"{label} {utterance_id(a)} {utterance_id(b)}\n" for label, a, b in trials)
        return (f"Prepared VoxCeleb: {speakers} training speakers ({len(train)} segments), {len(valid)} validation "
                f"segments, {len(verification)} trial utterances, {len(trials)} trials, {len(skipped)} skipped")

    run_preparation(save_folder, opts, OUTPUTS, prepare)


def check_voxceleb_inputs(voxceleb1_folder, trial_list, voxceleb2_folder, train_sets):
    """``(wav root, trial list path)``, or a one-line error saying what is missing and where to get it."""
    unknown = set(train_sets) - {"voxceleb1", "voxceleb2"}
    if unknown or not train_sets:
        raise ValueError(f"train_sets: {sorted(unknown) or '[]'} not valid; choose from ['voxceleb1', 'voxceleb2']")
    wav_root = os.path.join(voxceleb1_folder or "", "wav")
    if not os.path.isdir(wav_root):
        raise FileNotFoundError(
            f"VoxCeleb1 not found: expected {wav_root}/<spk>/<video>/<utt>.wav. Download VoxCeleb1 "
            "(dev and test wav) from the VoxCeleb site and pass --voxceleb1_folder=<folder holding wav/>."
        )
    trial_path = trial_list if os.path.isfile(trial_list) else os.path.join(voxceleb1_folder, trial_list)
    if not os.path.isfile(trial_path):
        raise FileNotFoundError(
            f"trial list {trial_list!r} not found (looked for {trial_path}). Put veri_test2.txt, "
            "list_test_all2.txt or list_test_hard2.txt from the VoxCeleb site there, or give its path."
        )
    if "voxceleb2" in train_sets and not (voxceleb2_folder and os.path.isdir(voxceleb2_folder)):
        raise FileNotFoundError(
            f"voxceleb2_folder {voxceleb2_folder!r} not found: expected <spk>/<video>/<utt>.m4a "
            "(VoxCeleb2 dev as distributed) or .wav."
        )
    return wav_root, trial_path


def training_segments(file, check, sample_rate, segment_seconds, min_samples):
    """The segment rows of a usable training recording (:func:`segment_rows`), or why it is skipped."""
    if check.rate != sample_rate:  # segments are cut at the recipe's rate: resampling is not supported
        return f"sample rate {check.rate} Hz, expected {sample_rate} Hz"
    return segment_rows(file.utt_id, file.wav, file.speaker, check.frames, sample_rate,
                        int(segment_seconds * sample_rate), min_samples)


def hold_out_validation(segments, valid_speakers, seed):
    """``(train, valid, speakers)``: one recording of ``valid_speakers`` speakers (with more than one) goes to
    validation, the rest to training."""
    speakers = sorted(segments)
    if len(speakers) < 2:
        raise ValueError(f"{len(speakers)} training speaker(s) left after removing the trial speakers")
    rng = random.Random(seed)
    candidates = [s for s in speakers if len({r["sentence"] for r in segments[s]}) > 1]
    held = {}
    for spk in sorted(rng.sample(candidates, min(valid_speakers, len(candidates)))):
        held[spk] = rng.choice(sorted({r["sentence"] for r in segments[spk]}))
    train = [r for s in speakers for r in segments[s] if held.get(s) != r["sentence"]]
    valid = [r for s in sorted(held) for r in segments[s] if held[s] == r["sentence"]]
    return train, valid, len(speakers)
