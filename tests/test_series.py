"""Sequences of your own (dist_rnn/data/series.py): the .ts reader and its one-line errors, packed
variable-length batches read exactly as each sequence alone, training, exact evaluation and bitwise
resume on a variable-length set, and the real JapaneseVowels where a wheel ships it."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    check_ok,
    read_results,
    run_module,
    run_train,
    synthetic_series,
    ts_text,
    write_mnist,
    write_ts,
)

from dist_rnn import train as train_cli
from dist_rnn.checkpoint import load_checkpoint
from dist_rnn.data.series import (
    SeriesInfo,
    SeriesView,
    TsFile,
    load_series,
    package_data_dirs,
    padded,
    patch_size,
    patched,
    read_ts,
)
from dist_rnn.data.splits import Split, validation_split
from dist_rnn.errors import UserError
from dist_rnn.model import RNNClassifier

GOOD = ts_text(*synthetic_series(6, seed=0), classes=("low", "mid", "high"))
HEADER, DATA = GOOD.split("@data\n")


def test_reader_reads_channels_lengths_labels_and_missing_values(tmp_path):
    seqs, labels = synthetic_series(6, seed=0)
    text = GOOD.replace(f"{seqs[0][0, 1]:.6f}", "?", 1).replace(f"{seqs[1][0, 1]:.6f}", "NaN", 1)  # two missing
    (tmp_path / "X_TRAIN.ts").write_text(text)
    got = read_ts(tmp_path / "X_TRAIN.ts")
    assert got.classes == ["low", "mid", "high"] and got.problem == "Synthetic"
    assert [s.shape for s in got.sequences] == [s.shape for s in seqs]
    assert got.labels.tolist() == [["low", "mid", "high"].index(label) for label in labels]
    assert np.isnan(got.sequences[0][0, 1]) and np.isnan(got.sequences[0]).sum() == 1
    assert np.isnan(got.sequences[1][0, 1]) and np.isnan(got.sequences[1]).sum() == 1  # NaN, as pandas writes it
    np.testing.assert_allclose(got.sequences[2], seqs[2], atol=1e-6)
    info = SeriesInfo("X", got.classes, 2, True, max(len(s) for s in got.sequences))
    x, _ = padded(got, info)
    view = SeriesView.fit(info, Split(x, torch.zeros(len(x), dtype=torch.long)))
    assert view.warning().startswith("2 missing values (NaN, or ? in a .ts file) in the training split are read as")


LINE = HEADER.count("\n") + 2  # the first data line's number
BAD_FILES = [
    ("ragged-channels", lambda d: d.split(",", 1)[1], f":{LINE}: ragged channels"),  # channel 1 one value short
    ("bad-value", lambda d: d.replace(",", ",abc,", 1), f":{LINE}: channel 1: bad value 'abc'"),
    ("unknown-label", lambda d: d.replace(":low\n", ":lowest\n", 1),
     f":{LINE}: label 'lowest' is not one of the header's @classLabel values (low mid high)"),
    ("too-few-channels", lambda d: ":".join(d.split("\n")[0].split(":")[1:]) + "\n" + d.split("\n", 1)[1],
     f":{LINE}: expected 2 channel(s) and a label separated by ':', found 2 field(s)"),
    ("empty-sequence", lambda d: "::low\n" + d.split("\n", 1)[1], f":{LINE}: channel 1: a sequence of length 0"),
    ("infinite-value", lambda d: d.replace(",", ",inf,", 1), f":{LINE}: channel 1: bad value 'inf'"),
    ("too-large-for-float32", lambda d: d.replace(",", ",1e39,", 1), f":{LINE}: channel 1: bad value '1e39'"),
    ("trailing-comma", lambda d: d.replace(":", ",:", 1), f":{LINE}: channel 1: an empty value (a trailing or double"),
]


@pytest.mark.parametrize("case,change,words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_malformed_line_is_one_error_naming_file_and_line(tmp_path, case, change, words):
    path = tmp_path / "X_TRAIN.ts"
    path.write_text(HEADER + "@data\n" + change(DATA))
    with pytest.raises(UserError) as e:
        read_ts(path)
    assert str(e.value).startswith(str(path)) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("header,words", [
    (HEADER.replace("@classLabel true low mid high", "@classLabel true"), "'@classLabel true' lists no class labels"),
    (HEADER.replace("@classLabel true low mid high", "@classLabel false"), "needs labelled classification data"),
    (HEADER.replace("@timeStamps false", "@timeStamps true"), "time-stamped .ts files are not supported"),
    (HEADER.replace("@classLabel true low mid high", "@classLabel true low mid low high"), "lists a class twice"),
    (HEADER.replace("@dimensions 2", "@dimensions 0"), "@dimensions '0': expected a number of channels >= 1"),
    (HEADER.replace("@classLabel true low mid high", "@targetLabel true"), "a regression problem (@targetLabel)"),
])
def test_a_bad_header_is_one_error(tmp_path, header, words):
    path = tmp_path / "X_TRAIN.ts"
    path.write_text(header + "@data\n" + DATA)
    with pytest.raises(UserError) as e:
        read_ts(path)
    assert words in str(e.value)
    path.write_text(HEADER)
    with pytest.raises(UserError, match="no @data line"):
        read_ts(path)


def test_reader_tolerates_what_real_files_do(tmp_path):
    """A byte-order mark, tabs after tags, no @dimensions line on multivariate data (counted from
    the first case), and a test file listing the same classes in another order (mapped by name)."""
    text = "\ufeff" + GOOD.replace("@problemName ", "@problemName\t").replace("@dimensions 2\n", "")
    (tmp_path / "X_TRAIN.ts").write_text(text, encoding="utf-8")
    got = read_ts(tmp_path / "X_TRAIN.ts")
    assert got.problem == "Synthetic" and got.sequences[0].shape[1] == 2
    (tmp_path / "X_TEST.ts").write_text(GOOD.replace("@classLabel true low mid high", "@classLabel true high low mid"))
    _, train_y, _, test_y, info = load_series(str(tmp_path / "X_TRAIN.ts"), None)
    assert info.classes == ["low", "mid", "high"] and test_y.tolist() == train_y.tolist()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_padded_batch_gives_each_sequence_its_own_logits(cell, layers, bidirectional):
    """Packed, a batch of sequences of lengths 2..11 gives every sequence exactly the logits it gets
    alone, unpadded: the readout takes its real last step (and the backward direction's state after
    the whole sequence); 'last' reads the output at its own last step."""
    seqs, labels = synthetic_series(10, seed=3)
    seqs = [s[:2 + i] for i, s in enumerate(seqs)]
    info = SeriesInfo("t", ["low", "mid", "high"], 2, True, max(len(s) for s in seqs))
    inputs, labels = padded(TsFile(seqs, np.array([0] * 10), info.classes, "t"), info)
    view = SeriesView.fit(info, Split(inputs, labels))
    torch.manual_seed(0)
    for readout in ("final", "last"):
        model = RNNClassifier(2, 8, layers, 3, cell, bidirectional, readout=readout).eval()
        with torch.no_grad():
            together = model(view(inputs))
            alone = torch.cat([model(((torch.from_numpy(s)[None] - view.mean) / view.std).float()) for s in seqs])
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_patches_read_k_steps_as_one_and_packed_batches_stay_exact():
    """--patch K: T steps of C values become ceil(T/K) steps of K*C (step-major, as MNIST's rows), the
    steps past a case's end zero, lengths in patches; a packed batch gives each sequence the logits
    it gets alone; 'auto' patches long series only; K must leave 2 patches."""
    x, lengths = torch.randn(5, 11, 2), torch.tensor([11, 7, 3, 1, 8])
    out, patches = patched(x, lengths, 4)
    assert out.shape == (5, 3, 8) and patches.tolist() == [3, 2, 1, 1, 2]
    for i, n in enumerate(lengths.tolist()):
        expected = torch.cat([x[i, :n], torch.zeros(12 - n, 2)]).reshape(3, 8)
        assert torch.equal(out[i], expected)
    assert torch.equal(patched(x[:, :8], None, 4)[0], x[:, :8].reshape(5, 2, 8))  # equal lengths: a reshape
    seqs, _ = synthetic_series(10, seed=3)
    info = SeriesInfo("t", ["low", "mid", "high"], 2, True, max(len(s) for s in seqs))
    inputs, labels = padded(TsFile(seqs, np.array([0] * 10), info.classes, "t"), info)
    view = SeriesView.fit(info, Split(inputs, labels), patch=3)
    assert view.input_size == 6 and view.steps == -(-info.max_length // 3)
    assert view.describe("t").endswith(f"read as {view.steps} patches of 3 steps, packed")
    torch.manual_seed(0)
    model = RNNClassifier(view.input_size, 8, 2, 3, "lstm", True).eval()
    with torch.no_grad():
        together = model(view(inputs))
        alone = torch.cat([model(view.read([s], torch.device("cpu"))) for s in seqs])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    assert [patch_size("auto", t) for t in (29, 99, 100, 427)] == [1, 1, 10, 21] and patch_size("5", 427) == 5
    with pytest.raises(UserError, match="patch 29 would read the series"):
        patch_size("29", 29)


def test_standardisation_comes_from_the_training_split_only(tmp_path):
    """The mean and sd a run standardises with are the training samples' (without the validation
    split), in its checkpoint; evaluate and predict need no flag for them."""
    write_ts(tmp_path / "data")
    out = tmp_path / "run"
    check_ok(run_train(["--dataset", "Synthetic", "--data-dir", str(tmp_path / "data"), "--out-dir", str(out),
                        "--max-steps", "2", "--val-size", "60", "--batch-size", "40", "--hidden-size", "8"]))
    saved = load_checkpoint(read_results(out)["checkpoint"])["state"]["view"]
    train_x, train_y, _, _, info = load_series("Synthetic", tmp_path / "data")
    kept, _, _ = validation_split(Split(train_x, train_y), 60, seed=0)
    expected = SeriesView.fit(info, kept)
    assert saved["mean"] == expected.mean.tolist() and saved["std"] == expected.std.tolist()
    assert saved["kind"] == "series" and saved["classes"] == ["low", "mid", "high"]
    assert saved["variable_length"] and saved["channels"] == 2
    assert SeriesView.fit(info, Split(train_x, train_y)).mean.tolist() != saved["mean"]  # the validation samples left out


def test_trains_on_a_ts_path_and_evaluates_without_flags(tmp_path):
    train_file = write_ts(tmp_path / "data")
    out = tmp_path / "run"
    proc = run_train(["--dataset", str(train_file), "--out-dir", str(out), "--epochs", "12", "--batch-size", "30",
                      "--hidden-size", "16", "--lr", "0.01", "--bidirectional"])
    check_ok(proc)
    assert "(Synthetic_TRAIN.ts" not in proc.stdout and "3 classes, 2 channel(s), lengths up to 20, packed" in proc.stdout
    results = read_results(out)
    assert results["test_samples"] == 91 and results["test_accuracy"] > 0.6  # 3 classes: chance is 1/3
    scored = run_module("dist_rnn.evaluate", ["--checkpoint", results["checkpoint"], "--device", "cpu"])
    check_ok(scored)
    assert scored.stdout.startswith(f"test accuracy {results['test_accuracy']:.4f} (")
    # The data moved: evaluate says where it looked and how to name the data; --dataset scores it there.
    moved = tmp_path / "moved"
    train_file.parent.rename(moved)
    lost = run_module("dist_rnn.evaluate", ["--checkpoint", results["checkpoint"], "--device", "cpu"])
    assert lost.returncode == 2 and "--dataset names other data to score" in lost.stderr, lost.stderr
    found = run_module("dist_rnn.evaluate", ["--checkpoint", results["checkpoint"], "--device", "cpu",
                                             "--dataset", str(moved / train_file.name)])
    check_ok(found)
    assert found.stdout.startswith(f"test accuracy {results['test_accuracy']:.4f} (")
    moved.rename(train_file.parent)
    # predict: every case of a .ts file (its labels unread), a .npy and a .csv of one sequence; the
    # answers over the test file are the final weights' test accuracy.
    test_file = train_file.with_name("Synthetic_TEST.ts")
    one = read_ts(test_file).sequences[4]
    np.save(tmp_path / "one.npy", one)
    np.savetxt(tmp_path / "one.csv", one, delimiter=",")
    rows = "".join(f"{i},{','.join(map(str, step))}\n" for i, step in enumerate(one))
    (tmp_path / "pandas.csv").write_text(",ax,ay\n" + rows)  # DataFrame.to_csv: a header, an index column
    plain = "".join(f"{','.join(map(str, step))}\n" for step in one)
    (tmp_path / "numbered.csv").write_text("\ufeff0,1\n" + plain, encoding="utf-8")  # to_csv(index=False), a BOM
    np.save(tmp_path / "three-channels.npy", np.ones((5, 3), dtype=np.float32))
    proc = run_module("dist_rnn.predict", ["--checkpoint", results["checkpoint"], "--json", str(test_file),
                                           str(tmp_path / "one.npy"), str(tmp_path / "one.csv"),
                                           str(tmp_path / "three-channels.npy"), str(tmp_path / "pandas.csv"),
                                           str(tmp_path / "numbered.csv")])
    assert proc.returncode == 2 and "skipped " in proc.stderr and "three-channels.npy: a sequence of shape (5, 3)" \
        in proc.stderr, proc.stderr
    records = json.loads(proc.stdout)
    cases, singles = records[:91], records[91:93]
    assert [r["file"] for r in cases[:2]] == [f"{test_file}#0", f"{test_file}#1"]
    labels = read_ts(test_file).labels
    accuracy = np.mean([r["class_index"] == label for r, label in zip(cases, labels)])
    assert all(max(r["probabilities"], key=r["probabilities"].get) == r["class"] for r in cases)  # class -> p
    assert list(cases[0]["probabilities"]) == read_ts(test_file).classes
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-9)
    assert [r["class"] for r in singles + records[94:]] == [cases[4]["class"]] * 4
    assert [r["probability"] for r in records[94:]] == pytest.approx([cases[4]["probability"]] * 2, abs=1e-5)
    assert singles[0]["probability"] == pytest.approx(cases[4]["probability"], abs=1e-5)


@pytest.mark.parametrize("nproc, patch", [(2, "3"), (3, "1")])
def test_exact_evaluation_of_variable_lengths_at_any_world_size(tmp_path, nproc, patch):
    """91 test sequences: each counted once at 1, 2 and 3 processes, the same correct count and loss
    (read in patches of 3 steps, too)."""
    write_ts(tmp_path / "data")
    out = tmp_path / "run"
    check_ok(run_train(["--dataset", "Synthetic", "--data-dir", str(tmp_path / "data"), "--out-dir", str(out),
                        "--max-steps", "20", "--batch-size", "30", "--hidden-size", "8", "--patch", patch]))
    checkpoint = read_results(out)["checkpoint"]
    scores = {}
    for n in (None, nproc):
        path = tmp_path / f"score-{n}.json"
        args = ["--checkpoint", checkpoint, "--device", "cpu", "--batch-size", "7", "--out", str(path)]
        if n is None:
            check_ok(run_module("dist_rnn.evaluate", args))
        else:
            check_ok(run_module("dist_rnn.evaluate", args, nproc=n))
        scores[n] = json.loads(path.read_text())
    assert scores[None]["test_samples"] == scores[nproc]["test_samples"] == 91 and scores[nproc]["world_size"] == nproc
    assert scores[None]["test_correct"] == scores[nproc]["test_correct"]
    assert scores[None]["test_loss"] == pytest.approx(scores[nproc]["test_loss"], rel=1e-6)


@pytest.mark.parametrize("nproc, buckets, patch", [(None, 0, "1"), (2, 0, "4"), (2, 3, "1")])
def test_variable_length_run_stopped_and_resumed_is_bitwise_identical(tmp_path, nproc, buckets, patch):
    write_ts(tmp_path / "data")
    args = ["--dataset", "Synthetic", "--data-dir", str(tmp_path / "data"), "--batch-size", "30", "--hidden-size",
            "8", "--head-dropout", "0.2", "--val-size", "30", "--epochs", "3", "--log-every", "5",
            "--bucket-batches", str(buckets), "--patch", patch]
    check_ok(run_train([*args, "--out-dir", str(tmp_path / "full")], nproc=nproc, launcher="fork"))
    check_ok(run_train([*args, "--out-dir", str(tmp_path / "cut"), "--max-steps", "13"], nproc=nproc,
                       launcher="fork"))  # stopped mid-epoch
    check_ok(run_train([*args, "--out-dir", str(tmp_path / "cut")], nproc=nproc, launcher="fork"))
    full, cut = read_results(tmp_path / "full"), read_results(tmp_path / "cut")
    assert cut["resumed_from_step"] == 13 and full["steps"] == cut["steps"] == 27 and cut["world_size"] == (nproc or 1)
    a, b = load_checkpoint(full["checkpoint"])["model"], load_checkpoint(cut["checkpoint"])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full["best_val_accuracy"] == cut["best_val_accuracy"] and full["test_loss"] == cut["test_loss"]


def test_bad_data_set_choices_are_one_line(tmp_path, capsys):
    write_ts(tmp_path / "data")
    data = ["--data-dir", str(tmp_path / "data"), "--device", "cpu"]
    cases = [
        (["--dataset", "NoSuchProblem", *data], "--dataset 'NoSuchProblem' not found: choose mnist, fashion-mnist, "
                                                "kmnist, a path to an X_TRAIN.ts; UCR/UEA problems: Synthetic (in "
                                                "--data-dir's data)"),
        (["--dataset", "Synthetic", "--sequence", "pixel", *data], "--sequence pixel applies to the image data sets"),
        (["--dataset", str(tmp_path / "data" / "Synthetic" / "Synthetic_TEST.ts"), *data], "name the training file"),
        (["--dataset", "fashion-mnist", "--device", "cpu"], "--dataset fashion-mnist needs its own --data-dir"),
        (["--bucket-batches", "5", "--device", "cpu"], "--bucket-batches groups sequences by length: every image"),
        (["--patch", "4", "--device", "cpu"], "--patch 4 applies to sequence data, not to --dataset mnist"),
        (["--dataset", "Synthetic", "--patch", "0", *data], "--patch is a number of steps (>= 1) or 'auto', got '0'"),
        (["--dataset", "Synthetic", "--patch", "20", *data], "--patch 20 would read the series (of 20 steps at most)"),
    ]
    for argv, words in cases:
        code = train_cli.main([*argv, "--out-dir", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err, err
        assert not (tmp_path / "o").exists()
    # A run resumed on another data set than it was trained on.
    out = tmp_path / "run"
    assert train_cli.main(["--dataset", "Synthetic", *data, "--out-dir", str(out), "--max-steps", "1",
                           "--batch-size", "30", "--hidden-size", "8"]) == 0
    capsys.readouterr()
    code = train_cli.main([*data, "--out-dir", str(out), "--batch-size", "30", "--hidden-size", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "does not match this run: dataset 'Synthetic' -> 'mnist'" in err, err
    # Scored on data of another kind than it was trained on (the same name, every length equal now).
    write_ts(tmp_path / "fixed", variable=False)
    code = run_module("dist_rnn.evaluate", ["--checkpoint", str(out / "checkpoints" / "step-1.pt"), "--data-dir",
                                            str(tmp_path / "fixed"), "--device", "cpu"])
    assert code.returncode == 2 and "its variable lengths (False) differ from those the checkpoint was trained on " \
        "(True)" in code.stderr, code.stderr
    # Length buckets asked of sequences that all have one length.
    assert train_cli.main(["--dataset", "Synthetic", "--data-dir", str(tmp_path / "fixed"), "--device", "cpu",
                           "--bucket-batches", "5", "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "every sequence of --dataset Synthetic has the same length" in err, err
    assert not (tmp_path / "o").exists()
    # No test file: a run reports validation only, and evaluate says there is nothing to score.
    (tmp_path / "data" / "Synthetic" / "Synthetic_TEST.ts").unlink()
    assert train_cli.main(["--dataset", "Synthetic", *data, "--out-dir", str(tmp_path / "o"), "--max-steps", "2",
                           "--batch-size", "30", "--hidden-size", "8", "--val-size", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "240 train / 60 validation / no test samples" in out and "done: no test set" in out, out
    results = read_results(tmp_path / "o")
    assert results["test_accuracy"] is None and results["val_samples"] == 60
    code = run_module("dist_rnn.evaluate", ["--checkpoint", results["checkpoint"], "--device", "cpu"])
    assert code.returncode == 2 and "it has no test split to score" in code.stderr, code.stderr


SHIPPED = [name for name, folder in package_data_dirs() if (folder / "JapaneseVowels").is_dir()]


@pytest.mark.skipif(not SHIPPED, reason="no installed aeon or sktime ships JapaneseVowels (.ci/run installs sktime)")
def test_japanese_vowels(tmp_path):
    """The real problem as published (270 train / 370 test, 12 channels, lengths 7-29, 9 speakers),
    and a BiLSTM trained on it for 30 epochs in seconds, where 1-NN DTW scores about 0.95."""
    train_x, train_y, test_x, test_y, info = load_series("JapaneseVowels", None)
    assert (len(train_y), len(test_y), info.channels, info.max_length) == (270, 370, 12, 29)
    lengths = torch.cat([train_x[:, 0, 12], test_x[:, 0, 12]])
    assert (lengths.min(), lengths.max()) == (7, 29) and info.classes == [str(k) for k in range(1, 10)]
    check_ok(run_train(["--dataset", "JapaneseVowels", "--out-dir", str(tmp_path / "run"), "--bidirectional",
                        "--hidden-size", "64", "--epochs", "30", "--batch-size", "30", "--lr", "0.003"]))
    assert read_results(tmp_path / "run")["test_accuracy"] >= 0.95


def test_other_image_sets_use_the_idx_reader(tmp_path):
    """fashion-mnist and kmnist: the same four IDX files (here small generated ones), their own name in
    the run and in what evaluate says; resuming one as the other is refused."""
    data = write_mnist(tmp_path / "fashion")
    out = tmp_path / "run"
    proc = run_train(["--dataset", "fashion-mnist", "--data-dir", str(data), "--out-dir", str(out), "--max-steps", "3",
                      "--hidden-size", "8"])
    check_ok(proc)
    assert "(fashion-mnist, row view)" in proc.stdout
    scored = run_module("dist_rnn.evaluate", ["--checkpoint", read_results(out)["checkpoint"], "--device", "cpu"])
    assert scored.returncode == 0 and "fashion-mnist, row view (as trained)" in scored.stdout, scored.stderr
    again = run_train(["--dataset", "kmnist", "--data-dir", str(data), "--out-dir", str(out), "--hidden-size", "8"])
    assert again.returncode == 2 and "dataset 'fashion-mnist' -> 'kmnist'" in again.stderr


def write_arrow_sets(folder: Path) -> tuple[Path, Path]:
    """The synthetic problem as Parquet (train.parquet, test.parquet: string labels, lists of [f1, f2]
    steps) and as a Hugging Face DatasetDict saved to disk (where `datasets` is installed; else the
    same files it writes, made with pyarrow: dataset_dict.json, SPLIT/state.json, SPLIT/*.arrow)."""
    pa = pytest.importorskip("pyarrow", reason="Arrow/Parquet data needs pyarrow (the [arrow] extra; .ci/run has it)")
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    tables = {}
    for split, n, seed in (("train", 300, 1), ("test", 91, 2)):
        seqs, labels = synthetic_series(n, seed)
        tables[split] = pa.table({"steps": [s.tolist() for s in seqs], "speaker": labels})
        pq.write_table(tables[split], folder / f"{split}.parquet")
    saved = folder / "saved"
    try:
        from datasets import Dataset, DatasetDict

        DatasetDict({k: Dataset(t) for k, t in tables.items()}).save_to_disk(str(saved))
    except ImportError:
        (saved).mkdir()
        (saved / "dataset_dict.json").write_text(json.dumps({"splits": list(tables)}))
        for split, table in tables.items():
            (saved / split).mkdir()
            (saved / split / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data.arrow"}]}))
            with pa.ipc.new_stream(str(saved / split / "data.arrow"), table.schema) as writer:
                writer.write_table(table)
    return folder / "train.parquet", saved


def test_arrow_and_parquet_data_train_like_ts_files(tmp_path):
    """The same problem from a .ts file, from Parquet and from a saved DatasetDict: the same inputs,
    labels and classes, so the same run to the bit."""
    parquet, saved = write_arrow_sets(tmp_path / "arrow")
    write_ts(tmp_path / "ts")
    from dist_rnn.data.arrow import load_arrow

    ts = load_series("Synthetic", tmp_path / "ts")
    for source in (str(parquet), str(saved)):
        train, _, test, info = load_arrow(source, "steps", "speaker")
        assert info.classes == sorted(["low", "mid", "high"]) and info.channels == 2 and info.variable_length
        order = torch.tensor([ts[4].classes.index(c) for c in info.classes])  # sorted here, header order there
        for split, x, y in ((train, ts[0], ts[1]), (test, ts[2], ts[3])):
            inputs = split.inputs(slice(None))  # padded to this split's longest, the .ts splits to both's
            torch.testing.assert_close(inputs, x[:, :inputs.shape[1]], rtol=0, atol=1e-6)
            assert torch.equal(order[split.labels], y) and not x[:, inputs.shape[1]:].any()
    args = ["--sequence-column", "steps", "--label-column", "speaker", "--max-steps", "8", "--batch-size", "30",
            "--hidden-size", "8"]
    for name, source in (("parquet", parquet), ("saved", saved)):
        check_ok(run_train(["--dataset", str(source), "--out-dir", str(tmp_path / name), *args]))
    a, b = (load_checkpoint(read_results(tmp_path / n)["checkpoint"])["model"] for n in ("parquet", "saved"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_in_parquet_is_a_missing_value_counted_as_in_a_ts_file(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="Arrow/Parquet data needs pyarrow (the [arrow] extra; .ci/run has it)")
    import pyarrow.parquet as pq

    from dist_rnn.data.arrow import load_arrow
    for split, seed in (("train", 1), ("test", 2)):
        seqs, labels = synthetic_series(30, seed)
        seqs[0][1, 0] = seqs[3][2, 1] = seqs[3][4, 1] = np.nan
        pq.write_table(pa.table({"sequence": [s.tolist() for s in seqs], "label": labels}), tmp_path / f"{split}.parquet")
    train, _, _, info = load_arrow(str(tmp_path / "train.parquet"), "sequence", "label")
    view = SeriesView.fit(info, train)
    assert view.warning().startswith("3 missing values (NaN, or ? in a .ts file) in the training split are read")
    assert not view.read([seqs[0]], torch.device("cpu")).data.isnan().any()


def test_a_validation_split_of_the_data_is_the_validation_split_and_the_test_split_may_be_missing(tmp_path, capsys):
    """A DatasetDict with train and validation splits (no test), and Parquet with a validation twin:
    trained with their own validation split, reporting validation only; val_size as well: one line."""
    pa = pytest.importorskip("pyarrow", reason="Arrow/Parquet data needs pyarrow (the [arrow] extra; .ci/run has it)")
    import pyarrow.parquet as pq

    saved = tmp_path / "saved"
    for split, n, seed in (("train", 60, 1), ("validation", 21, 2)):
        seqs, labels = synthetic_series(n, seed)
        table = pa.table({"sequence": [s.tolist() for s in seqs], "label": labels})
        (saved / split).mkdir(parents=True)
        (saved / split / "state.json").write_text(json.dumps({"_data_files": [{"filename": "d.arrow"}]}))
        with pa.ipc.new_stream(str(saved / split / "d.arrow"), table.schema) as writer:
            writer.write_table(table)
        pq.write_table(table, tmp_path / f"x_{split}.parquet")
    (saved / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    args = ["--max-steps", "2", "--batch-size", "20", "--hidden-size", "8", "--device", "cpu"]
    for source in (saved, tmp_path / "x_train.parquet"):
        out = tmp_path / f"run-{source.name}"
        assert train_cli.main(["--dataset", str(source), "--out-dir", str(out), *args]) == 0
        printed = capsys.readouterr().out
        assert "60 train / 21 validation / no test samples" in printed and "done: no test set" in printed, printed
        assert read_results(out)["val_samples"] == 21 and read_results(out)["test_accuracy"] is None
    assert train_cli.main(["--dataset", str(saved), "--out-dir", str(tmp_path / "o"), "--val-size", "0.1", *args]) == 2
    assert "the data comes with its own validation split: leave --val-size and --val-folds at 0" in \
        capsys.readouterr().err
    # Early stopping watches the data's own validation split; without one it is one line, before any file.
    assert train_cli.main(["--dataset", str(saved), "--out-dir", str(tmp_path / "stop"), "--early-stop", "2",
                           *args]) == 0
    capsys.readouterr()
    (saved / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    assert train_cli.main(["--dataset", str(saved), "--out-dir", str(tmp_path / "o"), "--early-stop", "2", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--early-stop needs a validation split to watch" in err
    assert not (tmp_path / "o").exists()


def test_a_class_label_column_gives_its_names(tmp_path):
    """Hugging Face's ClassLabel keeps ints and the names beside them: in a saved split's
    dataset_info.json, or in the features a Parquet file written by `datasets` carries."""
    pa = pytest.importorskip("pyarrow", reason="Arrow/Parquet data needs pyarrow (the [arrow] extra; .ci/run has it)")
    import pyarrow.parquet as pq

    from dist_rnn.data.arrow import load_arrow
    names = ["walk", "run", "sit"]
    features = {"sequence": {"feature": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence"},
                             "_type": "Sequence"}, "label": {"names": names, "_type": "ClassLabel"}}
    tables = {}
    for split, seed in (("train", 1), ("test", 2)):
        seqs, labels = synthetic_series(30, seed)
        ints = [["low", "mid", "high"].index(label) for label in labels]
        tables[split] = pa.table({"sequence": [s.tolist() for s in seqs], "label": pa.array(ints, pa.int64())})
        (tmp_path / "saved" / split).mkdir(parents=True)
        (tmp_path / "saved" / split / "state.json").write_text(json.dumps({"_data_files": [{"filename": "d.arrow"}]}))
        (tmp_path / "saved" / split / "dataset_info.json").write_text(json.dumps({"features": features}))
        with pa.ipc.new_stream(str(tmp_path / "saved" / split / "d.arrow"), tables[split].schema) as writer:
            writer.write_table(tables[split])
        meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        pq.write_table(tables[split].replace_schema_metadata(meta), tmp_path / f"{split}.parquet")
    (tmp_path / "saved" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    for source in (tmp_path / "saved", tmp_path / "train.parquet"):
        assert load_arrow(str(source), "sequence", "label")[3].classes == names, source


def test_a_view_refuses_data_of_the_other_kind_and_accepts_classes_named_since(tmp_path):
    from dist_rnn.data.views import ImageInfo, SequenceView
    info = SeriesInfo("X", ["walk", "run"], 2, False, 10)
    view = SeriesView(dataclasses.replace(info, classes=["0", "1"]), [0.0, 0.0], [1.0, 1.0])
    view.check_data(info, "X")  # saved before ClassLabel names were read: the same classes
    with pytest.raises(UserError, match="dataset mnist: images, and the checkpoint was trained on sequences"):
        view.check_data(ImageInfo("mnist", tmp_path, (28, 28)), "mnist")
    with pytest.raises(UserError, match="dataset X: sequence data, and the checkpoint was trained on images"):
        SequenceView("row").check_data(info, "X")


def test_evaluate_and_predict_read_the_parquet_a_model_was_trained_on(tmp_path, capsys):
    """evaluate scores a Parquet-trained checkpoint on its test file, and predict classifies the rows
    of that file (and of a saved split), as the model loaded in Python does."""
    import dist_rnn
    from dist_rnn import evaluate, predict

    parquet, saved = write_arrow_sets(tmp_path / "arrow")
    out = tmp_path / "run"
    assert train_cli.main(["--dataset", str(parquet), "--sequence-column", "steps", "--label-column", "speaker",
                           "--max-steps", "8", "--batch-size", "30", "--hidden-size", "8", "--out-dir", str(out)]) == 0
    checkpoint = read_results(out)["checkpoint"]
    assert evaluate.main(["--checkpoint", checkpoint, "--out", str(tmp_path / "scored.json")]) == 0
    scored = json.loads((tmp_path / "scored.json").read_text())
    assert scored["test_samples"] == 91 and scored["test_accuracy"] == read_results(out)["test_accuracy"]
    capsys.readouterr()
    assert predict.main(["--checkpoint", checkpoint, "--json", str(parquet.with_name("test.parquet")),
                         str(saved / "test")]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 2 * 91 and records[0]["file"].endswith("test.parquet#0")
    expected = dist_rnn.load(checkpoint).predict(synthetic_series(91, 2)[0])
    assert [r["class"] for r in records[:91]] == [r["class"] for r in records[91:]] == list(expected)


def write_saved_shards(folder: Path, sequences: list, labels: list, files: int, rows_per_batch: int) -> None:
    """`sequences` as one split of a saved DatasetDict in `files` .arrow files of record batches of
    `rows_per_batch` rows (as `datasets` shards a large set), steps as lists of float32 features."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    schema = pa.schema([("steps", pa.list_(pa.list_(pa.float32()))), ("speaker", pa.string())])
    bounds = np.linspace(0, len(sequences), files + 1).astype(int)
    names = [f"data-{k:05d}-of-{files:05d}.arrow" for k in range(files)]
    for name, first, last in zip(names, bounds[:-1], bounds[1:]):
        with pa.ipc.new_stream(str(folder / name), schema) as writer:
            for start in range(first, last, rows_per_batch):
                stop = min(last, start + rows_per_batch)
                writer.write_batch(pa.record_batch([pa.array([s.tolist() for s in sequences[start:stop]],
                                                             schema.field("steps").type),
                                                    pa.array(labels[start:stop])], schema=schema))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))


def test_arrow_rows_are_read_from_the_files_never_mapped_in(tmp_path):
    """A saved set in several files of small record batches: any rows, in any order, of the split or
    of a subset of it (a validation split's), are read exactly as padding them in memory gives; and
    the process then holds none of the data files' pages (the rows come by pread; the maps that
    parsing used are gone with the table)."""
    pytest.importorskip("pyarrow", reason="Arrow data needs pyarrow (the [arrow] extra; .ci/run has it)")
    from dist_rnn.data.arrow import load_arrow

    data = tmp_path / "saved"
    for split, n, seed in (("train", 300, 1), ("test", 40, 2)):
        seqs, labels = synthetic_series(n, seed)
        write_saved_shards(data / split, [s.astype(np.float32) for s in seqs], labels, files=3, rows_per_batch=7)
    (data / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    train, _, test, info = load_arrow(str(data), "steps", "speaker")
    assert len(train.chunks) == 45 and all(c.file is not None and c.values is None for c in train.chunks)
    seqs, labels = synthetic_series(300, 1)
    expected, _ = padded(TsFile([s.astype(np.float32) for s in seqs], np.zeros(300, dtype=np.int64), info.classes,
                                "t"), info)
    pick = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:50]
    for got, rows in ((train.inputs(pick), pick), (train.inputs(slice(290, 300)), torch.arange(290, 300)),
                      (train.subset(pick).subset(torch.arange(10, 20)).inputs(slice(None)), pick[10:20])):
        assert torch.equal(got, expected[rows][:, :got.shape[1]]) and not expected[rows][:, got.shape[1]:].any()
    assert [info.classes[i] for i in train.labels[pick]] == [labels[i] for i in pick]
    if not Path("/proc/self/smaps").exists():
        return  # (the rows' values are checked above; which pages a process holds, only Linux tells)
    maps, resident, inside = 0, 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line[:1].isupper():  # a mapping's header line
            inside = line.rstrip().endswith(".arrow") and str(data) in line
            maps += inside
        elif inside and line.startswith("Rss:"):
            resident += int(line.split()[1])
    assert resident == 0, f"{resident} kB of the data files resident in {maps} maps"


def test_sequences_through_a_dataloader_train_as_from_memory(tmp_path):
    """--loader dataloader on sequences (worker processes reading whole batches from the Arrow files)
    gives the run --loader memory gives, to the bit, with a validation split taken out."""
    _, saved = write_arrow_sets(tmp_path / "arrow")
    args = ["--dataset", str(saved), "--sequence-column", "steps", "--label-column", "speaker", "--max-steps", "8",
            "--batch-size", "30", "--hidden-size", "8", "--val-size", "30"]
    check_ok(run_train([*args, "--out-dir", str(tmp_path / "memory")]))
    check_ok(run_train([*args, "--out-dir", str(tmp_path / "loader"), "--loader", "dataloader", "--num-workers", "2"]))
    a, b = (load_checkpoint(read_results(tmp_path / n)["checkpoint"])["model"] for n in ("memory", "loader"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_arrow_data_is_one_line(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow", reason="Arrow/Parquet data needs pyarrow (the [arrow] extra)")
    import pyarrow.parquet as pq

    parquet, _ = write_arrow_sets(tmp_path / "arrow")
    cases = [("no-column", None, ["--sequence-column", "sequence"], "no column 'sequence' (columns: steps, speaker)")]
    ints = pa.table({"steps": [[1.0, 2.0], [3.0]], "speaker": [1, 2]})
    empty = pa.table({"steps": [[1.0], []], "speaker": ["a", "b"]})
    floats = pa.table({"steps": [[1.0], [2.0]], "speaker": [0.5, 1.5]})
    words_not_numbers = pa.table({"steps": [["a", "b"], ["c"]], "speaker": ["a", "b"]})
    null_step = pa.table({"steps": [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], None, [5.0, 6.0]]], "speaker": ["a", "b"]})
    for name, table, words in (("ints-and-strings", ints, "labels are of mixed types (train: int; test: str)"),
                               ("strings", words_not_numbers, "column 'steps' holds string values, not numbers"),
                               ("null-step", null_step, "row 1: a time step is null (no features)"),
                               ("empty", empty, "row 1: a sequence of length 0"),
                               ("floats", floats, "column 'speaker' holds float labels: use ints or strings")):
        folder = tmp_path / name
        folder.mkdir()
        pq.write_table(table, folder / "train.parquet")
        pq.write_table(pa.table({"steps": [[1.0]], "speaker": ["a"]}), folder / "test.parquet")
        cases.append((name, folder / "train.parquet", ["--sequence-column", "steps"], words))
    capsys.readouterr()  # (datasets' progress bars)
    for name, path, extra, words in cases:
        code = train_cli.main(["--dataset", str(path or parquet), "--label-column", "speaker", "--out-dir",
                               str(tmp_path / "o"), "--device", "cpu", *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err, (name, err)
        assert not (tmp_path / "o").exists()


def test_splits_of_other_channel_counts_name_both_files_and_a_transposed_layout_is_warned_of(tmp_path, capsys):
    train_file = write_ts(tmp_path / "data", n_train=30, n_test=10)
    test_file = train_file.with_name("Synthetic_TEST.ts")
    seqs, labels = synthetic_series(10, 2, classes=("low", "mid", "high"))
    test_file.write_text(ts_text([s[:, :1] for s in seqs], labels, ("low", "mid", "high")))
    with pytest.raises(UserError) as e:
        load_series(str(train_file), None)
    assert e.value.args[0].endswith(f"sequences differ in their numbers of channels: {train_file} has 2 channels; "
                                    f"{test_file} has 1 channels")
    # (cases, channels, time) data, as aeon keeps it: 40 channels of 3 steps trains, with a warning.
    layout = [np.random.default_rng(i).normal(size=(3, 40)).astype(np.float32) for i in range(20)]
    for name in ("TRAIN", "TEST"):
        (tmp_path / "aeon" / "Aeon").mkdir(parents=True, exist_ok=True)
        (tmp_path / "aeon" / "Aeon" / f"Aeon_{name}.ts").write_text(ts_text(layout, ["a", "b"] * 10, ("a", "b"), "Aeon"))
    assert train_cli.main(["--dataset", "Aeon", "--data-dir", str(tmp_path / "aeon"), "--max-steps", "1",
                           "--hidden-size", "4", "--batch-size", "10", "--device", "cpu",
                           "--out-dir", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "warning: every sequence has more channels (40) than steps (at most 3)" in out
    assert "needs X.transpose(0, 2, 1)" in out
