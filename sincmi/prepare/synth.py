"""Synthesises the Demo corpus: many eSpeak NG speakers reading short sentences.

A speaker is an eSpeak NG English voice with a voice variant, a base pitch, a
pitch range and a speaking rate; all four are drawn from a seeded generator,
so a given seed always gives the same corpus. Each speaker reads sentences
drawn from a pool composed from the word lists below (written for this
project), so different speakers mostly say different things.

Output: ``<folder>/<speaker>/<utterance>.wav`` (16-bit PCM) and
``<folder>/speakers.csv`` describing each voice.
"""

import csv
import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from sincmi.prepare.espeak import synthesize_in_subprocess
from sincmi.progress import progress_bar

logger = logging.getLogger(__name__)

ACCENTS = ["en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc", "en-gb-x-gbclan"]
# Variants with "breath" (f2, f3, f5, caleb, ...) add noise that differs from
# run to run; they are left out so that a seed fixes the corpus.
VARIANTS = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f4",
    "klatt", "klatt2", "klatt3", "klatt4", "adam", "alicia", "andrea", "andy", "annie",
    "antonio", "belinda", "benjamin", "anika", "david", "ed", "edward", "gene", "grandma",
    "grandpa", "ian", "john", "linda", "max", "michel", "norbert", "paul", "quincy",
    "rob", "robert", "shelby", "steph", "travis", "aunty", "boris", "denis",
]

SUBJECTS = [
    "The old farmer", "My younger sister", "A tired doctor", "The quiet student",
    "Our new neighbour", "The clever fox", "A young musician", "The ship's captain",
    "Every morning the baker", "The museum guide", "A curious child", "The mail carrier",
    "Grandfather", "The team coach", "A nervous pilot", "The city mayor",
]
ACTIONS = [
    "carried a basket of apples", "painted the wooden fence", "found a silver key",
    "wrote a long letter", "repaired the broken clock", "counted the golden coins",
    "planted seven small trees", "opened the heavy window", "cooked a pot of soup",
    "lost a yellow umbrella", "sold the red bicycle", "read an ancient map",
    "climbed the narrow stairs", "cleaned the dusty shelves", "played a gentle song",
    "measured the long table",
]
PLACES = [
    "near the river", "behind the station", "in the village square", "under the bridge",
    "at the edge of the forest", "inside the library", "by the harbour", "on the hill",
    "in the busy market", "beside the old church", "at the school gate", "in the garden",
]
TIMES = [
    "before breakfast", "on a rainy Monday", "late in the evening", "during the storm",
    "after the long winter", "at noon", "last summer", "early on Sunday",
    "while everyone was asleep", "just before the holidays",
]
ENDINGS = [
    "", "and nobody noticed", "because the weather was fine", "to everyone's surprise",
    "and then went home", "without saying a word", "as the bells were ringing",
]


def sentence_pool(seed=0, size=600):
    """Returns ``size`` distinct sentences composed from the word lists.

    Example
    -------
    >>> pool = sentence_pool(seed=0, size=3)
    >>> len(set(pool))
    3
    """
    rng = random.Random(seed)
    seen, pool = set(), []
    while len(pool) < size:
        parts = [rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES), rng.choice(TIMES)]
        ending = rng.choice(ENDINGS)
        if ending:
            parts.append(ending)
        sentence = " ".join(parts) + "."
        if sentence not in seen:
            seen.add(sentence)
            pool.append(sentence)
    return pool


def speaker_voices(num_speakers, seed=0):
    """Draws ``num_speakers`` distinct voice settings.

    Returns a list of dicts with keys ``speaker``, ``voice``, ``pitch``,
    ``range`` and ``rate``.
    """
    rng = random.Random(seed)
    combos = [(a, v) for a in ACCENTS for v in VARIANTS]
    if num_speakers > len(combos):
        raise ValueError(f"num_speakers={num_speakers} exceeds the {len(combos)} voices available")
    rng.shuffle(combos)
    voices = []
    for i, (accent, variant) in enumerate(combos[:num_speakers]):
        voices.append(
            {
                "speaker": f"spk{i:03d}",
                "voice": f"{accent}+{variant}",
                "pitch": rng.randint(15, 85),
                "range": rng.randint(20, 90),
                "rate": rng.randint(130, 210),
            }
        )
    return voices


def to_sample_rate(wav, source_rate, target_rate):
    """int16 waveform -> float32 at ``target_rate``, peak kept below full scale."""
    wav = torch.from_numpy(wav.astype(np.float32) / 32768.0)
    wav = AF.resample(wav, source_rate, target_rate)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if peak > 0.99:
        wav = wav * (0.99 / peak)
    return wav.numpy()


def synthesize_corpus(folder, num_speakers=48, sentences_per_speaker=20, sample_rate=16000, seed=1234):
    """Writes the synthetic corpus to ``folder`` unless it is already there.

    Arguments
    ---------
    folder : str
        Output folder; ``<folder>/<speaker>/<utt>.wav`` is written.
    num_speakers : int
        Number of distinct voices.
    sentences_per_speaker : int
        Sentences read by each voice.
    sample_rate : int
        Output sample rate (eSpeak NG synthesises at 22.05 kHz).
    seed : int
        Seed of voices and sentence choice; the same seed gives the same files.

    Returns
    -------
    str
        ``folder``.
    """
    opts = {
        "num_speakers": num_speakers,
        "sentences_per_speaker": sentences_per_speaker,
        "sample_rate": sample_rate,
        "seed": seed,
    }
    done_file = os.path.join(folder, "corpus.json")
    if os.path.isfile(done_file):
        with open(done_file) as f:
            if json.load(f) == opts:
                logger.info(f"Synthetic corpus already in {folder}, skipping synthesis")
                return folder
        raise FileExistsError(
            f"{folder} holds a synthetic corpus made with other settings ({done_file}); "
            "delete the folder or choose another one"
        )

    os.makedirs(folder, exist_ok=True)
    voices = speaker_voices(num_speakers, seed)
    pool = sentence_pool(seed, size=max(600, 4 * sentences_per_speaker))
    rng = random.Random(seed + 1)
    scripts = [rng.sample(pool, sentences_per_speaker) for _ in voices]
    jobs = [(v["voice"], v["pitch"], v["range"], v["rate"], text) for v, text in zip(voices, scripts)]
    rows = []
    # One fresh process per speaker makes the audio independent of what came before.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as workers:
        results = workers.map(synthesize_in_subprocess, jobs)
        for voice, text, (rate, waves) in progress_bar(
            zip(voices, scripts, results), total=len(voices), desc="Synthesising speakers"
        ):
            spk_dir = os.path.join(folder, voice["speaker"])
            os.makedirs(spk_dir, exist_ok=True)
            for j, (sentence, wav) in enumerate(zip(text, waves)):
                path = os.path.join(spk_dir, f"{voice['speaker']}_u{j:03d}.wav")
                sf.write(path, to_sample_rate(wav, rate, sample_rate), sample_rate, subtype="PCM_16")
                rows.append({"speaker": voice["speaker"], "file": os.path.relpath(path, folder), "text": sentence})

    with open(os.path.join(folder, "speakers.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(voices[0]))
        writer.writeheader()
        writer.writerows(voices)
    with open(os.path.join(folder, "transcripts.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["speaker", "file", "text"])
        writer.writeheader()
        writer.writerows(rows)
    # Written last: its presence means the corpus is complete.
    with open(done_file, "w") as f:
        json.dump(opts, f)
    return folder
