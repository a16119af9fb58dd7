#!/usr/bin/env python3
"""Embeds and compares recordings with the exported ONNX encoder: onnxruntime, NumPy and soundfile only.

A model folder written by ``python -m sincmi export`` holds ``encoder.onnx`` and
``encoder_onnx.json`` (sample rate, chunk length and hop, peak normalisation,
threshold). An utterance embedding is the mean of the L2-normalised embeddings
of its chunks, as in ``SpeakerEncoder.encode_file``. Copy this file to run the
model where PyTorch is not installed (``pip install onnxruntime soundfile``).
Files must be at the model's sample rate (resample them beforehand).

Usage:
    python tools/onnx_embed.py pretrained/demo_lim a.wav b.wav
"""

import json
import os
import sys

import numpy as np
import onnxruntime
import soundfile


class OnnxSpeakerEncoder:
    def __init__(self, folder):
        with open(os.path.join(folder, "encoder_onnx.json")) as f:
            self.config = json.load(f)
        self.session = onnxruntime.InferenceSession(os.path.join(folder, "encoder.onnx"),
                                                    providers=["CPUExecutionProvider"])

    def encode_file(self, path, max_chunks=64):
        """Utterance embedding ``(D,)`` of a mono or multi-channel file (down-mixed)."""
        cfg = self.config
        wav, rate = soundfile.read(path, dtype="float32", always_2d=True)
        if rate != cfg["sample_rate"]:
            raise ValueError(f"{path} is at {rate} Hz; the model needs {cfg['sample_rate']} Hz: resample it first")
        wav = wav.mean(axis=1)
        if cfg["normalize_peak"] and np.abs(wav).max() > 0:
            wav = wav / np.abs(wav).max()
        size, shift = cfg["chunk_size"], cfg["shift"]
        if len(wav) < size:  # shorter than one chunk: zero-padded
            wav = np.pad(wav, (0, size - len(wav)))
        starts = range(0, len(wav) - size + 1, shift)
        total = 0.0
        for first in range(0, len(starts), max_chunks):
            chunks = np.stack([wav[s:s + size] for s in starts[first:first + max_chunks]])
            emb = self.session.run([cfg["output"]], {cfg["input"]: chunks})[0]
            total = total + (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).sum(axis=0)
        return total / len(starts)

    def score(self, a, b):
        """Cosine similarity of two embeddings."""
        return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    model = OnnxSpeakerEncoder(argv[0])
    score = model.score(model.encode_file(argv[1]), model.encode_file(argv[2]))
    threshold = model.config.get("threshold")
    decision = "unknown (no threshold)" if threshold is None else ("yes" if score > threshold else "no")
    print(f"score {score:.4f}\nsame speaker: {decision}")


if __name__ == "__main__":
    main(sys.argv[1:])
