"""Pair construction against its definition."""

import pytest
import torch

from sincmi.discriminator import CosineDiscriminator
from sincmi.pairs import negative_indices, pair_logits


def check_definition(ids, index, valid):
    batch = len(ids)
    for i in range(batch):
        for k in range(index.shape[1]):
            j = int(index[i, k])
            assert j != i, "an anchor is never its own negative"
            # A negative used for training never comes from the anchor's sentence.
            assert bool(valid[i, k]) == (ids[i] != ids[j])


def test_all_negatives():
    ids = [f"s{i}" for i in range(6)]
    index, valid = negative_indices(ids)
    assert index.shape == (6, 5)
    check_definition(ids, index, valid)
    assert valid.all()
    # every other element appears exactly once per row
    for i in range(6):
        assert sorted(index[i].tolist()) == [j for j in range(6) if j != i]


@pytest.mark.parametrize("k", [1, 3])
def test_sampled_negatives(k):
    ids = [f"s{i}" for i in range(8)]
    gen = torch.Generator().manual_seed(0)
    index, valid = negative_indices(ids, k, gen)
    assert index.shape == (8, k)
    check_definition(ids, index, valid)
    assert valid.all()
    for row in index:
        assert len(set(row.tolist())) == k


def test_repeated_sentence_is_never_a_valid_negative():
    ids = ["a", "b", "a", "c"]
    index, valid = negative_indices(ids)
    check_definition(ids, index, valid)
    assert not valid.all()  # (0, 2) and (2, 0) are masked
    gen = torch.Generator().manual_seed(1)
    index, valid = negative_indices(ids, 2, gen)
    check_definition(ids, index, valid)
    assert valid.all()  # two other sentences exist, so sampling avoids "a"


def test_pair_logits_positives_are_same_sentence_pairs():
    torch.manual_seed(0)
    anchors, positives = torch.randn(5, 4), torch.randn(5, 4)
    critic = CosineDiscriminator(init_scale=1.0)
    pos, neg, valid = pair_logits(critic, anchors, positives, list("abcde"))
    cos = torch.nn.functional.cosine_similarity
    assert torch.allclose(pos, cos(anchors, positives), atol=1e-6)
    index, _ = negative_indices(list("abcde"))
    expected = cos(anchors.unsqueeze(1), positives[index], dim=-1)
    assert torch.allclose(neg, expected, atol=1e-6)
    assert neg.shape == (5, 4) and valid.all()


def test_single_sentence_batch_is_rejected():
    with pytest.raises(ValueError, match="at least two"):
        negative_indices(["a"])


def test_pretraining_batches_never_hold_a_single_sentence(tmp_path):
    """A validation set of B*k + 1 sentences must not leave a 1-sentence batch."""
    import numpy as np
    import soundfile as sf
    from speechbrain.utils.epoch_loop import EpochCounter
    from speechbrain.utils.train_logger import FileTrainLogger

    from sincmi import stages
    from sincmi.data import pair_dataset
    from sincmi.encoder import SincNetEncoder
    from sincmi.objectives import InfoNCE

    rows = {}
    for i in range(5):
        path = tmp_path / f"s{i}.wav"
        sf.write(path, np.random.default_rng(i).standard_normal(2000).astype("float32"), 16000)
        rows[f"s{i}"] = {"wav": str(path), "start": 0, "stop": 2000, "gain": 1.0, "spk_id": "a"}

    encoder = SincNetEncoder(chunk_size=800, sinc_filters=4, sinc_kernel=33, conv_channels=[4], conv_kernels=[5],
                             fc_sizes=[8])
    hparams = {
        "encoder": encoder,
        "pretrain_modules": {"encoder": encoder, "discriminator": CosineDiscriminator(),
                             "objective": InfoNCE()},
        "pretrain_epoch_counter": EpochCounter(1),
        "pretrain_epochs": 1,
        "pretrain_batch_size": 2,  # 5 valid sentences -> 2, 2, 1
        "pretrain_optimizer": lambda params: torch.optim.Adam(params),
        "num_workers": 0,
        "seed": 1,
        "save_folder": str(tmp_path / "save"),
        "train_logger": FileTrainLogger(str(tmp_path / "log.txt")),
    }
    from sincmi.brains import LIMBrain

    seen = {"TRAIN": [], "VALID": []}
    forward = LIMBrain.compute_forward

    def recording_forward(self, batch, stage):
        seen[stage.name].append(sorted(batch.sentence))
        return forward(self, batch, stage)

    LIMBrain.compute_forward = recording_forward
    try:
        stages.pretrain(hparams, {"device": "cpu"}, pair_dataset(rows, 800), pair_dataset(rows, 800))
    finally:
        LIMBrain.compute_forward = forward
    # Full training batches of 2; validation: 2 + 2, the 5th sentence left out rather than alone.
    assert [len(b) for b in seen["TRAIN"]] == [2, 2] and [len(b) for b in seen["VALID"]] == [2, 2]
    assert all(len(set(b)) == 2 for b in seen["TRAIN"] + seen["VALID"])
    with open(tmp_path / "log.txt") as f:
        assert "valid loss" in f.read()
