"""A JSON Schema of KServe's InferenceService, built at test time from the models of KServe's own
released Python SDK (the `kserve` package) and the Kubernetes client models they reference (the
`kubernetes` package), for the offline check of deploy/kserve (tests/deploy/test_kserve.py).

Each generated model class lists its fields in `openapi_types` (field -> type name) and their JSON
names in `attribute_map`. A model becomes an object schema with exactly those properties
(`additionalProperties: false`, so a misspelt field fails, as `kubernetes-validate --strict` does
for deploy/k8s). A field is required when the SDK itself refuses None for it: the setter raises
ValueError with client-side validation on (the setter-based generator of `kserve` and of older
`kubernetes` releases), or the pydantic field is required (the generator of newer `kubernetes`).

Nothing here is a copy of KServe's CRD: whatever the installed SDK says, the schema says.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import kserve.models
import kubernetes.client

ROOT_MODEL = "V1beta1InferenceService"

# The generators' names of primitive types.
PRIMITIVES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string"},
    "date": {"type": "string"},
    # The generators' type for IntOrString (ports, maxSurge) and for free-form JSON alike: nothing
    # about the value can be checked, so anything passes.
    "object": {},
}

# A Kubernetes quantity ("2", 2, "16Gi", 0.5): a string or a number.
QUANTITY: dict[str, Any] = {"type": ["string", "number"]}

# Type names the SDK refers to but does not define (the generator kept the Go package's name, or
# the type is a Go type without a model). Any other unknown name is an error: a new SDK release
# must not loosen the check silently.
ALIASES: dict[str, str | dict[str, Any]] = {
    "K8sIoApiAppsV1DeploymentStrategy": "V1DeploymentStrategy",
    "K8sIoApiAutoscalingV2HorizontalPodAutoscalerBehavior": "V2HorizontalPodAutoscalerBehavior",
    "ResourceQuantity": QUANTITY,
    "V1beta1MetricQuantity": QUANTITY,
    # Only under `status`, which KServe's controller writes and a manifest never does.
    "KnativeAddressable": {},
    "KnativeCondition": {},
    "KnativeURL": {},
    "KnativeDevServingPkgApisServingV1TrafficTarget": {},
    "V1Time": {},
}

# Quantities the Kubernetes client types as plain strings; the API server also takes numbers
# (`cpu: 2`). (model, field) -> the schema of the field's values.
QUANTITY_FIELDS: dict[tuple[str, str], dict[str, Any]] = {
    ("V1ResourceRequirements", "limits"): {"type": "object", "additionalProperties": QUANTITY},
    ("V1ResourceRequirements", "requests"): {"type": "object", "additionalProperties": QUANTITY},
    ("V1VolumeResourceRequirements", "limits"): {
        "type": "object",
        "additionalProperties": QUANTITY,
    },
    ("V1VolumeResourceRequirements", "requests"): {
        "type": "object",
        "additionalProperties": QUANTITY,
    },
    ("V1EmptyDirVolumeSource", "size_limit"): QUANTITY,
}

# 'list[X]' / 'List[X]' and 'dict(str, X)' / 'Dict[str, X]', as the two generators write them.
LIST = re.compile(r"(?:list|List)\[(.*)\]")
DICT = re.compile(r"(?:dict\(|Dict\[)str, (.*)[)\]]")


def model_class(name: str) -> Any:
    """The SDK's model class called `name`: KServe's own, else the Kubernetes client's; None if
    neither defines it. (Any: the generated classes are untyped.)"""
    for module in (kserve.models, kubernetes.client):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and hasattr(cls, "openapi_types"):
            return cls
    return None


def required_fields(cls: Any) -> list[str]:
    """The fields (Python names, as in `openapi_types`) the SDK refuses to leave unset."""
    fields = getattr(cls, "model_fields", None)
    if fields is not None:  # pydantic models (newer `kubernetes` releases)
        # Their Python names may differ from `openapi_types`' (`var_exec` for `_exec`): matched
        # by the JSON name.
        json_names = {
            field.serialization_alias or field.alias or name
            for name, field in fields.items()
            if field.is_required()
        }
        attribute_map: dict[str, str] = cls.attribute_map
        return [name for name, json_name in attribute_map.items() if json_name in json_names]
    # Setter-based models: the setter raises ValueError for None when the field is required and
    # client-side validation is on. The configuration class is the one of the model's own package.
    # No __init__: some assign their required fields unconditionally, so an empty one raises.
    configuration = sys.modules[cls.__module__].Configuration()
    configuration.client_side_validation = True
    instance = cls.__new__(cls)
    instance.local_vars_configuration = configuration
    required = []
    for name in cls.openapi_types:
        try:
            setattr(instance, name, None)
        except ValueError:
            required.append(name)
    return required


class SchemaBuilder:
    """Walks `openapi_types` from the root model; one `$defs` entry per model class, so that
    recursive and shared types are written once."""

    def __init__(self) -> None:
        self.defs: dict[str, dict[str, Any]] = {}

    def type_schema(self, type_name: str) -> dict[str, Any]:
        if type_name in PRIMITIVES:
            return PRIMITIVES[type_name]
        if match := LIST.fullmatch(type_name):
            return {"type": "array", "items": self.type_schema(match.group(1))}
        if match := DICT.fullmatch(type_name):
            return {"type": "object", "additionalProperties": self.type_schema(match.group(1))}
        cls = model_class(type_name)
        if cls is None:
            if type_name not in ALIASES:
                raise LookupError(f"the SDK refers to {type_name!r}, which it does not define")
            alias = ALIASES[type_name]
            return self.type_schema(alias) if isinstance(alias, str) else alias
        self.model_schema(cls)
        return {"$ref": f"#/$defs/{cls.__name__}"}

    def model_schema(self, cls: Any) -> None:
        name = cls.__name__
        if name in self.defs:
            return
        self.defs[name] = {}  # placed first: a recursive reference ends here
        types: dict[str, str] = cls.openapi_types
        json_names: dict[str, str] = cls.attribute_map
        properties = {
            json_names[field]: QUANTITY_FIELDS.get((name, field)) or self.type_schema(type_name)
            for field, type_name in types.items()
        }
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        required = [json_names[field] for field in required_fields(cls)]
        if required:
            schema["required"] = required
        self.defs[name] = schema


def inference_service_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an InferenceService, from the installed SDK."""
    builder = SchemaBuilder()
    root = builder.type_schema(ROOT_MODEL)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"InferenceService, from the models of kserve {sdk_version()}",
        **root,
        "$defs": builder.defs,
    }


def sdk_version() -> str:
    from importlib.metadata import version

    return version("kserve")
