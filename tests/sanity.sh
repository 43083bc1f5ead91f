#!/usr/bin/env bash
# ansible-test sanity on the collection, offline. ansible-test wants the tree at
# ansible_collections/mooring/ops (a real directory, not a symlink) and bootstraps pip in each sanity venv
# with a script it would download; a stand-in for that script is put in its cache (see shared LAB.md).
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"

pip_version=$(python - <<'PY'
import pathlib, re, ansible_test
source = pathlib.Path(ansible_test.__file__).parent.joinpath("_internal/python_requirements.py").read_text()
print(re.search(r"pip='([^']+)'", source).group(1))
PY
)
cache="$HOME/.ansible/test/cache"
bootstrap="$cache/get_pip_${pip_version//./_}.py"
mkdir -p "$cache"
if ! ls "$cache"/pip-"$pip_version"-*.whl >/dev/null 2>&1; then
    pip download --quiet --no-deps --dest "$cache" "pip==$pip_version"
fi
cat > "$bootstrap" <<PY
# Stand-in for get-pip.py: install with the cached pip wheel; arguments are pip install arguments.
import glob, os, runpy, sys
wheel = glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pip-$pip_version-*.whl"))[0]
sys.path.insert(0, wheel)
sys.argv = ["pip", "install"] + [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
PY

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/mooring/ops"
mkdir -p "$dest"
# Tracked files only, without the symlink that makes the checkout resolve as mooring.ops.
git ls-files -z --cached --others --exclude-standard | grep -zv '^collections/' \
    | xargs -0 cp --parents -t "$dest"
cd "$dest"
git init --quiet && git add --all && git -c user.name=sanity -c user.email=sanity@localhost commit --quiet -m sanity
controller=$(python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
ansible-test sanity --python "$controller" --color no "$@"

# The compile test on the managed hosts' Pythons too: Debian 11's 3.9 (the floor) and Debian 13's 3.13
# (tests/pythons.sh makes them).
if [ "$#" -eq 0 ]; then
    "$top/tests/pythons.sh"
    pythons=("$top"/.lab/pythons/bin/python3.*)
    [ -x "${pythons[0]}" ] || { echo "tests/pythons.sh made no interpreter in $top/.lab/pythons/bin" >&2; exit 1; }
    for python in "${pythons[@]}"; do
        PATH="$top/.lab/pythons/bin:$PATH" ansible-test sanity --test compile --color no \
            --controller "origin:python=$controller" --target-python "${python##*/python}"
    done
fi
