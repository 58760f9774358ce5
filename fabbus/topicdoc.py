"""docs/topics.md: the topic reference page, generated from topics.yaml and the message models."""

from __future__ import annotations

import inspect
import json
from typing import Any

from fabbus import acl
from fabbus.asyncapi import ID_RULE, envelope_text, username_rule
from fabbus.examples import example_message, example_topic
from fabbus.messages import MESSAGE_TYPES
from fabbus.schemas import body_schema, envelope_schema
from fabbus.topics import Contract, Topic

_CONSTRAINTS = (
    ("minimum", ">= {}"), ("exclusiveMinimum", "> {}"), ("maximum", "<= {}"), ("exclusiveMaximum", "< {}"),
    ("minLength", "min length {}"), ("maxLength", "max length {}"), ("minItems", "min items {}"),
    ("pattern", "pattern `{}`"), ("contentEncoding", "{}"),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type(s: dict[str, Any]) -> str:
    if "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})" if name in MESSAGE_TYPES else name
    if "const" in s:
        return json.dumps(s["const"])
    if "enum" in s:
        return " \\| ".join(json.dumps(v) for v in s["enum"])
    if "anyOf" in s:
        return " or ".join(_type(x) for x in s["anyOf"])
    t = s.get("type", "any")
    if t == "array":
        return f"array of {_type(s.get('items', {}))}"
    if t == "object" and isinstance(s.get("additionalProperties"), dict):
        return f"object of {_type(s['additionalProperties'])}"
    return str(t)


def _constraints(s: dict[str, Any]) -> list[str]:
    out = [fmt.format(s[key]) for key, fmt in _CONSTRAINTS if key in s]
    for alt in s.get("anyOf", []):
        out += _constraints(alt)
    return out


def _resolve(s: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a ref to an enum definition so the table shows its values."""
    ref = s.get("$ref", "")
    target = defs.get(ref.rsplit("/", 1)[-1]) if ref else None
    return target if target and "enum" in target else s


def field_table(schema: dict[str, Any]) -> list[str]:
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    lines = ["| field | type | required | default | notes |", "|---|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        prop = _resolve(prop, defs)
        default = json.dumps(prop["default"]) if "default" in prop else ""
        notes = "; ".join([*_constraints(prop), *([prop["description"]] if "description" in prop else [])])
        lines.append(f"| `{name}` | {_cell(_type(prop))} | {'yes' if name in required else 'no'} | "
                     f"{_cell(default)} | {_cell(notes)} |")
    return lines


def _json_block(data: Any) -> list[str]:
    return ["```json", json.dumps(data, indent=2, ensure_ascii=False), "```"]


def _topic_section(t: Topic) -> list[str]:
    payload = ", ".join(f"[{p}](#{p.lower()})" for p in t.payload)
    return [
        f"### {t.name}", "", t.description, "",
        f"- pattern: `{t.pattern}`",
        f"- example: `{example_topic(t)}`",
        f"- publishers: {', '.join(t.publishers)}",
        f"- subscribers: {', '.join(t.subscribers)}",
        f"- QoS {t.qos}, {'retained' if t.retain else 'not retained'}",
        f"- payload: {payload}", "",
    ]


def _identity(c: Contract) -> list[str]:
    lines = [
        "## Identity and access control", "",
        "Every node authenticates with a username and password (Mosquitto-format password file, "
        "`fab-contract passwd`). A scoped node's username is its scope below the prefix, so one set of "
        "Mosquitto `pattern` lines with `%u` serves every node of a role. Within its scope a node may "
        "publish only the topics that list its role as a publisher and subscribe only to those that "
        "list it as a subscriber; nothing outside its scope. Usernames or client ids containing `+` or "
        "`#` get no pattern grants at all.", "",
        "| role | username | scope | publishes | subscribes |", "|---|---|---|---|---|",
    ]
    for role in c.roles.values():
        scope = f"`{role.scope}/...`" if role.scope else f"`{c.prefix}/#`"
        pubs = ", ".join(t.name for t in c.topics_for(role.name, "publish")) or "nothing"
        subs = ", ".join(t.name for t in c.topics_for(role.name, "subscribe")) or "nothing"
        lines.append(f"| {role.name} | {_cell(username_rule(role, c))} | {scope} | {pubs} | {subs} |")
    lines += [
        "", "The ACL file, for one cloud user named `cloud` "
        "(`fab-contract acl --cloud-user cloud -o var/broker/acl`):", "",
        "```", acl.generate(["cloud"], c).rstrip("\n"), "```", "",
    ]
    return lines


def _message_section(name: str, c: Contract) -> list[str]:
    doc = inspect.cleandoc(vars(MESSAGE_TYPES[name]).get("__doc__") or "")
    topics = [f"[{t.name}](#{t.name})" for t in c.topics.values() if name in t.payload]
    lines = [f"### {name}", ""]
    if doc:
        lines += [doc, ""]
    lines += [
        f"Carried on: {', '.join(topics) or 'no topic'}. Schema: [schemas/{name}.json](schemas/{name}.json).", "",
        *field_table(schema := body_schema(name)), "",
    ]
    for sub, sub_schema in schema.get("$defs", {}).items():
        if "properties" in sub_schema:
            lines += [f"`{sub}` (within {name}):", "", *field_table({**sub_schema, "$defs": schema["$defs"]}), ""]
    lines += ["Example message:", "", *_json_block(example_message(name, c)), ""]
    return lines


def render(c: Contract) -> str:
    lines = [
        "# Bus topic reference", "",
        "<!-- Generated from topics.yaml and fabbus/messages.py by `fab-contract generate`; do not edit. -->", "",
        f"Contract version {c.version}; every topic lies under `{c.prefix}/`. Machine-readable forms: "
        "[asyncapi.yaml](asyncapi.yaml) (AsyncAPI 3.0) and the JSON Schemas in [schemas/](schemas/).", "",
        "## Placeholders", "", ID_RULE, "", "| placeholder | meaning |", "|---|---|",
        *[f"| `{{{p}}}` | {_cell(d)} |" for p, d in c.placeholders.items()], "",
        "## Topics", "",
        "| name | pattern | publishers → subscribers | QoS | retain | payload |", "|---|---|---|---|---|---|",
    ]
    for t in c.topics.values():
        lines.append(f"| [{t.name}](#{t.name}) | `{t.pattern}` | {', '.join(t.publishers)} → "
                     f"{', '.join(t.subscribers)} | {t.qos} | {'yes' if t.retain else 'no'} | "
                     f"{', '.join(t.payload)} |")
    lines.append("")
    for t in c.topics.values():
        lines += _topic_section(t)
    env = envelope_schema()
    lines += ["## The envelope", "", envelope_text(), "", *field_table(env), "",
              "Schema: [schemas/Envelope.json](schemas/Envelope.json).", ""]
    lines += _identity(c)
    lines += ["## Message types", ""]
    for name in sorted({m for t in c.topics.values() for m in t.payload}):
        lines += _message_section(name, c)
    return "\n".join(lines).rstrip("\n") + "\n"
