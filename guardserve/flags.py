"""The one flag helper of every `guardserve` subcommand: settings fields as flags, one help style.

Every help text ends with its default written one way, `(default: X)`. A flag that mirrors a
field of a settings model (pydantic) takes its name, type, choices and help from the field, and
leaves the default to the model: the field is absent from the parsed arguments unless given, so
the model's own default applies. A None default means something ("the embedded model", "torch's
thread count"); its help says what, after "; None: " (the model's description, or the help text
of a plain flag), and that text becomes the default shown.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import types
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel

SettingsT = TypeVar("SettingsT", bound=BaseModel)
_NONE_MEANS = "; None: "


def shown(value: object) -> str:
    """A default as the help writes it: as typed on the command line, booleans as on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return " ".join(shown(item) for item in value)
    return str(value)


def help_text(text: str, default: object) -> str:
    """`text (default: X)`; for a None default, X is what `text` says after "; None: "."""
    if default is None:
        what, found, means = text.partition(_NONE_MEANS)
        if not found:
            raise ValueError(f"a None default needs '{_NONE_MEANS.strip()}' in its help: {text!r}")
        return f"{what.rstrip('.')} (default: {means.rstrip('.')})"
    return f"{text.rstrip('.')} (default: {shown(default)})"


def add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *names: str,
    help: str,
    default: object = None,
    required: bool = False,
    **options: Any,
) -> None:
    """A flag that holds its own default (not a settings field); a required one says so."""
    if required:
        parser.add_argument(*names, required=True, help=f"{help.rstrip('.')} (required)", **options)
        return
    action = parser.add_argument(*names, default=default, **options)
    # Set afterwards: argparse's BooleanOptionalAction appends a default of its own to the help.
    action.help = help_text(help, default)


def _field_options(annotation: object) -> dict[str, Any]:
    """argparse's type, choices or nargs for a field's annotation (None stripped off)."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [arg for arg in get_args(annotation) if arg is not type(None)]
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(annotation) is Literal:
        return {"choices": list(get_args(annotation))}
    if get_origin(annotation) is list:
        return {"nargs": "+"}
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return {"choices": [member.value for member in annotation]}
    if annotation in (int, float, Path):
        return {"type": annotation}
    return {}


def add_field_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type[BaseModel],
    field: str,
    **options: Any,
) -> None:
    """`--field-name` for one field of `settings`; `options` add to or override what the field
    says (a metavar, say)."""
    info = settings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    parser.add_argument(
        "--" + field.replace("_", "-"),
        dest=field,
        default=argparse.SUPPRESS,
        help=help_text(str(info.description), default),
        **{**_field_options(info.annotation), **options},
    )


def add_field_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type[BaseModel],
    fields: Iterable[str],
    metavars: Mapping[str, str] | None = None,
) -> None:
    """`add_field_flag` for each of `fields`, in that order, with the metavars named."""
    for field in fields:
        named = (metavars or {}).get(field)
        add_field_flag(parser, settings, field, **({"metavar": named} if named else {}))


def settings_of(settings: type[SettingsT], args: argparse.Namespace, **given: Any) -> SettingsT:
    """`settings` from the parsed flags of its fields (the rest keep the model's defaults);
    `given` sets fields the flags do not."""
    values = {name: value for name, value in vars(args).items() if name in settings.model_fields}
    return settings(**{**values, **given})


def training_settings(settings: type[SettingsT], args: argparse.Namespace) -> SettingsT:
    """`settings_of` for a BALTO or HALT run, where ``--model default`` names the base model
    (the model field's None)."""
    if getattr(args, "model", None) == "default":
        return settings_of(settings, args, model=None)
    return settings_of(settings, args)


def command_line() -> str:
    """The command that is running, for a run's summary."""
    return shlex.join(["guardserve", *sys.argv[1:]])
