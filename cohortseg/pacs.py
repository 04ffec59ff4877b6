"""What the stages that talk to the PACS share (``retrieve`` pulls the cohort, ``push`` stores the SEGs): the
client (``pacs.protocol``: DICOMweb by dicomweb-client over a requests session, or DIMSE by pynetdicom in
cohortseg.dimse, behind the same calls), credentials from the environment or a file (never from the config),
and one retry policy.

Retries: connection errors, time-outs, server errors (5xx) and a DIMSE peer that does not answer (Unavailable)
are retried ``pacs.retries`` times with doubling back-off (1, 2, 4 ... s); dicomweb-client's own retrying is
switched off so that the two do not multiply. Authentication failures (401/403) and other refusals (4xx) are not retried: they are a PacsError
naming what to fix.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .settings import PacsSettings

T = TypeVar("T")


class PacsError(RuntimeError):
    """The PACS cannot do what was asked (unreachable, authentication, refusal): the message says what to fix."""


class AuthError(PacsError):
    """The PACS refused the credentials (or, by DIMSE, the AE titles): nothing else can succeed, every stage
    stops on it."""


class Unavailable(PacsError):
    """The PACS did not answer or broke off (DIMSE): retried like a connection error."""


def credentials(settings: PacsSettings) -> tuple[str, str] | None:
    """(user, password) from the environment variable, else the file; None when neither is set."""
    text = os.environ.get(settings.credentials_env, "") if settings.credentials_env else ""
    if not text and settings.credentials_file:
        path = Path(settings.credentials_file)
        if not path.is_file():
            raise PacsError(f"pacs.credentials_file {path} does not exist")
        text = path.read_text().strip()
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep:
        raise PacsError(f"the PACS credentials (${settings.credentials_env} or pacs.credentials_file) must be "
                        "'user:password'")
    return user, password


def make_client(settings: PacsSettings) -> Any:
    """A DICOMweb client of ``pacs.url`` with the credentials and time-out, its own retrying off; or, with
    ``pacs.protocol: dimse``, the DIMSE client of ``pacs.dimse`` (close it with close_client)."""
    if settings.protocol == "dimse":
        from .dimse import DimseClient

        return DimseClient(settings)
    import requests
    from dicomweb_client.api import DICOMwebClient

    if not settings.url:
        raise PacsError("pacs.url is empty: set the PACS's DICOMweb root (e.g. http://pacs:8042/dicom-web)")
    session = requests.Session()
    session.auth = credentials(settings)
    client = DICOMwebClient(url=settings.url.rstrip("/"), session=session, timeout=settings.timeout_s)
    client.set_http_retry_params(retry=False)
    return client


def describe(settings: PacsSettings) -> str:
    """The PACS as error messages name it: its DICOMweb URL, or AE title@host:port."""
    if settings.protocol == "dimse":
        return f"{settings.dimse.called_aet}@{settings.dimse.host}:{settings.dimse.port}"
    return settings.url


def close_client(client: Any) -> None:
    """Stop what the client runs (the DIMSE client's storage SCP); nothing for DICOMweb."""
    close = getattr(client, "close", None)
    if callable(close):
        close()


def status_of(err: Exception) -> int | None:
    return getattr(getattr(err, "response", None), "status_code", None)


def with_retries(call: Callable[[], T], settings: PacsSettings, what: str,
                 sleep: Callable[[float], None] = time.sleep) -> tuple[T, int]:
    """``call()``'s result and the attempts it took; PacsError for what a retry cannot fix, else the last
    error once the retries are spent."""
    import requests

    last: Exception = RuntimeError("no attempt")
    for attempt in range(settings.retries + 1):
        try:
            return call(), attempt + 1
        except requests.exceptions.HTTPError as e:
            code = status_of(e)
            if code in (401, 403):
                raise AuthError(f"the PACS at {describe(settings)} refused the credentials (HTTP {code}): check "
                                f"${settings.credentials_env} or pacs.credentials_file") from e
            if code is not None and code < 500:
                raise PacsError(f"the PACS at {describe(settings)} refused to {what} (HTTP {code})") from e
            last = e
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, Unavailable) as e:
            last = e
        if attempt < settings.retries:
            sleep(2.0 ** attempt)
    raise last
