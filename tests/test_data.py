"""Reading and verifying IDX files, and the batch / shard arithmetic that DDP relies on."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import idx_bytes, real_mnist_dir, synthetic_split, write_mnist

from dist_rnn.cli import parse_config
from dist_rnn.data import (
    GlobalBatchSampler,
    SequenceView,
    Split,
    as_sequences,
    eval_shard,
    load_mnist,
    resolve_data_dir,
    validation_split,
)
from dist_rnn.errors import UserError


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_load_layouts(tmp_path, gz, layout):
    root = write_mnist(tmp_path, n_train=50, n_test=20, gz=gz, layout=layout)
    train, test = load_mnist(root)
    images, labels = synthetic_split(50, seed=1)
    assert train.images.dtype == torch.uint8 and train.images.shape == (50, 28, 28)
    assert torch.equal(train.images, torch.from_numpy(images))
    assert torch.equal(train.labels, torch.from_numpy(labels).long())
    assert len(test) == 20


def test_data_dir_precedence(monkeypatch):
    monkeypatch.setenv("DIST_RNN_DATA", "/from/env")
    assert resolve_data_dir("/flag") == Path("/flag")
    assert resolve_data_dir(None) == Path("/from/env")
    monkeypatch.delenv("DIST_RNN_DATA")
    assert resolve_data_dir(None) == Path("data")


def corrupt(root: Path, name: str, how: str) -> None:
    path = root / name
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[:-7])
    elif how == "magic":
        path.write_bytes(b"\x00\x00\x08\x09" + data[4:])
    elif how == "header":
        path.write_bytes(data[:6])
    elif how == "gzip":
        path.unlink()
        Path(f"{path}.gz").write_bytes(b"not gzip at all")
    elif how == "gzip-truncated":
        path.unlink()
        Path(f"{path}.gz").write_bytes(gzip.compress(data)[:-20])
    elif how == "missing":
        path.unlink()
    elif how == "extra":
        path.write_bytes(data + b"\x00")


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
@pytest.mark.parametrize("how,words", [
    ("missing", "missing"), ("truncate", "truncated"), ("magic", "magic number"),
    ("header", "truncated"), ("gzip", "corrupt gzip"), ("gzip-truncated", "corrupt gzip"),
    ("extra", "corrupt"),
])
def test_bad_files_name_the_file(tmp_path, name, how, words):
    root = write_mnist(tmp_path, n_train=30, n_test=10)
    corrupt(root, name, how)
    with pytest.raises(UserError) as err:
        load_mnist(root)
    message = str(err.value)
    assert name in message and words in message and "\n" not in message


def test_count_mismatch(tmp_path):
    root = write_mnist(tmp_path, n_train=30, n_test=10)
    images, _ = synthetic_split(31, seed=1)
    (root / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    with pytest.raises(UserError, match="31 images but .*30 labels"):
        load_mnist(root)


def test_label_out_of_range(tmp_path):
    root = write_mnist(tmp_path, n_train=30, n_test=10)
    (root / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(10, 11, np.uint8)))
    with pytest.raises(UserError, match="t10k-labels.*corrupt labels"):
        load_mnist(root)


@pytest.mark.skipif(real_mnist_dir() is None, reason="real MNIST files not present")
def test_real_files():
    train, test = load_mnist(real_mnist_dir())
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    mean = as_sequences(train.images).mean().item()  # the README of the data gives 0.1306604762738429
    assert abs(mean - 0.1306604762738429) < 1e-6
    assert torch.bincount(test.labels).tolist()[:2] == [980, 1135]


@pytest.mark.parametrize("world_size", [2, 4, 5])
def test_global_batches_are_the_same_at_every_world_size(world_size):
    n, batch = 1003, 100
    single = GlobalBatchSampler(n, batch, rank=0, world_size=1, seed=7)
    shards = [GlobalBatchSampler(n, batch, rank=r, world_size=world_size, seed=7) for r in range(world_size)]
    for epoch in range(2):
        for sampler in (single, *shards):
            sampler.set_epoch(epoch)
        reference = single.epoch_indices()
        parts = [s.epoch_indices() for s in shards]
        assert reference.shape == (10, 100) and parts[0].shape == (10, batch // world_size)
        # global batch k at world size W, concatenated in rank order, is batch k of one process
        assert torch.equal(torch.cat(parts, dim=1), reference)
        # iterating is the same order, one index at a time, as a DataLoader reads it
        assert list(shards[-1]) == parts[-1].reshape(-1).tolist() and len(shards[-1]) == 10 * (batch // world_size)
    single.set_epoch(0)
    first = single.epoch_indices()
    single.set_epoch(1)
    assert not torch.equal(first, single.epoch_indices())  # reshuffled every epoch


@pytest.mark.parametrize("world_size", [2, 4])
def test_length_buckets_are_batches_of_similar_lengths_the_same_at_every_world_size(world_size):
    """--bucket-batches: each global batch holds sequences of similar length (its spread far below a
    uniform draw's), every sample at most once an epoch, shuffled within the batch, and the global
    batches are the same at any world size."""
    n, batch, pool = 1003, 100, 5
    lengths = torch.randint(10, 500, (n,), generator=torch.Generator().manual_seed(1))
    plain = GlobalBatchSampler(n, batch, rank=0, world_size=1, seed=7)
    single = GlobalBatchSampler(n, batch, rank=0, world_size=1, seed=7, lengths=lengths, bucket_batches=pool)
    shards = [GlobalBatchSampler(n, batch, rank=r, world_size=world_size, seed=7, lengths=lengths,
                                 bucket_batches=pool) for r in range(world_size)]
    for epoch in range(2):
        for sampler in (plain, single, *shards):
            sampler.set_epoch(epoch)
        reference = single.epoch_indices()
        assert torch.equal(torch.cat([s.epoch_indices() for s in shards], dim=1), reference)
        assert reference.shape == (10, 100) and len(reference.unique()) == 1000
        # the epoch's samples are the uniform draw's (the same shuffle, cut otherwise)
        assert torch.equal(reference.reshape(-1).sort().values, plain.epoch_indices().reshape(-1).sort().values)
        spread = lambda batches: (lengths[batches].amax(1) - lengths[batches].amin(1)).float().mean()  # noqa: E731
        assert spread(reference) < 0.3 * spread(plain.epoch_indices())
        assert not all(lengths[b].diff().ge(0).all() for b in reference)  # not sorted inside a batch
    single.set_epoch(0)
    first = single.epoch_indices()
    single.set_epoch(1)
    assert not torch.equal(first, single.epoch_indices())


def test_k_fold_validation_splits_partition_the_training_set():
    """--val-folds 5: the 5 folds of one seed hold every training sample exactly once, each class
    spread over them within one sample, and the kept indices are the rest; another seed, other folds."""
    labels = torch.arange(103) % 3
    train = Split(torch.arange(103).float().unsqueeze(1), labels)
    folds = [validation_split(train, 0, seed=4, folds=5, fold=f) for f in range(5)]
    held = [vals.images.flatten().long() for _, vals, _ in folds]
    assert sorted(torch.cat(held).tolist()) == list(range(103))
    for (kept_split, _, kept), h in zip(folds, held):
        assert sorted(kept.tolist() + h.tolist()) == list(range(103)) and torch.equal(kept_split.labels, labels[kept])
    per_class = torch.stack([torch.bincount(labels[h], minlength=3) for h in held])
    assert (per_class.max(0).values - per_class.min(0).values).max() <= 1
    other = validation_split(train, 0, seed=5, folds=5, fold=0)[1].images.flatten().long()
    assert not torch.equal(other, held[0])
    for argv, words in ((["--val-folds", "1"], "K-fold needs K >= 2 folds"),
                        (["--val-folds", "3", "--val-fold", "3"], "a fold 0 .. K-1"),
                        (["--val-fold", "1"], "val_fold needs val_folds"),
                        (["--val-folds", "3", "--val-size", "0.1"], "each make the validation split")):
        with pytest.raises(UserError, match=words):
            parse_config(argv)


def test_sampler_is_a_distributed_sampler_that_resumes_inside_an_epoch():
    sampler = GlobalBatchSampler(1000, 100, rank=1, world_size=2, seed=3)
    assert isinstance(sampler, torch.utils.data.distributed.DistributedSampler)
    sampler.set_epoch(4)
    whole = list(sampler)
    sampler.load_state_dict({"epoch": 4, "batch_in_epoch": 6})
    assert sampler.state_dict() == {"epoch": 4, "batch_in_epoch": 6}
    assert list(sampler) == whole[6 * 50:] and len(sampler) == 4 * 50  # batches 6..9 of 50 each
    sampler.set_epoch(5)
    assert sampler.state_dict() == {"epoch": 5, "batch_in_epoch": 0} and len(sampler) == 500


def test_batch_must_divide_and_fit():
    with pytest.raises(UserError, match="does not divide over 3"):
        GlobalBatchSampler(1000, 100, rank=0, world_size=3, seed=0)
    with pytest.raises(UserError, match="larger than the training set"):
        GlobalBatchSampler(50, 100, rank=0, world_size=1, seed=0)


@pytest.mark.parametrize("n,world_size", [(10000, 3), (1001, 2), (7, 4), (3, 4)])
def test_eval_shards_cover_exactly_once(n, world_size):
    covered = [i for r in range(world_size) for i in range(n)[eval_shard(n, r, world_size)]]
    assert covered == list(range(n))


def test_sequence_views():
    images = (torch.arange(3 * 28 * 28) % 251).to(torch.uint8).reshape(3, 28, 28)
    rows = SequenceView("row")(images)
    torch.testing.assert_close(rows, as_sequences(images))
    columns = SequenceView("column")(images)
    assert columns.shape == (3, 28, 28) and torch.equal(columns[:, 5, :], rows[:, :, 5])  # step t = column t
    pixels = SequenceView("pixel")(images)
    assert pixels.shape == (3, 784, 1) and torch.equal(pixels[:, 28 * 4 + 9, 0], rows[:, 4, 9])  # row-major
    backwards = SequenceView("reversed")(images)
    assert backwards.shape == (3, 784, 1) and torch.equal(backwards[:, 0, 0], rows[:, 27, 27])  # last pixel first
    assert torch.equal(backwards.flip(1), pixels)
    view = SequenceView("permuted", permutation_seed=5)
    permuted = view(images)
    assert permuted.shape == (3, 784, 1) and torch.equal(permuted[:, :, 0], pixels[:, view.permutation, 0])
    assert sorted(view.permutation.tolist()) == list(range(784)) and view.permutation.tolist() != list(range(784))
    assert torch.equal(SequenceView("permuted", permutation_seed=5).permutation, view.permutation)  # seeded
    assert not torch.equal(SequenceView("permuted", permutation_seed=6).permutation, view.permutation)
    saved = SequenceView("permuted", permutation_seed=6, permutation=view.permutation.tolist())
    assert torch.equal(saved.permutation, view.permutation)  # a checkpoint's order wins over the seed
    assert [(v.input_size, v.steps) for v in (SequenceView(k) for k in ("row", "column", "pixel", "reversed"))] == \
        [(28, 28), (28, 28), (1, 784), (1, 784)]


def test_cropped_views_read_the_rows_the_crop_leaves():
    images = (torch.arange(2 * 28 * 28) % 251).to(torch.uint8).reshape(2, 28, 28)
    rows = SequenceView("row")(images)
    cropped = SequenceView("row", crop=(4, 4))
    assert (cropped.input_size, cropped.steps) == (28, 20) and torch.equal(cropped(images), rows[:, 4:24])
    pixels = SequenceView("pixel", crop=(8, 0))
    assert pixels.steps == 560 and torch.equal(pixels(images)[:, :, 0], rows[:, 8:].reshape(2, -1))
    assert SequenceView("permuted", crop=(0, 8)).permutation.shape == (560,)
    assert torch.equal(SequenceView("column", crop=(0, 3))(images), rows[:, :25].transpose(1, 2))
    with pytest.raises(UserError, match="leave none of the images' 28 rows"):
        SequenceView("row", crop=(14, 14))


def test_validation_split_is_stratified_seeded_and_disjoint():
    """Each class gives its share (the rounding settled by largest remainders), the seed alone picks
    the samples (nothing about ranks goes in), and no held-out sample stays in the training split."""
    images, labels = synthetic_split(1003, seed=5)
    train = Split(torch.from_numpy(images), torch.from_numpy(labels).long())
    for size, expected in [(0.1, 100), (250, 250)]:
        kept_split, val, kept = validation_split(train, size, seed=3)
        assert len(val) == expected and len(kept_split) == 1003 - expected
        held = sorted(set(range(1003)) - set(kept.tolist()))
        assert torch.equal(val.labels, train.labels[held]) and torch.equal(kept_split.images, train.images[kept])
        counts, val_counts = torch.bincount(train.labels, minlength=10), torch.bincount(val.labels, minlength=10)
        assert ((val_counts - counts * expected / 1003).abs() < 1).all()  # stratified to within one sample
        again = validation_split(train, size, seed=3)[2]
        other = validation_split(train, size, seed=4)[2]
        assert torch.equal(again, kept) and not torch.equal(other, kept)
    for size in (1003, 2000, 0.0001):
        with pytest.raises(UserError, match="must leave some for each of training and validation"):
            validation_split(train, size, seed=0)
