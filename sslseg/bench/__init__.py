"""`python -m sslseg.bench`: what sslseg's data path and training step buy, measured on this device.

Per task (SimMIM pretraining, segmentation fine-tune), images/s and peak memory of
  a  sslseg's real step: HDF5 pack → Batches → on-device augment → objective → optimizer,
     with the batch size, autocast and compile choice the workflow would use here;
  b  the loop a user would otherwise write: the same model fed by PIL decode + per-image
     torchvision transforms from JPEGs in DataLoader workers; on CPU eager fp32 with 2
     workers, on CUDA a careful user's (bf16, fused AdamW, a's compile choice, a worker per
     core, JPEGs resized once beforehand: `data.baseline_settings`);
  c  the model step alone on a batch already on the device (the ceiling for a);
  d  the data path alone (read + transfer + augment, no model);
plus evaluation and pack (decode + resize) images/s. a, b, c, d run in interleaved
rounds so that load from other processes shifts them alike and the ratios stay honest.
Figures and targets: BENCHMARKS.md.

Modules: `timing` (interleaved rounds, peak memory, FLOPs, the planner's `step_rate` and
`settings_flops`), `data` (synthetic JPEGs, the user's DataLoader), `tasks` (one measurement
set per task), `report` (ratios, targets, the table), `__main__` (the command line;
`--efficiency RUN`: a finished run's whole-grid efficiency, `efficiency`), `gpu_smoke`
(`python -m sslseg.bench.gpu_smoke`: fused attention, host syncs, short GPU pretrainings),
`profile` (`python -m sslseg.bench.profile`: a step's milliseconds per batch size, and its share
in matrix products, attention, dropout masks and the optimizer).
"""

from __future__ import annotations

import sys
from typing import Any, Callable


def run_cli(main: Callable[[list[str] | None], Any], prog: str, argv: list[str] | None = None,
            prefix: str = "error: ") -> Any:
    """`main(argv)`, with a problem in the input (config, flags, no CUDA) as one line on stderr,
    "<prog>: <prefix><message>", and exit status 2: the bench commands' shared front door."""
    from sslseg.io import UserError

    try:
        return main(argv)
    except UserError as e:
        print(f"{prog}: {prefix}{e}", file=sys.stderr)
        sys.exit(2)
