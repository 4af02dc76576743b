"""Make a submodule callable as its main function.

``models.train`` is both a submodule (``models.train.train``) and, by the
package's interface, the function ``from models import train``. Python binds
a loaded submodule onto its parent package, so the two names collide; making
the module callable lets both spellings work: ``models.train(...)`` and
``models.train.train(...)`` run the same function.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["make_callable"]


class _CallableModule(types.ModuleType):
    """A module whose call forwards to its ``__call_target__`` attribute."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__call_target__(*args, **kwargs)


def make_callable(module_name: str, function_name: str) -> None:
    """Let ``sys.modules[module_name](...)`` call ``module.function_name(...)``."""
    module = sys.modules[module_name]
    module.__call_target__ = getattr(module, function_name)  # type: ignore[attr-defined]
    module.__class__ = _CallableModule
