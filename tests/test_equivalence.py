"""End-to-end equivalence of the Flower simulation with an independent plain-PyTorch FedAvg.

The reference below is written from the model's definition (docs/science.md, "Network" and
"FedAvg") and shares nothing with the synthetic task's model or initmatters_core.training: only
the client data (tasks.synthetic.partition.client_dataset) and w(0) (tasks.synthetic.task.server_setup)
are taken from the project, so both sides start from the same numbers.

Ray start-ups are expensive (~8 s each): the whole file makes three run_simulation calls, shared
through module-scoped fixtures: the main config twice (equivalence + determinism) and a
one-local-step config once (FedAvg = centralized GD).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from flwr.simulation import run_simulation

from client_app.app import app as client_app
from initmatters.compose import load_settings
from initmatters_core.tasks.synthetic.data import fresh_test_set
from initmatters_core.tasks.synthetic.partition import client_dataset
from initmatters_core.tasks.synthetic.task import server_setup
from server_app.app import build_server_app

pytestmark = pytest.mark.slow

MAIN_OVERRIDES = "debug=default fl.num_rounds=3 fl.local_steps=3 heterogeneity.h=0.5"
ONE_STEP_OVERRIDES = "debug=default fl.num_clients=4 fl.num_rounds=4 fl.local_steps=1 heterogeneity.h=0.5"
ATOL = 1e-6

CONTRACT_COLUMNS = (
    "round", "train_loss", "test_loss", "test_error", "aligned", "misaligned",
    "aligned_pos", "misaligned_pos", "aligned_neg", "misaligned_neg",
)


# ---------------------------------------------------------------------------------------------
# the independent reference (float64, plain torch)


def ref_margin(weight: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """f(W, x) = (1/m) sum_r sum_p relu(<w+_r, x_p>) - (1/m) sum_r sum_p relu(<w-_r, x_p>)."""
    w_pos, w_neg = weight[0], weight[1]  # [m, d] each
    m = w_pos.shape[0]
    pos = torch.relu(torch.einsum("npd,rd->npr", features, w_pos)).sum(dim=(1, 2)) / m
    neg = torch.relu(torch.einsum("npd,rd->npr", features, w_neg)).sum(dim=(1, 2)) / m
    return pos - neg


def ref_loss(weight: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean logistic loss log(1 + exp(-y f))."""
    return torch.log1p(torch.exp(-labels * ref_margin(weight, features))).mean()


def ref_local_gd(weight: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, steps: int, lr: float):
    """`steps` full-batch GD steps from `weight`; returns (new weight, loss after the last step)."""
    w = weight.clone()
    for _ in range(steps):
        w.requires_grad_(True)
        (grad,) = torch.autograd.grad(ref_loss(w, features, labels), w)
        w = (w - lr * grad).detach()
    with torch.no_grad():
        return w, float(ref_loss(w, features, labels))


def ref_fedavg(init: torch.Tensor, clients, num_rounds: int, steps: int, lr: float):
    """FedAvg with full participation, client models averaged with weights n_k / sum n_k.

    Returns (final weight, [example-weighted mean client loss per round]).
    """
    w = init.clone()
    total = sum(int(y.shape[0]) for _, y in clients)
    losses = []
    for _ in range(num_rounds):
        new_w = torch.zeros_like(w)
        loss = 0.0
        for x, y in clients:
            local, local_loss = ref_local_gd(w, x, y, steps, lr)
            new_w += (y.shape[0] / total) * local
            loss += (y.shape[0] / total) * local_loss
        w = new_w
        losses.append(loss)
    return w, losses


def ref_centralized_gd(init: torch.Tensor, clients, steps: int, lr: float) -> torch.Tensor:
    features = torch.cat([x for x, _ in clients])
    labels = torch.cat([y for _, y in clients])
    return ref_local_gd(init, features, labels, steps, lr)[0]


def recount_misaligned(weight: torch.Tensor, signal: torch.Tensor) -> dict[str, int]:
    """Misaligned filters: <w_jr, j mu> <= 0, with j = +1 for row 0 and -1 for row 1."""
    w, mu = weight.double(), signal.double()
    pos_bad = int(((w[0] @ mu) <= 0).sum())
    neg_bad = int(((-(w[1] @ mu)) <= 0).sum())
    return {"misaligned": pos_bad + neg_bad, "misaligned_pos": pos_bad, "misaligned_neg": neg_bad}


def reference_inputs(settings):
    """(w(0), mu, [(features, labels) per client]) in float64, from the project's data/init."""
    setup = server_setup(settings)
    signal = setup.artifacts["signal.pt"]
    clients = []
    for k in range(settings.fl.num_clients):
        data = client_dataset(settings.data, settings.heterogeneity, settings.seed, k, settings.fl.num_clients,
                              signal)
        clients.append((data.features.double(), data.labels.double()))
    return setup.init_state["weight"].double(), signal.double(), clients


# ---------------------------------------------------------------------------------------------
# simulation fixtures


def simulate(overrides: str, output_dir: Path):
    settings, resolved_yaml = load_settings(overrides)
    run_simulation(
        server_app=build_server_app(settings, resolved_yaml, output_dir),
        client_app=client_app,
        num_supernodes=settings.fl.num_clients,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    assert (output_dir / "summary.json").exists(), f"the simulation did not complete: {output_dir}"
    return settings, resolved_yaml, output_dir


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    return simulate(MAIN_OVERRIDES, tmp_path_factory.mktemp("main_run"))


@pytest.fixture(scope="module")
def main_run_again(main_run, tmp_path_factory):
    return simulate(MAIN_OVERRIDES, tmp_path_factory.mktemp("main_run_again"))


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    return simulate(ONE_STEP_OVERRIDES, tmp_path_factory.mktemp("one_step_run"))


def load_weight(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)["weight"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# (b) the oracle itself, no Flower


@pytest.mark.parametrize("num_clients", [2, 4])
def test_reference_fedavg_one_step_equal_sizes_is_centralized_gd(num_clients):
    settings, _ = load_settings(f"debug=default fl.num_clients={num_clients} heterogeneity.h=0.5")
    init, _, clients = reference_inputs(settings)
    sizes = {int(y.shape[0]) for _, y in clients}
    assert len(sizes) == 1  # equal client sizes
    rounds, lr = 5, settings.fl.lr
    fedavg, _ = ref_fedavg(init, clients, rounds, steps=1, lr=lr)
    central = ref_centralized_gd(init, clients, steps=rounds, lr=lr)
    torch.testing.assert_close(fedavg, central, rtol=0, atol=ATOL)
    assert not torch.equal(fedavg, init)  # training moved the model
    # the oracle has teeth: with several local steps under label skew FedAvg is not centralized GD
    fedavg_3, _ = ref_fedavg(init, clients, rounds, steps=3, lr=lr)
    central_3 = ref_centralized_gd(init, clients, steps=3 * rounds, lr=lr)
    assert (fedavg_3 - central_3).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# (a) Flower simulation == independent reference


def test_simulation_matches_independent_fedavg(main_run):
    settings, _, out = main_run
    assert settings.fl.fraction_train == 1.0 and settings.fl.batch_size == 0
    init, _, clients = reference_inputs(settings)
    torch.testing.assert_close(load_weight(out / "model_init.pt").double(), init, rtol=0, atol=0)

    expected, losses = ref_fedavg(init, clients, settings.fl.num_rounds, settings.fl.local_steps, settings.fl.lr)
    final = load_weight(out / "model_final.pt").double()
    assert final.shape == expected.shape
    torch.testing.assert_close(final, expected, rtol=0, atol=ATOL)
    assert (final - init).abs().max() > 1e-3  # the model did train

    # the logged client loss of each round is the example-weighted mean of the local losses
    rows = read_rows(out / "rounds.csv")
    for row, loss in zip(rows[1:], losses, strict=True):
        assert float(row["train_loss"]) == pytest.approx(loss, abs=1e-5)
        assert int(float(row["clients"])) == settings.fl.num_clients

    # the final test metrics, recomputed on the server's test set with the reference network
    mu = torch.zeros(settings.data.dim)
    mu[0] = settings.data.signal_norm
    test = fresh_test_set(settings.seed, mu, settings.data.noise_std, settings.data.label_noise,
                          settings.data.test_samples)
    margins = ref_margin(expected, test.features.double())
    labels = test.labels.double()
    assert float(rows[-1]["test_error"]) == pytest.approx(float((labels * margins <= 0).double().mean()), abs=1e-12)
    assert float(rows[-1]["test_loss"]) == pytest.approx(
        float(torch.log1p(torch.exp(-labels * margins)).mean()), abs=1e-5)


# ---------------------------------------------------------------------------------------------
# (b) Flower simulation with one local step == centralized GD


def test_simulation_with_one_local_step_is_centralized_gd(one_step_run):
    settings, _, out = one_step_run
    assert settings.fl.local_steps == 1 and settings.fl.fraction_train == 1.0
    init, _, clients = reference_inputs(settings)
    assert len({int(y.shape[0]) for _, y in clients}) == 1
    central = ref_centralized_gd(init, clients, steps=settings.fl.num_rounds, lr=settings.fl.lr)
    final = load_weight(out / "model_final.pt").double()
    torch.testing.assert_close(final, central, rtol=0, atol=ATOL)
    assert (final - init).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# (c) determinism


def test_same_config_twice_is_bit_identical(main_run, main_run_again):
    _, _, first = main_run
    _, _, second = main_run_again
    assert first != second
    assert (first / "model_final.pt").exists() and (second / "model_final.pt").exists()
    assert torch.equal(load_weight(first / "model_final.pt"), load_weight(second / "model_final.pt"))
    assert torch.equal(load_weight(first / "model_init.pt"), load_weight(second / "model_init.pt"))

    rows_a, rows_b = read_rows(first / "rounds.csv"), read_rows(second / "rounds.csv")
    assert len(rows_a) == len(rows_b)
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        assert row_a.keys() == row_b.keys()
        assert {k: v for k, v in row_a.items() if k != "elapsed_s"} == {
            k: v for k, v in row_b.items() if k != "elapsed_s"
        }


# ---------------------------------------------------------------------------------------------
# the results contract


@pytest.mark.parametrize("run_name", ["main_run", "one_step_run"])
def test_results_contract_files(run_name, request):
    settings, resolved_yaml, out = request.getfixturevalue(run_name)
    for name in ("config.yaml", "rounds.csv", "summary.json", "model_init.pt", "model_final.pt", "signal.pt"):
        assert (out / name).is_file(), name
    assert (out / "config.yaml").read_text() == resolved_yaml
    assert list((out / "plots").glob("*.png"))

    signal = torch.load(out / "signal.pt", weights_only=True)
    assert isinstance(signal, torch.Tensor) and signal.dim() == 1 and signal.shape[0] == settings.data.dim
    expected_mu = torch.zeros(settings.data.dim)
    expected_mu[0] = settings.data.signal_norm
    assert torch.equal(signal.float(), expected_mu)

    summary = json.loads((out / "summary.json").read_text())
    for key in ("realised_h", "wall_time_s", "versions"):
        assert key in summary, key
    assert summary["wall_time_s"] > 0
    assert "flwr" in summary["versions"] and "torch" in summary["versions"]
    # realised h recomputed from the clients' own labels: mean_k |n+ - n-| / n
    imbalance = []
    for k in range(settings.fl.num_clients):
        labels = client_dataset(settings.data, settings.heterogeneity, settings.seed, k, settings.fl.num_clients,
                                signal).true_labels
        imbalance.append(abs(int((labels > 0).sum()) - int((labels < 0).sum())) / labels.shape[0])
    assert summary["realised_h"] == pytest.approx(sum(imbalance) / len(imbalance), abs=1e-12)

    rows = read_rows(out / "rounds.csv")
    assert len(rows) == settings.fl.num_rounds + 1
    for column in CONTRACT_COLUMNS:
        assert column in rows[0], column
    assert [int(float(row["round"])) for row in rows] == list(range(settings.fl.num_rounds + 1))
    m = settings.model.filters_per_class
    for row in rows:
        assert int(float(row["aligned"])) + int(float(row["misaligned"])) == 2 * m
        assert int(float(row["aligned_pos"])) + int(float(row["misaligned_pos"])) == m
        assert int(float(row["aligned_neg"])) + int(float(row["misaligned_neg"])) == m

    # misaligned counts recounted from the saved models
    for row, model_file in ((rows[0], "model_init.pt"), (rows[-1], "model_final.pt")):
        recount = recount_misaligned(load_weight(out / model_file), signal)
        for key, value in recount.items():
            assert int(float(row[key])) == value, (model_file, key)
