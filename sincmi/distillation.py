"""Self-distillation without labels (DINO, Caron et al., 2021): a pretraining objective beside LIM's.

The two chunks of a sentence are two views of one speaker, as in LIM. A student (the encoder and a
projection head, :class:`DINOHead`) learns to give, for one chunk, the distribution over K prototypes
that a teacher gives for the other chunk; the teacher is the exponential moving average of the
student and gets no gradient. Centring and sharpening the teacher's output keep all chunks from
falling on one prototype. There are no negative pairs. In a yaml (``recipes/Demo/hparams/dino.yaml``)
the head takes the critic's place (``discriminator``) and :class:`SelfDistillation` the objective's;
:class:`sincmi.brains.DistillationBrain` trains them.
"""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


class DINOHead(nn.Module):
    """Embeddings -> cosine logits against K learned prototypes (DINO's head, last layer weight-normalised).

    An MLP maps the embedding to a bottleneck; the logits are the cosines between the normalised
    bottleneck and each normalised prototype (DINO's ``norm_last_layer``), in [-1, 1].

    Example
    -------
    >>> head = DINOHead(input_size=8, hidden_size=16, bottleneck_size=4, prototypes=10)
    >>> logits = head(torch.randn(3, 8))
    >>> logits.shape, bool(logits.abs().max() <= 1 + 1e-6)
    (torch.Size([3, 10]), True)
    """

    def __init__(self, input_size, hidden_size=512, bottleneck_size=128, prototypes=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(input_size, hidden_size), nn.GELU(),
            nn.Linear(hidden_size, hidden_size), nn.GELU(),
            nn.Linear(hidden_size, bottleneck_size),
        )
        self.prototypes = nn.Parameter(torch.randn(prototypes, bottleneck_size) * 0.02)

    def forward(self, embeddings):
        return F.normalize(self.mlp(embeddings), dim=-1) @ F.normalize(self.prototypes, dim=-1).T


def distillation_loss(student, teacher, center, student_temperature, teacher_temperature):
    """DINO's cross-entropy between the two views, each chunk's student against the other chunk's teacher.

    ``student`` and ``teacher`` are ``(2B, K)`` logits of ``[first chunks; second chunks]``. The
    teacher's targets are ``softmax((teacher - center) / teacher_temperature)``, the student's
    predictions ``log_softmax(student / student_temperature)``; the loss is the mean over both
    directions and the batch.

    Example
    -------
    >>> import math
    >>> loss = distillation_loss(torch.zeros(4, 5), torch.zeros(4, 5), torch.zeros(5), 0.1, 0.04)
    >>> round(loss.item(), 4) == round(math.log(5), 4)  # uniform against uniform: log K
    True
    """
    targets = F.softmax((teacher - center) / teacher_temperature, dim=-1)
    swapped = torch.cat(targets.chunk(2)[::-1])  # the first chunks learn the second chunks' targets, and back
    return -(swapped * F.log_softmax(student / student_temperature, dim=-1)).sum(dim=-1).mean()


class SelfDistillation(nn.Module):
    """DINO as the pretraining objective: :func:`distillation_loss`, the centre and the teacher.

    It keeps the objective's contract where the stages rely on it (a str ``name``, an
    ``nn.Module``, ``rows_without_negatives``, always 0: there are no negatives) and holds what
    DINO adds: the teacher (made by :meth:`init_teacher` from the student before training, so
    that it is checkpointed and resumed with the objective) and the centre of its logits.

    Arguments
    ---------
    prototypes : int
        K, the head's number of prototypes (the centre's size).
    student_temperature, teacher_temperature : float
        Softmax temperatures; the teacher's, lower, sharpens its targets.
    center_momentum : float
        The centre is a moving average of the teacher's mean logits (training batches).
    teacher_momentum : float
        After every optimiser step, ``teacher = m * teacher + (1 - m) * student``.

    The defaults are the Demo's: DINO's own (65,536 prototypes, teacher temperature 0.04 to 0.07,
    momentum 0.996) suit hundreds of thousands of steps; in the Demo's 500 steps, 1,024 prototypes
    at 0.04 collapsed to uniform outputs (``recipes/Demo/README.md``), and momentum 0.99 leaves
    0.7 % of the initial weights in the teacher at the end.

    Example
    -------
    >>> dino = SelfDistillation(prototypes=5)
    >>> round(dino(torch.zeros(4, 5), torch.zeros(4, 5)).item(), 4)  # log 5
    1.6094
    """

    name = "dino"
    rows_without_negatives = 0

    def __init__(self, prototypes=256, student_temperature=0.1, teacher_temperature=0.01, center_momentum=0.9,
                 teacher_momentum=0.99):
        super().__init__()
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum
        self.teacher_momentum = teacher_momentum
        self.register_buffer("center", torch.zeros(prototypes))
        self.teacher = None

    def init_teacher(self, encoder, head):
        """The teacher starts as a copy of the student (encoder and head), frozen."""
        self.teacher = nn.ModuleDict({"encoder": copy.deepcopy(encoder), "head": copy.deepcopy(head)})
        self.teacher.requires_grad_(False)

    def teacher_logits(self, chunks):
        """The teacher's ``(N, K)`` logits of ``(N, chunk_size)`` chunks, without a gradient."""
        if self.teacher is None:
            raise RuntimeError("SelfDistillation has no teacher yet: call init_teacher(encoder, head) first")
        with torch.no_grad():
            return self.teacher["head"](self.teacher["encoder"](chunks))

    def forward(self, student, teacher):
        """The loss of one batch; in training, the centre then moves towards the teacher's mean logits."""
        loss = distillation_loss(student, teacher, self.center, self.student_temperature, self.teacher_temperature)
        if self.training:
            with torch.no_grad():
                mean = teacher.mean(dim=0)
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.all_reduce(mean)
                    mean /= torch.distributed.get_world_size()
                self.center.mul_(self.center_momentum).add_(mean, alpha=1 - self.center_momentum)
        return loss

    @torch.no_grad()
    def update_teacher(self, encoder, head):
        """One moving-average step of the teacher towards the student (DDP wrappers are looked through)."""
        student = {"encoder": getattr(encoder, "module", encoder), "head": getattr(head, "module", head)}
        for name, module in student.items():
            for target, source in zip(self.teacher[name].parameters(), module.parameters()):
                target.mul_(self.teacher_momentum).add_(source.detach(), alpha=1 - self.teacher_momentum)
            for target, source in zip(self.teacher[name].buffers(), module.buffers()):
                target.copy_(source)
