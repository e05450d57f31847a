"""The stage-by-stage Gramian (``trainables.gramian``): GGᵀ without holding G, and when it refuses."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from conftest import make_tasks as _tasks
from trainables.gradients import param_grads
from trainables.gramian import StagedGramian, auto_stages, encoder_stages
from trainables.methods import METHODS, build_method
from trainables.methods.base import GramianWeighting
from trainables.problems.dense_models import ResNetEncoder
from trainables.problems.multi_mnist import LeNetEncoder


def _gram64(z, shared, z_grads):
    """The reference: the full Jacobian by the per-task loop, GGᵀ in float64."""
    grads = param_grads(z, shared, z_grads, batched=False).double()
    return grads @ grads.T


def _staged(encoder, x, tasks, seed=0, **kwargs):
    """(staged GGᵀ, float64 reference GGᵀ, the StagedGramian) for random task gradients on z."""
    shared = [p for p in encoder.parameters() if p.requires_grad]
    staged = StagedGramian(encoder, shared)
    with staged.recording():
        z = encoder(x)
    z_grads = torch.randn(tasks, *z.shape, generator=torch.Generator().manual_seed(seed))
    gram = staged.gramian(z, z_grads, **kwargs)
    return gram, _gram64(z, shared, z_grads), staged


def _relative_error(gram, ref):
    return float((gram.double() - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return ResNetEncoder("resnet18", dilated=True), torch.randn(2, 3, 32, 64)


def test_encoder_stages_expand_sequentials_and_follow_stages():
    """ResNet's stem and layers expand into 4 stem modules and 8 basic blocks; a bare module is one stage."""
    encoder = ResNetEncoder("resnet18")
    chain = encoder_stages(encoder)
    assert [type(m).__name__ for m in chain[:4]] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert [type(m).__name__ for m in chain[4:]] == ["BasicBlock"] * 8
    assert chain[4] is encoder.layer1[0] and chain[-1] is encoder.layer4[1]
    nested = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Sequential(nn.Linear(3, 3))), nn.Tanh())
    assert [type(m).__name__ for m in encoder_stages(nested)] == ["Linear", "ReLU", "Linear", "Tanh"]
    bare = nn.Linear(2, 2)
    assert encoder_stages(bare) == [bare]


@pytest.mark.parametrize("batched,chunk", [(True, 0), (True, 2), (False, 0)])
def test_resnet18_staged_gramian_is_the_jacobians_gramian(resnet18, batched, chunk):
    """GGᵀ summed over ResNet-18's 12 stages equals GGᵀ of the full per-task Jacobian (T = 3),
    batched, batched two tasks at a time, and looped; the first Gramian is verified."""
    encoder, x = resnet18
    gram, ref, staged = _staged(encoder, x, 3, batched=batched, chunk=chunk)
    assert staged.usable and staged.verified
    assert gram.shape == (3, 3)
    assert _relative_error(gram, ref) < 1e-5
    # the largest block held is a third of ResNet-18's 11.2M parameters (layer4's second block)
    assert staged.largest == sum(p.numel() for p in encoder.layer4[1].parameters())
    assert staged.d == 11_176_512 and 2 * staged.largest < staged.d


def test_lenet_staged_gramian_is_the_jacobians_gramian():
    """The Multi-MNIST LeNet is a named Sequential: three parameter stages, exact GGᵀ (T = 2)."""
    torch.manual_seed(1)
    encoder = LeNetEncoder(0.0)
    gram, ref, staged = _staged(encoder, torch.randn(8, 1, 28, 28), 2)
    assert staged.verified
    assert sum(1 for ps in staged.stage_params if ps) == 3
    assert _relative_error(gram, ref) < 1e-6


def test_a_second_gramian_needs_a_new_recording(resnet18):
    """The recorded boundaries belong to one forward pass: they are used once."""
    encoder, x = resnet18
    gram, _, staged = _staged(encoder, x, 2)
    assert gram is not None
    z = encoder(x)  # not recorded
    assert staged.gramian(z, torch.randn(2, *z.shape)) is None


class SkipAround(nn.Module):
    """Declares a chain its forward does not keep: stage a's output also reaches z past b and c."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def stages(self):
        return [self.a, self.b, self.c]

    def forward(self, x):
        h = self.a(x)
        return self.c(self.b(h)) + h


def test_a_path_around_the_stages_is_caught_by_the_first_check():
    """The chain checks pass (each stage's input is the previous one's output), the probe against
    a plain backward does not (the skip's share of a's gradients is missing): no Gramian, a
    warning, and no further recording."""
    torch.manual_seed(0)
    encoder = SkipAround()
    with pytest.warns(UserWarning, match="path around a stage"):
        gram, _, staged = _staged(encoder, torch.randn(5, 4), 3)
    assert gram is None and not staged.usable and not staged.verified
    assert all(len(m._forward_hooks) == 0 for m in (encoder.a, encoder.b, encoder.c))


class TwoStages(nn.Module):
    """Two declared stages, a and b; each subclass's forward breaks the chain its own way."""

    def __init__(self, b: nn.Module | None = None) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), b if b is not None else nn.Linear(4, 4)

    def stages(self):
        return [self.a, self.b]


class Twice(TwoStages):
    def forward(self, x):
        return self.b(self.a(self.a(x)))


class AddBias(nn.Module):
    """x + b: its backward does not need x, so x may change in place afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return x + self.bias


class ModifiedInPlace(TwoStages):
    def __init__(self) -> None:
        super().__init__(AddBias())

    def forward(self, x):
        h = self.a(x)
        out = self.b(h)
        h.add_(1.0)  # legal for autograd, but h is no longer the tensor b read: its history moved
        return out


class Reordered(TwoStages):
    def forward(self, x):
        return self.a(torch.tanh(self.b(x)))


@pytest.mark.parametrize("encoder_type", [Twice, ModifiedInPlace, Reordered])
def test_a_broken_chain_gives_no_gramian(encoder_type):
    """A stage run twice, a boundary changed in place, stages run out of order: None (the caller
    then holds G), without a warning: the recorded forward itself shows it."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gram, _, _ = _staged(encoder_type(), torch.randn(5, 4), 2)
    assert gram is None


def test_parameters_outside_the_stages_make_it_unusable():
    """The stages must split the shared parameters exactly."""
    encoder = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    extra = nn.Parameter(torch.zeros(3))
    assert StagedGramian(encoder, list(encoder.parameters())).usable
    assert not StagedGramian(encoder, [*encoder.parameters(), extra]).usable
    assert not StagedGramian(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), list(encoder[0].parameters())).usable


def test_unused_stage_parameters_count_zero():
    """A stage parameter the forward never touches (allow_unused) contributes nothing."""

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.spare = nn.Linear(4, 4), nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.lin(x)

    torch.manual_seed(0)
    encoder = nn.Sequential(Unused(), nn.Linear(4, 4))
    gram, ref, staged = _staged(encoder, torch.randn(5, 4), 2)
    assert staged.verified and _relative_error(gram, ref) < 1e-6


GRAMIAN_ONLY = sorted(n for n in METHODS.names() if issubclass(METHODS.get(n), GramianWeighting))


def test_the_gramian_only_methods_are_the_weightings_of_the_gradients():
    assert GRAMIAN_ONLY == ["aligned_mtl", "aligned_mtl_ub", "cagrad", "cdtt", "edm", "imtl", "imtl_g", "mgda",
                            "mgda_ub", "nash_mtl"]


@pytest.mark.parametrize("name", GRAMIAN_ONLY)
@pytest.mark.parametrize("tasks", [2, 5])
def test_gramian_only_methods_aggregate_to_their_weights_times_g(name, tasks):
    """What a ``GramianWeighting`` promises the trainer: aggregate(G) = (wᵀG, w), w = weights_from_gramian(GGᵀ)."""
    g = torch.Generator().manual_seed(tasks)
    grads = torch.randn(tasks, 40, generator=g, dtype=torch.float64)
    losses = torch.rand(tasks, generator=g, dtype=torch.float64) + 0.1
    a, b = build_method(name, _tasks(tasks)).double(), build_method(name, _tasks(tasks)).double()
    for _ in range(2):  # the second call sees the state (Nash-MTL's step, CDTT's EMA) the first left
        direction, weights = a.aggregate(grads, losses)
        w = b.weights_from_gramian(grads @ grads.T, losses)
        torch.testing.assert_close(weights, w, rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(direction, w @ grads, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize(
    "on_gpu,jacobian,free,largest,d,expected",
    [
        (False, 10**9, 10**9, 10, 100, False),  # the CPU: time first
        (True, 200, 1000, 10, 100, True),  # a fifth of free memory, stages cut G to a tenth
        (True, 100, 1000, 10, 100, False),  # a tenth of free memory: not worth a backward
        (True, 125, 1000, 50, 100, True),  # exactly an eighth, exactly half
        (True, 500, 1000, 51, 100, False),  # the largest stage is more than half of G
    ],
)
def test_auto_stages_only_where_the_jacobian_is_a_large_share_of_free_gpu_memory(on_gpu, jacobian, free, largest, d,
                                                                                 expected):
    assert auto_stages(on_gpu, jacobian, free, largest, d) is expected


def test_the_first_check_leaves_the_global_random_stream_alone(resnet18):
    encoder, x = resnet18
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    shared = list(encoder.parameters())
    staged = StagedGramian(encoder, shared)
    with staged.recording():
        z = encoder(x)
    staged.gramian(z, torch.ones(2, *z.shape))
    assert staged.verified
    assert torch.equal(torch.rand(3), expected)
