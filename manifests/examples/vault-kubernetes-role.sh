#!/bin/sh
# The alternative to base/externalsecret.yaml: registry-bot reads its secrets from Vault itself, logging in with
# its ServiceAccount token through Vault's Kubernetes auth method (a role per app, bound to the ServiceAccount
# and namespace, as every app in this cluster does). Run once with a Vault token that may write policies and
# auth roles:   VAULT_ADDR=https://vault.example.org sh vault-kubernetes-role.sh
#
# Then, in the bot's configuration (base/config.env):
#   VAULT_ADDR=http://vault-active.vault.svc.cluster.local:8200
#   VAULT_AUTH=kubernetes
#   VAULT_ROLE=registry-bot
# and in its environment (these `<SETTING>_VAULT` overrides are not settings, so they are not in config.env):
#   SLACK_SIGNING_SECRET_VAULT=registry-bot#slack_signing_secret
#   ALERTMANAGER_TOKEN_VAULT=registry-bot#alertmanager_token
# The other secrets have Vault sources by default (bot/config.py): secret/viktor forgejo_pull_token,
# forgejo_cleanup_token and slack_bot_token; secret/ci/global woodpecker_api_token.
# DATABASE_URL is a plain setting that the bot does not read from Vault: keep it in a Kubernetes Secret.
# Leave the ExternalSecret's other keys out of that Secret, since a set variable wins over Vault.
#
# Vault's KV v2 policies are per path, not per field: this policy lets the bot read every field of secret/viktor
# and secret/ci/global, not only the four it uses. To avoid that, copy those fields into secret/registry-bot
# and point the settings there (VAULT_REGISTRY_PATH, FORGEJO_CLEANUP_TOKEN_VAULT, SLACK_BOT_TOKEN_VAULT,
# WOODPECKER_TOKEN_VAULT), then drop the two wider paths below.
set -eu

vault policy write registry-bot - <<'HCL'
path "secret/data/registry-bot" {
  capabilities = ["read"]
}
path "secret/data/viktor" {
  capabilities = ["read"]
}
path "secret/data/ci/global" {
  capabilities = ["read"]
}
HCL

vault write auth/kubernetes/role/registry-bot \
  bound_service_account_names=registry-bot \
  bound_service_account_namespaces=registry-bot \
  token_policies=registry-bot \
  token_ttl=1h \
  token_max_ttl=4h
