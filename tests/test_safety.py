"""Loading never runs pickled code, and a run never reaches the network."""

import builtins
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_MODEL, TINY_PRETRAIN, write_tone_corpus
from sincmi.checkpoints import AtomicCheckpointer
from sincmi.encoder import SincNetEncoder
from sincmi.export import inference_yaml
from sincmi.inference import SpeakerEncoder


class Payload:
    """Unpickling this object would run code (sets a flag on builtins)."""

    def __reduce__(self):
        return (exec, ("import builtins; builtins.SINCMI_PAYLOAD_RAN = True",))


def write_malicious(path):
    torch.save({"weight": Payload()}, path)


@pytest.fixture(autouse=True)
def no_flag():
    builtins.__dict__.pop("SINCMI_PAYLOAD_RAN", None)
    yield
    assert not hasattr(builtins, "SINCMI_PAYLOAD_RAN"), "pickled code was executed"


def test_checkpoint_recovery_refuses_pickled_code(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(tmp_path, recoverables={"model": model})
    checkpoint = checkpointer.save_checkpoint()
    write_malicious(checkpoint.paramfiles["model"])
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        checkpointer.recover_if_possible()


def test_pretrained_folder_refuses_pickled_code(tmp_path):
    encoder = SincNetEncoder(chunk_size=800, sinc_filters=4, sinc_kernel=33, conv_channels=[4],
                             conv_kernels=[3], fc_sizes=[8])
    (tmp_path / "hyperparams.yaml").write_text(inference_yaml(encoder, 400, False, 0.5, "test"))
    write_malicious(tmp_path / "encoder.ckpt")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        SpeakerEncoder.from_hparams(source=str(tmp_path))
    # The back end is read with NumPy, which refuses pickled objects too.
    torch.save(encoder.state_dict(), tmp_path / "encoder.ckpt")
    (tmp_path / "hyperparams.yaml").write_text(inference_yaml(encoder, 400, False, 0.5, "test", parts=["backend"]))
    write_malicious(tmp_path / "backend.ckpt")
    with pytest.raises(ValueError, match="not a saved back end"):
        SpeakerEncoder.from_hparams(source=str(tmp_path))


def test_a_recipe_run_needs_no_network(tmp_path):
    """The Demo recipe (preparation, LIM, speaker id, verification) with sockets disabled."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(*args, **kwargs):\n"
        "    raise RuntimeError('network access attempted')\n"
        "socket.socket.connect = _refuse\n"
        "socket.create_connection = _refuse\n"
        "socket.getaddrinfo = _refuse\n"
    )
    corpus = write_tone_corpus(str(tmp_path / "corpus"), speakers=6, utterances=4, seconds=0.6)
    env = {**os.environ, "PYTHONPATH": str(blocker) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    check = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('example.org', 80))"],
                           env=env, capture_output=True, text=True)
    assert "network access attempted" in check.stderr  # the blocker is active
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "Demo", "train.py"),
           os.path.join(ROOT, "recipes", "Demo", "hparams", "lim_nce.yaml"), f"--output_folder={tmp_path / 'out'}",
           f"--data_folder={corpus}", *TINY_MODEL, *TINY_PRETRAIN, "--num_verification_speakers=2",
           "--valid_per_speaker=1", "--test_per_speaker=1", "--score_baselines=False"]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "network access attempted" not in proc.stdout + proc.stderr
