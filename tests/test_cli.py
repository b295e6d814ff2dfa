"""The CLI mirrors TrainConfig, presets are the originals' hyperparameters, bad input is one line + exit 2."""

import dataclasses
import importlib
import re
import subprocess
import sys
from typing import Optional

import pytest
import torch
from conftest import REPO

from dist_rnn import __version__
from dist_rnn.cli import as_flags, build_parser, parse_config
from dist_rnn.config import HELP_GROUPS, PRESETS, TrainConfig, check_limits, option
from dist_rnn.errors import UserError


def test_every_field_has_a_documented_flag_in_one_help_section():
    help_text = build_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in help_text
        assert f.metadata["help"]
    grouped = [name for names in HELP_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(TrainConfig))  # each once
    for title in HELP_GROUPS:
        assert f"\n{title}:\n" in help_text


def test_a_misspelt_flag_gets_the_nearest_one_suggested():
    with pytest.raises(UserError) as e:
        parse_config(["--hiden-size", "64"])
    assert str(e.value) == "unrecognized arguments: --hiden-size 64 (did you mean --hidden-size?) (see --help)"


def test_defaults_preset_then_flags():
    assert parse_config([]) == TrainConfig()
    c = parse_config(["--preset", "seed-bilstm", "--lr", "0.001", "--no-bidirectional"])
    assert (c.lr, c.bidirectional, c.readout, c.batch_size, c.epochs) == (0.001, False, "last", 100, 2)


def test_presets_are_the_original_scripts():
    lstm, bilstm = parse_config(["--preset", "seed-lstm"]), parse_config(["--preset", "seed-bilstm"])
    for c in (lstm, bilstm):
        assert (c.cell, c.hidden_size, c.num_layers, c.batch_size, c.epochs, c.optimizer, c.readout) == \
               ("lstm", 128, 2, 100, 2, "adam", "last")
    assert (lstm.bidirectional, lstm.lr) == (False, 0.01)
    assert (bilstm.bidirectional, bilstm.lr) == (True, 0.003)
    assert set(PRESETS) == {"seed-lstm", "seed-bilstm"}
    assert TrainConfig().readout == "final"  # everything but the presets uses the correct readout


@pytest.mark.parametrize("args,words", [
    (["--lr", "0"], "--lr must be > 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--dropout", "0.2", "--num-layers", "1"], "needs --num-layers >= 2"),
    (["--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),
    (["--max-steps", "-1"], "--max-steps must be >= 0"),
])
def test_invalid_values(args, words):
    with pytest.raises(UserError) as e:
        parse_config(args)
    assert words in as_flags(e.value)


def test_library_names_options_the_cli_names_flags():
    """Library code marks the options a message is about; Python callers read config names, the
    command line reads the flags they would type."""
    error = UserError("`batch_size`=99 (global) does not divide; use `resume`=none with `overwrite`=True, "
                      "`deterministic`=False, or another `out_dir` (`python -m x` stays as it is)")
    assert str(error) == ("batch_size=99 (global) does not divide; use resume=none with overwrite=True, "
                          "deterministic=False, or another out_dir (`python -m x` stays as it is)")
    assert as_flags(error) == ("--batch-size 99 (global) does not divide; use --resume none with --overwrite, "
                               "--no-deterministic, or another --out-dir (`python -m x` stays as it is)")
    assert as_flags(error.from_rank(0)).startswith("rank 0: --batch-size 99 ")


def test_help():
    proc = subprocess.run([sys.executable, "-m", "dist_rnn.train", "--help"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "GLOBAL batch size" in proc.stdout and "--preset" in proc.stdout


def test_declared_limits():
    """option(..., min=, above=, below=) is all a field needs for its one-line check."""
    @dataclasses.dataclass
    class Limited:
        count: int = option(1, "at least one", min=1)
        rate: float = option(0.5, "positive", above=0)
        share: float = option(0.5, "a fraction", min=0, below=1)
        ceiling: float = option(0.5, "under one", below=1)
        maybe: Optional[int] = option(None, "unset or at least one", min=1)

    check_limits(Limited())
    for field, value, words in [("count", 0, "count must be >= 1, got 0"), ("rate", 0.0, "rate must be > 0"),
                                ("share", -0.1, "share must be in [0, 1)"), ("share", 1.0, "share must be in [0, 1)"),
                                ("ceiling", 2.0, "ceiling must be < 1, got 2.0"), ("maybe", 0, "maybe must be >= 1")]:
        with pytest.raises(UserError, match=re.escape(words)):
            check_limits(Limited(**{field: value}))


def test_config_file_forgives_numbers_as_text_and_flag_spellings(tmp_path):
    """PyYAML reads `1e-3` as a string (YAML 1.1); a key may be written as the flag is."""
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nhidden-size: 64\nepochs: '3'\n")
    c = parse_config(["--config", str(path)])
    assert (c.lr, c.hidden_size, c.epochs) == (0.001, 64, 3)
    for text, words in [("hiden_size: 64\n", "unknown key 'hiden_size' (did you mean 'hidden_size'?)"),
                        ("lr: fast\n", "key 'lr' must be float, got str 'fast'"),
                        ("lr: .nan\n", "key 'lr' must be a finite number, got nan"),
                        ("colour: red\n", "unknown key 'colour'")]:
        path.write_text(text)
        with pytest.raises(UserError) as e:
            parse_config(["--config", str(path)])
        assert str(e.value).endswith(words) and (words != "unknown key 'colour'" or "did you mean" not in str(e.value))


@pytest.mark.parametrize("module", ["train", "evaluate", "bench", "plot", "predict", "data", "torchrun",
                                    "sweep"])
def test_every_command_answers_version(module, capsys):
    main = importlib.import_module(f"dist_rnn.{module}" + (".__main__" if module == "data" else "")).main
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    expected = f"python -m dist_rnn.{module} (dist_rnn {__version__}, torch {torch.__version__})\n"
    assert capsys.readouterr().out == expected


def test_help_says_what_an_unset_option_means():
    help_text = build_parser().format_help()
    for flag, words in [("--save-every", "default: only those"), ("--max-steps", "default: none, the epochs decide"),
                        ("--eval-every", "default: only then"), ("--grad-clip", "default: no clipping"),
                        ("--dropout", "nn.RNN, nn.GRU and nn.LSTM")]:
        entry = re.search(rf"^  {flag}[ =].*?(?=^  -|^\S|\Z)", help_text, re.M | re.S)[0]  # the flag's own text
        assert words in " ".join(entry.split()), flag
    plot_help = subprocess.run([sys.executable, "-m", "dist_rnn.plot", "--help"], cwd=REPO, capture_output=True,
                               text=True).stdout
    assert "-o OUTPUT, --output OUTPUT" in plot_help and plot_help.count("OUTPUT") == 3  # usage, the flag's two names
    torchrun_help = subprocess.run([sys.executable, "-m", "dist_rnn.torchrun", "--help"], cwd=REPO,
                                   capture_output=True, text=True).stdout
    assert torchrun_help.startswith("usage: python -m dist_rnn.torchrun [torchrun options] -m dist_rnn.train")
    assert "30-line SignalException traceback" in torchrun_help
