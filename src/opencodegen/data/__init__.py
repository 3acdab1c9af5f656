"""Code-corpus pipeline: read, filter, dedup, tokenize and pack a corpus; read it back for training."""

from opencodegen.data.build import BuildConfig, build_dataset
from opencodegen.data.dataset import BatchIterator, PackedDataset, read_manifest

__all__ = ["BatchIterator", "BuildConfig", "PackedDataset", "build_dataset", "read_manifest"]
