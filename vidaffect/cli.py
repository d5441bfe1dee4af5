"""The `vidaffect` command: a thin layer over the functions of :mod:`vidaffect.commands`.

Exit status: 0 when everything asked for succeeded, 1 when some inputs failed (the
rest were still done and the failures are listed) or vidaffect itself failed, 2 for
usage errors (:class:`vidaffect.errors.UserError`).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from vidaffect import __version__
from vidaffect.errors import SetupError, UserError
from vidaffect.io.predictions import FORMATS
from vidaffect.io.recipe import DEFAULT_RECIPE, load_recipe
from vidaffect.stages.registry import STAGE_CLASSES
from vidaffect.util.device import DEVICES
from vidaffect.util.terminal import setup_logging, show_progress

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class LazyChoice(click.Choice):
    """A choice whose values are read from the package when first needed: the network
    and loss tables import PyTorch, which ``vidaffect --help`` should not wait for."""

    def __init__(self, load: Callable[[], Iterable[str]]) -> None:
        self._load = load
        self._loaded: tuple[str, ...] | None = None
        self.case_sensitive = True

    def __getattribute__(self, name: str) -> Any:
        if name == "choices":
            if self._loaded is None:
                self._loaded = tuple(self._load())
            return self._loaded
        return super().__getattribute__(name)


def _networks() -> list[str]:
    from vidaffect.learn.networks import NETWORKS

    return list(NETWORKS)


def _audio_features() -> list[str]:
    from vidaffect.learn.networks import AUDIO_FEATURES

    return list(AUDIO_FEATURES)


def _heads() -> list[str]:
    from vidaffect.learn.heads import HEADS

    return list(HEADS)


def _losses() -> list[str]:
    from vidaffect.learn.losses import LOSSES

    return sorted(LOSSES)


DEVICE = click.Choice(DEVICES, case_sensitive=False)


class Workers(click.ParamType):
    """A number of processes (1 or more) or ``auto``."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if value == "auto" or (isinstance(value, int) and value >= 1):
            return value
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            self.fail(f"{value!r} is neither a number of processes (1 or more) nor 'auto'", param, ctx)
        return n
TRAIN_DEFAULTS = load_recipe(DEFAULT_RECIPE)["train"]  # the one place training defaults live


def recipe_default(key: str) -> str:
    return f"  [default: {TRAIN_DEFAULTS[key]}, from the {DEFAULT_RECIPE} recipe]"


class State:
    quiet = False


def handle_errors(fn: F) -> F:
    """User errors become click's usage error (one line, exit status 2), a machine that
    cannot run a stage a one-line error (exit status 1), and anything else a one-line
    internal error (exit status 1) whose traceback ``-v`` shows."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise click.UsageError(str(exc)) from None
        except SetupError as exc:
            raise click.ClickException(str(exc)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            from vidaffect.extraction.summary import failure_reason

            log.debug("vidaffect failed", exc_info=True)
            hint = "" if log.isEnabledFor(logging.DEBUG) else " (run with -v for the traceback)"
            raise click.ClickException(f"internal error: {failure_reason(exc)}{hint}") from None

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vidaffect")
@click.option("-v", "--verbose", count=True, help="Debug logging (tracebacks of failed videos included).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars; warnings and errors only.")
def main(verbose: int, quiet: bool) -> None:
    """Continuous emotion recognition (valence, arousal) from video.

    \b
    In a project folder:
      vidaffect extract ./videos                      # features -> ./features/<video-id>.h5
      vidaffect train --net full --loss noninertial   # -> ./runs/<name>/best.ckpt
      vidaffect predict ./videos --out results.csv    # per-frame valence/arousal
      vidaffect evaluate results.csv --annotations ./annotations
    """
    setup_logging(verbose, quiet)
    State.quiet = quiet


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--store", default="features", show_default=True, type=click.Path(path_type=Path), help="Folder of the per-video HDF5 feature stores.")
@click.option("--stages", help=f"Comma-separated stages to run (dependencies are added): {','.join(STAGE_CLASSES)}.  [default: the recipe's]")
@click.option("--recipe", help=f"Built-in recipe name or YAML file naming stages and parameters.  [default: {DEFAULT_RECIPE}]")
@click.option("--set", "assignments", multiple=True, metavar="STAGE.PARAM=VALUE", help="Override one stage parameter, e.g. --set face.min_detection_confidence=0.3 (repeatable; `vidaffect info --recipe NAME` lists them).")
@click.option("--encoder-weights", help="ResNet-50 weights for embed/evm: a state-dict/checkpoint PATH, 'imagenet' (downloaded once) or 'random'.")
@click.option("--save-evm-video", is_flag=True, help="Also write the magnified face video next to each store (<video-id>.evm.mp4).")
@click.option("--workers", default="auto", show_default=True, type=Workers(), help="Videos processed in parallel processes, each with cores/N threads; auto: one per core while videos and memory allow.")
@click.option("--device", default="auto", show_default=True, type=DEVICE, help="Device of the neural stages; auto = CUDA when available.")
@click.option("--shared-encoder/--no-shared-encoder", default=None, help="Workers send face crops to one encoder process that batches them.  [default: on with a GPU]")
@click.option("--executor", default="local", show_default=True, type=click.Choice(["local", "ray"]), help="local: this machine; ray: one task per video on a Ray cluster (pip install 'vidaffect[ray]'; the store folder must be shared by all nodes).")
@click.option("--ray-address", metavar="auto|HOST:PORT", help="Ray cluster to join (auto: the one `ray start` began here).  [default: a private cluster on this machine]")
@click.option("--dry-run", is_flag=True, help="Only list the videos, their frames and the stages still to run, with an estimated time; write nothing.")
@click.option("--force", is_flag=True, help="Re-run the stages even when their cached parameters match.")
@handle_errors
def extract(
    videos: tuple[Path, ...], store: Path, stages: str | None, recipe: str | None, assignments: tuple[str, ...],
    encoder_weights: str | None, save_evm_video: bool, workers: int | str, device: str, shared_encoder: bool | None,
    executor: str, ray_address: str | None, dry_run: bool, force: bool,
) -> None:  # fmt: skip
    """Extract features of VIDEOS (files or folders, searched recursively) into STORE.

    Each video gets STORE/<video-id>.h5 (video id = path relative to the folder given,
    without extension).  Finished stages are skipped, so an interrupted run resumes;
    one bad video never stops the batch.  Exit status 1 when some videos failed.
    """
    from vidaffect.commands.extract import extract as run_extract
    from vidaffect.io.recipe import parse_assignments

    params = parse_assignments(list(assignments))
    if encoder_weights:
        for stage in ("embed", "evm"):
            params.setdefault(stage, {})["weights"] = encoder_weights
    if save_evm_video:
        params.setdefault("evm", {})["save_video"] = True
    names = [s.strip() for s in stages.split(",") if s.strip()] if stages else None
    if dry_run:
        from vidaffect.commands.extract import dry_run as run_dry

        click.echo(run_dry(list(videos), store, names, recipe, params, force=force, workers=workers, device=device).report())
        return
    summary = run_extract(
        list(videos), store, names, recipe, params, force=force, workers=workers, device=device, progress=show_progress(State.quiet),
        shared_encoder=shared_encoder, executor=executor, ray_address=ray_address,
    )  # fmt: skip
    click.echo(summary.report(), err=bool(summary.failed))
    sys.exit(summary.exit_code)


@main.command()
@click.argument("target", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--recipe", help="Show a recipe's stages with every parameter (defaults filled in) and what each means.")
@handle_errors
def info(target: Path | None, recipe: str | None) -> None:
    """Show what a feature store folder, one store file or a checkpoint holds.

    \b
    vidaffect info features/          videos, stages, frame counts, valid fractions
    vidaffect info features/clip.h5   datasets, shapes, attributes
    vidaffect info runs/x/best.ckpt   network, inputs, training recipe, provenance
    vidaffect info --recipe thesis    stages and parameters of a recipe
    """
    from vidaffect.commands import info as info_mod

    if recipe:
        click.echo(info_mod.describe_recipe(recipe))
    if target is None:
        if not recipe:
            raise click.UsageError("give a store folder, a .h5 file, a checkpoint, or --recipe NAME")
        return
    click.echo(info_mod.describe(target))


@main.command()
@click.option("--net", type=LazyChoice(_networks), help="Network to train (the README's network table says what each reads)." + recipe_default("net"))
@click.option("--head", type=LazyChoice(_heads), help="Temporal head over each window; auto = the network's own (lstm for full, without-mel, audio, pose; transformer for the *-transformer nets)." + recipe_default("head"))
@click.option("--audio-features", type=LazyChoice(_audio_features), help="What the network's audio input reads: mel (log-Mel, thesis), egemaps (openSMILE eGeMAPSv02 LLDs; extract stage egemaps, pip install vidaffect[egemaps]) or both." + recipe_default("audio_features"))
@click.option("--loss", type=LazyChoice(_losses), help="Training loss." + recipe_default("loss"))
@click.option("--store", default="features", show_default=True, type=click.Path(path_type=Path), help="Feature store folder.")
@click.option("--annotations", default="annotations", show_default=True, type=click.Path(path_type=Path), help="Folder of per-video annotation files (<video-id>.txt Aff-Wild2 style, or .csv; <video-id>_left/_right for two people, from stores extracted with --set face.faces=all).")
@click.option("--val-annotations", type=click.Path(path_type=Path), help="Official validation annotations; when given, --val-split is not used.")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True), help="Fraction of videos held out for validation." + recipe_default("val_split"))
@click.option("--folds", type=click.IntRange(2), help="K-fold cross-validation by video: one run per fold and a summary.")
@click.option("--groups", type=click.Path(exists=True, path_type=Path), help="CSV video,subject: split by subject instead of by video.")
@click.option("--seq-len", type=click.IntRange(1), help="Frames per window: training windows, and the half-overlapping windows predict blends." + recipe_default("seq_len"))
@click.option("--batch-size", type=click.IntRange(1), help="Windows per batch." + recipe_default("batch_size"))
@click.option("--epochs", type=click.IntRange(1), help="Maximum epochs." + recipe_default("epochs"))
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="Learning rate." + recipe_default("lr"))
@click.option("--out", type=click.Path(path_type=Path), help="Run folder.  [default: ./runs/<net>-<loss>-<time>]")
@click.option("--recipe", help="Built-in recipe name (thesis, thesis-transformer) or YAML file; its train: and model: sections give the defaults.")
@click.option("--device", default="auto", show_default=True, type=DEVICE)
@click.option("--devices", type=click.IntRange(1), help="Processes on this node, trained data-parallel (DDP): GPUs with --device cuda, processes sharing the cores (gloo) with --device cpu; --batch-size is per process.  [default: 1 on CPU, every visible GPU on CUDA]")
@click.option("--num-nodes", default=1, show_default=True, type=click.IntRange(1), help="Machines, each running this command with --devices processes; needs MASTER_ADDR, MASTER_PORT and NODE_RANK set on each, or torchrun/srun (README: several GPUs and nodes).")
@click.option("--seed", type=int, help="Random seed; makes a CPU run repeatable.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Continue an interrupted run (its folder) from last.ckpt with its own configuration; --epochs may raise the limit.")
@click.option("--workers", type=click.IntRange(0), help="DataLoader processes reading the stores (0 = main process), per training process.  [default: 0 on CPU, 4 on GPU]")
@handle_errors
def train(**options: Any) -> None:
    """Train a network on the feature stores and annotations.

    Leaves runs/<name>/ with config.yaml, metrics.csv (every loss and CCC/PCC/RMSE/SAGR
    per epoch, train and validation), best.ckpt and last.ckpt.  With several processes
    (--devices, --num-nodes) the first one alone validates and writes them.
    """
    from vidaffect.commands.train import resume
    from vidaffect.commands.train import train as run_train
    from vidaffect.learn.loop import is_main_process

    if not is_main_process():  # a further DDP process started by the first: it reports errors only
        logging.disable(logging.WARNING)
    options = {k: v for k, v in options.items() if v is not None}
    run = options.pop("resume", None)
    if run is not None:
        kept = {"epochs", "device", "devices", "num_nodes", "workers"}
        ignored = sorted(set(options) - kept - {"store", "annotations"})
        if ignored:
            raise click.UsageError(f"--resume continues with the run's own configuration; drop {', '.join('--' + o.replace('_', '-') for o in ignored)}")
        out = resume(run, **{k: v for k, v in options.items() if k in kept}, progress=show_progress(State.quiet))
    else:
        out = run_train(**options, progress=show_progress(State.quiet))
    if is_main_process():
        click.echo(f"run saved in {out}")


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", default="results.csv", show_default=True, type=click.Path(path_type=Path), help="CSV file, or a folder with --format affwild2.")
@click.option("--format", "fmt", default="csv", show_default=True, type=click.Choice(FORMATS), help="csv: one row per frame of every video; affwild2: one ABAW submission file per video.")
@click.option("--model", type=click.Path(exists=True, path_type=Path), help="Checkpoint.  [default: newest ./runs/*/best.ckpt]")
@click.option("--store", default="features", show_default=True, type=click.Path(path_type=Path), help="Feature store folder (missing features are extracted into it).")
@click.option("--encoder-weights", help="Encoder weights for features not yet extracted (PATH, imagenet or random).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), help="Parallel extraction processes.")
@click.option("--device", default="auto", show_default=True, type=DEVICE)
@handle_errors
def predict(
    videos: tuple[Path, ...], out: Path, fmt: str, model: Path | None, store: Path, encoder_weights: str | None, workers: int, device: str
) -> None:
    """Per-frame valence and arousal for VIDEOS (files or folders).

    Extracts whatever features the model needs that are not cached yet, then writes
    one row per frame: video, frame, timestamp, valence, arousal, face.
    """
    from vidaffect.commands.predict import predict as run_predict

    summary = run_predict(
        list(videos), out=out, fmt=fmt, model=model, store=store, encoder_weights=encoder_weights,
        workers=workers, device=device, progress=show_progress(State.quiet),
    )  # fmt: skip
    click.echo(summary.report(), err=bool(summary.failed))
    sys.exit(summary.exit_code)


@main.command()
@click.argument("predictions", type=click.Path(exists=True, path_type=Path))
@click.option("--annotations", default="annotations", show_default=True, type=click.Path(exists=True, path_type=Path), help="Annotation folder.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the metrics as JSON.")
@handle_errors
def evaluate(predictions: Path, annotations: Path, json_out: Path | None) -> None:
    """CCC, PCC, RMSE, MSE and SAGR of PREDICTIONS (a predict CSV) against annotations:
    pooled over all annotated frames (ABAW) and averaged per video, plus the ABAW score."""
    from vidaffect.commands.evaluate import evaluate as run_evaluate

    click.echo(run_evaluate(predictions, annotations, json_out=json_out))


@main.command()
@click.argument("predictions", type=click.Path(exists=True, path_type=Path))
@click.option("--annotations", type=click.Path(exists=True, path_type=Path), help="Draw the annotations too.")
@click.option("--out", default="plots", show_default=True, type=click.Path(path_type=Path), help="Folder for the PNG files.")
@handle_errors
def plot(predictions: Path, annotations: Path | None, out: Path) -> None:
    """Per video: valence and arousal over time, and the valence-arousal plane (PNG)."""
    from vidaffect.commands.plot import plot as run_plot

    paths = run_plot(predictions, annotations=annotations, out=out)
    click.echo(f"wrote {len(paths)} figure(s) to {out}")


@main.command()
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(["csv", "parquet", "openface"]), help="csv or parquet: vidaffect's table (every value of the stages, named columns); openface: OpenFace 2 FeatureExtraction CSV.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for <video-id>.csv / .parquet.")
@click.option("--stages", help="Comma-separated stages to export.  [default: every stage of the store; openface: face,head,gaze]")
@click.option("--openface-style", default="2.2", show_default=True, type=click.Choice(["2.2", "2.0"]), help="2.0: fields separated by ', ' as OpenFace 2.0 wrote them.")
@handle_errors
def export(target: Path, fmt: str, out: Path, stages: str | None, openface_style: str) -> None:
    """Per-frame tables of TARGET (a store folder or one .h5 store): one file per video.

    Rows are frames; columns are named as the README's table lists (OpenFace's names
    with --format openface, which vidaffect's own OpenFace import reads back).
    Exit status 1 when some stores failed.
    """
    from vidaffect.commands.export import export as run_export

    names = [s.strip() for s in stages.split(",") if s.strip()] if stages else None
    summary = run_export(target, fmt, out, names, openface_style, progress=show_progress(State.quiet))
    click.echo(summary.report(), err=bool(summary.failed))
    sys.exit(summary.exit_code)


@main.command()
@click.argument("video", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The video to write (.mp4).")
@click.option("--store", default="features", show_default=True, type=click.Path(path_type=Path), help="Feature store folder holding VIDEO's store.")
@click.option("--predictions", type=click.Path(exists=True, path_type=Path), help="A `vidaffect predict` CSV: adds a valence/arousal trace and the circumplex under the frame.")
@click.option("--draw", help="Layers to draw: face (box, 70 landmarks), pose (COCO-18 skeleton), head (axes), gaze (rays); each needs its stage in the store.  [default: every layer the store has]")
@handle_errors
def render(video: Path, out: Path, store: Path, predictions: Path | None, draw: str | None) -> None:
    """Write VIDEO with what vidaffect found drawn on every frame, and its audio.

    Frames without a face say so.  Same frames, timestamps and audio as VIDEO.
    """
    from vidaffect.commands.render import render as run_render

    layers = tuple(s.strip() for s in draw.split(",") if s.strip()) if draw else None
    click.echo(f"wrote {run_render(video, out, store, predictions, layers, progress=show_progress(State.quiet))}")


@main.command()
@click.option("--quick", is_flag=True, help="Small media, about two minutes on 2 CPU cores.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the figures as JSON.")
@click.option("--device", default="auto", show_default=True, type=DEVICE)
@click.option("--accuracy", is_flag=True, help="Measure face accuracy instead: steadiness, jitter, identities on made clips.")
@click.option(
    "--faces", type=click.Path(path_type=Path), help="With --accuracy (implied): also the landmark error on the "
    "68-point annotated faces in this folder (iBUG .pts files beside the images).",
)  # fmt: skip
@handle_errors
def bench(quick: bool, json_out: Path | None, device: str, accuracy: bool, faces: Path | None) -> None:
    """Measure throughput and memory of every stage, training and prediction on this
    machine, on media it makes itself, and compare them with their targets; or, with
    --accuracy, the face stage's accuracy."""
    if accuracy or faces is not None:
        from vidaffect.bench.face_accuracy import bench_faces

        click.echo(bench_faces(faces, json_out=json_out))
        return
    from vidaffect.bench.run import bench as run_bench

    click.echo(run_bench(quick=quick, json_out=json_out, device=device, progress=show_progress(State.quiet)))
