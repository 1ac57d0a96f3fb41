"""``tedepr-fx plan`` / ``transform`` from the command line: factories and data in the current
directory, ``--scorer``, ``--loss``, integer inputs, and clear errors."""

from __future__ import annotations

import sys
import textwrap

import pytest

from tedepr_fx.cli import main
from tedepr_fx.storage import read_report

FACTORIES = textwrap.dedent('''
    import torch
    from torch import nn

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def batches():
        g = torch.Generator().manual_seed(1)
        return [(torch.randn(4, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]

    def not_a_model():
        return 42

    def gpt2():
        import transformers
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=16, n_layer=1, n_head=2, vocab_size=20, n_positions=8, bos_token_id=0, eos_token_id=0))

    def token_pairs():
        g = torch.Generator().manual_seed(2)
        ids = [torch.randint(0, 20, (2, 8), generator=g) for _ in range(2)]
        return [(x, x) for x in ids]
''')

RULES = textwrap.dedent('''
    version: 1
    defaults: {scorer: trainability, budget: {sparsity: 0.5}}
    rules:
      - {name: hidden, match: {type: [Linear, transformers.pytorch_utils.Conv1D]}, action: prune}
''')


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    (tmp_path / "rules.yaml").write_text(RULES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    sys.modules.pop("my_factories", None)
    yield tmp_path
    sys.modules.pop("my_factories", None)


def test_transform_finds_model_and_data_in_the_current_directory_and_takes_a_scorer(workdir, capsys):
    code = main(["transform", "my_factories:mlp", "--rules", "rules.yaml", "--data", "my_factories:batches",
                 "--scorer", "snip", "--input-shape", "2,8", "-o", "out.pt"])
    assert code == 0, capsys.readouterr().err
    rows = read_report(workdir / "out.pt").rows
    assert {r.scored_by for r in rows} == {"snip"} and {r.scorer for r in rows} == {"snip"}


def test_without_data_the_cli_reports_the_data_error(workdir, capsys):
    assert main(["transform", "my_factories:mlp", "--rules", "rules.yaml", "-o", "out.pt",
                 "--input-shape", "2,8"]) == 2
    assert "needs data batches" in capsys.readouterr().err


def test_a_language_model_with_token_inputs_and_the_causal_lm_loss(workdir, capsys):
    pytest.importorskip("transformers")
    code = main(["transform", "my_factories:gpt2", "--rules", "rules.yaml", "--data", "my_factories:token_pairs",
                 "--input-shape", "2,8", "--input-dtype", "long", "--loss", "causal_lm", "-o", "lm.pt"])
    assert code == 0, capsys.readouterr().err
    assert any(r.kept < r.dense for r in read_report(workdir / "lm.pt").rows)


def test_plan_takes_the_models_own_example_inputs(capsys):
    assert main(["plan", "tedepr_fx.models:lenet5", "--rules", "rules/lenet.yaml"]) == 0
    assert "fc1" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--data", "nowhere"], "data must be PACKAGE.MODULE:NAME; got 'nowhere'"),
    (["--data", "my_factories:missing"], "cannot load data 'my_factories:missing'"),
    (["--scorer", "nope"], None),  # argparse refuses it
])
def test_bad_arguments_exit_2_with_a_message(workdir, capsys, argv, message):
    assert main(["transform", "my_factories:mlp", "--rules", "rules.yaml", "-o", "x.pt", *argv]) == 2
    if message:
        assert message in capsys.readouterr().err


def test_a_factory_that_returns_no_module_is_refused(workdir, capsys):
    assert main(["plan", "my_factories:not_a_model", "--rules", "rules.yaml"]) == 2
    assert "returned int, not an nn.Module" in capsys.readouterr().err
