"""The three learning tasks: what a metanet predicts, its loss, and how it is scored.

``generalization``  hetero or cnn zoo; an invariant head with one output predicts the network's
                    test accuracy as ``sigmoid(output)`` (accuracies lie in [0, 1], and the
                    squashing keeps a few networks with extreme weights from producing huge
                    predictions that swamp the loss and R²); loss: mean squared error; scores:
                    Kendall tau (model selection), R², MSE.
``inr-class``       inr zoo; an invariant head with 10 outputs classifies the digit a SIREN
                    encodes; loss: cross-entropy; score: accuracy.
``inr-edit``        inr zoo; a weight head edits the SIREN so that it draws the digit dilated
                    (3x3 cross, see :func:`paramgraph.tasks.inr.dilate`). The edited SIREN is run on the
                    8x8 pixel grid straight from the head's output values
                    (:func:`paramgraph.tasks.inr.siren_forward_from_batch`, differentiable), and loss and
                    score are the mean squared error to the dilated image, in function space.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

from .errors import TaskError

if TYPE_CHECKING:
    from torch import Tensor

# torch is imported inside the methods: the command line reads OBJECTIVES for its choices, and
# `paramgraph --help` must not pay for importing torch.


@dataclass(frozen=True)
class Objective:
    """One task: see the module docstring. ``select`` is the validation metric that picks the
    best checkpoint (``higher`` says which way is better)."""

    name: str
    target: str
    zoo_kinds: tuple[str, ...]
    head: str  # "invariant" or "weights"
    out_dim: int
    select: str
    higher: bool

    def check_zoo(self, zoo) -> None:
        """Raise :class:`TaskError` if ``zoo`` cannot serve this task."""
        if zoo.kind not in self.zoo_kinds:
            raise TaskError(f"task '{self.name}' needs a {' or '.join(self.zoo_kinds)} zoo; "
                            f"'{zoo.root}' is a {zoo.kind} zoo")
        if self.name == "inr-edit":
            siren_hidden(zoo)

    def predict(self, net, batch, hidden: list[int] | None = None, structure=None) -> Tensor:
        """The metanet's prediction for ``batch``: ``[B]`` accuracies, ``[B, 10]`` logits or
        ``[B, 64]`` edited-SIREN images. Differentiable. ``structure``: the batch's
        ``GraphStructure`` from ``models.prepare`` (read on the host before the batch moved)."""
        import torch

        out = net(batch) if structure is None else net(batch, structure)
        if self.name == "generalization":
            return torch.sigmoid(out[:, 0])
        if self.name == "inr-class":
            return out
        from .inr import siren_forward_from_batch

        return siren_forward_from_batch(out, hidden)

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        """The training loss of ``pred`` against the batch targets ``y``."""
        import torch.nn.functional as F

        if self.name == "inr-class":
            return F.cross_entropy(pred, y)
        return F.mse_loss(pred, y.to(pred.dtype))

    def metrics(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        """Every score of this task (see :func:`paramgraph.tasks.metrics.task_metrics`)."""
        from .metrics import task_metrics

        return task_metrics(self.name, pred, y)


OBJECTIVES = {
    "generalization": Objective("generalization", "test_acc", ("hetero", "cnn"), "invariant", 1,
                                "kendall_tau", True),
    "inr-class": Objective("inr-class", "label", ("inr",), "invariant", 10, "accuracy", True),
    "inr-edit": Objective("inr-edit", "dilate", ("inr",), "weights", 0, "mse", False),
}


def get_objective(name: str) -> Objective:
    """The :class:`Objective` called ``name``; raises :class:`TaskError` for an unknown task."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise TaskError(f"unknown task '{name}' (known: {', '.join(OBJECTIVES)})") from None


def siren_hidden(zoo) -> list[int]:
    """The hidden widths shared by every SIREN of an inr zoo; raises :class:`TaskError` if the
    zoo mixes SIREN architectures or holds something else."""
    specs = {tuple(r["spec"].get("hidden", ())) for r in zoo.rows if r["spec"].get("family") == "siren"}
    if len(specs) != 1 or any(r["spec"].get("family") != "siren" for r in zoo.rows):
        raise TaskError(f"zoo '{zoo.root}' must hold SIRENs of one architecture for INR editing")
    return list(next(iter(specs)))


def identity_edit_mse(dataset, hidden: list[int]) -> float:
    """The error of *not* editing: each SIREN's own output against its dilated target."""
    import torch
    from torch_geometric.loader import DataLoader

    from .inr import siren_forward_from_batch

    err, n = 0.0, 0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=128):
            out = siren_forward_from_batch(batch, hidden)
            err += float((out - batch.y).pow(2).sum())
            n += out.numel()
    return err / max(n, 1)
