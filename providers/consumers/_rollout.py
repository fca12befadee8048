"""When a restarted workload has rolled out, judged the way ``kubectl rollout status`` judges
it, and what ``kubectl rollout restart`` refuses, on the JSON the API server sends.

* Deployment: the controller observed the generation (``observedGeneration >= generation``);
  a ``Progressing`` condition with reason ``ProgressDeadlineExceeded`` is a failure; then
  ``updatedReplicas >= spec.replicas``, no old replicas left (``replicas <= updatedReplicas``)
  and ``availableReplicas >= updatedReplicas``.
* StatefulSet (``RollingUpdate`` only): observed; ``readyReplicas >= spec.replicas``; with a
  partition, ``updatedReplicas >= replicas - partition``; without ``rollingUpdate``,
  ``updateRevision == currentRevision``.
* DaemonSet (``RollingUpdate`` only): observed; ``updatedNumberScheduled`` and
  ``numberAvailable`` reach ``desiredNumberScheduled``.
"""

from __future__ import annotations

from typing import Any

DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"


class RolloutFailed(Exception):
    """The rollout cannot complete by waiting (its progress deadline passed)."""


def refusal(kind: str, obj: dict[str, Any]) -> str | None:
    """Why a restart of ``obj`` would roll nothing out, or ``None`` when it will."""
    spec = obj.get("spec") or {}
    if kind == "Deployment":
        if spec.get("paused"):
            return "the Deployment is paused; resume it (kubectl rollout resume) to let a restart roll out"
        return None
    strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy != "RollingUpdate":
        return f"its updateStrategy is {strategy}: a restart replaces no pods (only RollingUpdate rolls out)"
    return None


def progress(kind: str, obj: dict[str, Any], generation: int) -> str | None:
    """``None`` once the rollout of ``generation`` (or a later one) is complete, else what it
    waits for.

    :raises RolloutFailed: when the Deployment's progress deadline was exceeded.
    """
    status = obj.get("status") or {}
    observed = int(status.get("observedGeneration") or 0)
    current = max(generation, int((obj.get("metadata") or {}).get("generation") or 0))
    if observed < current:
        return "waiting for the controller to observe the restart"
    return _JUDGES[kind](obj.get("spec") or {}, status)


def _deployment(spec: dict[str, Any], status: dict[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == DEADLINE_EXCEEDED:
            raise RolloutFailed(f"the rollout exceeded its progress deadline ({DEADLINE_EXCEEDED})")
    wanted = spec.get("replicas")
    updated = int(status.get("updatedReplicas") or 0)
    if wanted is not None and updated < int(wanted):
        return f"{updated} of {wanted} new replicas updated"
    total = int(status.get("replicas") or 0)
    if total > updated:
        return f"{total - updated} old replicas pending termination"
    available = int(status.get("availableReplicas") or 0)
    if available < updated:
        return f"{available} of {updated} updated replicas available"
    return None


def _statefulset(spec: dict[str, Any], status: dict[str, Any]) -> str | None:
    wanted = spec.get("replicas")
    ready = int(status.get("readyReplicas") or 0)
    if wanted is not None and ready < int(wanted):
        return f"{int(wanted) - ready} pods not ready yet"
    rolling = (spec.get("updateStrategy") or {}).get("rollingUpdate")
    if rolling is not None:
        partition = rolling.get("partition")
        updated = int(status.get("updatedReplicas") or 0)
        if wanted is not None and partition is not None and updated < int(wanted) - int(partition):
            return f"{updated} of {int(wanted) - int(partition)} new pods updated"
        return None
    if status.get("updateRevision") != status.get("currentRevision"):
        return f"rolling update to revision {status.get('updateRevision')} not complete"
    return None


def _daemonset(spec: dict[str, Any], status: dict[str, Any]) -> str | None:
    desired = int(status.get("desiredNumberScheduled") or 0)
    updated = int(status.get("updatedNumberScheduled") or 0)
    if updated < desired:
        return f"{updated} of {desired} new pods updated"
    available = int(status.get("numberAvailable") or 0)
    if available < desired:
        return f"{available} of {desired} updated pods available"
    return None


_JUDGES = {"Deployment": _deployment, "StatefulSet": _statefulset, "DaemonSet": _daemonset}
