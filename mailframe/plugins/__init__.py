"""
Where mailframe looks for component plugins
(:class:`~mailframe.interfaces.IComponentMaker`).

Like :mod:`twisted.plugins`, this package extends its path with every
``mailframe/plugins/`` directory on ``sys.path``, so any distribution can
ship ``mailframe/plugins/theirs.py``.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
