"""One measurement in a fresh process: ``python -m bench.child SPEC_JSON OUT_JSON``.

The parent (``python -m bench``) starts one of these per measurement, in a temporary
working directory, so neither engine's process-global state, caches or memory carry
over from one measurement to the next. Only the side being measured is imported.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from bench.common import Sizes, Target, max_rss_mb


def main(argv: list[str]) -> int:
    """Run the measurement described by ``argv[0]`` and write the result to ``argv[1]``."""
    spec: dict[str, Any] = json.loads(argv[0])
    out_path = argv[1]
    workdir: str = spec["workdir"]
    sizes = Sizes(**spec["sizes"])
    started = time.perf_counter()
    result: dict[str, Any]
    if spec["kind"] == "raw":
        from bench import raw

        result = {"modes": raw.run(workdir, sizes.raw_seconds)}
    else:
        target = Target(**spec["target"])
        scenario: str = spec["scenario"]
        if target.engine == "stalwart":
            from bench import stalwart_side as side
        else:
            from bench import dbos_side as side  # type: ignore[no-redef]
        result = asyncio.run(side.run(scenario, target, sizes, workdir))
    result["max_rss_mb"] = max_rss_mb()
    result["process_s"] = time.perf_counter() - started
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
