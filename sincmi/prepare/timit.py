"""TIMIT speaker identification, as in SincNet (Ravanelli & Bengio, 2018).

Reads the LDC layout ``TIMIT/TRAIN/DR*/<SPEAKER>/<UTT>.WAV`` with its ``.WRD``
files, in upper or lower case, audio in NIST SPHERE (as on the LDC disc) or
RIFF. The protocol: the 462 speakers of ``TRAIN``, closed set; training = the
5 SX sentences of each speaker, test = the 3 SI sentences; SA sentences are
not in training or test.

Validation (checkpoint choice) must not touch the test sentences. With
``valid_split="sa"`` (default) it is the 2 SA sentences of each speaker,
which the protocol leaves unused (every speaker reads the same two texts); with
``"sx"`` one SX sentence per speaker is moved from training to validation.

As in SincNet's preparation, each sentence is trimmed to its first and last
word boundary (``.WRD``) and scaled to unit peak amplitude; both are options.
Nothing is rewritten: trimming becomes ``start``/``stop`` and normalisation the
``gain`` column of the manifests.

Outputs in ``save_folder``: ``train.csv``, ``valid.csv``, ``test.csv``,
``skipped.csv``.
"""

import logging
import os

import soundfile as sf

from sincmi.prepare.manifest import (CorpusFile, manifest_rows, peak_gain, preparation_options, report_skipped,
                                     run_preparation, write_splits)

logger = logging.getLogger(__name__)

OUTPUTS = ["train.csv", "valid.csv", "test.csv"]


def _child(folder, name):
    """``folder/name`` matched case-insensitively, or None."""
    if not os.path.isdir(folder):
        return None
    for entry in os.listdir(folder):
        if entry.lower() == name.lower():
            return os.path.join(folder, entry)
    return None


def find_train_folder(data_folder):
    """Finds ``TRAIN`` in ``data_folder``, ``data_folder/TIMIT`` or ``data_folder/data``."""
    if not data_folder or not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"data_folder {data_folder!r} does not exist: pass --data_folder=<TIMIT root> "
            "(the folder that holds TRAIN/DR1/...)."
        )
    for parent in (data_folder, _child(data_folder, "TIMIT"), _child(data_folder, "data")):
        train = _child(parent, "TRAIN") if parent else None
        if train and any(d.lower().startswith("dr") for d in os.listdir(train)):
            return train
    found = sorted(os.listdir(data_folder))[:10]
    raise ValueError(
        f"{data_folder} is not a TIMIT root: expected TRAIN/DR*/<SPEAKER>/<UTT>.WAV (upper or lower "
        f"case) below it, found {found}."
    )


def word_boundaries(wrd_path):
    """First word start and last word end (samples) from a ``.WRD`` file."""
    with open(wrd_path) as f:
        spans = [line.split()[:2] for line in f if len(line.split()) >= 3]
    if not spans:
        raise ValueError("no word in the .WRD file")
    return int(spans[0][0]), int(spans[-1][1])


def prepare_timit(data_folder, save_folder, trim_silence=True, normalize_peak=True, valid_split="sa",
                  sample_rate=16000, min_samples=3200, resample=False):
    """Writes the TIMIT speaker-id manifests; skipped if already done.

    Arguments
    ---------
    data_folder : str
        The TIMIT root (holding ``TRAIN``), in any letter case.
    save_folder : str
        Where the manifests go.
    trim_silence : bool
        Cut each sentence to its first/last ``.WRD`` boundary.
    normalize_peak : bool
        Scale each sentence to unit peak amplitude (``gain`` column).
    valid_split : str
        ``"sa"`` or ``"sx"``, see the module docstring.
    sample_rate, min_samples : int
        Expected rate; shortest usable (trimmed) sentence in samples.
    resample : bool
        Files at another sample rate than ``sample_rate``: True keeps them
        (resampled when read), False skips them. Every skipped or changed file
        is listed in ``skipped.csv`` (see :func:`sincmi.prepare.manifest.inspect_audio`).
    """
    opts = preparation_options(locals())
    if valid_split not in ("sa", "sx"):
        raise ValueError(f"valid_split must be 'sa' or 'sx', got {valid_split!r}")

    def prepare():
        files = [CorpusFile(path, "$data_root/" + os.path.relpath(path, data_folder).replace(os.sep, "/"),
                            f"{speaker(path)}_{sentence(path)}", speaker(path))
                 for path in list_sentences(find_train_folder(data_folder))]
        rows, skipped, noted = manifest_rows(
            files, sample_rate, 1, resample, desc="Preparing TIMIT",
            make_rows=lambda file, check: sentence_rows(file, check, trim_silence, normalize_peak, sample_rate,
                                                        min_samples))
        report_skipped(save_folder, skipped, noted)
        splits = protocol_splits(rows, valid_split)
        if not splits["train"]:
            raise ValueError(f"{data_folder}: no usable SX sentence found for training (see skipped.csv)")
        write_splits(save_folder, splits, sort=False)
        return (f"Prepared TIMIT: {len({r['spk_id'] for r in splits['train']})} speakers, {len(splits['train'])}/"
                f"{len(splits['valid'])}/{len(splits['test'])} train/valid/test sentences, {len(skipped)} skipped")

    run_preparation(save_folder, opts, OUTPUTS, prepare)


def speaker(path):
    return os.path.basename(os.path.dirname(path)).upper()


def sentence(path):
    return os.path.splitext(os.path.basename(path))[0].upper()


def list_sentences(train_dir):
    """Every ``TRAIN/DR*/<SPEAKER>/*.WAV`` file, sorted by region, speaker and name."""
    wavs = []
    for region in sorted(os.listdir(train_dir)):
        region_dir = os.path.join(train_dir, region)
        if not (os.path.isdir(region_dir) and region.lower().startswith("dr")):
            continue
        for spk in sorted(os.listdir(region_dir)):
            spk_dir = os.path.join(region_dir, spk)
            if os.path.isdir(spk_dir):
                wavs += [os.path.join(spk_dir, name) for name in sorted(os.listdir(spk_dir))
                         if name.lower().endswith(".wav")]
    return wavs


def sentence_rows(file, check, trim_silence, normalize_peak, sample_rate, min_samples):
    """The row of a usable TIMIT sentence (trimmed to its words, its peak gain), or why it is skipped."""
    utt = sentence(file.path)
    if utt[:2] not in ("SA", "SI", "SX"):
        return f"not an SA/SI/SX sentence ({utt})"
    frames, rate = check.frames, check.rate
    start, stop = 0, frames
    if trim_silence:
        base = os.path.splitext(file.path)[0]
        wrd = next((base + e for e in (".WRD", ".wrd", ".Wrd") if os.path.isfile(base + e)), base + ".WRD")
        try:
            start, stop = word_boundaries(wrd)
        except (OSError, ValueError) as err:
            return f"no usable word boundaries in {os.path.basename(wrd)} ({err})"
        stop = min(stop, frames)
    if (stop - start) * sample_rate / rate < min_samples:
        return f"too short ({stop - start} samples < {min_samples}, one chunk)"
    gain = 1.0
    if normalize_peak:
        gain = peak_gain(sf.read(file.path, start=start, frames=stop - start, dtype="float32", always_2d=True)[0].mean(1))
        if gain is None:
            return "silent (all samples are zero)"
    return [{"ID": file.utt_id, "duration": round((stop - start) / rate, 4), "wav": file.wav, "start": start,
             "stop": stop, "spk_id": file.speaker, "gain": gain, "rate": rate if rate != sample_rate else ""}]


def protocol_splits(rows, valid_split):
    """SincNet's protocol: SI sentences to test, SX to training, SA (or one SX per speaker) to validation."""
    splits = {"train": [], "valid": [], "test": []}
    sx_seen = set()
    for row in rows:
        kind = row["ID"].split("_")[-1][:2]
        if kind == "SI":
            splits["test"].append(row)
        elif kind == "SA":
            if valid_split == "sa":
                splits["valid"].append(row)
        elif valid_split == "sx" and row["spk_id"] not in sx_seen:
            sx_seen.add(row["spk_id"])
            splits["valid"].append(row)
        else:
            splits["train"].append(row)
    return splits
