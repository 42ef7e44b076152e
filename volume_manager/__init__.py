"""The CDP engine: primary backstore, write log, markers, delta maps, history.

Public entry points: :class:`Volume` (a protected volume) and the
:class:`BlockDevice` interface it shares with point-in-time views and plain
files. FORMAT.md beside this file is the on-disk specification.
"""

from volume_manager.blockdev import BlockDevice, FileBlockDevice
from volume_manager.errors import EngineError
from volume_manager.volume import Volume, VolumeOptions

__all__ = ["BlockDevice", "EngineError", "FileBlockDevice", "Volume", "VolumeOptions"]
