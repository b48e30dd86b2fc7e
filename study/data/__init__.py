"""Data for flow matching: built-in toy distributions, data files, splits, augmentations.

The `augment` function is not re-exported: `study.data.augment` stays the module.
"""

from study.data.augment import AUGMENTATIONS
from study.data.dataset import DataSplits, FlowDataset, gather_rows, resolve_dataset
from study.data.toy import TOY_DATASETS, gaussian_mixture, sample_source

__all__ = [
    "AUGMENTATIONS",
    "TOY_DATASETS",
    "DataSplits",
    "FlowDataset",
    "gather_rows",
    "gaussian_mixture",
    "resolve_dataset",
    "sample_source",
]
