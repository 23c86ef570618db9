"""One measurement in a fresh process: ``python -m bench.child SPEC_JSON OUT_JSON``.

The parent (``python -m bench``) starts one of these per measurement, in a temporary
working directory (and, for PostgreSQL, with a fresh database it created), so neither
engine's process-global state, caches or memory carry over from one measurement to the
next. Only the side being measured is imported.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from bench.common import RunContext, Sizes, Target, max_rss_mb


def main(argv: list[str]) -> int:
    """Run the measurement described by ``argv[0]`` and write the result to ``argv[1]``."""
    spec: dict[str, Any] = json.loads(argv[0])
    out_path = argv[1]
    sizes = Sizes.from_dict(spec["sizes"])
    ctx = RunContext(
        workdir=spec["workdir"],
        pg_url=spec.get("pg_url"),
        extra=spec.get("extra") or {},
    )
    started = time.perf_counter()
    result: dict[str, Any]
    kind = spec["kind"]
    if kind == "pg_check":
        from bench import pg

        server = spec["pg_server"]
        try:
            info: dict[str, Any] = {"server": pg.server_info(server), "server_error": None}
        except Exception as exc:
            info = {"server": None, "server_error": pg._reason(exc)}
        if info["server"] is not None:
            ok, reason = pg.stalwart_available(server)
        else:
            ok, reason = False, info["server_error"]
        result = {**info, "stalwart_ok": ok, "stalwart_reason": reason}
    elif kind == "raw":
        from bench import raw

        result = {"modes": raw.run(ctx.workdir, sizes.raw_seconds)}
    elif kind == "raw_pg":
        from bench import raw

        assert ctx.pg_url is not None
        result = {"modes": raw.run_pg(ctx.pg_url, sizes.raw_seconds, sizes.raw_pg_connections)}
    else:
        target = Target(**spec["target"])
        scenario: str = spec["scenario"]
        if scenario == "recovery":
            from bench import recovery

            result = asyncio.run(recovery.run(target, sizes, ctx))
        elif scenario == "scale" and target.engine == "stalwart":
            from bench import scale

            result = asyncio.run(scale.run_stalwart(target, sizes, ctx))
        elif target.engine == "stalwart":
            from bench import stalwart_side

            result = asyncio.run(stalwart_side.run(scenario, target, sizes, ctx))
        else:
            from bench import dbos_side

            result = asyncio.run(dbos_side.run(scenario, target, sizes, ctx))
    result["max_rss_mb"] = max_rss_mb()
    result["process_s"] = time.perf_counter() - started
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
