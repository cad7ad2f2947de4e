"""Image datasets: scikit-learn's digits offline; CIFAR-10 and TinyImageNet through flwr-datasets.

`load_image_dataset(name, split, data_dir)` returns an `ImageDataset`: a `datasets.Dataset` with
the columns "image" and "label" (int), its class count and the dataset's constants.

- digits: scikit-learn's bundled `load_digits` (1797 real 8x8 handwritten digits, 10 classes,
  no download). The image column holds float32 arrays [1, 8, 8] in [0, 1] (pixel / 16). The
  train/test split is fixed: a stratified 20% test share drawn with `DIGITS_SPLIT_SEED`, so
  every experiment seed sees the same test set (1438 train, 359 test images).
- cifar10 ("uoft-cs/cifar10", columns img/label, renamed to image/label) and tinyimagenet
  ("zh-plus/tiny-imagenet", image/label; its "valid" split is our "test") come through
  flwr_datasets.FederatedDataset, in this order:
  1. a local copy in `data_dir`: parquet files in the Hub's layout (`<split>-*.parquet` or
     `<split>.parquet`, directly in `data_dir` or up to two folders below it, as
     `hf download <id> --repo-type dataset --local-dir <dir>` writes them), loaded with
     `FederatedDataset(dataset="parquet", data_files=...)`; else an image folder
     `<data_dir>/<split>/<class name>/<image>` (labels are the sorted class folder names),
     loaded with `FederatedDataset(dataset="imagefolder", data_files=...)`;
  2. the Hugging Face Hub (or its local cache when HF_HUB_OFFLINE=1). Without offline mode the
     Hub is first probed for a few seconds, so a machine without internet fails at once
     instead of retrying for ~25 s.
  When neither works, `DataUnavailableError` (a `SettingError`) says so in one line, with the
  command that makes a local copy.

Train/test handling per client (the integration's contract): the clients' data are the
partitions (`initmatters_core.federation.image_partitions`) of the train split, each client
trains on all of its partition; the test split is held by the server and only used to measure
the global model; a server-side proxy set for central pre-training is carved out of the train
split with `partitions.stratified_split` before partitioning, so clients never see it.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from initmatters_core.settings import SettingError

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
SPLITS = ("train", "test")
DIGITS_SPLIT_SEED = 20250212
DIGITS_TEST_FRACTION = 0.2
HUB_PROBE_TIMEOUT_S = 5.0

# Where a local copy may hold each of our splits (file or folder name prefixes).
_SPLIT_ALIASES = {"train": ("train",), "test": ("test", "valid", "validation", "val")}


class DataUnavailableError(SettingError):
    """A dataset is neither available locally nor downloadable; the message is one line."""


@dataclass(frozen=True)
class ImageDatasetInfo:
    """Constants of one dataset: where it lives on the Hub and how its images look."""

    name: str
    hub_id: str | None  # None: bundled, never downloaded
    hub_image_column: str
    hub_splits: tuple[tuple[str, str], ...]  # (our split, the Hub's split)
    num_classes: int
    channels: int
    image_size: int  # height = width
    mean: tuple[float, ...]  # per-channel normalisation of pixel values in [0, 1]
    std: tuple[float, ...]

    def hub_split(self, split: str) -> str:
        return dict(self.hub_splits)[split]

    def download_hint(self) -> str:
        return f"`hf download {self.hub_id} --repo-type dataset --local-dir <dir>`"


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, ImageDatasetInfo] = {
    "digits": ImageDatasetInfo(
        name="digits", hub_id=None, hub_image_column=IMAGE_COLUMN, hub_splits=(("train", "train"), ("test", "test")),
        num_classes=10, channels=1, image_size=8, mean=(0.3053,), std=(0.3760,),
    ),
    "cifar10": ImageDatasetInfo(
        name="cifar10", hub_id="uoft-cs/cifar10", hub_image_column="img",
        hub_splits=(("train", "train"), ("test", "test")), num_classes=10, channels=3, image_size=32,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ),
    "tinyimagenet": ImageDatasetInfo(
        name="tinyimagenet", hub_id="zh-plus/tiny-imagenet", hub_image_column=IMAGE_COLUMN,
        hub_splits=(("train", "train"), ("test", "valid")), num_classes=200, channels=3, image_size=64,
        mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
    ),
}
DATASET_NAMES = tuple(DATASETS)


@dataclass(frozen=True)
class ImageDataset:
    """One split of an image dataset: columns "image" and "label", and where it came from."""

    dataset: datasets.Dataset
    num_classes: int
    info: ImageDatasetInfo
    source: str  # "sklearn", "hub", "parquet:<dir>" or "imagefolder:<dir>"

    @property
    def labels(self) -> np.ndarray:
        """All labels as an int64 array (cheap: reads only the label column)."""
        return _column(self.dataset, LABEL_COLUMN).astype(np.int64)

    def __len__(self) -> int:
        return self.dataset.num_rows


def load_image_dataset(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    probe_timeout_s: float = HUB_PROBE_TIMEOUT_S,
) -> ImageDataset:
    """Split `split` ("train" or "test") of dataset `name` (digits, cifar10, tinyimagenet).

    `data_dir` is a local copy (parquet files in the Hub layout, or an image folder), tried
    before the Hub; `cache_dir` is the datasets cache (default: the Hugging Face one). Raises
    `DataUnavailableError` (one line) when the data can be neither found nor downloaded.
    """
    if name not in DATASETS:
        raise SettingError(f"data.name={name!r} is invalid: allowed {'|'.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: allowed {'|'.join(SPLITS)}")
    info = DATASETS[name]
    if info.hub_id is None:
        return _load_digits(split)
    local = _find_local_copy(split, Path(data_dir)) if data_dir else None
    if local is not None:
        builder, data_files, folder = local
        dataset = _federated_split(builder, split, cache_dir, data_files=data_files)
        return _finish(dataset, info, f"{builder}:{folder}")
    try:
        dataset = _load_from_hub(info, split, cache_dir, probe_timeout_s)
    except _DownloadFailed as failure:
        where = f"at {data_dir}" if data_dir else "(data.data_dir is not set)"
        raise DataUnavailableError(
            f"data.name={name}: no local copy {where} (expected {split}-*.parquet files or a {split}/ image folder)"
            f" and the download failed ({failure}); download it on a machine with internet with"
            f" {info.download_hint()} and pass data.data_dir=<dir>"
        ) from None
    return _finish(dataset, info, "hub")


def to_tensors(
    data: ImageDataset, indices: Sequence[int] | np.ndarray | None = None, *, normalize: bool = True,
    chunk_size: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 [N, C, H, W], labels int64 [N]) of the rows `indices` (all if None).

    Pixels are scaled to [0, 1] and, with `normalize`, standardised per channel with the
    dataset's mean/std. Decodes `chunk_size` images at a time; only the selected rows are read.
    """
    info = data.info
    rows = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=np.int64)
    images, labels = [], []
    for start in range(0, rows.shape[0], chunk_size):
        part = data.dataset.select(rows[start:start + chunk_size].tolist())
        labels.append(_column(part, LABEL_COLUMN).astype(np.int64))
        if isinstance(part.features[IMAGE_COLUMN], datasets.Image):
            images.append(_decode_images(part.select_columns([IMAGE_COLUMN])[:][IMAGE_COLUMN], info))
        else:
            images.append(_column(part, IMAGE_COLUMN).astype(np.float32))
    shape = (info.channels, info.image_size, info.image_size)
    features = torch.from_numpy(np.concatenate(images)) if images else torch.zeros(0, *shape)
    if normalize:
        mean = torch.tensor(info.mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.tensor(info.std, dtype=torch.float32).reshape(1, -1, 1, 1)
        features = (features - mean) / std
    label_tensor = torch.from_numpy(np.concatenate(labels)) if labels else torch.zeros(0, dtype=torch.int64)
    return features.contiguous(), label_tensor


def _column(dataset: datasets.Dataset, name: str) -> np.ndarray:
    """One column as a NumPy array, read in one batch (row-wise Column access is slow)."""
    return np.asarray(dataset.select_columns([name]).with_format("numpy")[:][name])


def _decode_images(images: list, info: ImageDatasetInfo) -> np.ndarray:
    mode = "RGB" if info.channels == 3 else "L"
    arrays = [np.asarray(image.convert(mode), dtype=np.uint8) for image in images]
    expected = (info.image_size, info.image_size)
    for array in arrays:
        if array.shape[:2] != expected:
            raise ValueError(
                f"data.name={info.name}: an image is {array.shape[1]}x{array.shape[0]}, expected "
                f"{info.image_size}x{info.image_size}"
            )
    stacked = np.stack(arrays).astype(np.float32) / 255.0
    return stacked[:, None] if info.channels == 1 else stacked.transpose(0, 3, 1, 2)


# --- digits ---------------------------------------------------------------------------------------


def _load_digits(split: str) -> ImageDataset:
    from sklearn.datasets import load_digits

    from initmatters_core.federation import stratified_split

    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_rows, test_rows = stratified_split(
        labels, DIGITS_TEST_FRACTION, np.random.default_rng(DIGITS_SPLIT_SEED)
    )
    rows = train_rows if split == "train" else test_rows
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[rows][:, None]
    features = datasets.Features({
        IMAGE_COLUMN: datasets.Array3D(shape=(1, 8, 8), dtype="float32"),
        LABEL_COLUMN: datasets.ClassLabel(names=[str(digit) for digit in range(10)]),
    })
    dataset = datasets.Dataset.from_dict({IMAGE_COLUMN: images, LABEL_COLUMN: labels[rows]}, features=features)
    return ImageDataset(dataset=dataset, num_classes=10, info=DATASETS["digits"], source="sklearn")


# --- local copies and the Hub, through FederatedDataset -------------------------------------------


class _DownloadFailed(Exception):
    """Internal: why the Hub could not provide the dataset (a short phrase)."""


def _find_local_copy(split: str, data_dir: Path) -> tuple[str, dict[str, list[str]], Path] | None:
    """(builder, data_files, folder) of a local copy of `split` in `data_dir`, or None."""
    if not data_dir.is_dir():
        return None
    for alias in _SPLIT_ALIASES[split]:
        files: list[Path] = []
        for depth in ("", "*/", "*/*/"):
            files += data_dir.glob(f"{depth}{alias}-*.parquet")
            files += data_dir.glob(f"{depth}{alias}.parquet")
        if files:
            return "parquet", {split: sorted(str(path) for path in set(files))}, data_dir
    for alias in _SPLIT_ALIASES[split]:
        folder = data_dir / alias
        if folder.is_dir() and any(child.is_dir() for child in folder.iterdir()):
            return "imagefolder", {split: [str(folder / "**")]}, data_dir
    return None


def _federated_split(dataset_name: str, split: str, cache_dir: str | Path | None, **load_kwargs) -> datasets.Dataset:
    """The whole split `split` through flwr-datasets' FederatedDataset (no shuffling).

    FederatedDataset needs a partitioner; clients are partitioned later on the labels alone
    (`image_partitions`), so the one here is a placeholder that is never used.
    """
    from flwr_datasets import FederatedDataset

    if cache_dir is not None:
        load_kwargs["cache_dir"] = str(cache_dir)
    federated = FederatedDataset(dataset=dataset_name, partitioners={split: 1}, shuffle=False, **load_kwargs)
    return federated.load_split(split)


def _hub_offline() -> bool:
    import huggingface_hub

    return bool(huggingface_hub.is_offline_mode() or datasets.config.HF_HUB_OFFLINE)


def _probe_hub(timeout_s: float) -> None:
    """Raise _DownloadFailed within about `timeout_s` when the Hub cannot be reached."""
    from huggingface_hub import constants

    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # the server answered: reachable
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise _DownloadFailed(f"{constants.ENDPOINT} is unreachable: {_one_line(reason)}") from None


def _load_from_hub(info: ImageDatasetInfo, split: str, cache_dir: str | Path | None, probe_timeout_s: float):
    assert info.hub_id is not None
    offline = _hub_offline()
    if not offline:
        _probe_hub(probe_timeout_s)
    try:
        from flwr_datasets import FederatedDataset

        kwargs = {"cache_dir": str(cache_dir)} if cache_dir is not None else {}
        hub_split = info.hub_split(split)
        federated = FederatedDataset(dataset=info.hub_id, partitioners={hub_split: 1}, shuffle=False, **kwargs)
        return federated.load_split(hub_split)
    except Exception as error:  # the Hub and datasets raise many types; all mean "not available"
        prefix = "offline: HF_HUB_OFFLINE=1 and no copy in the Hugging Face cache; " if offline else ""
        raise _DownloadFailed(f"{prefix}{type(error).__name__}: {_one_line(error)}") from None


def _one_line(error: object, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finish(dataset: datasets.Dataset, info: ImageDatasetInfo, source: str) -> ImageDataset:
    """Rename the image column to "image", keep image/label, check the labels and class count."""
    if info.hub_image_column in dataset.column_names and info.hub_image_column != IMAGE_COLUMN:
        dataset = dataset.rename_column(info.hub_image_column, IMAGE_COLUMN)
    missing = {IMAGE_COLUMN, LABEL_COLUMN} - set(dataset.column_names)
    if missing:
        raise DataUnavailableError(
            f"data.name={info.name}: the copy at {source} lacks the column(s) {sorted(missing)}; it has "
            f"{dataset.column_names} (expected {info.hub_image_column!r} and {LABEL_COLUMN!r})"
        )
    dataset = dataset.select_columns([IMAGE_COLUMN, LABEL_COLUMN])
    feature = dataset.features[LABEL_COLUMN]
    num_classes = int(feature.num_classes) if isinstance(feature, datasets.ClassLabel) else info.num_classes
    labels = _column(dataset, LABEL_COLUMN).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataUnavailableError(
            f"data.name={info.name}: labels of the copy at {source} span {labels.min()}..{labels.max()}, "
            f"expected 0..{num_classes - 1}"
        )
    return ImageDataset(dataset=dataset, num_classes=num_classes, info=info, source=source)
