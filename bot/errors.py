"""Errors a person can act on. Each carries one sentence: what failed, on what, what to do next.

Anything raised as a `UserFacingError` may be shown to a user as it is; it never holds a secret.
"""


class UserFacingError(Exception):
    """A failure whose message is safe and useful to show as it is."""


class ConfigError(UserFacingError):
    """A setting is missing or malformed."""


class BadReference(UserFacingError):
    """An image reference that does not fit the grammar or names another registry."""


class CouldNotCheck(UserFacingError):
    """The registry could not be asked: unreachable, timing out, refusing our login, or failing."""


class AuthFailed(CouldNotCheck):
    """The registry refused the credentials."""


class SecretUnavailable(UserFacingError):
    """A secret store (Vault) could not give us a secret: sealed, unreachable or denying."""
