"""Data: readers (BUSI, UDIAT, generic folder), the generated phantom, splits, transforms, loaders.

Usage::

    from hermes.data import DataConfig, build_data
    data = build_data(DataConfig(dataset="busi", root="/path/Dataset_BUSI_with_GT", labeled=72))
    batch = next(iter(data.labeled))  # {"image", "mask", "label", "id"}

``DataConfig()`` with no arguments uses the phantom, generated on first use and cached.
"""

from hermes.data.build import DATASETS, Data, DataConfig, build_data, load_records
from hermes.data.datasets import LabeledDataset, UnlabeledDataset, load_sample
from hermes.data.io import load_image, load_mask, load_masks
from hermes.data.readers import Record, read_busi, read_dataset, read_folder, read_udiat
from hermes.data.splits import Split, duplicate_groups, make_split
from hermes.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize


def __getattr__(name: str):
    # The phantom module is imported lazily, so that ``python -m hermes.data.phantom`` does not
    # find it already imported by the package.
    if name in ("PhantomConfig", "ensure_phantom"):
        from hermes.data import phantom

        return getattr(phantom, name)
    raise AttributeError(f"module 'hermes.data' has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "Data",
    "DataConfig",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LabeledDataset",
    "PhantomConfig",
    "Record",
    "Split",
    "UnlabeledDataset",
    "build_data",
    "denormalize",
    "duplicate_groups",
    "ensure_phantom",
    "load_image",
    "load_mask",
    "load_masks",
    "load_records",
    "load_sample",
    "make_split",
    "read_busi",
    "read_dataset",
    "read_folder",
    "read_udiat",
]
