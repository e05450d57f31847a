"""CelebA (`003` §4, A3.1): 40 binary face attributes, one task each, on a shared ResNet-18.

Data: torchvision's CelebA on-disk layout, read with ``torchvision.datasets.CelebA``
(``target_type="attr"``, never downloading)::

    <data-dir>/celeba/img_align_celeba/000001.jpg ... 202599.jpg   (aligned 178x218 faces)
    <data-dir>/celeba/list_attr_celeba.txt          count, the 40 names, "000001.jpg -1  1 ..."
    <data-dir>/celeba/list_eval_partition.txt       "000001.jpg 0" (0 train, 1 valid, 2 test)
    <data-dir>/celeba/identity_CelebA.txt
    <data-dir>/celeba/list_bbox_celeba.txt
    <data-dir>/celeba/list_landmarks_align_celeba.txt

(``--data-dir`` may also name the ``celeba/`` folder itself.) The splits are the official
partition of ``list_eval_partition.txt``: 162,770 / 19,867 / 19,962 images, as `003` A3.1.
Attributes are read as torchvision maps them, {-1, 1} -> {0, 1}.

Images: `003` A3.1 "re-size[s] images to 64x64 pixels as done in [26]" (RLW). We resize the
whole aligned 178x218 face to ``image_size`` x ``image_size`` (64; antialiased, no crop, so the
aspect ratio changes as with a plain resize) and standardize with the ImageNet mean and std.
No augmentation: `003` names none for CelebA.

Model (`003` §4 "Networks"): "a ResNet-18 backbone with an additional single linear layer for
each head": torchvision's ``resnet18(weights=None)`` without its final fc, so z is the 512-d
pooled feature, and one ``Linear(512, 1)`` logit per attribute. Loss: binary cross-entropy
with logits; metric: accuracy (logit > 0 predicts the attribute), higher is better.

`003` names no grouping of the 40 attributes into fewer tasks (e.g. a 9-task split), so the
problem has no variant: every attribute is one task.

Options (``--param``): ``image_size`` (64; e.g. 32 for tests), ``num_workers`` (DataLoader
workers; memory pinned on CUDA).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.datasets import CelebA as TorchvisionCelebA
from torchvision.models import resnet18
from torchvision.transforms import v2

from trainables.errors import ConfigError, DataError
from trainables.metrics import MetricSpec
from trainables.problems.base import MTLModel, Problem, Splits, TaskSpec, split_loaders
from trainables.problems.dense_models import IMAGENET_MEAN, IMAGENET_STD
from trainables.problems.nyuv2 import parse_float, parse_int

#: The 40 attributes, in the column order of ``list_attr_celeba.txt``.
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes",
    "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling",
    "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
IMAGE_FOLDER = "img_align_celeba"
#: The text files torchvision's CelebA reads (all of them, whatever the target type).
LIST_FILES = ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt", "list_bbox_celeba.txt",
              "list_landmarks_align_celeba.txt")
#: Our split names -> torchvision's.
SPLITS = {"train": "train", "val": "valid", "test": "test"}
#: `003` A3.1: 64x64 images.
IMAGE_SIZE = 64
#: `003` A3.1: the learning rate is halved every 30 of the 100 epochs (StepLR(30, 0.5)).
LR_STEP_DECAY, LR_STEP_EVERY = 0.5, 30
DOWNLOAD = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
HOW = (f"put torchvision's CelebA layout there: celeba/{IMAGE_FOLDER}/*.jpg (img_align_celeba.zip unzipped) and "
       f"celeba/{{{','.join(LIST_FILES)}}} (from {DOWNLOAD}), and pass --data-dir <the folder holding celeba/>")


# --------------------------------------------------------------------------- data on disk


def find_root(data_dir: str | None) -> Path:
    """The folder torchvision's CelebA takes as ``root`` (the one holding ``celeba/``):
    ``data_dir`` itself, or its parent when ``data_dir`` is the ``celeba/`` folder."""
    if not data_dir:
        raise DataError(f"CelebA needs --data-dir: {HOW}")
    base = Path(data_dir).expanduser()
    folder = TorchvisionCelebA.base_folder
    if (base / folder).is_dir():
        return base
    if base.name == folder and (base / IMAGE_FOLDER).is_dir():
        return base.parent
    raise DataError(f"CelebA not found: no {base / folder / IMAGE_FOLDER}; {HOW}")


def check_files(root: Path) -> None:
    """Every file torchvision reads is there, and the attribute file names the 40 attributes
    in the expected order (a one-line DataError naming the first problem)."""
    folder = root / TorchvisionCelebA.base_folder
    if not (folder / IMAGE_FOLDER).is_dir():
        raise DataError(f"CelebA under {root}: missing folder {folder / IMAGE_FOLDER}; {HOW}")
    missing = [name for name in LIST_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"CelebA under {root}: missing {', '.join(str(folder / m) for m in missing)}; {HOW}")
    with open(folder / "list_attr_celeba.txt") as f:
        f.readline()  # the image count
        header = f.readline().split()
    if tuple(header) != ATTRIBUTES:
        raise DataError(f"CelebA: {folder / 'list_attr_celeba.txt'} line 2 should name the 40 attributes "
                        f"{ATTRIBUTES[0]} ... {ATTRIBUTES[-1]}, got {len(header)} names: {' '.join(header[:3])} ...")


class CelebAFiles(TorchvisionCelebA):
    """torchvision's CelebA, with the integrity check reduced to "the files exist".

    torchvision's ``_check_integrity`` compares the MD5 sums of the five text files with those
    of the official release: a small set written in the same format (our tests) can never
    pass it, and hashing ~30 MB in every trial buys nothing once the driver has checked the
    layout (``check_files``). Reading, split selection and the {-1, 1} -> {0, 1} mapping of
    the attributes stay torchvision's.
    """

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        listed = all(os.path.isfile(os.path.join(folder, name)) for name in LIST_FILES)
        return listed and os.path.isdir(os.path.join(folder, IMAGE_FOLDER))


class AttributeTargets:
    """The (40,) {0, 1} attribute vector -> ``{attribute: float 0./1.}`` (one target per task;
    the default collate stacks them into (N,) tensors). A class, not a lambda: workers pickle it."""

    def __call__(self, attr: torch.Tensor) -> dict[str, torch.Tensor]:
        values = attr.float()
        return {name: values[i] for i, name in enumerate(ATTRIBUTES)}


def image_transform(size: int) -> v2.Compose:
    """PIL face -> float (3, size, size): resized whole (`003` A3.1), ImageNet-standardized."""
    return v2.Compose([
        v2.RGB(),
        v2.Resize((size, size), antialias=True),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def celeba_split(root: str | Path, split: str, size: int) -> CelebAFiles:
    """One official split (``train``, ``val`` or ``test``) as ``(image, {attribute: target})``."""
    try:
        return CelebAFiles(str(root), split=SPLITS[split], target_type="attr", transform=image_transform(size),
                           target_transform=AttributeTargets(), download=False)
    except (OSError, RuntimeError, ValueError, IndexError) as err:
        raise DataError(f"cannot read CelebA under {root} ({err}); {HOW}") from None


# --------------------------------------------------------------------------- losses and metrics


def binary_accuracy(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(number correct, number of samples): a logit > 0 (probability > 0.5) predicts 1."""
    predicted = (logits.reshape(target.shape) > 0).to(target.dtype)
    return float((predicted == target).sum().item()), float(target.numel())


ACCURACY = MetricSpec("accuracy", higher_is_better=True, fn=binary_accuracy).shown("%", 100.0)


# --------------------------------------------------------------------------- model


class ResNet18Encoder(nn.Module):
    """torchvision's ResNet-18 (``weights=None``) without its final fc: image -> 512-d pooled z.

    The trunk is laid out as the chain ``forward`` runs (stem, layers 1-4, pooling + flatten),
    so the stage-by-stage Gramian (``trainables.gramian``) can walk it: with 40 tasks the full
    per-task Jacobian is 40 x 11.2M floats (1.8 GB).
    """

    out_features = 512

    def __init__(self) -> None:
        super().__init__()
        net = resnet18(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.pool = nn.Sequential(net.avgpool, nn.Flatten(1))  # torchvision: avgpool, then torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.pool(self.layer4(self.layer3(self.layer2(self.layer1(x)))))

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4, self.pool]


def attribute_head(dropout: float) -> nn.Module:
    """`003`'s "single linear layer" per head: 512 -> 1 logit (dropout on z first when p > 0)."""
    linear = nn.Linear(ResNet18Encoder.out_features, 1)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear


# --------------------------------------------------------------------------- the problem


class CelebA(Problem):
    name = "celeba"
    description = "CelebA: 40 binary face attributes (one task each), ResNet-18 + a linear head per attribute (`003`)"
    pixel_stats = (IMAGENET_MEAN, IMAGENET_STD)  # loaded ImageNet-standardized (image_transform)

    def __init__(self) -> None:
        self.defaults = {
            # `003` A3.1 / Table A1 (RLW's CelebA row): Adam, lr 1e-3, batch 512, 100 epochs (the space's
            # max_epochs), lr halved every 30 epochs; weight decay fixed at 1e-5 for every data set (A3.1).
            "optimizer": "adam",
            "lr": 1e-3,
            "batch_size": 512,
            "weight_decay": 1e-5,
            "lr_decay": LR_STEP_DECAY,
            "lr_step_every": LR_STEP_EVERY,
            "image_size": IMAGE_SIZE,  # square side the faces are resized to (`003`: 64; 32 for tests)
            "num_workers": 4,  # DataLoader workers; pinned memory whenever the device is CUDA
        }

    @property
    def tasks(self) -> list[TaskSpec]:
        # No seed prints per-attribute single-task accuracies, so no nominal references:
        # ``score`` selects epochs by mean accuracy instead, and reports take Δm against real
        # single-task runs. Binary cross-entropy is the two-class softmax likelihood (UW).
        return [TaskSpec(name, (ACCURACY,), {}, "softmax") for name in ATTRIBUTES]

    def _options(self, config: Mapping[str, Any]) -> dict[str, Any]:
        c = {**self.defaults, **config}
        return {
            "size": parse_int("image_size", c["image_size"], minimum=32),
            "num_workers": parse_int("num_workers", c["num_workers"]),
            "batch_size": parse_int("batch_size", c["batch_size"], minimum=1),
            "dropout": parse_float("dropout", c.get("dropout", 0.0)),
        }

    def prepare(self, data_dir: str | None, config: Mapping[str, Any]) -> dict[str, Any]:
        """Find and check torchvision's layout once, on the driver (a one-line DataError if absent).

        Nothing is ever downloaded (CelebA's Google Drive files need ``gdown`` and are often
        over quota), with or without SEARCHER_OFFLINE; there is no embedded offline CelebA."""
        self._options(config)  # bad options fail here, before any trial starts
        root = find_root(data_dir)
        check_files(root)
        return {"root": str(root.resolve()), "source": "celeba"}

    def load(
        self, data: Mapping[str, Any], config: Mapping[str, Any], generator: torch.Generator, device: torch.device
    ) -> Splits:
        if "root" not in data:
            data = self.prepare(None, config)  # raises the one-line DataError
        o = self._options(config)
        root = data["root"]
        datasets = {split: celeba_split(root, split, o["size"]) for split in SPLITS}
        loaders = split_loaders(datasets, o["batch_size"], o["num_workers"], device, generator, 0)
        sizes = {split: len(d) for split, d in datasets.items()}
        if 0 in sizes.values():
            empty = [s for s, n in sizes.items() if n == 0]
            raise DataError(f"CelebA under {root}: list_eval_partition.txt gives no images to {', '.join(empty)}")
        where = (f"CelebA ({root}): official partition of list_eval_partition.txt "
                 f"({sizes['train']}/{sizes['val']}/{sizes['test']}), {o['size']}x{o['size']}")
        return Splits(loaders["train"], loaders["val"], loaders["test"], where, sizes)

    def build_model(self, config: Mapping[str, Any]) -> MTLModel:
        o = self._options(config)
        if not 0.0 <= o["dropout"] < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {o['dropout']}")
        return MTLModel(ResNet18Encoder(), {name: attribute_head(o["dropout"]) for name in ATTRIBUTES})

    def loss(self, task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the attribute's logit (mean over the batch)."""
        return F.binary_cross_entropy_with_logits(output.reshape(target.shape), target.to(output.dtype))

    def kpi(self, task: str, output: torch.Tensor, target: torch.Tensor) -> float | None:
        """The batch accuracy of the attribute (DTP, AMTL)."""
        correct, total = binary_accuracy(output, target)
        return correct / total if total else None

    def score(self, metrics: Mapping[str, Mapping[str, float]], tasks: list[str]) -> float:
        """Mean validation accuracy (in %) over ``tasks``, the epoch-selection score.

        The default, Δm (`002` eq. 1), needs a single-task reference per attribute, and no seed
        prints one (`003` reports no CelebA table); ``delta_m`` would fail on the empty
        references. With references Δm is 1/T Σ_t (acc_t - ref_t) / ref_t x 100, a weighted
        mean of the accuracies; without them every attribute weighs the same.
        """
        return 100.0 * sum(metrics[t]["accuracy"] for t in tasks) / len(tasks)


__all__ = ["ATTRIBUTES", "CelebA", "CelebAFiles", "ResNet18Encoder", "binary_accuracy", "celeba_split", "find_root"]
