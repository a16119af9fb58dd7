"""Writing and checking CSV manifests shared by every corpus preparer.

A manifest row is one sentence: ``ID,duration,wav,start,stop,spk_id,gain``
(and ``rate``, the file's sample rate, when it differs from the recipe's and the
file is resampled when read), with ``start``/``stop`` in samples of the file, ``wav`` relative to
``$data_root`` and ``gain`` the factor applied to the samples when read (1, or
1/peak for corpora prepared with peak normalisation). Manifests whose rows
are segments of longer recordings add a ``sentence`` column naming the
recording, so that LIM never pairs two segments of it as a negative.
"""

import csv
import json
import logging
import multiprocessing
import os

from typing import List, NamedTuple, Optional

import numpy as np

from sincmi.audio import audio_info, read_audio, uses_pyav
from sincmi.progress import progress_bar

logger = logging.getLogger(__name__)

FIELDS = ["ID", "duration", "wav", "start", "stop", "spk_id", "gain"]
OPTS_FILE = "prepare_opts.json"
SKIPPED_FILE = "skipped.csv"


class AudioCheck(NamedTuple):
    """What :func:`inspect_audio` found: usable (``reason`` None) or not, and notes."""

    frames: int  # samples per channel, at the file's rate
    rate: int  # the file's sample rate
    reason: Optional[str]  # why the file is unusable; None if usable
    notes: List[str]  # what was done to use it (down-mixed, resampled)


def inspect_audio(path, sample_rate, min_samples, resample=False, read_samples=True):
    """Checks that an audio file can be used, reading it whole unless ``read_samples`` is False.

    Unusable: missing, unreadable (permissions), empty, not audio or with a
    corrupt header, truncated (fewer samples than its header announces),
    holding NaN or infinite samples, shorter than ``min_samples`` at
    ``sample_rate``, or at another sample rate when ``resample`` is False.
    Usable with a note: more than one channel (down-mixed when read) or
    another sample rate with ``resample`` (resampled when read).

    Returns
    -------
    AudioCheck
    """
    def bad(reason):
        return AudioCheck(0, 0, reason, [])

    if not os.path.isfile(path):
        return bad("file not found")
    if not os.access(path, os.R_OK):
        return bad("no read permission")
    if os.path.getsize(path) == 0:
        return bad("empty file (0 bytes)")
    try:
        info = audio_info(path)
    except Exception as err:  # soundfile raises several types for bad files
        return bad(f"not readable as audio: corrupt header or not an audio file ({err})".replace("\n", " "))
    if info.frames <= 0:
        return bad("no audio samples")
    notes = []
    if info.channels > 1:
        notes.append(f"{info.channels} channels: down-mixed to mono")
    if info.samplerate != sample_rate:
        if not resample:
            return bad(f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz "
                       "(resample_audio: True resamples such files)")
        notes.append(f"sample rate {info.samplerate} Hz: resampled to {sample_rate} Hz")
    if info.frames * sample_rate / info.samplerate < min_samples:
        return bad(f"too short ({info.frames} samples at {info.samplerate} Hz < one chunk of {min_samples} "
                   f"at {sample_rate} Hz)")
    if read_samples:
        try:
            data = read_audio(path)
        except Exception as err:
            return bad(f"truncated or corrupt audio data ({err})".replace("\n", " "))
        if not np.isfinite(data).all():
            return bad("NaN or infinite samples")
        if uses_pyav(path):  # AAC: the container's length is approximate; the decoded one is exact
            return AudioCheck(data.shape[0], info.samplerate, None, notes)
        declared = declared_frames(path, info)
        if data.shape[0] < max(info.frames, declared or 0):
            announced = max(info.frames, declared or 0)
            return bad(f"truncated: the header announces {announced} samples, the file holds {data.shape[0]}")
    return AudioCheck(info.frames, info.samplerate, None, notes)


def _inspect_one(args):
    return inspect_audio(*args)


def inspect_many(paths, sample_rate, min_samples, resample=False, read_samples=True, jobs=None, desc="Checking audio"):
    """:func:`inspect_audio` of every path, in ``jobs`` parallel processes (default: every core).

    Returns the :class:`AudioCheck` of each path, in order. A corpus of a
    million files is read in parallel (headers only with ``read_samples``
    False: a few hundred microseconds a file), with a progress bar.
    """
    jobs = jobs or os.cpu_count() or 1
    work = [(path, sample_rate, min_samples, resample, read_samples) for path in paths]
    if jobs == 1 or len(work) < 64:
        return [inspect_audio(*args) for args in progress_bar(work, desc=desc)]
    with multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(jobs) as pool:
        chunksize = max(1, min(256, len(work) // (8 * jobs)))
        return list(progress_bar(pool.imap(_inspect_one, work, chunksize), desc=desc, total=len(work)))


SAMPLE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def declared_frames(path, info):
    """Samples per channel that a WAV or NIST (TIMIT) header announces; None if unknown.

    libsndfile reports the samples actually present in a truncated WAV, so a
    cut file would otherwise look whole.
    """
    width = SAMPLE_BYTES.get(info.subtype)
    if width is None:
        return None
    with open(path, "rb") as f:
        head = f.read(4096)
    if info.format == "NIST" and head.startswith(b"NIST_1A"):
        for line in head.split(b"\n"):
            fields = line.split()
            if len(fields) == 3 and fields[0] == b"sample_count":
                return int(fields[2])
        return None
    if info.format in ("WAV", "WAVEX") and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        pos = 12
        while pos + 8 <= len(head):
            chunk, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
            if chunk == b"data":
                if size in (0, 0xFFFFFFFF):  # streamed WAV: size not filled in
                    return None
                return size // (width * info.channels)
            pos += 8 + size + (size & 1)
    return None


def peak_gain(wav):
    """Gain that scales ``wav`` to unit peak (as stored in ``gain``); None if silent.

    Example
    -------
    >>> peak_gain(np.array([0.0, -0.5, 0.25]))
    2.0
    """
    peak = float(np.abs(wav).max()) if len(wav) else 0.0
    return round(1.0 / peak, 6) if peak > 0.0 else None


def write_manifest(path, rows):
    """Writes ``rows`` (dicts with :data:`FIELDS`, optionally ``sentence``) atomically."""
    rows = [{"gain": 1.0, **row} for row in rows]
    fields = FIELDS + (["sentence"] if rows and "sentence" in rows[0] else [])
    if any(row.get("rate") for row in rows):  # some files are resampled when read
        fields.append("rate")
        rows = [{"rate": "", **row} for row in rows]
    else:
        rows = [{key: value for key, value in row.items() if key != "rate"} for row in rows]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_manifest(path):
    """Returns the rows of a manifest as a list of dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def already_prepared(save_folder, opts, outputs):
    """True if ``outputs`` exist in ``save_folder`` and were made with ``opts``.

    Raises ``ValueError`` when the folder was prepared with other options
    (another data folder, split or seed) and already holds trained stages:
    re-preparing would make a rerun resume models trained on other data.
    """
    opts_file = os.path.join(save_folder, OPTS_FILE)
    if not os.path.isfile(opts_file):
        return False
    with open(opts_file) as f:
        stored = json.load(f)
    if stored != opts:
        changed = sorted(k for k in set(stored) | set(opts) if stored.get(k) != opts.get(k))
        trained = trained_stages(save_folder)
        if trained:
            raise ValueError(
                f"{save_folder} holds a run prepared with other settings ({', '.join(f'{k}: {stored.get(k)!r} -> {opts.get(k)!r}' for k in changed)}) "
                f"and trained stages ({', '.join(trained)}). Pass another --output_folder for this data, "
                "or delete that folder to start over."
            )
        return False
    return all(os.path.isfile(os.path.join(save_folder, name)) for name in outputs)


def trained_stages(save_folder):
    """The stage folders of ``save_folder`` that hold a checkpoint (``CKPT+...``), sorted."""
    return sorted(name for name in os.listdir(save_folder) if os.path.isdir(os.path.join(save_folder, name))
                  and any(entry.startswith("CKPT+") for entry in os.listdir(os.path.join(save_folder, name))))


def mark_prepared(save_folder, opts):
    """Records ``opts`` once all manifests are written."""
    with open(os.path.join(save_folder, OPTS_FILE), "w") as f:
        json.dump(opts, f, indent=2)


def report_skipped(save_folder, skipped, noted=()):
    """Writes the preparation report ``skipped.csv`` and logs counts.

    ``skipped``: ``(file, reason)`` of the files left out; ``noted``:
    ``(file, note)`` of files kept after a change (down-mixed, resampled).
    The report's columns are ``file, reason, action`` (``skipped``/``kept``).
    """
    path = os.path.join(save_folder, SKIPPED_FILE)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason", "action"])
        writer.writerows([(file, reason, "skipped") for file, reason in skipped])
        writer.writerows([(file, note, "kept") for file, note in noted])
    if skipped:
        logger.warning(f"Skipped {len(skipped)} audio file(s); see {path}")
        for file, reason in skipped[:5]:
            logger.warning(f"  skipped {file}: {reason}")
    if noted:
        logger.info(f"Kept {len(noted)} audio file(s) after down-mixing or resampling; see {path}")
    return path


# ---- The skeleton every preparer shares ---------------------------------------------------
# options -> already prepared? -> list the files -> inspect each (in parallel) -> rows and
# skipped files -> the corpus's splits -> write -> mark prepared. A preparer says only how it
# lists its files and speakers, what row a usable file gives, and how the rows are split.


class CorpusFile(NamedTuple):
    """A file a preparer lists: its ``path`` on disk, its manifest ``wav`` (``$data_root/...``),
    the utterance id and the speaker."""

    path: str
    wav: str
    utt_id: str
    speaker: str


def whole_file_rows(file, check, sample_rate):
    """The one manifest row of a usable file: all of it, at its own rate (``rate`` when it differs)."""
    return [{"ID": file.utt_id, "duration": round(check.frames / check.rate, 4), "wav": file.wav, "start": 0,
             "stop": check.frames, "spk_id": file.speaker, "rate": check.rate if check.rate != sample_rate else ""}]


def manifest_rows(files, sample_rate, min_samples, resample=False, read_samples=True, jobs=None,
                  desc="Checking audio", make_rows=None):
    """``(rows, skipped, noted)`` of a list of :class:`CorpusFile`, in their order.

    Each file is checked (:func:`inspect_many`); a usable one gives the rows of
    ``make_rows(file, check)`` (default :func:`whole_file_rows`), which may
    also return a reason (a string) to skip it. ``skipped`` and ``noted`` are
    the ``(path, reason)`` lists of :func:`report_skipped`.
    """
    checks = inspect_many([file.path for file in files], sample_rate, min_samples, resample, read_samples, jobs, desc)
    rows, skipped, noted = [], [], []
    for file, check in zip(files, checks):
        made = check.reason or (make_rows(file, check) if make_rows else whole_file_rows(file, check, sample_rate))
        if isinstance(made, str):
            skipped.append((file.path, made))
            continue
        noted += [(file.path, note) for note in check.notes]
        rows += made
    return rows, skipped, noted


def by_speaker(rows):
    """``{speaker: [rows]}`` in the rows' order, speakers sorted."""
    groups = {}
    for row in rows:
        groups.setdefault(row["spk_id"], []).append(row)
    return dict(sorted(groups.items()))


def write_splits(save_folder, splits, sort=True):
    """Writes ``<split>.csv`` for each ``{split: rows}`` (sorted by ID with ``sort``)."""
    for name, rows in splits.items():
        write_manifest(os.path.join(save_folder, f"{name}.csv"), sorted(rows, key=lambda r: r["ID"]) if sort else rows)


def preparation_options(arguments, leave_out=("save_folder", "prepare_jobs"), folders=("data_folder",)):
    """The options a preparation is recorded with: a preparer's ``arguments`` (its ``locals()`` on entry)
    but ``leave_out``, the ``folders`` as absolute paths, sequences as lists (as JSON stores them).

    >>> preparation_options({"data_folder": "/d", "save_folder": "s", "subsets": ("a",), "seed": 1})
    {'data_folder': '/d', 'subsets': ['a'], 'seed': 1}
    """
    opts = {}
    for key, value in arguments.items():
        if key in leave_out:
            continue
        if key in folders and value:
            value = os.path.abspath(value)
        opts[key] = list(value) if isinstance(value, tuple) else value
    return opts


def run_preparation(save_folder, opts, outputs, prepare):
    """Runs ``prepare()`` unless ``save_folder`` already holds ``outputs`` made with ``opts``.

    ``prepare`` lists, checks, splits and writes (into an existing
    ``save_folder``) and returns the line the log ends with; the options are
    marked last, so an interrupted preparation is redone. Returns whether it ran.
    """
    if already_prepared(save_folder, opts, outputs):
        logger.info(f"Manifests in {save_folder} are up to date, skipping preparation")
        return False
    os.makedirs(save_folder, exist_ok=True)
    summary = prepare()
    mark_prepared(save_folder, opts)
    logger.info(summary)
    return True
