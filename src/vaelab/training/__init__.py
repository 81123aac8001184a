"""How training steps run; ``vaelab.lit`` says what a step computes.

- :mod:`~vaelab.training.policy`: K optimizer steps per Lightning batch
  (``module.steps_per_batch``) and what ``auto`` picks, decided once per fit (``StepPlan``).
- :mod:`~vaelab.training.blocks`: ``StepBlocks`` runs the steps of one Lightning batch, bit for
  bit what K batches of automatic optimization would do; every write into Lightning's private
  state lives here.
- :mod:`~vaelab.training.compile`: ``module.compile`` (``torch.compile`` of the training forward).
- :mod:`~vaelab.training.quiet`: warnings and log lines silenced for a fit or test only, and the
  NVML check paused on a CPU fit.

Nothing here imports ``vaelab.lit``: the module is reached through callables (``loss_fn(x)``,
``before_optimizer_step(opt)``, ``backward(loss)``) and public Lightning objects. A DataModule
takes blocks through one method, ``use_step_blocks(k)``; a callback declares that its per-batch
hooks take them with ``takes_step_blocks = True``.
"""

from vaelab.training.blocks import FastHookNames, StepBlocks, carry_step_count
from vaelab.training.compile import check_compile, training_forward
from vaelab.training.policy import (
    AUTO_STEPS_PER_BATCH,
    StepPlan,
    check_steps_per_batch,
    plan_fit,
    plan_optimizers,
    step_hooks_are_no_ops,
    takes_step_blocks,
)
from vaelab.training.quiet import pause_nvml_check, quiet_lightning

#: Config keys that say how the steps run, not what they compute: a checkpoint resumes under
#: other values (bitwise the same steps; a resume inside an epoch under another K is still
#: refused by the training loader). ``module.cuda_graph`` is a key of runs written before the
#: CUDA-graph path was removed (commit f8bd73e has it).
EXECUTION_KEYS = ("module.steps_per_batch", "module.cuda_graph")

__all__ = [
    "AUTO_STEPS_PER_BATCH",
    "EXECUTION_KEYS",
    "FastHookNames",
    "StepBlocks",
    "StepPlan",
    "carry_step_count",
    "check_compile",
    "check_steps_per_batch",
    "pause_nvml_check",
    "plan_fit",
    "plan_optimizers",
    "quiet_lightning",
    "step_hooks_are_no_ops",
    "takes_step_blocks",
    "training_forward",
]
