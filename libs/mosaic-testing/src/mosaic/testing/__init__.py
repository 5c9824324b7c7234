"""Fixtures that start real servers for Mosaic's tests: nats-server with JetStream on a free
port, the local Cassandra node with a keyspace per test module, an OTLP receiver, and a
webhook receiver. Importing `mosaic.testing.plugin` as a pytest plugin exposes them."""
