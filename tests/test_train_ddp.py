"""examples/train_ddp.py under torchrun with 2 CPU processes (gloo): identical masks and
parameters on every rank, pruned entries still zero, a resumed run ends where an
uninterrupted one does, and FSDP2 (fully_shard) trains to the same parameters as DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_ddp.py"

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is unavailable")


def _torchrun(out: Path, steps: int, *extra: str) -> list[dict[str, object]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(SCRIPT), "--steps", str(steps), "--save-every", "3", "--out", str(out), *extra],
        capture_output=True, text=True, env=env, timeout=180, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ranks_agree_pruned_entries_stay_zero_and_resuming_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    first = _torchrun(tmp_path / "run", 6)
    assert first[0] == first[1]  # same masks, same parameters on both ranks
    assert first[0]["step"] == 6 and first[0]["pruned_nonzero"] == 0
    assert (tmp_path / "run" / "checkpoint.safetensors").stat().st_size < 20_000  # compact, not pickled

    resumed = _torchrun(tmp_path / "run", 10, "--resume")
    assert resumed[0] == resumed[1]
    assert resumed[0]["step"] == 10 and resumed[0]["pruned_nonzero"] == 0
    assert resumed[0]["masks"] == first[0]["masks"] and resumed[0]["params"] != first[0]["params"]

    straight = _torchrun(tmp_path / "straight", 10)
    assert straight[0]["params"] == resumed[0]["params"]


def test_fsdp2_shards_the_factors_and_trains_like_ddp(tmp_path: Path) -> None:
    ddp = _torchrun(tmp_path / "ddp", 6)
    fsdp = _torchrun(tmp_path / "fsdp", 6, "--fsdp")
    assert fsdp[0] == fsdp[1]
    assert fsdp[0]["pruned_nonzero"] == 0 and fsdp[0]["masks"] == ddp[0]["masks"]
    # the same SGD steps on the same shards: equal up to the order of the gradient reductions
    assert fsdp[0]["abs_sum"] == pytest.approx(ddp[0]["abs_sum"], rel=1e-5)
    assert (tmp_path / "fsdp" / "checkpoint.safetensors").exists()
