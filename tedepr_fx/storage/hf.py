"""Hugging Face directories: ``config.json`` plus the compressed tensors, under a name plain
``from_pretrained`` does not load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from tedepr_fx.errors import StorageError
from tedepr_fx.storage.format import HF_WEIGHTS
from tedepr_fx.storage.read import read_metadata
from tedepr_fx.storage.rebuild import load
from tedepr_fx.storage.write import save


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write a transformed Hugging Face model to ``directory``: ``config.json`` and the
    compressed tensors with the rewrite's metadata in :data:`HF_WEIGHTS`.

    No ``model.safetensors`` / ``pytorch_model.bin`` is written, so plain
    ``AutoModel.from_pretrained(directory)`` fails (no weights file) instead of building
    dense layers with fresh weights; :func:`from_pretrained` reads it.
    """
    config: Any = getattr(model, "config", None)
    if config is None or not callable(getattr(config, "save_pretrained", None)):
        raise StorageError(f"this {type(model).__name__} has no Hugging Face config (model.config); "
                           "use tedepr_fx.save(model, path)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (directory / name).exists():
            raise StorageError(f"{directory / name} exists: plain from_pretrained would load it as a dense "
                               "model; write to an empty directory")
    config.save_pretrained(directory)
    save(model, directory / HF_WEIGHTS)
    return directory


def from_pretrained(directory: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model written by :func:`save_pretrained`: the recorded transformers class is
    built from ``config.json`` (no remote code) and the rewrite re-applied (see :func:`load`)."""
    directory = Path(directory)
    if not (directory / HF_WEIGHTS).is_file():
        raise StorageError(f"{directory}: no {HF_WEIGHTS} (not written by tedepr_fx.save_pretrained)")
    if model is None:
        model = _hf_model(directory, read_metadata(directory)["model_class"])
    return load(directory / HF_WEIGHTS, model)


def _hf_model(directory: Path, model_class: str) -> nn.Module:
    """A fresh model of the recorded transformers class, from the directory's config."""
    import transformers

    module_name, _, name = model_class.rpartition(".")
    cls = getattr(transformers, name, None) if module_name.startswith("transformers.") else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
            and cls.__module__ == module_name):
        raise StorageError(f"{directory}: holds a rewrite of {model_class}, not a transformers model class; "
                           "pass model=")
    config = transformers.AutoConfig.from_pretrained(directory)
    built: nn.Module = cls(config)
    return built


