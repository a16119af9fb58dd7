"""Checkpoints that survive ``kill -9`` and resume a run exactly.

SpeechBrain's :class:`~speechbrain.utils.checkpoints.Checkpointer` writes a
checkpoint's ``CKPT.yaml`` first and its parameter files after it, straight
into the final ``CKPT+...`` folder: a run killed while saving leaves a folder
that looks complete and fails (or loads a truncated file) on resume.
:class:`AtomicCheckpointer` writes into a temporary folder that is never taken
for a checkpoint and renames it when complete (``os.replace``, atomic on POSIX).

:class:`RandomState` stores the Python, NumPy and torch random generators in
each checkpoint, so that a run resumed from an intra-epoch checkpoint draws
the same random chunks as the run that was not interrupted.
"""

import logging
import os
import random
import shutil

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    Checkpoint,
    Checkpointer,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import MainProcessContext, ddp_barrier, if_main_process

PARTIAL = ".partial-"  # not "CKPT+...": never taken for a checkpoint


class AtomicCheckpointer(Checkpointer):
    """A Checkpointer whose checkpoints appear complete or not at all."""

    def __init__(self, checkpoints_dir, recoverables=None, **kwargs):
        super().__init__(checkpoints_dir, recoverables, **kwargs)
        if if_main_process() and os.path.isdir(self.checkpoints_dir):
            for leftover in self.checkpoints_dir.glob(f"{PARTIAL}*"):
                shutil.rmtree(leftover, ignore_errors=True)  # from a run killed while saving

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """Saves under a temporary name, then renames to the final ``CKPT+...`` folder."""
        final = None
        if if_main_process():
            final = self._new_checkpoint_dirpath() if name is None else self._custom_checkpoint_dirpath(name)
        partial_name = PARTIAL + (final.name if final is not None else "rank")
        checkpoint = super().save_checkpoint(meta, end_of_epoch, partial_name, verbosity)
        if checkpoint is None:  # not the main process
            return None
        os.replace(checkpoint.path, final)
        paramfiles = {key: final / path.name for key, path in checkpoint.paramfiles.items()}
        return Checkpoint(final, checkpoint.meta, paramfiles)

    def delete_checkpoints(self, **kwargs):
        """As SpeechBrain's, decided and done by the main process alone, between two barriers.

        SpeechBrain's version lets every process list the checkpoints and
        broadcast once per deletion; under DDP a process that lists the
        folder while the main one renames a new checkpoint into place counts
        other deletions, and the processes wait on different collectives for
        ever (seen with a checkpoint every step under ``torchrun``).
        """
        ddp_barrier()
        if if_main_process():
            with MainProcessContext():  # SpeechBrain's barriers and broadcasts inside are no-ops
                super().delete_checkpoints(**kwargs)
        ddp_barrier()

    def _custom_checkpoint_dirpath(self, name):
        if name.startswith(PARTIAL):
            return self.checkpoints_dir / name
        return super()._custom_checkpoint_dirpath(name)


@register_checkpoint_hooks
class RandomState:
    """The state of Python's, NumPy's and torch's global random generators, as a recoverable.

    Stored as tensors and plain numbers, so that it loads with
    ``torch.load(weights_only=True)``.
    """

    @mark_as_saver
    def save(self, path):
        """Writes the current generator states to ``path``."""
        version, python_state, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": (version, torch.tensor(python_state, dtype=torch.int64), gauss),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=True):
        """Restores the generator states saved in ``path``."""
        state = torch.load(path, weights_only=True)
        version, python_state, gauss = state["python"]
        random.setstate((version, tuple(python_state.tolist()), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        rekey_other_ranks()


def rekey_other_ranks():
    """After loading the main process's generator states: on every other rank, a stream of its own.

    Checkpoints hold the main process's states only; without this, every rank
    of a resumed ``torchrun`` run would draw the same chunks. The new seed
    follows from the loaded state and the rank, so a resumed run is
    reproducible (a single process resumes exactly as it was).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        from sincmi.distributed import process_seed

        drawn = int(torch.randint(0, 2**31 - 1, (1,)))
        seed = process_seed(drawn, torch.distributed.get_rank())
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


def make_checkpointer(folder, recoverables):
    """An :class:`AtomicCheckpointer` for ``folder`` that also keeps the random state."""
    return AtomicCheckpointer(folder, recoverables={**recoverables, "random_state": RandomState()})
