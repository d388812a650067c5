"""Simulation: builds hosts and VMMs, runs virtual time, collects metrics."""
