"""captioner.config: every train setting reaches every place that lists settings."""

import pytest

from captioner import checkpoint, config, sweep, training
from captioner.cli import cli
from captioner.config import TRAIN_CONFIG


def option_names(command):
    return {p.name for p in command.params}


@pytest.mark.parametrize("setting", TRAIN_CONFIG, ids=lambda s: s.name)
def test_every_setting_reaches_every_place(setting):
    """Adding a train option is one Setting: it must show up as an option of train,
    compare and sweep, in the checkpoint schema, the sweep keys, training's defaults,
    the report's command line and the --resume check."""
    s = setting
    if s.option:
        for command in (cli.commands[n] for n in ("train", "compare", "sweep")):
            assert s.name in option_names(command), command.name
        assert s.name in sweep.RUN_KEYS
    else:
        assert s.name not in option_names(cli.commands["train"])
    if s.part in ("settings", "data"):
        ok, _ = checkpoint.SETTINGS[s.saved_as]
        value = s.default if s.default is not None else (s.low or 1)
        if s.kind == "cutoffs":  # None or a list of counts
            assert ok(None) and ok([2000, 6000])
            assert not ok(2000) and not ok(["2000"]) and not ok([0])
        else:
            assert ok(value)
            assert not ok([value])  # a list is refused
    if s.part == "settings":
        assert training.DEFAULTS[s.name] == s.default
    meta = {
        "model": {"cell_type": "lstm", "hidden_dim": 512, "wordvec_dim": 256},
        "features": {"kind": "pca"},
    }
    settings = dict(training.DEFAULTS, data_dir="/d", features="pca")
    other = {
        "choice": {"optimizer": "sgd", "softmax": "adaptive"}.get(s.name, "rnn"),
        "int": 7,
        "float": 0.5,
        "cutoffs": [20, 60],
    }
    value = {"cell": "rnn", "keep_best": "cider", "features": "fc7", "data": "/e"}.get(
        s.name, other.get(s.kind)
    )
    problem = config.resume_contradiction({s.name: value}, meta, settings, "last.npz")
    if s.name in config.RESUME_FREE:
        assert problem is None
    elif s.option:
        assert problem and s.flag in problem
    if s.command:
        if s.part == "model":
            meta["model"][s.saved_as] = value
        else:
            settings[s.saved_as] = value
        line = config.train_command(settings, meta["model"], "runs/x")
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        assert f"{s.flag} {shown}" in line


def test_options_conflict_keep_best_cider_needs_eval_every():
    """train, compare and sweep refuse --keep-best cider without --eval-every (one rule)."""
    values = dict(training.DEFAULTS, keep_best="cider", eval_every=0)
    assert config.options_conflict(values) == "--keep-best cider needs --eval-every N"
    assert config.options_conflict(dict(values, eval_every=2)) is None
    assert config.options_conflict(dict(values, keep_best="loss")) is None


def test_defaults_are_what_train_has_always_used():
    """The values of the settings before the table existed (checkpoints rely on them)."""
    assert (
        dict(
            epochs=10,
            batch_size=100,
            lr=1e-3,
            lr_decay=0.95,
            optimizer="adam",
            weight_decay=0.0,
            forget_bias=0.0,
            clip_norm=0.0,
            softmax="full",
            softmax_cutoffs=None,
            max_train=None,
            val_size=1000,
            save_every=1000,
            eval_every=0,
            keep_best="loss",
            seed=0,
            eval_images=200,
        )
        == training.DEFAULTS
    )
    assert set(checkpoint.SETTINGS) == set(training.DEFAULTS) | {"data_dir", "features"}
    assert sweep.NOT_GRIDDED == ("data",)


def test_schema_checks():
    S = checkpoint.SETTINGS
    assert S["epochs"][0](1) and not S["epochs"][0](0) and not S["epochs"][0](True)
    assert S["seed"][0](0) and not S["seed"][0](-1) and not S["seed"][0](1.0)
    assert S["lr"][0](0) and S["lr"][0](1e-3) and not S["lr"][0](float("nan"))
    assert not S["lr"][0](float("inf")) and not S["lr"][0](-1e-3)
    assert S["max_train"][0](None) and not S["max_train"][0](0)
    assert S["optimizer"][1] == "adam, sgd, sgd_momentum or rmsprop"
    assert S["keep_best"][1] == "loss or cider" and not S["keep_best"][0]("best")
    assert S["data_dir"][1] == "a path" and S["features"][1] == "a feature kind"
