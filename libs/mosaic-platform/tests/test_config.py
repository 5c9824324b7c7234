import pytest

from mosaic.platform.config import ConfigError, PlatformSettings


def test_defaults_give_one_replica_owning_every_partition():
    settings = PlatformSettings.from_env(
        "profile",
        {
            "MOSAIC_AUTH": "off",
        },
    )
    assert settings.store == "embedded"
    assert settings.owned_partitions == tuple(range(8))


@pytest.mark.parametrize(
    ("environ", "variable", "rule"),
    [
        ({"MOSAIC_GRPC_PORT": "http"}, "MOSAIC_GRPC_PORT", "whole number"),
        ({"MOSAIC_GRPC_PORT": "70000"}, "MOSAIC_GRPC_PORT", "between 0 and 65535"),
        ({"MOSAIC_STORE": "postgres"}, "MOSAIC_STORE", "one of embedded, cassandra"),
        ({"MOSAIC_PARTITIONS": "0"}, "MOSAIC_PARTITIONS", "between 1 and 1024"),
        ({"MOSAIC_PARTITIONS": "2", "MOSAIC_REPLICA_COUNT": "3"}, "MOSAIC_REPLICA_COUNT", "must not exceed"),
        ({"MOSAIC_REPLICA_COUNT": "2", "MOSAIC_REPLICA_INDEX": "2"}, "MOSAIC_REPLICA_INDEX", "between 0 and 1"),
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


def test_replicas_split_the_partitions_without_overlap():
    owned = [
        set(
            PlatformSettings.from_env(
                "identity", {"MOSAIC_AUTH": "off", "MOSAIC_REPLICA_COUNT": "3", "MOSAIC_REPLICA_INDEX": str(i)}
            ).owned_partitions
        )
        for i in range(3)
    ]
    assert set.union(*owned) == set(range(8))
    assert sum(len(o) for o in owned) == 8
