"""constriction, imported with an error that says how to install it."""

from __future__ import annotations

from types import ModuleType


def constriction() -> ModuleType:
    """The ``constriction`` module (entropy coders), or ImportError naming the extra to install."""
    try:
        import constriction as c  # optional (vaelab[compression]): imported where it is used
    except ImportError as err:  # pragma: no cover - exercised by a test that hides the module
        raise ImportError(
            "vaelab.compression needs the entropy-coding library constriction, which is not "
            "installed. Install it with: pip install 'vaelab[compression]' "
            "(or pip install constriction)."
        ) from err
    return c


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v("constriction")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"
