"""A DDP job whose rank 1 makes its Monitor 4 s after rank 0 (a rank busy elsewhere, or one that
never comes, as a Monitor made under `if rank == 0:`): rank 0 waits at the checkpoint's first
collective, and says so after monitor.distributed.WAITED (set to 1 s here)."""
import sys
import time

import torch.distributed as dist

import monitor.distributed
from monitor import Checkpoint, Monitor
from monitor.log import NullSink

monitor.distributed.WAITED = 1.0
dist.init_process_group("gloo")
if dist.get_rank() == 1:
    time.sleep(4)
Monitor([Checkpoint(sys.argv[1], resume=True)], sink=NullSink()).close()
print(f"rank {dist.get_rank()} went on", flush=True)
dist.destroy_process_group()
