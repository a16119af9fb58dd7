"""Writing and checking CSV manifests shared by every corpus preparer.

A manifest row is one sentence: ``ID,duration,wav,start,stop,spk_id,gain``,
with ``start``/``stop`` in samples of the file, ``wav`` relative to
``$data_root`` and ``gain`` the factor applied to the samples when read (1, or
1/peak for corpora prepared with peak normalisation). Manifests whose rows
are segments of longer recordings add a ``sentence`` column naming the
recording, so that LIM never pairs two segments of it as a negative.
"""

import csv
import json
import logging
import os

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

FIELDS = ["ID", "duration", "wav", "start", "stop", "spk_id", "gain"]
OPTS_FILE = "prepare_opts.json"
SKIPPED_FILE = "skipped.csv"


def inspect_audio(path, sample_rate, min_samples):
    """Returns ``(frames, None)`` for a usable file, ``(None, reason)`` otherwise."""
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises several types for bad files
        return None, f"unreadable audio ({type(err).__name__}: {err})".replace("\n", " ")
    if info.samplerate != sample_rate:
        return None, f"sample rate {info.samplerate} Hz, expected {sample_rate} Hz"
    if info.frames < min_samples:
        return None, f"too short ({info.frames} samples < {min_samples}, one chunk)"
    return info.frames, None


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
    """True if ``outputs`` exist in ``save_folder`` and were made with ``opts``."""
    opts_file = os.path.join(save_folder, OPTS_FILE)
    if not all(os.path.isfile(os.path.join(save_folder, name)) for name in outputs):
        return False
    if not os.path.isfile(opts_file):
        return False
    with open(opts_file) as f:
        return json.load(f) == opts


def mark_prepared(save_folder, opts):
    """Records ``opts`` once all manifests are written."""
    with open(os.path.join(save_folder, OPTS_FILE), "w") as f:
        json.dump(opts, f, indent=2)


def report_skipped(save_folder, skipped):
    """Writes ``skipped.csv`` (file, reason) and logs a summary."""
    path = os.path.join(save_folder, SKIPPED_FILE)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason"])
        writer.writerows(skipped)
    if skipped:
        logger.warning(f"Skipped {len(skipped)} audio file(s); see {path}")
        for file, reason in skipped[:5]:
            logger.warning(f"  skipped {file}: {reason}")
    return path
