"""The probes' schemas in the OpenAPI document (:mod:`worker.intake.routes.health`)."""

from __future__ import annotations

from typing import Any


def health_schemas() -> dict[str, Any]:
    """``Health`` (/healthz) and ``Ready`` (/readyz, with the shards' list under REDIS_SHARDS)."""
    return {
        "Health": {
            "type": "object",
            "required": ["ok"],
            "properties": {"ok": {"type": "boolean", "enum": [True]}},
        },
        "Ready": {
            "type": "object",
            "required": ["ok", "accepting", "memory_ratio"],
            "properties": {
                "ok": {"type": "boolean", "enum": [True]},
                "accepting": {
                    "type": "boolean",
                    "description": "false while Redis is at or above REDIS_MEMORY_HEADROOM (send answers 503 redis_full)",
                },
                "memory_ratio": {
                    "type": "number",
                    "description": "used_memory / maxmemory (0: no maxmemory); with REDIS_SHARDS the fullest shard's",
                },
                "shards": {
                    "type": "array",
                    "description": "with REDIS_SHARDS only: each shard (ready while any answers; docs/scaling.md)",
                    "items": {
                        "type": "object",
                        "required": ["shard", "up", "accepting", "memory_ratio"],
                        "properties": {
                            "shard": {"type": "integer"},
                            "up": {"type": "boolean"},
                            "accepting": {"type": "boolean"},
                            "memory_ratio": {"type": "number", "nullable": True},
                        },
                    },
                },
            },
        },
    }
