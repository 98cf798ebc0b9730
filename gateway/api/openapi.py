"""The OpenAPI document: FastAPI's own routes plus the bare-ASGI inference endpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gateway.api.protocol import ErrorResponse

_ERROR = {
    "description": "An OpenAI-style error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def _component(schemas: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    body = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(body.pop("$defs", {}))
    schemas[model.__name__] = body
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def install_openapi(api: FastAPI, inference: Mapping[str, type[BaseModel]]) -> None:
    """Serve at /openapi.json a document that also describes `inference` (path -> model)."""

    def document() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(title=api.title, version=api.version, routes=api.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            _component(schemas, ErrorResponse)
            for path, model in inference.items():
                schema["paths"][path] = {
                    "post": {
                        "summary": f"OpenAI-compatible {path.rsplit('/', 1)[1]} (SSE if stream)",
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": _component(schemas, model)}},
                        },
                        "responses": {"200": {"description": "The completion"}, "default": _ERROR},
                    }
                }
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = document  # type: ignore[method-assign]
