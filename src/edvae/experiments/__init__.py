"""Studies: the paper's experiment and the ones beyond it, by name.

``get_study(name, quick=..., seeds=...)`` builds a :class:`~edvae.experiments.study.Study`;
:func:`~edvae.experiments.runner.run_study` runs it and writes the report.
"""

from __future__ import annotations

from collections.abc import Callable

from edvae.experiments.disentangle import disentangle_study
from edvae.experiments.paper import paper_study
from edvae.experiments.prior_studies import ablation_study, learned_prior_study, misspecified_study, unknown_prior_study
from edvae.experiments.readings import readings_study
from edvae.experiments.real import real_study
from edvae.experiments.runner import run_study
from edvae.experiments.study import RunSpec, Study
from edvae.registry import Registry

__all__ = ["STUDIES", "get_study", "run_study", "Study", "RunSpec"]

#: Every study by name: a new study is one module plus one line here.
STUDIES: Registry[Callable[..., Study]] = Registry("study")
STUDIES.add("paper", paper_study)
STUDIES.add("unknown-prior", unknown_prior_study)
STUDIES.add("learned-prior", learned_prior_study)
STUDIES.add("misspecified", misspecified_study)
STUDIES.add("ablation", ablation_study)
STUDIES.add("real", real_study)
STUDIES.add("readings", readings_study)
STUDIES.add("disentangle", disentangle_study)


def get_study(name: str, **kwargs) -> Study:
    """The study registered under ``name`` (an unknown name is refused with the choices)."""
    return STUDIES.get(name)(**kwargs)
