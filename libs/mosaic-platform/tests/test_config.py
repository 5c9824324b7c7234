import pytest

from mosaic.platform.config import ConfigError, PlatformSettings


def test_defaults_give_eight_partitions_leased_for_ten_seconds():
    settings = PlatformSettings.from_env("profile", {"MOSAIC_AUTH": "off"})
    assert settings.store == "embedded"
    assert (settings.partitions, settings.lease_seconds) == (8, 10.0)


@pytest.mark.parametrize(
    ("environ", "variable", "rule"),
    [
        ({"MOSAIC_GRPC_PORT": "http"}, "MOSAIC_GRPC_PORT", "whole number"),
        ({"MOSAIC_GRPC_PORT": "70000"}, "MOSAIC_GRPC_PORT", "between 0 and 65535"),
        ({"MOSAIC_STORE": "postgres"}, "MOSAIC_STORE", "one of embedded, cassandra"),
        ({"MOSAIC_PARTITIONS": "0"}, "MOSAIC_PARTITIONS", "between 1 and 1024"),
        ({"MOSAIC_REPLICA_COUNT": "3"}, "MOSAIC_REPLICA_COUNT", "is no longer read: replicas lease"),
        ({"MOSAIC_REPLICA_INDEX": "0"}, "MOSAIC_REPLICA_INDEX", "is no longer read: replicas lease"),
        ({"MOSAIC_LEASE_SECONDS": "0.5"}, "MOSAIC_LEASE_SECONDS", "at least 1.0"),
        ({"MOSAIC_CASSANDRA_KEYSPACE": "Bad-Name"}, "MOSAIC_CASSANDRA_KEYSPACE", "lower-case"),
        ({"MOSAIC_CASSANDRA_HOSTS": "a,,b"}, "MOSAIC_CASSANDRA_HOSTS", "no empty items"),
        ({"MOSAIC_GRACE_SECONDS": "soon"}, "MOSAIC_GRACE_SECONDS", "must be a number"),
    ],
)
def test_a_malformed_variable_is_named_with_its_rule(environ, variable, rule):
    with pytest.raises(ConfigError) as caught:
        PlatformSettings.from_env("profile", environ)
    assert caught.value.variable == variable
    assert rule in str(caught.value)
    assert str(caught.value).startswith(f"{variable}: ")
