# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The oldest Python mooring's modules run on, on the managed host: 3.9 (EL9's /usr/bin/python3, Debian 11's).

Every module calls :func:`require_python` first, so a host whose interpreter is older gets one message that says
what to set instead of a traceback from deep inside the module (EL8's platform-python 3.6 being the usual case).
"""

from __future__ import annotations

import sys

MINIMUM = (3, 9)


def floor_message(module_name, version_info, executable):
    """The refusal for an interpreter below the floor, or None when ``version_info`` is at or above it."""
    if tuple(version_info[:2]) >= MINIMUM:
        return None
    return (
        f"{module_name} needs Python {MINIMUM[0]}.{MINIMUM[1]} or later on the managed host; its interpreter "
        f"{executable} is Python {version_info[0]}.{version_info[1]}. Set ansible_python_interpreter to a newer "
        "one (on EL8: dnf install python39, then /usr/bin/python3.9)"
    )


def require_python(module, module_name):
    message = floor_message(module_name, sys.version_info, sys.executable)
    if message:
        module.fail_json(msg=message, python_version=".".join(str(part) for part in sys.version_info[:3]))
