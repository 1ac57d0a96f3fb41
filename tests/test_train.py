"""The training loop: it learns, evaluate() counts correctly, bad arguments are named."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tedepr_fx.data import load_dataset, make_loaders
from tedepr_fx.errors import DataError
from tedepr_fx.models import LeNet300100
from tedepr_fx.train import count_params, evaluate, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def full_loss(model: nn.Module, dataset: TensorDataset) -> float:
    """Reference: mean cross-entropy over the whole split in one dense computation."""
    x, y = dataset.tensors
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x), y).item()


def test_train_lowers_the_loss_of_lenet_on_digits(digits):
    torch.manual_seed(0)
    model = LeNet300100(in_features=64, num_classes=10)
    train_loader, test_loader = make_loaders(digits, batch_size=64, seed=0)
    before = full_loss(model, digits.train)
    accuracy_before = evaluate(model, test_loader)
    losses = train(model, train_loader, epochs=2, lr=0.05, momentum=0.9, progress=False)
    assert len(losses) == 2 and losses[1] < losses[0]
    assert full_loss(model, digits.train) < 0.5 * before
    accuracy = evaluate(model, test_loader)
    assert accuracy > 0.8 and accuracy > accuracy_before + 0.3


def test_train_with_adam_and_leaves_mode_as_it_was(digits):
    torch.manual_seed(0)
    model = LeNet300100(in_features=64).eval()
    train_loader, _ = make_loaders(digits, batch_size=128, seed=0)
    before = full_loss(model, digits.train)
    train(model, train_loader, epochs=1, lr=1e-3, optimizer="adam", progress=False)
    assert not model.training
    assert full_loss(model, digits.train) < before


def test_train_with_zero_epochs_changes_nothing(digits):
    torch.manual_seed(0)
    model = LeNet300100(in_features=64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert train(model, make_loaders(digits)[0], epochs=0, progress=False) == []
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


class Identity2(nn.Module):
    """Logits = inputs, so the predicted class is the argmax of each input row."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.drop = nn.Dropout(0.9)

    def forward(self, x):
        return self.drop(x) + self.dummy


def test_evaluate_matches_a_hand_computed_accuracy():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [5.0, 4.0]])
    y = torch.tensor([0, 1, 1, 1, 1])
    # argmax per row: 0, 1, 0, 1, 0 -> rows 0, 1, 3 are right: 3 of 5
    model = Identity2().train()
    loader = DataLoader(TensorDataset(x, y), batch_size=2)  # uneven last batch
    assert evaluate(model, loader) == pytest.approx(3 / 5)
    assert model.training  # mode restored; dropout was off during evaluation


def test_bad_arguments_are_named(digits):
    model = LeNet300100(in_features=64)
    loader = make_loaders(digits)[0]
    with pytest.raises(ValueError, match="optimizer.*rmsprop"):
        train(model, loader, optimizer="rmsprop", progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train(model, loader, epochs=-1, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(model, loader, lr=0.0, progress=False)
    empty = DataLoader(TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.int64)))
    with pytest.raises(DataError, match="no samples"):
        train(model, empty, progress=False)
    with pytest.raises(DataError, match="no samples"):
        evaluate(model, empty)


def test_count_params():
    model = LeNet300100(in_features=64, num_classes=10)
    assert count_params(model) == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    model.fc1.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 300 * 100 + 100 + 100 * 10 + 10


def test_the_demo_on_its_embedded_data_shows_the_claim():
    """digits (inside scikit-learn): TEDEPR well above chance and ahead of every PaI baseline."""
    from tedepr_fx.demo import TEDEPR, run

    lines: list[str] = []
    results = run(dataset="digits", progress=False, echo=lines.append)
    assert {n for n in results} == {"dense", TEDEPR} | {f"{s} on dense" for s in
                                                       ("snip", "grasp", "synflow", "force", "magnitude", "random")}
    kept = {r["kept_weights"] for n, r in results.items() if n != "dense"}
    assert kept == {round(0.005 * 50200)}  # every method at the same budget
    ours = results[TEDEPR]["accuracy"]
    assert ours >= 2 * 0.1
    assert all(ours > r["accuracy"] for n, r in results.items() if n not in ("dense", TEDEPR))
    assert results[TEDEPR]["collapsed"] == []  # no dead or rank-1 layer after masking
    assert "strongest pruning-at-initialization baseline" in lines[-2]
