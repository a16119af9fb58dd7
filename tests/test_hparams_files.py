"""The recipes' yaml files: copies that agree, and the SpeechBrain objects they declare.

Each recipe has one yaml per system (a row of the paper's table), so most
settings appear in several files of a folder. A setting changed in one copy
and forgotten in the others would make the rows of one table incomparable;
``conflicting_settings`` finds such a setting.
"""

import glob
import io
import os

import pytest
import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.epoch_loop import EpochCounter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ["TIMIT", "LibriSpeech", "Demo", "VoxCeleb"]

# The settings that make one LIM system differ from another within a recipe
# (what a yaml's row in the results table is about): any yaml may set them.
SYSTEM_KEYS = {
    "system_name", "output_folder",
    "objective_name", "objective", "num_negatives", "mine_ema_decay", "critic",  # the LIM objective and critic
    "discriminator",  # the critic, or self-distillation's head in its place (dino.yaml)
}
# Settings that only the named yaml may set otherwise (its row is about them);
# every other yaml of its recipe must agree on them.
FILE_EXEMPTIONS = {
    "supervised.yaml": {"pretrain_epochs", "freeze_encoder", "classifier", "finetune_epochs", "finetune_lr",
                        "score_baselines"},  # no LIM; the encoder is trained with the classifier
    "semisupervised.yaml": {"pretrain_epochs", "pretrain_data", "freeze_encoder", "label_fraction", "classifier",
                            "finetune_epochs", "finetune_lr", "score_baselines"},  # its own LIM budget, few labels
    "finetune.yaml": {"pretrain_epochs", "finetune_epochs"},  # VoxCeleb: fine-tunes a LIM run's encoder
}


def yaml_files(recipe):
    return sorted(glob.glob(os.path.join(ROOT, "recipes", recipe, "hparams", "*.yaml")))


def _setting_text(key, node):
    """A top-level setting as yaml text without its comments (tags and !ref kept)."""
    stream = io.StringIO()
    ruamel.yaml.YAML().dump({key: node}, stream)
    lines = (line.split(" #")[0].rstrip() for line in stream.getvalue().splitlines())
    return "\n".join(line for line in lines if line.strip() and not line.lstrip().startswith("#"))


def conflicting_settings(paths, system_keys=SYSTEM_KEYS, file_exemptions=FILE_EXEMPTIONS):
    """``{key: {value text: [file names]}}`` for settings whose copies differ.

    Keys outside ``system_keys`` that appear in two or more of ``paths`` with
    different values, leaving out the files that ``file_exemptions`` lets set
    the key; a key absent from a file is not a conflict (the supervised yaml
    has no LIM settings).
    """
    values = {}
    for path in paths:
        name = os.path.basename(path)
        with open(path) as f:
            tree = ruamel.yaml.YAML().load(f)
        for key, node in tree.items():
            if key not in file_exemptions.get(name, ()):
                values.setdefault(key, {}).setdefault(_setting_text(key, node), []).append(name)
    return {key: texts for key, texts in values.items() if len(texts) > 1 and key not in system_keys}


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_yamls_of_a_recipe_agree_outside_their_system_settings(recipe):
    conflicts = conflicting_settings(yaml_files(recipe))
    assert not conflicts, f"recipes/{recipe}/hparams: settings that differ between copies: {conflicts}"


def test_a_setting_changed_in_one_copy_is_found(tmp_path):
    source = os.path.join(ROOT, "recipes", "TIMIT", "hparams", "lim_nce.yaml")
    with open(source) as f:
        text = f.read()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text.replace("chunk_size: 3200", "chunk_size: 4000")
                                     .replace("objective_name: nce ", "objective_name: bce "))
    conflicts = conflicting_settings([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert list(conflicts) == ["chunk_size"]  # objective_name is a system setting
    assert sorted(conflicts["chunk_size"]) == ["chunk_size: 3200", "chunk_size: 4000"]
    # A setting exempted for one file only is a conflict in any other file
    (tmp_path / "supervised.yaml").write_text(text.replace("pretrain_epochs: ", "pretrain_epochs: 0 #"))
    (tmp_path / "d.yaml").write_text(text.replace("finetune_epochs: ", "finetune_epochs: 1 #"))
    conflicts = conflicting_settings([tmp_path / "a.yaml", tmp_path / "supervised.yaml", tmp_path / "d.yaml"])
    assert list(conflicts) == ["finetune_epochs"]
    # A changed comment is not a change of setting
    (tmp_path / "c.yaml").write_text(text.replace("# 200 ms", "# a fifth of a second"))
    assert conflicting_settings([tmp_path / "a.yaml", tmp_path / "c.yaml"]) == {}


def _load(path):
    """The yaml with its placeholders filled, as ``train.py`` would load it."""
    with open(path) as f:
        tree = ruamel.yaml.YAML().load(f)
    overrides = {key: "/nonexistent" for key, node in tree.items()
                 if getattr(getattr(node, "tag", None), "value", None) == "!PLACEHOLDER"}
    with open(path) as f:
        return load_hyperpyyaml(f, overrides)


@pytest.mark.parametrize("path", [p for recipe in RECIPES for p in yaml_files(recipe)],
                         ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "recipes")))
def test_each_training_loop_is_declared_in_the_yaml(path):
    """The epoch counters and LIM modules the stages use are the yaml's own objects."""
    hparams = _load(path)
    if hparams["pretrain_epochs"] > 0:
        modules = hparams["pretrain_modules"]
        assert modules["encoder"] is hparams["encoder"]  # one encoder, pretrained then probed
        assert modules["discriminator"] is hparams["discriminator"]
        assert modules["objective"] is hparams["objective"]
        counter = hparams["pretrain_epoch_counter"]
        assert isinstance(counter, EpochCounter) and counter.limit == hparams["pretrain_epochs"]
    if "classifier" in hparams:  # the yaml trains a speaker classifier
        counter = hparams["finetune_epoch_counter"]
        assert isinstance(counter, EpochCounter) and counter.limit == hparams["finetune_epochs"]
    if "mfcc_baseline" in hparams:  # each baseline probe has its own loop
        probes = [hparams["random_probe_epoch_counter"], hparams["mfcc_probe_epoch_counter"],
                  hparams["finetune_epoch_counter"]]
        assert len({id(counter) for counter in probes}) == 3
        assert all(counter.limit == hparams["finetune_epochs"] for counter in probes)


def test_a_yaml_without_the_counter_is_told_how_to_declare_it():
    from sincmi.stages import declared

    with pytest.raises(KeyError, match=r"finetune_epoch_counter.*\n.*EpochCounter\n    limit: !ref <finetune_epochs>"):
        declared({}, "finetune_epoch_counter")
    with pytest.raises(KeyError, match=r"pretrain_modules.*\n.*encoder: !ref <encoder>"):
        declared({}, "pretrain_modules")


def test_pretraining_refuses_modules_that_are_not_the_yamls_encoder():
    """LIM must train the encoder that the later stages probe, not a second copy."""
    import torch

    from sincmi.stages import pretrain

    encoder, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    hparams = {"encoder": encoder, "pretrain_epochs": 1, "pretrain_epoch_counter": EpochCounter(1),
               "pretrain_modules": {"encoder": other, "discriminator": None, "objective": None}}
    with pytest.raises(ValueError, match="its encoder is not <encoder>"):
        pretrain(hparams, {"device": "cpu"}, None, None)
    hparams["pretrain_modules"] = {"encoder": encoder}
    with pytest.raises(ValueError, match=r"it lacks \['discriminator', 'objective'\]"):
        pretrain(hparams, {"device": "cpu"}, None, None)
