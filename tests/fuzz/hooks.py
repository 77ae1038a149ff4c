"""Schemathesis hooks for fuzzing the wallet's GraphQL API (loaded by tests/fuzz.rs through
SCHEMATHESIS_HOOKS): value generators for the schema's custom scalars, and the checks every
answer must pass besides schemathesis's own (no 5xx, answered within the time limit).

Generators mix well-formed values, which reach the ledger, with arbitrary text, which
exercises the refusals. Ids of real objects come from WALLET_FUZZ_IDS (comma-separated), set
by the test after it has created wallets and movements.
"""

import base64
import datetime
import json
import os

import graphql
import schemathesis
from hypothesis import strategies as st
from schemathesis.graphql import nodes

arbitrary = st.text(max_size=48)

known_ids = [i for i in os.environ.get("WALLET_FUZZ_IDS", "").split(",") if i]
invented_ids = st.builds(
    lambda kind, n: base64.urlsafe_b64encode(f"{kind}:{n}".encode()).decode().rstrip("="),
    st.sampled_from(["Wallet", "Transaction", "Reconciliation", "Hold", "Nope"]),
    st.integers(min_value=-2, max_value=2**63),
)
ids = st.one_of(
    st.sampled_from(known_ids) if known_ids else st.nothing(),
    invented_ids,
    arbitrary,
)
schemathesis.graphql.scalar("ID", ids.map(nodes.String))

amounts = st.one_of(
    st.decimals(
        min_value=-(10**6),
        max_value=10**6,
        places=2,
        allow_nan=False,
        allow_infinity=False,
    ).map(str),
    st.from_regex(r"-?[0-9]{1,40}(\.[0-9]{0,40})?", fullmatch=True),
    st.sampled_from(["0", "0.00", "1e3", "NaN", "Infinity", "-0", "79228162514264337593543950336"]),
    arbitrary,
)
schemathesis.graphql.scalar("Decimal", amounts.map(nodes.String))

moments = st.one_of(
    st.datetimes(
        min_value=datetime.datetime(1, 1, 1),
        max_value=datetime.datetime(9999, 12, 31),
        timezones=st.just(datetime.timezone.utc),
    ).map(lambda d: d.isoformat()),
    arbitrary,
)
schemathesis.graphql.scalar("DateTime", moments.map(nodes.String))


def _object(fields):
    return nodes.Object(
        [
            graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=nodes.String(v))
            for k, v in fields.items()
        ]
    )


metadata = st.one_of(
    st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
        arbitrary,
        max_size=40,
    ).map(_object),
    arbitrary.map(nodes.String),
)
schemathesis.graphql.scalar("Metadata", metadata)


@schemathesis.check
def answers_are_graphql_json_and_never_internal(ctx, response, case):
    """No 5xx; every answer is a GraphQL response in JSON; every error has a code and none
    is INTERNAL. (Refusals are errors too: schemathesis's own GraphQL check would count
    every `NOT_FOUND` as a server error, so it is replaced by this one.)"""
    if response.status_code >= 500:
        raise AssertionError(f"HTTP {response.status_code}: {response.content[:200]!r}")
    try:
        body = json.loads(response.content)
    except ValueError as error:
        raise AssertionError(f"a non-JSON answer ({response.status_code}): {response.content[:200]!r}") from error
    if not isinstance(body, dict) or ("data" not in body and "errors" not in body):
        raise AssertionError(f"not a GraphQL response: {str(body)[:200]}")
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        if code == "INTERNAL":
            raise AssertionError(f"INTERNAL: {error}")
        if not code:
            raise AssertionError(f"an error without a code: {error}")
