"""Start-up validation names the key, the value and the valid choices."""

import pytest

from conftest import run_recipe
from sincmi.config import check_hparams


@pytest.mark.parametrize(
    "hparams,message",
    [
        ({"chunk_size": 0}, r"chunk_size=0 is invalid: it must be a positive integer"),
        ({"chunk_size": -3200}, r"chunk_size=-3200"),
        ({"label_fraction": 0.0}, r"label_fraction=0.0 is invalid: it must be in \(0, 1\]"),
        ({"label_fraction": 1.2}, r"label_fraction=1.2"),
        ({"pretrain_epochs": -1}, r"pretrain_epochs=-1 is invalid: it must be an integer >= 0"),
        ({"num_verification_speakers": -2}, r"num_verification_speakers=-2"),
        ({"critic": "dot"}, r"critic='dot' is invalid: choose one of \['bilinear', 'cosine', 'cosine_threshold', 'mlp'\]"),
        ({"score_norm": "x"}, r"score_norm='x' is invalid"),
        ({"num_negatives": 0}, r"num_negatives=0 is invalid"),
        ({"verification_backends": ["none", "cosine_plda"]}, r"verification_backends=\['none', 'cosine_plda'\] is invalid"),
        ({"verification_backends": "whiten"}, r"verification_backends='whiten' is invalid: a list"),
        ({"pretrain_data": "everything"}, r"pretrain_data='everything' is invalid: choose one of \['train', 'all', 'none'\]"),
        ({"save_scores": "LIM"}, r"save_scores='LIM' is invalid"),
        ({"export_backend": "pca"}, r"export_backend='pca' is invalid: choose one of"),
        ({"valid_pairs_per_sentence": 0}, r"valid_pairs_per_sentence=0 is invalid"),
        ({"pseudo_label_clusters": 0}, r"pseudo_label_clusters=0 is invalid: it must be a positive integer"),
        ({"pseudo_label_rounds": -1}, r"pseudo_label_rounds=-1 is invalid: it must be an integer >= 0"),
    ],
)
def test_bad_values_are_named(hparams, message):
    with pytest.raises(ValueError, match=message):
        check_hparams(hparams)


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_folder='/nonexistent' does not exist"):
        check_hparams({"data_folder": "/nonexistent"})
    with pytest.raises(FileNotFoundError, match="pretrained_folder=.*holds no LIM run"):
        check_hparams({"pretrained_folder": str(tmp_path)})
    check_hparams({"data_folder": str(tmp_path), "pretrained_folder": None})


@pytest.mark.parametrize("override, message", [
    ("--label_fraction=2.0", "label_fraction=2.0 is invalid"),
    ("--verification_backends=[none,cosine_plda]", "verification_backends=['none', 'cosine_plda'] is invalid"),
    ("--pretrain_data=everything", "pretrain_data='everything' is invalid"),
])
def test_recipe_fails_before_any_data_work(tmp_path, override, message):
    _, proc = run_recipe("Demo", "lim_nce.yaml", tmp_path / "out", override,
                         f"--synth_folder={tmp_path / 'corpus'}", expect_ok=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert not (tmp_path / "corpus").exists()  # nothing was synthesised


def test_clipping_and_nonfinite_patience_are_read_from_the_yaml():
    import torch

    from sincmi.brains import LIMBrain

    brain = LIMBrain(modules={"m": torch.nn.Linear(2, 2)}, hparams={"max_grad_norm": 1.5, "nonfinite_patience": 7},
                     run_opts={"device": "cpu"})
    assert brain.max_grad_norm == 1.5 and brain.nonfinite_patience == 7
