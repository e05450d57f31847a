"""Per-task gradients: batched, looped and reference autograd agree; the trainer uses them right."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from trainables.gradients import feature_grads, param_grads, write_grads
from trainables.methods.cagrad import cagrad_weights
from trainables.problems import build_problem
from trainables.problems.base import Splits, tensor_batches
from trainables.problems.multi_mnist import MultiMNIST
from trainables.problems.toy import STARTS, objectives
from trainables.trainer import Trainer

ATOL, RTOL = 1e-6, 1e-5


# ----------------------------------------------------------------------------- Multi-MNIST LeNet
@pytest.fixture(scope="module")
def lenet():
    """The CL_RR LeNet, a random batch of 8, and the trainer's encoder/heads split."""
    torch.manual_seed(0)
    problem = MultiMNIST("CL_RR")
    model = problem.build_model({"dropout": 0.0})
    x = torch.randn(8, 1, 28, 28)
    targets = {"CL": torch.randint(0, 10, (8,)), "RR": torch.randn(8, 784)}
    z = model.encode(x)
    z_leaf = z.detach().requires_grad_(True)
    outputs = model.decode(z_leaf)
    losses = torch.stack([problem.loss(t, outputs[t], targets[t]) for t in problem.task_names])
    return problem, model, x, targets, z, z_leaf, losses


def _reference_param_grads(problem, model, x, targets):
    """Each task's loss through the full model, differentiated on its own (no split, no batching)."""
    shared = model.shared_parameters()
    outputs = model(x)
    rows = []
    for t in problem.task_names:
        loss = problem.loss(t, outputs[t], targets[t])
        grads = torch.autograd.grad(loss, shared, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_param_grads_batched_loop_and_reference_agree(lenet):
    """Batched VJP, the per-task loop and plain per-task autograd give the same (T, d) gradients."""
    problem, model, x, targets, z, z_leaf, losses = lenet
    shared = model.shared_parameters()
    z_grads = feature_grads(losses, z_leaf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the batched path must not silently fall back to the loop
        batched = param_grads(z, shared, z_grads, batched=True)
    looped = param_grads(z, shared, z_grads, batched=False)
    reference = _reference_param_grads(problem, model, x, targets)
    d = sum(p.numel() for p in shared)
    assert batched.shape == looped.shape == reference.shape == (2, d)
    assert reference.abs().sum(dim=1).min() > 0  # both tasks really reach the encoder
    torch.testing.assert_close(batched, reference, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(looped, reference, atol=ATOL, rtol=RTOL)


def test_chunked_batched_grads_equal_the_loop_for_every_chunk_size():
    """T = 5 tasks on a small encoder: batched passes over chunks of 1, 2, 3, 5 (and 0 = all; 7 > T)
    tasks give the loop's (T, d) gradients, rows in task order (a short last chunk included)."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    shared = list(encoder.parameters())
    z = encoder(torch.randn(10, 6))
    z_leaf = z.detach().requires_grad_(True)
    heads = torch.randn(5, 4)
    losses = ((z_leaf @ heads.T) ** 2).mean(0) * torch.arange(1.0, 6.0)  # 5 distinct task losses
    z_grads = feature_grads(losses, z_leaf)
    looped = param_grads(z, shared, z_grads, batched=False)
    assert looped.shape == (5, sum(p.numel() for p in shared)) and looped.abs().sum(1).min() > 0
    for chunk in (1, 2, 3, 5, 0, 7):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no silent fallback to the loop
            chunked = param_grads(z, shared, z_grads, batched=True, chunk=chunk)
        torch.testing.assert_close(chunked, looped, atol=ATOL, rtol=RTOL)


def test_feature_grads_match_per_task_autograd(lenet):
    """feature_grads = d L_t / d z for each task, as separate autograd calls give it."""
    problem, model, x, targets, z, z_leaf, losses = lenet
    got = feature_grads(losses, z_leaf)
    assert got.shape == (2, *z_leaf.shape)
    for t in range(2):
        (expected,) = torch.autograd.grad(losses[t], z_leaf, retain_graph=True)
        torch.testing.assert_close(got[t], expected, atol=ATOL, rtol=RTOL)


def test_param_grads_unused_parameter_is_zero():
    """A shared parameter no task reaches gets a zero column block (batched and loop)."""
    lin = nn.Linear(3, 2)
    unused = nn.Parameter(torch.ones(4))
    x = torch.randn(5, 3)
    z = lin(x)
    z_grads = torch.randn(2, 5, 2)
    for batched in (True, False):
        g = param_grads(z, [lin.weight, unused, lin.bias], z_grads, batched=batched)
        assert g.shape == (2, 6 + 4 + 2)
        assert torch.equal(g[:, 6:10], torch.zeros(2, 4))
        # d/dW of sum(G * (x Wᵀ + b)) = Gᵀ x ; d/db = sum_rows(G)
        for t in range(2):
            torch.testing.assert_close(g[t, :6], (z_grads[t].T @ x).reshape(-1))
            torch.testing.assert_close(g[t, 10:], z_grads[t].sum(0))


def test_write_grads_slices_to_parameters():
    """write_grads gives each parameter its own slice of the flat direction, in its shape."""
    params = [nn.Parameter(torch.zeros(2, 3)), nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(1, 2, 2))]
    known = [torch.arange(6.0).reshape(2, 3), 10 + torch.arange(4.0), 20 + torch.arange(4.0).reshape(1, 2, 2)]
    write_grads(params, torch.cat([k.reshape(-1) for k in known]))
    for p, k in zip(params, known):
        assert p.grad.shape == p.shape
        assert torch.equal(p.grad, k)


def test_write_grads_casts_to_parameter_dtype():
    """A float64 direction is written as the parameter's dtype."""
    p = nn.Parameter(torch.zeros(3, dtype=torch.float32))
    write_grads([p], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert p.grad.dtype == torch.float32 and p.grad.tolist() == [1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------- trainer on the toy
def _toy_trainer(method, **config):
    problem = build_problem("toy")
    # SGD, not Adam: Adam's normalization would hide a wrongly scaled update.
    base = {"method": method, "device": "cpu", "steps_per_epoch": 5, "seed": 3, "optimizer": "sgd", "lr": 0.1}
    return Trainer(problem, {**base, **config})


def _run_steps(trainer):
    for inputs, targets in trainer.splits.train:
        trainer.train_step(inputs, targets)
    return trainer.model.encoder.x.detach().clone()


def _toy_task_grads(x):
    """Per-task gradients of the toy objectives at x, by plain autograd."""
    x = x.detach().clone().requires_grad_(True)
    f = objectives(x)
    return torch.stack([torch.autograd.grad(f[i], x, retain_graph=True)[0] for i in range(2)])


def test_toy_batched_and_looped_grads_same_update():
    """batched_grads=True and False give identical cagrad trajectories on the toy."""
    a = _run_steps(_toy_trainer("cagrad", batched_grads=True))
    b = _run_steps(_toy_trainer("cagrad", batched_grads=False))
    assert not torch.equal(a, torch.tensor(STARTS[0], dtype=torch.float64))  # it moved
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_toy_feature_and_param_level_same_update():
    """On the toy the representation is the parameter, so grad_level feature == param."""
    a = _run_steps(_toy_trainer("cagrad", grad_level="param"))
    b = _run_steps(_toy_trainer("cagrad", grad_level="feature"))
    assert not torch.equal(a, torch.tensor(STARTS[0], dtype=torch.float64))
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_toy_ew_step_is_sum_of_task_gradients():
    """One SGD step of ew moves x by -lr (∇f1 + ∇f2), the per-task gradients taken by hand."""
    trainer = _toy_trainer("ew", optimizer="sgd", momentum=0.0, lr=0.1)
    x0 = trainer.model.encoder.x.detach().clone()
    inputs, targets = trainer.splits.train[0]
    trainer.train_step(inputs, targets)
    expected = x0 - 0.1 * _toy_task_grads(x0).sum(0)
    torch.testing.assert_close(trainer.model.encoder.x.detach(), expected, atol=1e-12, rtol=0)


def test_toy_single_task_step_follows_its_task():
    """One SGD step of single_task(task=f2) moves x by -lr ∇f2 only."""
    trainer = _toy_trainer("single_task", optimizer="sgd", momentum=0.0, lr=0.1, **{"single_task.task": "f2"})
    x0 = trainer.model.encoder.x.detach().clone()
    inputs, targets = trainer.splits.train[0]
    _, weights = trainer.train_step(inputs, targets)
    assert weights.tolist() == [0.0, 1.0]
    expected = x0 - 0.1 * _toy_task_grads(x0)[1]
    torch.testing.assert_close(trainer.model.encoder.x.detach(), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("grad_level", ["param", "feature"])
def test_toy_cagrad_step_is_cagrad_direction(grad_level):
    """One SGD step of cagrad moves x by -lr (w @ G), w from cagrad_weights on the hand-made G."""
    trainer = _toy_trainer("cagrad", optimizer="sgd", momentum=0.0, lr=0.1, grad_level=grad_level)
    x0 = trainer.model.encoder.x.detach().clone()
    inputs, targets = trainer.splits.train[0]
    _, weights = trainer.train_step(inputs, targets)
    grads = _toy_task_grads(x0)
    w = torch.tensor(cagrad_weights((grads @ grads.T).numpy(), 0.5, 1), dtype=torch.float64)
    torch.testing.assert_close(weights, w, atol=1e-9, rtol=0)
    torch.testing.assert_close(trainer.model.encoder.x.detach(), x0 - 0.1 * (w @ grads), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- trainer on a LeNet
class RandomMultiMNIST(MultiMNIST):
    """Multi-MNIST's model and losses on a small random data set (no digits to load)."""

    def load(self, data, config, generator, device):
        g = torch.Generator().manual_seed(123)
        x = torch.randn(32, 1, 28, 28, generator=g)
        targets = {"CL": torch.randint(0, 10, (32,), generator=g), "RR": torch.randn(32, 784, generator=g)}
        bs = int(config["batch_size"])
        train = tensor_batches(x, targets, bs, True, generator)
        rest = tensor_batches(x, targets, bs, False)
        return Splits(train, rest, rest, "random", {"train": 32, "val": 32, "test": 32})


def test_lenet_trainer_batched_and_looped_same_update():
    """On the LeNet, cagrad steps with batched_grads True, False, and True in chunks of one task
    (grad_chunk=1) give the same parameters."""
    results = []
    for batched, chunk in ((True, 0), (False, 0), (True, 1)):
        config = {"method": "cagrad", "device": "cpu", "batch_size": 8, "optimizer": "sgd",
                  "lr": 0.05, "momentum": 0.0, "batched_grads": batched, "grad_chunk": chunk, "seed": 1}
        trainer = Trainer(RandomMultiMNIST("CL_RR"), config)
        start = [p.detach().clone() for p in trainer.model.parameters()]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for inputs, targets in trainer.splits.train:
                trainer.train_step(inputs, targets)
        end = [p.detach().clone() for p in trainer.model.parameters()]
        assert any(not torch.equal(s, e) for s, e in zip(start, end))
        results.append(end)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["mgda", "cagrad", "imtl", "nash_mtl", "aligned_mtl", "edm", "cdtt"])
def test_lenet_trainer_gramian_only_same_update_as_the_jacobian(method):
    """grad_memory=gramian (GGᵀ stage by stage, the direction by a plain backward) trains the
    LeNet (with dropout: same random stream) to the same parameters and weights as holding the
    Jacobian, batched and looped."""
    results = []
    for memory, batched in (("jacobian", False), ("gramian", False), ("gramian", True)):
        config = {"method": method, "device": "cpu", "batch_size": 8, "optimizer": "sgd", "lr": 0.05,
                  "momentum": 0.0, "batched_grads": batched, "grad_memory": memory, "seed": 1, "dropout": 0.2}
        trainer = Trainer(RandomMultiMNIST("CL_RR"), config)
        assert (trainer.staged is not None) == (memory == "gramian")
        weights = []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for inputs, targets in trainer.splits.train:
                weights.append(trainer.train_step(inputs, targets)[1])
        assert memory == "jacobian" or trainer.staged.verified
        results.append(([p.detach().clone() for p in trainer.model.parameters()], torch.stack(weights)))
    for params, weights in results[1:]:
        torch.testing.assert_close(weights, results[0][1], atol=1e-5, rtol=1e-4)
        for a, b in zip(results[0][0], params):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "method,config,staged",
    [
        ("mgda", {"grad_memory": "auto"}, False),  # auto holds the Jacobian on the CPU
        ("mgda", {"grad_memory": "gramian", "grad_level": "feature"}, False),  # G is z's gradients there
        ("mgda_ub", {"grad_memory": "gramian"}, False),  # always at the representation
        ("pcgrad", {"grad_memory": "gramian"}, False),  # reshapes G row by row: needs G
        ("ew", {"grad_memory": "gramian"}, False),
        ("cagrad", {"grad_memory": "gramian"}, True),
    ],
)
def test_grad_memory_applies_only_where_the_gramian_suffices(method, config, staged):
    trainer = Trainer(RandomMultiMNIST("CL_RR"), {"method": method, "device": "cpu", "batch_size": 8, **config})
    assert (trainer.staged is not None) is staged


def test_grad_memory_gramian_on_a_one_stage_encoder_warns_and_holds_g():
    """The toy's encoder is one parameter: nothing to stage, said once at construction."""
    with pytest.warns(UserWarning, match="one stage"):
        trainer = _toy_trainer("mgda", grad_memory="gramian")
    assert trainer.staged is None
    _run_steps(trainer)


def test_an_unknown_grad_memory_is_a_config_error():
    from trainables.config import resolve
    from trainables.errors import ConfigError

    with pytest.raises(ConfigError, match="grad_memory must be one of auto, jacobian, gramian, got 'tiny'"):
        resolve({"method": "mgda", "grad_memory": "tiny"})
