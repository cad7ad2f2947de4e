"""Real-image experiments: datasets, label partitions, ResNet18 / patch CNN, alignment proxies.

The paper's "practical experiments" (ResNet18, K clients, Dirichlet label partitions, random vs
pre-trained init) plus an offline, CPU-sized version on scikit-learn's digits. Modules:

- `datasets`: `load_image_dataset` (digits offline; CIFAR-10 / TinyImageNet through
  flwr-datasets' FederatedDataset from the Hub or a local copy) and `to_tensors`.
- `partitions`: `image_partitions` (IID / Dirichlet / pathological), label histograms, the
  heterogeneity measure and a histogram plot.
- `models`: torchvision `resnet18` (CIFAR stem, BatchNorm or GroupNorm), `load_imagenet_weights`
  and `PatchCNN`, the paper's two-layer ReLU CNN generalised to C classes.
- `alignment`: the project's own extension of Definition 1 beyond the binary model.
- `transforms`: torchvision.transforms.v2 training augmentation, applied per mini-batch.

No Flower or Hydra imports here: these are pure data/model functions that the apps call.
"""
