"""The seed-lstm preset on the real MNIST files (skipped without them): trained once, it reproduces
the original script's accuracy, and its checkpoint classifies real digits, plain and photographed."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import check_ok, read_results, real_mnist_dir, run_module, run_train
from PIL import Image

from dist_rnn.data.digits import to_mnist


@pytest.fixture(scope="module")
def seed_lstm_run(tmp_path_factory) -> Path:
    """The `seed-lstm` preset trained on the real files (about a minute), once: the reproduction test
    checks it, the predict test classifies with its checkpoint (a module's tests share a worker)."""
    data = real_mnist_dir()
    if data is None:
        pytest.skip("real MNIST files not present (set DIST_RNN_DATA)")
    out = tmp_path_factory.mktemp("seed-lstm") / "run"
    check_ok(run_train(["--preset", "seed-lstm", "--data-dir", str(data), "--out-dir", str(out)], timeout=600))
    return out


def test_reproduces_seed_lstm(seed_lstm_run):
    """The original LSTM script's hyperparameters reach about 97% in 2 epochs (>= 96% required)."""
    results = read_results(seed_lstm_run)
    assert results["test_samples"] == 10000 and results["steps"] == 1200
    assert results["test_accuracy"] >= 0.96, results


def real_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    from dist_rnn.data import load_split

    data = real_mnist_dir()
    if data is None:
        pytest.skip("real MNIST files not found (set DIST_RNN_DATA)")
    test = load_split(data, "test")
    return test.images[:n].numpy(), test.labels[:n].numpy()


def test_to_mnist_keeps_mnist_digits_and_undoes_photo_differences():
    images, _ = real_digits(100)
    kept, photo = [], []
    for image in images:
        same = to_mnist(Image.fromarray(image)).astype(float)
        kept.append(np.corrcoef(same.ravel(), image.ravel().astype(float))[0, 1])
        # dark on light, 3x larger, in colour: the same digit once normalised (up to a pixel's shift)
        again = to_mnist(Image.fromarray(255 - image).resize((84, 84), Image.BICUBIC).convert("RGB"))
        photo.append(np.corrcoef(same.ravel(), again.astype(float).ravel())[0, 1])
    assert np.median(kept) > 0.99 and min(kept) > 0.7  # an MNIST digit is already normalised
    assert np.median(photo) > 0.9 and np.percentile(photo, 10) > 0.7


def test_predict_real_digits(seed_lstm_run, tmp_path):
    images, labels = real_digits(20)
    checkpoint = read_results(seed_lstm_run)["checkpoint"]
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"plain-{i}.png")
        Image.fromarray(image).save(files[-1])
        files.append(tmp_path / f"photo-{i}.jpg")  # dark on light, larger, colour: as a photo of paper
        Image.fromarray(255 - image).resize((90, 90), Image.BICUBIC).convert("RGB").save(files[-1])
    proc = run_module("dist_rnn.predict", ["--checkpoint", checkpoint, "--json", *map(str, files)], timeout=120)
    check_ok(proc)
    records = json.loads(proc.stdout)
    assert [r["file"] for r in records] == list(map(str, files))
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4
               and r["probability"] == max(r["probabilities"].values())
               for r in records)
    digits = np.array([r["digit"] for r in records])
    plain, photo = digits[0::2], digits[1::2]
    assert (plain == labels).mean() >= 0.9 and (photo == labels).mean() >= 0.8, (plain, photo, labels)
    assert all(r["warning"] is None for r in records)  # real digits, plain or photographed: no warning
    blank, noise = tmp_path / "blank.png", tmp_path / "noise.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(blank)  # white paper, nothing on it
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(noise)
    odd = run_module("dist_rnn.predict", ["--checkpoint", checkpoint, str(blank), str(noise)], timeout=120)
    check_ok(odd)
    assert odd.stdout.count("probability") == 2  # it still answers, and says the answer means little
    assert f"warning: {blank}: no digit-like ink: the image is nearly one shade" in odd.stderr
    assert f"warning: {noise}: no digit on a plain background: ink covers" in odd.stderr
    # Bad files among good ones: each said in one line, the good ones still answered, then exit 2.
    (tmp_path / "notimg.png").write_text("not an image\n")
    mixed = run_module("dist_rnn.predict", ["--checkpoint", checkpoint, str(files[0]), str(tmp_path / "nothing.png"),
                                            str(tmp_path / "notimg.png"), str(files[1])])
    assert mixed.returncode == 2 and "Traceback" not in mixed.stderr
    assert mixed.stdout.splitlines() == [f"{files[0]}: {plain[0]} (probability {records[0]['probability']:.3f})",
                                         f"{files[1]}: {photo[0]} (probability {records[1]['probability']:.3f})"]
    assert mixed.stderr.splitlines() == [
        f"python -m dist_rnn.predict: skipped {tmp_path / 'nothing.png'}: no such file",
        f"python -m dist_rnn.predict: skipped {tmp_path / 'notimg.png'}: not an image this can read "
        f"(cannot identify image file '{tmp_path / 'notimg.png'}')",
        "python -m dist_rnn.predict: error: 2 of 4 files could not be read (see above)"]
