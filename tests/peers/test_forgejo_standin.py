"""The Forgejo stand-in's packages API, read by pyforgejo: a client generated from Forgejo's own API description.

Every answer must parse into pyforgejo's models (a Package, or the API's error types), carry no field those
models do not declare, and carry the fields Forgejo always fills in (convert.ToPackage: id, owner, creator, type,
name, version, created_at, html_url; an error's message and url).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from pyforgejo import PyforgejoApi
from pyforgejo.core.api_error import ApiError
from pyforgejo.types import ApiForbiddenError, ApiNotFound, ApiUnauthorizedError, Package

from tests.peers.forgejo import ForgejoStandIn
from tests.peers.registry import ImagePusher, Registry

PACKAGE_FIELDS = {"id", "owner", "creator", "type", "name", "version", "created_at", "html_url"}


def declared_only(model: BaseModel, where: str = "") -> list[str]:
    """Fields of an answer that the generated model does not declare, however deep."""
    extra = [f"{where}{key}" for key in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            extra += declared_only(value, f"{where}{name}.")
    return extra


def a_package(package: Package) -> Package:
    assert declared_only(package) == []
    missing = {f for f in PACKAGE_FIELDS if getattr(package, f) is None}
    assert missing == set(), f"Forgejo always sends {sorted(missing)}"
    assert package.owner is not None and package.owner.login and package.owner.id is not None
    assert package.creator is not None and package.creator.login
    return package


def an_error(exc: ApiError, model: type[BaseModel], status: int) -> Any:
    assert exc.status_code == status
    body = model.model_validate(exc.body)
    assert declared_only(body) == []
    assert getattr(body, "message", None) and getattr(body, "url", None), exc.body
    return body


@pytest.fixture(scope="module")
def forgejo() -> Iterator[ForgejoStandIn]:
    with Registry() as registry:
        pusher = ImagePusher(registry.url)
        for name, tag in (("api", "latest"), ("api", "v1"), ("worker", "v2")):
            pusher.push_single(f"viktor/{name}", tag)
        pusher.close()
        with ForgejoStandIn(registry) as stand_in:
            yield stand_in


def client(forgejo: ForgejoStandIn, token: str = "cleanup-token-s3cret") -> PyforgejoApi:
    return PyforgejoApi(base_url=f"{forgejo.url}/api/v1", api_key=token)


def test_the_listing_parses_page_by_page(forgejo):
    api = client(forgejo)
    first = api.package.with_raw_response.list_packages("viktor", type="container", page=1, limit=2)
    assert [a_package(p).version for p in first.data] == ["latest", "v1"]
    assert first.headers["x-total-count"] == "3" and 'rel="next"' in first.headers["link"]
    rest = api.package.list_packages("viktor", type="container", page=2, limit=2)
    assert [(a_package(p).name, p.version, p.type) for p in rest] == [("worker", "v2", "container")]
    assert api.package.list_packages("viktor", type="container", page=3, limit=2) == []


def test_a_version_parses_and_a_missing_one_is_forgejos_not_found(forgejo):
    api = client(forgejo)
    package = a_package(api.package.get_package("viktor", "container", "api", "v1"))
    assert (package.name, package.version) == ("api", "v1")
    with pytest.raises(ApiError) as missing:
        api.package.get_package("viktor", "container", "api", "nope")
    an_error(missing.value, ApiNotFound, 404)


def test_refusals_are_forgejos_error_bodies(forgejo):
    with pytest.raises(ApiError) as weak:
        client(forgejo, "pull-token-s3cret").package.delete_package("viktor", "container", "worker", "v2")
    body = an_error(weak.value, ApiForbiddenError, 403)
    assert "write:package" in body.message
    with pytest.raises(ApiError) as anonymous:
        client(forgejo, "not-a-token").package.list_packages("viktor", type="container")
    an_error(anonymous.value, ApiUnauthorizedError, 401)
    with pytest.raises(ApiError) as nowhere:
        client(forgejo).package.list_package_files("viktor", "container", "api", "v1")
    an_error(nowhere.value, ApiNotFound, 404)  # a route the stand-in does not serve is Forgejo's 404 too


def test_a_delete_is_204_then_not_found(forgejo):
    api = client(forgejo)
    assert api.package.delete_package("viktor", "container", "worker", "v2") is None
    with pytest.raises(ApiError) as again:
        api.package.delete_package("viktor", "container", "worker", "v2")
    an_error(again.value, ApiNotFound, 404)
