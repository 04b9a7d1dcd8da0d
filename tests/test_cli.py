"""The command line at its boundary: every user mistake is ONE line on stderr and exit code 2.

Each bad input (configs, ``--set`` overrides, names, data, priors, output folders, ``--resume``,
checkpoints) goes through the real ``edvae`` typer app; no traceback unless ``--debug``.
The option parser's own errors are one line too (exit code 2, with a pointer to --help). A run that
diverges ends with one line, exit code 1, and keeps its last good checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import assert_one_line_error, invoke
from edvae.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, load_checkpoint
from edvae.errors import EdvaeError

TINY_TOML = """\
name = "tiny"

[data]
name = "complex"
options = { n_train = 512, n_val = 256, n_test = 256 }

[model]
latent_dim = 2
hidden = [32, 32]
prior = "true"

[objective]
kind = "ed"

[train]
epochs = 1
batch_size = 64
lr = 3e-3
progress = false
log_every = 2

[eval]
iwae_samples = 20
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny config, a trained run, and broken variants of its checkpoint."""
    tmp = tmp_path_factory.mktemp("cli")
    paths = {"tiny": tmp / "tiny.toml", "run": tmp / "run"}
    paths["tiny"].write_text(TINY_TOML)
    result = invoke("train", paths["tiny"], "--out", paths["run"])
    assert result.exit_code == 0, result.stderr
    raw = (paths["run"] / CHECKPOINT_NAME).read_bytes()
    state = load_checkpoint(paths["run"])

    def folder(name: str, write: Callable[[Path], None]) -> None:
        (tmp / name).mkdir()
        write(tmp / name / CHECKPOINT_NAME)
        paths[name] = tmp / name

    def with_config(section: str, key: str, value) -> dict:
        changed = copy.deepcopy(state)
        changed["config"][section][key] = value
        return changed

    folder("truncated", lambda p: p.write_bytes(raw[: len(raw) // 2]))
    folder("empty", lambda p: p.write_bytes(b""))
    folder("random bytes", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)))
    folder("foreign", lambda p: torch.save({"weights": torch.zeros(3)}, p))
    folder("marker only", lambda p: torch.save({"format": CHECKPOINT_FORMAT}, p))
    folder("invalid stored config", lambda p: torch.save(with_config("train", "epochs", -1), p))
    folder("weights of another model", lambda p: torch.save(with_config("model", "hidden", [16]), p))
    (tmp / "not a run").mkdir()
    paths["not a run"] = tmp / "not a run"
    paths["a file"] = tmp / "tiny.toml"
    paths["bad toml"] = tmp / "bad.toml"
    paths["bad toml"].write_text('name = "x"\n[train\nepochs = 1\n')
    np.save(tmp / "samples3.npy", np.random.default_rng(0).normal(size=(300, 3)).astype("float32"))
    np.save(tmp / "samples_nan.npy", np.full((300, 2), np.nan, dtype="float32"))
    (tmp / "garbage.npy").write_bytes(np.random.default_rng(1).bytes(2048))
    for name in ("samples3", "samples_nan", "garbage"):
        paths[name] = tmp / f"{name}.npy"
    paths["tmp"] = tmp
    return paths


# (case, arguments with {placeholders} from the `files` fixture and {out} a fresh folder, message)
TRAIN_ERRORS = [
    ("TOML syntax error", ["{bad toml}"], "is not valid TOML"),
    ("config file missing", ["{tmp}/nope.toml"], "does not exist"),
    (
        "unknown key",
        ["{tiny}", "--set", "train.nope=1"],
        "unknown config key 'train.nope'; valid keys here: accelerator",
    ),
    ("unknown section", ["{tiny}", "--set", "bogus.x=1"], "unknown config key 'bogus'"),
    ("wrong type", ["{tiny}", "--set", 'train.epochs="abc"'], "invalid value for 'train.epochs'"),
    ("boolean for a number", ["{tiny}", "--set", "train.epochs=true"], "expected a number, not a boolean"),
    (
        "negative epochs",
        ["{tiny}", "--set", "train.epochs=-1"],
        "'train.epochs': Input should be greater than or equal to 1 (got -1)",
    ),
    ("zero learning rate", ["{tiny}", "--set", "train.lr=0"], "'train.lr'"),
    (
        "NaN weight",
        ["{tiny}", "--set", "objective.mi_weight=nan"],
        "'objective.mi_weight': Input should be a finite number",
    ),
    ("seed out of range", ["{tiny}", "--set", "train.seed=-1"], "'train.seed'"),
    ("zero-width layer", ["{tiny}", "--set", "model.hidden=[0]"], "hidden widths must be integers from 1 to"),
    ("too many threads", ["{tiny}", "--set", "train.threads=1000000"], "'train.threads'"),
    (
        "unknown network",
        ["{tiny}", "--set", "model.network=transformer"],
        "'model.network': Input should be 'mlp' or 'conv'",
    ),
    ("--set without =", ["{tiny}", "--set", "train.epochs"], "--set expects key=value"),
    ("--set with an empty key", ["{tiny}", "--set", "=5"], "unknown config key"),
    ("--set through a value", ["{tiny}", "--set", "name.x=1"], "'name' is a value, not a section"),
    ("--set a section to a value", ["{tiny}", "--set", "train=5"], "invalid value for 'train'"),
    ("unknown dataset", ["{tiny}", "--set", "data.name=nope"], "unknown dataset 'nope'; choose one of"),
    ("unknown dataset option", ["{tiny}", "--set", "data.options.bogus=1"], "has no option 'bogus'"),
    ("invalid dataset option", ["{tiny}", "--set", "data.options.n_train=-5"], "n_train must be an integer >= 1"),
    ("batch larger than the data", ["{tiny}", "--set", "train.batch_size=10000"], "exceeds the 512 training examples"),
    ("data file missing", ["--data", "{tmp}/nope.npy"], "does not exist"),
    ("data file garbage", ["--data", "{garbage}"], "could not be read as a .npy file"),
    ("unknown prior", ["{tiny}", "--prior", "nope"], "unknown prior name 'nope'; choose one of"),
    (
        "unknown prior option",
        ["{tiny}", "--prior", "normal", "--set", "model.prior_options.bogus=1"],
        "unknown option(s) bogus",
    ),
    (
        "prior samples of another dimension",
        ["{tiny}", "--prior", "samples:{samples3}"],
        "dimension 3 but the latent dimension is 2",
    ),
    ("prior samples missing", ["{tiny}", "--prior", "samples:{tmp}/nope.npy"], "does not exist"),
    ("prior samples with NaN", ["{tiny}", "--prior", "samples:{samples_nan}"], "NaN or Inf"),
    ("true prior of another dimension", ["{tiny}", "--set", "model.latent_dim=3"], "make them agree"),
    pytest.param(
        "GPU on a CPU machine",
        ["{tiny}", "--set", "train.accelerator=gpu"],
        "torch sees no GPU",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
    ),
    ("--out holds another run", ["{tiny}", "--out", "{run}"], "already holds a run; pass --overwrite"),
    ("--out is a file", ["{tiny}", "--out", "{a file}"], "is a file, not a folder"),
    ("--out inside a file", ["{tiny}", "--out", "{a file}/sub"], "cannot create the run folder"),
    ("no --out", ["{tiny}", "--out", None], "missing --out"),
    ("no config", ["--out", "{out}"], "give a CONFIG file"),
    ("--resume of a missing folder", ["--resume", "{tmp}/nope", "--out", None], "no checkpoint at"),
    ("--resume of a folder that is not a run", ["--resume", "{not a run}", "--out", None], "no checkpoint at"),
    (
        "--resume with a config",
        ["{tiny}", "--resume", "{run}", "--out", None],
        "--resume takes the config stored in the checkpoint",
    ),
    (
        "--resume changing the model",
        ["--resume", "{run}", "--set", "model.latent_dim=3", "--out", None],
        "only train.* settings may change",
    ),
    ("--resume into another folder", ["--resume", "{run}"], "--resume continues in its own folder"),
]


def _args(template: list, files: dict[str, Path], out: Path) -> list[str]:
    args = [a.format(out=out, **{k: str(v) for k, v in files.items()}) for a in template if a is not None]
    if "--out" not in template:
        args += ["--out", str(out)]
    if None in template:  # "--out", None: no --out at all
        args = [a for a in args if a != "--out"]
    return args


@pytest.mark.parametrize(
    "case, template, message", TRAIN_ERRORS, ids=[(c.values if hasattr(c, "values") else c)[0] for c in TRAIN_ERRORS]
)
def test_train_refuses_bad_input_with_one_line(files, tmp_path, case, template, message):
    assert_one_line_error(invoke("train", *_args(template, files, tmp_path / "out")), message)


CHECKPOINT_ERRORS = [
    ("truncated", "is truncated, corrupt or not a safe edvae checkpoint"),
    ("empty", "is truncated, corrupt or not a safe edvae checkpoint (EOFError)"),
    ("random bytes", "is truncated, corrupt or not a safe edvae checkpoint"),
    ("foreign", "is not an edvae checkpoint (no 'edvae-checkpoint-v1' marker)"),
    ("marker only", "is a damaged edvae checkpoint: the entry 'config' is missing"),
    ("invalid stored config", "invalid value for 'train.epochs'"),
    ("weights of another model", "do not fit the model its config describes"),
    ("not a run", "no checkpoint at"),
]


@pytest.mark.parametrize("command", ["evaluate", "train --resume"])
@pytest.mark.parametrize("folder, message", CHECKPOINT_ERRORS, ids=[c[0] for c in CHECKPOINT_ERRORS])
def test_bad_checkpoints_are_refused_with_one_line(files, command, folder, message):
    args = ["evaluate", files[folder]] if command == "evaluate" else ["train", "--resume", files[folder]]
    assert_one_line_error(invoke(*args), message)


def test_a_checkpoint_file_can_be_named_directly_and_missing_ones_are_named(files):
    assert_one_line_error(invoke("evaluate", files["tmp"] / "nope"), f"no checkpoint at {files['tmp'] / 'nope'}")
    assert_one_line_error(invoke("evaluate", files["foreign"] / CHECKPOINT_NAME), "is not an edvae checkpoint")
    assert_one_line_error(invoke("evaluate", files["run"], "--split", "train"), "--split must be 'test' or 'val'")


def test_unknown_study_and_bad_reproduce_overrides(tmp_path):
    assert_one_line_error(
        invoke("reproduce", "--out", tmp_path, "--study", "nope"), "unknown study 'nope'; choose one of"
    )
    assert_one_line_error(
        invoke("reproduce", "--out", tmp_path, "--set", "train.nope=1"), "unknown config key 'train.nope'"
    )
    assert_one_line_error(invoke("reproduce", "--out", tmp_path, "--set", "noequals"), "--set expects key=value")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(
        invoke("reproduce", "--out", tmp_path / "file" / "sub", "--quick", "--seeds", "1"), "Not a directory"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "somewhere", "--iwae-samples", "0"],
        ["train", "--bogus"],
        ["reproduce", "--out", "x", "--workers", "0"],
        ["no-such-command"],
        ["train", "--devices", "zero"],
    ],
    ids=["option below its minimum", "unknown option", "workers 0", "unknown command", "not an integer"],
)
def test_option_parser_errors_are_one_line_too(args):
    """Regression: the parser's own errors printed a five-line usage box."""
    line = assert_one_line_error(invoke(*args), "--help")
    assert "Usage:" not in line and "─" not in line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--devices", "0", "--out", "x"], "'--devices'"),
        (["evaluate", "somewhere", "--iwae-samples", "0"], "'--iwae-samples'"),
        (["reproduce", "--out", "x", "--seeds", "0"], "'--seeds'"),
        (["evaluate"], "missing argument"),
    ],
)
def test_range_errors_name_the_option(args, expected):
    assert_one_line_error(invoke(*args), expected)


def test_version_and_help():
    from edvae import __version__
    from edvae.experiments import STUDIES
    from edvae.priors import names

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"edvae {__version__}"
    text = " ".join(invoke("train", "--help").stdout.split())
    assert all(name in text for name in names())
    text = " ".join(invoke("reproduce", "--help").stdout.split())
    assert all(name in text for name in STUDIES)
    assert invoke().exit_code == 0 and "Usage" in invoke().stdout  # no arguments: the help


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--out", "", "--set", "train.epochs=1"],
        ["train", "--resume", ""],
        ["reproduce", "--out", " "],
    ],
)
def test_an_empty_folder_option_is_refused(args, tmp_path, monkeypatch):
    """Regression: --out '' wrote the run into the current folder."""
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke(*args), "must be a non-empty path")
    assert list(tmp_path.iterdir()) == []


def test_a_config_error_comes_before_the_heavy_imports():
    """A bad config is reported without importing torch (which takes seconds)."""
    import subprocess
    import sys

    code = (
        "import sys; from typer.testing import CliRunner; from edvae.cli import app; "
        "r = CliRunner().invoke(app, ['train', '--out', 'never', '--set', 'train.epochs=0']); "
        "print(r.exit_code, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr


def test_evaluate_takes_eval_settings_and_can_skip_the_true_log_likelihood(files):
    import json

    result = invoke("evaluate", files["run"], "--json", "--no-true-ll", "--set", "eval.iwae_samples=5")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert "true_ll" not in metrics and "ll_gap" not in metrics and "iwae" in metrics
    with_truth = json.loads(invoke("evaluate", files["run"], "--json", "--set", "eval.iwae_samples=5").stdout)
    assert "ll_gap" in with_truth and with_truth["iwae"] == metrics["iwae"]
    assert_one_line_error(invoke("evaluate", files["run"], "--set", "train.epochs=3"), "only eval.* settings")
    assert_one_line_error(invoke("evaluate", files["run"], "--set", "eval.iwae_samples=0"), "eval.iwae_samples")


def test_library_error_messages_are_cut_at_a_sentence_end():
    """Regression: a torch message was clipped mid-sentence ("...there is a high);")."""
    from edvae.checkpoint import first_sentence

    torch_text = (
        "PytorchStreamReader failed reading zip archive: invalid header or archive is corrupted. "
        "This is an internal miniz error. If you are seeing this error, there is a high likelihood that your "
        "checkpoint file is corrupted."
    )
    assert (
        first_sentence(torch_text)
        == "PytorchStreamReader failed reading zip archive: invalid header or archive is corrupted"
    )
    long = "word " * 100
    cut = first_sentence(long)
    assert cut.endswith("word...") and len(cut) <= 163
    assert first_sentence("got 3.5 here. Then more") == "got 3.5 here"


def test_debug_shows_the_real_exception(files, tmp_path):
    result = invoke("--debug", "train", files["tiny"], "--out", tmp_path / "out", "--set", "train.epochs=-1")
    assert isinstance(result.exception, EdvaeError) and "train.epochs" in str(result.exception)
    result = invoke("--debug", "evaluate", files["random bytes"])
    assert isinstance(result.exception, EdvaeError)


def test_a_pydantic_error_that_escapes_validation_is_still_one_line(files, monkeypatch):
    """Safety net: a raw pydantic ValidationError anywhere below the CLI is one line, exit 2."""
    import edvae.evaluate
    from edvae.config import TrainConfig

    monkeypatch.setattr(edvae.evaluate, "evaluate_run", lambda *a, **k: TrainConfig.model_validate({"epochs": 0}))
    assert_one_line_error(invoke("evaluate", files["run"]), "invalid value for 'epochs'")


def test_overwrite_replaces_a_run_and_resume_of_a_finished_run_is_a_no_op(files, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", files["tiny"], "--out", run).exit_code == 0
    assert_one_line_error(invoke("train", files["tiny"], "--out", run), "already holds a run")
    result = invoke("train", files["tiny"], "--out", run, "--overwrite", "--set", "train.seed=1")
    assert result.exit_code == 0, result.stderr
    assert load_checkpoint(run)["config"]["train"]["seed"] == 1
    result = invoke("train", "--resume", run)
    assert result.exit_code == 0 and "trained 8 steps" in result.stdout


# --------------------------------------------------------------------------------------------
# divergence: one line, exit code 1, the last good checkpoint kept


def _assert_last_good_checkpoint(run: Path, step: int) -> None:
    state = load_checkpoint(run)
    assert state["step"] == step and not state["completed"]
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_divergence_from_a_huge_learning_rate_is_one_line_exit_1_and_keeps_the_last_checkpoint(files, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", files["tiny"], "--out", run, "--set", "train.lr=1e4", "--set", "train.checkpoint_every=1")
    line = assert_one_line_error(result, "became non-finite at step", code=1)
    assert f"the last good checkpoint in {run} is kept" in line and "train.lr" in line
    _assert_last_good_checkpoint(run, int(line.split("at step ")[1].split()[0]) - 1)

    # diverging before the first checkpoint: the message does not promise one
    result = invoke("train", files["tiny"], "--out", tmp_path / "early", "--set", "train.lr=1e4")
    assert_one_line_error(result, f"no checkpoint was written to {tmp_path / 'early'} yet", code=1)


@pytest.mark.parametrize(
    "checkpoint_every, nan_after, message, kept",
    [
        (2, 3, "the encoder outputs became non-finite at step 4 (epoch 1): the parameters diverged", 2),
        (3, 6, "the parameters became non-finite by step 6 (epoch 1)", 3),
    ],
)
def test_parameters_that_diverge_in_an_update_are_caught_before_the_next_step_or_checkpoint(
    files, tmp_path, monkeypatch, checkpoint_every, nan_after, message, kept
):
    """An update that leaves the loss and gradients finite but the parameters not (an overflow in
    the optimiser) is caught at the next forward pass, or before it could reach a checkpoint."""
    real_step, calls = torch.optim.Adam.step, {"n": 0}

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == nan_after:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    run = tmp_path / "run"
    result = invoke("train", files["tiny"], "--out", run, "--set", f"train.checkpoint_every={checkpoint_every}")
    line = assert_one_line_error(result, message, code=1)
    assert f"the last good checkpoint in {run} is kept" in line
    _assert_last_good_checkpoint(run, kept)


def test_a_non_finite_objective_term_is_named_with_its_step(files, tmp_path, poison_objective):
    calls = poison_objective("entropy", lambda step: step >= 6)
    run = tmp_path / "run"
    result = invoke("train", files["tiny"], "--out", run, "--set", "train.checkpoint_every=4")
    line = assert_one_line_error(result, "the objective term 'entropy' became non-finite at step 6 (epoch 1)", code=1)
    assert "train.on_nonfinite=skip" in line
    assert load_checkpoint(run)["step"] == 4

    calls["n"] = 0  # skipping: gives up after 50 non-finite steps in a row, the checkpoint stays finite
    result = invoke(
        "train",
        files["tiny"],
        "--out",
        tmp_path / "skip",
        "--set",
        "train.on_nonfinite=skip",
        "--set",
        "train.epochs=8",
        "--set",
        "train.checkpoint_seconds=0",
    )
    assert_one_line_error(
        result, "was non-finite for 51 steps in a row at step 56 (epoch 7); giving up; the last good checkpoint", code=1
    )
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "skip")["model"].values())


def test_a_folder_holding_a_failed_runs_logs_says_so_and_overwrite_reuses_it(files, tmp_path):
    """A run that diverged before its first checkpoint leaves logs and no checkpoint: train must
    not send the user to --resume (which has nothing to resume), and --overwrite must work."""
    early = tmp_path / "early"
    assert_one_line_error(
        invoke("train", files["tiny"], "--out", early, "--set", "train.lr=1e4"), "no checkpoint", code=1
    )
    assert not (early / CHECKPOINT_NAME).exists() and any(early.iterdir())
    line = assert_one_line_error(invoke("train", files["tiny"], "--out", early), "stopped before its first checkpoint")
    assert "--overwrite" in line and "--resume" not in line
    assert_one_line_error(invoke("train", "--resume", early), "holds no checkpoint.pt")
    result = invoke("train", files["tiny"], "--out", early, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert load_checkpoint(early)["completed"]


# --------------------------------------------------------------------------------------------
# the data a run is evaluated on is the data it was trained on


def test_a_run_trained_on_data_in_memory_is_evaluated_on_exactly_that_data(tmp_path, tiny_config):
    import json

    from edvae.data import DataSplits
    from edvae.evaluate import evaluate_model
    from edvae.runs import load_run
    from edvae.training import train

    gen = torch.Generator().manual_seed(3)
    x = 5 + 2 * torch.randn(400, 6, generator=gen)  # not the config's synthetic data set (16-D)
    mine = DataSplits("mine", x[:256], x[256:320], x[320:], (6,), "gaussian")
    cfg = tiny_config(train={"epochs": 1}, model={"prior": "normal"})
    train(cfg, tmp_path / "run", data=mine)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["name"] == "stored"
    result = invoke("evaluate", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    model = load_run(tmp_path / "run")[0]
    expected = evaluate_model(model, mine, cfg.eval)
    assert metrics["elbo"] == pytest.approx(expected["elbo"], rel=1e-12) and metrics["mse"] == pytest.approx(
        expected["mse"], rel=1e-12
    )
    assert "true_ll" not in metrics  # no ground truth for the user's data
    (tmp_path / "run" / "data.pt").write_bytes(b"changed")
    assert_one_line_error(invoke("evaluate", tmp_path / "run"), "data.pt changed since this run was trained")


def test_file_data_is_recorded_by_absolute_path_and_hash_and_checked_before_evaluation(tmp_path, monkeypatch):
    import json

    rng = np.random.default_rng(0)
    (tmp_path / "work").mkdir()
    np.save(tmp_path / "work" / "mine.npy", rng.random((300, 5)).astype(np.float32))
    toml = TINY_TOML.replace('prior = "true"', 'prior = "normal"').replace(
        "options = { n_train = 512, n_val = 256, n_test = 256 }", ""
    )
    (tmp_path / "tiny.toml").write_text(toml)
    monkeypatch.chdir(tmp_path / "work")
    result = invoke("train", tmp_path / "tiny.toml", "--data", "mine.npy", "--out", "run")
    assert result.exit_code == 0, result.stderr
    stored = load_checkpoint(tmp_path / "work" / "run")["config"]["data"]
    assert stored["name"] == "file" and stored["path"] == str(tmp_path / "work" / "mine.npy")
    monkeypatch.chdir(tmp_path)  # a relative --data path works from another folder
    result = invoke("evaluate", "work/run", "--json")
    assert result.exit_code == 0, result.stderr
    before = json.loads(result.stdout)
    np.save(tmp_path / "work" / "mine.npy", rng.random((300, 5)).astype(np.float32))  # the file changes
    line = assert_one_line_error(
        invoke("evaluate", "work/run"), f"the data file {tmp_path / 'work' / 'mine.npy'} changed"
    )
    assert "--data" in line
    assert_one_line_error(
        invoke("train", "--resume", "work/run", "--set", "train.epochs=2"), "changed since this run was trained"
    )
    result = invoke("evaluate", "work/run", "--json", "--data", "work/mine.npy")  # evaluating on another file: explicit
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["elbo"] != before["elbo"]
    (tmp_path / "work" / "mine.npy").unlink()
    assert_one_line_error(invoke("evaluate", "work/run"), "mine.npy this run was trained on is missing")
    assert_one_line_error(invoke("evaluate", "work/run", "--data", "nothing.npy"), "--data nothing.npy is not a file")


def test_evaluate_caches_the_true_log_likelihood_per_data_set(files, tmp_path, monkeypatch):
    import json
    import shutil

    from edvae.data import GroundTruth
    from edvae.evaluate import CACHE_DIR_NAME

    run = tmp_path / "runs" / "a"
    shutil.copytree(files["run"], run)
    first = invoke("evaluate", run, "--json")
    assert first.exit_code == 0, first.stderr
    assert len(list((tmp_path / "runs" / CACHE_DIR_NAME).glob("true_ll-*.pt"))) == 1

    def never(*args, **kwargs):
        raise AssertionError("the cached true log-likelihood was recomputed")

    monkeypatch.setattr(GroundTruth, "true_log_likelihood", never)
    second = invoke("evaluate", run, "--json")
    assert second.exit_code == 0, second.stderr
    assert json.loads(second.stdout)["true_ll"] == json.loads(first.stdout)["true_ll"]
    assert invoke("evaluate", run, "--json", "--split", "val").exception is not None  # another split: not that cache


NO_GPU = pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="this machine has a GPU"
)


@NO_GPU
@pytest.mark.parametrize("command", ["train", "evaluate", "reproduce"])
def test_accelerator_gpu_without_a_gpu_is_one_line_before_any_work(files, tmp_path, command):
    args = {
        "train": ["train", files["tiny"], "--out", tmp_path / "out"],
        "evaluate": ["evaluate", files["run"]],
        "reproduce": ["reproduce", "--out", tmp_path / "out", "--quick", "--seeds", "1"],
    }[command]
    assert_one_line_error(invoke(*args, "--accelerator", "gpu"), "--accelerator='gpu' but torch sees no GPU")
    assert not (tmp_path / "out").exists()  # refused before any folder or run was made


@pytest.mark.parametrize("command", ["train", "evaluate", "reproduce"])
def test_an_unknown_accelerator_is_one_line(files, tmp_path, command):
    args = {
        "train": ["train", files["tiny"], "--out", tmp_path / "out"],
        "evaluate": ["evaluate", files["run"]],
        "reproduce": ["reproduce", "--out", tmp_path / "out"],
    }[command]
    assert_one_line_error(invoke(*args, "--accelerator", "tpu"), "--accelerator must be one of cpu, gpu, auto")


def test_accelerator_auto_trains_the_study_network_on_the_cpu_and_evaluates_like_cpu(files, tmp_path, monkeypatch):
    """``auto`` with a GPU present keeps the tiny study network on the CPU (the rule of
    edvae.accelerator.choose_accelerator), and is stored as asked; ``evaluate --accelerator cpu``
    is the default's numbers exactly."""
    import json

    import edvae.accelerator

    monkeypatch.setattr(edvae.accelerator, "gpu_available", lambda: True)  # would fail if it picked the GPU
    run = tmp_path / "run"
    result = invoke("train", files["tiny"], "--out", run, "--accelerator", "auto")
    assert result.exit_code == 0, result.stderr
    assert load_checkpoint(run)["config"]["train"]["accelerator"] == "auto"
    monkeypatch.undo()
    default = invoke("evaluate", run, "--json", "--no-true-ll")
    on_cpu = invoke("evaluate", run, "--json", "--no-true-ll", "--accelerator", "cpu")
    assert default.exit_code == on_cpu.exit_code == 0, default.stderr + on_cpu.stderr
    assert json.loads(default.stdout) == json.loads(on_cpu.stdout)
