"""The OpenStack side: a Keystone session through openstacksdk, and its errors as one line.

The endpoint is a cloud name of a `clouds.yaml` (option `clouds_yaml`, else the standard
places: `OS_CLIENT_CONFIG_FILE`, ./clouds.yaml, ~/.config/openstack, /etc/openstack) or a
Keystone v3 auth URL. Credentials are a user/password/project or an application
credential; given ones override the clouds.yaml's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..platform import PlatformError, UnknownVM

#: credential fields the platform accepts (sealed in the catalog)
CREDENTIALS = {
    "username": "OpenStack user (with password and project_name)",
    "password": "its password",
    "project_name": "project (tenant) the instances live in",
    "user_domain_name": "the user's domain (default: Default)",
    "project_domain_name": "the project's domain (default: Default)",
    "application_credential_id": "or: an application credential's id",
    "application_credential_secret": "and its secret",
    "ceph_key": "the cephx key of the Ceph client (instead of a keyring file)",
}

_AUTH_FIELDS = (
    "username", "password", "project_name", "user_domain_name", "project_domain_name",
    "application_credential_id", "application_credential_secret",
)


def connect(endpoint: str, credentials: dict[str, Any], options: dict[str, Any]) -> Any:
    """An authenticated `openstack.connection.Connection` (the token is fetched lazily)."""
    import openstack.config

    import openstack
    from openstack import exceptions as osexc

    auth = {k: credentials[k] for k in _AUTH_FIELDS if credentials.get(k)}
    app = "application_credential_id" in auth
    if not app and auth.get("username"):
        auth.setdefault("user_domain_name", "Default")
        auth.setdefault("project_domain_name", "Default")
    region = options.get("region") or None
    common: dict[str, Any] = {"verify": options.get("verify", True)}
    try:
        if endpoint.startswith(("http://", "https://")):
            auth["auth_url"] = endpoint
            return openstack.connect(
                auth=auth,
                auth_type="v3applicationcredential" if app else "password",
                region_name=region,
                load_yaml_config=False,
                load_envvars=False,
                **common,
            )
        files = [options["clouds_yaml"]] if options.get("clouds_yaml") else None
        config = openstack.config.OpenStackConfig(config_files=files, load_envvars=False)
        extra: dict[str, Any] = {"region_name": region} if region else {}
        if auth:
            extra["auth"] = auth
            if app:
                extra["auth_type"] = "v3applicationcredential"
        cloud = config.get_one(cloud=endpoint, **extra)
        return openstack.connection.Connection(config=cloud)
    except osexc.ConfigException as exc:
        raise PlatformError(
            f"OpenStack cloud {endpoint!r}: {exc}",
            "name a cloud of clouds.yaml (option clouds_yaml) or give a Keystone auth URL",
        ) from None


@contextlib.contextmanager
def api(endpoint: str, what: str) -> Iterator[None]:
    """Map openstacksdk and keystoneauth failures to one `PlatformError` line."""
    from keystoneauth1 import exceptions as ksexc

    from openstack import exceptions as osexc

    try:
        yield
    except PlatformError:
        raise
    except ksexc.Unauthorized:
        raise PlatformError(
            f"OpenStack at {endpoint} refused the credentials while trying to {what} (401)",
            "check the user, password and project, or the application credential",
        ) from None
    except (ksexc.ConnectFailure, ksexc.ConnectTimeout, ksexc.DiscoveryFailure) as exc:
        raise PlatformError(
            f"OpenStack at {endpoint} unreachable while trying to {what}: {_first(exc)}",
            "check the auth URL and the network path to Keystone, Nova and Cinder",
        ) from None
    except ksexc.EndpointNotFound as exc:
        raise PlatformError(
            f"OpenStack at {endpoint}: no endpoint to {what} ({_first(exc)})",
            "the service catalog must list compute and block-storage (volumev3)",
        ) from None
    except osexc.NotFoundException as exc:
        raise UnknownVM(f"OpenStack at {endpoint}: {what}: {_details(exc)}") from None
    except osexc.HttpException as exc:
        code = getattr(exc, "status_code", None)
        hint = "the cloud failed; try again later" if (code or 0) >= 500 else (
            "check the role of the user on the project")
        raise PlatformError(
            f"OpenStack at {endpoint} answered {code} while trying to {what}: {_details(exc)}",
            hint,
        ) from None
    except (osexc.SDKException, ksexc.ClientException) as exc:
        raise PlatformError(
            f"OpenStack at {endpoint}: could not {what}: {_first(exc)}"
        ) from None


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _details(exc: Any) -> str:
    return str(getattr(exc, "details", None) or _first(exc))
