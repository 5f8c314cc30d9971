"""Data sources selected by config.data.source, and the input pipeline.

Sources give random access to records: len(), raw(i) (a decoded uint8 array or a file to
decode), label(i), describe(i) (for logs) and fingerprint() (identifies the data for exact
resume), plus images()/labels() for the evaluators. mdistill.data.pipeline turns any of
them into globally sharded training batches."""

from __future__ import annotations

from mdistill.data.errors import DataError
from mdistill.data.fashion_mnist import FashionMNISTSource
from mdistill.data.image_folder import ImageFolderSource
from mdistill.data.kinds import VIDEO_SOURCES, gives_clips
from mdistill.data.pipeline import Pipeline
from mdistill.data.sources import SOURCES, build_source, dataset_size, records_per_step
from mdistill.data.synthetic import SyntheticSource
from mdistill.data.tfds_source import TFDSSource

__all__ = ["DataError", "FashionMNISTSource", "ImageFolderSource", "Pipeline", "SOURCES", "VIDEO_SOURCES",
           "SyntheticSource", "TFDSSource", "build_source", "dataset_size", "gives_clips", "records_per_step"]
