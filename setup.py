"""sincmi: speaker representations with mutual information (LIM) on SincNet, as SpeechBrain recipes."""

from setuptools import find_packages, setup

setup(
    name="sincmi",
    version="0.1.0",
    description="Learning speaker representations with mutual information (Local Info Max) "
    "on a SincNet encoder, as SpeechBrain recipes",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sincmi", "sincmi.*"]),
    # Compiled on first use for the running CPU (sincmi/cpu_kernels.py).
    package_data={"sincmi": ["cpu_kernels.c"]},
    python_requires=">=3.9",
    # torch, torchaudio and speechbrain are pinned together: this torchaudio is
    # built against this torch (a CPU torch beside a CUDA torchaudio cannot
    # load libc10_cuda.so), and speechbrain 1.1.2 is the release tested here.
    install_requires=[
        "torch==2.14.1",
        "torchaudio==2.11.0",
        "speechbrain==1.1.2",
        "hyperpyyaml>=1.2.2",
        "sentencepiece>=0.2.0",
        "numpy>=1.24",
        # Calibration: logistic regression (optimize.minimize) and PAV (optimize.isotonic_regression, 1.12+).
        "scipy>=1.12",
        "pandas>=2.0",
        "soundfile>=0.12",
        # AAC (.m4a, VoxCeleb2's format): FFmpeg ships inside PyAV's wheels.
        "av==18.1.0",
        # Sequential tar shards for LIM on large corpora, the format SpeechBrain's recipes use.
        "webdataset==1.0.2",
        "tqdm>=4.60",
        # DET curves and training plots (PNG, headless "Agg" backend).
        "matplotlib>=3.7",
        # The Demo corpus is synthesised with eSpeak NG; this wheel ships the
        # library and its voices, so no system package is needed.
        "espeakng-loader==0.2.4",
    ],
    # ONNX export (torch's exporter needs onnxscript) and onnxruntime to check
    # and run it; the tested versions. ".[dev]" includes them so CI tests export.
    extras_require={
        "onnx": ["onnx==1.23.2", "onnxruntime==1.31.1", "onnxscript==0.7.2"],
        "dev": ["pytest>=8", "onnx==1.23.2", "onnxruntime==1.31.1", "onnxscript==0.7.2"],
    },
    # The commands, installed: sincmi (= python -m sincmi) and the PyTorch-free ONNX runner.
    entry_points={"console_scripts": ["sincmi=sincmi.__main__:main", "sincmi-onnx-embed=sincmi.onnx_embed:main"]},
)
