"""initmatters_core.tasks.image: image datasets (offline), partitions, ResNet18 / PatchCNN, alignment, augmentation.

Offline and CPU-only: digits ships with scikit-learn; CIFAR-10 / TinyImageNet are tiny fixtures in
their Hub format written here; ImageNet weights are a locally saved random ResNet18.
"""

from __future__ import annotations

import time
import urllib.error

import datasets
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.nn import functional

from initmatters_core import federation as partitions
from initmatters_core.federation import heterogeneity_measure
from initmatters_core.metrics import flat_update, update_diversity
from initmatters_core.plots import plot_label_histograms
from initmatters_core.settings import SettingError
from initmatters_core.tasks.image import alignment, models
from initmatters_core.tasks.image import datasets as vision_datasets
from initmatters_core.tasks.image.datasets import DataUnavailableError, load_image_dataset, to_tensors
from initmatters_core.tasks.image.models import (
    PatchCNN,
    WeightsUnavailableError,
    load_imagenet_weights,
    patchify,
    resnet18,
)
from initmatters_core.tasks.image.partitions import image_partitions
from initmatters_core.tasks.image.transforms import (
    BatchAugment,
    attach_train_augmentation,
    make_batch_augment,
    train_augmentation,
)
from initmatters_core.tasks.synthetic.alignment import aligned_mask as binary_aligned_mask
from initmatters_core.tasks.synthetic.model import TwoLayerReluCNN, logistic_loss
from initmatters_core.tasks.synthetic.partition import realised_heterogeneity
from initmatters_core.training import train_steps

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _random_images(count: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def _write_parquet(path, images, labels, image_column: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = datasets.Dataset.from_dict({image_column: images, "label": labels})
    dataset.cast_column(image_column, datasets.Image()).to_parquet(str(path))


@pytest.fixture(scope="module")
def cifar_copy(tmp_path_factory):
    """A CIFAR-10 copy in the Hub layout: plain_text/{train,test}-00000-of-00001.parquet (img, label)."""
    root = tmp_path_factory.mktemp("cifar10")
    train_images = _random_images(40, 32, seed=0)
    _write_parquet(root / "plain_text" / "train-00000-of-00001.parquet", train_images,
                   [i % 10 for i in range(40)], "img")
    _write_parquet(root / "plain_text" / "test-00000-of-00001.parquet", _random_images(20, 32, seed=1),
                   [i % 10 for i in range(20)], "img")
    return root, train_images


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hf-cache")


# --- datasets -------------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test = load_image_dataset("digits", "train"), load_image_dataset("digits", "test")
    assert (len(train), len(test), train.num_classes, train.source) == (1438, 359, 10, "sklearn")
    train_x, train_y = to_tensors(train, normalize=False)
    test_x, test_y = to_tensors(test, normalize=False)
    assert train_x.shape == (1438, 1, 8, 8) and test_x.shape == (359, 1, 8, 8)
    assert float(train_x.min()) >= 0.0 and float(train_x.max()) <= 1.0
    assert np.bincount(test_y.numpy(), minlength=10).min() >= 34  # 20% of every class
    # disjoint: no test image appears in the training split
    train_rows = {row.tobytes() for row in train_x.reshape(len(train), -1).numpy()}
    assert sum(row.tobytes() in train_rows for row in test_x.reshape(len(test), -1).numpy()) < 5  # a few duplicates
    assert torch.equal(to_tensors(load_image_dataset("digits", "test"), normalize=False)[0], test_x)
    normalized, _ = to_tensors(train, [0, 1, 2])
    assert normalized.shape == (3, 1, 8, 8)
    assert abs(float(to_tensors(train)[0].mean())) < 0.05


def test_unknown_dataset_is_a_one_line_setting_error():
    with pytest.raises(SettingError, match=r"^data.name='mnist' is invalid: allowed digits\|cifar10\|tinyimagenet$"):
        load_image_dataset("mnist", "train")


def test_local_parquet_copy_goes_through_federated_dataset(cifar_copy, cache_dir, monkeypatch):
    root, train_images = cifar_copy
    calls = []
    from flwr_datasets import FederatedDataset

    original = FederatedDataset.load_split
    monkeypatch.setattr(FederatedDataset, "load_split",
                        lambda self, split: calls.append(self._dataset_name) or original(self, split))
    train = load_image_dataset("cifar10", "train", root, cache_dir=cache_dir)
    assert calls == ["parquet"]
    assert train.source == f"parquet:{root}" and train.num_classes == 10 and len(train) == 40
    assert train.dataset.column_names == ["image", "label"]
    features, labels = to_tensors(train, [0, 3], normalize=False)
    assert features.shape == (2, 3, 32, 32) and labels.tolist() == [0, 3]
    expected = torch.from_numpy(np.array(train_images[3])).permute(2, 0, 1).float() / 255.0
    assert torch.allclose(features[1], expected)
    test = load_image_dataset("cifar10", "test", root, cache_dir=cache_dir)
    assert len(test) == 20


def test_tinyimagenet_valid_parquet_and_image_folder(tmp_path, cache_dir):
    _write_parquet(tmp_path / "tiny" / "data" / "valid-00000-of-00001-abc.parquet", _random_images(6, 64, seed=2),
                   [0, 5, 199, 7, 7, 3], "image")
    tiny = load_image_dataset("tinyimagenet", "test", tmp_path / "tiny", cache_dir=cache_dir)
    assert tiny.num_classes == 200 and tiny.labels.tolist() == [0, 5, 199, 7, 7, 3]
    assert to_tensors(tiny)[0].shape == (6, 3, 64, 64)
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "airplane"):
            folder = tmp_path / "folder" / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(_random_images(count, 32, seed=len(name))):
                image.save(folder / f"{i}.png")
    train = load_image_dataset("cifar10", "train", tmp_path / "folder", cache_dir=cache_dir)
    assert train.source.startswith("imagefolder:") and train.num_classes == 2 and len(train) == 6
    assert sorted(train.labels.tolist()) == [0, 0, 0, 1, 1, 1]  # airplane = 0, cat = 1 (sorted folders)
    assert len(load_image_dataset("cifar10", "test", tmp_path / "folder", cache_dir=cache_dir)) == 4


def test_no_local_copy_offline_fails_fast_with_one_line(tmp_path, cache_dir):
    start = time.monotonic()
    with pytest.raises(DataUnavailableError) as caught:
        load_image_dataset("cifar10", "train", tmp_path / "missing", cache_dir=cache_dir)
    message = str(caught.value)
    assert time.monotonic() - start < 15
    assert "\n" not in message and isinstance(caught.value, SettingError)
    assert message.startswith(f"data.name=cifar10: no local copy at {tmp_path / 'missing'}")
    assert "download failed (offline" in message
    assert "hf download uoft-cs/cifar10 --repo-type dataset --local-dir <dir>" in message
    assert message.endswith("pass data.data_dir=<dir>")
    unset = r"^data.name=tinyimagenet: no local copy \(data.data_dir is not set\)"
    with pytest.raises(DataUnavailableError, match=unset):
        load_image_dataset("tinyimagenet", "test", cache_dir=cache_dir)


def test_unreachable_hub_without_offline_mode_fails_at_the_probe(monkeypatch, cache_dir):
    import huggingface_hub

    monkeypatch.setattr(vision_datasets, "_hub_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(DataUnavailableError, match=r"download failed \(http://127.0.0.1:9 is unreachable"):
        load_image_dataset("cifar10", "train", cache_dir=cache_dir, probe_timeout_s=2.0)
    assert time.monotonic() - start < 5


# --- partitions -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_labels():
    return load_image_dataset("digits", "train").labels


@pytest.mark.parametrize("scheme,options", [("iid", {}), ("dirichlet", {"alpha": 0.3}),
                                            ("pathological", {"classes_per_client": 2})])
def test_partitions_cover_rows_once_and_are_seeded(digit_labels, scheme, options):
    part = image_partitions(digit_labels, scheme, 10, seed=3, num_classes=10, **options)
    rows = np.concatenate(part.indices)
    assert np.array_equal(np.sort(rows), np.arange(digit_labels.shape[0]))
    assert part.histograms.shape == (10, 10)
    assert np.array_equal(part.histograms.sum(axis=0), np.bincount(digit_labels, minlength=10))
    for k, indices in enumerate(part.indices):
        assert np.array_equal(np.bincount(digit_labels[indices], minlength=10), part.histograms[k])
    again = image_partitions(digit_labels, scheme, 10, seed=3, num_classes=10, **options)
    assert all(np.array_equal(a, b) for a, b in zip(part.indices, again.indices, strict=True))
    if scheme == "pathological":
        assert ((part.histograms > 0).sum(axis=1) == 2).all()
    if scheme != "iid":
        other = image_partitions(digit_labels, scheme, 10, seed=4, num_classes=10, **options)
        assert any(not np.array_equal(a, b) for a, b in zip(part.indices, other.indices, strict=True))
    summary = part.to_dict()
    assert summary["sizes"] == [len(indices) for indices in part.indices]
    assert summary["heterogeneity"] == part.heterogeneity


def test_heterogeneity_measure_orders_schemes_and_equals_binary_h(digit_labels):
    iid = image_partitions(digit_labels, "iid", 10, seed=0).heterogeneity
    mild = image_partitions(digit_labels, "dirichlet", 10, seed=0, alpha=1.0).heterogeneity
    strong = image_partitions(digit_labels, "dirichlet", 10, seed=0, alpha=0.05).heterogeneity
    single = image_partitions(digit_labels, "pathological", 10, seed=0, classes_per_client=1).heterogeneity
    assert iid < 0.1 < mild < strong < single <= 1.0 and single > 0.98
    assert heterogeneity_measure(np.eye(4, dtype=np.int64) * 5) == pytest.approx(1.0)
    assert heterogeneity_measure(np.full((3, 4), 7)) == 0.0
    # binary task, balanced pool: H is the paper's h = mean_k |n+ - n-| / n_k
    clients = [np.array([1] * 8 + [-1] * 2), np.array([1] * 5 + [-1] * 15), np.array([1] * 17 + [-1] * 13)]
    histograms = np.stack([[int((c == 1).sum()), int((c == -1).sum())] for c in clients])
    assert heterogeneity_measure(histograms) == pytest.approx(realised_heterogeneity(clients))


@pytest.mark.parametrize("scheme,options,key", [
    ("label_skew", {}, "heterogeneity='label_skew'"),
    ("dirichlet", {"alpha": 0.0}, "heterogeneity.alpha=0.0"),
    ("pathological", {"classes_per_client": 11}, "heterogeneity.classes_per_client=11"),
    ("iid", {"num_partitions": 2000}, "fl.num_clients=2000"),
])
def test_partition_settings_fail_with_one_line(digit_labels, scheme, options, key):
    num_partitions = options.pop("num_partitions", 10)
    with pytest.raises(SettingError, match=rf"^{key.replace('.', '[.]')} is invalid: allowed"):
        image_partitions(digit_labels, scheme, num_partitions, seed=0, **options)


def test_unreachable_dirichlet_minimum_is_a_setting_error(digit_labels):
    most = digit_labels.shape[0] // 10
    with pytest.raises(SettingError, match=rf"^heterogeneity[.]min_partition_size={most + 1} is invalid: allowed at "
                                           rf"most {most} "):
        image_partitions(digit_labels, "dirichlet", 10, seed=0, alpha=0.01, min_partition_size=most + 1)


def test_histogram_plots_are_png(tmp_path, digit_labels):
    part = image_partitions(digit_labels, "dirichlet", 5, seed=0, alpha=0.5)
    assert plot_label_histograms(part.histograms, tmp_path / "hist.png", "digits").read_bytes()[:8] == PNG_MAGIC
    many = np.random.default_rng(0).integers(0, 9, (4, 30))
    assert plot_label_histograms(many, tmp_path / "many.png").read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_stratified_split_holds_out_each_class(digit_labels):
    kept, held = partitions.stratified_split(digit_labels, 0.1, np.random.default_rng(0))
    assert np.intersect1d(kept, held).size == 0 and kept.size + held.size == digit_labels.size
    assert np.all(np.abs(np.bincount(digit_labels[held]) - 0.1 * np.bincount(digit_labels)) <= 0.5)


# --- models ---------------------------------------------------------------------------------------


def test_resnet18_stems_and_norms():
    imagenet = resnet18(1000)
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, torch.nn.MaxPool2d)
    cifar = resnet18(10, "group", cifar_stem=True)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    norms = [module for module in cifar.modules() if isinstance(module, torch.nn.GroupNorm)]
    assert norms and all(norm.num_groups == 32 for norm in norms)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in cifar.modules())
    assert (models.group_count(48), models.group_count(20), models.group_count(7)) == (24, 20, 7)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    gray = resnet18(10, cifar_stem=True, in_channels=1, seed=5)
    assert gray.conv1.in_channels == 1
    assert torch.equal(gray.conv1.weight, resnet18(10, cifar_stem=True, in_channels=1, seed=5).conv1.weight)
    with pytest.raises(SettingError, match=r"^model.norm='layer' is invalid: allowed batch\|group$"):
        resnet18(10, "layer")


def test_imagenet_weights_from_a_local_file(tmp_path):
    source = torchvision.models.resnet18()  # random weights stand in for IMAGENET1K_V1
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    model = resnet18(10)
    report = load_imagenet_weights(model, path)
    assert set(report.skipped) == {"fc.weight", "fc.bias"} and set(report.unused) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(model.bn1.running_var, source.bn1.running_var)
    grouped = resnet18(10, "group", cifar_stem=True)
    report = load_imagenet_weights(grouped, str(path))
    assert "conv1.weight" in report.skipped and "bn1.running_mean" in report.unused
    assert torch.equal(grouped.bn1.weight, source.bn1.weight)  # BN affine -> GroupNorm affine
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "wrapped.pt")
    assert load_imagenet_weights(resnet18(1000), tmp_path / "wrapped.pt").skipped == ()


def test_imagenet_weights_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(WeightsUnavailableError, match=r"^init.path=.*missing.pt: no such file; download https://"):
        load_imagenet_weights(resnet18(10), tmp_path / "missing.pt")
    torch.save({"weight": torch.zeros(2, 3)}, tmp_path / "other.pt")
    with pytest.raises(WeightsUnavailableError, match=r"not the state dict of a torchvision ResNet18"):
        load_imagenet_weights(resnet18(10), tmp_path / "other.pt")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as caught:
        load_imagenet_weights(resnet18(10))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("ImageNet weights: no local file (init.path is not set)")
    assert "URLError" in message and message.endswith("pass init.path=<file>")


def test_patch_cnn_is_the_papers_network():
    generator = torch.Generator().manual_seed(0)
    model = PatchCNN(3, 2, 2, 4, init_std=0.5, generator=generator)
    assert model.weight.shape == (3, 4, 8)
    images = torch.randn(5, 2, 4, 6, generator=generator)
    patches = patchify(images, 2)
    assert patches.shape == (5, 6, 8)
    # patch order = conv kernel order: a stride-p convolution gives the same responses
    conv = functional.conv2d(images, model.weight.reshape(12, 2, 2, 2), stride=2).flatten(2).transpose(1, 2)
    assert torch.allclose(conv, patches @ model.weight.reshape(12, 8).T, atol=1e-6)
    expected = torch.stack([
        torch.stack([sum(functional.relu(model.weight[c, r] @ patches[i, p]) for r in range(4) for p in range(6)) / 4
                     for c in range(3)])
        for i in range(5)
    ])
    assert torch.allclose(model(images), expected, atol=1e-5)
    # C = 2: cross-entropy on [F_0, F_1] is the paper's logistic loss on f = F_{+1} - F_{-1}
    binary = PatchCNN(2, 2, 1, 3, init_std=0.5, generator=generator)
    paper = TwoLayerReluCNN(dim=4, filters_per_class=3)
    paper.weight.data.copy_(binary.weight.data)
    images = torch.randn(6, 1, 2, 4, generator=generator)
    labels = torch.tensor([0, 1, 1, 0, 0, 1])
    ce = functional.cross_entropy(binary(images), labels)
    assert torch.allclose(ce, logistic_loss(paper(patchify(images, 2)), 1.0 - 2.0 * labels), atol=1e-6)
    with pytest.raises(ValueError, match="must divide"):
        model(torch.randn(1, 2, 5, 6))


# --- alignment ------------------------------------------------------------------------------------


def test_multiclass_alignment_definition():
    images = torch.zeros(4, 1, 2, 2)
    images[0, 0, 0, 0] = images[1, 0, 0, 0] = 4.0  # class 0: first pixel; class 1: second pixel
    images[2, 0, 0, 1] = images[3, 0, 0, 1] = 4.0
    signals = alignment.class_mean_signals(images, torch.tensor([0, 0, 1, 1]), 2, 2)
    assert signals.tolist() == [[2.0, -2.0, 0.0, 0.0], [-2.0, 2.0, 0.0, 0.0]]  # class mean patch - global mean
    # with 1-pixel patches both classes have the same patch-averaged input: no signal
    assert alignment.class_mean_signals(images, torch.tensor([0, 0, 1, 1]), 2, 1).abs().max() == 0
    signals = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    weight = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]],
                           [[0.0, 1.0, 3.0], [-1.0, 0.0, -2.0]],
                           [[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]])
    assert alignment.aligned_mask(weight, signals).tolist() == [[True, False], [False, True], [True, False]]
    counts = alignment.alignment_counts(weight, signals)
    assert counts == {"aligned": 3, "misaligned": 3, "aligned_class0": 1, "aligned_class1": 1, "aligned_class2": 1}
    table = alignment.transition_counts(weight, -weight, signals)
    assert sum(table.values()) == 6 and table["aligned_init_aligned_now"] == 0
    # two balanced classes: the rule is Definition 1 (<w_{j,r}, j mu> > 0) with mu = mu_0 = -mu_1
    mu = torch.randn(5)
    binary = torch.randn(2, 7, 5)
    assert torch.equal(alignment.aligned_mask(binary, torch.stack([mu, -mu])), binary_aligned_mask(binary, mu))


def test_training_the_patch_cnn_aligns_filters():
    features, labels = to_tensors(load_image_dataset("digits", "train"))
    model = PatchCNN(10, 8, 1, 4, init_std=0.01, generator=torch.Generator().manual_seed(0))
    signals = alignment.class_mean_signals(features, labels, 10, 8)
    before = alignment.alignment_counts(model.weight.detach(), signals, per_class=False)
    loss = train_steps(model, features, labels, functional.cross_entropy, steps=60, lr=0.5, batch_size=64,
                       momentum=0.9, generator=torch.Generator().manual_seed(1))
    after = alignment.alignment_counts(model.weight.detach(), signals, per_class=False)
    assert before["aligned"] < 15 and after["aligned"] > 30 and loss < 1.0


def test_first_layer_proxy():
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(3, 3, 3, generator=generator)
    direction /= direction.norm()
    # 3x3 images: every 3x3 patch is a whole image, a strong component along `direction` plus noise
    images = torch.randn(400, 3, 3, 3, generator=generator) * 0.05
    images += torch.randn(400, 1, 1, 1, generator=generator) * direction
    basis = alignment.data_patch_basis(images, 3, generator=generator)
    assert basis.shape == (4, 27)
    assert torch.allclose(basis @ basis.T, torch.eye(4), atol=1e-5)
    assert abs(float(basis[0] @ direction.reshape(-1))) > 0.99
    aligned = alignment.first_layer_alignment(direction.reshape(1, 3, 3, 3) * 2.0, basis)
    assert aligned["conv1_pc_energy"] == pytest.approx(1.0, abs=1e-3) and aligned["conv1_pc1_abs_cos"] > 0.99
    random_filters = alignment.first_layer_alignment(torch.randn(4000, 3, 3, 3, generator=generator), basis)
    assert random_filters["conv1_pc_energy_chance"] == pytest.approx(4 / 27)
    assert random_filters["conv1_pc_energy"] == pytest.approx(4 / 27, abs=0.01)
    assert alignment.first_layer_alignment(resnet18(10, cifar_stem=True).conv1.weight, basis)["conv1_pc_energy"] < 0.5


def test_update_diversity():
    base = torch.randn(10)
    assert update_diversity([base, 2 * base, 0.5 * base]) == pytest.approx(1.0)
    assert update_diversity([base, -base]) == pytest.approx(-1.0)
    assert update_diversity([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]) == pytest.approx(0.0)
    assert update_diversity([base, torch.zeros(10), base]) == pytest.approx(1.0 / 3.0)
    assert np.isnan(update_diversity([base]))
    global_state = {
        "w": torch.zeros(2, 2), "bn.running_mean": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(3)
    }
    local = {"w": torch.ones(2, 2), "bn.running_mean": torch.ones(2), "bn.num_batches_tracked": torch.tensor(5)}
    assert flat_update(local, global_state).tolist() == [1.0] * 4
    assert flat_update(local, global_state, skip_running_stats=False).shape == (6,)


# --- augmentation and one local round on the CIFAR fixture ----------------------------------------


def test_batch_augmentation_is_per_image_and_seeded():
    assert train_augmentation("digits") is None and make_batch_augment("digits") is None
    batch = torch.arange(16 * 3 * 32 * 32, dtype=torch.float32).reshape(16, 3, 32, 32)
    state = torch.get_rng_state()
    first = make_batch_augment("cifar10", torch.Generator().manual_seed(7))(batch)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    second = make_batch_augment("cifar10", torch.Generator().manual_seed(7))(batch)
    assert first.shape == batch.shape and torch.equal(first, second)
    changed = [not torch.equal(first[i], batch[i]) for i in range(16)]
    assert any(changed) and len({first[i].sum().item() - batch[i].sum().item() for i in range(16)}) > 2
    assert make_batch_augment("tinyimagenet")(torch.zeros(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    assert BatchAugment(lambda image: image + 1.0)(torch.zeros(3, 1, 2, 2)).eq(1.0).all()


def test_fixture_partition_and_a_local_round_of_resnet18(cifar_copy, cache_dir):
    root, _ = cifar_copy
    train = load_image_dataset("cifar10", "train", root, cache_dir=cache_dir)
    part = image_partitions(train.labels, "dirichlet", 4, seed=0, alpha=0.5, num_classes=train.num_classes)
    # the ImageNet stem (4x downsampling) keeps this CPU round cheap; the CIFAR stem is tested above
    global_model = resnet18(train.num_classes, "group", seed=0)
    global_state = {key: value.clone() for key, value in global_model.state_dict().items()}
    updates = []
    for k in range(2):
        features, labels = to_tensors(train, part.indices[k])
        model = resnet18(train.num_classes, "group")
        model.load_state_dict(global_state)
        seen: list[torch.Size] = []

        def flip(batch: torch.Tensor, seen: list[torch.Size] = seen) -> torch.Tensor:
            seen.append(batch.shape)
            return batch.flip(3)

        handle = attach_train_augmentation(model, flip)
        loss = train_steps(model, features, labels, functional.cross_entropy, steps=1, lr=0.01, batch_size=4,
                           momentum=0.9, weight_decay=5e-4, generator=torch.Generator().manual_seed(k))
        handle.remove()
        assert seen == [(min(4, len(labels)), 3, 32, 32)]  # training batches only: evaluation is in eval mode
        assert np.isfinite(loss) and list(model.state_dict()) == list(global_state)
        updates.append(flat_update(model.state_dict(), global_state))
    assert all(float(update.norm()) > 0 for update in updates)
    assert -1.0 <= update_diversity(updates) <= 1.0
