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
