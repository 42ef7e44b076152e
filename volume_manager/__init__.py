"""The CDP engine: primary backstore, write log, markers, delta maps, history.

Public entry points: :class:`Volume` (a protected volume) and the
:class:`BlockDevice` interface it shares with point-in-time views and plain
files. FORMAT.md beside this file is the on-disk specification.
"""

import os

# numpy's OpenBLAS starts one thread per core that spins after every call, and
# process CPU time counts them: measured at 8% of a write-heavy run that never
# uses BLAS. The engine only does element-wise work; one thread is enough.
# Set before numpy is first imported (an explicit setting is left alone).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from volume_manager.blockdev import BlockDevice, FileBlockDevice  # noqa: E402
from volume_manager.errors import EngineError  # noqa: E402
from volume_manager.volume import Volume, VolumeOptions  # noqa: E402

__all__ = ["BlockDevice", "EngineError", "FileBlockDevice", "Volume", "VolumeOptions"]
