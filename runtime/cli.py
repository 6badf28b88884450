"""The ``gsv`` command line: one small function per verb; heavy modules load inside the verb."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from gsv_runtime.errors import GsvError

_VERSIONS = ["v1", "v2", "v2Pro", "v2ProPlus"]


class _Group(click.Group):
    """Turns every GsvError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except GsvError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except ImportError as exc:
            click.echo(f"error: {exc} (install the extra that provides it)", err=True)
            ctx.exit(1)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Verbose logging.")
def main(debug: bool) -> None:
    """gsv-rt: export GPT-SoVITS voices and run them without torch."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)


@main.command("make-checkpoint")
@click.argument("version", type=click.Choice(_VERSIONS, case_sensitive=False))
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder to write gpt.ckpt, sovits.pth (and sv.ckpt for Pro versions) into.",
)
@click.option("--size", type=click.Choice(["tiny", "full"]), default="full", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fp32", is_flag=True, help="Store fp32 weights (upstream fine-tunes store fp16).")
def make_checkpoint_cmd(version: str, out_dir: Path, size: str, seed: int, fp32: bool) -> None:
    """Write random-weight checkpoints in upstream's exact file formats (for tests and demos)."""
    from gsv_models.testing import make_voice_checkpoints
    from gsv_models.version import ModelVersion

    paths = make_voice_checkpoints(
        ModelVersion.parse(version), out_dir, size=size, seed=seed, half=not fp32
    )
    for path in paths:
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@main.command("inspect")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--forward/--no-forward",
    default=True,
    show_default=True,
    help="Also run a PyTorch forward pass of each model.",
)
def inspect_cmd(checkpoints: tuple[Path, ...], forward: bool) -> None:
    """Load upstream checkpoints, report kind, version and parameters, and run a forward."""
    from gsv_models.inspect import describe

    for path in checkpoints:
        for line in describe(path, forward=forward):
            click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
