"""The speed engine: many models trained as one, behind a small public interface.

- :mod:`.stacked`: the stacked kernels (M models' weights as one tensor per layer, their
  log-weights in a few batched products; the matrix-product kernel is chosen here);
- :mod:`.noise`: counter-based random numbers (a hash of seed, purpose and step);
- :mod:`.exact`: :class:`Fleet`, the exact trainer (each member equals itself trained alone by
  :func:`iwae_tutorial.train.fit`);
- :mod:`.fast`: :func:`fit_fast`, the fast trainer (device-side data order, counter-based or
  device-generator noise, CUDA-graph blocks, frozen diverging members).

The rest of the package uses these names, and the stacked kernels of :mod:`.stacked` (which
evaluation shares); the other modules are the engine's own (``tests/test_layout.py``).
"""

from .exact import FLEET_CHECKPOINT, FitResult, Fleet, FleetMember, StopFlag, table1_configs
from .fast import STATE_DIR, FastResult, fit_fast, projected_hours

__all__ = ["Fleet", "FleetMember", "FitResult", "FLEET_CHECKPOINT", "StopFlag", "table1_configs",
           "fit_fast", "FastResult", "STATE_DIR", "projected_hours"]
