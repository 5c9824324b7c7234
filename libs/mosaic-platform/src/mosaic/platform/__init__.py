"""Mosaic's platform: what every service shares, written once.

Configuration (`config`), the gRPC bootstrap (`server`), domain errors and their status codes
(`errors`), telemetry (`telemetry`), the JetStream bus (`bus`, `topics`) and the store backends
(`store`).
"""
