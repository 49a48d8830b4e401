"""scripts/make_report.py: every row trains with the settings it was measured with, whatever
today's task defaults are, so the README's commands reproduce its tables."""

from __future__ import annotations

import pytest

from paramgraph.models.defaults import TRAINING
from paramgraph.tasks.objectives import get_objective
from paramgraph.tasks.train import TrainConfig, with_task_defaults
from script_loader import load_script


@pytest.fixture(scope="module")
def report():
    return load_script("make_report")


def _config(report, method: str, task: str):
    job = {"task": task, "zoo": "zoo", "mode": method, "seed": 0, "epochs": 1, "hidden": 32,
           "layers": 3}
    return with_task_defaults(report.job_config(job), get_objective(task))


def _settings(cfg) -> dict:
    return {**{k: getattr(cfg, k) for k in TRAINING},
            "output_readout": cfg.model_kwargs.get("output_readout"),
            "soft_signs": cfg.model_kwargs.get("soft_signs", False)}  # MetaNet's default


def test_rows_keep_the_defaults_they_were_measured_with(report):
    previous = {"weight_decay": 0.1, "ema": 0.0, "rank_loss": 0.0, "output_readout": False,
                "soft_signs": True}
    today = {"weight_decay": 0.3, "ema": 0.99, "rank_loss": 1.0, "output_readout": True,
             "soft_signs": False}
    assert _settings(_config(report, "quasi", "generalization")) == previous
    assert _settings(_config(report, "perm-rank", "generalization")) == {**previous,
                                                                         "rank_loss": 1.0}
    assert _settings(_config(report, "quasi-combo", "generalization")) == {**today,
                                                                           "soft_signs": True}
    # today's generalization defaults; the swap twins split differently only
    for method in ("quasi-combo-hard", "quasi-combo-hard-swap"):
        assert _settings(_config(report, method, "generalization")) == today
    assert _config(report, "quasi-combo-hard-swap", "generalization").splits == "swap"
    # the control: without the pinning, the same run trains with today's defaults
    bare = with_task_defaults(TrainConfig(task="generalization", zoo="zoo"),
                              get_objective("generalization"))
    assert _settings(bare) == today
    # other tasks' rows run at those tasks' own defaults (inr-class: probes and readout)
    inr = _config(report, "quasi", "inr-class")
    assert inr.model_kwargs == {"probes": 64, "output_readout": True, "soft_signs": True}
    assert {k: getattr(inr, k) for k in TRAINING} == TRAINING
