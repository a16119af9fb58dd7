#!/usr/bin/env python3
"""Embeds and compares recordings with the exported ONNX encoder: onnxruntime, NumPy and soundfile only.

A model folder written by ``python -m sincmi export`` holds ``encoder.onnx`` and
``encoder_onnx.json`` (sample rate, chunk length and hop, peak normalisation,
back end, score normalisation, threshold). An utterance embedding is the mean
of the L2-normalised embeddings of its chunks, then the model's back end
(``backend.npz``), and two are scored by cosine, normalised against the
model's cohort (``cohort.npz``) when it has one: as ``SpeakerEncoder`` does.
Copy this file to run the model where PyTorch is not installed
(``pip install onnxruntime soundfile``). Files must be at the model's sample
rate (resample them beforehand).

Usage:
    python tools/onnx_embed.py pretrained/demo_lim a.wav b.wav
"""

import json
import os
import sys

import numpy as np
import onnxruntime
import soundfile


def unit_rows(matrix):
    """Rows scaled to unit L2 norm."""
    return matrix / np.maximum(np.linalg.norm(matrix, axis=-1, keepdims=True), 1e-12)


class OnnxSpeakerEncoder:
    def __init__(self, folder):
        with open(os.path.join(folder, "encoder_onnx.json")) as f:
            self.config = json.load(f)
        self.session = onnxruntime.InferenceSession(os.path.join(folder, "encoder.onnx"),
                                                    providers=["CPUExecutionProvider"])
        self.backend = None
        if self.config.get("backend"):  # ((x - mean) / std) @ whitening, each part when present
            with np.load(os.path.join(folder, self.config["backend"])) as arrays:
                self.backend = {key: arrays[key] for key in ("mean", "std", "whitening") if key in arrays}
        self.cohort = None
        if self.config.get("score_norm"):
            with np.load(os.path.join(folder, self.config["cohort"])) as arrays:
                self.cohort = unit_rows(arrays["embeddings"].astype(np.float64))

    def apply_backend(self, embedding):
        if self.backend is None:
            return embedding
        out = embedding.astype(np.float64) - self.backend["mean"]
        if "std" in self.backend:
            out = out / self.backend["std"]
        if "whitening" in self.backend:
            out = out @ self.backend["whitening"]
        return out.astype(np.float32)

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
            total = total + unit_rows(emb).sum(axis=0)
        return self.apply_backend(total / len(starts))

    def score(self, a, b):
        """Cosine similarity of two embeddings, normalised against the cohort when the model has one."""
        a, b = unit_rows(np.asarray(a, dtype=np.float64)), unit_rows(np.asarray(b, dtype=np.float64))
        score = float(a @ b)
        if self.cohort is None:
            return score
        method, top_k = self.config["score_norm"], self.config.get("cohort_top_k")
        stats = []
        for side in (a, b):  # mean and (unbiased) std of the side's cohort scores, top-k for as-norm
            cohort_scores = self.cohort @ side
            if method == "as-norm":
                cohort_scores = np.sort(cohort_scores)[-top_k:]
            stats.append((cohort_scores.mean(), max(cohort_scores.std(ddof=1), 1e-6)))
        z = (score - stats[0][0]) / stats[0][1]
        t = (score - stats[1][0]) / stats[1][1]
        return float({"z-norm": z, "t-norm": t}.get(method, (z + t) / 2))


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
