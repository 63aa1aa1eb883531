"""The paper's cost columns, measured: each method of a table trained for a few steps on random weights.

Time, memory and parameter counts do not depend on the values of the weights or of the data. For every method of
an experiment manifest (`experiments/<name>.yaml`) this composes the experiment's Hydra config, builds its real
architecture with random weights (`model.pretrained=null`, no download), feeds synthetic batches of exactly the
experiment's shapes (micro-batch, sequence length, the data set's input size from the data code itself) and runs
N optimizer steps through the task's own LightningModule in a Lightning Trainer (its `training_step`, optimizer,
schedule and gradient clipping; the experiment's precision, strategy and checkpointing). Measured per method:

- `step_ms`: median wall-clock of a training step (forward, backward, clipping, optimizer), the first `warmup`
  steps excluded; one step is one micro-batch (no accumulation);
- `saved_bytes`: the storages autograd saves during the model's forward in the real step, each counted once,
  parameters and buffers excluded (what the dry run traces; with activation checkpointing only what is saved
  outside the checkpointed blocks);
- GPU: `peak_allocated_bytes`, `peak_reserved_bytes` over the steps (`torch.cuda.max_memory_*`);
- CPU: `peak_rss_bytes` (the process, sampled), and `state_bytes` (parameters, buffers, gradients and the
  optimizer's tensors as they are after the steps); `measured_bytes` = state + saved (the GPU: peak allocated).

Beside them: the dry run's estimate of the same setting (`est_*`, traced for the measuring device) and of the
experiment as configured (`dryrun_total_bytes`: its world size and strategy, for CUDA), and the paper's time and
memory columns (`results/paper/`), all as ratios to 1LoRA (or BitFit) in the same run.
"""

from .measure import CostsError, Settings, device_name, measure, run_costs
from .tables import COLUMNS, add_ratios, markdown, paper_costs, plot_ratios, write_outputs

__all__ = [
    "COLUMNS", "CostsError", "Settings", "add_ratios", "device_name", "markdown", "measure", "paper_costs",
    "plot_ratios", "run_costs", "write_outputs",
]  # fmt: skip
