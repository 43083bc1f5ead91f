"""The rules for changing a service's version in place (plugins/filter/version.py)."""

import sys

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.filter.version import version_change


@pytest.mark.parametrize(
    ("running", "wanted", "change"),
    [
        ("1.22.1", "1.22.1", "none"),
        ("1.22.1", "1.22.0", "patch"),
        ("7.0.15", "8.0.2", "upgrade"),
        ("11.8.3", "10.11.14", "downgrade"),
        ("1:10.11.14-0+deb12u2", "1:11.8.3-1", "upgrade"),
        ("9.0.43", "10.1.40", "upgrade"),
    ],
)
def test_the_change_is_classified_by_major_minor_series(running, wanted, change):
    assert version_change(running, wanted)["change"] == change


def test_any_allows_every_change():
    assert version_change("1.26.3", "1.22.1", "any") == {"change": "downgrade", "allowed": True, "reason": ""}


@pytest.mark.parametrize(("running", "wanted"), [("10.11.14", "11.8.3"), ("8.0.2", "8.0.1"), ("7.0.15", "7.0.15")])
def test_no_downgrade_allows_upgrades_and_patches_either_way(running, wanted):
    assert version_change(running, wanted, "no_downgrade")["allowed"]


def test_no_downgrade_refuses_an_older_series_and_says_why():
    result = version_change("8.0.2", "7.0.15", "no_downgrade")
    assert result["allowed"] is False
    assert result["reason"] == (
        "8.0.2 cannot go back to 7.0.15 in place: the data that 8.0.2 has written may not be readable by the "
        "older series 7.0"
    )


def test_rabbitmq_follows_rabbitmqs_own_rule():
    assert version_change("3.10.8", "3.11.28", "rabbitmq")["allowed"]
    refused = version_change("3.10.8", "4.0.5", "rabbitmq")
    assert refused["allowed"] is False
    assert "3.10 -> 3.11 -> 3.12 -> 3.13 -> 4.0" in refused["reason"]
    assert version_change("3.10.8", "3.10.25", "rabbitmq") == {"change": "patch", "allowed": True, "reason": ""}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("latest", "7.0.15"), "running must be a version such as 10.11.6, got 'latest'"),
        (("7.0.15", ""), "wanted must be a version such as 10.11.6, got ''"),
        (("7.0.15", "8.0.2", "never"), "rule must be one of any, no_downgrade, rabbitmq, got 'never'"),
    ],
)
def test_bad_input_names_what_was_expected(args, message):
    with pytest.raises(AnsibleFilterError, match=message):
        version_change(*args)
