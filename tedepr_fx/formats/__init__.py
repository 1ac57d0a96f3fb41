"""Low-rank formats as plug-ins (tensor-train, Tucker, tensor-ring).

Each format is one module here defining a :class:`~tedepr_fx.formats.base.Format`
instance, registered by one line in :data:`tedepr_fx.names.FORMATS`; the passes ask
:func:`get_format` and never branch on a format's name.
"""

from tedepr_fx.formats.base import Format, check_build_rank, check_init, formats_for, get_format
from tedepr_fx.names import FORMAT_NAMES

__all__ = ["FORMAT_NAMES", "Format", "check_build_rank", "check_init", "formats_for", "get_format"]
