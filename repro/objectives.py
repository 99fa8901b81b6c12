"""FZ objectives, one entry each (as Lucent's ``optvis.objectives``): what an FZ of channel c maximizes.

An objective reads the tap's values for a batch with one image per channel and gives image i's value
for channel ``channels[i]``. ``center`` says whether it needs only the center neuron (the forward then
keeps ``[N, C]`` instead of the full maps); ``group`` is the store group its FZs go to. The profile's
``fz.objective`` and the CLI's ``--objective`` offer the names of this registry.

No torch import at module level: profiles are checked against these names without loading torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Objective:
    group: str
    center: bool
    value: Callable  # (tap values, channels [n]) → [n]


def neuron(centers, channels):
    """The center neuron of channel ``channels[i]`` (the papers' objective); ``centers`` is [N, C]."""
    return centers.gather(1, channels[:, None]).squeeze(1)


def channel(maps, channels):
    """The mean over positions of channel ``channels[i]``'s map (for the figure grids); ``maps`` is [N, C, H, W]."""
    import torch  # only once an FZ is made

    rows = torch.arange(len(channels), device=maps.device)
    return maps[rows, channels].float().mean(dim=(-2, -1))


OBJECTIVES = {
    "neuron": Objective(group="fz", center=True, value=neuron),
    "channel": Objective(group="fz_channel", center=False, value=channel),
}
