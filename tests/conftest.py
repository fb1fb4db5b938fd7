"""Shared pytest wiring: fixtures live in plugin modules, loaded here."""

pytest_plugins = ["tests.cluster_fixtures", "tests.agentrun_fixtures"]
