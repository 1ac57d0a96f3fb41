"""Plan, transform, train and report LeNet-300-100 with the shipped rules.

    python examples/quickstart.py
"""

import torch

import tedepr_fx
from tedepr_fx.data import load_dataset, make_loaders, scoring_batches
from tedepr_fx.models import LeNet300100
from tedepr_fx.policies import path as policy_path
from tedepr_fx.train import evaluate, train

RULES = policy_path("lenet")  # the shipped rules/lenet.yaml, from a clone or an installed wheel


def main() -> None:
    data = load_dataset("digits")  # ships inside scikit-learn: no download
    train_loader, test_loader = make_loaders(data, batch_size=64)
    batches = scoring_batches(data, n_batches=10, batch_size=64)
    x = batches[0][0][:2]

    torch.manual_seed(0)
    model = LeNet300100(in_features=64)
    rules = tedepr_fx.load_rules(RULES).with_budget(sparsity=0.95)
    print(tedepr_fx.plan(model, rules, example_inputs=(x,)))

    compressed = tedepr_fx.transform(model, rules, example_inputs=(x,), data=batches, seed=0)
    train(compressed, train_loader, epochs=5, lr=0.05, momentum=0.9)
    print(tedepr_fx.report(compressed))
    print(f"test accuracy: {evaluate(compressed, test_loader):.3f}")


if __name__ == "__main__":
    main()
