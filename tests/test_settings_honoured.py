"""Every accepted fl.* setting changes what a client does, in both tasks, through the one loop.

Regression test for the issue "fl.momentum, fl.weight_decay, fl.local_epochs, fl.device are
accepted but ignored by the synthetic task": each setting is applied to one client's round from
w(0) and the returned state must differ from the same round without it (or, for fl.device=cuda
on a machine without a GPU, fail with the one-line SettingError before any start-up). Also:
the defaults still give exactly the plain (S)GD arithmetic, and choosing a dataset chooses its
model and partition (conf/data/<image>.yaml) while command-line choices win.
"""

from __future__ import annotations

import functools

import pytest
import torch

from initmatters.compose import load_settings
from initmatters_core.seeding import Stream, torch_generator
from initmatters_core.settings import ExperimentSettings, SettingError
from initmatters_core.tasks import load_task
from initmatters_core.tasks.base import State
from initmatters_core.training import local_step_count, steps_per_epoch, train_steps

TASKS = {
    "synthetic": "debug=default",
    # 20 clients: about 65 digits per client, so two epochs of batches of 4 are 34 steps
    "image": "data=digits model=patch_cnn heterogeneity=iid debug=default fl.num_clients=20",
}

# (what is changed, the overrides with it, the overrides of the same call without it)
CHANGES = [
    ("momentum", "fl.momentum=0.9", ""),
    ("weight_decay", "fl.weight_decay=0.01", ""),
    ("local_epochs", "fl.local_epochs=2 fl.batch_size=4", "fl.batch_size=4"),
    ("batch_size", "fl.batch_size=4", ""),
]


@functools.cache
def settings_of(overrides: str) -> ExperimentSettings:
    return load_settings(overrides)[0]


@functools.cache
def init_state_of(task: str) -> State:
    settings = settings_of(TASKS[task])
    return load_task(settings).server_setup(settings).init_state


def client_round(overrides: str, proximal_mu: float = 0.0) -> State:
    """Client 0's round 1 from w(0) under `overrides`."""
    settings = settings_of(overrides)
    task = load_task(settings)
    task_name = "synthetic" if settings.data.name == "synthetic" else "image"
    update = task.local_update(settings, 0, settings.fl.num_clients, global_state=init_state_of(task_name),
                               init_state=None, server_round=1, proximal_mu=proximal_mu)
    assert all(value.device.type == "cpu" for value in update.state.values())
    return update.state


def same_state(a: State, b: State) -> bool:
    return set(a) == set(b) and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize(("what", "changed", "baseline"), CHANGES, ids=[c[0] for c in CHANGES])
def test_each_fl_setting_changes_the_client_update(task: str, what: str, changed: str, baseline: str) -> None:
    base = TASKS[task]
    without = client_round(f"{base} {baseline}")
    assert same_state(without, client_round(f"{base} {baseline}"))  # deterministic: a difference is the setting
    assert not same_state(client_round(f"{base} {changed}"), without), what


@pytest.mark.parametrize("task", TASKS)
def test_proximal_term_changes_the_client_update(task: str) -> None:
    base = TASKS[task]
    assert not same_state(client_round(base, proximal_mu=0.5), client_round(base))


@pytest.mark.parametrize("task", TASKS)
def test_fl_device_cuda_without_gpu_fails_before_start_up(task: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fl.device=cuda is valid here")
    settings = settings_of(f"{TASKS[task]} fl.device=cuda")
    with pytest.raises(SettingError) as error:
        load_task(settings).check_before_start(settings)  # what `python -m initmatters.run` calls before start-up
    assert "\n" not in str(error.value) and "fl.device" in str(error.value)


@pytest.mark.parametrize("task", TASKS)
def test_fl_device_auto_trains_where_torch_says_and_returns_cpu_state(task: str) -> None:
    settings = settings_of(f"{TASKS[task]} fl.device=auto")
    load_task(settings).check_before_start(settings)
    state = client_round(f"{TASKS[task]} fl.device=auto")  # asserts a CPU state
    if not torch.cuda.is_available():
        assert same_state(state, client_round(TASKS[task]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_synthetic_client_on_cuda_matches_cpu() -> None:
    base = TASKS["synthetic"]
    on_gpu, on_cpu = client_round(f"{base} fl.device=cuda"), client_round(base)
    assert all(torch.allclose(on_gpu[key], on_cpu[key], atol=1e-5) for key in on_cpu)


@pytest.mark.parametrize("batch_size", [0, 4])
def test_synthetic_defaults_are_the_plain_loop(batch_size: int) -> None:
    """With momentum = weight decay = local epochs = 0 on the CPU the update is exactly the plain
    train_steps call of before the fix (bit-identical reference numbers)."""
    from initmatters_core.tasks.synthetic.model import WEIGHT_KEY, logistic_loss, model_from_weight
    from initmatters_core.tasks.synthetic.task import cached_client_dataset

    settings = settings_of(f"{TASKS['synthetic']} fl.batch_size={batch_size}")
    init = init_state_of("synthetic")
    data = cached_client_dataset(settings.data, settings.heterogeneity, settings.seed, 0, settings.fl.num_clients)
    model = model_from_weight(init[WEIGHT_KEY])
    train_steps(model, data.features, data.labels, logistic_loss, steps=settings.fl.local_steps, lr=settings.fl.lr,
                batch_size=settings.fl.batch_size,
                generator=torch_generator(settings.seed, Stream.LOCAL_BATCHES, 0, 1))
    assert torch.equal(client_round(f"{TASKS['synthetic']} fl.batch_size={batch_size}")[WEIGHT_KEY],
                       model.weight.detach())


def test_local_step_count() -> None:
    assert local_step_count(7, 0, 10, 4) == 7
    assert local_step_count(7, 2, 10, 4) == 2 * steps_per_epoch(10, 4) == 6
    assert local_step_count(7, 3, 10, 0) == 3  # full batch: one step per epoch


# --- choosing a dataset chooses its defaults --------------------------------------------------------


@pytest.mark.parametrize(("overrides", "model", "heterogeneity"), [
    ("data=digits", "patch_cnn", "dirichlet"),
    ("data=cifar10", "resnet18", "dirichlet"),
    ("data=tinyimagenet", "resnet18", "dirichlet"),
    ("data=digits model=resnet18 heterogeneity=iid", "resnet18", "iid"),
    ("model=resnet18 data=digits", "resnet18", "dirichlet"),
    ("data=digits heterogeneity=iid", "patch_cnn", "iid"),
    ("data=synthetic", "two_layer_cnn", "label_skew"),
    ("", "two_layer_cnn", "label_skew"),
    ("experiment=digits_init_gap heterogeneity=iid", "patch_cnn", "iid"),
    ("experiment=cifar10_resnet18 debug=default", "resnet18", "dirichlet"),
])
def test_a_dataset_chooses_its_model_and_partition(overrides: str, model: str, heterogeneity: str) -> None:
    settings = settings_of(overrides)
    assert (settings.model.name, settings.heterogeneity.name) == (model, heterogeneity)
