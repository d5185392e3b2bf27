"""A base class for Python layers: bottom/top counts and param_str, checked.

Caffe calls ``setup`` once with the bottom and top blobs, after setting
``self.param_str``, ``self.phase`` and (with this package's Caffe)
``self.layer_name``. Subclasses state what they accept as class attributes and
call ``super().setup(bottom, top)``; a wrong net then fails at construction
with a message that names the layer, instead of deep inside ``forward``.
"""
from __future__ import annotations

import ast
import re
from typing import Any, Mapping, Sequence

import yaml

import caffe


class LayerConfigError(ValueError):
    """A Python layer was configured wrongly in the prototxt."""


class _ParamLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core scalars: ``true``/``false``
    are the only booleans (``yes``, ``no``, ``on``, ``off`` stay strings) and
    ``1e-3`` is a float, as JSON and Python read them."""


_ParamLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ParamLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))
_ParamLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def parse_param_str(text: str, layer: str = "Python layer") -> dict[str, Any]:
    """Parse a layer's ``param_str`` into a dict.

    Accepted forms:

    - empty: no parameters;
    - a Python dict literal, as Caffe's own examples write (``{'scale': 2}``,
      ``{'flag': None}``), and so most JSON objects;
    - YAML. One line is read as the pairs of a flow mapping, so ``scale: 2,
      mode: sum``, ``'num_classes': 21`` and ``mean: [104, 117, 123]`` all
      work; several lines are a block mapping (nested mappings included).

    Scalars follow YAML 1.2: ``true``/``false`` are booleans, ``null`` and
    ``~`` are None, ``1e-3`` is a float, ``yes``/``no`` are strings; quote a
    string that holds a comma. Anything that is not a mapping with string
    keys and a value for each raises :class:`LayerConfigError` naming
    ``layer`` and quoting the text.
    """
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped.startswith("{"):
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, dict):
            return _checked(value, text, layer)
    if "\n" in stripped or stripped.startswith(("{", "[")):
        sources = [stripped, "{" + ", ".join(stripped.splitlines()) + "}"]
    else:
        sources = ["{" + stripped + "}"]
    for attempt, source in enumerate(sources):
        try:
            node = yaml.compose(source, Loader=_ParamLoader)
            break
        except yaml.YAMLError as error:
            if attempt == 0:
                first_error = error
    else:
        raise LayerConfigError(
            f"{layer}: param_str {text!r} is not 'key: value' pairs "
            f"({_yaml_problem(first_error)})")
    if not isinstance(node, yaml.MappingNode):
        raise LayerConfigError(f"{layer}: param_str {text!r} is not 'key: value' pairs")
    for key_node, value_node in node.value:
        if (isinstance(value_node, yaml.ScalarNode) and value_node.value == ""
                and value_node.style is None):
            raise LayerConfigError(
                f"{layer}: param_str entry {key_node.value!r} has no value "
                f"(write null for None; param_str was {text!r})")
    return _checked(yaml.load(source, Loader=_ParamLoader), text, layer)  # noqa: S506 (safe)


def _checked(value: dict, text: str, layer: str) -> dict[str, Any]:
    for key in value:
        if not isinstance(key, str):
            raise LayerConfigError(
                f"{layer}: param_str key {key!r} is not a string (param_str was {text!r})")
    return value


def _yaml_problem(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem}, column {mark.column + 1}" if mark is not None else problem


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
