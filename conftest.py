"""Pytest root conftest: its presence puts the repository root on ``sys.path`` (pytest's
``prepend`` import mode), so every test can import shared helpers as ``tests.helpers``."""
