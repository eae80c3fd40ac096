"""Click options generated from configuration dataclasses.

Each field of a config dataclass becomes ``--field-name`` with the field's comment as its help
(:func:`npga_taichi.config_io.field_help`) and the preset's value as its default; booleans that
switch a part on (``use_x = True``) become the ablation flag ``--no-x``, those off by default
``--x``. Options left alone arrive as None, so the preset decides.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from npga_taichi.config_io import field_help


def _flag_name(name: str, default: bool) -> str:
    base = name[4:] if name.startswith("use_") else name
    return ("--no-" if default else "--") + base.replace("_", "-")


class CommaTuple(click.ParamType):
    """A comma-separated list -> tuple of str."""

    name = "a,b,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        return tuple(v.strip() for v in str(value).split(",") if v.strip())


def config_options(cls: type, exclude: Iterable[str] = (), aliases: dict[str, list[str]] | None = None,
                   dest_prefix: str = "", defaults: dict[str, Any] | None = None) -> Callable:
    """A decorator adding one click option per field of dataclass ``cls`` (see module docstring).

    The option's destination is ``dest_prefix + field``; read them back with :func:`collect`.
    ``aliases`` adds extra option names for a field (kept for existing command lines).
    ``defaults``: the values the help shows where they differ from the dataclass's (the default
    preset's overrides).
    """
    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    aliases = aliases or {}
    defaults = defaults or {}
    decorators = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        default = defaults.get(f.name, default)
        help_ = helps.get(f.name, "") + (f" [default: {default}]" if not isinstance(default, bool) else "")
        dest = dest_prefix + f.name
        hint = hints[f.name]
        if hint is bool:
            names = [_flag_name(f.name, bool(default)), *aliases.get(f.name, [])]
            decorators.append(click.option(*names, dest, is_flag=True, flag_value=not default, default=None,
                                           help=helps.get(f.name, "")))
            continue
        names = ["--" + f.name.replace("_", "-"), *aliases.get(f.name, [])]
        origin = typing.get_origin(hint)
        if origin is tuple and typing.get_args(hint)[-1] is Ellipsis:
            kwargs: dict[str, Any] = {"type": CommaTuple()}
        elif origin is tuple:
            kwargs = {"type": typing.get_args(hint)[0], "nargs": len(typing.get_args(hint))}
        else:
            kwargs = {"type": hint}
        decorators.append(click.option(*names, dest, default=None, help=help_, **kwargs))

    def apply(func: Callable) -> Callable:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def collect(cls: type, params: dict[str, Any], dest_prefix: str = "") -> dict[str, Any]:
    """The overrides the user gave: ``{field: value}`` for every option of ``cls`` that is not None
    (popped from ``params``)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = params.pop(dest_prefix + f.name, None)
        if value is not None:
            out[f.name] = value
    return out


def run_and_report(call: Callable[[], dict], as_json: bool) -> dict:
    """``npga render`` / ``npga drive``: run ``call`` (a library function returning a summary with
    ``outputs``), turn its OptionError / ValueError / FileNotFoundError / FileExistsError into
    click errors naming the option or file, then print the summary as JSON or one output per line."""
    import json

    from npga_taichi.render_run import OptionError

    try:
        info = call()
    except OptionError as err:
        if err.option:
            raise click.BadParameter(err.message, param_hint=err.option) from None
        raise click.UsageError(err.message) from None
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(info))
    else:
        for kind, path in info["outputs"].items():
            click.echo(f"{kind}: {path}")
    return info


def prior_option(func: Callable) -> Callable:
    """``--prior PRIOR`` (destination ``prior_dir``), defaulting to the prior shipped with the
    package (:mod:`npga_taichi.prior.pretrained`, what ``npga prior pretrained`` copies)."""
    from npga_taichi.prior.pretrained import SHIPPED_PRIOR

    return click.option(
        "--prior", "prior_dir", type=click.Path(exists=True, path_type=Path), default=SHIPPED_PRIOR,
        show_default=False,
        help="Prior directory from `npga prior fit` / `npga prior pretrained` / `npga prior import` "
             "[default: the prior shipped with npga-taichi].")(func)
