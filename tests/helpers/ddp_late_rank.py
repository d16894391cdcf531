"""A DDP job whose rank 1 makes its Monitor 4 s after rank 0 (a rank busy elsewhere, or one that
never comes, as a Monitor made under `if rank == 0:`): rank 0 waits at the checkpoint's first
collective (``average``: at its first step's averaging of the loss; ``validation``: rank 1 comes
late to a validation's averaging, after the steps'), and says so after
monitor.distributed.WAITED (set to 1 s here).

    torchrun --nproc_per_node=2 tests/helpers/ddp_late_rank.py CHECKPOINTS [average | validation]
"""
import sys
import time

import torch.distributed as dist

import monitor.distributed
from monitor import Checkpoint, Monitor, Scalars
from monitor.log import NullSink

monitor.distributed.WAITED = 1.0
dist.init_process_group("gloo")
validating = sys.argv[2:] == ["validation"]
if dist.get_rank() == 1 and not validating:
    time.sleep(4)
averaging = sys.argv[2:] in (["average"], ["validation"])
with Monitor([Scalars(average=True, average_validation=True)] if averaging else [Checkpoint(sys.argv[1], resume=True)],
             sink=NullSink()) as m:
    if averaging:
        m.step_end(loss=1.0)
    if validating:  # the steps' averaging went well; rank 1 validates late (a validation on rank 0 alone never comes)
        if dist.get_rank() == 1:
            time.sleep(4)
        m.validation_end({"loss": 1.0})
print(f"rank {dist.get_rank()} went on", flush=True)
dist.destroy_process_group()
