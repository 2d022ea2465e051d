"""Thin typed clients for the services the runbook touches: Forgejo, Vault, and later CI, Kubernetes, Prometheus."""
