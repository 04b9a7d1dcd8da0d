"""Priors beyond the paper: the four studies build and run, learned priors train through the
training loop, sample-only priors work end to end through the CLI, bad sample files fail clearly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edvae import priors
from edvae.checkpoint import load_checkpoint
from edvae.cli import app
from edvae.data import load_dataset
from edvae.errors import EdvaeError
from edvae.evaluate import load_run
from edvae.experiments import STUDIES, get_study, run_study
from edvae.experiments.prior_studies import MISSPECIFIED_PRIORS, N_PRIOR_SAMPLES, SAMPLES_FILE
from edvae.model import build_model
from edvae.training import PRIOR_FIT_NAME, train

SMALL_DATA = {"name": "complex", "options": {"n_train": 256, "n_val": 128, "n_test": 128}}
TINY = {
    "data": {"options": {"n_train": 512, "n_val": 128, "n_test": 128}},
    "model": {"hidden": [16]},
    "train": {"epochs": 1, "batch_size": 64},
    "eval": {"iwae_samples": 16},
}


# --- the studies build the runs they describe ------------------------------------------------------


def _kinds(study):
    return {spec.model: (spec.config.model.prior, spec.config.objective) for spec in study.runs}


@pytest.mark.parametrize(
    "name, n_models",
    [("unknown-prior", 4), ("learned-prior", 5), ("misspecified", 8), ("ablation", 10)],
)
def test_each_study_builds_every_model_for_every_seed(name, n_models):
    assert name in STUDIES
    study = get_study(name, seeds=2)
    assert study.name == name and len(study.runs) == 2 * n_models
    assert sorted(spec.seed for spec in study.runs) == sorted([0, 1] * n_models)
    assert len({spec.folder for spec in study.runs}) == len(study.runs)
    assert all(spec.config.data.name == "complex" for spec in study.runs)
    quick = get_study(name, quick=True, overrides={"train": {"epochs": 2}})
    assert len(quick.runs) == 2 * n_models  # quick: 2 seeds
    assert all(spec.config.train.epochs == 2 for spec in quick.runs)  # the user's override wins


def test_unknown_prior_runs():
    kinds = _kinds(get_study("unknown-prior", seeds=1))
    assert kinds["vae-normal"][0] == "normal" and kinds["vae-normal"][1].kind == "elbo"
    assert kinds["edvae-exact"][0] == "true"
    for model in ("edvae-exact", "edvae-kde", "edvae-flow"):
        objective = kinds[model][1]
        assert objective.kind == "ed" and objective.mi_weight == objective.entropy_weight == 1.0
    assert kinds["edvae-kde"][0] == kinds["edvae-flow"][0] == f"samples:{SAMPLES_FILE}"
    study = get_study("unknown-prior", seeds=1)
    methods = {s.model: s.config.model.prior_options.get("method") for s in study.runs}
    assert methods["edvae-kde"] == "kde" and methods["edvae-flow"] == "flow"


def test_learned_prior_runs():
    kinds = _kinds(get_study("learned-prior", seeds=1))
    assert {model: prior for model, (prior, _) in kinds.items()} == {
        "normal": "normal",
        "mixture": "mixture",
        "vamp": "vamp",
        "flow": "flow",
        "exact": "true",
    }
    assert all(obj.kind == "ed" and obj.cross_entropy_weight == 1.0 for _, obj in kinds.values())


def test_misspecified_runs_and_metrics():
    study = get_study("misspecified", seeds=1)
    kinds = _kinds(study)
    assert study.metrics[:4] == ["ll_gap", "iwae", "elbo", "kl"]
    for label, model in MISSPECIFIED_PRIORS.items():
        prior, objective = kinds[f"vae-{label}"]
        assert prior == model["prior"] and objective.kind == "elbo" and objective.kl == "mc"
        prior, objective = kinds[f"edvae-paper-{label}"]
        assert prior == model["prior"] and objective.kind == "ed"
        assert objective.mi_estimator == "infonce" and objective.mi_weight == -1.0
    options = {s.model: s.config.model.prior_options for s in study.runs}
    assert options["vae-ring-r1"] == {"radius": 1.0} and options["vae-ring-4modes"] == {"n_components": 4}


def test_ablation_runs():
    kinds = _kinds(get_study("ablation", seeds=1))
    weights = {m: (o.mi_weight, o.entropy_weight, o.cross_entropy_weight) for m, (_, o) in kinds.items()}
    assert weights["unit"] == (1.0, 1.0, 1.0)
    assert weights["no-mi"] == (0.0, 1.0, 1.0)
    assert weights["no-entropy"] == (1.0, 0.0, 1.0)
    assert weights["no-ce"] == (1.0, 1.0, 0.0)
    assert weights["entropy-x0.5"] == (1.0, 0.5, 1.0)
    assert weights["ce-x2"] == (1.0, 1.0, 2.0)
    assert all(prior == "true" and obj.kind == "ed" for prior, obj in kinds.values())


def test_unknown_prior_writes_its_samples_before_the_runs(tmp_path):
    study = get_study("unknown-prior", seeds=1, overrides={"data": {"options": SMALL_DATA["options"]}})
    path = study.prepare(study, tmp_path)
    assert path == (tmp_path / SAMPLES_FILE).resolve()
    samples = np.load(path)
    assert samples.shape == (N_PRIOR_SAMPLES, 2) and np.isfinite(samples).all()
    # drawn from the true ring (radius 2, std 0.3) ...
    radius = np.linalg.norm(samples, axis=1)
    assert abs(radius.mean() - 2.0) < 0.05
    # ... deterministically, and every sample-prior run now reads this file
    assert np.array_equal(np.load(study.prepare(study, tmp_path)), samples)
    priors_ = {s.model: s.config.model.prior for s in study.runs}
    assert priors_["edvae-kde"] == priors_["edvae-flow"] == f"samples:{path}"
    assert priors_["edvae-exact"] == "true"


# --- a tiny study end to end -------------------------------------------------------------------------


def test_a_tiny_study_runs_end_to_end_and_writes_the_report(tmp_path):
    study = get_study("learned-prior", seeds=1, overrides=TINY)
    result = run_study(study, tmp_path, workers=1, progress=False)
    assert set(result) >= {"study", "title", "description", "records", "summary", "environment"}
    assert result["study"] == "learned-prior"
    assert {r["model"] for r in result["records"]} == {"normal", "mixture", "vamp", "flow", "exact"}
    for record in result["records"]:
        m = record["metrics"]
        assert {"ll_gap", "iwae", "elbo", "kl", "mi", "marginal_kl", "prior_swd", "true_ll"} <= m.keys()
        assert all(math.isfinite(v) for v in m.values())
        assert m["true_ll"] - m["ll_gap"] == pytest.approx(m["iwae"])
    assert set(result["summary"]["complex"]["vamp"]["iwae"]) >= {"mean", "std", "n"}
    table = (tmp_path / "results.md").read_text()
    assert "| model | ll_gap | iwae | elbo | kl |" in table and "| vamp |" in table
    assert (tmp_path / "figures" / "aggregate_posterior.png").stat().st_size > 1000
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 5


# --- learned priors train through the training loop ---------------------------------------------------


@pytest.fixture(scope="module")
def small_data():
    return load_dataset("complex", **SMALL_DATA["options"])


@pytest.mark.parametrize("prior, options", [("mixture", {}), ("vamp", {"n_components": 10}), ("flow", {})])
def test_learned_priors_train_with_the_ed_objective_and_the_elbo(tmp_path, tiny_config, small_data, prior, options):
    """Every learned prior's parameters move under train(), for both objectives, and at unit
    weights the ED objective trains exactly like the ELBO with a Monte-Carlo KL."""
    states = {}
    for objective in ({"kind": "ed"}, {"kind": "elbo", "kl": "mc"}):
        cfg = tiny_config(
            data=SMALL_DATA,
            model={"prior": prior, "prior_options": options, "hidden": [16]},
            objective=objective,
            train={"epochs": 1},
        )
        run = tmp_path / objective["kind"]
        train(cfg, run, data=small_data)
        states[objective["kind"]] = load_checkpoint(run)["model"]
        torch.manual_seed(cfg.train.seed)  # train() seeds the same way before it builds the model
        initial = build_model(cfg.model, small_data).prior.state_dict()
        learned = {k: v for k, v in states[objective["kind"]].items() if k.startswith("prior.")}
        assert learned.keys() == {f"prior.{k}" for k in initial}
        moved = [k for k in initial if not torch.allclose(initial[k], learned[f"prior.{k}"])]
        assert moved, f"no parameter of the {prior} prior changed"
    ed, mc = states["ed"], states["elbo"]
    assert all(torch.allclose(ed[k], mc[k], rtol=1e-5, atol=1e-6) for k in ed)


@pytest.mark.parametrize("n_components", [2.5, 0, True, "8"])
def test_a_vamp_prior_with_a_bad_number_of_components_is_refused(tiny_config, small_data, n_components):
    # a value of another type than int is refused by the config, 0 when the model is built
    with pytest.raises(EdvaeError, match="n_components (must be a positive integer|of prior 'vamp' must be int)"):
        cfg = tiny_config(model={"prior": "vamp", "prior_options": {"n_components": n_components}})
        build_model(cfg.model, small_data)


def test_a_models_mixture_prior_starts_spread_and_recovers_the_ring_modes(tiny_config, small_data):
    """Without data to start from, the model's learned mixture takes the k-means centres of
    N(0, I) draws as means; from there maximum likelihood finds all 8 modes of the ring (from K raw
    N(0, I) draws it merges modes for most seeds)."""
    prior = build_model(tiny_config(model={"prior": "mixture"}).model, small_data).prior
    assert isinstance(prior, priors.GaussianMixturePrior) and prior.n_components == 8
    assert float(torch.pdist(prior().component_distribution.mean.detach()).min()) > 0.5
    torch.manual_seed(0)
    ring = priors.make("mog_ring", 2)
    data = ring().sample((4000,))
    optimiser = torch.optim.Adam(prior.parameters(), lr=0.05)
    for _ in range(250):
        loss = -prior().log_prob(data).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    learned = prior().component_distribution.mean.detach()
    assert torch.cdist(ring().component_distribution.mean, learned).min(1).values.max() < 0.2


# --- priors known only by samples, through the CLI ------------------------------------------------------

runner = CliRunner()
CLI_TINY = [
    "--set",
    "data.name=complex",
    "--set",
    "data.options.n_train=256",
    "--set",
    "data.options.n_val=128",
    "--set",
    "data.options.n_test=128",
    "--set",
    "model.hidden=[16]",
    "--set",
    "objective.kind=ed",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=64",
    "--set",
    "train.progress=false",
    "--set",
    "eval.iwae_samples=16",
]


@pytest.fixture(scope="module")
def ring_file(tmp_path_factory):
    torch.manual_seed(0)
    samples = priors.make("mog_ring", 2)().sample((1000,)).double().numpy()
    folder = tmp_path_factory.mktemp("samples")
    np.save(folder / "ring.npy", samples)
    torch.save(torch.from_numpy(samples), folder / "ring.pt")
    np.savetxt(folder / "ring.csv", samples, delimiter=",", header="z1,z2", comments="")
    return folder


def _evaluate(run):
    done = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".csv"])
def test_kde_prior_from_a_samples_file_round_trips_through_the_cli(tmp_path, ring_file, suffix):
    run = tmp_path / "run"
    done = runner.invoke(
        app, ["train", "--out", str(run), "--prior", f"samples:{ring_file / ('ring' + suffix)}", *CLI_TINY]
    )
    assert done.exit_code == 0, done.output
    state = load_checkpoint(run)["model"]
    assert state["prior.samples"].shape == (1000, 2)
    metrics = _evaluate(run)
    assert math.isfinite(metrics["iwae"]) and math.isfinite(metrics["ll_gap"])
    model = load_run(run)[0]
    assert isinstance(model.prior, priors.KDEPrior)
    assert float(model.prior.bandwidth) == pytest.approx(float(state["prior.bandwidth"]))


def test_flow_prior_from_samples_reports_its_fit_and_is_not_refitted_on_evaluate(tmp_path, ring_file, monkeypatch):
    run = tmp_path / "run"
    args = [
        "train",
        "--out",
        str(run),
        "--prior",
        f"samples:{ring_file / 'ring.npy'}",
        *CLI_TINY,
        "--set",
        'model.prior_options={"method": "flow", "flow_steps": 20}',
    ]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "prior: flow fitted to 900 samples in 20 steps" in done.stdout
    fit = json.loads((run / PRIOR_FIT_NAME).read_text())
    assert fit["steps"] == 20 and fit["n_heldout"] == 100 and math.isfinite(fit["heldout_log_likelihood"])

    def no_refit(*args, **kwargs):
        raise AssertionError("the flow was fitted again")

    monkeypatch.setattr(priors.samples, "_fit_flow", no_refit)  # where from_samples finds it
    first = _evaluate(run)
    assert first == _evaluate(run) and math.isfinite(first["iwae"])
    model = load_run(run)[0]  # the fitted flow comes back from the checkpoint
    state = load_checkpoint(run)["model"]
    assert all(torch.equal(v, state[f"prior.{k}"]) for k, v in model.prior.state_dict().items())


def _write(path, content):
    if path.suffix == ".npy" and isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.write_text(content)


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("dim3.csv", "1,2,3\n4,5,6\n7,8,9\n", ["dimension 3", "latent dimension is 2"]),
        ("nan.csv", "1,2\n3,nan\n5,6\n", ["NaN or Inf", "row 1"]),
        ("one.npy", np.ones((1, 2)), ["1 sample", "at least 2"]),
        ("words.csv", "a,b\nc,d\n", ["line 2, column 1", "not a number"]),
        ("garbage.npy", "not a numpy file", ["could not be read", "does not start with the npy signature"]),
        ("ragged.csv", "1,2\n3\n5,6\n", ["line 2 has 1 value but earlier rows have 2"]),
        ("samples.txt", "1,2\n3,4\n", ["unsupported extension '.txt'"]),
        ("missing.npy", None, ["does not exist"]),
    ],
)
def test_bad_samples_files_are_one_clear_line_and_exit_2(tmp_path, name, content, words):
    path = tmp_path / name
    if content is not None:
        _write(path, content)
    done = runner.invoke(app, ["train", "--out", str(tmp_path / "run"), "--prior", f"samples:{path}", *CLI_TINY])
    assert done.exit_code == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_runs_five_seeds_against_a_reference_it_trains(name):
    study, quick = get_study(name), get_study(name, quick=True)
    pairs = {(r.dataset, r.model) for r in study.runs}
    assert sorted({r.seed for r in study.runs}) == list(range(5))
    assert len(study.runs) == 5 * len(pairs) and len(quick.runs) == 2 * len(pairs)
    assert study.reference is not None and all((d, study.reference) in pairs for d, _ in pairs)
