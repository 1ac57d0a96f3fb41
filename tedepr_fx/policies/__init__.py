"""The policy files shipped with the package: ``lenet``, ``lenet5``, ``vgg``, ``resnet``, ``transformer``,
``vit``, ``lstm``.

They are package data, so they are found the same way in a clone, an editable install and
an installed wheel. In a clone, ``rules/`` at the repository root is a link to this folder.

Example
-------
>>> from tedepr_fx import policies
>>> policies.path("lenet").name
'lenet.yaml'
>>> "resnet" in policies.names()
True
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["names", "path"]


def names() -> list[str]:
    """The names of the shipped policies (file stems), sorted."""
    return sorted(entry.name[: -len(".yaml")] for entry in files(__name__).iterdir()
                  if entry.name.endswith(".yaml"))


def path(name: str) -> Path:
    """The file of the shipped policy ``name`` (``"lenet"`` or ``"lenet.yaml"``).

    Raises
    ------
    FileNotFoundError
        If no policy of that name is shipped; the message lists those that are.
    """
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    resource = files(__name__) / f"{stem}.yaml"
    if not resource.is_file():
        raise FileNotFoundError(f"no shipped policy {name!r}; shipped: {', '.join(names())}")
    # installed packages are plain folders (the wheel is not zip-safe), so this is a real path
    return Path(str(resource))
