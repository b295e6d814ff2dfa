"""The data layer: sources (IDX image sets, UCR/UEA time series, Arrow/Parquet, arrays from Python),
splits, the sampler that orders them, the feeders that batch them, and the views that turn them into
what the RNN reads. Each source returns its splits and a DataInfo (sources.py): all the Trainer knows
of the data. Nothing here imports the command layer (`python -m dist_rnn.data` is __main__.py).

    sources.py   load_dataset, DataInfo                       idx.py     the IDX image sets
    series.py    .ts problems, SeriesInfo, SeriesView          splits.py  Split, validation_split
    arrow.py     Arrow/Parquet data, ArrowSplit (read from disk)
    arrays.py    SequenceDataset: sequences from Python       sampler.py GlobalBatchSampler, eval_shard
    views.py     ImageInfo, SequenceView (rows, columns, pixels), trained_view
    files.py     what predict reads (digits.py: images as MNIST digits)
    feeders.py   MemoryFeeder, DataLoaderFeeder
"""

from dist_rnn.data.arrow import ArrowSplit
from dist_rnn.data.feeders import DataLoaderFeeder, MemoryFeeder, feeder
from dist_rnn.data.idx import (
                               IMAGES_MAGIC,
                               LABELS_MAGIC,
                               NUM_CLASSES,
                               SPLIT_FILES,
                               download_mnist,
                               find_file,
                               have_files,
                               import_torchvision,
                               load_mnist,
                               load_split,
                               read_idx,
                               resolve_data_dir,
                               torchvision_root,
)
from dist_rnn.data.sampler import GlobalBatchSampler, eval_shard
from dist_rnn.data.series import SeriesInfo, SeriesView, load_series
from dist_rnn.data.sources import DataInfo, default_data_dir, is_path, load_dataset
from dist_rnn.data.splits import Split, validation_split
from dist_rnn.data.views import SEQUENCES, ImageInfo, InputView, SequenceView, as_sequences, trained_view

__all__ = ["ArrowSplit", "DataInfo", "DataLoaderFeeder", "GlobalBatchSampler", "IMAGES_MAGIC", "ImageInfo", "InputView",
           "LABELS_MAGIC", "MemoryFeeder", "NUM_CLASSES", "SEQUENCES", "SPLIT_FILES", "SequenceView", "SeriesInfo",
           "SeriesView", "Split", "as_sequences", "default_data_dir", "download_mnist", "eval_shard", "feeder", "find_file",
           "have_files", "import_torchvision", "is_path", "load_dataset", "load_mnist", "load_series", "load_split",
           "read_idx", "resolve_data_dir", "torchvision_root", "trained_view", "validation_split"]
