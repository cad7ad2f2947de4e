"""The image task: the paper's practical experiments (real images, ResNet18, Dirichlet labels).

Modules: `settings` (its data and model sections, checks), `datasets` (digits offline;
CIFAR-10 / TinyImageNet through flwr-datasets' FederatedDataset from the Hub or a local copy),
`partitions` (label partitions of a split with the shared partitioner), `models` (torchvision
ResNet18 with BatchNorm or GroupNorm, ImageNet weights, and the patch CNN: the paper's two-layer
ReLU CNN generalised to C classes), `alignment` (the project's extension of Definition 1 beyond
the binary model), `transforms` (torchvision.transforms.v2 augmentation per mini-batch), `task`
(server setup and the client's local update). No Flower or Hydra imports.
"""
