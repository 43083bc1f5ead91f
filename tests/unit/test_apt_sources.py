"""mooring.ops.apt_mirror_info's parser: which mirrors a host's apt sources name, in both formats apt reads."""

import sys

from conftest import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "collections"))
from ansible_collections.mooring.ops.plugins.module_utils.apt_sources import entries, host_mirrors, mirrors, settle

ONE_LINE = """\
# the company mirror
deb http://mirror.corp.example/debian/ bookworm main contrib
deb [arch=amd64 signed-by=/usr/share/keyrings/debian.gpg] http://mirror.corp.example/debian bookworm-updates main
deb-src http://sources.example/debian bookworm main
deb http://mirror.corp.example/debian-security bookworm-security main  # trailing comment
#deb http://disabled.example/debian bookworm main
deb mirror+file:/etc/apt/mirrors.txt bookworm main
deb cdrom:[Debian GNU/Linux 12]/ bookworm main
"""

DEB822 = """\
Types: deb deb-src
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: https://mirrors.cloud.example/debian/ http://fallback.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://only-sources.example/debian
Suites: bookworm

Types: deb
URIs: http://off.example/debian
Suites: bookworm
Enabled: no

types: deb
uris: https://mirrors.cloud.example/debian-security
suites: bookworm-security
"""


def test_one_line_entries_keep_options_out_of_the_uri_and_skip_comments_and_deb_src():
    found = entries("/etc/apt/sources.list", ONE_LINE)
    assert [entry["uri"] for entry in found][:3] == [
        "http://mirror.corp.example/debian/",
        "http://mirror.corp.example/debian",
        "http://mirror.corp.example/debian-security",
    ]
    assert found[0]["suites"] == ["bookworm"] and found[0]["components"] == ["main", "contrib"]
    assert found[2]["components"] == ["main"], "a trailing comment is not a component"
    assert all("disabled" not in entry["uri"] and "sources.example" not in entry["uri"] for entry in found)


def test_deb822_stanzas_honour_types_enabled_and_any_key_case():
    found = entries("/etc/apt/sources.list.d/debian.sources", DEB822)
    assert [entry["uri"] for entry in found] == [
        "https://mirrors.cloud.example/debian/",
        "http://fallback.example/debian",
        "https://mirrors.cloud.example/debian-security",
    ]
    assert found[0]["suites"] == ["bookworm", "bookworm-updates"]


def test_mirrors_split_archive_from_security_drop_unusable_schemes_and_repeat_none():
    result = mirrors([("/etc/apt/sources.list", ONE_LINE), ("/etc/apt/sources.list.d/debian.sources", DEB822)])
    assert result == {
        "archive": [
            "http://mirror.corp.example/debian",
            "https://mirrors.cloud.example/debian",
            "http://fallback.example/debian",
        ],
        "security": ["http://mirror.corp.example/debian-security", "https://mirrors.cloud.example/debian-security"],
    }


def test_a_host_without_apt_sources_has_no_mirror(tmp_path):
    assert host_mirrors([str(tmp_path / "sources.list"), str(tmp_path / "*.sources")]) == (
        {"archive": [], "security": []},
        [],
    )


def test_files_are_read_in_apts_order(tmp_path):
    (tmp_path / "b.list").write_text("deb http://b.example/debian bookworm main\n")
    (tmp_path / "a.list").write_text("deb http://a.example/debian bookworm main\n")
    (tmp_path / "z.sources").write_text("Types: deb\nURIs: http://z.example/debian\nSuites: bookworm\n")
    found, sources = host_mirrors([str(tmp_path / "*.list"), str(tmp_path / "*.sources")])
    assert found["archive"] == ["http://a.example/debian", "http://b.example/debian", "http://z.example/debian"]
    assert sources == [str(tmp_path / name) for name in ("a.list", "b.list", "z.sources")]


HOST = {"archive": ["http://host.example/debian"], "security": ["http://host.example/debian-security-mirror"]}


def test_the_hosts_pair_is_used_when_nothing_is_given():
    assert settle(HOST) == ("http://host.example/debian", "http://host.example/debian-security-mirror")


def test_a_given_archive_brings_its_own_security_tree_not_the_hosts():
    assert settle(HOST, "http://other.example/debian") == (
        "http://other.example/debian",
        "http://other.example/debian-security",
    )


def test_a_given_security_mirror_wins_either_way():
    assert settle(HOST, "", "http://sec.example/ds") == ("http://host.example/debian", "http://sec.example/ds")
    assert settle(HOST, "http://o.example/d", "http://sec.example/ds") == (
        "http://o.example/d",
        "http://sec.example/ds",
    )


def test_a_host_without_apt_and_no_override_has_no_mirror():
    empty = {"archive": [], "security": []}
    assert settle(empty) == ("", "")
    assert settle({"archive": [], "security": ["http://h.example/debian-security"]}) == (
        "",
        "http://h.example/debian-security",
    )
