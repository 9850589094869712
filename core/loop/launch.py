"""``omnitune train --nproc N``: N local processes through torchrun's Python API.

The same as ``torchrun --standalone --nproc_per_node N -m omnitune.core.cli train ...``: a c10d
rendezvous on a free local port, no restarts, every worker running the ordinary ``train`` command.
For several machines use ``torchrun`` (or ``accelerate launch``) itself; see the README.
"""

from __future__ import annotations

import os
import sys
import uuid


def launch_local(nproc: int, cli_args: list[str]) -> int:
    """Run ``omnitune <cli_args>`` in ``nproc`` processes; returns the exit status to use (0, or the
    first failed worker's: 2 for a reported error, 130 for an interruption)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # As torchrun does: without a setting, each worker gets an equal share of the cores rather than
    # all of them (N processes x all cores oversubscribes the machine).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, sys.executable)("-m", "omnitune.core.cli", *cli_args)
    except ChildFailedError as exc:
        # Each worker has already printed its own one-line error; pass its exit status on.
        codes = [f.exitcode for f in exc.failures.values()]
        return 130 if 130 in codes else (codes[0] if codes and codes[0] > 0 else 1)
    return 0
