"""What a prepared TFDS dataset holds, read from its build folder without TensorFlow:
<data_dir>/<name>[/<config>]/<version>/ with dataset_info.json (splits, shards, file format)
and features.json (each feature's kind, shape, dtype, encoding). tfds.builder / data_source
build the features from features.json, and a Video feature's constructor imports TensorFlow
(tfds 4.9.10), so the video reader (mdistill.data.tfds_video) reads these files through
tfds's TF-free protos and helpers instead. Also how to prepare a build (prepare_hint), for
both TFDS readers' errors."""

from __future__ import annotations

import os

VIDEO = "tensorflow_datasets.core.features.video_feature.Video"
IMAGE = "tensorflow_datasets.core.features.image_feature.Image"
CLASS_LABEL = "tensorflow_datasets.core.features.class_label_feature.ClassLabel"

HOW_TO_PREPARE = {
    "imagenet2012": ("put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) in "
                     "<data_dir>/downloads/manual, then run "),
}


def prepare_hint(name: str, data_dir: str | None) -> str:
    where = data_dir or "~/tensorflow_datasets"
    return (f"Prepare it once (this step needs TensorFlow, and internet unless the files are a manual download): "
            f"{HOW_TO_PREPARE.get(name, '')}`tfds build {name} --data_dir={where} --file_format=array_record`, "
            f"and set config.data.data_dir={where!r}.")


def _version_key(name: str):
    parts = name.split(".")
    return tuple(int(p) for p in parts) if len(parts) == 3 and all(p.isdigit() for p in parts) else None


def _versions(folder, version: str = "") -> list[str]:
    """The built versions in `folder` (those with a dataset_info.json), oldest first."""
    if version:
        return [version] if (folder / version / "dataset_info.json").exists() else []
    found = folder.iterdir() if folder.is_dir() else []
    return sorted((v.name for v in found if _version_key(v.name) and (v / "dataset_info.json").exists()),
                  key=_version_key)


def builder_dir(name: str, data_dir: str | None):
    """The build folder of `name` ('ucf101', 'ucf101/ucf101_1_256', 'ucf101:2.0.0'): the
    version asked for, else the newest one that has a dataset_info.json. A dataset with
    configs (`tfds build ucf101` writes ucf101/ucf101_1_256/<version>) is found without its
    config when only one config is built."""
    from etils import epath

    root = epath.Path(data_dir or os.path.expanduser("~/tensorflow_datasets"))
    base, _, version = name.partition(":")
    folder = root / base
    versions = _versions(folder, version)
    if not versions and "/" not in base and folder.is_dir():
        configs = sorted(c.name for c in folder.iterdir() if c.is_dir() and _versions(c, version))
        if len(configs) > 1:
            raise FileNotFoundError(f"TFDS dataset {name!r} in {os.fspath(root)!r} is built in several configs "
                                    f"{configs}: name one, e.g. config.data.name='{base}/{configs[0]}'")
        if configs:
            folder = folder / configs[0]
            versions = _versions(folder, version)
    if not versions:
        raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {os.fspath(root)!r} (no "
                                f"{os.fspath(folder)}/<version>/dataset_info.json). " + prepare_hint(base, data_dir))
    return folder / versions[-1]


class BuildInfo:
    """A build folder's dataset_info.json and features.json as tfds's protos."""

    def __init__(self, name: str, data_dir: str | None):
        from google.protobuf import json_format
        from tensorflow_datasets.core import dataset_info, naming, splits
        from tensorflow_datasets.core.proto import feature_pb2

        self.name, self.data_dir = name, data_dir
        self.directory = builder_dir(name, data_dir)
        self.proto = dataset_info.read_proto_from_builder_dir(self.directory)
        template = naming.ShardedFileTemplate(data_dir=self.directory, dataset_name=self.proto.name,
                                              filetype_suffix=self.proto.file_format or "tfrecord")
        self.splits = splits.SplitDict.from_proto(self.proto.splits, template)
        features = self.directory / "features.json"
        if not features.exists():
            raise FileNotFoundError(f"TFDS dataset {name!r}: {os.fspath(features)} is missing (a build by an old "
                                    "tfds?): " + prepare_hint(name.partition(":")[0], data_dir))
        self.features = json_format.Parse(features.read_text(), feature_pb2.Feature(), ignore_unknown_fields=True)

    @property
    def file_format(self) -> str:
        return self.proto.file_format or "tfrecord"

    @property
    def features_file(self) -> str:
        return os.fspath(self.directory / "features.json")

    def top_level(self) -> dict:
        """{key: its feature proto} of the top-level FeaturesDict."""
        return dict(self.features.features_dict.features)

    def kinds(self) -> dict[str, str]:
        """{key: the feature's class name, e.g. 'Video', 'Image', 'ClassLabel'}."""
        return {k: f.python_class_name.rsplit(".", 1)[-1] for k, f in self.top_level().items()}

    def class_names(self, key: str) -> list[str] | None:
        """A ClassLabel feature's names (its <key>.labels.txt), or None where it has none."""
        feature = self.top_level().get(key)
        if feature is None or feature.python_class_name != CLASS_LABEL:
            return None
        names = self.directory / f"{key}.labels.txt"
        if names.exists():
            return [line for line in names.read_text().splitlines() if line]
        count = int(feature.class_label.num_classes)
        return [str(i) for i in range(count)] if count else None
