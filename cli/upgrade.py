"""``npga upgrade FILE --trust``: convert an npga-taichi 0.1 avatar checkpoint to the safe form."""
from __future__ import annotations

from pathlib import Path

import click


@click.command(name="upgrade")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--trust", is_flag=True,
              help="Confirm the files are your own: reading an old checkpoint unpickles it, which can run code.")
def command(paths, trust):
    """Rewrite old avatar checkpoints (a RUN folder's checkpoints/*.pt, or files) so that they
    load without unpickling Python objects.

    \b
    npga-taichi 0.1 pickled the whole avatar module; current versions refuse such files
    because unpickling a stranger's file can run arbitrary code. Upgrade only checkpoints you
    trained yourself:
      npga upgrade runs/me --trust
    """
    from npga_taichi.avatar.trainer import upgrade_legacy_checkpoint

    files = []
    for path in paths:
        files += sorted((path / "checkpoints").glob("*.pt")) if path.is_dir() else [path]
    if not files:
        raise click.ClickException(f"no checkpoints found in {', '.join(map(str, paths))}")
    for file in files:
        try:
            upgrade_legacy_checkpoint(file, trust=trust)
        except ValueError as err:
            raise click.ClickException(str(err)) from None
        click.echo(f"upgraded {file}")
