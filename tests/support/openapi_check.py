"""Checks answers of the daemon's API against its OpenAPI document.

Reads JSON on stdin: {"document": <the OpenAPI document>, "answers": [{"path": "/api/v1/jobs/{id}",
"method": "get", "status": 200, "body": <the JSON answer>}, ...]}. Each body is validated with
jsonschema (draft 2020-12, which OpenAPI 3.1 schemas are) against the schema the document gives
for that path, method and status. Objects are checked strictly: a field the document does not
name is an error, so the document cannot fall behind the code. Prints every problem; exits 1 if
there is one.
"""

import json
import sys

import jsonschema


def strict(schema):
    """The schema with every object closed to fields it does not name."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(value) for value in schema]
    return schema


def main():
    given = json.load(sys.stdin)
    document = given["document"]
    components = strict(document.get("components", {}))
    problems = []
    for answer in given["answers"]:
        where = f'{answer["method"].upper()} {answer["path"]} {answer["status"]}'
        operation = document["paths"].get(answer["path"], {}).get(answer["method"])
        if operation is None:
            problems.append(f"{where}: the document has no such operation")
            continue
        response = operation["responses"].get(str(answer["status"]))
        if response is None:
            problems.append(f"{where}: the document names no such status")
            continue
        content = response.get("content", {}).get("application/json")
        if content is None:
            problems.append(f"{where}: the document gives no JSON schema")
            continue
        root = dict(strict(content["schema"]))
        root["components"] = components
        validator = jsonschema.Draft202012Validator(root)
        for error in validator.iter_errors(answer["body"]):
            path = "/".join(str(part) for part in error.absolute_path)
            problems.append(f"{where}: at /{path}: {error.message}")
    for problem in problems:
        print(problem)
    print(f"checked {len(given['answers'])} answers, {len(problems)} problems")
    sys.exit(1 if problems else 0)


main()
