#!/usr/bin/env bash
# The Pythons of the Debian releases around this one, to check mooring's modules on the interpreters that managed
# hosts really have: Debian 11's 3.9 (the floor, as EL9's) and Debian 13's 3.13. Each is that release's own
# python3 package and libraries, debootstrapped (minbase) from this machine's Debian mirror into .lab/pythons/<suite>,
# and run by that release's own dynamic loader and libraries (its libc included), so nothing of this host's
# libraries is mixed in. .lab/pythons/bin/python3.N is the interpreter to put on PATH or give Ansible.
# Each tree is made once (about a minute); make lab-down removes .lab with them.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dest="$top/.lab/pythons"
suites=${MOORING_PYTHON_SUITES:-"bullseye trixie"}
# python3 and the libraries mooring's modules use, as each release packages them (a managed host's own); on
# Debian 13 also docker.io, whose dockerd 26 has --validate (this machine's 20.10 has not): dockerd-trixie runs it
# for docker_daemon_config's validation tests.
base_packages=python3,python3-requests,python3-docker,python3-redis

# The mirror this machine's apt uses (deb822 .sources or one-line .list), unless MOORING_DEBIAN_MIRROR says.
mirror=${MOORING_DEBIAN_MIRROR:-$(python3 "$top/tests/apt_mirror.py")}

command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
mkdir -p "$dest/bin"
for suite in $suites; do
    root="$dest/$suite"
    packages=$base_packages
    [ "$suite" != trixie ] || packages="$packages,docker.io"
    if [ "$(cat "$root/.complete" 2>/dev/null)" != "$packages" ]; then
        rm -rf "$root" "$root.partial"
        echo "== python3 of Debian $suite from $mirror into $root"
        debootstrap --variant=minbase --include="$packages" "$suite" "$root.partial" "$mirror" >"$dest/$suite.log" 2>&1 \
            || { tail -20 "$dest/$suite.log"; exit 1; }
        mv "$root.partial" "$root"
        echo "$packages" >"$root/.complete"
    fi
    python=
    for candidate in "$root"/usr/bin/python3.[0-9] "$root"/usr/bin/python3.[0-9][0-9]; do
        [ -x "$candidate" ] && python=${candidate##*/}
    done
    # The loader by its path inside the tree (/lib64's link is absolute: it would name this host's).
    loader=
    for candidate in usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 lib/x86_64-linux-gnu/ld-linux-x86-64.so.2; do
        [ -e "$root/$candidate" ] && loader=$candidate && break
    done
    cat >"$dest/bin/$python" <<SH
#!/bin/sh
# Debian $suite's $python with its own loader and libraries (made by tests/pythons.sh).
exec "$root/$loader" --library-path "$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu" \\
    "$root/usr/bin/$python" "\$@"
SH
    chmod 0755 "$dest/bin/$python"
    if [ -x "$root/usr/sbin/dockerd" ]; then
        cat >"$dest/bin/dockerd-$suite" <<SH
#!/bin/sh
# Debian $suite's dockerd with its own loader and libraries (made by tests/pythons.sh); for --validate.
exec "$root/$loader" --library-path "$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu" \\
    "$root/usr/sbin/dockerd" "\$@"
SH
        chmod 0755 "$dest/bin/dockerd-$suite"
    fi
    echo "$dest/bin/$python: $("$dest/bin/$python" -c 'import sys; print(sys.version.split()[0])')"
done
