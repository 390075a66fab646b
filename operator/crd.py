"""The PostgresCluster CustomResourceDefinition, as data (the chart dumps it to YAML). Validation
happens at apply time: a structural schema with defaults, enums and bounds, and CEL rules for what
spans fields, each message naming the field and the fix. operator/spec.py enforces the same, and
the defaults here are read from its dataclasses (which take the agent's): one source.

CEL cost: every list, map and string carries a maxItems/maxProperties/maxLength so the apiserver
can bound the rules' cost and accept them.
"""

from __future__ import annotations

from typing import Any

from pgquorum.agent.config import DURABILITIES, SYNC_MODES
from pgquorum.operator.spec import (
    CLUSTER_NAME,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ENDPOINT,
    MAX_ENDPOINTS,
    MAX_INSTANCES,
    MAX_NAME,
    MAX_PARAMETERS,
    MAX_WITNESSES,
    PARAMETER,
    QUANTITY,
    RESERVED_PARAMETERS,
    SIZE,
    AntiAffinity,
    ClusterSpec,
    EtcdSpec,
    PvcRetention,
)

GROUP = "pgquorum.io"
VERSION = "v1alpha1"
KIND = "PostgresCluster"
PLURAL = "postgresclusters"
NAME = f"{PLURAL}.{GROUP}"

_D = ClusterSpec(EtcdSpec())  # only read for its defaults


def _rule(
    rule: str, message: str, field_path: str | None = None, expr: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One CEL rule. ``message`` is also the fallback when ``expr`` (messageExpression) fails.
    ``field_path`` (relative to the rule's object) makes the apiserver report that field."""
    out = {"rule": rule, "message": message}
    if expr is not None:
        out["messageExpression"] = expr
    if field_path is not None:
        out["fieldPath"] = field_path
    if reason is not None:
        out["reason"] = reason
    return out


def _cel_list(items: frozenset[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in sorted(items)) + "]"


def _quantity_map(what: str) -> dict[str, Any]:
    return {
        "type": "object",
        "maxProperties": 8,
        "description": f"Resource {what}: cpu, memory, ephemeral-storage, hugepages-*.",
        "additionalProperties": {"x-kubernetes-int-or-string": True, "maxLength": 64, "pattern": QUANTITY.pattern},
    }


def _spec_schema() -> dict[str, Any]:
    t = _D.timing
    positive = {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    reserved = _cel_list(RESERVED_PARAMETERS)
    return {
        "type": "object",
        "required": ["etcd"],
        "properties": {
            "instances": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_INSTANCES,
                "default": _D.instances,
                "description": "Data members (PostgreSQL + agent, one PVC each): pods <name>-0 .. <name>-(n-1).",
            },
            "witnesses": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_WITNESSES,
                "default": _D.witnesses,
                "description": "Voting members without PostgreSQL (no PVC): pods <name>-w0 ...",
            },
            "image": {
                "type": "string",
                "minLength": 1,
                "maxLength": 512,
                "pattern": r"^\S+$",
                "default": _D.image,
                "description": "The pgquorum image (agent + PostgreSQL).",
            },
            "parameters": {
                "type": "object",
                "maxProperties": MAX_PARAMETERS,
                "additionalProperties": {"type": "string", "maxLength": 1024},
                "description": "postgresql.conf settings (values as strings); pgquorum's own are refused.",
                "x-kubernetes-validations": [
                    _rule(
                        f"self.all(k, k.matches(r'{PARAMETER.pattern}'))",
                        "spec.parameters: setting names are PostgreSQL names in lower case, e.g. work_mem",
                    ),
                    _rule(
                        f"self.all(k, !(k in {reserved}))",
                        "spec.parameters: a setting managed by pgquorum is set; remove it "
                        f"(managed: {', '.join(sorted(RESERVED_PARAMETERS))})",
                    ),
                ],
            },
            "storage": {
                "type": "object",
                "default": {"size": _D.storage.size},
                "properties": {
                    "size": {
                        "type": "string",
                        "default": _D.storage.size,
                        "maxLength": 32,
                        "pattern": SIZE.pattern,
                        "description": "Each data member's volume, e.g. 10Gi; may grow, never shrink.",
                        "x-kubernetes-validations": [
                            _rule(
                                "quantity(self).isGreaterThan(quantity('0'))",
                                "spec.storage.size: must be more than 0, e.g. 10Gi",
                            )
                        ],
                    },
                    "storageClassName": {
                        "type": "string",
                        "maxLength": 253,
                        "pattern": DNS_SUBDOMAIN.pattern,
                        "description": "Unset: the default StorageClass. Immutable.",
                    },
                },
                "x-kubernetes-validations": [
                    _rule(
                        "has(self.storageClassName) == has(oldSelf.storageClassName) && "
                        "(!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
                        "spec.storage.storageClassName is immutable (the volumes exist): "
                        "create a new cluster to change it",
                        field_path=".storageClassName",
                        reason="FieldValueForbidden",
                    ),
                    _rule(
                        "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
                        "spec.storage.size: may only grow (a PersistentVolumeClaim cannot shrink); "
                        "set it back to at least the current size",
                        field_path=".size",
                        expr="'spec.storage.size: may only grow (a PersistentVolumeClaim cannot shrink): '"
                        " + 'keep at least ' + oldSelf.size",
                        reason="FieldValueForbidden",
                    ),
                ],
            },
            "resources": {
                "type": "object",
                "description": "The containers' corev1.ResourceRequirements.",
                "properties": {"limits": _quantity_map("limits"), "requests": _quantity_map("requests")},
                "x-kubernetes-validations": [
                    _rule(
                        "!has(self.limits) || !has(self.requests) || self.requests.all(r, !(r in self.limits) || "
                        "quantity(string(self.requests[r])).compareTo(quantity(string(self.limits[r]))) <= 0)",
                        "spec.resources.requests: a request exceeds its limit (Kubernetes refuses such a pod); "
                        "lower the request or raise the limit",
                    )
                ],
            },
            "synchronous": {
                "type": "object",
                "description": "Quorum commit: each commit waits for k standbys (mode: quorum).",
                "default": {
                    "mode": _D.synchronous.mode.value,
                    "k": _D.synchronous.k,
                    "durability": _D.synchronous.durability.value,
                },
                "properties": {
                    "mode": {"type": "string", "enum": list(SYNC_MODES), "default": _D.synchronous.mode.value},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_INSTANCES, "default": _D.synchronous.k},
                    "durability": {
                        "type": "string",
                        "enum": list(DURABILITIES),
                        "default": _D.synchronous.durability.value,
                        "description": "required: commits block rather than wait for fewer than k; preferred: "
                        "k is lowered while standbys are missing.",
                    },
                },
            },
            "timing": {
                "type": "object",
                "description": "The agents' lease timing in seconds (agent: ttl, loop_wait, retry_timeout, "
                "safety_margin).",
                # in full: a default is checked against the rules below as it is, before nested defaults
                "default": {
                    "ttl": t.ttl,
                    "loopWait": t.loop_wait,
                    "retryTimeout": t.retry_timeout,
                    "safetyMargin": t.safety_margin,
                },
                "properties": {
                    # etcd leases are whole seconds, at least 2 (the agent's rule)
                    "ttl": {"type": "integer", "minimum": 2, "default": t.ttl},
                    "loopWait": {**positive, "default": t.loop_wait},
                    "retryTimeout": {**positive, "default": t.retry_timeout},
                    # time to stop postgres before the lease can expire (the agent's minimum)
                    "safetyMargin": {"type": "number", "minimum": 0.2, "default": t.safety_margin},
                },
                "x-kubernetes-validations": [
                    _rule(
                        "self.loopWait + 2.0 * self.retryTimeout <= double(self.ttl)",
                        "spec.timing: loopWait + 2 * retryTimeout must be <= ttl, or a leader with one slow etcd "
                        "call misses its renewal; raise ttl or lower loopWait / retryTimeout",
                    ),
                    _rule(
                        "self.safetyMargin < double(self.ttl) - self.loopWait",
                        "spec.timing.safetyMargin: must be < ttl - loopWait, or the leader fences itself between "
                        "two healthy renewals; lower safetyMargin or raise ttl",
                        field_path=".safetyMargin",
                    ),
                ],
            },
            "quorumVotes": {
                "type": "boolean",
                "default": _D.quorum_votes,
                "description": "Promotions need a majority of votes (false: lease-only mode). Immutable.",
                "x-kubernetes-validations": [
                    _rule(
                        "self == oldSelf",
                        "spec.quorumVotes is immutable (every member must agree; a rolling change would mix the "
                        "two modes): create a new cluster to change it",
                        reason="FieldValueForbidden",
                    )
                ],
            },
            "maximumLagOnFailover": {
                "type": "integer",
                "format": "int64",
                "minimum": 0,
                "default": _D.maximum_lag_on_failover,
                "description": "Bytes a replica may be behind and still be promoted.",
            },
            "stonith": {
                "type": "object",
                "default": {"kubernetes": {"deletePod": _D.stonith.delete_pod, "taintNode": _D.stonith.taint_node}},
                "properties": {
                    "kubernetes": {
                        "type": "object",
                        "description": "Before promoting, the new leader deletes the old primary's pod (grace 0) "
                        "and optionally taints its node out-of-service.",
                        "default": {"deletePod": _D.stonith.delete_pod, "taintNode": _D.stonith.taint_node},
                        "properties": {
                            "deletePod": {"type": "boolean", "default": _D.stonith.delete_pod},
                            "taintNode": {"type": "boolean", "default": _D.stonith.taint_node},
                        },
                        "x-kubernetes-validations": [
                            _rule(
                                "!self.taintNode || self.deletePod",
                                "spec.stonith.kubernetes.taintNode: needs deletePod: true (the taint is part of "
                                "the pod-deleting hook); set deletePod: true or taintNode: false",
                                field_path=".taintNode",
                            )
                        ],
                    }
                },
            },
            "etcd": {
                "type": "object",
                "description": "Exactly one of endpoints (your etcd) or bundled: true (the chart's). Immutable.",
                "properties": {
                    "endpoints": {
                        "type": "array",
                        "maxItems": MAX_ENDPOINTS,
                        "items": {"type": "string", "maxLength": 256, "pattern": ENDPOINT.pattern},
                    },
                    "bundled": {"type": "boolean"},
                },
                "x-kubernetes-validations": [
                    _rule(
                        "(has(self.endpoints) && size(self.endpoints) > 0) != (has(self.bundled) && self.bundled)",
                        "spec.etcd: set exactly one of endpoints (your etcd, e.g. endpoints: [http://etcd:2379]) "
                        "or bundled: true (the chart's etcd)",
                    ),
                    _rule(
                        "self == oldSelf",
                        "spec.etcd is immutable (the cluster's state lives there): create a new cluster to change it",
                        reason="FieldValueForbidden",
                    ),
                ],
            },
            "antiAffinity": {
                "type": "string",
                "enum": [a.value for a in AntiAffinity],
                "default": _D.anti_affinity.value,
                "description": "required: never two members on one node; preferred: spread when possible.",
            },
            "pvcRetention": {
                "type": "string",
                "enum": [p.value for p in PvcRetention],
                "default": _D.pvc_retention.value,
                "description": "What happens to a data member's PVC on scale-down or cluster deletion.",
            },
            "switchover": {
                "type": "object",
                "description": "Ask for a planned switchover to a data member, now or at a time.",
                "required": ["target"],
                "properties": {
                    "target": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL.pattern},
                    "at": {"type": "string", "format": "date-time", "maxLength": 64},
                },
            },
        },
        "x-kubernetes-validations": [
            _rule(
                "self.quorumVotes || self.witnesses == 0",
                "spec.witnesses: witnesses only vote; they need quorumVotes: true (or set witnesses: 0)",
                field_path=".witnesses",
            ),
            _rule(
                "self.witnesses == 0 || self.witnesses < self.instances",
                "spec.witnesses: must be fewer than instances (a witness breaks ties between data members); "
                "add instances or remove witnesses",
                field_path=".witnesses",
            ),
            # A promotion needs a majority of the voters (data members + witnesses): of 2 voters that is
            # both, so losing either stops failover. Lease-only mode (quorumVotes: false) has no voters.
            _rule(
                "!self.quorumVotes || self.instances + self.witnesses != 2",
                "spec.witnesses: 2 voting members cannot keep a majority after losing one: add a witness "
                "(witnesses: 1) or use instances: 3",
                field_path=".witnesses",
            ),
            # Quorum commit (agent/quorum/sync.py): provable only while 1 <= k <= standbys, and every data
            # member but the primary is a standby: 1 <= k <= instances - 1 (the minimum is the schema's).
            _rule(
                "self.synchronous.mode != 'quorum' || self.synchronous.k <= self.instances - 1",
                "spec.synchronous.k: more standbys must confirm each commit than exist (instances - 1); "
                "lower k or raise instances",
                field_path=".synchronous.k",
            ),
        ],
    }


def _metadata_schema() -> dict[str, Any]:
    """The one part of metadata a CRD may restrict: the name, which every generated name derives from."""
    return {
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "maxLength": 63,  # bounds the cost of the rules that use it (a pod's name is at most 63 anyway)
                "x-kubernetes-validations": [
                    _rule(
                        f"size(self) <= {MAX_NAME} && self.matches('{CLUSTER_NAME.pattern}')",
                        f"metadata.name: must be at most {MAX_NAME} lower-case letters, digits or '-', starting with "
                        "a letter (it names the Services <name>-rw/-ro and the pods); choose another name",
                    )
                ],
            }
        },
    }


def _root_rules() -> list[dict[str, str]]:
    return [
        _rule(
            "!has(self.spec.switchover) || self.spec.switchover.target.startsWith(self.metadata.name + '-') && "
            "self.spec.switchover.target.substring(size(self.metadata.name) + 1).matches('^(0|[1-9][0-9]*)$') && "
            "int(self.spec.switchover.target.substring(size(self.metadata.name) + 1)) < self.spec.instances",
            "spec.switchover.target: must name a data member: use one of <name>-0 .. <name>-(instances - 1)",
            field_path=".spec.switchover.target",
            # no string(instances) here: the cost estimate of a number's text is unbounded
            expr="'spec.switchover.target: ' + self.spec.switchover.target + ' is not a data member of ' + "
            "self.metadata.name + '; use one of ' + self.metadata.name + '-0 .. ' + self.metadata.name + "
            "'-(instances - 1)'",
        ),
    ]


def _condition() -> dict[str, Any]:
    """metav1.Condition, as Kubernetes' own CRDs spell it (Ready, Available, QuorumSafe, Progressing, Degraded)."""
    return {
        "type": "object",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": {"type": "string", "maxLength": 316},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "reason": {
                "type": "string",
                "minLength": 1,
                "maxLength": 1024,
                "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
            },
            "message": {"type": "string", "maxLength": 32768},
        },
    }


def _status_schema() -> dict[str, Any]:
    return {
        "type": "object",
        # the operator fills it from etcd and the pods; room for fields added later without pruning
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": {"type": "string", "description": "Creating, Healthy, Degraded, Unavailable, Invalid"},
            "leader": {"type": "string"},
            "term": {"type": "integer", "format": "int64"},
            "timeline": {"type": "integer", "format": "int64"},
            "instances": {"type": "integer"},
            "readyInstances": {"type": "integer"},
            "observedGeneration": {"type": "integer", "format": "int64"},
            "members": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "role": {"type": "string"},
                        "pod": {"type": "string"},
                        "node": {"type": "string"},
                        "lsn": {"type": "string"},
                        "lagBytes": {"type": "integer", "format": "int64"},
                        "ready": {"type": "boolean"},
                    },
                },
            },
            "quorum": {
                "type": "object",
                "description": "Whether a failover now is proven to keep every acknowledged commit.",
                "properties": {"provable": {"type": "boolean"}, "reason": {"type": "string"}},
            },
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": _condition(),
            },
            "switchover": {
                "type": "object",
                "description": "The spec.switchover request's record: Pending, then Done or Refused with why.",
                "properties": {
                    "target": {"type": "string"},
                    "at": {"type": "string"},
                    "state": {"type": "string", "enum": ["Pending", "Done", "Refused"]},
                    "message": {"type": "string"},
                    "time": {"type": "string", "format": "date-time"},
                    "issued": {"type": "string", "format": "date-time"},
                },
            },
            "lastFailover": {
                "type": "object",
                "properties": {
                    "time": {"type": "string", "format": "date-time"},
                    "from": {"type": "string"},
                    "to": {"type": "string"},
                    "reason": {"type": "string"},
                    "term": {"type": "integer", "format": "int64"},
                    "durations": {
                        "type": "object",
                        "description": "Seconds per phase of the failover (detect, elect, fence, promote, ...).",
                        "additionalProperties": {"type": "string"},
                    },
                },
            },
        },
    }


def postgrescluster_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": "pgquorum"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": "postgrescluster",
                "shortNames": ["pgq"],
                "categories": ["all", "pgquorum"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Instances", "type": "integer", "jsonPath": ".spec.instances"},
                        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyInstances"},
                        {"name": "Leader", "type": "string", "jsonPath": ".status.leader"},
                        {"name": "Term", "type": "integer", "jsonPath": ".status.term"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": _metadata_schema(),
                                "spec": _spec_schema(),
                                "status": _status_schema(),
                            },
                            "x-kubernetes-validations": _root_rules(),
                        }
                    },
                }
            ],
        },
    }
