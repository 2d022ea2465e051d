"""Logs never carry a secret, whichever library logs it and through whichever handler."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SECRET = "xoxb-very-s3cret-token"

# What `registry-bot serve` does: configure logging, register the secrets, then build uvicorn's Config, which
# installs uvicorn's own handlers on its own loggers (they do not propagate to the root handler).
SCRIPT = textwrap.dedent(
    f"""
    import logging
    import uvicorn
    from bot import logsetup

    logsetup.configure({{fmt!r}})
    logsetup.register_secret({SECRET!r})
    uvicorn.Config(lambda scope, receive, send: None, log_level="info", access_log=True, lifespan="off")
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request: token=%s", {SECRET!r})
    logging.getLogger("uvicorn").warning("startup with {SECRET}")
    logging.getLogger("uvicorn.access").warning('%s - "%s %s HTTP/%s" %d', "1.2.3.4", "GET", "/?t={SECRET}", "1.1", 200)
    try:
        raise RuntimeError({SECRET!r})
    except RuntimeError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    logging.getLogger("bot").warning("bot says %s", {SECRET!r})
    """
)


def run(fmt: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("{fmt!r}", repr(fmt))], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_uvicorns_loggers_are_masked_too():
    for fmt in ("text", "json"):
        output = run(fmt)
        assert "Invalid HTTP request" in output and "Exception in ASGI application" in output
        assert "startup with" in output and "bot says" in output and "GET" in output
        assert SECRET not in output, output
        assert output.count("**********") >= 5
