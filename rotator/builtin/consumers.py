"""The built-in consumers' config models (entry points ``rotator.consumers``): a command, a
webhook, a Kubernetes workload and an ECS service. Each factory imports its implementation
(and so its SDK) only when called; ``label()`` is the consumer's name in the journal."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from pydantic import Field

from rotator.spec.durations import Duration
from rotator.spec.models import ConsumerModel
from rotator.spec.types import EnvRef, Text, Url

if TYPE_CHECKING:
    from rotator.abc import Consumer


class CommandConsumer(ConsumerModel):
    """Run a program (no shell) once the new key is everywhere; exit 0 is success. Its
    environment carries ``ROTATOR_KEY``, ``ROTATOR_ATTEMPT``, ``ROTATOR_PHASE``,
    ``ROTATOR_KEY_ID``, ``ROTATOR_PREFIX`` and ``ROTATOR_FINGERPRINT``, never the value."""

    type: Literal["command"]
    argv: list[Text] = Field(min_length=1)
    """The program and its arguments, run without a shell."""
    cwd: Text | None = None
    """Working directory (relative: to the rotation file's directory)."""
    timeout: Duration = timedelta(minutes=5)

    def label(self) -> str:
        shown = " ".join(self.argv)
        if len(shown) <= 80:
            return f"command:{shown}"
        # cut for the eye, but two long commands alike in their first 70 characters stay apart
        digest = hashlib.sha256("\0".join(self.argv).encode()).hexdigest()[:8]
        return f"command:{shown[:70]}…#{digest}"

    def make_consumer(self, *, key: str, base_dir: Path) -> Consumer:
        from providers.consumers.command import make_consumer

        return make_consumer(self, key=key, base_dir=base_dir)


class WebhookConsumer(ConsumerModel):
    """POST a signed JSON event (ids, prefix and fingerprint, never the value) to a URL; a 2xx
    answer within ``timeout`` is success. Signed with HMAC-SHA256 over the timestamp and the
    body, with the secret from ``secret`` (README, "Consumers")."""

    type: Literal["webhook"]
    url: Url
    secret: EnvRef
    """The HMAC secret, from an environment variable of the rotator's process."""
    timeout: Duration = timedelta(seconds=30)
    attempts: int = Field(default=5, ge=1, le=20)
    """Tries before the roll fails (back-off between them); the next pass tries again."""

    def label(self) -> str:
        parts = urlsplit(self.url)  # never the query: it may carry a token
        return f"webhook:{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path or '/'}"

    def make_consumer(self, *, key: str, base_dir: Path) -> Consumer:
        from providers.consumers.webhook import make_consumer

        return make_consumer(self, key=key, base_dir=base_dir)


class KubernetesConsumer(ConsumerModel):
    """Restart a workload the way ``kubectl rollout restart`` does and wait for the rollout;
    with ``external_secret``, first have External Secrets sync that ExternalSecret now."""

    type: Literal["kubernetes"]
    namespace: Text = Field(min_length=1)
    kind: Literal["Deployment", "StatefulSet", "DaemonSet"] = "Deployment"
    name: Text = Field(min_length=1)
    external_secret: Text | None = None
    """An ExternalSecret to force-sync (and wait for) before the restart."""
    kubeconfig: Text | None = None
    """A kubeconfig file; default: in-cluster config, else ``$KUBECONFIG`` or ``~/.kube/config``."""
    context: Text | None = None
    timeout: Duration = timedelta(minutes=10)

    def label(self) -> str:
        return f"kubernetes:{self.namespace}/{self.kind}/{self.name}"

    def make_consumer(self, *, key: str, base_dir: Path) -> Consumer:
        from providers.consumers.kubernetes import make_consumer

        return make_consumer(self, key=key, base_dir=base_dir)


class EcsConsumer(ConsumerModel):
    """Redeploy an ECS service (``UpdateService`` with ``forceNewDeployment``) and wait until its
    primary deployment's ``rolloutState`` is ``COMPLETED``."""

    type: Literal["ecs"]
    cluster: Text = Field(min_length=1)
    service: Text = Field(min_length=1)
    region: Text | None = None
    profile: Text | None = None
    role_arn: Text | None = None
    endpoint_url: Url | None = None
    timeout: Duration = timedelta(minutes=15)

    def label(self) -> str:
        return f"ecs:{self.cluster}/{self.service}"

    def make_consumer(self, *, key: str, base_dir: Path) -> Consumer:
        from providers.consumers.ecs import make_consumer

        return make_consumer(self, key=key, base_dir=base_dir)
