"""Checks of what the bridge depends on, shared by ``config check`` and ``/healthz``.

Each probe returns a ``Check``: a name, ok or not, and one line that says what was found or
what to fix. Lines name settings, queue names and AWS error codes, never a secret or a URL's
credentials.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from moodle_bridge.config import BridgeConfig, masked_url

#: service name -> boto3 client; ``aws_clients`` builds the real one.
ClientMaker = Callable[[str], Any]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'OK  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def aws_clients(config: BridgeConfig, timeout: float = 5) -> ClientMaker:
    from moodle_bridge.aws_session import aws_session  # noqa: PLC0415 - boto3 session only when asked

    session = aws_session(config)
    boto = BotoConfig(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1})

    def make(service: str) -> Any:
        return session.client(
            service, region_name=config.aws.region, endpoint_url=config.aws.endpoint_url or None, config=boto
        )

    return make


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment (those may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def _aws_error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "error"))
    return type(exc).__name__


def probe_database(engine: sa.Engine) -> Check:
    where = masked_url(engine.url.render_as_string(hide_password=True))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        first = str(orig).strip().splitlines()[0][:200] if orig is not None else type(exc).__name__
        return Check("database", False, f"cannot connect to {where}: {first}; FIX: database.url / the grants")
    return Check("database", True, f"connected to {where}")


def _queue_name(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or url


def probe_queues(config: BridgeConfig, clients: ClientMaker) -> Iterator[Check]:
    queues = {
        "aws.jobs_queue_url": config.aws.jobs_queue_url,
        "aws.certificates_queue_url": config.aws.certificates_queue_url,
        "aws.results_queue_url": config.aws.results_queue_url,
        "aws.results_dlq_url": config.aws.results_dlq_url,
    }
    configured = {k: v for k, v in queues.items() if v}
    if not configured:
        return
    try:
        sqs = clients("sqs")
    except (BotoCoreError, ValueError) as exc:
        yield Check("queues", False, f"cannot create an SQS client ({type(exc).__name__}); FIX: aws.region")
        return
    for setting, url in configured.items():
        name = _queue_name(url)
        try:
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            depth = attrs.get("Attributes", {}).get("ApproximateNumberOfMessages", "?")
            yield Check(f"queue {name}", True, f"answers ({depth} messages waiting)")
        except ClientError as exc:
            code = _aws_error(exc)
            if code in ("AccessDenied", "AccessDeniedException"):
                yield Check(f"queue {name}", True, "answers (these credentials may not read its attributes)")
            elif code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
                yield Check(f"queue {name}", False, f"does not exist; FIX: {setting} from the stack outputs")
            else:
                yield Check(f"queue {name}", False, f"{code}; FIX: {setting} and the AWS credentials")
        except BotoCoreError as exc:
            yield Check(
                f"queue {name}", False, f"unreachable ({type(exc).__name__}); FIX: network / {setting}"
            )


def probe_http(name: str, url: str, setting: str, timeout: float = 5) -> Check:
    """Any HTTP answer means the endpoint is reachable (it may rightly refuse an unsigned GET)."""
    safe = safe_url(url)
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return Check(name, False, f"{safe} unreachable ({type(exc).__name__}); FIX: {setting}, DNS, firewall")
    if response.status_code >= 500:
        return Check(name, False, f"{safe} answered HTTP {response.status_code}; FIX: the service behind it")
    return Check(name, True, f"{safe} answers (HTTP {response.status_code})")


def probe_intakes(config: BridgeConfig) -> Iterator[Check]:
    if config.cloudflare.intake_url:
        yield probe_http("Worker intake", config.cloudflare.intake_url, "cloudflare.intake_url")
    if config.aws.api_gateway_url:
        yield probe_http("API Gateway intake", config.aws.api_gateway_url, "aws.api_gateway_url")


def cloud_checks(config: BridgeConfig, clients: ClientMaker) -> list[Check]:
    """The queues and intakes this configuration submits to or drains."""
    return [*probe_queues(config, clients), *probe_intakes(config)]
