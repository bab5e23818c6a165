"""Reading a Query.Call reply (proto/strata.proto CallReply) in tests: each cell as Python, each row
as a dict by column name."""
import decimal


def cell(c):
    """One cell as Python: int, float, Decimal (exact digits), bool, str (dates and timestamps too) or None."""
    kind = c.WhichOneof("kind")
    if kind is None or kind == "is_null":
        return None
    if kind == "decimal_value":
        return decimal.Decimal(c.decimal_value)
    return getattr(c, kind)


def rows(reply):
    """A CallReply's rows as dicts {column name: value}."""
    names = [c.name for c in reply.columns]
    return [dict(zip(names, map(cell, r.cells))) for r in reply.rows]


def listing(source_http, day):
    """The simulated review site's businesses for `day` ({id: record}), read page by page over
    plain HTTP: what a test compares the warehouse with."""
    import json
    import urllib.request
    out, page = {}, 1
    while True:
        with urllib.request.urlopen(f"{source_http}/businesses?date={day}&page={page}", timeout=10) as r:
            body = json.loads(r.read())
        for b in body["businesses"]:
            out[b["id"]] = b
        if page >= body["total_pages"]:
            return out
        page += 1
