"""The ``npga`` entry point: a click group whose subcommands are imported only when used.

Each command lives in its own module ``npga_taichi.cli.<module>`` exposing a click command (or
group) named ``command``. Importing lazily keeps ``npga --help`` fast: torch and Taichi load
only for the command that needs them.
"""
from __future__ import annotations

import importlib

import click

# command name -> (module under npga_taichi.cli, one-line help shown by `npga --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "Generate a synthetic multi-view head capture (NeRSemble layout)."),
    "prior": ("prior", "Train or import the MonoNPHM head prior."),
    "track": ("track", "Track expression codes and head pose per frame (point clouds or, --photometric, images)."),
    "track-video": ("track_video", "Track expression codes and head pose of a monocular video (photometric)."),
    "distill": ("distill", "Distill the forward deformation field F from the prior's backward field."),
    "fit": ("fit", "Train an NPGA avatar on a multi-view capture."),
    "render": ("render", "Render a trained avatar: re-enactment, orbits, expression interpolation."),
    "eval": ("evaluate", "Measure PSNR / SSIM (/ LPIPS) of an avatar on held-out data."),
    "export": ("export", "Export deformed Gaussians per frame to HDF5 and/or 3DGS PLY files."),
    "compare": ("compare", "Compare our Taichi rasterizer against a reference rasterizer."),
    "demo": ("demo", "Run the whole pipeline on the embedded synthetic capture."),
    "upgrade": ("upgrade", "Convert old (pickled) avatar checkpoints you made to the safe format."),
    "view": ("view", "Interactive browser viewer: orbit, scrub, drag the expression pad."),
    "drive": ("drive", "Drive an avatar with codes and head poses tracked from a (monocular) video."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, _ = COMMANDS[name]
        return importlib.import_module(f"npga_taichi.cli.{module_name}").command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Use the static one-liners so `npga --help` does not import every command.
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="npga-taichi")
def cli() -> None:
    """npga-taichi: Neural Parametric Gaussian Avatars with a Taichi rasterizer.

    \b
    Pipeline:  synth -> prior fit -> track -> distill -> fit -> render / eval / export
    One command runs it all on the embedded synthetic capture:  npga demo OUT
    Check the rasterizer against a reference:                   npga compare
    """


if __name__ == "__main__":
    cli()
