"""A pool of unlabelled recordings for LIM pretraining: any tree of audio files, no speakers.

LIM needs no labels: positives are two chunks of one recording, negatives
chunks of others. :func:`prepare_unlabelled` turns one or more folders of
recordings into ``unlabelled.csv``: each file is its own source of positives
(its ``sentence`` key), cut into segments of ``segment_seconds`` (rows with
``start``/``stop``, so that a one-hour file is read a chunk at a time, never
whole). Files already in the labelled corpus (same real path, or the same
bytes) are left out, so that no audio of a verification speaker enters
pretraining; unusable files are skipped. Both are listed in
``unlabelled_skipped.csv``.
"""

import csv
import hashlib
import json
import logging
import os

import numpy as np

from sincmi.audio import AUDIO_EXTENSIONS, is_audio_file, read_blocks, uses_pyav
from sincmi.prepare.manifest import inspect_audio, write_manifest
from sincmi.progress import progress_bar

logger = logging.getLogger(__name__)

MANIFEST = "unlabelled.csv"
REPORT = "unlabelled_skipped.csv"
OPTS_FILE = "unlabelled_opts.json"


def audio_files(folder):
    """Every audio file below ``folder`` (sorted), whatever the layout."""
    found = []
    for root, _, names in sorted(os.walk(folder, followlinks=True)):
        found += [os.path.join(root, n) for n in sorted(names) if is_audio_file(n)]
    return found


def file_digest(path, block=1 << 20):
    """SHA-1 of a file's bytes, read a block at a time."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(block), b""):
            digest.update(piece)
    return digest.hexdigest()


def content_key(path, edge=1 << 16):
    """A cheap key of a file's content: its size and the SHA-1 of its first and last ``edge`` bytes.

    Two copies have the same key; two different recordings of one size almost
    never do (their encoded samples differ within the first block), so the
    full hash (:func:`file_digest`) is needed only where keys match.
    """
    size = os.path.getsize(path)
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        digest.update(f.read(edge))
        if size > 2 * edge:
            f.seek(size - edge)
            digest.update(f.read(edge))
    return size, digest.hexdigest()


def overlapping_files(pool, labelled):
    """``{pool file: why}`` for the pool files that are files of the labelled corpus.

    Same real path, or same content. Content is compared in two steps: the
    size first (no read), then :func:`content_key` (two small reads) of the
    files whose size matches, and the full hash only where the keys match, so
    a pool of same-sized WAV files with no copy of the labelled audio reads
    128 KiB of each such file, not all of it.
    """
    labelled_paths = {os.path.realpath(p) for p in labelled}
    by_size = {}
    for path in labelled:
        by_size.setdefault(os.path.getsize(path), []).append(path)
    keys, digests, overlap = {}, {}, {}
    for path in pool:
        if os.path.realpath(path) in labelled_paths:
            overlap[path] = "in the labelled folder (same file)"
            continue
        same_size = by_size.get(os.path.getsize(path), [])
        if not same_size:
            continue
        for other in same_size:
            if other not in keys:
                keys[other] = content_key(other)
        key = content_key(path)
        for other in (o for o in same_size if keys[o] == key):
            if other not in digests:
                digests[other] = file_digest(other)
            if file_digest(path) == digests[other]:
                overlap[path] = f"a copy of the labelled file {other}"
                break
    return overlap


def scan_audio(path, sample_rate, min_samples, resample, block_seconds=60):
    """:func:`inspect_audio` on the header, then every sample read a block at a time (bounded memory).

    Returns ``(frames, rate, reason or None)``.
    """
    check = inspect_audio(path, sample_rate, min_samples, resample, read_samples=False)
    if check.reason:
        return 0, 0, check.reason
    frames = 0
    try:
        for block in read_blocks(path, int(block_seconds * check.rate)):
            if not np.isfinite(block).all():
                return 0, 0, "NaN or infinite samples"
            frames += len(block)
    except Exception as error:
        return 0, 0, f"truncated or corrupt audio data ({error})".replace("\n", " ")
    if frames < check.frames and not uses_pyav(path):  # AAC's header length is approximate
        return 0, 0, f"truncated: the header announces {check.frames} samples, the file holds {frames}"
    return frames, check.rate, None


def segment_rows(file_id, path, frames, rate, sample_rate, segment_seconds, min_samples):
    """Manifest rows of one file: consecutive segments of ``segment_seconds`` sharing its ``sentence`` key.

    A last piece shorter than one chunk (``min_samples`` at the model's rate) joins the previous segment.

    Example
    -------
    >>> [(r["start"], r["stop"]) for r in segment_rows("f", "f.wav", 50000, 16000, 16000, 2.0, 3200)]
    [(0, 32000), (32000, 50000)]
    >>> [(r["start"], r["stop"]) for r in segment_rows("f", "f.wav", 34000, 16000, 16000, 2.0, 3200)]
    [(0, 34000)]
    """
    length = max(int(round(segment_seconds * rate)), 1)
    shortest = int(np.ceil(min_samples * rate / sample_rate))
    bounds = list(range(0, frames, length)) + [frames]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < shortest:
        del bounds[-2]
    rows = []
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        row = {"ID": f"{file_id}_s{k:05d}", "duration": round((stop - start) / rate, 4), "wav": path,
               "start": start, "stop": stop, "spk_id": "", "sentence": file_id}
        if rate != sample_rate:
            row["rate"] = rate
        rows.append(row)
    return rows


def prepare_unlabelled(unlabelled_folder, save_folder, labelled_files=None, sample_rate=16000, min_samples=3200,
                       resample=False, unlabelled_segment_seconds=10.0, labelled_folders=()):
    """Writes ``save_folder/unlabelled.csv`` from one or more folders of recordings; skipped if done.

    Arguments
    ---------
    unlabelled_folder : str or list of str
        Folders searched recursively for audio files (any layout).
    save_folder : str
        Where ``unlabelled.csv`` and ``unlabelled_skipped.csv`` are written.
    labelled_files : list of str, optional
        Every audio file of the labelled corpus (training and verification
        speakers): pool files that are one of them are left out.
    labelled_folders : list of str
        Instead of ``labelled_files``: the labelled corpus's folders, walked
        only when the pool is prepared (not on a run that finds it up to date:
        a million-file corpus is not walked on every run and rank).
    unlabelled_segment_seconds : float
        Length of the segments long recordings are cut into.

    Returns
    -------
    dict
        ``{"files", "segments", "hours", "excluded", "skipped"}``.
    """
    segment_seconds = unlabelled_segment_seconds
    folders = [unlabelled_folder] if isinstance(unlabelled_folder, str) else list(unlabelled_folder)
    opts = {"unlabelled_folder": [os.path.abspath(f) for f in folders], "sample_rate": sample_rate,
            "min_samples": min_samples, "resample": resample, "segment_seconds": segment_seconds,
            "labelled_files": len(labelled_files) if labelled_files is not None else
            [os.path.abspath(f) for f in labelled_folders if f]}
    os.makedirs(save_folder, exist_ok=True)
    opts_path = os.path.join(save_folder, OPTS_FILE)
    manifest = os.path.join(save_folder, MANIFEST)
    if os.path.isfile(opts_path) and os.path.isfile(manifest):
        with open(opts_path) as f:
            if json.load(f) == opts:
                logger.info(f"{manifest} is up to date: skipping the unlabelled pool's preparation")
                return None
    for folder in folders:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"unlabelled_folder={folder!r} does not exist (or is not a folder)")
    pool = sorted({path for folder in folders for path in audio_files(folder)})
    if not pool:
        raise ValueError(f"unlabelled_folder {folders} holds no audio file ({', '.join(AUDIO_EXTENSIONS)})")
    if labelled_files is None:
        labelled_files = sorted({path for folder in labelled_folders if folder for path in audio_files(folder)})
    overlap = overlapping_files(pool, labelled_files)
    rows, skipped, seconds, used = [], [], 0.0, 0
    for index, path in enumerate(progress_bar(pool, desc="Checking the unlabelled pool")):
        if path in overlap:
            skipped.append((path, overlap[path], "excluded"))
            continue
        frames, rate, reason = scan_audio(path, sample_rate, min_samples, resample)
        if reason:
            skipped.append((path, reason, "skipped"))
            continue
        rows += segment_rows(f"pool{index:06d}", os.path.abspath(path), frames, rate, sample_rate,
                             segment_seconds, min_samples)
        seconds += frames / rate
        used += 1
    if not rows:
        raise ValueError(f"no usable recording in unlabelled_folder {folders}: see {os.path.join(save_folder, REPORT)}")
    write_report(os.path.join(save_folder, REPORT), skipped)
    write_manifest(manifest, rows)
    with open(opts_path, "w") as f:
        json.dump(opts, f, indent=2)
    excluded = sum(1 for *_, action in skipped if action == "excluded")
    logger.info(f"Unlabelled pool: {used} recordings, {seconds / 3600:.2f} h in {len(rows)} segments of at most "
                f"{segment_seconds} s; {excluded} file(s) excluded as audio of the labelled corpus, "
                f"{len(skipped) - excluded} unusable (listed in {REPORT})")
    return {"files": used, "segments": len(rows), "hours": seconds / 3600, "excluded": excluded,
            "skipped": len(skipped) - excluded}


def write_report(path, skipped):
    """``file, reason, action`` (``excluded``: audio of the labelled corpus; ``skipped``: unusable)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason", "action"])
        writer.writerows(skipped)
    for file, reason, action in skipped[:5]:
        logger.warning(f"  {action} {file}: {reason}")
