import os
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO_DIR / "ansible.cfg"))
