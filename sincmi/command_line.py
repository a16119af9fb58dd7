"""What every command shares: one-line errors for bad input, and loading a model folder."""

import os
import sys
from contextlib import contextmanager

from sincmi import layout


@contextmanager
def one_line_errors():
    """Turns the errors a user's input causes into one line on stderr and exit status 1."""
    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        lines = str(message).strip().splitlines() or [type(error).__name__]
        sys.exit(f"error: {lines[0]}")


def load_model(folder, device="cpu"):
    """The :class:`~sincmi.inference.SpeakerEncoder` of a model folder; one-line errors for anything else."""
    from sincmi.export import is_model_folder
    from sincmi.inference import SpeakerEncoder

    check_device(device)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {folder} does not exist: write one with "
                                "python -m sincmi export EXPERIMENT FOLDER")
    if os.path.isfile(os.path.join(folder, layout.RESULTS_FILE)) and not is_model_folder(folder):
        raise ValueError(f"{folder} is a recipe run, not a model: export it first "
                         f"(python -m sincmi export {folder} MODEL) and pass MODEL")
    if not is_model_folder(folder):
        raise ValueError(f"{folder} is not a model folder (no hyperparams.yaml with a pretrainer): write one "
                         "with python -m sincmi export EXPERIMENT FOLDER")
    return SpeakerEncoder.from_hparams(source=folder, run_opts={"device": device})


def check_device(device):
    """Refuses a CUDA device when PyTorch sees no GPU (one line, instead of a traceback later)."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: PyTorch sees no GPU here (torch.cuda.is_available() is False); "
                           "use --device cpu")
