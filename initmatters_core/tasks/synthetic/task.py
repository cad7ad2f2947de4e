"""The synthetic task: what a client does in a round and what the server sets up and measures.

Plain functions over tensors and typed settings; client_app/ and server_app/ adapt them to
Flower messages. The model travels as the state dict {"weight": [2, m, d]}.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from initmatters_core.federation import (
    ClientDataCache,
    check_partition_id,
    client_schedule,
    partition_summary,
    resolve_device,
    tensor_bytes,
)
from initmatters_core.seeding import Stream, torch_generator
from initmatters_core.settings import ClientSettings, ExperimentSettings, HeterogeneitySettings
from initmatters_core.tasks.base import State, StateUpdate, TaskServer
from initmatters_core.tasks.synthetic.alignment import alignment_report, noise_memorization_summary
from initmatters_core.tasks.synthetic.data import SignalNoiseData, fresh_test_set, signal_vector
from initmatters_core.tasks.synthetic.initialization import initial_weight, load_weight
from initmatters_core.tasks.synthetic.model import WEIGHT_KEY, classification_error, logistic_loss, model_from_weight
from initmatters_core.tasks.synthetic.partition import (
    CLASSES,
    SkewMeasures,
    examples_for_labels,
    measure_skews,
    partition_true_labels,
    realised_heterogeneity,
)
from initmatters_core.tasks.synthetic.population import POPULATION_COLUMNS, population_draws, population_metrics
from initmatters_core.tasks.synthetic.regime import regime_facts, regime_line, regime_warnings, skew_regime_facts
from initmatters_core.tasks.synthetic.settings import DataSettings
from initmatters_core.tasks.synthetic.skew import all_client_skews
from initmatters_core.training import local_step_count, train_steps

# Column order of rounds.csv; blank cells mean "not measured this round" (e.g. train metrics at
# round 0, where no client has trained yet). The pop_* columns exist only with
# data.population_samples > 0 (round_columns).
ROUND_COLUMNS = (
    "round",
    "train_loss",
    "test_loss",
    "test_error",
    *POPULATION_COLUMNS,
    "aligned",
    "misaligned",
    "aligned_pos",
    "misaligned_pos",
    "aligned_neg",
    "misaligned_neg",
    "misaligned_init_aligned_now",
    "misaligned_init_misaligned_now",
    "aligned_init_aligned_now",
    "aligned_init_misaligned_now",
    "gamma_aligned_init_mean",
    "gamma_misaligned_init_mean",
    "rho_same_mean",
    "rho_other_mean",
    "update_diversity",
    "clients",
    "elapsed_s",
)


def round_columns(data: DataSettings) -> tuple[str, ...]:
    """This run's rounds.csv columns: ROUND_COLUMNS, less the pop_* ones when
    data.population_samples = 0."""
    if data.population_samples > 0:
        return ROUND_COLUMNS
    return tuple(column for column in ROUND_COLUMNS if column not in POPULATION_COLUMNS)


# Per-process cache of client data: all 1000 clients of d = 1000, n = 20 (160 KB each) fit.
DATA_CACHE_BYTES = 256 * 2**20


@functools.lru_cache(maxsize=4)
def _partition_labels(
    heterogeneity: HeterogeneitySettings, seed: int, num_partitions: int, samples_per_client: int
) -> tuple[np.ndarray, ...]:
    labels, _ = partition_true_labels(heterogeneity, seed, num_partitions, samples_per_client)
    for part in labels:
        part.setflags(write=False)
    return tuple(labels)


_client_data_cache = ClientDataCache(DATA_CACHE_BYTES)


def cached_client_dataset(
    data: DataSettings,
    heterogeneity: HeterogeneitySettings,
    seed: int,
    partition_id: int,
    num_partitions: int,
) -> SignalNoiseData:
    """`partition.client_dataset` for mu = signal_vector(data), memoized per process.

    Same numbers as client_dataset (same label partition, skew factors and CLIENT_DATA stream); the label
    partition of all clients is computed once per process instead of once per call.
    """
    check_partition_id(partition_id, num_partitions)
    key = (data, heterogeneity, seed, partition_id, num_partitions)
    cached = _client_data_cache.get(key)
    if cached is not None:
        return cached
    labels = _partition_labels(heterogeneity, seed, num_partitions, data.samples_per_client)
    signal = signal_vector(data.dim, data.signal_norm)
    skew = all_client_skews(heterogeneity, seed, num_partitions)[partition_id]
    result = examples_for_labels(data, seed, partition_id, labels[partition_id], signal, skew)
    _client_data_cache.put(key, result, tensor_bytes(result.features, result.labels, result.true_labels))
    return result


def clear_client_data_cache() -> None:
    """Drop this process's cached client data and label partitions."""
    _client_data_cache.clear()
    _partition_labels.cache_clear()


def check_before_start(settings: ExperimentSettings) -> None:
    """What a local run needs beyond valid settings, checked before any start-up (one-line
    SettingError): the training device (fl.device=cuda without a GPU), a Dirichlet partition that
    reaches heterogeneity.min_partition_size and, with init=checkpoint, a usable init.path. Every
    client draws its data from the seed, so there is no data to check."""
    resolve_device(settings.fl.device)
    if settings.heterogeneity.name == "dirichlet":
        _partition_labels(settings.heterogeneity, settings.seed, settings.fl.num_clients,
                          settings.data.samples_per_client)
    if settings.init.name == "checkpoint":
        load_weight(settings.init.path, settings.data.dim, settings.model.filters_per_class)


def local_update(
    settings: ClientSettings | ExperimentSettings,
    partition_id: int,
    num_partitions: int,
    global_state: State,
    init_state: State | None,
    server_round: int,
    proximal_mu: float = 0.0,
) -> StateUpdate:
    """One client's round: tau local (S)GD steps from the global model on its own partition.

    fl.local_epochs > 0 replaces tau by that many passes over the client's n examples; fl.momentum
    and fl.weight_decay configure the (S)GD step (0 and 0: the paper's plain update); training runs
    on fl.device and the returned state is on the CPU.
    Metrics: train_loss (after local training) and, when w(0) is given, the noise memorization
    rho of the local model on the client's own noise patches (never the data itself), on the CPU.
    """
    if num_partitions != settings.fl.num_clients:
        raise ValueError(
            f"num-partitions={num_partitions} in the node config does not match the run's "
            f"fl.num_clients={settings.fl.num_clients}"
        )
    fl = settings.fl
    device = resolve_device(fl.device)
    data = cached_client_dataset(settings.data, settings.heterogeneity, settings.seed, partition_id, num_partitions)
    model = model_from_weight(global_state[WEIGHT_KEY])
    train_loss = train_steps(
        model,
        data.features,
        data.labels,
        logistic_loss,
        steps=local_step_count(fl.local_steps, fl.local_epochs, len(data), fl.batch_size),
        lr=fl.lr,
        batch_size=fl.batch_size,
        momentum=fl.momentum,
        weight_decay=fl.weight_decay,
        proximal_mu=proximal_mu,
        generator=torch_generator(settings.seed, Stream.LOCAL_BATCHES, partition_id, server_round),
        device=device,
    )
    weight = model.weight.detach().cpu()
    metrics = {"train_loss": train_loss}
    if init_state is not None:
        metrics.update(noise_memorization_summary(init_state[WEIGHT_KEY], weight, data.noise, data.labels))
    return StateUpdate(state={WEIGHT_KEY: weight}, num_examples=len(data), metrics=metrics)


@torch.no_grad()
def test_metrics(weight: torch.Tensor, test: SignalNoiseData) -> dict[str, float]:
    """Test loss and test error of a global model on the server's test set."""
    margins = model_from_weight(weight)(test.features)
    return {
        "test_loss": float(logistic_loss(margins, test.labels)),
        "test_error": classification_error(margins, test.labels),
    }


def server_setup(settings: ExperimentSettings) -> TaskServer:
    """Signal, initial model (pre-training included), test set, partition facts, schedule, and the
    regime of the configuration (facts and warnings)."""
    signal = signal_vector(settings.data.dim, settings.data.signal_norm)
    labels, attempts = partition_true_labels(
        settings.heterogeneity, settings.seed, settings.fl.num_clients, settings.data.samples_per_client
    )
    init_weight, init_facts = initial_weight(settings.init, settings.model, signal, settings.seed)
    test = fresh_test_set(
        settings.seed, signal, settings.data.noise_std, settings.data.label_noise, settings.data.test_samples
    )
    data = settings.data
    draws = (population_draws(settings.seed, data.population_samples, 2 * settings.model.filters_per_class)
             if data.population_samples > 0 else None)
    realised_h = realised_heterogeneity(labels)
    histograms = np.array([[int((part == c).sum()) for c in CLASSES] for part in labels], dtype=np.int64)
    skews = all_client_skews(settings.heterogeneity, settings.seed, settings.fl.num_clients)
    noise_factors, signal_factors = [skew.noise for skew in skews], [skew.signal for skew in skews]
    measured = measure_skews(data, settings.seed, labels, skews, signal)
    skew_facts = {"realised_noise_skew": measured.noise_skew, "realised_signal_skew": measured.signal_skew}
    regime = {**regime_facts(settings), **skew_regime_facts(settings, noise_factors, signal_factors)}

    def central_metrics(state: State) -> dict[str, float]:
        weight = state[WEIGHT_KEY]
        metrics = {**test_metrics(weight, test), **alignment_report(init_weight, weight, signal)}
        if draws is not None:
            metrics.update(population_metrics(weight, signal, data.noise_std, data.label_noise, draws))
        return metrics

    return TaskServer(
        init_state={WEIGHT_KEY: init_weight},
        central_metrics=central_metrics,
        round_columns=round_columns(settings.data),
        partition={**partition_summary(histograms, realised_h, ["+1", "-1"], attempts), **skew_facts,
                   "noise_factors": noise_factors, "signal_factors": signal_factors,
                   "noise_scales": measured.noise_scales, "signal_scales": measured.signal_scales},
        realised_h=realised_h,
        schedule=client_schedule(
            settings.fl.num_clients, settings.fl.fraction_train, settings.fl.num_rounds, settings.seed
        ),
        send_init_state=settings.log.noise_memorization,
        artifacts={"signal.pt": signal.clone()},
        description=(f"synthetic data, d={settings.data.dim}, realised h={realised_h:.4f}"
                     f"{skew_text(settings.heterogeneity, measured)}; {regime_line(regime)}"),
        facts={**regime, **skew_facts, **init_facts},
        warnings=[*skew_warnings(settings.heterogeneity, settings.data.samples_per_client, realised_h),
                  *regime_warnings(regime)],
    )


def skew_text(heterogeneity: HeterogeneitySettings, measured: SkewMeasures) -> str:
    """', realised noise skew=... (asked ...), realised signal skew=... (asked ...)' when a skew is on, else ''."""
    if heterogeneity.noise_skew == 0 and heterogeneity.signal_skew == 0:
        return ""
    return (f", realised noise skew={measured.noise_skew:.4f} (asked {heterogeneity.noise_skew:g}), "
            f"realised signal skew={measured.signal_skew:.4f} (asked {heterogeneity.signal_skew:g})")


def skew_warnings(heterogeneity: HeterogeneitySettings, samples_per_client: int, realised_h: float) -> list[str]:
    """A line when label_skew cannot realise the requested h with n examples per client."""
    if heterogeneity.name != "label_skew" or math.isclose(realised_h, heterogeneity.h, rel_tol=0.0, abs_tol=1e-12):
        return []
    return [f"heterogeneity.h={heterogeneity.h:g} is not realisable with data.samples_per_client={samples_per_client} "
            f"(n (1 + h) / 2 must be an integer): realised h={realised_h:.4f}"]
