"""The image task: K clients train ResNet18 or the patch CNN on label partitions of real images.

Data flow (the same in simulation and on devices, every step seeded from the experiment seed):
1. The train split is loaded (`datasets.load_image_dataset`); with data.proxy_fraction > 0 the
   server's proxy share of every class is set aside (`partitions.stratified_split`, PROXY_SPLIT
   stream) and never reaches a client, whatever the initialization, so runs that differ only in
   init train on the same client data.
2. The rest is partitioned over the K clients (`partitions.image_partitions`: iid, dirichlet or
   pathological). Each client trains on all of its partition; the server keeps the test split
   (or a seeded subset of data.test_samples) to measure the global model, and saves the
   per-client label histograms and the heterogeneity H with the results.
3. A round on a client: load the global state dict, run the project's one loop
   (`initmatters_core.training.train_steps`) with cross-entropy, mini-batch SGD (momentum, weight
   decay), local epochs or steps and, with data.augment, torchvision v2 augmentation; reply with
   the new state dict.
Per round the server logs test loss/error, the alignment of the global model (the project's
extension: `initmatters_core.tasks.image.alignment`) and the update diversity of the clients.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from initmatters_core.federation import (
    ClientDataCache,
    check_partition_id,
    client_schedule,
    partition_summary,
    resolve_device,
    stratified_split,
    tensor_bytes,
)
from initmatters_core.metrics import TRANSITION_KEYS
from initmatters_core.results import cpu_state, load_state_file
from initmatters_core.seeding import Stream, int_seed, numpy_rng, torch_generator
from initmatters_core.settings import ClientSettings, ExperimentSettings, HeterogeneitySettings, SettingError
from initmatters_core.tasks.base import State, StateUpdate, TaskServer
from initmatters_core.tasks.image import alignment
from initmatters_core.tasks.image.datasets import ImageDataset, ImageDatasetInfo, load_image_dataset, to_tensors
from initmatters_core.tasks.image.models import PatchCNN, WeightsUnavailableError, load_imagenet_weights, resnet18
from initmatters_core.tasks.image.partitions import ImagePartition, image_partitions
from initmatters_core.tasks.image.settings import ImageDataSettings
from initmatters_core.tasks.image.transforms import make_batch_augment
from initmatters_core.training import local_step_count, train_steps

IMAGE_CACHE_BYTES = 2 * 2**30  # per process: the decoded images of the clients it trains (CIFAR-10: 61 MB each)
PER_CLASS_COLUMNS_UP_TO = 10  # aligned_class{c} columns for at most this many classes
RESNET_PROXY_COLUMNS = ("conv1_pc_energy", "conv1_pc_energy_chance", "conv1_pc1_abs_cos")


@functools.lru_cache(maxsize=4)
def cached_dataset(name: str, split: str, data_dir: str | None) -> ImageDataset:
    """`load_image_dataset`, once per process (the Arrow table is memory-mapped, not copied)."""
    return load_image_dataset(name, split, data_dir or None)


def check_before_start(settings: ExperimentSettings) -> None:
    """Load both splits once, resolve fl.device and load init.path (init=checkpoint), so missing data,
    an unusable device or init file fails with its one-line error before any start-up."""
    resolve_device(settings.fl.device)
    for split in ("train", "test"):
        cached_dataset(settings.data.name, split, settings.data.data_dir)
    if settings.init.name == "checkpoint":
        train = cached_dataset(settings.data.name, "train", settings.data.data_dir)
        load_checkpoint_state(settings.init.path, build_model(settings, train.info, train.num_classes))


@dataclass(frozen=True)
class ImageSplit:
    """How the train split is shared: the server's proxy rows and every client's rows."""

    train: ImageDataset
    proxy_rows: np.ndarray  # rows of the train split kept by the server
    client_rows: tuple[np.ndarray, ...]  # client k's rows of the train split, in position k
    partition: ImagePartition  # of the client pool (indices into the pool, histograms, H)


@functools.lru_cache(maxsize=4)
def image_split(data: ImageDataSettings, heterogeneity: HeterogeneitySettings, seed: int,
                num_clients: int) -> ImageSplit:
    """Proxy rows and client partitions of the train split: a pure function of the arguments."""
    train = cached_dataset(data.name, "train", data.data_dir)
    labels = train.labels
    if data.proxy_fraction > 0:
        pool, proxy = stratified_split(labels, data.proxy_fraction, numpy_rng(seed, Stream.PROXY_SPLIT))
    else:
        pool, proxy = np.arange(labels.shape[0], dtype=np.int64), np.zeros(0, dtype=np.int64)
    partition = image_partitions(
        labels[pool], heterogeneity.name, num_clients, seed, heterogeneity.alpha, heterogeneity.classes_per_client,
        num_classes=train.num_classes,
        min_partition_size=heterogeneity.min_partition_size if heterogeneity.min_partition_size is not None else 1,
    )
    return ImageSplit(train=train, proxy_rows=proxy, client_rows=tuple(pool[part] for part in partition.indices),
                      partition=partition)


def build_model(settings: ExperimentSettings, info: ImageDatasetInfo, num_classes: int) -> nn.Module:
    """The configured model with its seeded random initialization (the INIT stream)."""
    model = settings.model
    if model.name == "resnet18":
        return resnet18(num_classes, model.norm, model.cifar_stem, in_channels=info.channels,
                        seed=int_seed(settings.seed, Stream.INIT))
    if info.image_size % model.patch_size:
        raise SettingError(f"model.patch_size={model.patch_size} is invalid for data={info.name}: allowed a divisor "
                           f"of the image size {info.image_size}")
    return PatchCNN(num_classes, model.patch_size, info.channels, model.filters_per_class,
                    init_std=model.init_std, generator=torch_generator(settings.seed, Stream.INIT))


def model_from_state(settings: ExperimentSettings, info: ImageDatasetInfo, num_classes: int,
                     state: State) -> nn.Module:
    """The configured model holding `state` (every parameter and buffer)."""
    model = build_model(settings, info, num_classes)
    model.load_state_dict(state, strict=True)
    return model


def _client_cache_key(settings: ExperimentSettings, partition_id: int, num_partitions: int) -> tuple:
    return (settings.data, settings.heterogeneity, settings.seed, partition_id, num_partitions)


def client_tensors(
    settings: ExperimentSettings, partition_id: int, num_partitions: int, cache: ClientDataCache
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [n_k, C, H, W] normalised, labels [n_k]) of client `partition_id`, memoized in `cache`."""
    check_partition_id(partition_id, num_partitions)
    key = _client_cache_key(settings, partition_id, num_partitions)
    cached = cache.get(key)
    if cached is not None:
        return cached
    split = image_split(settings.data, settings.heterogeneity, settings.seed, num_partitions)
    features, labels = to_tensors(split.train, split.client_rows[partition_id])
    cache.put(key, (features, labels), tensor_bytes(features, labels))
    return features, labels


_client_cache = ClientDataCache(IMAGE_CACHE_BYTES)


def train_image_model(
    settings: ExperimentSettings, model: nn.Module, features: torch.Tensor, labels: torch.Tensor, *,
    steps: int, lr: float, batches: torch.Generator, augmentation: torch.Generator, device: torch.device,
    proximal_mu: float = 0.0,
) -> float:
    """The one loop with the image task's loss, optimizer settings and (seeded) augmentation."""
    augment = make_batch_augment(settings.data.name, augmentation) if settings.data.augment else None
    return train_steps(
        model, features, labels, functional.cross_entropy,
        steps=steps, lr=lr, batch_size=settings.fl.batch_size,
        momentum=settings.fl.momentum, weight_decay=settings.fl.weight_decay, proximal_mu=proximal_mu,
        generator=batches, transform=augment, device=device, eval_batch_size=settings.data.eval_batch_size,
    )


def local_update(
    settings: ClientSettings | ExperimentSettings, partition_id: int, num_partitions: int, global_state: State,
    init_state: State | None, server_round: int, proximal_mu: float = 0.0, cache: ClientDataCache = _client_cache,
) -> StateUpdate:
    """One client's round: local SGD from the global state on its partition of the train split."""
    if num_partitions != settings.fl.num_clients:
        raise ValueError(f"num-partitions={num_partitions} in the node config does not match the run's "
                         f"fl.num_clients={settings.fl.num_clients}")
    device = resolve_device(settings.fl.device)
    features, labels = client_tensors(settings, partition_id, num_partitions, cache)
    split = image_split(settings.data, settings.heterogeneity, settings.seed, num_partitions)
    model = model_from_state(settings, split.train.info, split.train.num_classes, global_state)
    steps = local_step_count(settings.fl.local_steps, settings.fl.local_epochs, int(labels.shape[0]),
                             settings.fl.batch_size)
    train_loss = train_image_model(
        settings, model, features, labels, steps=steps, lr=settings.fl.lr, device=device, proximal_mu=proximal_mu,
        batches=torch_generator(settings.seed, Stream.LOCAL_BATCHES, partition_id, server_round),
        augmentation=torch_generator(settings.seed, Stream.AUGMENT, partition_id, server_round),
    )
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return StateUpdate(state=state, num_examples=int(labels.shape[0]), metrics={"train_loss": train_loss})


# --- server side ----------------------------------------------------------------------------------


def server_test_tensors(settings: ExperimentSettings) -> tuple[ImageDataset, torch.Tensor, torch.Tensor]:
    """The server's test split (or its seeded subset of data.test_samples) as tensors."""
    test = cached_dataset(settings.data.name, "test", settings.data.data_dir)
    rows = None
    if 0 < settings.data.test_samples < len(test):
        chosen = numpy_rng(settings.seed, Stream.TEST_SUBSET).choice(len(test), settings.data.test_samples,
                                                                    replace=False)
        rows = np.sort(chosen)
    features, labels = to_tensors(test, rows)
    return test, features, labels


def initial_state(settings: ExperimentSettings, split: ImageSplit, device: torch.device) -> tuple[nn.Module, str]:
    """w(0) of init random / imagenet / proxy_pretrained / checkpoint, and a line saying what was done."""
    info, num_classes = split.train.info, split.train.num_classes
    model = build_model(settings, info, num_classes)
    init = settings.init
    if init.name == "random":
        return model, "random init (seeded)"
    if init.name == "imagenet":
        loaded = load_imagenet_weights(model, init.path or None)
        return model, (f"ImageNet weights from {loaded.source}: {loaded.loaded} tensors loaded, "
                       f"{len(loaded.skipped)} kept random ({', '.join(loaded.skipped[:4])}"
                       f"{', ...' if len(loaded.skipped) > 4 else ''})")
    if init.name == "proxy_pretrained":
        features, labels = to_tensors(split.train, split.proxy_rows)
        loss = train_image_model(settings, model, features, labels, steps=init.steps, lr=init.lr, device=device,
                                 batches=torch_generator(settings.seed, Stream.SOURCE),
                                 augmentation=torch_generator(settings.seed, Stream.AUGMENT))
        model.cpu()
        return model, (f"pre-trained centrally for {init.steps} steps on the server's proxy split "
                       f"({len(labels)} images), final proxy loss {loss:.4f}")
    if init.name == "checkpoint":
        model.load_state_dict(load_checkpoint_state(init.path, model), strict=True)
        return model, f"checkpoint {init.path}"
    raise SettingError(f"init={init.name!r} is invalid: allowed random|imagenet|proxy_pretrained|checkpoint")


def load_checkpoint_state(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """A saved state dict checked against `model` (same names, shapes, finite values), one-line errors."""
    state = load_state_file(path)
    own = model.state_dict()
    if not isinstance(state, Mapping) or set(state) != set(own):
        raise WeightsUnavailableError(f"init.path={str(path)!r} is not a state dict of this model "
                                      f"(expected the {len(own)} tensors of model={type(model).__name__})")
    wrong = [key for key in own if tuple(state[key].shape) != tuple(own[key].shape)]
    if wrong:
        raise WeightsUnavailableError(f"init.path={str(path)!r} has other shapes than this model for {wrong[:3]}")
    nonfinite = [key for key, value in state.items() if value.is_floating_point() and not bool(value.isfinite().all())]
    if nonfinite:
        raise WeightsUnavailableError(f"init.path={str(path)!r} holds non-finite values in {nonfinite[:3]}")
    return dict(state)


def _alignment_function(settings: ExperimentSettings, init_model: nn.Module, features: torch.Tensor,
                        labels: torch.Tensor, num_classes: int):
    """(rounds.csv alignment columns, state -> alignment metrics) of the configured model."""
    if settings.model.name == "patch_cnn":
        signals = alignment.class_mean_signals(features, labels, num_classes, settings.model.patch_size)
        init_weight = init_model.state_dict()["weight"].detach().clone()
        per_class = num_classes <= PER_CLASS_COLUMNS_UP_TO
        columns = ("aligned", "misaligned", *(f"aligned_class{c}" for c in range(num_classes) if per_class),
                   *TRANSITION_KEYS)

        def patch_alignment(state: State) -> dict[str, float]:
            weight = state["weight"]
            return {**alignment.alignment_counts(weight, signals, per_class=per_class),
                    **alignment.transition_counts(init_weight, weight, signals)}

        return columns, patch_alignment
    kernel = int(init_model.state_dict()["conv1.weight"].shape[-1])
    basis = alignment.data_patch_basis(features, kernel, generator=torch_generator(settings.seed,
                                                                                   Stream.ALIGNMENT_BASIS))

    def resnet_alignment(state: State) -> dict[str, float]:
        return alignment.first_layer_alignment(state["conv1.weight"], basis)

    return RESNET_PROXY_COLUMNS, resnet_alignment


@torch.no_grad()
def evaluate(model: nn.Module, features: torch.Tensor, labels: torch.Tensor, batch_size: int,
             device: torch.device) -> dict[str, float]:
    """Cross-entropy and error rate of `model` on (features, labels), in eval mode."""
    model.to(device).eval()
    loss_sum, errors = 0.0, 0
    for start in range(0, int(labels.shape[0]), batch_size):
        x = features[start:start + batch_size].to(device)
        y = labels[start:start + batch_size].to(device)
        logits = model(x)
        loss_sum += float(functional.cross_entropy(logits, y, reduction="sum"))
        errors += int((logits.argmax(dim=1) != y).sum())
    count = max(int(labels.shape[0]), 1)
    return {"test_loss": loss_sum / count, "test_error": errors / count}


def server_setup(settings: ExperimentSettings) -> TaskServer:
    """The image task's server side (see the module docstring)."""
    device = resolve_device(settings.fl.device)
    split = image_split(settings.data, settings.heterogeneity, settings.seed, settings.fl.num_clients)
    test, features, labels = server_test_tensors(settings)
    info, num_classes = split.train.info, split.train.num_classes
    init_model, how = initial_state(settings, split, device)
    init_state = cpu_state(init_model.state_dict())
    alignment_columns, alignment_fn = _alignment_function(settings, init_model, features, labels, num_classes)
    eval_model = build_model(settings, info, num_classes)

    def central(state: State) -> dict[str, float]:
        eval_model.load_state_dict(state, strict=True)
        return {**evaluate(eval_model, features, labels, settings.data.eval_batch_size, device), **alignment_fn(state)}

    partition = split.partition
    class_names = [str(c) for c in range(num_classes)]
    return TaskServer(
        init_state=init_state,
        central_metrics=central,
        round_columns=("round", "train_loss", "test_loss", "test_error", *alignment_columns, "update_diversity",
                       "clients", "elapsed_s"),
        partition={**partition_summary(partition.histograms, partition.heterogeneity, class_names, partition.attempts),
                   "mean_tv": partition.mean_tv, "proxy_size": int(split.proxy_rows.shape[0]),
                   "test_size": int(labels.shape[0])},
        realised_h=partition.heterogeneity,
        schedule=client_schedule(settings.fl.num_clients, settings.fl.fraction_train, settings.fl.num_rounds,
                                 settings.seed),
        description=(f"data={info.name} from {split.train.source} ({len(split.train)} train, "
                     f"{split.proxy_rows.shape[0]} proxy, {labels.shape[0]} test of {len(test)}), "
                     f"H={partition.heterogeneity:.4f}, device={device}; {how}"),
        progress_metric=alignment_columns[1] if settings.model.name == "patch_cnn" else alignment_columns[0],
    )
