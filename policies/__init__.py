"""YAML retention policies: the schema, and pure decisions (timeline + policy + now -> actions).

- :mod:`policies.schema`: the policy file format, ``load_policies``/``parse_policies``
  (errors as ``FILE:LINE: field.path: message``) and :data:`DEFAULT_POLICY`;
- :mod:`policies.decide`: ``decide(timeline, policy, now_ns)`` returns the actions to
  take, ``coverage()`` the promised and covered windows per class, ``timeline_view()``
  the recoverable points per class;
- :mod:`policies.yamlpos`: a YAML reader that keeps the line of every key (also used by
  the switch's configuration).

This package imports nothing from ``switch``, ``target`` or ``volume_manager``: it
returns actions and the switch performs them.
"""

from policies.decide import (
    Action,
    AllowWrites,
    Cause,
    Coverage,
    CreateMarker,
    FadeBefore,
    Level,
    MapSpan,
    Marker,
    Merge,
    RefuseWrites,
    RetentionPass,
    Segment,
    SetClass,
    Timeline,
    coverage,
    decide,
    is_auto_marker,
    timeline_view,
)
from policies.schema import (
    DEFAULT_POLICY,
    DEFAULT_POLICY_NAME,
    Policy,
    PolicyError,
    PolicyFile,
    load_policies,
    parse_policies,
)

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_POLICY_NAME",
    "Action",
    "AllowWrites",
    "Cause",
    "Coverage",
    "CreateMarker",
    "FadeBefore",
    "Level",
    "MapSpan",
    "Marker",
    "Merge",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "RefuseWrites",
    "RetentionPass",
    "Segment",
    "SetClass",
    "Timeline",
    "coverage",
    "decide",
    "is_auto_marker",
    "load_policies",
    "parse_policies",
    "timeline_view",
]
