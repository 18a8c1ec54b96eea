"""One type check for the options of every method config, read from the options' annotations.

``int`` takes ints (not bools), ``float`` takes finite ints or floats (stored as float), ``bool`` takes
True/False, ``str`` takes strings, ``list[X]`` takes a list or tuple of X (stored as a list), and ``X | None``
also takes None. Other annotations are not checked. Range checks stay in each method's config. The value checks
here (:func:`is_int`, :func:`is_signature`) also serve the loaders of adapter and bank files.
"""

from __future__ import annotations

import functools
import math
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any

MAX_OPTION_VALUE = 65_536  # no method option (prompt length, depth, widths) is anywhere near this in any paper


def is_int(value: Any) -> bool:
    """An integer (Python or numpy) that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_signature(signature: Any) -> bool:
    """Whether ``signature`` has the shape ``BackboneInterface.signature()`` gives: ``{"model_type": str,
    "streams": {name: [hidden size, layers]}}`` (read back from untrusted adapter and bank files)."""
    streams = signature.get("streams") if isinstance(signature, dict) else None
    return (isinstance(signature, dict) and isinstance(signature.get("model_type"), str) and isinstance(streams, dict)
            and all(isinstance(v, list) and len(v) == 2 and all(is_int(x) for x in v) for v in streams.values()))


def is_finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# annotation -> (accepts, convert, description, plural for list items)
_SCALARS: dict[Any, tuple[Callable[[Any], bool], Callable[[Any], Any], str, str]] = {
    int: (is_int, int, "an int", "ints"),
    float: (is_finite, float, "a finite number", "finite numbers"),
    bool: (lambda v: isinstance(v, bool), bool, "True or False", "bools"),
    str: (lambda v: isinstance(v, str), str, "a string", "strings"),
    type(None): (lambda v: v is None, lambda v: v, "None", "Nones"),
}


@functools.cache
def annotations(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a config class (its modules use ``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)


def conform(annotation: Any, value: Any) -> Any:
    """``value`` converted as ``annotation`` asks; raises ``TypeError`` when it does not fit."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return conform(arg, value)
            except TypeError:
                continue
        raise TypeError(value)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise TypeError(value)
        return [conform(args[0], item) for item in value]
    if annotation not in _SCALARS:
        return value
    accepts, convert, _, _ = _SCALARS[annotation]
    if not accepts(value):
        raise TypeError(value)
    return convert(value)


def too_large(value: Any) -> bool:
    """An int (or a list holding one) beyond :data:`MAX_OPTION_VALUE`: a corrupt or hostile config, refused
    before anything is allocated."""
    values = value if isinstance(value, list) else [value]
    return any(is_int(v) and abs(v) > MAX_OPTION_VALUE for v in values)


def describe(annotation: Any) -> str:
    """``annotation`` in words, e.g. ``int | None`` -> "an int or None"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is list:
        item = _SCALARS.get(args[0])
        return f"a list of {item[3] if item else args[0]}"
    return _SCALARS[annotation][2] if annotation in _SCALARS else str(annotation)
