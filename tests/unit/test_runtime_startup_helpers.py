"""What the runtime's start uses instead of the standard library's heavier modules (see the README's benchmark):
fastjson instead of json, lean instead of contextlib and signal, paths.remove_tree instead of shutil.rmtree. Each
must behave as what it replaces for everything the runtime uses it for, and remove_tree better where rmtree fails.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.nsruntime import fastjson, lean, paths

DOCUMENTS = [
    {"ociVersion": "1.0.2", "process": {"args": ["sh", "-c", 'echo "$A"\n'], "env": ["A=é\u2028😀"]}},
    {"b": 1, "a": [1, 2.5, -0.0, 1e300, 10**30, None, True, False, "", {}, []], "nested": {"z": {"y": [{}]}}},
    [],
    "text",
    0,
    -1.5e-7,
    None,
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_fastjson_writes_and_reads_what_json_does(document):
    for sort_keys in (False, True):
        assert fastjson.dumps(document, sort_keys=sort_keys) == json.dumps(document, sort_keys=sort_keys)
    text = json.dumps(document, indent=2)
    assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(f" \n\t{text}\r\n ") == document
    assert fastjson.dumps(document, indent=1) == json.dumps(document, indent=1)


def test_fastjson_keeps_jsons_special_values_and_refusals():
    assert math.isnan(fastjson.loads("NaN")) and fastjson.loads("[-Infinity]") == [float("-inf")]
    assert fastjson.dumps(float("inf")) == "Infinity"
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        fastjson.dumps({"a": {1}})
    looped = []
    looped.append(looped)
    with pytest.raises(ValueError, match="Circular reference detected"):
        fastjson.dumps(looped)


@pytest.mark.parametrize("text", ["", "   ", "{", "[1,]", "1 2", '{"a": 1} x', "nul", '"\t"', "{'a': 1}"])
def test_fastjson_fails_as_json_does_with_its_message(text):
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as found:
        fastjson.loads(text)
    assert str(found.value) == str(expected.value)


def test_lean_suppress_and_undo_behave_as_contextlibs():
    with lean.suppress(FileNotFoundError, ValueError):
        raise ValueError("quiet")
    with pytest.raises(KeyError), lean.suppress(FileNotFoundError):
        raise KeyError("loud")
    done = []

    def fail(message):
        raise RuntimeError(message)

    with pytest.raises(RuntimeError, match="second"), lean.Undo() as undo:
        undo.callback(done.append, "first registered")
        undo.callback(fail, message="second")
        undo.callback(done.append, "last registered")
    assert done == ["last registered", "first registered"]  # reverse order, and on past the failing step


def test_remove_tree_removes_deeper_than_the_recursion_limit_and_never_follows_a_link(tmp_path):
    victim = tmp_path / "host"
    victim.mkdir()
    (victim / "keep").write_text("the host's")
    top = tmp_path / "layer"
    top.mkdir()
    (top / "to-host").symlink_to(victim)
    (top / "file-on-host").symlink_to(victim / "keep")
    depth = sys.getrecursionlimit() * 3
    try:
        fd = os.open(top, os.O_RDONLY)
        try:
            for _level in range(depth):  # deeper than PATH_MAX allows a path to name: one level at a time
                os.mkdir("d", dir_fd=fd)
                below = os.open("d", os.O_RDONLY, dir_fd=fd)
                os.close(fd)
                fd = below
            os.symlink(victim, "to-host", dir_fd=fd)
            os.close(os.open("file", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        finally:
            os.close(fd)
        paths.remove_tree(top)
        assert not top.exists()
        assert sorted(os.listdir(victim)) == ["keep"] and (victim / "keep").read_text() == "the host's"
    finally:
        # Whatever a failure left: pytest's own clean-up of old temporary directories recurses (shutil.rmtree)
        # and would fail every later session on this tree. GNU rm walks it without recursion.
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)
    paths.remove_tree(top)  # gone already: nothing to do, no error
    single = tmp_path / "single"
    single.write_text("x")
    paths.remove_tree(single)
    assert not single.exists()
