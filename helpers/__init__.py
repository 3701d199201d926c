"""Helpers for the test-time adaptation notebooks: every line of real logic lives here.

Modules, one per concept: ``paths``, ``data``, ``views``, ``models``, ``tta``,
``evaluate``, ``plots``, ``batch``, ``cluster``.
"""

__version__ = "0.1.0"
