"""ProbeSpec: the shape of a probing run (sites, levels, classes), shared by data, model and outputs.

It lives in core because three layers read it: `FeatureDataModule` builds it, `LinearProbes`
sizes its weights from it, and `hiertrain.runs.probe_outputs` names the results with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProbeSpec:
    """Everything `LinearProbes` needs to size its weights and name its results."""

    sites: list[str]
    dims: list[int]
    slots: int
    level_names: list[str]
    classes: list[list[str]]
    prompt_for_level: list[int]
    probed_levels: list[int]
    unseen_test_classes: list[list[str]] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def max_dim(self) -> int:
        return max(self.dims)
