"""The body of ``gsv bench``: options → assets, points and settings → run → report."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from gsv_bench import preset_points, run_benchmark, total_units
from gsv_bench.assets import Assets, bundle_assets, random_assets
from gsv_bench.report import load_records, write_report
from gsv_bench.scenarios import (
    ENGINES,
    PRESETS,
    BenchPoint,
    Settings,
    Sweep,
    builtin_texts,
    expand,
    read_texts,
    resolve_threads,
)
from gsv_runtime.errors import InputError

SWEEP_OPTIONS = (
    "engines",
    "devices",
    "precisions",
    "threads",
    "batch",
    "concurrency",
    "sample_steps",
)


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _ints(value: str | None, name: str) -> tuple[int, ...] | None:
    items = _csv(value)
    if items is None:
        return None
    try:
        return tuple(int(v) for v in items)
    except ValueError:
        raise InputError(f"--{name} takes comma-separated integers, got {value!r}") from None


def _default_engines() -> tuple[str, ...]:
    import importlib.util

    return tuple(e for e in ENGINES if importlib.util.find_spec(e) is not None)


def _points(opts: dict[str, Any]) -> tuple[list[BenchPoint], Settings]:
    """The preset's points, or one sweep from the options (unset dimensions: defaults)."""
    cores = os.cpu_count() or 1
    name = "quick" if opts["quick"] else opts["preset"]
    if name is not None:
        points, settings = preset_points(name, cores)
    else:
        points, settings = [], Settings(fixed_length=50 if opts["random"] else None)
    if name is None or any(opts.get(k) is not None for k in SWEEP_OPTIONS):
        sweep = Sweep(
            engines=_csv(opts["engines"]) or _default_engines(),
            devices=_csv(opts["devices"]) or ("cpu",),
            precisions=_csv(opts["precisions"]) or ("fp32",),
            threads=_ints(opts["threads"], "threads") or (0,),
            batches=_ints(opts["batch"], "batch") or (1,),
            concurrency=_ints(opts["concurrency"], "concurrency") or (1,),
            sample_steps=_ints(opts.get("sample_steps"), "sample-steps") or (None,),
        )
        points = expand(resolve_threads([sweep], cores))
    return points, settings


def _settings(opts: dict[str, Any], base: Settings, preset: str | None) -> Settings:
    langs = _csv(opts["langs"])
    sentences = opts["sentences"]
    if preset is not None:
        p = PRESETS[preset]
        langs = langs or p.langs
        sentences = sentences if sentences is not None else p.sentences
    if opts["text_file"] is not None:
        texts = read_texts(opts["text_file"], (langs or ("en",))[0])
    else:
        texts = builtin_texts(langs or ("en",), sentences)
    changes: dict[str, Any] = {"texts": tuple(texts)}
    for key in ("warmup", "repeats", "fixed_length", "seed", "isolate"):
        if opts[key] is not None:
            changes[key] = opts[key]
    if opts["reference"] is not None:
        changes["measure_reference"] = opts["reference"]
    return replace(base, **changes)


def _assets(opts: dict[str, Any], points: list[BenchPoint], settings: Settings) -> Assets:
    echo = click.echo
    if opts["random"]:
        if opts["bundle"]:
            raise InputError("give --bundle or --random, not both")
        precisions = sorted({p.precision for p in points if p.engine != "torch"})
        with_bert = any(t.needs_bert for t in settings.texts)
        return random_assets(opts["random"], opts["cache_dir"], precisions, with_bert, echo)
    if not opts["bundle"]:
        raise InputError("give a voice bundle (--bundle DIR) or --random VERSION")
    return bundle_assets(
        opts["bundle"],
        voice=opts["voice"],
        ref_wav=opts["ref"],
        prompt_text=opts["prompt_text"] or "",
        prompt_lang=opts["prompt_lang"],
        support=opts["support"],
        gpt=opts["gpt"],
        sovits=opts["sovits"],
        vocoder=opts.get("vocoder"),
        cache_dir=opts["cache_dir"],
        progress=echo,
    )


def run_cli(opts: dict[str, Any]) -> None:
    """Run ``gsv bench`` with the parsed click options (see runtime/cli.py)."""
    start = time.perf_counter()
    preset = "quick" if opts["quick"] else opts["preset"]
    points, base = _points(opts)
    settings = _settings(opts, base, preset)
    if preset == "quick" and opts["isolate"] is None:
        settings = replace(settings, isolate=False)  # one process: saves the imports per point
    if not points:
        raise InputError("nothing to measure: the sweep options select no supported point")
    if opts["charts"]:
        from gsv_bench.charts import require_matplotlib

        require_matplotlib()
    assets = _assets(opts, points, settings)
    click.echo(
        f"measuring {len(points)} configuration(s) × ({settings.warmup} warm-up + "
        f"{settings.repeats} timed passes over {len(settings.texts)} text(s))"
    )
    with click.progressbar(
        length=total_units(points, settings),
        label="gsv bench",
        file=sys.stderr,
    ) as bar:
        result = run_benchmark(
            assets,
            points,
            settings,
            opts["out"],
            label=opts["label"],
            fresh=opts["fresh"],
            charts=opts["charts"],
            progress=_progress(bar),
            echo=lambda line: click.echo("\n" + line, err=True),
        )
    for path in result.files:
        click.echo(f"wrote {path}")
    click.echo(f"done in {time.perf_counter() - start:.0f} s")


def _progress(bar: Any) -> Callable[[int, str], None]:
    def update(n: int, label: str) -> None:
        bar.label = f"gsv bench {label}"
        if n:
            bar.update(n)

    return update


def report_cli(files: tuple[Path, ...], out: Path, charts: bool) -> None:
    """``gsv bench report``: merge result files into one report."""
    records = load_records(files)
    for path in write_report(records, out, charts=charts):
        click.echo(f"wrote {path}")
