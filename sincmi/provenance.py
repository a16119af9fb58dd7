"""Where a result came from: code version, packages, machine and command of a run.

:func:`run_provenance` is stored in every ``results.json``, so that a figure
can be traced to the commit, the settings and the thread count that gave it
(a run's numbers change with the number of threads: the sums are rounded in
another order).
"""

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata

import torch

PACKAGES = ("sincmi", "torch", "torchaudio", "speechbrain", "numpy", "soundfile", "av", "webdataset")
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_state(folder=REPOSITORY):
    """``{"commit": sha, "modified": bool}`` of the checkout holding ``folder``; None outside git.

    ``modified`` is True when tracked files differ from the commit (results
    then come from code that no commit holds).
    """
    def git(*args):
        return subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "modified": bool(status.stdout.strip())}


def package_versions(names=PACKAGES):
    """``{package: version}`` of the packages a run depends on (None if absent)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


_AT_START = {}


def record_start():
    """Notes the code version when a run starts (:func:`sincmi.stages.start_experiment`): a run
    reports the commit it started from, even if the checkout changes while it runs."""
    _AT_START["git"] = git_state()


def run_provenance(hparams, run_opts=None, argv=None):
    """The provenance block of ``results.json`` (the commit: the one the run started from).

    Example
    -------
    >>> block = run_provenance({"seed": 7}, {"device": "cpu"}, ["train.py", "x.yaml"])
    >>> block["seed"], block["device"], block["command"], block["torch_threads"] >= 1
    (7, 'cpu', 'train.py x.yaml', True)
    """
    argv = ["python", *sys.argv] if argv is None else argv
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return {
        "git": _AT_START["git"] if "git" in _AT_START else git_state(),
        "packages": package_versions(),
        "device": str((run_opts or {}).get("device") or "cpu"),
        "torch_threads": torch.get_num_threads(),
        "processes": torch.distributed.get_world_size() if distributed else 1,
        "seed": hparams.get("seed"),
        "command": shlex.join(argv),
        "host": platform.node(),
    }
