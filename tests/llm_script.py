"""Scripted replies of an OpenAI-compatible endpoint to the LLM data generator's batch prompts."""

from __future__ import annotations

import json
from typing import Any


def batch_reply(body: dict[str, Any], requests: int = 5, exchanges: int = 3) -> str:
    """A well-formed reply to one generator prompt: ``requests`` request strings for a request batch,
    ``exchanges`` request/response pairs (a response skeleton with a placeholder) for an exchange batch,
    each naming the category and batch the prompt asked for."""
    user = body["messages"][-1]["content"]
    cat = user.split("(", 1)[1].split(")", 1)[0]
    batch = user.split("Batch ", 1)[1].split(" ", 1)[0]
    if "JSON list of strings" in user:
        return json.dumps([f"Synthetic {cat} request {batch}-{i} about topic {i * 7}?" for i in range(requests)])
    return json.dumps([{"request": f"{cat} exchange {batch}-{i}", "response": f"Step 1: get [MATERIAL_{i}]."}
                       for i in range(exchanges)])
