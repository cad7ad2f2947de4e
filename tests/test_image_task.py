"""The image task as the apps see it (initmatters_core.tasks.base over initmatters_core.tasks.image.task).

Fast tests run the task without Flower on scikit-learn's digits (offline, CPU-sized) and check it
against independent recomputations: the proxy/client split, partition facts, FedAvg with one
full-batch local step against one centralized GD step (plain float64 torch), the alignment counts
against a brute-force recount from the definition, checkpoint and proxy pre-training inits, the
device option and the node's data-dir override. Slow tests go end to end through the real CLI
(`python -m initmatters.run`): a tiny CIFAR-10 copy in the Hub's parquet layout with ResNet18,
the missing-data failure, and the digits preset (patch CNN).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from PIL import Image

from client_app.app import with_node_data_dir
from initmatters.compose import load_settings
from initmatters.launch import PROJECT_ROOT
from initmatters.protocol import config_to_settings, settings_to_config
from initmatters_core.federation import ClientDataCache, heterogeneity_measure, resolve_device
from initmatters_core.results import read_rounds_csv
from initmatters_core.settings import ExperimentSettings, SettingError, client_settings
from initmatters_core.tasks.image import task as tasks
from initmatters_core.tasks.image.datasets import DATASETS, load_image_dataset, to_tensors
from initmatters_core.tasks.image.task import (
    build_model,
    client_tensors,
    image_split,
    server_test_tensors,
)

DIGITS = "data=digits model=patch_cnn heterogeneity=dirichlet debug=default fl.num_clients=5"
DIGITS_TRAIN_SIZE = 1438
NUM_CLASSES = 10


def settings_of(overrides: str | list[str]) -> ExperimentSettings:
    return load_settings(overrides)[0]


def fresh_split(settings: ExperimentSettings):
    """image_split computed anew (bypassing its per-process memo)."""
    return image_split.__wrapped__(settings.data, settings.heterogeneity, settings.seed, settings.fl.num_clients)


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return load_image_dataset("digits", "train").labels


# --- independent references (float64, written from the definitions) ------------------------------


def ref_patches(images: torch.Tensor, patch: int) -> list[torch.Tensor]:
    """The non-overlapping patch x patch patches of images [N, C, H, W], each flattened
    (channel, row, column) to [N, C * patch^2], in row-major patch order."""
    _, _, height, width = images.shape
    return [images[:, :, i:i + patch, j:j + patch].reshape(images.shape[0], -1)
            for i in range(0, height, patch) for j in range(0, width, patch)]


def ref_logits(weight: torch.Tensor, images: torch.Tensor, patch: int) -> torch.Tensor:
    """F_c(x) = (1/m) sum_r sum_p relu(<w_cr, x_p>) for weight [C, m, D]."""
    num_classes, m, _ = weight.shape
    logits = torch.zeros(images.shape[0], num_classes, dtype=weight.dtype)
    for x_p in ref_patches(images, patch):
        logits = logits + torch.relu(torch.einsum("nd,cmd->ncm", x_p, weight)).sum(dim=2) / m
    return logits


def ref_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over examples of -log softmax(logits)[y]."""
    return (torch.logsumexp(logits, dim=1) - logits[torch.arange(labels.shape[0]), labels]).mean()


def ref_aligned(weight: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, patch: int) -> list[list[bool]]:
    """[C][m]: <w_cr, mu_c> > max_{c' != c} <w_cr, mu_c'>, mu_c = mean class-c patch - mean patch."""
    patches = torch.stack(ref_patches(images.double(), patch), dim=1)  # [N, P, D]
    overall = patches.reshape(-1, patches.shape[-1]).mean(dim=0)
    signals = [patches[labels == c].reshape(-1, patches.shape[-1]).mean(dim=0) - overall
               for c in range(weight.shape[0])]
    weight = weight.double()
    table = []
    for c in range(weight.shape[0]):
        row = []
        for r in range(weight.shape[1]):
            responses = [float(torch.dot(weight[c, r], mu)) for mu in signals]
            row.append(responses[c] > max(v for k, v in enumerate(responses) if k != c))
        table.append(row)
    return table


def ref_alignment_counts(init_weight, weight, images, labels, patch) -> dict[str, int]:
    now = ref_aligned(weight, images, labels, patch)
    before = ref_aligned(init_weight, images, labels, patch)
    pairs = [(b, a) for row_b, row_a in zip(before, now, strict=True) for b, a in zip(row_b, row_a, strict=True)]
    counts = {"aligned": sum(map(sum, now)), "misaligned": sum(len(row) - sum(row) for row in now)}
    counts.update({f"aligned_class{c}": sum(row) for c, row in enumerate(now)})
    counts.update({
        "misaligned_init_aligned_now": sum(not b and a for b, a in pairs),
        "misaligned_init_misaligned_now": sum(not b and not a for b, a in pairs),
        "aligned_init_aligned_now": sum(b and a for b, a in pairs),
        "aligned_init_misaligned_now": sum(b and not a for b, a in pairs),
    })
    return counts


def ref_heterogeneity(histograms: np.ndarray) -> float:
    """(1/K) sum_k TV(p_k, q) / (1 - min_c q_c) for clients that all hold data."""
    counts = np.asarray(histograms, dtype=np.float64)
    pooled = counts.sum(axis=0) / counts.sum()
    tv = [0.5 * np.abs(row / row.sum() - pooled).sum() for row in counts]
    return float(np.mean(tv) / (1.0 - pooled[pooled > 0].min()))


# --- 1. split and partition facts ----------------------------------------------------------------


def test_split_is_disjoint_covers_train_once_and_is_seeded(digits_labels) -> None:
    settings = settings_of(DIGITS)
    split = fresh_split(settings)
    every = np.concatenate([split.proxy_rows, *split.client_rows])
    assert every.shape[0] == DIGITS_TRAIN_SIZE == digits_labels.shape[0]
    assert np.array_equal(np.sort(every), np.arange(DIGITS_TRAIN_SIZE))  # disjoint and exhaustive
    class_sizes = np.bincount(digits_labels, minlength=NUM_CLASSES)
    proxy_sizes = np.bincount(digits_labels[split.proxy_rows], minlength=NUM_CLASSES)
    assert proxy_sizes.tolist() == [round(settings.data.proxy_fraction * int(n)) for n in class_sizes]
    assert len(split.client_rows) == settings.fl.num_clients and all(rows.size for rows in split.client_rows)

    again = fresh_split(settings)  # same seed: same rows
    assert np.array_equal(again.proxy_rows, split.proxy_rows)
    assert all(np.array_equal(a, b) for a, b in zip(again.client_rows, split.client_rows, strict=True))
    other = fresh_split(dataclasses.replace(settings, seed=1))
    assert not np.array_equal(other.proxy_rows, split.proxy_rows)


def test_server_partition_facts_and_paired_inits_share_client_data(digits_labels) -> None:
    random_init = settings_of(DIGITS)
    pretrained = settings_of(f"{DIGITS} init=proxy_pretrained init.steps=5")
    split = fresh_split(random_init)
    servers = [tasks.server_setup(random_init), tasks.server_setup(pretrained)]
    for server in servers:
        partition = server.partition
        histograms = np.asarray(partition["histograms"])
        recount = np.stack([np.bincount(digits_labels[rows], minlength=NUM_CLASSES) for rows in split.client_rows])
        assert np.array_equal(histograms, recount)
        assert partition["sizes"] == server.client_sizes == [int(rows.shape[0]) for rows in split.client_rows]
        assert sum(partition["sizes"]) == DIGITS_TRAIN_SIZE - partition["proxy_size"]
        assert partition["proxy_size"] == split.proxy_rows.shape[0]
        assert server.realised_h == partition["heterogeneity"] == heterogeneity_measure(histograms)
        assert server.realised_h == pytest.approx(ref_heterogeneity(histograms), abs=1e-12)
        assert 0.0 < server.realised_h < 1.0  # Dirichlet(0.5): skewed, not one class per client
    assert servers[0].partition == servers[1].partition
    assert servers[0].schedule == servers[1].schedule
    # the clients' tensors, built as a client builds them (a fresh cache per init)
    caches = (ClientDataCache(2**30), ClientDataCache(2**30))
    for k in range(random_init.fl.num_clients):
        x_random, y_random = client_tensors(random_init, k, random_init.fl.num_clients, caches[0])
        x_pre, y_pre = client_tensors(pretrained, k, pretrained.fl.num_clients, caches[1])
        assert torch.equal(x_random, x_pre) and torch.equal(y_random, y_pre)
        assert y_random.tolist() == digits_labels[split.client_rows[k]].tolist()


# --- 2. FedAvg with one full-batch local step = one centralized GD step --------------------------


def test_fedavg_one_full_batch_step_equals_centralized_gd(digits_labels) -> None:
    settings = settings_of(f"{DIGITS.replace('fl.num_clients=5', 'fl.num_clients=4')} fl.batch_size=0 "
                           "fl.local_steps=1 fl.momentum=0 "
                           "fl.weight_decay=0 data.augment=false fl.lr=0.5 model.init_std=0.1")
    num_clients, lr, patch = settings.fl.num_clients, settings.fl.lr, settings.model.patch_size
    server = tasks.server_setup(settings)
    w0 = server.init_state["weight"]
    updates = [tasks.local_update(settings, k, num_clients, server.init_state, None, server_round=1)
               for k in range(num_clients)]
    total = sum(update.num_examples for update in updates)
    fedavg = sum((update.num_examples / total) * update.state["weight"].double() for update in updates)

    # reference: the union of the clients' data = the train split without the proxy rows
    train = load_image_dataset("digits", "train")
    proxy = fresh_split(settings).proxy_rows
    pool = np.setdiff1d(np.arange(len(train)), proxy)
    assert total == pool.shape[0]
    images, labels = to_tensors(train, pool)
    assert labels.tolist() == digits_labels[pool].tolist()
    weight = w0.double().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ref_cross_entropy(ref_logits(weight, images.double(), patch), labels), weight)
    centralized = w0.double() - lr * grad
    step = (centralized - w0.double()).abs().max()
    assert float(step) > 1e-3  # the step is not negligible
    assert torch.allclose(fedavg, centralized, rtol=0, atol=1e-6), float((fedavg - centralized).abs().max())


# --- 3. alignment counts = a brute-force recount -------------------------------------------------


def test_alignment_metrics_match_brute_force_recount() -> None:
    settings = settings_of(DIGITS)
    server = tasks.server_setup(settings)
    trained = tasks.server_setup(settings_of(f"{DIGITS} init=proxy_pretrained init.steps=40")).init_state
    _, images, labels = server_test_tensors(settings)
    assert images.shape == (settings.data.test_samples, 1, 8, 8)
    init_weight = server.init_state["weight"]
    for state in (server.init_state, trained):
        metrics = server.central_metrics(state)
        expected = ref_alignment_counts(init_weight, state["weight"], images, labels, settings.model.patch_size)
        assert {key: metrics[key] for key in expected} == expected
        assert set(metrics) <= set(server.round_columns)
        assert metrics["aligned"] + metrics["misaligned"] == NUM_CLASSES * settings.model.filters_per_class
    moved = server.central_metrics(trained)
    assert moved["misaligned_init_aligned_now"] + moved["aligned_init_misaligned_now"] > 0  # pre-training moved some


# --- 4. checkpoint init ---------------------------------------------------------------------------


def test_checkpoint_init_loads_the_saved_state_and_rejects_other_shapes(tmp_path: Path) -> None:
    random_state = tasks.server_setup(settings_of(DIGITS)).init_state
    generator = torch.Generator().manual_seed(7)
    saved = {key: torch.randn(value.shape, generator=generator) for key, value in random_state.items()}
    file = tmp_path / "saved_model.pt"
    torch.save(saved, file)
    server = tasks.server_setup(settings_of([*DIGITS.split(), "init=checkpoint", f"init.path={file}"]))
    assert set(server.init_state) == set(saved)
    assert all(torch.equal(server.init_state[key], saved[key]) for key in saved)

    wrong = settings_of([*DIGITS.split(), "init=checkpoint", f"init.path={file}", "model.filters_per_class=5"])
    with pytest.raises(SettingError) as caught:
        tasks.server_setup(wrong)
    message = str(caught.value)
    assert "\n" not in message and f"init.path={str(file)!r}" in message

    missing = settings_of([*DIGITS.split(), "init=checkpoint", f"init.path={tmp_path / 'absent.pt'}"])
    with pytest.raises(SettingError, match=r"^init\.path=.*absent\.pt.* does not exist"):
        tasks.server_setup(missing)


# --- 5. proxy pre-training ------------------------------------------------------------------------


def test_proxy_pretraining_lowers_the_loss_and_zero_steps_is_random_init() -> None:
    random_init = settings_of(DIGITS)
    random_server = tasks.server_setup(random_init)
    pretrained_server = tasks.server_setup(settings_of(f"{DIGITS} init=proxy_pretrained init.steps=60"))
    unchanged = tasks.server_setup(settings_of(f"{DIGITS} init=proxy_pretrained init.steps=0"))
    assert set(unchanged.init_state) == set(random_server.init_state)
    assert all(torch.equal(unchanged.init_state[key], value) for key, value in random_server.init_state.items())

    train = load_image_dataset("digits", "train")
    proxy_x, proxy_y = to_tensors(train, fresh_split(random_init).proxy_rows)
    _, test_x, test_y = server_test_tensors(random_init)
    patch = random_init.model.patch_size

    def loss(state, images, labels) -> float:
        return float(ref_cross_entropy(ref_logits(state["weight"].double(), images.double(), patch), labels))

    for images, labels in ((proxy_x, proxy_y), (test_x, test_y)):
        before, after = loss(random_server.init_state, images, labels), loss(pretrained_server.init_state, images,
                                                                             labels)
        assert before == pytest.approx(math.log(NUM_CLASSES), abs=0.05)  # near-uniform logits at init_std=0.01
        assert after < before - 0.3
    central = pretrained_server.central_metrics(pretrained_server.init_state)
    assert central["test_loss"] == pytest.approx(loss(pretrained_server.init_state, test_x, test_y), rel=1e-5)
    assert central["test_loss"] < random_server.central_metrics(random_server.init_state)["test_loss"]


# --- 6. device ------------------------------------------------------------------------------------


def test_device_option_on_a_cpu_machine() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SettingError) as caught:
        resolve_device("cuda")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("fl.device=cuda is invalid")
    with pytest.raises(SettingError, match=r"^fl\.device=cuda is invalid"):
        tasks.server_setup(settings_of(f"{DIGITS} fl.device=cuda"))


# --- 7. the node's data-dir ----------------------------------------------------------------------


def node_context(**extra: str) -> Context:
    return Context(run_id=1, node_id=2, node_config={"partition-id": 0, "num-partitions": 2, **extra},
                   state=RecordDict(), run_config={})


def test_node_data_dir_overrides_image_settings_only() -> None:
    image = settings_of("data=cifar10 model=resnet18 heterogeneity=iid data.data_dir=/server/copy")
    # what a client receives travels flattened
    received = config_to_settings(settings_to_config(client_settings(image)))
    assert received == client_settings(image)
    moved = with_node_data_dir(received, node_context(**{"data-dir": "/node/cifar10"}))
    assert moved.data.data_dir == "/node/cifar10"
    assert dataclasses.replace(moved, data=dataclasses.replace(moved.data, data_dir="/server/copy")) == received
    assert with_node_data_dir(received, node_context()) == received

    digits = client_settings(settings_of(DIGITS))
    assert with_node_data_dir(digits, node_context(**{"data-dir": "/node/x"})).data.data_dir == "/node/x"

    synthetic = client_settings(settings_of("debug=default"))
    assert with_node_data_dir(synthetic, node_context(**{"data-dir": "/node/cifar10"})) == synthetic
    assert not hasattr(synthetic.data, "data_dir")


# --- 8./9. end to end through the CLI (slow) ------------------------------------------------------

CIFAR_TRAIN, CIFAR_TEST = 60, 20  # 6 images per class: a proxy share of round(0.1 * 6) = 1 per class
IMAGE_COLUMNS_RESNET = ("round", "train_loss", "test_loss", "test_error", "conv1_pc_energy", "conv1_pc_energy_chance",
                        "conv1_pc1_abs_cos", "update_diversity", "clients", "elapsed_s")
CIFAR_OVERRIDES = ("data=cifar10", "model=resnet18", "heterogeneity=iid", "debug=default", "fl.num_rounds=1",
                   "fl.lr=0.05")


def random_rgb(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def write_cifar_parquet(path: Path, pixels: np.ndarray, labels: list[int]) -> None:
    """One split in the Hub's layout of uoft-cs/cifar10: columns img (PNG bytes) and label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = datasets.Dataset.from_dict({"img": [Image.fromarray(array) for array in pixels], "label": labels})
    dataset.cast_column("img", datasets.Image()).to_parquet(str(path))


def cli(tmp: Path, *args: str, timeout: float = 400) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m initmatters.run ARGS` with private FLWR_HOME and Hugging Face caches under `tmp`."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp / "hf-datasets"), "HF_HOME": str(tmp / "hf-home")}
    command = [sys.executable, "-m", "initmatters.run", *args, "--flwr-home", str(tmp / "flwr-home")]
    started = time.monotonic()
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return completed, time.monotonic() - started


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cifar-run")
    copy = tmp / "cifar10"
    test_pixels = random_rgb(CIFAR_TEST, seed=1)
    test_labels = [i % NUM_CLASSES for i in range(CIFAR_TEST)]
    write_cifar_parquet(copy / "plain_text" / "train-00000-of-00001.parquet", random_rgb(CIFAR_TRAIN, seed=0),
                        [i % NUM_CLASSES for i in range(CIFAR_TRAIN)])
    write_cifar_parquet(copy / "plain_text" / "test-00000-of-00001.parquet", test_pixels, test_labels)
    out = tmp / "results"
    overrides = (*CIFAR_OVERRIDES, f"data.data_dir={copy}")
    completed, _ = cli(tmp, *overrides, "--output-dir", str(out))
    return completed, out, tmp, overrides, (test_pixels, test_labels)


@pytest.mark.slow
def test_cifar10_copy_runs_end_to_end_with_the_results_contract(cifar_run) -> None:
    completed, out, tmp, overrides, (test_pixels, test_labels) = cifar_run
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-3000:]
    for name in ("config.yaml", "rounds.csv", "summary.json", "partition.json", "model_init.pt", "model_final.pt",
                 "plots/label_histograms.png"):
        assert (out / name).is_file(), name
    with open(out / "rounds.csv") as handle:
        assert tuple(handle.readline().strip().split(",")) == IMAGE_COLUMNS_RESNET
    rows = read_rounds_csv(out / "rounds.csv")
    assert [int(row["round"]) for row in rows] == [0, 1]
    assert rows[1]["clients"] == 2
    assert rows[0]["conv1_pc_energy_chance"] == pytest.approx(math.ceil(3 * 7 * 7 / 8) / (3 * 7 * 7))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "image" and summary["rounds_completed"] == 1
    partition = json.loads((out / "partition.json").read_text())
    assert partition["proxy_size"] == NUM_CLASSES  # one image per class kept by the server
    assert int(np.asarray(partition["histograms"]).sum()) == sum(partition["sizes"]) == CIFAR_TRAIN - NUM_CLASSES
    assert partition["test_size"] == CIFAR_TEST
    assert summary["realised_h"] == partition["heterogeneity"]
    assert "name: cifar10" in (out / "config.yaml").read_text()
    assert (tmp / "hf-datasets").is_dir()  # the datasets cache went to the private folder

    settings = settings_of(list(overrides))
    info = DATASETS["cifar10"]
    init_state = torch.load(out / "model_init.pt", weights_only=True)
    final_state = torch.load(out / "model_final.pt", weights_only=True)
    model = build_model(settings, info, NUM_CLASSES)
    seeded = model.state_dict()
    assert all(torch.equal(init_state[key], seeded[key]) for key in seeded)  # init=random: the seeded draw
    model.load_state_dict(final_state, strict=True)
    assert any(not torch.equal(final_state[key], init_state[key]) for key in init_state)

    # test error of the final model, from the test images as written (no initmatters data code)
    mean = torch.tensor(info.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(info.std).reshape(1, 3, 1, 1)
    images = (torch.from_numpy(test_pixels).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    labels = torch.tensor(test_labels)
    model.eval()
    with torch.no_grad():
        logits = model(images)
    error = int((logits.argmax(dim=1) != labels).sum()) / CIFAR_TEST
    loss = float(torch.nn.functional.cross_entropy(logits, labels))
    assert rows[-1]["test_error"] == pytest.approx(error, abs=1e-9)
    assert rows[-1]["test_loss"] == pytest.approx(loss, rel=1e-4)


@pytest.fixture(scope="module")
def missing_data_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cifar-missing")
    empty = tmp / "empty"
    empty.mkdir()
    completed, elapsed = cli(tmp, *CIFAR_OVERRIDES, f"data.data_dir={empty}", "--output-dir", str(tmp / "results"),
                             timeout=300)
    return completed, elapsed, tmp


@pytest.mark.slow
def test_missing_cifar10_copy_fails_with_the_download_hint(missing_data_run) -> None:
    completed, elapsed, tmp = missing_data_run
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0
    assert "`hf download uoft-cs/cifar10 --repo-type dataset --local-dir <dir>`" in output
    assert "data.data_dir=<dir>" in output
    assert not (tmp / "results" / "summary.json").exists()
    assert elapsed < 60


@pytest.mark.slow
def test_missing_cifar10_copy_fails_before_start_up_with_one_line(missing_data_run) -> None:
    completed, elapsed, tmp = missing_data_run
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.name=cifar10: no local copy at ")
    assert "hf download uoft-cs/cifar10" in lines[0]
    assert not (tmp / "flwr-home").exists()  # nothing was started
    assert elapsed < 20


DIGITS_RUN = ("experiment=digits_init_gap", "init=proxy_pretrained", "debug=default")


@pytest.mark.slow
def test_digits_preset_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "results"
    completed, _ = cli(tmp_path, *DIGITS_RUN, "--output-dir", str(out))
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-3000:]
    settings = settings_of(list(DIGITS_RUN))
    filters = NUM_CLASSES * settings.model.filters_per_class
    class_columns = tuple(f"aligned_class{c}" for c in range(NUM_CLASSES))
    with open(out / "rounds.csv") as handle:
        header = tuple(handle.readline().strip().split(","))
    assert header[:6] == ("round", "train_loss", "test_loss", "test_error", "aligned", "misaligned")
    assert header[6:16] == class_columns
    rows = read_rounds_csv(out / "rounds.csv")
    assert [int(row["round"]) for row in rows] == list(range(settings.fl.num_rounds + 1))
    for row in rows:
        assert row["aligned"] + row["misaligned"] == filters
        assert sum(row[column] for column in class_columns) == row["aligned"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "image" and summary["rounds_completed"] == settings.fl.num_rounds
    assert (out / "partition.json").is_file() and (out / "plots" / "label_histograms.png").is_file()
    # the logged counts are those of the saved models, recounted from the definition
    _, images, labels = server_test_tensors(settings)
    init_weight = torch.load(out / "model_init.pt", weights_only=True)["weight"]
    final_weight = torch.load(out / "model_final.pt", weights_only=True)["weight"]
    for row, weight in ((rows[0], init_weight), (rows[-1], final_weight)):
        expected = ref_alignment_counts(init_weight, weight, images, labels, settings.model.patch_size)
        assert {key: int(row[key]) for key in expected} == expected
