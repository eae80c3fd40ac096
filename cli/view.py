"""``npga view RUN [RUN2 ...]``: serve an interactive browser viewer (viser) of trained avatars."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import click


@click.command(name="view", context_settings={"show_default": True})
@click.argument("runs", metavar="RUN [RUN2 ...]", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1",
              help="Interface to serve on. The default is reachable from this machine only; "
                   "0.0.0.0 serves every interface (anyone on your network can then open it).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080,
              help="TCP port (0 = any free port; a busy port is skipped for the next free one). "
                   "The URL actually served is printed.")
@click.option("--fps", type=click.FloatRange(min=0.1), default=25.0,
              help="Playback rate of tracked sequences (the capture stores none; `npga render` uses 25).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where 'Save view' and 'Save expression' write [default: RUN/viewer]. Files get "
                   "time-stamped names; nothing is overwritten.")
@click.option("--max-side", type=click.IntRange(min=16), default=1024,
              help="Exact renderer: longest image side once the camera stops.")
@click.option("--device", default="cpu", help="Torch device of the avatars (cpu, cuda).")
def command(runs, host, port, fps, out, max_side, device):
    """Open trained avatars (folders written by `npga fit`) in a web browser.

    Prints a URL; open it in a browser (forward the port over ssh for a remote machine:
    ssh -L 8080:127.0.0.1:8080 HOST). Ctrl-C stops the server.

    \b
    In the viewer (drag to orbit, right-drag to pan, scroll to zoom):
      Mode          Tracked: pick a sequence, scrub or play its frames.
                    Interpolation: NPGA's pad - drag the cursor (or the u/v sliders) to blend
                    four corner expressions bilinearly; the head pose stays at a reference frame.
                    Canonical: the undeformed canonical Gaussians at the reference pose.
      View          jump to any capture camera; 'Show Gaussian centres'; renderer:
                    'Browser splats' (drawn by the browser, fast) or 'Exact' (our Taichi
                    rasterizer renders your camera on the server: exact SH colours and
                    screen-CNN avatars); save the view as PNG or the expression as a file for
                    `npga render RUN --expressions FILE`.
    Several RUNs stand side by side, driven by the first run's expressions.

    \b
    Examples:
      npga view out/run
      npga view out/run out/run_no_latents --port 0
    """
    from npga_taichi.viewer.app import Viewer

    try:
        viewer = Viewer(runs, host=host, port=port, out_dir=out, fps=fps, device=device, max_side=max_side,
                        verbose=False)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:
        raise click.ClickException(f"cannot serve on {host}:{port}: {err}") from None
    click.echo(f"npga view: serving {', '.join(str(r) for r in runs)}")
    # Ctrl-C is how the viewer stops: make SIGINT raise KeyboardInterrupt even when this process
    # inherited it ignored (a parent or a non-interactive shell's background job may ignore it,
    # and Python then keeps it ignored), so Ctrl-C and `kill -INT` always reach the loop below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    click.echo(f"open {viewer.url}  (Ctrl-C stops)", nl=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("\nstopping…")
    finally:
        viewer.close()
    click.echo("stopped")
