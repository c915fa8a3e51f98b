"""The [cluster] table: defaults, and clear errors for what cannot work."""

from __future__ import annotations

from typing import Any

import pytest

from thinserve.cluster.config import ClusterConfig
from thinserve.cluster.nodes import default_name
from thinserve.config import ConfigError, from_dict

DESKTOP = {"desktop": [{"name": "d1", "address": "127.0.0.1:5901"}]}


def cluster(**table: Any) -> ClusterConfig:
    return from_dict({**DESKTOP, "cluster": table}, "site.toml").cluster


def test_the_defaults_name_the_node_after_this_host() -> None:
    assert from_dict(DESKTOP).cluster == ClusterConfig(default_name(), "", 2.0, 10.0)
    assert cluster() == ClusterConfig(default_name(), "", 2.0, 10.0)


def test_every_key_is_read() -> None:
    read = cluster(node_name="ts-2", node_address="10.1.2.3", heartbeat=1, lease=5.5)
    assert read == ClusterConfig("ts-2", "10.1.2.3", 1.0, 5.5)


def test_node_links_are_off_unless_configured() -> None:
    assert (cluster().node_listen, cluster().secret_file) == (None, None)
    read = cluster(node_listen="tcp:5999", secret_file="/etc/thinserve/node.secret")
    assert (read.node_listen, read.secret_file) == ("tcp:5999", "/etc/thinserve/node.secret")


@pytest.mark.parametrize(
    ("table", "complaint"),
    [
        ({"node_name": "Web_1"}, "site.toml [cluster] node_name = 'Web_1': use 1 to 63 of a-z"),
        ({"node_name": ""}, "node_name = '': use 1 to 63"),
        ({"node_name": 7}, "node_name: give a string"),
        ({"node_address": "a b"}, "node_address: a host name or address without spaces"),
        ({"node_address": "x" * 256}, "at most 255 characters"),
        ({"heartbeat": 0}, "heartbeat = 0: seconds from 0.1 to 60.0"),
        ({"lease": "10"}, "lease = '10': seconds from 1.0 to 3600.0"),
        ({"heartbeat": 5, "lease": 8}, "lease (8 s) must be at least twice the heartbeat (5 s)"),
        ({"node": "a"}, "unknown key(s) node; allowed:"),
        ({"node_listen": "tcp:5999"}, "secret_file: node_listen needs the site's node secret"),
    ],
)
def test_mistakes_are_named_with_what_to_write(table: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigError) as failed:
        cluster(**table)
    assert complaint in str(failed.value)
