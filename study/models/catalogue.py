"""Every model a study's space can produce, with its size: what ``study models`` prints.

Example:
    >>> from study.loading import load
    >>> table = catalogue(load("searchspaces/complexity.yaml"))
    >>> list(table["model"])
    ['attconv', 'lenet5', 'params-matched', 'flops-matched']
"""

from __future__ import annotations

import pandas as pd

from study.config import Study
from study.models.baseline import matched
from study.models.lenet import LeNet, forward_flops, n_params
from study.resolution import combinations, resolve, section_keys
from study.words import configuration


def catalogue(study: Study) -> pd.DataFrame:
    """One row per model: the choices that make it, its widths, parameters and forward FLOPs, and
    for a matched baseline what it matches, the target and the achieved ratio.

    Ranged model keys contribute both ends of their range; data keys take part too, since the
    canvas and the colour channels size the network. Raises ``ValueError`` naming the choice when
    a baseline cannot be matched within its tolerance.
    """
    keys = section_keys(study, "model") + section_keys(study, "data")
    rows = []
    for params in combinations(study, keys):
        resolved = resolve(study, params)
        config, canvas, channels = resolved.model, resolved.data.canvas, resolved.data.channels()
        match = None
        if config.baseline is not None:
            try:
                match = matched(config, canvas, channels)
            except ValueError as err:
                raise ValueError(f"model.baseline (with space choice {configuration(params, short=False)}): "
                                 f"{err}") from None
            config = match.config
        net = LeNet(config, canvas, channels)
        row = {**params, "channels": str(config.channels), "hidden": str(config.hidden),
               "attention": str(config.attention.layers), "n_params": n_params(net),
               "flops": forward_flops(net, canvas, channels)}
        if match is not None:
            row |= {"matches": match.match, "target": match.target, "ratio": round(match.ratio, 4)}
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.astype({"target": "Int64"}) if "target" in table else table
