"""Kubernetes operator for DPE EvolutionRuns (kopf handlers, Job builders, metrics)."""
