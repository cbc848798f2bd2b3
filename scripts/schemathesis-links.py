#!/usr/bin/env python3
"""Proves from Schemathesis' HAR that its stateful phase walked the document's links to
real answers, not only that it found no failure: a run that never gets a cart past
checkout would pass every check and test nothing about orders.

    schemathesis-links.py EXCHANGES.har

Each chain below must appear at least once: a request answered with the first status,
then a request to the path its answer's field names, answered with the second. Only a
link can make such a pair: an order id is a fresh UUID that no generator guesses.
Prints how many times each chain was walked; exits 1 when one never was.
"""

import json
import re
import sys
from urllib.parse import urlparse

# (what, first method, first path regex, first status, field of its JSON answer,
#  second method, second path template, second status)
CHAINS = [
    ("checkout -> order", "POST", r"^/api/checkout$", 201, "id",
     "GET", "/api/orders/{}", 200),
    ("cart line -> cart", "PUT", r"^/api/cart/items/[^/]+$", 200, None,
     "GET", "/api/cart", 200),
    ("admin product -> product", "POST", r"^/api/admin/products$", 201, "slug",
     "GET", "/api/products/{}", 200),
]


def exchanges(har):
    for e in har.get("log", {}).get("entries", []):
        req, resp = e.get("request", {}), e.get("response", {})
        text = (resp.get("content") or {}).get("text") or ""
        yield req.get("method", ""), urlparse(req.get("url", "")).path, resp.get("status"), text


def walked(entries, chain):
    _, m1, p1, s1, field, m2, p2, s2 = chain
    wanted, count = set(), 0
    for method, path, status, text in entries:
        if method == m1 and re.match(p1, path) and status == s1:
            if field is None:
                wanted.add(p2)
                continue
            try:
                value = json.loads(text).get(field)
            except (ValueError, AttributeError):
                value = None
            if isinstance(value, str):
                wanted.add(p2.format(value))
        elif method == m2 and status == s2 and path in wanted:
            count += 1
    return count


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        entries = list(exchanges(json.load(f)))
    missing = 0
    for chain in CHAINS:
        n = walked(entries, chain)
        print(f"==> stateful link {chain[0]}: walked {n} time(s)")
        if n == 0:
            missing += 1
    if missing:
        print(f"==> {missing} link chain(s) never walked to a real answer", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
