"""Hydra's command-line grammar and config composition, so reference command lines run unchanged.

The reference trains with `python pretrain.py arch=trm data_paths="[data/x]" lr=1e-4 +run_name=r`;
`trm-ray train RECIPE.yaml` takes the same arguments:

    data = load_recipe("experiments/sudoku-mlp.yaml", ["arch=trm", "lr=1e-4", "+run_name=r"])
    config = build(TrainConfig, data)

What this module implements of hydra (hydra itself is not a dependency):
- overrides `key=value`, `+key=value` (add: the key must not be set yet) and `++key=value` (add
  or override); values typed as hydra types them: true/false -> bool, 10 -> int, 1e-4 / 3.0 ->
  float, null -> None, [a, b] lists, {a: 1} dicts, 'quoted' strings; anything else (yes, on,
  2024-01-01, 12:30) stays a string, as does every value of a string key (run_name=2024);
- `arch=<name>` picks the architecture group: the group's YAML is the base of the `arch:` section,
  the recipe's own `arch:` keys override it, then the `arch.*` overrides (hydra's `_self_` last);
  arch/<name>.yaml beside the recipe comes first, then trm_ray/arch/<name>.yaml;
- a recipe's `defaults:` list (`- arch: trm`, `- _self_`) and its `hydra:` block (ignored);
- `${oc.env:VAR}`, `${oc.env:VAR,default}` and references to other keys (`${.hidden_size}`, as
  the reference's arch files use), resolved after every override.
What it does not implement gets a one-line ConfigError saying what to write instead: `~key`,
sweeps (`-m`, `lr=1e-4,3e-4`, choice()/range()), other resolvers, group paths and packages.
"""

from __future__ import annotations

import os
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel

from trm_ray.config import ConfigError, TrainConfig, _deepcopy, read_yaml, set_key

# Architecture groups trm-ray builds: one YAML per group here (arch=<file stem>). A new
# architecture adds its YAML (and the model code that reads its keys); nothing else to register.
ARCH_GROUP_DIR = Path(__file__).with_name("arch")
GROUP_KEYS = ("arch",)

SWEEP_HINT = ("trm-ray train runs one config: put the values in a sweep file's search_space "
              "(examples in experiments/sweeps/) and run `trm-ray sweep FILE`")
_SWEEP_FUNCTIONS = {"choice", "range", "interval", "glob", "shuffle", "sort", "tag"}

_ID = r"[A-Za-z_][A-Za-z0-9_]*"
_KEY = re.compile(rf"{_ID}(?:\.(?:{_ID}|0|[1-9][0-9]*))*")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_UINT = r"(?:0|[1-9](?:_?[0-9])*)"
_POINT_FLOAT = rf"(?:{_UINT}\.|{_UINT}?\.[0-9](?:_?[0-9])*)"
_INT = re.compile(rf"[+-]?{_UINT}")
_FLOAT = re.compile(rf"[+-]?(?:{_POINT_FLOAT}|(?:{_UINT}|{_POINT_FLOAT})[eE][+-]?{_UINT}|[Ii][Nn][Ff]|[Nn][Aa][Nn])")
_NULL = re.compile(r"[Nn][Uu][Ll][Ll]")
_FUNCTION = re.compile(rf"\s*({_ID})\s*\(")
_ESCAPES = {"\\\\": "\\", "\\,": ",", "\\ ": " ", "\\\t": "\t"}
_INTERPOLATION = re.compile(r"(\\?)\$\{([^}]*)\}")

_notes_printed: set[str] = set()


@dataclass(frozen=True)
class Override:
    """One parsed command-line override."""

    text: str                                # as given, for messages
    op: Literal["set", "add", "force"]       # key=value, +key=value, ++key=value
    key: str                                 # dotted
    value: Any


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------
TextMode = Optional[Literal["value", "items"]]


class _ValueParser:
    """Recursive descent over hydra's value grammar: element (',' element)*, where an element is
    a [list], a {dict}, a quoted string, a function call or an unquoted primitive."""

    def __init__(self, text: str, source: str, text_mode: TextMode = None):
        self.text, self.pos, self.source, self.text_mode = text, 0, source, text_mode

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: {what}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def parse(self) -> Any:
        elements = [self.element(0)]
        while self.peek() == ",":
            self.pos += 1
            elements.append(self.element(0))
        if self.pos < len(self.text):
            raise self.fail(f"unexpected {self.peek()!r} at character {self.pos + 1} of the value")
        if len(elements) > 1:
            raise self.fail(f"a comma-separated value is a hydra sweep over {len(elements)} values; "
                            f"{SWEEP_HINT} (escape a literal comma as \\,)")
        return elements[0]

    def element(self, depth: int) -> Any:
        self.skip_ws()
        char = self.peek()
        if char == "[":
            value = self.sequence(depth)
        elif char == "{":
            value = self.mapping(depth)
        elif char in ("'", '"'):
            value = self.quoted()
        else:
            function = _FUNCTION.match(self.text, self.pos)
            if function:
                name = function.group(1)
                if name in _SWEEP_FUNCTIONS:
                    raise self.fail(f"{name}(...) is a hydra sweep; {SWEEP_HINT}")
                raise self.fail(f"hydra's function {name}(...) is not supported; write the value itself "
                                f"(quote it to keep it a string)")
            return self.primitive(depth)
        self.skip_ws()
        if self.peek() not in ("", ",", "]", "}"):
            raise self.fail(f"unexpected {self.peek()!r} after {self.text[:self.pos].strip()!r}")
        return value

    def sequence(self, depth: int) -> list[Any]:
        self.pos += 1  # [
        items: list[Any] = []
        self.skip_ws()
        if self.peek() == "]":
            self.pos += 1
            return items
        while True:
            items.append(self.element(depth + 1))
            char = self.peek()
            self.pos += 1
            if char == "]":
                return items
            if char != ",":
                raise self.fail("a list needs a closing ]")

    def mapping(self, depth: int) -> dict[str, Any]:
        self.pos += 1  # {
        items: dict[str, Any] = {}
        self.skip_ws()
        if self.peek() == "}":
            self.pos += 1
            return items
        while True:
            self.skip_ws()
            key = re.compile(_ID).match(self.text, self.pos)
            if not key:
                raise self.fail("a dict is {key: value, ...} with plain names as keys")
            self.pos = key.end()
            self.skip_ws()
            if self.peek() != ":":
                raise self.fail(f"dict key {key.group()!r} needs a ':' and a value")
            self.pos += 1
            items[key.group()] = self.element(depth + 1)
            char = self.peek()
            self.pos += 1
            if char == "}":
                return items
            if char != ",":
                raise self.fail("a dict needs a closing }")

    def quoted(self) -> str:
        quote = self.peek()
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.text[self.pos + 1:self.pos + 2] == quote:
                out.append(quote)
                self.pos += 2
                continue
            self.pos += 1
            if char == quote:
                return "".join(out)
            out.append(char)
        raise self.fail(f"the quote {quote} is not closed")

    def primitive(self, depth: int) -> Any:
        parts: list[tuple[str, bool]] = []  # (text, escaped)
        while self.pos < len(self.text) and self.peek() not in (",", "[", "]", "{", "}"):
            two = self.text[self.pos:self.pos + 2]
            if two in _ESCAPES:
                parts.append((_ESCAPES[two], True))
                self.pos += 2
            elif two == "${":
                end = self.text.find("}", self.pos)
                if end < 0:
                    raise self.fail("an interpolation ${... needs its closing }")
                parts.append((self.text[self.pos:end + 1], False))
                self.pos = end + 1
            else:
                parts.append((self.peek(), False))
                self.pos += 1
        while parts and not parts[0][1] and parts[0][0] in " \t":
            parts.pop(0)
        while parts and not parts[-1][1] and parts[-1][0] in " \t":
            parts.pop()
        text = "".join(part for part, _ in parts)
        if depth and not text:
            raise self.fail("a list or dict has an empty element")
        if any(escaped for _, escaped in parts):
            return text
        as_text = (self.text_mode == "value" and depth == 0) or (self.text_mode == "items" and depth == 1)
        return _typed(text, as_text)


def _typed(text: str, as_text: bool) -> Any:
    """An unquoted primitive as hydra types it; as_text keeps everything but null a string."""
    if _NULL.fullmatch(text):
        return None
    if as_text:
        return text
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def parse_value(text: str, source: str = "value", text_mode: TextMode = None) -> Any:
    """A `key=value` right-hand side, typed as hydra types it (see the module docstring)."""
    return _ValueParser(text, source, text_mode).parse()


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------
def parse_override(text: str) -> Override:
    """`key=value`, `+key=value` or `++key=value`; anything else hydra accepts that trm-ray does not
    is a ConfigError saying what to write instead."""
    item = text.strip()
    if item in ("-m", "--multirun"):
        raise ConfigError(f"{item}: hydra's multirun is not supported; {SWEEP_HINT}")
    if item.startswith("~"):
        raise ConfigError(_deletion_message(item))
    op: Literal["set", "add", "force"] = "force" if item.startswith("++") else "add" if item.startswith("+") else "set"
    body = item[{"force": 2, "add": 1, "set": 0}[op]:]
    if "=" not in body:
        raise ConfigError(f"override {text!r} is not key=value (e.g. arch.L_cycles=6)")
    key, value = body.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    if "/" in key or "@" in key:
        raise ConfigError(f"override {text!r}: hydra group paths and packages (a/b=, group@pkg=) are not "
                          f"supported; trm-ray has one group, arch (arch=trm), and plain keys (arch.L_cycles=6)")
    if not _KEY.fullmatch(key):
        raise ConfigError(f"override {text!r}: {key!r} is not a key (dotted names, e.g. arch.L_cycles=6)")
    return Override(text, op, key, parse_value(value, f"override {text!r}", _text_mode(key)))


def _deletion_message(item: str) -> str:
    key = item.lstrip("~").split("=", 1)[0].strip()
    field = _schema_field(key)
    if field is None:
        return f"override {item!r}: trm-ray cannot delete keys, and {key!r} is not a trm-ray key; drop the override"
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
        return (f"override {item!r}: trm-ray cannot delete keys; remove {key}: from the recipe or set its keys "
                f"one by one ({key}.<name>=value)")
    default = field.get_default(call_default_factory=True)
    return (f"override {item!r}: trm-ray cannot delete keys; write {key}={_format(default)} for the default, "
            f"or remove {key} from the recipe")


def _format(value: Any) -> str:
    """A value in override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_format(v)}" for k, v in value.items()) + "}"
    return str(value)


def _schema_field(dotted: str) -> Any:
    """The pydantic FieldInfo of a dotted TrainConfig key, or None if there is none."""
    model: Any = TrainConfig
    field = None
    for part in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = field.annotation
    return field


def _text_mode(dotted: str) -> TextMode:
    """Keys typed str (or list[str]) take every value as text: run_name=2024 is '2024', as hydra
    keeps it for a string-typed key."""
    field = _schema_field(dotted)
    if field is None:
        return None
    annotation = field.annotation
    if typing.get_origin(annotation) is typing.Union or type(annotation).__name__ == "UnionType":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    if annotation is str:
        return "value"
    if typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,):
        return "items"
    return None


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------
_NO_GROUP = object()


def load_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> dict[str, Any]:
    """A recipe file composed with its arch group and the overrides, as nested dicts."""
    return compose(read_yaml(path), list(overrides), Path(path).parent, str(path))


def compose(data: dict[str, Any], overrides: list[str] = (), recipe_dir: Optional[Path] = None,
            source: str = "") -> dict[str, Any]:
    """`data` (a recipe) with its `defaults:` group, the overrides and the interpolations applied."""
    data = _deepcopy(data)
    where = f"{source}: " if source else ""
    if "hydra" in data:
        data.pop("hydra")
        note(f"ignoring the hydra: block of {source or 'the recipe'} (hydra's own settings; trm-ray needs none)")
    choice, self_first = _arch_from_defaults(data.pop("defaults", None), where)
    rest = []
    for override in (parse_override(item) for item in overrides):
        if override.key in GROUP_KEYS:
            choice = _group_choice(override)
        elif override.key.split(".")[0] == "hydra":
            note("ignoring hydra.* overrides (hydra's own settings; trm-ray needs none)")
        else:
            rest.append(override)
    if choice == "???":
        raise ConfigError(f"{where}the defaults list leaves the architecture open (arch: ???); add arch=<name> "
                          f"({', '.join(arch_groups(recipe_dir))})")
    if choice is not None and choice is not _NO_GROUP:
        own = data.get("arch") or {}
        if not isinstance(own, dict):
            raise ConfigError(f"{where}arch must be a mapping of architecture keys, not {own!r}")
        group = load_arch_group(choice, recipe_dir)
        data["arch"] = _merge(own, group) if self_first else _merge(group, own)
    for override in rest:
        if override.op == "add" and _has_key(data, override.key):
            raise ConfigError(f"override {override.text!r}: {override.key} is already set (+ only adds a new key); "
                              f"write {override.key}=... or ++{override.key}=...")
        data = set_key(data, override.key, override.value, source=f"override {override.text!r}")
    return resolve_interpolations(data, source)


def _group_choice(override: Override) -> Any:
    if override.value is None:
        return _NO_GROUP
    if not isinstance(override.value, str):
        raise ConfigError(f"override {override.text!r}: {override.key} takes an architecture group name "
                          f"(arch=trm); set its keys one by one (arch.hidden_size=64)")
    return override.value


def _arch_from_defaults(defaults: Any, where: str) -> tuple[Any, bool]:
    """(arch group named by a hydra defaults list or None, whether `_self_` comes before it)."""
    if defaults is None:
        return None, False
    if not isinstance(defaults, list):
        raise ConfigError(f"{where}defaults must be a list (e.g. [{{arch: trm}}, _self_]), not {defaults!r}")
    choice, arch_at, self_at = None, None, None
    for i, entry in enumerate(defaults):
        if entry == "_self_":
            self_at = i
            continue
        if isinstance(entry, dict) and len(entry) == 1:
            (name, value), = entry.items()
            # `override arch: x` and `optional arch: x` pick the group too
            if str(name).split()[-1] in GROUP_KEYS and (value is None or isinstance(value, str)):
                choice, arch_at = (_NO_GROUP if value is None else value), i
                continue
        raise ConfigError(f"{where}defaults entry {entry!r} is not supported; trm-ray composes the arch group "
                          f"(- arch: trm) and _self_ only")
    self_first = self_at is not None and arch_at is not None and self_at < arch_at
    return choice, self_first


def arch_groups(recipe_dir: Optional[Path] = None) -> list[str]:
    """Names `arch=` accepts: trm_ray/arch/*.yaml and arch/*.yaml beside the recipe."""
    folders = [ARCH_GROUP_DIR] + ([Path(recipe_dir) / "arch"] if recipe_dir is not None else [])
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.iterdir()
                   if p.suffix in (".yaml", ".yml")})


def load_arch_group(name: str, recipe_dir: Optional[Path] = None) -> dict[str, Any]:
    """The `arch:` keys of group `name`: arch/<name>.yaml beside the recipe first, then trm-ray's."""
    folders = ([Path(recipe_dir) / "arch"] if recipe_dir is not None else []) + [ARCH_GROUP_DIR]
    if _GROUP_NAME.fullmatch(name):
        for folder in folders:
            for suffix in (".yaml", ".yml"):
                path = folder / f"{name}{suffix}"
                if path.is_file():
                    data = read_yaml(path)
                    defaults = data.pop("defaults", None)
                    if defaults not in (None, [], ["_self_"]):
                        raise ConfigError(f"{path}: a defaults list inside an arch group is not supported")
                    return data
    available = ", ".join(arch_groups(recipe_dir))
    raise ConfigError(f"arch={name}: no architecture group {name!r}; available: {available} "
                      f"(or put arch/{name}.yaml beside the recipe)")


def note(message: str) -> None:
    """A one-line note on stderr, once per process."""
    if message not in _notes_printed:
        _notes_printed.add(message)
        print(f"trm-ray: {message}", file=sys.stderr)


def _has_key(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, sections merged key by key (as hydra merges configs)."""
    merged = _deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = _deepcopy(value)
    return merged


# --------------------------------------------------------------------------------------------
# Interpolations
# --------------------------------------------------------------------------------------------
def resolve_interpolations(data: dict[str, Any], source: str = "") -> dict[str, Any]:
    """Every `${oc.env:VAR}`, `${oc.env:VAR,default}` and key reference in `data` replaced by its
    value; a string that is one interpolation takes the referenced value's type."""
    return _Resolver(data, source).value(data, ())


class _Resolver:
    def __init__(self, root: dict[str, Any], source: str):
        self.root, self.source, self.active = root, source, []

    def fail(self, path: tuple, what: str) -> ConfigError:
        key = ".".join(str(p) for p in path) or "(top level)"
        return ConfigError(f"{self.source + ': ' if self.source else ''}{key}: {what}")

    def value(self, value: Any, path: tuple) -> Any:
        if isinstance(value, dict):
            return {k: self.value(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, path + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self.string(value, path)
        return value

    def string(self, text: str, path: tuple) -> Any:
        whole = _INTERPOLATION.fullmatch(text)
        if whole and not whole.group(1):
            return self.lookup(whole.group(2), path)

        def substitute(match: re.Match) -> str:
            if match.group(1):  # \${...} is a literal ${...}
                return match.group(0)[1:]
            return str(self.lookup(match.group(2), path))

        return _INTERPOLATION.sub(substitute, text)

    def lookup(self, expression: str, path: tuple) -> Any:
        expression = expression.strip()
        if "${" in expression:
            raise self.fail(path, f"nested interpolation ${{{expression}}} is not supported")
        if expression.startswith("oc.env:"):
            return self.env(expression[len("oc.env:"):], path)
        if ":" in expression or not re.fullmatch(r"\.*[A-Za-z0-9_.]+", expression):
            raise self.fail(path, f"interpolation ${{{expression}}} is not supported: write the value, or use "
                                  f"${{oc.env:VAR}}, ${{oc.env:VAR,default}} or a reference to another key "
                                  f"(${{arch.hidden_size}}, ${{.hidden_size}})")
        return self.reference(expression, path)

    def env(self, body: str, path: tuple) -> Any:
        name, has_default, default = body.partition(",")
        name = name.strip()
        if not name:
            raise self.fail(path, "${oc.env:} needs a variable name: ${oc.env:VAR} or ${oc.env:VAR,default}")
        if name in os.environ:
            return os.environ[name]
        if not has_default:
            raise self.fail(path, f"environment variable {name} is not set; set it, or give a default: "
                                  f"${{oc.env:{name},default}}")
        default = default.strip()
        if len(default) >= 2 and default[0] == default[-1] and default[0] in ("'", '"'):
            return default[1:-1]
        return None if _NULL.fullmatch(default) else default

    def reference(self, expression: str, path: tuple) -> Any:
        dots = len(expression) - len(expression.lstrip("."))
        # ${.x} is a sibling of the key that holds it, each further dot one level up
        base = path[:-1][:max(0, len(path) - dots)] if dots else ()
        target = base + tuple(expression[dots:].split("."))
        if target in self.active:
            raise self.fail(path, f"interpolation ${{{expression}}} refers to itself")
        node: Any = self.root
        for part in target:
            if not isinstance(node, dict) or part not in node:
                field = _schema_field(".".join(target))
                if field is None:
                    raise self.fail(path, f"interpolation ${{{expression}}} points at "
                                          f"{'.'.join(target)!r}, which is not set")
                return field.get_default(call_default_factory=True)
            node = node[part]
        self.active.append(target)
        try:
            return self.value(node, target)
        finally:
            self.active.pop()
