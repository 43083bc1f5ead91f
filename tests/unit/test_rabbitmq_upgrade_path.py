"""RabbitMQ's rolling-upgrade rules (plugins/filter/rabbitmq.py): one minor series at a time, 3.13 before 4.0,
never back to an older series."""

import sys

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.filter.rabbitmq import rabbitmq_upgrade_path


@pytest.mark.parametrize(
    ("running", "wanted", "steps"),
    [
        ("3.10.8", "3.10.25", ["3.10"]),
        ("3.10.25", "3.10.8", ["3.10"]),
        ("3.10.8", "3.11.28", ["3.10", "3.11"]),
        ("3.13.7", "4.0.5", ["3.13", "4.0"]),
        ("4.0.5", "4.1.0", ["4.0", "4.1"]),
        ("4.0.5-6+deb13u2", "4.1.2", ["4.0", "4.1"]),
    ],
)
def test_a_patch_release_or_the_next_series_is_allowed(running, wanted, steps):
    assert rabbitmq_upgrade_path(running, wanted) == {"steps": steps, "allowed": True, "reason": ""}


def test_debian_12s_3_10_cannot_roll_to_debian_13s_4_0_and_the_reason_names_every_series():
    path = rabbitmq_upgrade_path("3.10.8", "4.0.5")
    assert path["allowed"] is False
    assert path["steps"] == ["3.10", "3.11", "3.12", "3.13", "4.0"]
    assert "one minor series at a time (3.10 -> 3.11 -> 3.12 -> 3.13 -> 4.0)" in path["reason"]
    assert "blue-green" in path["reason"]


@pytest.mark.parametrize(("running", "wanted"), [("4.0.5", "3.13.7"), ("3.11.2", "3.10.8")])
def test_an_older_series_is_refused_because_feature_flags_cannot_be_disabled(running, wanted):
    path = rabbitmq_upgrade_path(running, wanted)
    assert path["allowed"] is False
    assert "cannot go back" in path["reason"]
    assert "feature flags, once enabled, cannot be disabled" in path["reason"]


@pytest.mark.parametrize("bad", ["", "latest", None])
def test_a_version_that_is_not_one_is_refused_naming_which(bad):
    with pytest.raises(AnsibleFilterError, match="wanted must be a RabbitMQ version"):
        rabbitmq_upgrade_path("3.10.8", bad)
