"""Soak: real-stack matrices run by scripts (tools/soak_*.py), not by the suite
(pytest's testpaths are tests/unit and tests/functional): they take ~7 min a run."""
from tests.functional.conftest import *  # noqa: F401,F403  (the lab fixtures)
