"""The `repro` command line.

\b
The pipeline, one store per run (a zarr directory you can open with xarray):
  repro fz       --profile P --store S   feature visualizations of every tap's center neurons
  repro natural  --profile P --store S   natural-image activations and top-9 exemplars
  repro metrics  --store S               stimulus responses, mix ratios, scale criteria
  repro ablate   --store S               scale-robust ablation of invariant vs random channels
  repro alignment --store S              SAEs and alignment metrics: superposed toy systems, two networks
  repro report   --store S --out DIR     both papers' figures, checked against the published numbers
`repro pipeline --profile toy --store S` runs them all; `repro profile show toy` prints a profile.
`repro status --store S` shows each group (complete, partial, stale); `repro check --store S` verifies chunks.
"""
from __future__ import annotations

from repro import cli as compute
from report import commands as report_commands

# Joined here, above both packages, so that neither imports the other; the options, the version and the error
# handling are the compute group's.
main = compute.Commands(name="repro", help=__doc__, callback=compute.main.callback, params=compute.main.params,
                        commands={**compute.main.commands, **report_commands.COMMANDS})
