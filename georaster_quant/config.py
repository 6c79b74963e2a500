"""YAML configuration files for the CLI, validated with pydantic.

A config file is versioned and holds either one flat mapping of option names or one section
per command (``synth:``, ``train:``, ``evaluate:`` ...), so a single file can drive a whole
pipeline. The allowed keys and their types come from the command's own options, so there is
one place where an option is defined; flags on the command line win over the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import click
import yaml
from pydantic import ConfigDict, ValidationError, create_model

from georaster_quant.errors import ConfigError

CONFIG_VERSION = 1


def _python_type(param: click.Parameter) -> Any:
    ptype = param.type
    if isinstance(ptype, click.Choice):
        base: Any = Literal[tuple(ptype.choices)]  # type: ignore[misc]
    elif isinstance(ptype, click.types.IntParamType):
        base = int
    elif isinstance(ptype, click.types.FloatParamType):
        base = float
    elif isinstance(ptype, click.types.BoolParamType) or getattr(param, "is_flag", False):
        base = bool
    else:
        base = str
    if getattr(param, "multiple", False) or (param.nargs != 1 and param.nargs != 0):
        return list[base] | None
    return base | None


def section_model(command: click.Command) -> type:
    """A pydantic model accepting exactly the command's options (``config`` excluded)."""
    fields = {
        p.name: (_python_type(p), None)
        for p in command.params
        if p.name and p.name != "config" and isinstance(p, click.Option | click.Argument)
    }
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{command.name}_config", __config__=ConfigDict(extra="forbid"), **fields
    )


def _by_parameter(
    command: click.Command, section: dict[str, Any], where: str, name: str
) -> dict[str, Any]:
    """Keys as the command's parameter names, values in the form its options take.

    A key may be the option's flag name (``image`` for ``--image``, ``json`` for ``--json``)
    or its parameter name (``images``, ``json_path``); a single value of a repeatable option
    becomes a list, a list for a comma-separated option (``bands: [3, 2, 1, 4]``) its text,
    and a yes/no is refused where a number is wanted (YAML reads ``true`` as a boolean).
    """
    params = {p.name: p for p in command.params if p.name}
    names = {n: n for n in params}
    for param in params.values():
        names.update(
            {o.lstrip("-").replace("-", "_"): param.name for o in param.opts if o[:2] == "--"}
        )
    out: dict[str, Any] = {}
    for key, value in section.items():
        pname = names.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        param = params.get(pname)
        if param is not None and value is not None:
            many = getattr(param, "multiple", False)
            if many and not isinstance(value, list):
                value = [value]
            elif not many and isinstance(value, list):
                value = ",".join(map(str, value))
            numeric = (click.types.IntParamType, click.types.FloatParamType)
            if isinstance(param.type, numeric) and isinstance(value, bool):
                raise ConfigError(f"{where}option {key!r} for {name}: a number, not {value}")
        if pname in out:
            raise ConfigError(f"{where}option {key!r} for {name} is given twice")
        out[pname] = value
    return out


def load_config(path: str | os.PathLike[str], command: click.Command) -> dict[str, Any]:
    """Read ``path`` and return the validated options for ``command``."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{p}: not a readable YAML file ({first})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of options, got {type(raw).__name__}")
    version = raw.pop("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(
            f"{p}: config version {version!r} is not supported (use {CONFIG_VERSION})"
        )
    name = command.name or ""
    commands = {"synth", "train", "quantize", "export", "predict", "evaluate", "info", "demo"}
    if set(raw) & commands:
        section = raw.get(name) or {}
    else:
        section = raw
    if not isinstance(section, dict):
        raise ConfigError(f"{p}: section {name!r} must be a mapping of options")
    section = _by_parameter(command, section, f"{p}: ", name)
    try:
        validated = section_model(command).model_validate(section)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{p}: unknown option {key!r} for {name}") from None
        raise ConfigError(f"{p}: option {key!r} for {name}: {err['msg']}") from None
    values = {k: v for k, v in validated.model_dump().items() if k in section}
    # The option's own checks (ranges, callbacks) too, so that their errors name this file.
    params = {param.name: param for param in command.params}
    ctx = click.Context(command)
    for key, value in values.items():
        if value is not None:
            try:
                params[key].process_value(ctx, value)
            except click.BadParameter as exc:
                raise ConfigError(f"{p}: option {key!r} for {name}: {exc.message}") from None
    return values
