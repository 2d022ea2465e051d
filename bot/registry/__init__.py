"""The OCI registry: an authenticating client, the integrity walk (check) and the scan."""
