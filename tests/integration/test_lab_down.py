"""make test's last step: the lab taken down after the lab tests ran on it side by side (make integration-lab
keeps it up between their pytest runs), and nothing of it left on this machine. Runs only when asked for
(MOORING_LAB_DOWN=1), so that a plain `pytest tests/integration` does not take the lab down halfway."""

import os

import pytest

from conftest import lab_down_and_check


@pytest.mark.skipif(os.environ.get("MOORING_LAB_DOWN") != "1", reason="make integration-lab runs it, last")
def test_the_lab_goes_down_and_leaves_nothing_behind():
    lab_down_and_check()
