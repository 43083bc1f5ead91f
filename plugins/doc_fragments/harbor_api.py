# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The connection options of every module that talks to Harbor's REST API v2.0.
    DOCUMENTATION = r"""
options:
  harbor_url:
    description:
      - Harbor's base URL, for example C(https://harbor.example.com).
      - If not set, the environment variable C(HARBOR_URL). C(module_defaults) for C(group/mooring.ops.harbor)
        sets it once for every Harbor module of a play.
    type: str
    required: true
  username:
    description:
      - A Harbor user allowed to make the change (an admin for system-level objects).
      - If not set, the environment variable C(HARBOR_USERNAME).
    type: str
  password:
    description:
      - Its password. Never logged.
      - If not set, the environment variable C(HARBOR_PASSWORD).
    type: str
  validate_certs:
    description: Verify Harbor's TLS certificate.
    type: bool
    default: true
  ca_cert:
    description: CA file that signed Harbor's certificate.
    type: path
  timeout:
    description: Seconds for each API call.
    type: int
    default: 60
"""
