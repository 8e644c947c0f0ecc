"""The data layer: label lists, records, text decoding and cleaning, images, splits, checks."""

from mmsent.data.labels import LabelEntry, read_label_file
from mmsent.data.records import DataSet, Record, load_dataset, load_records
from mmsent.data.splits import stratified_split

__all__ = [
    "DataSet",
    "LabelEntry",
    "Record",
    "load_dataset",
    "load_records",
    "read_label_file",
    "stratified_split",
]
