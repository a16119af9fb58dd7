"""The eSpeak NG corpus synthesiser is deterministic and well formed."""

import hashlib
import os

import soundfile as sf

from sincmi.prepare.synth import speaker_voices, synthesize_corpus


def digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_same_seed_same_corpus(tmp_path):
    a = synthesize_corpus(str(tmp_path / "a"), num_speakers=3, sentences_per_speaker=2, seed=7)
    b = synthesize_corpus(str(tmp_path / "b"), num_speakers=3, sentences_per_speaker=2, seed=7)
    assert digest(a) == digest(b)
    c = synthesize_corpus(str(tmp_path / "c"), num_speakers=3, sentences_per_speaker=2, seed=8)
    assert digest(a) != digest(c)
    wavs = sorted(os.listdir(os.path.join(a, "spk000")))
    assert len(wavs) == 2
    info = sf.info(os.path.join(a, "spk000", wavs[0]))
    assert info.samplerate == 16000 and info.channels == 1 and info.frames > 16000


def test_voices_are_distinct():
    voices = speaker_voices(48, seed=0)
    assert len({(v["voice"], v["pitch"], v["rate"]) for v in voices}) == 48
    assert len({v["voice"] for v in voices}) == 48
