"""Embeds and compares recordings with the exported ONNX encoder: onnxruntime, NumPy and soundfile only.

A model folder written by ``python -m sincmi export`` holds ``encoder.onnx`` and
``encoder_onnx.json`` (sample rate, chunk length and hop, peak normalisation,
back end, score normalisation, calibration, threshold). An utterance embedding
is the mean of the L2-normalised embeddings of its chunks, then the model's
back end (``backend.ckpt``), and two are scored by cosine (with a PLDA back
end: its log-likelihood ratio, see ``sincmi/plda.py``), normalised against
the model's cohort (``cohort.ckpt``) when it has one, and turned into a
log-likelihood ratio by its calibration: as ``python -m sincmi verify`` does,
files at another sample rate resampled with the same filter. Audio shorter
than one chunk is refused. This file imports nothing else from sincmi: copy it
to run the model where PyTorch is not installed (``pip install onnxruntime soundfile``).

Usage:
    sincmi-onnx-embed pretrained/demo_lim a.wav b.wav
    python -m sincmi.onnx_embed pretrained/demo_lim a.wav b.wav
"""

import json
import math
import os
import sys

import numpy as np
import soundfile

COSINE_LIMIT = 1 - 1e-7  # as sincmi.calibration: cosines are clipped before atanh


def unit_rows(matrix):
    """Rows scaled to unit L2 norm."""
    return matrix / np.maximum(np.linalg.norm(matrix, axis=-1, keepdims=True), 1e-12)


def resample(wav, orig, new, lowpass_filter_width=6, rolloff=0.99):
    """Band-limited (Hann-windowed sinc) resampling, the filter of ``torchaudio.functional.resample``.

    >>> resample(np.ones(160, dtype=np.float32), 16000, 8000).shape
    (80,)
    """
    if orig == new:
        return wav
    gcd = math.gcd(int(orig), int(new))
    orig, new = int(orig) // gcd, int(new) // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = (np.arange(0, -new, -1, dtype=np.float64)[:, None] / new + idx) * base
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernels = np.where(t == 0, 1.0, np.sin(t) / np.where(t == 0, 1.0, t)) * window * base / orig
    kernels = kernels.astype(np.float32)
    padded = np.pad(wav.astype(np.float32), (width, width + orig))
    frames = (len(padded) - kernels.shape[1]) // orig + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernels.shape[1])[::orig][:frames]
    out = (windows @ kernels.T).reshape(-1)
    return out[: math.ceil(new * len(wav) / orig)]


class OnnxSpeakerEncoder:
    def __init__(self, folder):
        config = os.path.join(folder, "encoder_onnx.json")
        if not os.path.isfile(config):
            raise FileNotFoundError(f"{config} is missing: export the model with the onnx extra installed")
        with open(config) as f:
            self.config = json.load(f)
        import onnxruntime

        self.session = onnxruntime.InferenceSession(os.path.join(folder, "encoder.onnx"),
                                                    providers=["CPUExecutionProvider"])
        self.backend = None
        if self.config.get("backend"):  # ((x - mean) / std) @ whitening @ projection, each part when present
            with np.load(os.path.join(folder, self.config["backend"])) as arrays:
                self.backend = {key: arrays[key] for key in arrays if key != "name"}
                self.backend["name"] = str(arrays["name"])
        self.cohort = None
        if self.config.get("score_norm"):
            with np.load(os.path.join(folder, self.config["cohort"])) as arrays:
                self.cohort = arrays["embeddings"].astype(np.float64)

    def apply_backend(self, embedding):
        if self.backend is None:
            return embedding
        out = embedding.astype(np.float64) - self.backend["mean"]
        if "std" in self.backend:
            out = out / self.backend["std"]
        if "whitening" in self.backend:
            out = out @ self.backend["whitening"]
        if "projection" in self.backend:
            out = out @ self.backend["projection"]
        if self.backend["name"] == "plda":  # length normalisation to sqrt(d)
            out = out * np.sqrt(len(out)) / max(np.linalg.norm(out), 1e-12)
        return out.astype(np.float32)

    def pair_score(self, a, b):
        """Cosine of two embeddings, or PLDA's log-likelihood ratio (``b`` may be a matrix: one score per row)."""
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if self.backend is None or self.backend["name"] != "plda":
            return unit_rows(b) @ unit_rows(a)
        p = self.backend
        a, b = a - p["plda_mean"], b - p["plda_mean"]
        own_b = ((b @ p["plda_phi"]) * b).sum(-1) / 2
        return a @ p["plda_phi"] @ a / 2 + own_b + b @ p["plda_psi"] @ a + float(p["plda_offset"])

    def read(self, path):
        """A file as mono float32 at the model's rate; one-line ``ValueError`` for unusable audio."""
        try:
            wav, rate = soundfile.read(path, dtype="float32", always_2d=True)
        except Exception as error:
            raise ValueError(f"{path} cannot be read as audio ({error})") from error
        wav = resample(wav.mean(axis=1), rate, self.config["sample_rate"])
        size = self.config["chunk_size"]
        if len(wav) < size:
            raise ValueError(f"{path} has {len(wav)} samples at {self.config['sample_rate']} Hz, shorter than one "
                             f"chunk ({size}): too short to embed")
        return wav

    def encode_file(self, path, max_chunks=64):
        """Utterance embedding ``(D,)`` of a mono or multi-channel file (down-mixed, resampled)."""
        cfg = self.config
        wav = self.read(path)
        if cfg["normalize_peak"] and np.abs(wav).max() > 0:
            wav = wav / np.abs(wav).max()
        size, shift = cfg["chunk_size"], cfg["shift"]
        starts = range(0, len(wav) - size + 1, shift)
        total = 0.0
        for first in range(0, len(starts), max_chunks):
            chunks = np.stack([wav[s:s + size] for s in starts[first:first + max_chunks]])
            emb = self.session.run([cfg["output"]], {cfg["input"]: chunks})[0]
            total = total + unit_rows(emb).sum(axis=0)
        return self.apply_backend(total / len(starts))

    def score(self, a, b):
        """The back end's score of two embeddings (cosine or PLDA), normalised against the cohort if any."""
        score = float(self.pair_score(a, b))
        if self.cohort is None:
            return score
        method, top_k = self.config["score_norm"], self.config.get("cohort_top_k")
        stats = []
        for side in (a, b):  # mean and (unbiased) std of the side's cohort scores, top-k for as-norm
            cohort_scores = self.pair_score(side, self.cohort)
            if method == "as-norm":
                cohort_scores = np.sort(cohort_scores)[-top_k:]
            stats.append((cohort_scores.mean(), max(cohort_scores.std(ddof=1), 1e-6)))
        z = (score - stats[0][0]) / stats[0][1]
        t = (score - stats[1][0]) / stats[1][1]
        return float({"z-norm": z, "t-norm": t}.get(method, (z + t) / 2))

    def llr(self, score):
        """The calibrated log-likelihood ratio of a score (None without a calibration)."""
        calibration = self.config.get("calibration")
        if not calibration:
            return None
        if calibration.get("transform", "identity") == "atanh":  # Fisher's z of a cosine (clipped as sincmi does)
            score = math.atanh(min(max(score, -COSINE_LIMIT), COSINE_LIMIT))
        return calibration["scale"] * score + calibration["offset"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        sys.exit(__doc__)
    try:
        model = OnnxSpeakerEncoder(argv[0])
        score = model.score(model.encode_file(argv[1]), model.encode_file(argv[2]))
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"score {score:.4f}")
    llr, p_target = model.llr(score), model.config.get("p_target") or 0.01
    if llr is not None:
        bayes = math.log((1 - p_target) / p_target)
        print(f"log-likelihood ratio {llr:.2f}\nsame speaker: {'yes' if llr > bayes else 'no'} "
              f"(Bayes decision at p_target={p_target:g}: LLR > {bayes:.2f})")
        return
    threshold = model.config.get("threshold")
    decision = "unknown (no threshold)" if threshold is None else ("yes" if score > threshold else "no")
    print(f"same speaker: {decision}")


if __name__ == "__main__":
    main()
