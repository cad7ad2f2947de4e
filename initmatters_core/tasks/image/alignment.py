"""Alignment beyond the two-layer binary model: the project's own extension (not in the paper).

Pure functions on tensors, computed by the server on the global model every round.

1. Multi-class patch CNN (`PatchCNN`, weight [C, m, D]). Class signals: with x_{i,p} the patches
   of the reference images (the server's own data) and xbar the mean patch over all examples and
   patches,
       mu_c = mean over class-c examples i and patches p of x_{i,p}  -  xbar      (a vector in R^D).
   Filter w_{c,r} is *aligned* when it responds more to its own class's signal than to any other:
       <w_{c,r}, mu_c> > max_{c' != c} <w_{c,r}, mu_{c'}>,
   and *misaligned* otherwise. For C = 2 with balanced classes mu_1 = -mu_0, so the rule reads
   <w_{c,r}, mu_c> > 0: the paper's Definition 1 with mu_{+1} = mu, mu_{-1} = -mu.
2. ResNet18 (first-layer proxy). First-layer filters are not class-specific, so the proxy is
   data alignment: the share of each stem filter's squared norm in the span of the top-k
   principal components of the (normalised) data's patches at the filter's size, averaged over
   filters. A random isotropic filter scores k/D in expectation (reported alongside as chance);
   filters tuned to image statistics (e.g. pre-trained ones) score higher. Also reported: the
   mean |cosine| of the filters with the first principal component.
Update diversity (any model) lives in `initmatters_core.metrics.update_diversity`.
"""

from __future__ import annotations

import math

import torch

from initmatters_core.metrics import transition_table
from initmatters_core.tasks.image.models import patchify

# --- 1. multi-class patch CNN ---------------------------------------------------------------------


def class_mean_signals(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, patch_size: int
) -> torch.Tensor:
    """mu_c = (mean class-c patch) - (mean patch over all examples), shape [C, D].

    Raises ValueError when a class has no example (its signal is undefined).
    """
    patches = patchify(images, patch_size).to(torch.float64)  # [N, P, D]
    per_example = patches.mean(dim=1)  # [N, D]
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"class_mean_signals: no example of class(es) {missing}")
    sums = torch.zeros(num_classes, per_example.shape[1], dtype=torch.float64).index_add_(0, labels, per_example)
    means = sums / counts.unsqueeze(1).to(torch.float64)
    return (means - per_example.mean(dim=0)).to(images.dtype)


def class_responses(weight: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
    """<w_{c,r}, mu_{c'}> for every filter and class signal, shape [C, m, C]."""
    return torch.einsum("cmd,kd->cmk", weight, signals.to(weight.dtype))


def aligned_mask(weight: torch.Tensor, signals: torch.Tensor) -> torch.Tensor:
    """Boolean [C, m]: w_{c,r} responds more to mu_c than to every other mu_{c'}."""
    responses = class_responses(weight, signals)
    num_classes = responses.shape[0]
    own = torch.diagonal(responses, dim1=0, dim2=2).T  # [C, m]: <w_{c,r}, mu_c>
    if num_classes == 1:
        return own > 0
    others = responses.masked_fill(torch.eye(num_classes, dtype=torch.bool).unsqueeze(1), -math.inf)
    return own > others.amax(dim=2)


def alignment_counts(weight: torch.Tensor, signals: torch.Tensor, *, per_class: bool = True) -> dict[str, int]:
    """Aligned/misaligned filter counts in all and, with `per_class`, aligned_class{c} per class."""
    aligned = aligned_mask(weight, signals)
    counts = {"aligned": int(aligned.sum()), "misaligned": int((~aligned).sum())}
    if per_class:
        counts.update({f"aligned_class{c}": int(row.sum()) for c, row in enumerate(aligned)})
    return counts


def transition_counts(init_weight: torch.Tensor, weight: torch.Tensor, signals: torch.Tensor) -> dict[str, int]:
    """The 2 x 2 table 'aligned at init' x 'aligned now', over all C m filters."""
    return transition_table(aligned_mask(init_weight, signals), aligned_mask(weight, signals))


# --- 2. ResNet18 first-layer proxy ----------------------------------------------------------------


def data_patch_basis(
    images: torch.Tensor,
    kernel_size: int,
    num_components: int | None = None,
    *,
    max_patches: int = 20000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Top principal directions of random kernel_size x kernel_size patches of `images`, [k, D].

    D = channels * kernel_size^2, ordered like a flattened conv kernel; k = num_components,
    default ceil(D / 8). Patches (at most `max_patches`, drawn with `generator`) are centred
    before the PCA; the rows are orthonormal, the first the leading component.
    """
    n, channels, height, width = images.shape
    if kernel_size > min(height, width):
        raise ValueError(f"kernel_size={kernel_size} exceeds the image size {height}x{width}")
    dim = channels * kernel_size * kernel_size
    k = math.ceil(dim / 8) if num_components is None else int(num_components)
    if not 1 <= k <= dim:
        raise ValueError(f"num_components={num_components} is invalid: allowed 1..{dim}")
    count = min(max_patches, n * (height - kernel_size + 1) * (width - kernel_size + 1))
    which = torch.randint(n, (count,), generator=generator)
    rows = torch.randint(height - kernel_size + 1, (count,), generator=generator)
    cols = torch.randint(width - kernel_size + 1, (count,), generator=generator)
    offsets = torch.arange(kernel_size)
    row_index = (rows[:, None] + offsets)[:, :, None].expand(count, kernel_size, kernel_size)
    col_index = (cols[:, None] + offsets)[:, None, :].expand(count, kernel_size, kernel_size)
    source = images.detach().to("cpu", torch.float64)
    patches = source[which[:, None, None, None], torch.arange(channels)[None, :, None, None],
                     row_index[:, None], col_index[:, None]]  # [count, C, k, k]
    patches = patches.reshape(count, dim)
    patches = patches - patches.mean(dim=0)
    covariance = patches.T @ patches / max(count - 1, 1)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    return vectors.flip(1)[:, :k].T.contiguous().to(images.dtype)


def first_layer_alignment(conv_weight: torch.Tensor, basis: torch.Tensor) -> dict[str, float]:
    """The ResNet18 proxy of the module docstring for a conv weight [F, C, k, k] and a basis [K, D].

    conv1_pc_energy: mean over filters of ||B w||^2 / ||w||^2 (B the basis rows);
    conv1_pc_energy_chance: K / D, its expectation for random isotropic filters;
    conv1_pc1_abs_cos: mean over filters of |<w, b_1>| / ||w||.
    """
    filters = conv_weight.detach().reshape(conv_weight.shape[0], -1).to(torch.float64)
    if filters.shape[1] != basis.shape[1]:
        raise ValueError(f"filters have {filters.shape[1]} inputs, the basis {basis.shape[1]}")
    basis = basis.detach().to(torch.float64)
    norms_sq = (filters * filters).sum(dim=1).clamp_min(1e-30)
    projections = filters @ basis.T  # [F, K]
    return {
        "conv1_pc_energy": float(((projections * projections).sum(dim=1) / norms_sq).mean()),
        "conv1_pc_energy_chance": float(basis.shape[0] / basis.shape[1]),
        "conv1_pc1_abs_cos": float((projections[:, 0].abs() / norms_sq.sqrt()).mean()),
    }
