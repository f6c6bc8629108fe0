"""The one place that knows how the supported ``transformers`` releases pass their internals.

The pruning hooks (ILP, FastV and the methods built on them) sit *inside* a model's forward: they
read the keyword arguments that ``transformers`` hands to the model and to each decoder layer.
Those are call conventions, not public API, and they move between releases. Everything
version-dependent the hooks read goes through this module, so a moved argument is fixed here once
(and ``docs/compatibility.md`` lists what we rely on).

Known moves inside the tested range:

* **transformers 5.24.0** renamed the KV-cache argument ``past_key_values`` -> ``cache`` (model
  ``forward``, every decoder layer and attention module, and model outputs:
  ``outputs.past_key_values`` -> ``outputs.cache``). The old keyword is still accepted by the
  public ``forward`` (a ``deprecate_kwarg`` decorator renames it, announced for removal in 5.40),
  but a forward *pre*-hook runs before that decorator and sees whichever name the caller used,
  and decoder layers are called with ``cache=``. 5.23.x uses ``past_key_values`` everywhere.

The tested range (``TESTED_TRANSFORMERS``) is the range declared in ``pyproject.toml`` and run by
``.ci/run`` (lowest and highest); ``tests/test_compat.py`` keeps the three in agreement.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

__all__ = [
    "CACHE_KWARGS",
    "TESTED_TRANSFORMERS",
    "UntestedVersionWarning",
    "cache_kwarg",
    "cache_of_kwargs",
    "cache_of_output",
    "check_transformers_version",
]

# (lowest, highest) tested ``major.minor``; patch releases of a tested minor are accepted.
TESTED_TRANSFORMERS = ((5, 23), (5, 25))

# Newest name first: 5.24+ passes ``cache``; 5.23 passes ``past_key_values``.
CACHE_KWARGS = ("cache", "past_key_values")


class UntestedVersionWarning(UserWarning):
    """A dependency outside the range this project is tested on: results may differ silently."""


def cache_of_kwargs(kwargs: Mapping[str, Any]) -> Any:
    """The KV cache in a model's or decoder layer's forward kwargs, under either name (or None).

    A pre-hook on the top-level model sees the name the *caller* used (``generate`` uses the
    running release's name; user code may still pass ``past_key_values=`` on 5.24+), so both are
    looked up; a decoder layer sees the running release's name.
    """
    for name in CACHE_KWARGS:
        cache = kwargs.get(name)
        if cache is not None:
            return cache
    return None


def cache_of_output(output: Any) -> Any:
    """The KV cache returned by a model call (``output.cache`` on 5.24+, ``past_key_values`` before)."""
    for name in CACHE_KWARGS:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


def cache_kwarg() -> str:
    """The keyword the running release's ``forward`` declares for the cache (for callers that pass one)."""
    return "cache" if _version() >= (5, 24) else "past_key_values"


def _version_string() -> str:
    import transformers

    return transformers.__version__


def _version() -> tuple[int, int]:
    from packaging.version import Version

    v = Version(_version_string())
    return (v.major, v.minor)


_warned: set[str] = set()


def check_transformers_version(what: str = "the pruning hooks") -> bool:
    """Warn once per process if the running ``transformers`` is outside ``TESTED_TRANSFORMERS``.

    Returns True when the version is tested. Called when a hook is attached (not per forward).
    """
    if TESTED_TRANSFORMERS[0] <= _version() <= TESTED_TRANSFORMERS[1]:
        return True
    running = _version_string()
    if running not in _warned:
        _warned.add(running)
        lo, hi = (".".join(map(str, v)) for v in TESTED_TRANSFORMERS)
        warnings.warn(
            f"transformers {running} is untested with {what} (tested: {lo}.x to {hi}.x); "
            "results may be wrong if its internal call conventions moved: install the locked versions "
            "(requirements.lock) or see docs/compatibility.md",
            UntestedVersionWarning,
            stacklevel=3,
        )
    return False
