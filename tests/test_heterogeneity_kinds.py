"""Heterogeneity beyond labels (docs/science.md, "Noise and signal skew"): client k's sigma_p and mu
scaled by exp(s z_k), the realised skews measured on the generated data and recorded like realised h."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from initmatters import report
from initmatters.compose import load_settings
from initmatters_core.results import rounds_csv_text
from initmatters_core.seeding import Stream, numpy_rng
from initmatters_core.settings import HeterogeneitySettings, SettingError
from initmatters_core.tasks.synthetic.data import NOISE_PATCH, SIGNAL_PATCH, signal_vector
from initmatters_core.tasks.synthetic.partition import client_dataset, measure_skews, partition_true_labels
from initmatters_core.tasks.synthetic.regime import (
    one_step_flip_ratio,
    regime_facts,
    regime_line,
    regime_warnings,
    skew_regime_facts,
)
from initmatters_core.tasks.synthetic.settings import DataSettings
from initmatters_core.tasks.synthetic.skew import SkewKind, all_client_skews, skew_factors, standardised_spacing
from initmatters_core.tasks.synthetic.task import (
    ROUND_COLUMNS,
    cached_client_dataset,
    clear_client_data_cache,
    server_setup,
)
from server_app.summary import run_summary

K, N, D, SEED = 10, 20, 1000, 7
DATA = DataSettings(dim=D, signal_norm=1.5, noise_std=1.0, label_noise=0.1, samples_per_client=N, test_samples=2000,
                    population_samples=0)
MU = signal_vector(D, 1.5)
# s.d. of log(measured noise level) of one client: from n (d - 1) Gaussian coordinates,
# var(log sigma_hat) ~ 1 / (2 n (d - 1))
LOG_NOISE_SD = 1.0 / math.sqrt(2 * N * (D - 1))


def label_skew(h: float = 0.5, noise: float = 0.0, signal: float = 0.0) -> HeterogeneitySettings:
    return HeterogeneitySettings(name="label_skew", h=h, noise_skew=noise, signal_skew=signal)


def clients(heterogeneity: HeterogeneitySettings, seed: int = SEED, data: DataSettings = DATA) -> list:
    return [client_dataset(data, heterogeneity, seed, k, K, signal_vector(data.dim, data.signal_norm))
            for k in range(K)]


# --- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["noise_skew", "signal_skew"])
@pytest.mark.parametrize("value", ["-0.1", "3.5", "nan", "inf", "true", "abc"])
def test_bad_skew_is_a_one_line_setting_error(key: str, value: str) -> None:
    message = rf"^heterogeneity[.]{key}=.* is invalid: allowed a number in \[0, 3\]"
    with pytest.raises(SettingError, match=message) as error:
        load_settings(f"heterogeneity.{key}={value}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("key", ["noise_skew", "signal_skew"])
def test_image_task_rejects_a_skew_naming_the_setting(key: str) -> None:
    load_settings(f"data=digits heterogeneity.{key}=0")  # 0 (off) is accepted
    with pytest.raises(SettingError, match=rf"^heterogeneity[.]{key}=0[.]5 is invalid: allowed 0 with image data") \
            as error:
        load_settings(f"data=digits heterogeneity.{key}=0.5")
    assert "\n" not in str(error.value)


def test_a_skew_needs_two_clients() -> None:
    with pytest.raises(SettingError, match=r"^heterogeneity[.]noise_skew=0[.]2 is invalid: allowed 0 with "
                                           r"fl[.]num_clients=1"):
        load_settings("heterogeneity=iid fl.num_clients=1 heterogeneity.noise_skew=0.2")
    load_settings("heterogeneity=iid fl.num_clients=1")


def test_group_options_and_defaults() -> None:
    assert load_settings("")[0].heterogeneity == label_skew(h=0.0)
    assert load_settings("heterogeneity=label_skew_noise")[0].heterogeneity == label_skew(h=0.0, noise=0.5)
    signal_option = load_settings("heterogeneity=label_skew_signal heterogeneity.h=1")[0]
    assert signal_option.heterogeneity == label_skew(1.0, signal=0.5)
    for scheme in ("iid", "dirichlet", "dirichlet_0.1", "pathological"):
        het = load_settings(f"heterogeneity={scheme} heterogeneity.noise_skew=0.3")[0].heterogeneity
        assert (het.noise_skew, het.signal_skew) == (0.3, 0.0)


# --- the factors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3, 10, 101])
def test_factors_have_geometric_mean_one_and_log_std_equal_to_the_spread(count: int) -> None:
    for kind in SkewKind:
        factors = skew_factors(0.7, kind, SEED, count)
        logs = np.log(factors)
        assert abs(logs.mean()) < 1e-12
        assert logs.std() == pytest.approx(0.7, rel=1e-12)
        # evenly spaced logs: sorted differences all equal
        steps = np.diff(np.sort(logs))
        assert np.allclose(steps, steps[0], rtol=1e-9)
    assert standardised_spacing(1).tolist() == [0.0]


def test_factor_order_is_seeded_and_independent_per_kind() -> None:
    noise = skew_factors(0.5, SkewKind.NOISE, SEED, K)
    assert np.array_equal(noise, skew_factors(0.5, SkewKind.NOISE, SEED, K))
    assert not np.array_equal(noise, skew_factors(0.5, SkewKind.NOISE, SEED + 1, K))
    assert not np.array_equal(np.argsort(noise), np.argsort(skew_factors(0.5, SkewKind.SIGNAL, SEED, K)))
    assert skew_factors(0.0, SkewKind.NOISE, SEED, K).tolist() == [1.0] * K


# --- zero skew is today's data ----------------------------------------------------------------------

# sha256 of every client's features, observed and true labels (K = 10, seed 7, DATA), computed with the
# code before the skews existed (pinned numpy): zero skew must give these bytes.
FINGERPRINTS = {
    "label_skew": "ea2065c8ff98b804e66069e150f761dc519e0ff75fd24dc544a6af0b77d28d50",
    "dirichlet": "a5478173f704e71863ea7bf1a85dccbf81ade90a252dbcf27de0424d52b9e22e",
}


@pytest.mark.filterwarnings("ignore:The specified min_partition_size")
@pytest.mark.parametrize("scheme", sorted(FINGERPRINTS))
def test_zero_skew_data_are_bit_identical_to_those_before_the_skews(scheme: str) -> None:
    het = (label_skew(0.5) if scheme == "label_skew"
           else HeterogeneitySettings(name="dirichlet", alpha=0.5, min_partition_size=2))
    digest = hashlib.sha256()
    for examples in clients(het):
        for tensor in (examples.features, examples.labels, examples.true_labels):
            digest.update(tensor.numpy().tobytes())
    assert digest.hexdigest() == FINGERPRINTS[scheme]


def test_zero_skew_data_follow_the_client_stream_by_hand() -> None:
    """Independent re-draw: permutation of the labels, N(0, sigma_p^2) noise with the e_1 coordinate
    removed, label flips: the same numbers in the same order from client k's CLIENT_DATA stream."""
    het = label_skew(1.0)
    labels = partition_true_labels(het, SEED, K, N)[0]
    for k, examples in enumerate(clients(het)):
        rng = numpy_rng(SEED, Stream.CLIENT_DATA, k)
        y_hat = rng.permutation(labels[k])
        noise = rng.normal(0.0, DATA.noise_std, size=(N, D))
        noise[:, 0] = 0.0
        flips = rng.random(N) < DATA.label_noise
        assert torch.equal(examples.true_labels, torch.from_numpy(y_hat.astype(np.float32)))
        assert torch.equal(examples.noise, torch.from_numpy(noise.astype(np.float32)))
        assert torch.equal(examples.labels, torch.from_numpy(np.where(flips, -y_hat, y_hat).astype(np.float32)))


# --- skewed data --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("noise", "signal"), [(0.5, 0.0), (0.0, 0.5), (1.0, 0.25)])
def test_skewed_clients_are_the_unskewed_ones_scaled(noise: float, signal: float) -> None:
    """Same random numbers, so client k's noise patches are f_k times, its signal patches c_k times those
    of the unskewed client, with f_k, c_k = exp(s z), z evenly spaced, standardised, seeded order."""
    plain, skewed = clients(label_skew(1.0)), clients(label_skew(1.0, noise, signal))
    z = np.linspace(-1.0, 1.0, K) / np.linspace(-1.0, 1.0, K).std()
    noise_factors = np.exp(noise * numpy_rng(SEED, Stream.CLIENT_SKEW, 0).permutation(z)) if noise else np.ones(K)
    signal_factors = np.exp(signal * numpy_rng(SEED, Stream.CLIENT_SKEW, 1).permutation(z)) if signal else np.ones(K)
    for k in range(K):
        assert torch.equal(skewed[k].labels, plain[k].labels)
        assert torch.equal(skewed[k].true_labels, plain[k].true_labels)
        torch.testing.assert_close(skewed[k].features[:, NOISE_PATCH],
                                   noise_factors[k] * plain[k].features[:, NOISE_PATCH],
                                   rtol=1e-6, atol=0.0, check_dtype=False)
        torch.testing.assert_close(skewed[k].features[:, SIGNAL_PATCH],
                                   signal_factors[k] * plain[k].features[:, SIGNAL_PATCH],
                                   rtol=1e-6, atol=0.0, check_dtype=False)
        assert torch.all(skewed[k].noise[:, 0] == 0)  # still orthogonal to mu


@pytest.mark.parametrize("spread", [0.0, 0.1, 0.5, 1.5])
def test_realised_skews_match_the_requested_spread(spread: float) -> None:
    """std over clients of log(measured / law) is a seminorm: |realised - s| <= the std of the
    per-client measurement errors, each of s.d. LOG_NOISE_SD (noise) and 0 up to float32 (signal);
    5 s.d. bound it with room to spare."""
    het = label_skew(0.5, spread, spread)
    labels = partition_true_labels(het, SEED, K, N)[0]
    measured = measure_skews(DATA, SEED, labels, all_client_skews(het, SEED, K), MU)
    assert abs(measured.noise_skew - spread) < 5 * LOG_NOISE_SD
    assert measured.signal_skew == pytest.approx(spread, abs=1e-6)
    # per client, measured by hand from the generated data
    for k, examples in enumerate(clients(het)):
        xi = examples.noise.double()
        assert measured.noise_scales[k] == pytest.approx(math.sqrt(float((xi**2).sum()) / (N * (D - 1))), rel=1e-12)
        norms = examples.features[:, SIGNAL_PATCH].double().norm(dim=1) / 1.5
        assert measured.signal_scales[k] == pytest.approx(float(norms.mean()), rel=1e-12)
        assert abs(math.log(measured.noise_scales[k]) - math.log(all_client_skews(het, SEED, K)[k].noise)) \
            < 5 * LOG_NOISE_SD


@pytest.mark.parametrize("h", [0.0, 0.5, 1.0])
def test_skews_combine_with_label_skew_without_changing_labels(h: float) -> None:
    plain, skewed = clients(label_skew(h)), clients(label_skew(h, 0.5, 0.5))
    for a, b in zip(plain, skewed, strict=True):
        assert torch.equal(a.true_labels, b.true_labels)
        assert int((b.true_labels == 1).sum()) in (round(N * (1 + h) / 2), N - round(N * (1 + h) / 2))


def test_clients_train_on_the_skewed_data() -> None:
    """The per-process cache that local_update reads gives client_dataset's skewed numbers."""
    het = label_skew(0.5, 0.5, 0.5)
    clear_client_data_cache()
    try:
        for k in (0, 3):
            cached = cached_client_dataset(DATA, het, SEED, k, K)
            assert torch.equal(cached.features, client_dataset(DATA, het, SEED, k, K, MU).features)
    finally:
        clear_client_data_cache()


# --- recorded like realised h ----------------------------------------------------------------------


def test_realised_skews_are_in_partition_json_summary_facts_and_the_first_line() -> None:
    settings = load_settings("debug=default heterogeneity=label_skew_noise heterogeneity.h=1 fl.num_clients=4 "
                             "heterogeneity.signal_skew=0.3")[0]
    setup = server_setup(settings)
    data, n = settings.data, settings.data.samples_per_client
    scales = []
    for k in range(4):
        examples = client_dataset(data, settings.heterogeneity, settings.seed, k, 4,
                                  signal_vector(data.dim, data.signal_norm))
        scales.append(math.sqrt(float((examples.noise.double() ** 2).sum()) / (n * (data.dim - 1))))
    noise_skew = float(np.std(np.log(scales)))
    assert setup.partition["realised_noise_skew"] == setup.facts["realised_noise_skew"] == pytest.approx(noise_skew)
    assert abs(noise_skew - 0.5) < 5 / math.sqrt(2 * n * (data.dim - 1))
    assert setup.partition["realised_signal_skew"] == setup.facts["realised_signal_skew"] == pytest.approx(0.3)
    assert setup.partition["noise_factors"] == [s.noise for s in all_client_skews(settings.heterogeneity, 0, 4)]
    assert setup.partition["noise_scales"] == pytest.approx(scales)
    assert setup.realised_h == 1.0
    assert (f"realised h=1.0000, realised noise skew={noise_skew:.4f} (asked 0.5), realised signal skew=0.3000 "
            "(asked 0.3)") in setup.description
    row = {column: 0.0 for column in ("round", "test_error", "clients")}
    summary = run_summary(settings, setup, [row], None, 1.0, [])
    assert summary["facts"]["realised_noise_skew"] == setup.facts["realised_noise_skew"]
    json.dumps(summary["facts"])  # JSON-ready
    json.dumps(setup.partition)


def test_unskewed_run_records_the_sampling_floor_and_no_skew_text() -> None:
    setup = server_setup(load_settings("debug=default")[0])
    assert setup.facts["realised_signal_skew"] == 0.0
    assert 0.0 < setup.facts["realised_noise_skew"] < 5 / math.sqrt(2 * 10 * 99)  # debug: n = 10, d = 100
    assert "skew" not in setup.description
    assert "one_step_flip_ratio_min" not in setup.facts


# --- the regime of skewed clients ---------------------------------------------------------------------


def test_skew_regime_facts_by_hand() -> None:
    settings = load_settings("heterogeneity=label_skew_signal heterogeneity.noise_skew=0.25")[0]
    skews = all_client_skews(settings.heterogeneity, settings.seed, 10)
    noise, signal = [s.noise for s in skews], [s.signal for s in skews]
    facts = skew_regime_facts(settings, noise, signal)
    assert facts["one_step_flip_ratio_min"] == pytest.approx(0.1 * 20 / (0.5 * 1.5 * max(signal)), rel=1e-12)
    per_client = [20 * (1.5 * c) ** 4 / (f**4 * 1000) for f, c in zip(noise, signal, strict=True)]
    assert facts["overfit_measure_client_min"] == pytest.approx(min(per_client), rel=1e-12)
    assert facts["overfit_measure_client_max"] == pytest.approx(max(per_client), rel=1e-12)
    assert skew_regime_facts(settings, [1.0] * 10, [1.0] * 10) == {}
    line = regime_line({**regime_facts(settings), **facts})
    assert line.startswith(regime_line(regime_facts(settings)) + "; over the skewed clients: one_step_flip_ratio >= ")
    strong = {"one_step_flip_ratio": 2.0, "one_step_flip_ratio_min": 0.8}
    assert regime_warnings(strong)[0].startswith("one_step_flip_ratio_min=0.8 < 1: on the client with the strongest")
    assert one_step_flip_ratio(0.1, 1.5 * 2.0, 0.5, 20) == pytest.approx(one_step_flip_ratio(0.1, 1.5, 0.5, 20) / 2)


# --- report -------------------------------------------------------------------------------------------


def write_run(folder: Path, settings, test_error: float, facts: dict[str, float]) -> None:
    folder.mkdir(parents=True)
    rows = [{**{column: float("nan") for column in ROUND_COLUMNS}, "round": r, "test_error": test_error,
             "test_loss": 0.5, "misaligned": 0.0} for r in (0, 1)]
    (folder / "rounds.csv").write_text(rounds_csv_text(rows, ROUND_COLUMNS))
    summary = {"final": {"round": 1, "test_error": test_error, "test_loss": 0.5, "misaligned": 0.0},
               "realised_h": settings.heterogeneity.h, "facts": facts, "settings": settings.to_dict(),
               "wall_time_s": 1.0}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_report_pairs_skewed_runs_with_the_unskewed_run_and_shows_the_realised_skews(tmp_path: Path) -> None:
    base = load_settings("")[0]
    kinds = {"none": (label_skew(0.0), 0.10), "label": (label_skew(1.0), 0.15), "noise": (label_skew(0.0, 0.5), 0.12),
             "both": (label_skew(1.0, 0.0, 0.5), 0.11)}
    for name, (het, error) in kinds.items():
        for seed in (0, 1):
            facts = {"realised_noise_skew": het.noise_skew + 0.01 * seed, "realised_signal_skew": het.signal_skew}
            settings = replace(base, heterogeneity=het, seed=seed)
            write_run(tmp_path / f"{name}{seed}", settings, error + seed / 100, facts)
    result = report.write_report(tmp_path)
    rows = {(r["heterogeneity.h"], r["heterogeneity.noise_skew"], r["heterogeneity.signal_skew"]): r
            for r in result["rows"]}
    assert rows[0.0, 0.5, 0.0]["heterogeneity_penalty_mean"] == pytest.approx(0.02)
    assert rows[1.0, 0.0, 0.5]["heterogeneity_penalty_mean"] == pytest.approx(0.01)
    assert rows[1.0, 0.0, 0.0]["heterogeneity_penalty_mean"] == pytest.approx(0.05)
    assert rows[0.0, 0.5, 0.0]["realised_noise_skew_mean"] == pytest.approx(0.505)
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert header.index("realised_noise_skew_mean") == header.index("realised_h_std") + 1
    assert "| realised noise skew | realised signal skew |" in (tmp_path / "summary.md").read_text()


def test_report_of_unskewed_runs_has_no_skew_columns(tmp_path: Path) -> None:
    base = load_settings("")[0]
    for h in (0.0, 1.0):
        write_run(tmp_path / f"h{h}", replace(base, heterogeneity=label_skew(h)), 0.1 + h / 10,
                  {"realised_noise_skew": 0.005, "realised_signal_skew": 0.0})
    report.write_report(tmp_path)
    written = (tmp_path / "summary.csv").read_text() + (tmp_path / "summary.md").read_text()
    assert "realised_noise_skew" not in written and "realised noise skew" not in written
    assert "Noise and signal skew" not in written
