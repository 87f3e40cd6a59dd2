"""A workflow that reads the wall clock, for tests/test_worker.py (a module of its own: the
sandbox re-imports it, so it imports nothing else of the tests)."""

from datetime import datetime

from temporalio import workflow


@workflow.defn
class ReadsTheClock:
    @workflow.run
    async def run(self) -> str:
        return datetime.now().isoformat()
