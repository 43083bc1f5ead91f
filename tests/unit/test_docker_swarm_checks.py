"""The docker_swarm role's checks of its inventory (plugins/filter/docker_swarm.py): each fault gives a message
that names the variable, and a right inventory gives none."""

import sys

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.filter.docker_swarm import (
    docker_swarm_label_errors,
    docker_swarm_labels,
    docker_swarm_membership_errors,
)

HOSTS = ["node1", "node2", "node3"]


def test_managers_and_workers_of_the_play_are_right():
    assert docker_swarm_membership_errors(["node3"], ["node1", "node2"], HOSTS) == []
    assert docker_swarm_membership_errors(["node1", "node2", "node3"], [], HOSTS) == []


@pytest.mark.parametrize(
    ("managers", "workers", "variable", "words"),
    [
        ([], ["node1", "node2"], "docker_swarm_managers", "at least one host"),
        (["node3"], ["node1", "node3"], "docker_swarm_workers", "node3 also listed in docker_swarm_managers"),
        (["node3", "node3"], [], "docker_swarm_managers", "node3 listed more than once"),
        (["node3"], ["node9"], "docker_swarm_workers", "node9 not among this play's hosts"),
    ],
    ids=["no-manager", "worker-listed-as-manager", "listed-twice", "not-in-the-play"],
)
def test_each_membership_fault_names_its_variable(managers, workers, variable, words):
    errors = docker_swarm_membership_errors(managers, workers, HOSTS)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{variable}:") and words in errors[0]


def test_a_string_instead_of_a_list_is_refused_naming_the_variable():
    with pytest.raises(AnsibleFilterError, match="docker_swarm_workers: expected a list"):
        docker_swarm_membership_errors(["node3"], "node1,node2", HOSTS)


@pytest.mark.parametrize(
    "labels",
    [{}, {"zone": "a"}, {"hit_counter.redis": True}, {"rack": 12, "disk-type": "ssd", "_x": "a b/c:d"}],
)
def test_labels_that_constraints_can_use_pass(labels):
    assert docker_swarm_label_errors(labels, "node1") == []


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        ("zone=a", "expected a mapping of label keys to values"),
        (["zone=a"], "expected a mapping"),
        ({"zone a": "x"}, "key 'zone a' is not a label key"),
        ({"1zone": "x"}, "key '1zone' is not a label key"),
        ({"z": "x"}, "two characters at least"),
        ({"zone": ["a", "b"]}, "zone must be a string, number or boolean"),
        ({"zone": None}, "zone must be a string, number or boolean"),
        ({"zone": "a=b"}, "characters placement constraints cannot compare"),
        ({"zone": "a,b"}, "characters placement constraints cannot compare"),
    ],
    ids=[
        "a-string",
        "a-list",
        "space-in-key",
        "digit-first",
        "one-letter",
        "list-value",
        "null-value",
        "equals",
        "comma",
    ],
)
def test_each_label_fault_names_the_variable_and_the_host(labels, words):
    errors = docker_swarm_label_errors(labels, "node1")
    assert len(errors) == 1, errors
    assert errors[0].startswith("docker_swarm_labels of node1:") and words in errors[0]


def test_labels_reach_docker_as_the_strings_it_stores():
    assert docker_swarm_labels({"a_": True, "b_": False, "c_": 12, "d_": "x"}) == {
        "a_": "true",
        "b_": "false",
        "c_": "12",
        "d_": "x",
    }
