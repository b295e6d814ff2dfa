"""Run configuration: typed dataclasses (the runtime options every command shares, and a training
run's), named presets, each field's limits, and config files.

dist_rnn/cli.py builds the flags from these fields (type, default, help, choices), so the flags can
never drift from the config: `--hidden-size` is `TrainConfig.hidden_size`. Precedence is
defaults < preset < config file (--config) < explicit flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from dist_rnn.errors import UserError, first_line


def option(default: Any, help: str, *, min: Optional[float] = None, above: Optional[float] = None,
           below: Optional[float] = None) -> Any:
    """A dataclass field whose help text feeds the generated CLI, with its limits: value >= min,
    value > above, value < below (checked once, for every command, by `validate`)."""
    limits = {k: v for k, v in (("min", min), ("above", above), ("below", below)) if v is not None}
    return field(default=default, metadata={"help": help, **limits})


DEFAULT_DIST_TIMEOUT_S = 600.0


@dataclass
class RuntimeOptions:
    """Where and how a command runs: every command that trains or scores takes these."""

    precision: Literal["fp32", "bf16", "fp16"] = option(
        "fp32", "autocast precision; fp16 needs CUDA (training scales its loss with a GradScaler); bf16 works on "
        "CPU and CUDA, where the recurrent layers stay in fp32 (autocast's cuDNN RNN would run them in fp16, "
        "unscaled) and only the head is bf16; on GPUs half precision was measured slower than fp32 for these small "
        "LSTMs (the weights are cast again every step: see docs/guide.md), on CPUs with BF16 instructions bf16 is "
        "faster; a CPU that cannot run the cell in bf16 (an LSTM without AVX-512/AMX) is refused in one line")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "'auto': CUDA when available, else CPU")
    backend: Literal["auto", "nccl", "gloo"] = option(
        "auto", "process-group backend under torchrun; 'auto': nccl on CUDA, gloo on CPU; 'gloo' on CUDA lets "
        "several processes share one GPU (local rank modulo the GPU count), for debugging")
    deterministic: bool = option(False, "deterministic algorithms (cuDNN deterministic, no autotuning, "
                                 "torch.use_deterministic_algorithms): bitwise-repeatable runs and resumes on "
                                 "GPU (not with --dropout, whose cuDNN masks no checkpoint holds), at some speed "
                                 "cost (see docs/guide.md)")
    threads: int = option(0, "CPU threads per process; 0: $OMP_NUM_THREADS if you set it, else the cores "
                          "available / processes on this node", min=0)
    dist_timeout: float = option(DEFAULT_DIST_TIMEOUT_S, "seconds any collective may wait for the other processes: "
                                 "a peer that died or hangs makes the others fail after this, instead of "
                                 "hanging", above=0)


@dataclass
class TrainConfig(RuntimeOptions):
    """Everything a training run depends on; `config.json` in the run directory is this, resolved."""

    # -- what to run
    config: Optional[str] = option(None, "YAML or JSON file with any of these options (its keys are the option "
                                   "names, e.g. hidden_size); explicit flags override it; a run's config.json works")
    preset: Optional[str] = option(None, "start from a named preset (explicit flags override it)")
    name: Optional[str] = option(None, "run name, used in the default --out-dir")
    # -- data
    dataset: str = option(
        "mnist", "what to train on: 'mnist', 'fashion-mnist' or 'kmnist' (the four IDX files in --data-dir); a "
        "UCR/UEA problem, e.g. 'JapaneseVowels' (NAME_TRAIN.ts and NAME_TEST.ts in --data-dir, or in the data an "
        "installed aeon or sktime ships); the path of an X_TRAIN.ts file, X_TEST.ts beside it; or your own data in "
        "Arrow: a directory saved by Hugging Face datasets (DatasetDict.save_to_disk, train and test splits) or a "
        "Parquet file named *train*, its *test* twin beside it (see --sequence-column). Classes, channels and "
        "lengths come from the data; sequences of different lengths are packed")
    sequence_column: str = option("sequence", "Arrow/Parquet data: the column of sequences (each a list of time "
                                  "steps, each a number or a list of features)")
    label_column: str = option("label", "Arrow/Parquet data: the column of labels (ints or strings)")
    data_dir: Optional[str] = option(
        None, "directory with the four IDX files of --dataset's images (plain or .gz, flat or MNIST/raw/), or "
        "with UCR/UEA problems; default: $DIST_RNN_DATA, else ./data")
    download: bool = option(False, "download MNIST with torchvision into --data-dir if missing (needs a network)")
    limit_train: Optional[int] = option(None, "use only the first N training images (small runs)", min=1)
    limit_test: Optional[int] = option(None, "use only the first N test images (small runs)", min=1)
    val_size: float = option(0.0, "hold out this many training samples as a validation split: a count (500) or a "
                             "fraction (0.1), stratified by class and chosen by --seed alone (the same at any world "
                             "size); the epochs (and --eval-every) then score it instead of the test set, the test "
                             "set is scored once at the end, for the final weights and for the best ones "
                             "(checkpoints/best.pt); 0: no validation split, as the original scripts", min=0)
    val_folds: int = option(
        0, "k-fold validation instead of --val-size: split the training set into K stratified folds (drawn by "
        "--seed alone, the same at any world size) and hold out fold --val-fold; a sweep runs every fold (its "
        "spec's 'folds: K'); 0: off", min=0)
    val_fold: int = option(0, "with --val-folds K: which fold (0 .. K-1) is the validation split", min=0)
    bucket_batches: int = option(
        0, "variable-length sequences: group the training samples by length, each epoch's shuffled order cut into "
        "pools of N global batches, each pool sorted by length into batches of similar lengths, the batches then "
        "shuffled (less padding and fewer steps on long, uneven sets; deterministic, the same global batches at any "
        "world size; e.g. 50); 0: off, every batch a uniform draw", min=0)
    loader: Literal["memory", "dataloader"] = option(
        "memory", "'memory': the training images (or sequences) live on the device and each step gathers its "
        "batch there (fast; Arrow data stays on disk, memory-mapped, and each step reads its rows); "
        "'dataloader': the same batches through a DataLoader and its --num-workers processes (torchvision's "
        "MNIST dataset for the image sets): the pipeline for data that does not fit in memory")
    num_workers: int = option(2, "DataLoader worker processes per rank (--loader dataloader only)", min=0)
    # -- speed
    cuda_graphs: Literal["auto", "on", "off"] = option(
        "auto", "EXPERIMENTAL: capture the training step in CUDA graphs once and replay it (the step of this small "
        "model is bound by kernel launches on a GPU); 'auto' is off until graphed training has been measured on a "
        "GPU to match eager training; 'on' on CPU, or with fp16 (its GradScaler waits for the host), trains eagerly "
        "and says so")
    sequence: Literal["row", "column", "pixel", "reversed", "permuted"] = option(
        "row", "how an image becomes a sequence: 'row' (28 steps of 28 pixels), 'column' (the transposed "
        "image), 'pixel' (784 steps of 1 pixel), 'reversed' (the pixels last to first), 'permuted' (784 steps, "
        "pixels in a fixed random order)")
    permutation_seed: int = option(0, "seed of the pixel order of --sequence permuted (the order is also saved "
                                   "in each checkpoint)")
    crop_top: int = option(0, "image data: drop this many rows at the top of every image before it becomes a "
                           "sequence (MNIST's digits fill a 20x20 box centred by mass: the edge rows are mostly "
                           "blank)", min=0)
    crop_bottom: int = option(0, "image data: drop this many rows at the bottom of every image (see --crop-top)",
                              min=0)
    patch: str = option("1", "sequence data: read K consecutive steps as one (T steps of C channels become "
                        "ceil(T/K) steps of K*C values, as --sequence row reads MNIST); 'auto': K = round(sqrt(T)) "
                        "for series of 100 steps or more, else 1")
    # -- model
    cell: Literal["rnn", "gru", "lstm"] = option("lstm", "recurrent cell")
    hidden_size: int = option(128, "hidden units per direction and layer", min=1)
    num_layers: int = option(2, "stacked recurrent layers", min=1)
    bidirectional: bool = option(False, "run a second recurrent net backwards over the sequence")
    dropout: float = option(0.0, "dropout between stacked recurrent layers (the dropout argument of nn.RNN, "
                            "nn.GRU and nn.LSTM; not after the top layer: see --head-dropout)", min=0, below=1)
    head_dropout: float = option(0.0, "dropout on the readout features, before the classifier", min=0, below=1)
    readout: Literal["last", "final", "max"] = option(
        "final", "'final': final hidden state of each direction (correct many-to-one); "
        "'last': out[:, -1, :] as the original scripts (the top backward half has taken one step only); "
        "'max': the top layer's largest output over each sequence's own steps (max pooling)")
    # -- optimisation
    epochs: int = option(2, "passes over the training set", min=1)
    max_steps: Optional[int] = option(None, "stop after this many optimizer steps in total "
                                      "(0: evaluate the initial model; default: none, the epochs decide)", min=0)
    batch_size: int = option(100, "GLOBAL batch size: each of the WORLD_SIZE processes takes batch_size / "
                             "WORLD_SIZE", min=1)
    grad_accum: int = option(1, "gradient accumulation: each optimizer step sums K micro-batches per process, so "
                             "--batch-size (global) = micro-batch x K x processes; the same global batch gives the "
                             "same trajectory whatever the split between K and processes", min=1)
    eval_batch_size: int = option(1000, "per-process batch size for evaluation", min=1)
    loss: Literal["ce", "mse", "mse-sum"] = option(
        "ce", "'ce': cross-entropy; 'mse': mean squared error between the softmax outputs and one-hot targets (the "
        "slow-learning loss, for comparison); 'mse-sum': the same errors summed over the classes (10x 'mse')")
    optimizer: Literal["adam", "adamw", "sgd"] = option("adam", "optimizer ('adamw': Adam with decoupled weight "
                                                        "decay, --weight-decay's; at 0 it is Adam)")
    weight_decay: float = option(0.0, "weight decay: decoupled with adamw, an L2 penalty in the gradient with adam "
                                 "and sgd (0: none)", min=0)
    class_weights: Literal["none", "balanced"] = option(
        "none", "'balanced': weigh each sample's cross-entropy by n / (classes x count of its class) in the "
        "training split (scikit-learn's rule, a mean weight of 1), for imbalanced classes; the training loss logged is "
        "the weighted one, validation and test losses are not weighted")
    lr: float = option(0.003, "learning rate (the peak, with a schedule)", above=0)
    lr_schedule: Literal["constant", "cosine", "step", "plateau"] = option(
        "constant", "the rate over the run: 'constant'; 'cosine' (down to 0 at the last step of --epochs, whatever "
        "--max-steps says, so a run cut short and continued follows one curve); 'step' (times "
        "--lr-gamma every --lr-step-size steps); 'plateau' (times --lr-gamma when the validation loss has not "
        "improved for --lr-patience scores; needs --val-size)")
    warmup_steps: int = option(0, "raise the rate linearly from lr / (N + 1) to lr over the first N steps", min=0)
    lr_step_size: int = option(1000, "steps between rate cuts (--lr-schedule step)", min=1)
    lr_gamma: float = option(0.1, "the factor of each cut (--lr-schedule step and plateau)", above=0, below=1)
    lr_patience: int = option(2, "validation scores without a better loss before a cut (--lr-schedule plateau)",
                              min=0)
    momentum: float = option(0.0, "momentum (sgd only)", min=0)
    early_stop: Optional[int] = option(None, "stop after this many validation scores in a row without a better "
                                       "accuracy (needs --val-size; default: never)", min=1)
    grad_clip: Optional[float] = option(None, "clip the global gradient norm to this value (default: no clipping)",
                                        above=0)
    seed: int = option(0, "seed for initialisation, shuffling and dropout")
    # -- output
    log_every: int = option(100, "print and record the training loss every N steps", min=1)
    eval_every: Optional[int] = option(None, "also score every N steps (the validation split with --val-size, else "
                                       "the test set: learning curves; its time is not counted as training); always "
                                       "after each epoch (default: only then)", min=1)
    out_dir: Optional[str] = option(None, "run directory (default: runs/<preset-or-name>-<timestamp>)")
    trial: Optional[str] = option(None, "report each epoch's validation score to the Optuna trial this file names "
                                  "(dist_rnn.sweep writes one per run of a search) and stop, pruned, when its "
                                  "pruner says so")
    wandb: bool = option(False, "log to Weights & Biases (rank 0 only; offline when no API key; $WANDB_MODE "
                         "is respected); a resumed run continues the same wandb run")
    wandb_project: str = option("dist_rnn", "wandb project")
    wandb_name: Optional[str] = option(None, "wandb run name (default: --name, else the out-dir's name)")
    wandb_tags: Optional[str] = option(None, "comma-separated wandb tags")
    tensorboard: bool = option(False, "write TensorBoard event files to <out-dir>/tensorboard (rank 0 only)")
    # -- checkpoints
    save_every: Optional[int] = option(None, "also checkpoint every N optimizer steps (always: each epoch end, "
                                       "the end of the run and a stop; default: only those)", min=1)
    keep_last: int = option(3, "keep the K newest checkpoints; older ones are deleted once a new one is "
                            "complete", min=1)
    resume: str = option("auto", "'auto': continue from the newest valid checkpoint in <out-dir>/checkpoints "
                       "(fresh start if none); 'none': fresh start; or the path of a checkpoint file")
    overwrite: bool = option(False, "with --resume none: delete the checkpoints and results already in --out-dir")


# --help's sections: every TrainConfig field in one (tests/test_cli.py checks).
HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "what to run": ("config", "preset", "name"),
    "data": ("dataset", "sequence_column", "label_column", "data_dir", "download", "limit_train", "limit_test",
             "val_size", "val_folds", "val_fold", "bucket_batches", "loader", "num_workers", "sequence",
             "permutation_seed", "crop_top", "crop_bottom", "patch"),
    "model": ("cell", "hidden_size", "num_layers", "bidirectional", "dropout", "head_dropout", "readout"),
    "optimisation": ("epochs", "max_steps", "early_stop", "batch_size", "grad_accum", "eval_batch_size", "loss",
                     "optimizer", "lr", "lr_schedule", "warmup_steps", "lr_step_size", "lr_gamma", "lr_patience",
                     "momentum", "weight_decay", "class_weights", "grad_clip", "seed"),
    "precision and speed": ("precision", "device", "cuda_graphs", "deterministic", "threads"),
    "distribution (torchrun)": ("backend", "dist_timeout"),
    "checkpoints and resume": ("out_dir", "save_every", "keep_last", "resume", "overwrite"),
    "logging and tracking": ("log_every", "eval_every", "wandb", "wandb_project", "wandb_name", "wandb_tags",
                             "tensorboard", "trial"),
}


# The two scripts dist_rnn started from. Only their hyperparameters are reproduced; both read the
# output at the last time step (`out[:, -1, :]`), flaw included, hence readout="last".
PRESETS: dict[str, dict[str, Any]] = {
    "seed-lstm": dict(cell="lstm", hidden_size=128, num_layers=2, bidirectional=False, dropout=0.0,
                      readout="last", batch_size=100, epochs=2, optimizer="adam", lr=0.01),
    "seed-bilstm": dict(cell="lstm", hidden_size=128, num_layers=2, bidirectional=True, dropout=0.0,
                        readout="last", batch_size=100, epochs=2, optimizer="adam", lr=0.003),
}


# A run resumes only into the same model and the same sample order; anything else (learning rate,
# epochs, max steps, logging) may change between attempts.
RESUME_MUST_MATCH = ("dataset", "cell", "hidden_size", "num_layers", "bidirectional", "readout", "sequence",
                     "patch", "permutation_seed", "crop_top", "crop_bottom", "batch_size", "seed", "limit_train", "val_size",
                     "val_folds", "val_fold", "bucket_batches", "lr_schedule", "warmup_steps")


def field_type(cls: type, f: dataclasses.Field) -> tuple[type, Optional[tuple]]:
    """Return (python type, choices) of a field, unwrapping Optional[...] and Literal[...]."""
    tp = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(tp) is typing.Union:  # Optional[X]
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return type(choices[0]), choices
    return tp, None


def precision_from_accelerate(value: str) -> str:
    """`accelerate launch --mixed_precision X` exports ACCELERATE_MIXED_PRECISION=X to its workers."""
    mapping = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
    if value not in mapping:
        raise UserError(f"ACCELERATE_MIXED_PRECISION={value}: dist_rnn supports no, bf16 and fp16")
    return mapping[value]


def read_file(path: str, where: str) -> Any:
    """A YAML (.yaml/.yml) or JSON file's content; one line naming `where` if it cannot be read."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as e:
        raise UserError(f"{where}: cannot read it ({e.strerror or e})") from None
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: one line with the position
        raise UserError(f"{where}: not valid {file.suffix[1:] or 'JSON'}: {first_line(e)}") from None


def checked_values(data: dict[Any, Any], cls: type, where: str, word: str = "key",
                   refused: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Option values, each checked against the field of `cls` it names (its flag's spelling,
    hidden-size, means the same): an unknown or repeated name, a name in `refused` (with why), or a
    wrong type is one line naming the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name in (refused or {}):
            raise UserError(f"{where}: {key!r} {refused[name]}")
        if name not in fields:
            raise UserError(f"{where}: unknown {word} {key!r}{did_you_mean(name, fields)}")
        if name in values:
            raise UserError(f"{where}: {key!r} names the option {name} a second time")
        values[name] = checked(cls, fields[name], value, f"{where}: {word} {key!r}")
    return values


def read_config_file(path: str, cls: type) -> dict[str, Any]:
    """The options in a YAML (.yaml/.yml) or JSON file, each checked against the field of `cls` it
    names; an unknown key or a wrong type is a one-line error naming the key."""
    data = read_file(path, f"`config` {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"`config` {path}: expected a mapping of option names to values")
    values = checked_values(data, cls, f"`config` {path}")
    values.pop("config", None)  # a run's config.json names the file it came from: no recursion
    return values


# What other libraries (Keras, Lightning, scikit-learn, tsai) call some of our options.
ALIASES = {"learning_rate": "lr", "n_epochs": "epochs", "num_epochs": "epochs", "max_epochs": "epochs",
           "hidden_dim": "hidden_size", "hidden_units": "hidden_size", "n_layers": "num_layers",
           "rnn_type": "cell", "cell_type": "cell", "bs": "batch_size", "gradient_clip_val": "grad_clip",
           "clip_grad_norm": "grad_clip", "validation_split": "val_size", "val_split": "val_size",
           "random_state": "seed", "patience": "early_stop"}


def closest(name: str, names: Any) -> Optional[str]:
    """The one of `names` (options or flags) that `name` most likely meant: its alias, or one spelt
    alike; None if none is close."""
    names = list(names)
    alias = ALIASES.get(name.lstrip("-").replace("-", "_"))
    meant = [n for n in names if alias and n.lstrip("-").replace("-", "_") == alias]
    return (meant or difflib.get_close_matches(name, names, n=1, cutoff=0.75) or [None])[0]


def did_you_mean(name: str, names: Any) -> str:
    """" (did you mean 'hidden_size'?)" when one of `names` is close to `name`, else ""."""
    close = closest(name, names)
    return f" (did you mean {close!r}?)" if close else ""


def checked(cls: type, f: dataclasses.Field, value: Any, where: str) -> Any:
    """`value` as the type of field `f` (an int is accepted for a float), or a UserError."""
    tp, choices = field_type(cls, f)
    optional = f.default is None or typing.get_origin(typing.get_type_hints(cls)[f.name]) is typing.Union
    if value is None:
        if optional:
            return None
        raise UserError(f"{where} may not be null")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is str and isinstance(value, int) and not isinstance(value, bool):  # `patch: 16` in YAML
        value = str(value)
    if tp in (int, float) and isinstance(value, str):
        value = _number(value, tp, where)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value!r}")
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise UserError(f"{where} must be {tp.__name__}, got {type(value).__name__} {value!r}")
    if choices and value not in choices:
        raise UserError(f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def _number(text: str, tp: type, where: str) -> Any:
    """A number written as a string: YAML 1.1 (PyYAML) reads `1e-3` as one, and a user meant a number."""
    try:
        return tp(text.strip())
    except ValueError:
        raise UserError(f"{where} must be {tp.__name__}, got str {text!r}") from None


def check_limits(c: Any) -> None:
    """Every field's declared limits (option's min / above / below), one line naming the option."""
    for f in dataclasses.fields(c):
        value, limits = getattr(c, f.name), f.metadata
        if value is None or isinstance(value, bool) or not {"min", "above", "below"} & limits.keys():
            continue
        flag, low, high = f"`{f.name}`", limits.get("min"), limits.get("below")
        if high is not None and low is not None and not low <= value < high:
            raise UserError(f"{flag} must be in [{low:g}, {high:g}), got {value}")
        if high is not None and not value < high:
            raise UserError(f"{flag} must be < {high:g}, got {value}")
        if low is not None and value < low:
            raise UserError(f"{flag} must be >= {low:g}, got {value}")
        if "above" in limits and not value > limits["above"]:
            raise UserError(f"{flag} must be > {limits['above']:g}, got {value}")


def validate(c: TrainConfig, validation_given: bool = False) -> None:
    """Reject settings that cannot work, with one line naming the option: the declared limits, then
    the combinations."""
    check_limits(c)
    if c.dropout and c.num_layers == 1:
        raise UserError("`dropout` acts only between stacked layers: it needs `num_layers` >= 2")
    if c.momentum and c.optimizer != "sgd":
        raise UserError("`momentum` applies to `optimizer`=sgd only")
    if c.class_weights != "none" and c.loss != "ce":
        raise UserError(f"`class_weights`={c.class_weights} weighs the cross-entropy: it needs `loss`=ce")
    if c.val_size >= 1 and c.val_size != int(c.val_size):
        raise UserError(f"`val_size` is a count (>= 1, whole) or a fraction (< 1), got {c.val_size:g}")
    if c.val_folds == 1 or c.val_fold >= max(c.val_folds, 1):
        raise UserError(f"`val_folds`={c.val_folds} `val_fold`={c.val_fold}: K-fold needs K >= 2 folds and a fold "
                        "0 .. K-1" if c.val_folds else "`val_fold` needs `val_folds` (the number of folds)")
    if c.val_folds and c.val_size:
        raise UserError("`val_folds` and `val_size` each make the validation split: give one")
    # (Arrow data may bring a validation split of its own: the Trainer checks once it is read)
    check_validation_needs(c, bool(c.val_size or c.val_folds or validation_given or is_arrow_source(c.dataset)))
    if is_image_set(c.dataset) and c.dataset != "mnist" and (c.data_dir is None or c.download):
        raise UserError(f"`dataset` {c.dataset} needs its own `data_dir` (the default, $DIST_RNN_DATA or ./data, holds "
                        "MNIST's files, named alike) and cannot `download` (only MNIST can)")
    if c.patch != "auto" and not (c.patch.isascii() and c.patch.isdigit() and int(c.patch) >= 1):
        raise UserError(f"`patch` is a number of steps (>= 1) or 'auto', got {c.patch!r}")
    if is_image_set(c.dataset) and c.patch != "1":
        raise UserError(f"`patch`={c.patch} applies to sequence data, not to `dataset` {c.dataset} (its `sequence` "
                        "says how an image is read)")
    if is_image_set(c.dataset) and c.bucket_batches:
        raise UserError(f"`bucket_batches` groups sequences by length: every image of `dataset` {c.dataset} has one")
    if not is_image_set(c.dataset):
        for name, value, default in (("sequence", c.sequence, "row"), ("download", c.download, False),
                                     ("crop_top", c.crop_top, 0), ("crop_bottom", c.crop_bottom, 0)):
            if value != default:
                raise UserError(f"`{name}`={value} applies to the image data sets (mnist, fashion-mnist, kmnist), "
                                f"not to `dataset` {c.dataset}")
    if c.overwrite and c.resume != "none":
        raise UserError("`overwrite` goes with `resume`=none (it deletes what `resume` would continue)")


def from_values(values: dict[str, Any]) -> TrainConfig:
    """A checked TrainConfig from option values (the preset's, if they name one, under them)."""
    preset = values.get("preset")
    if preset is not None and preset not in PRESETS:
        raise UserError(f"preset: unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    config = TrainConfig(**{**PRESETS.get(preset, {}), **values})
    validate(config)
    return config


IMAGE_SETS = ("mnist", "fashion-mnist", "kmnist")  # the IDX sets: the same four file names, 10 classes each


def check_validation_needs(c: TrainConfig, validated: bool) -> None:
    """The options that need a validation split, where there is none (one line)."""
    if c.lr_schedule == "plateau" and not validated:
        raise UserError("`lr_schedule`=plateau follows the validation loss: add `val_size` (e.g. 0.1)")
    if c.trial and not validated:
        raise UserError("`trial` reports validation scores to a search: add `val_size` (e.g. 0.1)")
    if c.early_stop and not validated:
        raise UserError("`early_stop` needs a validation split to watch: add `val_size` (e.g. 0.1)")


def is_arrow_source(dataset: str) -> bool:
    """Whether --dataset names a saved DatasetDict or a Parquet file (data/arrow.py reads them)."""
    return dataset.endswith(".parquet") or (Path(dataset) / "dataset_dict.json").is_file()


def is_image_set(dataset: str) -> bool:
    """Whether --dataset names one of the IDX image sets (else sequences: UCR/UEA, .ts, Arrow)."""
    return dataset in IMAGE_SETS


class _PresetConstructor:
    """`TrainConfig.preset("seed-bilstm", epochs=5)`: a checked config from a preset and overrides.
    On an instance, `.preset` stays the field (an instance's own value hides this descriptor)."""

    def __get__(self, obj: Optional[TrainConfig], owner: type) -> Any:
        def preset(preset: str, /, **overrides: Any) -> TrainConfig:
            return from_values(checked_values({**overrides, "preset": preset}, owner, "TrainConfig.preset",
                                              word="option"))
        return preset


TrainConfig.preset = _PresetConstructor()  # after @dataclass, which took the field's default already


def checked_config(c: TrainConfig, where: str = "config", validation_given: bool = False) -> TrainConfig:
    """A TrainConfig made in Python, checked as a config file is: each value's type, the limits and
    the combinations (`validation_given`: a validation set comes with the data)."""
    c = TrainConfig(**checked_values(to_dict(c), TrainConfig, where, word="option"))
    validate(c, validation_given)
    return c


def to_dict(c: TrainConfig) -> dict[str, Any]:
    """Plain JSON-able dict (also what checkpoints store: no pickled classes)."""
    return dataclasses.asdict(c)
