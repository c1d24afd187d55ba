"""Model-randomisation sanity check (Adebayo et al. 2018): do the heatmaps depend on what the model learned?

Scans: :data:`SCANS` (at least) drawn from the test scans of *every* fold
model (an equal share per fold, seeded by the run seed; fewer only where a
fold has fewer), each explained by its own fold model. For each fold model
the weights of its Conv3d and Linear layers are re-initialised one layer at
a time (BatchNorms keep their trained statistics, as in Adebayo et al.),
cascading from the output layer down to the first convolution. After each
step every method's maps of the checked scans are derived again (each model
prepared by the method, as the runner does) and compared by the Spearman rank
correlation of absolute values inside the brain mask

- with the trained model's maps (``spearman``): a method that explains the
  model loses this similarity as layers are randomised;
- with the scan itself, ``|input|`` (``spearman_input``, also for the
  trained model at step 0): a map that mostly reproduces the image (an
  edge detector) stays similar to it whatever the weights.

Per method, ``drop_layer`` is the first randomised layer after which the
mean similarity to the trained maps falls below :data:`DROP_BELOW` (empty
when it never does), and a method whose maps still correlate above
:data:`FLAG_THRESHOLD` once every layer is random is flagged.

Writes ``group/sanity_check.tsv`` (method, step, layer, spearman,
spearman_input, drop_layer, flagged, folds, n_scans; means over the checked
scans) and adds ``SanityCheck`` (per-layer correlations with the trained and
the input map, the drop layer, the flag) to the sidecars of the checked
scans' heatmaps, under the output folder's lock. Re-initialisation is seeded
(run seed and step), so the check is reproducible. The group level runs it
(:func:`sanity_check`) after the heatmaps, before the evaluation.

It then writes, for every scan the run explains, each method's map of the
fully randomised model (every learned layer re-initialised: the cascade's last
step) as ``desc-<Method>Random_heatmap.nii.gz``
(:class:`RandomModelControl`). The group evaluation scores those maps as
controls, exactly like the method's own maps, so a method's overlap with a
reference can be compared with what the same method finds in a model that
learned nothing. Last, the data randomisation (:mod:`.data_randomisation`)
writes each method's maps of models trained on permuted labels
(``<Method>PermutedLabels`` controls).
"""

from __future__ import annotations

import copy
import logging
import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn

from adheat_app.attribution.canonize import traced_forward
from adheat_app.attribution.control_maps import ControlMethod
from adheat_app.attribution.data_randomisation import run_data_randomisation
from adheat_app.attribution.fold_models import Assignment
from adheat_app.attribution.runner import HeatmapRun, heatmap_run
from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.io import read_json, write_json, write_tsv
from adheat_app.layout import RANDOM_SUFFIX, SANITY_CHECK, group_table, sidecar_path

LOGGER = logging.getLogger(__name__)

#: Test scans checked in all, drawn evenly from every fold's test scans.
SCANS = 10
#: Spearman correlation after full randomisation above which a method is flagged.
FLAG_THRESHOLD = 0.9
#: Similarity to the trained maps below which the randomisation is said to have changed them.
DROP_BELOW = 0.5
LEARNED = (nn.Conv3d, nn.Linear)


def learned_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the layers with learned weights, from the output back to the input (reversed call order)."""
    order: list[str] = []
    names = {module: name for name, module in model.named_modules()}
    handles = [m.register_forward_pre_hook(lambda mod, inputs: order.append(names[mod]))
               for m in model.modules() if isinstance(m, LEARNED)]
    traced_forward(model, example, handles)
    return list(reversed(order))


def cascade(model: nn.Module, layers: list[str], steps: int, seed: int) -> nn.Module:
    """A copy of ``model`` with its top ``steps`` layers of ``layers`` re-initialised (seeded per layer)."""
    randomised = copy.deepcopy(model)
    for step, name in enumerate(layers[:steps]):
        module = randomised.get_submodule(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + step)
            module.reset_parameters()
        for param in module.parameters():
            param.requires_grad_(False)
    return randomised.eval()


class RandomModelControl(ControlMethod):
    """A method's maps of its model with every learned layer re-initialised (control ``<Method>Random``).

    Each fold model is randomised by :func:`cascade` over all of
    :func:`learned_layers` (seeded by the run seed, BatchNorm statistics kept)
    and then prepared and explained by the wrapped method unchanged.
    """

    suffix = RANDOM_SUFFIX

    def control(self) -> dict:
        """How the model was randomised."""
        return {"Control": "randomised model",
                "RandomisedLayers": "all learned layers (Conv3d, Linear) re-initialised; BatchNorm statistics kept",
                "RandomisationSeed": self.context.seed}

    def control_model(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """The fully randomised copy of ``model``."""
        layers = learned_layers(model, example)
        return cascade(model, layers, len(layers), self.context.seed)


def summed(maps: np.ndarray) -> np.ndarray:
    """Maps ``(n, X, Y, Z)``, summing the channels of several-channel maps ``(n, C, X, Y, Z)`` (as written)."""
    return maps if maps.ndim == 4 else maps.sum(axis=1)


def rank_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Spearman correlation of ``|a|`` and ``|b|`` inside ``mask`` (0 when either is constant)."""
    x, y = np.abs(a[mask]), np.abs(b[mask])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def drawn_scans(run: HeatmapRun) -> dict[int, list[Assignment]]:
    """The checked scans per fold: an even share of :data:`SCANS` from each fold's test scans (seeded draw)."""
    tested = {k: [a for a in run.fold_models.assignments if a.fold == k] for k in run.folds}
    tested = {k: own for k, own in tested.items() if own}
    share = -(-SCANS // max(1, len(tested)))
    rng = np.random.default_rng(run.config.execution.seed)
    return {k: [own[i] for i in sorted(rng.choice(len(own), min(share, len(own)), replace=False))]
            for k, own in tested.items()}


def run_sanity_check(run: HeatmapRun) -> pd.DataFrame:
    """Cascading randomisation of every fold model with test scans; write the table and the sidecars."""
    drawn = drawn_scans(run)
    if not drawn:
        LOGGER.warning("sanity check: no fold model has test scans in this cohort; skipped")
        return pd.DataFrame()
    checked = [a for own in drawn.values() for a in own]
    masks = {a.scan.key: np.asarray(nib.load(a.scan.mask).dataobj) > 0 for a in checked}
    images = {a.scan.key: run.fold_models.tensor([a.index])[0].abs().sum(0).cpu().numpy() for a in checked}
    models = run.fold_models
    layers = {k: learned_layers(models.models[k], models.tensor([own[0].index])) for k, own in drawn.items()}
    steps = len(next(iter(layers.values())))
    rows, per_scan = [], {a.scan.key: {} for a in checked}
    for method in run.methods:
        to_trained: dict[int, list[float]] = {step: [] for step in range(steps + 1)}
        to_input: dict[int, list[float]] = {step: [] for step in range(steps + 1)}
        for k, own in drawn.items():
            model, example = run.fold_models.models[k], run.fold_models.tensor([own[0].index])
            trained = summed(run.compute(method, method.prepare(model, example), k, own)[0].maps)
            for step in range(steps + 1):
                if step == 0:
                    maps = trained
                else:
                    randomised = cascade(model, layers[k], step, run.config.execution.seed)
                    maps = summed(run.compute(method, method.prepare(randomised, example), k, own)[0].maps)
                name = "trained" if step == 0 else layers[k][step - 1]
                for a, t, m in zip(own, trained, maps):
                    key = a.scan.key
                    value, plain = rank_correlation(t, m, masks[key]), rank_correlation(images[key], m, masks[key])
                    to_trained[step].append(value)
                    to_input[step].append(plain)
                    entry = per_scan[key].setdefault(method.name, {"Layers": {}, "InputSimilarity": {}})
                    if step:
                        entry["Layers"][name] = round(value, 4)
                    entry["InputSimilarity"][name] = round(plain, 4)
        names = ["trained", *next(iter(layers.values()))]
        for step in range(steps + 1):
            rows.append({"method": method.name, "step": step, "layer": names[step],
                         "spearman": float(np.mean(to_trained[step])), "spearman_input": float(np.mean(to_input[step]))})
        LOGGER.info("sanity check %s: Spearman %.3f with the trained maps after randomising every layer (%.3f with "
                    "|input|)", method.name, rows[-1]["spearman"], rows[-1]["spearman_input"])
    table = pd.DataFrame(rows)
    randomised = table[table["step"] > 0]
    final = randomised.groupby("method")["spearman"].last()
    drop = {m: next(iter(group.loc[group["spearman"] < DROP_BELOW, "layer"]), "")
            for m, group in randomised.groupby("method")}
    table["drop_layer"] = table["method"].map(drop)
    table["flagged"] = table["method"].map(final > FLAG_THRESHOLD)
    table["folds"] = ",".join(str(k) for k in drawn)
    table["n_scans"] = len(checked)
    with run.derivs.lock():  # concurrent runs rewrite group tables and heatmap sidecars
        write_tsv(group_table(run.derivs.root, SANITY_CHECK), table)
        for method in run.methods:
            for a in checked:
                side = sidecar_path(run.writer.heatmap(a, method.name))
                if side.is_file():
                    values = read_json(side)
                    values["SanityCheck"] = {**per_scan[a.scan.key][method.name],
                                             "DropBelowHalfAt": drop[method.name],
                                             "Flagged": bool(final[method.name] > FLAG_THRESHOLD)}
                    write_json(side, values)
    for method in run.methods:
        run.run_method(RandomModelControl(method))
    return table


def sanity_check(config: RunConfig, derivs: Derivatives, cohort: Cohort) -> pd.DataFrame:
    """``--sanity-check`` at the group level: :func:`run_sanity_check` of the trained fold models of ``--model``,
    then the data randomisation (:func:`~.data_randomisation.run_data_randomisation`)."""
    with heatmap_run(config, derivs, cohort) as run:
        if run is None:
            return pd.DataFrame()
        table = run_sanity_check(run)
    run_data_randomisation(config, derivs, cohort)
    return table
