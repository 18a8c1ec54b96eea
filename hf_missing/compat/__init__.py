"""The one place hf_missing touches internals of peft and transformers, and the versions they were checked on.

- :mod:`hf_missing.compat.peft`: every peft internal the methods use (peft's method tables, the adapter-name key
  renaming, ``DUMMY_TARGET_MODULES``, bypassing adapters) and transformers' private "adapter injected" flag. The
  methods import it, so it imports nothing of hf_missing above them.
- :mod:`hf_missing.compat.auto`: the hooks that hand hf_missing adapters given to transformers' ``Auto*`` classes
  and to ``PeftModel`` to the wrapper's checks; ``import hf_missing`` installs them.

These internals move between minor versions, so both modules run :func:`check_versions` when imported: a version
other than the checked ones fails at once with what moved and how to fix it, instead of somewhere deep in peft.
"""

from __future__ import annotations

import peft as _peft  # aliased: the submodule hf_missing.compat.peft takes the name ``peft`` in this package
import transformers as _transformers

CHECKED_TRANSFORMERS = ("5.23.",)
CHECKED_PEFT = ("0.21.",)
PINNED = "pip install 'transformers>=5.23,<5.24' 'peft>=0.21,<0.22'"


class IncompatibleVersionError(ImportError):
    """peft or transformers moved away from the versions whose internals hf_missing was checked against."""


def _checked(prefixes: tuple[str, ...]) -> str:
    return " or ".join(f"{p}*" for p in prefixes)


def incompatible(what: str) -> IncompatibleVersionError:
    """The error for ``what`` moved: the versions checked and installed, and the fix (install the pinned ones)."""
    return IncompatibleVersionError(
        f"{what}. hf_missing relies on internals of transformers and peft that move between minor versions; it was "
        f"checked on transformers {_checked(CHECKED_TRANSFORMERS)} and peft {_checked(CHECKED_PEFT)}, and transformers "
        f"{_transformers.__version__} with peft {_peft.__version__} are installed. Install the pinned versions: "
        f"{PINNED}."
    )


def check_versions() -> None:
    """Raise :class:`IncompatibleVersionError` unless the installed transformers and peft are checked versions."""
    installed = {"transformers": (_transformers.__version__, CHECKED_TRANSFORMERS),
                 "peft": (_peft.__version__, CHECKED_PEFT)}
    moved = [f"{name} {version}" for name, (version, checked) in installed.items() if not version.startswith(checked)]
    if moved:
        raise incompatible(f"{' and '.join(moved)} moved from the versions hf_missing was checked on")
