"""SpeechBrain ``Brain`` classes: LIM pretraining and speaker identification."""

import gc
import logging
import random

import numpy as np
import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.dataio.dataloader import LoopedLoader
from torch.nn.parallel import DistributedDataParallel as DDP

from sincmi import layout
from sincmi.distributed import ShardSampler
from sincmi.encoder import iter_chunks
from sincmi.metrics import SpeakerIdErrorStats
from sincmi.pairs import pair_logits

logger = logging.getLogger(__name__)


class DistributedBrain(sb.Brain):
    """A Brain that also trains with DDP on CPUs (``--distributed_backend=gloo``).

    SpeechBrain converts every BatchNorm to SyncBatchNorm before wrapping a
    module in DDP, and SyncBatchNorm only runs on GPUs; on CPU each process
    keeps plain BatchNorm over its own batch.
    """

    shard_evaluation = False  # True: VALID/TEST sets are split across processes

    def fit(self, *args, **kwargs):
        """As SpeechBrain's; then the training loader's worker processes end (:meth:`release_loader_workers`)."""
        try:
            return super().fit(*args, **kwargs)
        finally:
            self.release_loader_workers()

    def release_loader_workers(self):
        """Ends the worker processes a looped or persistent training loader keeps after ``fit``.

        Brain and checkpointer refer to each other, so the loader, its iterator
        and its workers outlive the stage until Python's cycle collector runs.
        A loader forked meanwhile (the next stage's) copies that live iterator
        into its own workers; a copy collected there shuts the original workers
        down from the wrong process (a worker then exits with status 1, or a
        ``torchrun`` rank fails on a closed file descriptor).
        """
        recoverables = self.checkpointer.recoverables.values() if self.checkpointer is not None else ()
        for loader in list(recoverables):
            if isinstance(loader, LoopedLoader):
                loader.iterator = None
                loader = loader.loader
            if isinstance(loader, torch.utils.data.DataLoader):
                loader._iterator = None  # where a loader with persistent workers keeps them ...
                if hasattr(loader, "_speechbrain_iterator"):
                    loader._speechbrain_iterator = None  # ... and where SpeechBrain keeps one to checkpoint it
        gc.collect()  # the iterators' clean-up ends their workers here, in the process that started them

    def _fit_train(self, train_set, epoch, enable):
        """As SpeechBrain's; under DDP the random streams are keyed first (see :meth:`key_random_streams`)."""
        self._epoch = epoch
        self.key_random_streams()
        return super()._fit_train(train_set, epoch, enable)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Keys the random streams for the next batch (under DDP)."""
        self.key_random_streams()

    def key_random_streams(self):
        """Under DDP, seeds every generator from ``(seed, rank, epoch, step)`` before each batch is drawn.

        Each rank draws its own chunks, and a run resumed from a checkpoint
        inside an epoch draws exactly what the uninterrupted run drew: the
        checkpoint holds the main process's generators only, but the next
        batch's draws follow from the step it restores. One process keeps
        its single stream (its checkpoints resume it exactly).
        """
        if not self.distributed_launch:
            return
        key = [getattr(self.hparams, "seed", 0), self.rank or 0, self._epoch, self.step]
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """As SpeechBrain's; with ``shard_evaluation``, each process evaluates 1/N of the set."""
        if (
            stage != sb.Stage.TRAIN
            and self.shard_evaluation
            and self.distributed_launch
            and "sampler" not in loader_kwargs
        ):
            loader_kwargs["sampler"] = ShardSampler(len(dataset))
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    def _train_loader_specifics(self, dataset, loader_kwargs):
        """As SpeechBrain's; a stream that splits itself between ranks (``ShardPairs``) is left as it is."""
        if getattr(dataset, "splits_by_rank", False):
            return loader_kwargs
        return super()._train_loader_specifics(dataset, loader_kwargs)

    def _wrap_distributed(self):
        if not (self.distributed_launch and torch.device(self.device).type == "cpu"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = DDP(module, device_ids=None, find_unused_parameters=self.find_unused_parameters)


class LIMBrain(DistributedBrain):
    """Local Info Max: encoder and discriminator minimise one MI objective together.

    Modules: ``encoder``, ``discriminator``, ``objective``
    (any :class:`sincmi.objectives.MIObjective`). Hparams used:
    ``num_negatives`` (None = every other sentence of the batch).

    Each step encodes exactly the 2B chunks of the batch (anchor and positive
    of B sentences); negatives pair an anchor with the positive chunks of other
    sentences (by the ``sentence`` key: segments of one recording are one
    sentence), reusing those encodings. The checkpoint kept is the epoch with the
    lowest validation loss (``keep_last_checkpoint = False``).
    """

    keep_last_checkpoint = False

    def compute_forward(self, batch, stage):
        """Encodes both chunks of every sentence and scores all pairs.

        In training with ``augment_pairs: True``, ``pair_augmentation`` (a
        SpeechBrain ``Augmenter``) is applied to the anchors and to the
        positives separately, with independent random draws.
        """
        batch = batch.to(self.device)
        anchors, positives = self.two_views(batch, stage)
        z = self.modules.encoder(torch.cat([anchors, positives]))
        z_anchor, z_positive = z.split(anchors.shape[0])
        return pair_logits(
            self.modules.discriminator,
            z_anchor,
            z_positive,
            batch.sentence,
            getattr(self.hparams, "num_negatives", None),
        )

    def two_views(self, batch, stage):
        """The batch's anchor and positive chunks, each augmented independently in training with ``augment_pairs``."""
        anchors, positives = batch.anchor.data, batch.positive.data
        if stage == sb.Stage.TRAIN and getattr(self.hparams, "augment_pairs", False):
            augmentation = self.hparams.pair_augmentation
            full = torch.ones(anchors.shape[0], device=anchors.device)
            anchors = augmentation(anchors, full)[0]
            positives = augmentation(positives, full)[0]
        return anchors, positives

    def compute_objectives(self, predictions, batch, stage):
        """The MI objective; in evaluation, also the pair ranking accuracy.

        Under mixed precision (``--precision=bf16|fp16``) the encoder and the
        critic run in the lower precision; the objective (its log-sum-exp, and
        MINE's moving average) always runs in float32, outside autocast.
        """
        pos, neg, valid = predictions
        with torch.autocast(device_type=torch.device(self.device).type, enabled=False):
            loss = self.modules.objective(pos.float(), neg.float(), valid)
        if stage != sb.Stage.TRAIN:
            # Fraction of negatives scored below their anchor's positive.
            self.pair_accuracy.append((pos.unsqueeze(1) > neg)[valid].float())
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Resets the evaluation statistics."""
        self.pair_accuracy = []
        self.modules.objective.rows_without_negatives = 0

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the epoch and checkpoints at the end of validation."""
        stats = {"loss": stage_loss}
        left_out = self.modules.objective.rows_without_negatives
        if left_out:
            logger.warning(f"{stage.name.lower()}: {left_out} pair(s) had no negative in their batch "
                           "(all other items from their own sentence) and were left out of the loss")
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if self.pair_accuracy:
            stats["pair_accuracy"] = torch.cat(self.pair_accuracy).mean().item()
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"stage": layout.PRETRAIN, "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            if self.checkpointer is None:
                return
            if self.keep_last_checkpoint:
                self.checkpointer.save_and_keep_only(meta=stats, num_to_keep=1)
            else:
                self.checkpointer.save_and_keep_only(meta=stats, min_keys=[layout.best_checkpoint_key(layout.PRETRAIN)])


class DistillationBrain(LIMBrain):
    """Self-distillation (DINO, :mod:`sincmi.distillation`) on LIM's pairs: the same data, stages and checkpoints.

    Modules: ``encoder``, ``discriminator`` (the projection head, :class:`sincmi.distillation.DINOHead`)
    and ``objective`` (:class:`sincmi.distillation.SelfDistillation`, which holds the teacher). The
    student encodes both chunks of every sentence; each chunk's prototype distribution learns the
    teacher's for the other chunk; after every optimiser step the teacher moves towards the student.
    The last epoch's checkpoint is kept, as DINO trains: its loss measures agreement with a teacher and a
    centre that move, not a quality comparable between epochs.
    """

    keep_last_checkpoint = True

    def compute_forward(self, batch, stage):
        """The student's and the teacher's prototype logits of ``[anchors; positives]``."""
        batch = batch.to(self.device)
        chunks = torch.cat(self.two_views(batch, stage))
        student = self.modules.discriminator(self.modules.encoder(chunks))
        return student, self.modules.objective.teacher_logits(chunks)

    def compute_objectives(self, predictions, batch, stage):
        """The distillation loss, in float32 under mixed precision (as LIM's objectives)."""
        student, teacher = predictions
        with torch.autocast(device_type=torch.device(self.device).type, enabled=False):
            return self.modules.objective(student.float(), teacher.float())

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """After each optimiser step, the teacher's moving-average update."""
        super().on_fit_batch_end(batch, outputs, loss, should_step)
        if should_step:
            self.modules.objective.update_teacher(self.modules.encoder, self.modules.discriminator)


class SpeakerIdBrain(DistributedBrain):
    """Speaker identification: a classifier on chunk embeddings.

    Modules: ``encoder``, ``classifier``. Hparams used: ``freeze_encoder``
    (True: the encoder is a fixed feature extractor, in eval mode),
    ``eval_shift`` (hop of the test chunks, samples) and optionally
    ``valid_shift`` (hop of the validation chunks; default ``eval_shift``) and
    ``eval_chunks_per_batch`` (chunks encoded per forward call, default 64).

    Training sees one random chunk per sentence; validation and test score
    whole sentences: chunk log-posteriors summed over every chunk (SincNet's
    protocol), reported as sentence error and chunk error.
    """

    def __init__(self, *args, freeze_encoder=False, stage_name=layout.SPEAKER_ID, **kwargs):
        super().__init__(*args, **kwargs)
        self.freeze_encoder = freeze_encoder
        self.stage_name = stage_name
        self.shard_evaluation = True  # the error counts are summed over processes
        if freeze_encoder:
            for p in self.modules.encoder.parameters():
                p.requires_grad_(False)

    def init_optimizers(self):
        """One optimizer over the trainable parameters only."""
        params = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def embed(self, chunks):
        """Chunk embeddings; under no_grad and in eval mode when frozen."""
        if self.freeze_encoder:
            self.modules.encoder.eval()
            with torch.no_grad():
                return self.modules.encoder(chunks)
        return self.modules.encoder(chunks)

    def compute_forward(self, batch, stage):
        """Training: embeddings of one chunk per sentence.
        Evaluation: log-posteriors of every chunk of every sentence."""
        batch = batch.to(self.device)
        if stage == sb.Stage.TRAIN:
            return self.embed(batch.chunk.data), None
        wavs, lens = batch.sig
        chunk_size = self.hparams.chunk_size
        shift = self.hparams.eval_shift
        if stage == sb.Stage.VALID:  # checkpoint selection may use a coarser hop
            shift = getattr(self.hparams, "valid_shift", None) or shift
        step = getattr(self.hparams, "eval_chunks_per_batch", 64)
        log_probs, owners = [], []
        for chunks, owner in iter_chunks(wavs, lens, chunk_size, shift, step):
            log_probs.append(self.modules.classifier(self.embed(chunks)))
            owners.append(owner)
        return torch.cat(log_probs), torch.cat(owners)

    def compute_objectives(self, predictions, batch, stage):
        """Training: the classifier's loss. Evaluation: NLL of the chunk labels."""
        outputs, owner = predictions
        labels = batch.spk_id_encoded.data.squeeze(1)
        if stage == sb.Stage.TRAIN:
            return self.modules.classifier(outputs, labels)  # the training loss, through forward (DDP)
        log_probs = outputs.float()  # float32 statistics under mixed precision
        self.error_stats.append(log_probs.detach(), owner, labels)
        return F.nll_loss(log_probs, labels[owner])

    def on_stage_start(self, stage, epoch=None):
        """Resets the error statistics."""
        self.error_stats = SpeakerIdErrorStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs errors; checkpoints on the validation sentence error."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        # Each process scored its shard of the sentences (DDP): sum the counts.
        self.error_stats.reduce_across_processes(self.device)
        stats = self.error_stats.summarize()  # its loss: mean chunk NLL over all sentences
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"stage": self.stage_name, "epoch": epoch},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(meta=stats, min_keys=[layout.best_checkpoint_key(self.stage_name)])
        else:
            self.hparams.train_logger.log_stats(stats_meta={"stage": self.stage_name}, test_stats=stats)
            self.test_stats = stats
