"""A base class for Python layers: bottom/top counts and param_str, checked.

Caffe calls ``setup`` once with the bottom and top blobs, after setting
``self.param_str``, ``self.phase`` and (with this package's Caffe)
``self.layer_name``. Subclasses state what they accept as class attributes and
call ``super().setup(bottom, top)``; a wrong net then fails at construction
with a message that names the layer, instead of deep inside ``forward``.
"""
from __future__ import annotations

import ast
import json
from typing import Any, Mapping, Sequence

import caffe


class LayerConfigError(ValueError):
    """A Python layer was configured wrongly in the prototxt."""


def _parse_value(text: str) -> Any:
    """A YAML-like scalar: JSON or a Python literal when it reads as one, else the string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return text


def parse_param_str(text: str, layer: str = "Python layer") -> dict[str, Any]:
    """Parse a layer's ``param_str`` into a dict.

    Accepted forms: empty (no parameters); a JSON object
    (``{"scale": 2}``); a Python dict literal, as Caffe's own examples write
    (``{'scale': 2}``); or YAML-like ``key: value`` pairs separated by commas or
    new lines (``scale: 2, mode: sum``). Anything else raises
    :class:`LayerConfigError` naming ``layer`` and quoting the text.
    """
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError:
            try:
                value = ast.literal_eval(stripped)
            except (ValueError, SyntaxError) as error:
                raise LayerConfigError(
                    f"{layer}: param_str {text!r} is neither a JSON object nor a "
                    f"Python dict literal ({error})") from None
        if not isinstance(value, dict):
            raise LayerConfigError(f"{layer}: param_str {text!r} is not a mapping")
    else:
        value = {}
        for item in stripped.replace("\n", ",").split(","):
            if not item.strip():
                continue
            key, colon, raw = item.partition(":")
            if not colon or not key.strip():
                raise LayerConfigError(
                    f"{layer}: param_str entry {item.strip()!r} is not 'key: value' "
                    f"(param_str was {text!r})")
            value[key.strip()] = _parse_value(raw.strip())
    for key in value:
        if not isinstance(key, str):
            raise LayerConfigError(f"{layer}: param_str key {key!r} is not a string")
    return value


def _describe_count(expected: int | tuple[int, int]) -> str:
    if isinstance(expected, int):
        return str(expected)
    low, high = expected
    return f"{low} to {high}"


class PythonLayer(caffe.Layer):
    """Base of caffe-pylayer's layers, and of yours.

    Class attributes a subclass sets:

    - ``num_bottoms``, ``num_tops``: an exact count, a ``(min, max)`` pair, or
      ``None`` for any;
    - ``param_defaults``: the accepted ``param_str`` keys with their defaults,
      or ``None`` to accept any keys. After ``setup``, ``self.params`` holds the
      defaults updated with the prototxt's values.
    """

    num_bottoms: int | tuple[int, int] | None = None
    num_tops: int | tuple[int, int] | None = None
    param_defaults: Mapping[str, Any] | None = None

    def describe(self) -> str:
        """``ClassName 'layer_name'``, for error messages."""
        name = getattr(self, "layer_name", "")
        kind = type(self).__name__
        return f"{kind} '{name}'" if name else kind

    def config_error(self, message: str) -> LayerConfigError:
        """An exception whose message starts with this layer's description."""
        return LayerConfigError(f"{self.describe()}: {message}")

    def setup(self, bottom: Sequence[Any], top: Sequence[Any]) -> None:
        self._check_count("bottom", len(bottom), self.num_bottoms)
        self._check_count("top", len(top), self.num_tops)
        self.params = self._read_params()

    def _check_count(self, what: str, actual: int, expected: int | tuple[int, int] | None) -> None:
        if expected is None:
            return
        low, high = (expected, expected) if isinstance(expected, int) else expected
        if not low <= actual <= high:
            raise self.config_error(
                f"expects {_describe_count(expected)} {what}s, got {actual}")

    def _read_params(self) -> dict[str, Any]:
        given = parse_param_str(getattr(self, "param_str", ""), self.describe())
        if self.param_defaults is None:
            return given
        unknown = sorted(set(given) - set(self.param_defaults))
        if unknown:
            accepted = ", ".join(sorted(self.param_defaults)) or "none"
            raise self.config_error(
                f"unknown param_str keys {unknown}; accepted keys: {accepted}")
        return {**self.param_defaults, **given}
