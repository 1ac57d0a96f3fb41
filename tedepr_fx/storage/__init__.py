"""Compact, safe files for transformed models: safetensors tensors plus JSON metadata.

A file written by :func:`save` holds, for every prunable tensor, only its kept values
(in the model's dtype) and its mask packed as bits or as sorted flat indices, whichever
is smaller (nothing at all when every entry is kept); every other parameter and buffer
as it is; and, as JSON strings in the safetensors header, the format version, the
resolved rules, the layer records, the example input shapes and dtypes, the model
class and the report. Reading it runs no code from the file: the header is JSON, the
tensors are raw bytes (safetensors), and the module is rebuilt by re-applying the
recorded rewrite to a base model of the original class (:func:`load`).

Example
-------
>>> import tempfile, torch, tedepr_fx
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
>>> rules = {"version": 1, "defaults": {"scorer": "magnitude", "budget": {"sparsity": 0.9}},
...          "rules": [{"name": "all", "match": {"type": "Linear"}, "action": "prune"}]}
>>> x = torch.randn(2, 64)
>>> gm = tedepr_fx.transform(model, rules, example_inputs=(x,))
>>> path = tedepr_fx.save(gm, tempfile.mkdtemp() + "/mlp.tedepr")
>>> back = tedepr_fx.load(path, model=nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)))
>>> torch.equal(back(x), gm(x))
True
"""

from __future__ import annotations

from tedepr_fx.storage.format import (
           FORMAT,
           FORMAT_VERSION,
           HF_WEIGHTS,
           pack_bits,
           tensors_sha256,
           unpack_bits,
)
from tedepr_fx.storage.hf import from_pretrained, save_pretrained
from tedepr_fx.storage.read import read_metadata, read_report
from tedepr_fx.storage.rebuild import load
from tedepr_fx.storage.write import save, transform_source

__all__ = ["FORMAT", "FORMAT_VERSION", "HF_WEIGHTS", "from_pretrained", "load", "pack_bits", "read_metadata",
           "read_report", "save", "save_pretrained", "tensors_sha256", "transform_source", "unpack_bits"]
