"""CelebA: torchvision's on-disk layout, the official split, targets, model, losses, CLI.

The data is a tiny CelebA written here in the real formats (aligned 178x218 JPEGs and the six
text files, spaced as in the release). No test touches the network (conftest sets
SEARCHER_OFFLINE and opening a socket fails here).
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.errors import DataError
from trainables.metrics import MetricAccumulator, delta_m
from trainables.problems import build_problem
from trainables.problems.celeba import ATTRIBUTES, LIST_FILES, ResNet18Encoder, celeba_split
from trainables.problems.dense_models import IMAGENET_MEAN, IMAGENET_STD

#: The partition of the 12 images (0 train, 1 valid, 2 test), interleaved so that a loader
#: taking files in order instead of by the partition file would be caught.
PARTITION = (0, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 2)
#: Flat colours (RGB) of the images, so their standardized pixels can be worked out by hand.
COLOURS = [(255, 0, 128), (0, 255, 64), (128, 128, 128), (10, 200, 30)]
TINY = ["--param", "image_size=32", "--param", "num_workers=0", "--param", "batch_size=4"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", refuse)


def name(i: int) -> str:
    return f"{i + 1:06d}.jpg"


def write_celeba(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/celeba/`` in torchvision's layout; returns each image's {-1, 1} attribute row."""
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    n = len(PARTITION)
    attrs = {}
    for i in range(n):
        colour = COLOURS[i % len(COLOURS)]
        image = Image.new("RGB", (178, 218), colour)
        if i == n - 1:
            image = image.convert("L")  # a greyscale JPEG still comes out as 3 channels
        image.save(folder / "img_align_celeba" / name(i), quality=95)
        attrs[name(i)] = rng.choice([-1, 1], size=len(ATTRIBUTES))
    # list_attr_celeba.txt: the count, the names (with the release's trailing space), then
    # "000001.jpg -1  1  1 -1 ..." (values right-aligned in two characters)
    rows = [f"{f} " + " ".join(f"{v:2d}" for v in a) for f, a in attrs.items()]
    (folder / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(ATTRIBUTES) + " \n" + "\n".join(rows) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{name(i)} {p}\n" for i, p in enumerate(PARTITION)))
    (folder / "identity_CelebA.txt").write_text("".join(f"{name(i)} {2880 + i}\n" for i in range(n)))
    bbox = "".join(f"{name(i)}    {95 + i:3d} {71:3d} {226:3d} {313:3d}\n" for i in range(n))
    (folder / "list_bbox_celeba.txt").write_text(f"{n}\nimage_id x_1 y_1 width height\n" + bbox)
    marks = "".join(f"{name(i)}    69  109  106  113   77  142   73  152  108  154\n" for i in range(n))
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    (folder / "list_landmarks_align_celeba.txt").write_text(f"{n}\n{header}\n" + marks)
    return attrs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba_root")
    return root, write_celeba(root)


def small(**extra):
    return {"image_size": 32, "num_workers": 0, "batch_size": 4, **extra}


# --------------------------------------------------------------------------- data


def test_splits_follow_the_partition_file(tiny):
    root, _ = tiny
    problem = build_problem("celeba")
    data = problem.prepare(str(root), small())
    assert data == {"root": str(root.resolve()), "source": "celeba"}
    splits = problem.load(data, small(), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert splits.sizes == {"train": 6, "val": 3, "test": 3}
    assert "official partition" in splits.source
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        expected = [name(i) for i, p in enumerate(PARTITION) if p == code]
        assert celeba_split(root, split, 32).filename == expected
    # the training batches: 4 + 2 images, every attribute a (N,) float target
    batches = list(splits.train)
    assert [x.shape[0] for x, _ in batches] == [4, 2]
    assert set(batches[0][1]) == set(ATTRIBUTES) and batches[0][1]["Young"].shape == (4,)
    # data_dir may also be the celeba/ folder itself
    assert problem.prepare(str(root / "celeba"), small())["root"] == str(root.resolve())


def test_targets_are_the_attribute_file_mapped_to_0_1(tiny):
    root, attrs = tiny
    for split in ("train", "val", "test"):
        dataset = celeba_split(root, split, 32)
        for k in range(len(dataset)):
            _, target = dataset[k]
            row = attrs[dataset.filename[k]]
            assert [float(target[a]) for a in ATTRIBUTES] == [(v + 1) / 2 for v in row]


def test_images_are_resized_and_imagenet_standardized(tiny):
    root, _ = tiny
    dataset = celeba_split(root, "train", 32)
    for k in range(len(dataset)):
        image, _ = dataset[k]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        i = int(dataset.filename[k][:6]) - 1
        colour = COLOURS[i % len(COLOURS)]
        expected = [(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD)]
        # a flat colour stays flat through the resize; JPEG moves it by a few levels at most
        assert image.mean(dim=(1, 2)).tolist() == pytest.approx(expected, abs=4 / 255 / 0.224)
    image, _ = celeba_split(root, "test", 32)[2]  # the greyscale JPEG (the last file, test)
    assert image.shape == (3, 32, 32) and torch.allclose(image[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0],
                                                         image[1] * IMAGENET_STD[1] + IMAGENET_MEAN[1], atol=1e-5)


def test_tasks_are_the_40_attributes_in_file_order(tiny):
    root, _ = tiny
    header = (root / "celeba" / "list_attr_celeba.txt").read_text().splitlines()[1].split()
    problem = build_problem("celeba")
    assert problem.task_names == header and len(header) == 40
    assert all(t.likelihood == "softmax" and t.reference == {} for t in problem.tasks)
    assert problem.higher_is_better()["Smiling"] == {"accuracy": True}


# --------------------------------------------------------------------------- model, losses, metrics


def test_model_is_resnet18_without_fc_and_one_logit_per_attribute():
    problem = build_problem("celeba")
    model = problem.build_model(problem.defaults)
    x = torch.randn(3, 3, 32, 32)
    z = model.encode(x)
    assert z.shape == (3, 512)
    out = model(x)
    assert list(out) == list(ATTRIBUTES) and all(v.shape == (3, 1) for v in out.values())
    # torchvision's ResNet-18 has 11,689,512 parameters, 513,000 of them in its fc; + 40 x Linear(512, 1)
    assert sum(p.numel() for p in model.encoder.parameters()) == 11_689_512 - 513_000
    assert sum(p.numel() for p in model.parameters()) == 11_689_512 - 513_000 + 40 * 513


def test_stage_by_stage_gramian_of_the_encoder_is_the_jacobians():
    """With 40 tasks the per-task Jacobian is 1.8 GB; the encoder's stages give GGᵀ without it
    (``grad_memory=gramian``): equal to the full Jacobian's GGᵀ (T = 3, float64 reference)."""
    from trainables.gradients import param_grads
    from trainables.gramian import StagedGramian

    torch.manual_seed(0)
    encoder = ResNet18Encoder()
    shared = list(encoder.parameters())
    staged = StagedGramian(encoder, shared)
    with staged.recording():
        z = encoder(torch.randn(2, 3, 32, 32))
    z_grads = torch.randn(3, *z.shape, generator=torch.Generator().manual_seed(0))
    gram = staged.gramian(z, z_grads, batched=True)
    grads = param_grads(z, shared, z_grads, batched=False).double()
    reference = grads @ grads.T
    assert staged.usable and staged.verified
    assert float((gram.double() - reference).abs().max() / reference.abs().max()) < 1e-5


def test_loss_accuracy_and_kpi_by_hand():
    problem = build_problem("celeba")
    logits = torch.tensor([[2.0], [-1.0], [0.5], [0.0]])
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # BCE with logits: -log sigmoid(2), -log sigmoid(-1), -log(1 - sigmoid(0.5)), -log(1 - sigmoid(0))
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(1)) + math.log1p(math.exp(0.5)) + math.log(2)) / 4
    assert float(problem.loss("Smiling", logits, target)) == pytest.approx(expected, rel=1e-6)  # 0.8180
    # predictions (logit > 0): 1, 0, 1, 0 -> right, wrong, wrong, right
    assert problem.kpi("Smiling", logits, target) == 0.5
    acc = MetricAccumulator({t.name: t.metrics for t in problem.tasks})
    outputs = {a: logits for a in ATTRIBUTES}
    acc.update(outputs, {a: target for a in ATTRIBUTES})
    acc.update({a: torch.tensor([[3.0], [-3.0]]) for a in ATTRIBUTES}, {a: torch.tensor([1.0, 0.0]) for a in ATTRIBUTES})
    assert acc.compute()["Young"]["accuracy"] == pytest.approx(4 / 6)  # 2 of 4, then 2 of 2


def test_score_is_mean_accuracy_in_percent_without_references():
    problem = build_problem("celeba")
    metrics = {a: {"accuracy": 0.8} for a in ATTRIBUTES}
    metrics["Bald"] = {"accuracy": 0.9}
    metrics["Young"] = {"accuracy": 0.5}
    assert problem.score(metrics, list(ATTRIBUTES)) == pytest.approx(100 * (38 * 0.8 + 0.9 + 0.5) / 40)
    assert problem.score(metrics, ["Bald"]) == pytest.approx(90.0)  # single_task: its task only
    reference = {t.name: dict(t.reference) for t in problem.tasks}
    with pytest.raises(KeyError):  # why CelebA overrides Problem.score: Δm needs references
        delta_m(metrics, reference, problem.higher_is_better(), list(ATTRIBUTES))


# --------------------------------------------------------------------------- errors


def test_missing_data_is_a_one_line_data_error(tmp_path):
    problem = build_problem("celeba")
    with pytest.raises(DataError, match="--data-dir"):
        problem.prepare(None, problem.defaults)
    with pytest.raises(DataError) as err:
        problem.prepare(str(tmp_path / "none"), problem.defaults)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "none" / "celeba" / "img_align_celeba") in message
    assert all(f in message for f in LIST_FILES)
    root = tmp_path / "partial"
    write_celeba(root)
    (root / "celeba" / "list_bbox_celeba.txt").unlink()
    with pytest.raises(DataError, match=r"missing .*list_bbox_celeba\.txt"):
        problem.prepare(str(root), problem.defaults)
    (root / "celeba" / "list_bbox_celeba.txt").write_text("1\nimage_id x_1 y_1 width height\n")
    attr = root / "celeba" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join([lines[0], " ".join(ATTRIBUTES[1:])] + lines[2:]) + "\n")
    with pytest.raises(DataError, match="40 attributes"):
        problem.prepare(str(root), problem.defaults)


def test_cli_without_data_says_where_to_put_it(tmp_path, capsys):
    from searcher.cli import main

    rc = main(["train", "--space", "celeba", "--method", "ew", "--data-dir", str(tmp_path / "none"),
               "--max-epochs", "1", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("searcher: error: CelebA not found") and "list_eval_partition.txt" in err


# --------------------------------------------------------------------------- training


def test_defaults_are_003s_and_the_trainer_halves_the_lr_every_30_epochs(tiny):
    from trainables.trainer import Trainer

    root, _ = tiny
    problem = build_problem("celeba")
    d = problem.defaults
    assert (d["optimizer"], d["lr"], d["batch_size"], d["weight_decay"]) == ("adam", 1e-3, 512, 1e-5)
    assert (d["lr_decay"], d["lr_step_every"], d["image_size"]) == (0.5, 30, 64)
    trainer = Trainer(problem, {"method": "ew", "device": "cpu", **small()}, problem.prepare(str(root), small()))
    assert isinstance(trainer.scheduler, torch.optim.lr_scheduler.StepLR)
    assert (trainer.scheduler.step_size, trainer.scheduler.gamma) == (30, 0.5)


def test_cli_train_runs_one_epoch_and_logs_every_attribute(tiny, tmp_path, capsys):
    import mlflow

    from searcher.cli import main

    root, _ = tiny
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    rc = main(["train", "--space", "celeba", "--method", "ew", "--data-dir", str(root), "--max-epochs", "1",
               *TINY, "--tracking-uri", uri])
    assert rc == 0
    assert "test Young/accuracy" in capsys.readouterr().out
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["celeba"]).iloc[0]
    accuracies = [run[f"metrics.best/test/{a}/accuracy"] for a in ATTRIBUTES]
    # 3 test images: every accuracy is 0, 1/3, 2/3 or 1
    assert all(min(abs(3 * v - k) for k in range(4)) < 1e-9 for v in accuracies)
    assert run["params.lr_step_every"] == "30" and run["params.batch_size"] == "4"
    assert run["metrics.best/val_score"] == pytest.approx(
        100 * np.mean([run[f"metrics.best/val/{a}/accuracy"] for a in ATTRIBUTES]))
