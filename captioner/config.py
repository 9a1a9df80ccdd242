"""The train settings: one table, TRAIN_CONFIG, from which everything else is derived.

The options of `train`, `compare` and `sweep` (cli.train_options), the defaults of
training.train (DEFAULTS), the checkpoint schema's settings (SETTINGS), the keys of a
sweep run (RUN_KEYS), the command line a report shows (train_command) and the check that
`--resume` is not given contradicting flags (resume_contradiction) all read it. Adding a
train option is one Setting here (tests/test_config.py proves it reaches every place).

No numpy, no click: the CLI imports this module to build its options.
"""

from . import limits
from .cells import NAMES as CELL_NAMES

DATA_DEFAULT = "data/coco_captioning"


class Setting:
    """One train setting.

    name: the Python name (--name-with-dashes on the command line); kind: int, float,
    choice or str; default; low, high: bounds of an int (None: open), for a float low 0
    means >= 0, or > 0 with positive; cutoffs: None or a list of increasing counts
    (2000,6000 on the command line); choices; help: the option's help ("" for none);
    part: "settings" (the training settings a checkpoint keeps), "model" (the model's
    config: meta["model"][saved_as]) or "data" (how the data is read, saved as
    settings[saved_as]); many: the default of compare's repeatable form (None: one
    value), repeat: what repeating it does; griddable: sweep may vary it; option: `train`
    has an option for it (the data options come from cli.data_option); command: shown in
    the report's command line; what: the meaning of a str setting in checkpoint errors.
    """

    def __init__(
        self,
        name,
        kind,
        default,
        help="",
        low=None,
        high=None,
        positive=False,
        choices=None,
        part="settings",
        saved_as=None,
        many=None,
        repeat=None,
        griddable=True,
        option=True,
        command=True,
        what="a string",
    ):
        self.name, self.kind, self.default, self.help = name, kind, default, help
        self.low, self.high, self.positive, self.choices = low, high, positive, choices
        self.part, self.saved_as = part, saved_as or name
        self.many, self.repeat = many, repeat
        self.griddable, self.option, self.command = griddable, option, command
        self.what = what

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    def schema(self):
        """(check(value) -> bool, meaning) for a value saved in a checkpoint."""
        if self.kind == "int":
            low = self.low or 0

            def ok(v):
                return type(v) is int and v >= low

            meaning = f"an integer >= {low}"
            if self.default is None:
                return (lambda v: v is None or ok(v)), f"null or {meaning}"
            return ok, meaning
        if self.kind == "float":  # >= 0 even where the option wants > 0, as always
            return (
                lambda v: type(v) in (int, float) and v == v and abs(v) != float("inf") and v >= 0
            ), "a finite number >= 0"
        if self.kind == "cutoffs":
            return (
                lambda v: (
                    v is None
                    or (isinstance(v, list) and all(type(c) is int and c >= 1 for c in v))
                )
            ), "null or a list of integers"
        if self.kind == "choice":  # a list would not hash
            return (lambda v: isinstance(v, str) and v in self.choices), (
                ", ".join(self.choices[:-1]) + " or " + self.choices[-1]
            )
        return (lambda v: isinstance(v, str)), self.what


TRAIN_CONFIG = (
    Setting(
        "data",
        "str",
        DATA_DEFAULT,
        part="data",
        saved_as="data_dir",
        griddable=False,
        what="a path",
    ),
    Setting("features", "str", "auto", part="data", what="a feature kind"),
    Setting(
        "cell",
        "choice",
        "lstm",
        "Decoder cell",
        choices=CELL_NAMES,
        part="model",
        saved_as="cell_type",
        many=("rnn", "lstm"),
        repeat="one run each",
    ),
    Setting("epochs", "int", 10, low=1),
    Setting("batch_size", "int", 100, low=1),
    Setting("lr", "float", 1e-3, "Learning rate.", low=0, positive=True),
    Setting(
        "lr_decay",
        "float",
        0.95,
        "Multiply the learning rate by this after every epoch.",
        low=0,
        positive=True,
    ),
    Setting("optimizer", "choice", "adam", choices=("adam", "sgd", "sgd_momentum", "rmsprop")),
    Setting(
        "weight_decay",
        "float",
        0.0,
        "L2 penalty on the weight matrices",
        low=0,
        many=(0.0,),
        repeat="one run per cell and value",
    ),
    Setting(
        "forget_bias",
        "float",
        0.0,
        "The LSTM's initial forget-gate bias (CS231n: 0; 1 after Jozefowicz et al. 2015)",
        low=0,
        many=(0.0,),
        repeat="one LSTM run per value",
    ),
    Setting("clip_norm", "float", 0.0, "Clip the global gradient norm to this (0: off).", low=0),
    Setting(
        "hidden_dim",
        "int",
        512,
        f"Decoder state size (at most {limits.MAX_DIM}).",
        low=1,
        high=limits.MAX_DIM,
        part="model",
    ),
    Setting(
        "wordvec_dim",
        "int",
        256,
        f"Word vector size (at most {limits.MAX_DIM}).",
        low=1,
        high=limits.MAX_DIM,
        part="model",
    ),
    Setting(
        "softmax",
        "choice",
        "full",
        "Output layer: full softmax, or adaptive (frequent words in a head, "
        "rare ones in cheaper clusters; faster on big vocabularies).",
        choices=("full", "adaptive"),
    ),
    Setting(
        "softmax_cutoffs",
        "cutoffs",
        None,
        "Adaptive softmax cluster starts by word frequency rank, e.g. 2000,6000 "
        "(default: the head covers 90% of training words, clusters grow 4x).",
    ),
    Setting("max_train", "int", None, "Keep only the first N training captions.", low=1),
    Setting(
        "val_size",
        "int",
        1000,
        "Validation captions scored after every epoch (a fixed subset).",
        low=0,
    ),
    Setting(
        "save_every",
        "int",
        1000,
        "Also save `last` every N steps (0: only at epoch ends).",
        low=0,
        command=False,
    ),
    Setting(
        "eval_every",
        "int",
        0,
        "Every N epochs, BLEU-4 and CIDEr-D of greedy captions on 200 val images.",
        low=0,
    ),
    Setting(
        "keep_best",
        "choice",
        "loss",
        "What `best.npz` means: lowest val loss, or highest CIDEr-D (needs --eval-every).",
        choices=("loss", "cider"),
    ),
    Setting(
        "seed",
        "int",
        0,
        "Initialisation, data order and val subset",
        low=0,
        many=(0,),
        repeat="one run each",
    ),
    # not an option: the val images of the BLEU/CIDEr evaluation
    Setting("eval_images", "int", 200, low=1, option=False, griddable=False, command=False),
)
BY_NAME = {s.name: s for s in TRAIN_CONFIG}

# training.train's defaults: the settings a checkpoint keeps
DEFAULTS = {s.name: s.default for s in TRAIN_CONFIG if s.part == "settings"}
# the checkpoint schema: every key of training.settings, its check and meaning
SETTINGS = {s.saved_as: s.schema() for s in TRAIN_CONFIG if s.part in ("settings", "data")}
# the settings of one sweep run: train's options plus the data
RUN_KEYS = tuple(s.name for s in TRAIN_CONFIG if s.option)
GRIDDABLE = tuple(s.name for s in TRAIN_CONFIG if s.option and s.griddable)
# the options of train/compare/sweep made from the table (cli.train_options)
OPTIONS = tuple(s for s in TRAIN_CONFIG if s.option and s.part != "data")
# flags that --resume accepts whatever the run says: they say how to continue it
RESUME_FREE = ("epochs", "data", "resume", "out", "quiet")


def settings_of(values, data_dir, feature_kind):
    """Option values {name: value} -> the training settings a run keeps (checkpoint):
    DEFAULTS' keys taken from values, then where the data came from."""
    s = {k: values[k] for k in DEFAULTS if k in values}
    s.update(data_dir=data_dir, features=feature_kind)
    if "max_train" in values:  # an option of train, compare and sweep; not of the demo
        s["max_train"] = values["max_train"]
    return s


def options_conflict(values):
    """A rule between train settings that values ({name: value}, the options) break -> a
    message naming the flags, else None."""
    if values["keep_best"] == "cider" and not values["eval_every"]:
        return "--keep-best cider needs --eval-every N"
    return None


def saved_values(meta, settings):
    """What a checkpoint says every setting was: {name: value}."""
    saved = dict(DEFAULTS)
    saved.update(settings)
    for s in TRAIN_CONFIG:
        if s.part == "model":
            saved[s.name] = meta["model"][s.saved_as]
    saved["features"] = meta["features"]["kind"]
    return saved


def resume_contradiction(given, meta, settings, path):
    """--resume continues a run with its own settings: the first option in given
    ({name: value}, the options the user typed) that says otherwise -> a message naming
    it, else None. (--epochs may extend the run; --data may move; --features auto agrees.)"""
    saved = saved_values(meta, settings)
    for name in sorted(set(given) - set(RESUME_FREE)):
        value = given[name]
        if name in saved and value != saved[name] and not (name == "features" and value == "auto"):
            flag = "--" + name.replace("_", "-")
            return (
                f"{flag} {value} contradicts {path}, which was trained with "
                f"{flag} {saved[name]}; --resume continues a run with its own "
                f"settings: drop {flag}, or start a new run with --out"
            )
    return None


def train_command(settings, model_cfg, run_dir):
    """The `captioner train` command line equivalent to a run's settings and model config."""
    args = []
    for s in TRAIN_CONFIG:
        if not s.command:
            continue
        if s.part == "model":
            value = model_cfg[s.saved_as]
        elif s.part == "data":
            value = settings.get(s.saved_as, "?")
        else:
            value = settings.get(s.name)
        if isinstance(value, list):  # --softmax-cutoffs 2000,6000
            value = ",".join(map(str, value))
        if value is not None:
            args.append(f"{s.flag} {value}")
    return "captioner train " + " ".join(args) + f" --out {run_dir}"
