"""The ``edvae`` command line.

Every user mistake ends in one line on stderr and exit code 2 (``--debug`` shows the
traceback); a training run that cannot go on ends with exit code 1 and keeps its last good
checkpoint; a run stopped by Ctrl-C or SIGTERM saves a checkpoint and says how to resume.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, overload

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from edvae.errors import EdvaeError, TrainingError

__all__ = ["app", "main"]


class _OneLineUsageErrors(TyperGroup):
    """The ``edvae`` command group: the option parser's own errors (a value out of range, an
    unknown option or command, a missing argument) are one line on stderr with exit code 2, like
    every other user mistake, instead of a usage block."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if {"--help", "-h"} & set(sys.argv[1:] if args is None else args):
            self._name_the_choices()
        try:
            result = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except typer.TyperException as err:  # the parser's ClickException family
            context = getattr(err, "ctx", None)
            if type(err).__name__ == "NoArgsIsHelpError" and context is not None:
                typer.echo(context.get_help())
                code = 0
            else:
                command = context.command_path if context is not None else "edvae"
                message = " ".join(err.format_message().split()).rstrip(".")
                typer.echo(f"error: {message[0].lower() + message[1:]}; see '{command} --help'", err=True)
                code = getattr(err, "exit_code", 2)
            if not standalone_mode:
                raise
            sys.exit(code)
        if standalone_mode:
            sys.exit(result if isinstance(result, int) else 0)
        return result

    def _name_the_choices(self) -> None:
        """Append the registered names to the help of the options that take one (the
        registries import torch, so only when help is asked for)."""
        from edvae.experiments import STUDIES
        from edvae.priors import names as prior_names

        choices = {"prior": f"Priors: {', '.join(prior_names())}.", "study": f"Studies: {', '.join(STUDIES)}."}
        for command in self.commands.values():
            for param in command.params:
                if not isinstance(param, (TyperArgument, TyperOption)):
                    continue
                extra = choices.get(param.name or "")
                if extra and extra not in (param.help or ""):
                    param.help = f"{param.help} {extra}"


app = typer.Typer(
    cls=_OneLineUsageErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # -h works as --help on every command
    help="Entropy-Decomposed VAEs: train, evaluate and compare VAEs term by term.",
)

_STATE = {"debug": False}
_SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line messages with the documented exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (EdvaeError, TrainingError) as err:
            if _STATE["debug"]:
                raise
            typer.echo("error: " + " ".join(str(err).splitlines()), err=True)  # always one line
            raise typer.Exit(2 if isinstance(err, EdvaeError) else 1) from None
        except (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as err:
            if _STATE["debug"]:
                raise
            where = f": {err.filename}" if err.filename else ""
            typer.echo(f"error: {err.strerror or err}{where}; check the path", err=True)
            raise typer.Exit(2) from None
        except Exception as err:  # a pydantic ValidationError that escaped validate_config
            from pydantic import ValidationError

            if _STATE["debug"] or not isinstance(err, ValidationError):
                raise
            from edvae.config import format_validation_error

            typer.echo(f"error: {format_validation_error(err, 'config')}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _print_version(value: bool) -> None:
    if value:
        from edvae import __version__

        typer.echo(f"edvae {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _STATE["debug"] = debug


@overload
def _folder(value: str, option: str) -> Path: ...
@overload
def _folder(value: None, option: str) -> None: ...
@overload
def _folder(value: str | None, option: str) -> Path | None: ...
def _folder(value: str | None, option: str) -> Path | None:
    """A folder given on the command line; an empty string (which a Path would silently read
    as the current folder) is refused."""
    if value is None:
        return None
    if not value.strip():
        raise EdvaeError(f"{option} must be a non-empty path; to use the current folder write {option} .")
    return Path(value)


_ACCELERATOR_HELP = "cpu, gpu or auto: the GPU only for networks big enough to gain from it (docs/gpu.md)."


def _accelerator(value: str | None) -> str | None:
    """An ``--accelerator`` value, checked at once: one of cpu, gpu, auto, and a GPU must exist for gpu."""
    if value is not None:
        from edvae.accelerator import choose_accelerator

        choose_accelerator(value, 0, setting="--accelerator")
    return value


def _raw_config(config: Path | None, overrides: list[str], prior: str | None, data: Path | None) -> dict[str, Any]:
    from edvae.config import apply_overrides, load_config

    raw = load_config(config) if config is not None else {}
    extra = list(overrides)
    if prior is not None:
        extra.append(f"model.prior={json.dumps(prior)}")
    if data is not None:
        extra += ['data.name="file"', f"data.path={json.dumps(str(data))}"]
    return apply_overrides(raw, extra)


@app.command()
@_friendly
def train(
    config: Annotated[
        Path | None, typer.Argument(help="TOML run config (see configs/); optional with --resume.")
    ] = None,
    out: Annotated[str | None, typer.Option("--out", help="Run folder for checkpoint and logs.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: --set train.epochs=10 (repeatable).")
    ] = None,
    prior: Annotated[
        str | None, typer.Option("--prior", help="Prior name, 'true', or samples:PATH (.npy/.pt/.csv).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Train on your own data file (.npy/.npz/.csv/idx).")
    ] = None,
    resume_dir: Annotated[
        str | None, typer.Option("--resume", help="Continue the run in this folder from its checkpoint.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out.")] = False,
    devices: Annotated[int | None, typer.Option("--devices", min=1, help="Processes (CPU) or GPUs per node.")] = None,
    num_nodes: Annotated[int | None, typer.Option("--num-nodes", min=1, help="Number of machines.")] = None,
    accelerator: Annotated[
        str | None, typer.Option("--accelerator", help=f"Where to train (train.accelerator): {_ACCELERATOR_HELP}")
    ] = None,
) -> None:
    """Train one model (traditional VAE or ED-VAE) and write its checkpoint and logs.

    --resume RUN continues a run; --set may change the settings that keep its footing:
    train.epochs, train.lr (the optimiser's rate changes at once), train.grad_clip,
    train.on_nonfinite, train.log_every, train.checkpoint_every, train.checkpoint_seconds (and
    where it runs: --devices, --num-nodes, train.accelerator, train.threads, train.progress).
    Each change is recorded with its step under "changes" in the checkpoint and config.json.
    Settings that would change what the run is (train.batch_size, seed, lr_schedule,
    grad_accum_steps, data, model, objective) are refused: start a new run instead.

    --overwrite replaces the run in --out only once the new run has its first checkpoint (it is
    written into .NAME.new beside it until then): a new run that fails to start leaves the old
    one as it was. One process at a time writes a run folder: a second one is refused, naming
    the pid of the first."""
    from edvae.config import RunConfig, validate_config

    out_dir, resume = _folder(out, "--out"), _folder(resume_dir, "--resume")
    overrides = list(set_ or [])
    if _accelerator(accelerator) is not None:
        overrides.append(f"train.accelerator={json.dumps(accelerator)}")
    if devices is not None:
        overrides.append(f"train.devices={devices}")
    if num_nodes is not None:
        overrides.append(f"train.num_nodes={num_nodes}")
    if resume is not None:
        if out_dir is not None and out_dir.resolve() != resume.resolve():
            raise EdvaeError("--resume continues in its own folder; drop --out or give the same folder")
        if config is not None or prior is not None or data is not None:
            raise EdvaeError("--resume takes the config stored in the checkpoint; pass only --set train.* overrides")
        if any(not o.startswith("train.") for o in overrides):
            raise EdvaeError(
                "on --resume only train.* settings may change (e.g. --set train.epochs=100 or train.lr=0.0005); "
                "see 'edvae train --help'"
            )
        from edvae.checkpoint import load_checkpoint
        from edvae.training.run_dir import check_resumable

        if resume.is_dir():
            check_resumable(resume)
        stored = load_checkpoint(resume)["config"]
        from edvae.config import apply_overrides

        cfg: RunConfig = validate_config(apply_overrides(stored, overrides), source=str(resume))
        run_dir = resume
    else:
        if out_dir is None:
            raise EdvaeError("missing --out DIR: the folder where the run's checkpoint and logs go")
        if config is None and prior is None and data is None and not overrides:
            raise EdvaeError("give a CONFIG file (e.g. configs/edvae-complex.toml) or --set overrides")
        cfg = validate_config(_raw_config(config, overrides, prior, data), source=str(config or "--set"))
        run_dir = out_dir
    from edvae.training import train as run_training  # the heavy imports, after the config is checked

    result = run_training(cfg, run_dir, resume=resume is not None, overwrite=overwrite)
    from edvae.distributed import is_main_process

    if not is_main_process():
        return  # under DDP, global rank 0 reports for every process
    if result.stopped_by is not None:
        typer.echo(
            f"stopped by {result.stopped_by} at step {result.step}; checkpoint saved in {run_dir}. "
            f"Resume with: edvae train --resume {run_dir}",
            err=True,
        )
        raise typer.Exit(_SIGNAL_EXIT.get(result.stopped_by, 0))
    val = result.last_validation
    summary = ", ".join(f"{k}={v:.4g}" for k, v in val.items() if k in ("loss", "elbo_mc", "elbo", "reconstruction"))
    summary = summary or "none (the validation split is smaller than train.batch_size)"
    typer.echo(
        f"trained {result.step} steps in {result.train_seconds:.1f} s; validation: {summary}; run folder: {run_dir}"
    )
    _echo_prior_fit(run_dir)


def _echo_prior_fit(run_dir: Path) -> None:
    """One line on the prior fitted before training (a flow fitted to samples), if any."""
    from edvae.training import PRIOR_FIT_NAME

    path = run_dir / PRIOR_FIT_NAME
    if path.is_file():
        fit = json.loads(path.read_text())
        typer.echo(
            f"prior: flow fitted to {fit['n_train']} samples in {fit['steps']} steps; mean log-likelihood "
            f"{fit['train_log_likelihood']:.4g} nats (train), {fit['heldout_log_likelihood']:.4g} nats "
            f"({fit['n_heldout']} held-out samples); see {path}"
        )


@app.command()
@_friendly
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'edvae train'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    iwae_samples: Annotated[
        int | None, typer.Option("--iwae-samples", min=1, help="Importance samples per example.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="test or val.")] = "test",
    no_true_ll: Annotated[
        bool, typer.Option("--no-true-ll", help="Skip the true log-likelihood of synthetic data (quadrature).")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override an evaluation setting: --set eval.seed=1 (repeatable)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Evaluate on this data file instead of the run's own (same options and split seed)."
        ),
    ] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bars on stderr (default: on a terminal).")
    ] = None,
    accelerator: Annotated[str, typer.Option("--accelerator", help=f"Where to evaluate: {_ACCELERATOR_HELP}")] = "cpu",
) -> None:
    """Evaluate a trained model with the same metrics as every other (ELBO, IWAE, MI, ...).

    An unfinished run (still training, or stopped before its last epoch) is evaluated at its
    latest checkpoint, and says so: one "warning:" line on stderr, and "completed": false in
    the --json output (a finished run's output has no "completed" key).

    The true log-likelihood of synthetic data is cached per data set in .edvae-cache/ next to
    the run folder (shared by the runs of one parent folder)."""
    from edvae.config import apply_overrides

    if split not in ("test", "val"):
        raise EdvaeError(f"--split must be 'test' or 'val', got '{split}'")
    _accelerator(accelerator)
    if any(not o.startswith("eval.") for o in set_ or []):
        raise EdvaeError("evaluate takes only eval.* settings (e.g. --set eval.iwae_samples=100)")
    overrides = list(set_ or [])
    if iwae_samples is not None:
        overrides.append(f"eval.iwae_samples={iwae_samples}")
    if no_true_ll:
        overrides.append("eval.true_ll=false")
    if data is not None and not data.is_file():
        raise EdvaeError(f"--data {data} is not a file; give the data file to evaluate on")
    from edvae.checkpoint import load_checkpoint
    from edvae.config import validate_config

    checkpoint = load_checkpoint(run_dir)
    stored = checkpoint["config"]
    run_config = validate_config(apply_overrides(stored, overrides), source=f"the config stored in {run_dir}")
    from edvae.evaluate import evaluate_run, run_cache_dir
    from edvae.runs import load_data

    other = None
    if data is not None:  # the stored data options (scaling, labels, split) on another file
        options = run_config.data.options if run_config.data.name == "file" else {}
        new_data = run_config.data.model_copy(update={"name": "file", "path": str(data.resolve()), "options": options})
        other = load_data(run_config.model_copy(update={"data": new_data}))
    show = sys.stderr.isatty() if progress is None else progress
    metrics = evaluate_run(
        run_dir,
        config=run_config.eval,
        data=other,
        split=split,
        cache_dir=run_cache_dir(run_dir) if other is None else None,
        progress=show,
        accelerator=accelerator,
    )
    if not checkpoint["completed"]:
        typer.echo(f"warning: {_unfinished(run_dir, checkpoint)}", err=True)
    if as_json:
        unfinished = {} if checkpoint["completed"] else {"completed": False}
        typer.echo(json.dumps({**metrics, **unfinished}, indent=2))
    else:
        width = max(len(k) for k in metrics)
        for name, value in metrics.items():
            typer.echo(f"{name:<{width}}  {value:.6g}")


def _unfinished(run_dir: Path, checkpoint: dict[str, Any]) -> str:
    """One line on an unfinished run's checkpoint: where it is, and whether it is still training."""
    from edvae.runs import run_folder
    from edvae.training.run_dir import lock_holder

    folder = run_folder(run_dir)
    epochs = checkpoint["config"].get("train", {}).get("epochs", "?")
    where = f"its checkpoint is at step {checkpoint['step']}, epoch {checkpoint['epoch']} of {epochs}"
    holder = lock_holder(folder)
    if holder is not None:
        state = f"it is still training (pid {holder})" if holder else "it is still training"
    else:
        state = f"it stopped before its end (resume it with: edvae train --resume {folder})"
    return f"{folder} is an unfinished run ({where}; {state}); these metrics are those of that checkpoint"


@app.command()
@_friendly
def reproduce(
    out_dir: Annotated[str, typer.Option("--out", help="Folder for runs, results.json/.csv/.md and figures.")],
    study: Annotated[str, typer.Option("--study", help="Which study to run.")] = "paper",
    quick: Annotated[bool, typer.Option("--quick", help="Fewer epochs and 2 seeds (a few minutes).")] = False,
    seeds: Annotated[int | None, typer.Option("--seeds", min=1, help="Seeds per model.")] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Runs trained in parallel (with gpu: processes sharing the GPU).")
    ] = 2,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Retrain runs already in --out.")] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key of every run's config (repeatable).")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="Train every run for FACTOR times its epochs (2x, 1.5), everything else the same: a budget check, "
            "published with `edvae publish OUT --budget-of NAME`. Runs trained with the same epochs through --set "
            "are reused.",
        ),
    ] = None,
    accelerator: Annotated[
        str | None,
        typer.Option("--accelerator", help=f"Where every run trains and is evaluated: {_ACCELERATOR_HELP}"),
    ] = None,
) -> None:
    """Run a study (default: the paper's) end to end and write its report."""
    from edvae.budget import parse_budget

    factor = parse_budget(budget) if budget is not None else None
    out = _folder(out_dir, "--out")
    _accelerator(accelerator)
    from edvae.config import apply_overrides
    from edvae.experiments import get_study, run_study
    from edvae.experiments.study import with_budget

    overrides = apply_overrides({}, list(set_)) if set_ else None
    chosen = get_study(study, quick=quick, seeds=seeds, overrides=overrides)
    if factor is not None:
        chosen = with_budget(chosen, factor)
    result = run_study(chosen, out, workers=workers, overwrite=overwrite, accelerator=accelerator)
    from edvae.experiments.runner import plan_line

    typer.echo(f"{len(result['records'])} runs ({plan_line(result['plan'])}); report: {out / 'results.md'}")


@app.command()
@_friendly
def publish(
    results_dir: Annotated[
        str | None,
        typer.Argument(
            help="The --out folder of `edvae reproduce` (holds results.json). Without it: re-render every page and "
            "README block from the published JSON files."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Name in the docs: docs/results/NAME.json/.md (README blocks results:NAME ...)."),
    ] = None,
    budget_of: Annotated[
        str | None,
        typer.Option(
            "--budget-of",
            help="The results are the budget check (`edvae reproduce --budget 2x`) of the published study NAME: "
            "written as docs/results/NAME-2x.json/.md, and NAME's page gains the budget-check table.",
        ),
    ] = None,
    docs: Annotated[str, typer.Option("--docs", help="Folder of the generated result pages.")] = "docs/results",
    readme: Annotated[
        str, typer.Option("--readme", help="README whose generated blocks are regenerated.")
    ] = "README.md",
) -> None:
    """Publish a study's results into the docs: copy results.json and figures, regenerate pages and README blocks."""
    from edvae.publish import publish as publish_results
    from edvae.publish import refresh

    if results_dir is None:
        if name is not None or budget_of is not None:
            raise EdvaeError("--name and --budget-of need a RESULTS_DIR (the --out folder of `edvae reproduce`)")
        written = refresh(docs, readme)
    else:
        written = publish_results(results_dir, name, docs, readme, budget_of=budget_of)
    for path in written:
        typer.echo(str(path))


@app.command()
@_friendly
def bench(
    out_dir: Annotated[
        str, typer.Option("--out", help="Folder for bench.json, bench.md, scaling.png and README-snippet.md.")
    ],
    quick: Annotated[bool, typer.Option("--quick", help="A short version (under a minute).")] = False,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Torch threads for the timed comparisons.")] = 1,
) -> None:
    """Measure the decomposition's cost next to a plain VAE, the loop against pythae and a hand-written one, \
and the estimators' scaling."""
    out = _folder(out_dir, "--out")
    from edvae.bench import run_bench

    report = run_bench(out, quick=quick, threads=threads)
    overhead = report["overhead"][0]["results"]
    typer.echo(
        f"edvae / vae-std {overhead['edvae']['ratio']:.2f}x, edvae-paper / vae-std "
        f"{overhead['edvae-paper']['ratio']:.2f}x "
        f"(synthetic); report: {out / 'bench.md'}"
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
