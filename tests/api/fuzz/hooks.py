"""schemathesis hooks for tests/api/test_fuzz.py: what JSON Schema cannot say, said to the generator.

Question ids must be unique within a blueprint: JSON Schema can require items to be unique, but not one
member of them. Generated blueprints (and merge patches) get duplicate ids renamed, which keeps a
schema-valid case schema-valid and valid for the server, and leaves any other problem of a negative case
(an id that breaks its pattern is never touched) in place.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis

QUESTION_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
BLUEPRINT_BODIES = {("POST", "/v1/blueprints"), ("PATCH", "/v1/blueprints/{id}")}


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """A case hook, as the coverage phase applies only those (body hooks are for the fuzzing phase)."""
    operation = context.operation
    if operation is not None and (operation.method.upper(), operation.path) in BLUEPRINT_BODIES:
        _rename_duplicate_ids(case.body)
    return case


def _rename_duplicate_ids(body: Any) -> None:
    questions = body.get("questions") if isinstance(body, dict) else None
    if isinstance(questions, list):
        seen: set[str] = set()
        for question in questions:
            qid = question.get("id") if isinstance(question, dict) else None
            if not isinstance(qid, str) or not QUESTION_ID.match(qid):
                continue
            n = 1
            while question["id"] in seen:
                question["id"] = f"{qid[:58]}-{n}"
                n += 1
            seen.add(question["id"])
