"""The bulk "assign one image to many" action marks local-mode starts as one fan-out group."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab)
from __future__ import annotations

import pytest

from provisiond.model import Image, Job
from tests.unit.weblab import add_node, api, app, ctx, tokens  # noqa: F401


@pytest.mark.parametrize(
    ("n", "mode", "grouped"),
    [(3, "local", True), (2, "local", True), (1, "local", False), (2, "template", False)],
)
def test_bulk_assign_groups_local_starts_of_one_image(api, ctx, n, mode, grouped):
    with ctx.db.transaction() as s:
        s.add(Image(name="img", size=1))
    names = [add_node(ctx, 40 + i) for i in range(n)]
    body = {"resources": names, "action": "assign", "mode": mode}
    if mode == "local":
        body["image"] = "img"
    out = api("POST", "/resources/bulk", json=body).get_json()
    assert out["ok"] == n, out
    with ctx.db.reader() as s:
        fans = [(j.params or {}).get("fanout") for j in s.query(Job).order_by(Job.id)]
    assert len(fans) == n
    if grouped:
        assert len({f["group"] for f in fans}) == 1 and all(f["size"] == n for f in fans)
        assert fans[0]["group"].startswith("bulk-")
    else:
        assert fans == [None] * n
