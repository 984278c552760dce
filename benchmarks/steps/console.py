"""7. Console pages at 1,000 and 100,000 open deliveries (``benchmarks/console.py``)."""

from __future__ import annotations

from benchmarks.harness import Row, Run, cleanup, open_count, stack_for, start_redis, start_sandbox


def measure_console(run: Run) -> None:
    from benchmarks import console

    with cleanup() as c:
        redis_server = start_redis(c, run.work, "console")
        sandbox = start_sandbox(c, run.log_dir("console"))
        stack = stack_for(c, redis_server, sandbox, run.log_dir("console"))
        stack.start_intake()
        console.accept(stack.env, console.SMALL + console.DEAD, "a")
        dead_id = console.make_dead(stack.redis(), stack.keys, console.DEAD)
        paths, cookie = console.console_paths(dead_id), console.cookie_for()
        small = console.time_pages(stack.intake_url, cookie, paths)
        console.accept(stack.env, console.LARGE - console.SMALL, "b")
        large = console.time_pages(stack.intake_url, cookie, paths)
        assert open_count(stack) >= console.LARGE, open_count(stack)
    run.details["console"] = {
        "open_small": console.SMALL,
        "open_large": console.LARGE,
        "small": small,
        "large": large,
    }
    for path in paths:
        big, base = large[path]["p95_ms"], small[path]["p95_ms"]
        run.rows.append(
            Row(
                f"7. Console {path} p95 at 100,000 open (at 1,000)",
                big,
                base,
                big / base,
                "< 100 ms",
                big < console.BAR_MS,
                "ms",
            )
        )
