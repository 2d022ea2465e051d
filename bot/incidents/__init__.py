"""Incidents: one per broken registry image:tag, with their phase runs, approvals and audit trail."""
