"""The refusal a host below the Python floor gets (a 3.8 interpreter cannot be had here; Debian 11's 3.9, the
floor itself, runs the modules in tests/integration/test_python_floor.py)."""

import sys

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.python_floor import MINIMUM, floor_message


def test_an_interpreter_below_the_floor_is_refused_with_what_to_set_instead():
    message = floor_message("mooring.ops.ns_image", (3, 6, 8, "final", 0), "/usr/libexec/platform-python")
    assert message == (
        "mooring.ops.ns_image needs Python 3.9 or later on the managed host; its interpreter "
        "/usr/libexec/platform-python is Python 3.6. Set ansible_python_interpreter to a newer one "
        "(on EL8: dnf install python39, then /usr/bin/python3.9)"
    )
    assert floor_message("mooring-ctr", (3, 8, 18), "/usr/bin/python3").startswith("mooring-ctr needs Python 3.9")


def test_the_floor_and_above_pass():
    assert MINIMUM == (3, 9)
    for version in ((3, 9, 0), (3, 9, 2), (3, 11, 2), (3, 13, 5), (4, 0, 0)):
        assert floor_message("mooring.ops.ns_image", version, "/usr/bin/python3") is None
