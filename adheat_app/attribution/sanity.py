"""Model-randomisation sanity check (Adebayo et al. 2018): do the heatmaps depend on what the model learned?

For the first fold model with test scans, the weights of its Conv3d and
Linear layers are re-initialised one layer at a time (BatchNorms keep their
trained statistics, as in Adebayo et al.),
cascading from the output layer down to the first convolution. After each
step every method's maps of :data:`SCANS` of that fold's test scans are
derived again (each model prepared by the method, as the runner does) and
compared with the trained model's maps by the Spearman rank correlation of
their absolute values inside the brain mask. A method whose
maps still correlate above :data:`FLAG_THRESHOLD` once every layer is random
does not explain the model and is flagged.

Writes ``group/sanity_check.tsv`` (method, step, layer, spearman, flagged; the
mean over the checked scans) and adds ``SanityCheck`` (layer -> correlation)
to the sidecars of the checked scans' heatmaps. Re-initialisation is seeded
(run seed and step), so the check is reproducible.
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
from adheat_app.attribution.runner import HeatmapRun, heatmap_path
from adheat_app.bids import sidecar_path
from adheat_app.io import read_json, write_json, write_tsv

LOGGER = logging.getLogger(__name__)

#: Test scans of the checked fold.
SCANS = 2
#: Spearman correlation after full randomisation above which a method is flagged.
FLAG_THRESHOLD = 0.9
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


def rank_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Spearman correlation of ``|a|`` and ``|b|`` inside ``mask`` (0 when either is constant)."""
    x, y = np.abs(a[mask]), np.abs(b[mask])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def run_sanity_check(run: HeatmapRun) -> pd.DataFrame:
    """Cascading randomisation of the first fold model with test scans; write the table and sidecars."""
    fold = next((k for k in run.folds if any(a.fold == k for a in run.assignments)), None)
    if fold is None:
        LOGGER.warning("sanity check: no fold model has test scans in this cohort; skipped")
        return pd.DataFrame()
    checked = [a for a in run.assignments if a.fold == fold][:SCANS]
    model = run.models[fold]
    example = run.tensor([checked[0].index])
    layers = learned_layers(model, example)
    masks = [np.asarray(nib.load(a.scan.mask).dataobj) > 0 for a in checked]
    rows, per_scan = [], {a.scan.key: {} for a in checked}
    for method in run.methods:
        trained, _ = run.compute(method, method.prepare(model, example), fold, checked)
        for step in range(1, len(layers) + 1):
            randomised = cascade(model, layers, step, run.config.execution.seed)
            maps, _ = run.compute(method, method.prepare(randomised, example), fold, checked)
            values = [rank_correlation(t, m, mask) for t, m, mask in zip(trained, maps, masks)]
            for a, value in zip(checked, values):
                per_scan[a.scan.key].setdefault(method.name, {})[layers[step - 1]] = round(value, 4)
            rows.append({"method": method.name, "step": step, "layer": layers[step - 1],
                         "spearman": float(np.mean(values))})
        LOGGER.info("sanity check %s: Spearman %.3f after randomising every layer", method.name, rows[-1]["spearman"])
    table = pd.DataFrame(rows)
    final = table.groupby("method")["spearman"].last()
    table["flagged"] = table["method"].map(final > FLAG_THRESHOLD)
    table["fold"] = fold
    table["n_scans"] = len(checked)
    write_tsv(run.derivs.root / "group" / "sanity_check.tsv", table)
    for method in run.methods:
        for a in checked:
            side = sidecar_path(heatmap_path(run.derivs, run.cohort, a.scan, method.name))
            if side.is_file():
                values = read_json(side)
                values["SanityCheck"] = {"Layers": per_scan[a.scan.key][method.name],
                                         "Flagged": bool(final[method.name] > FLAG_THRESHOLD)}
                write_json(side, values)
    return table
