"""The drop folder (the seed's "FTP to NFS" inbox): files put there are imported.

Layout: `<drop dir>/<tenant>/<contact list id>/<file>.csv|.txt|.xlsx`. A file is taken once
its size has not changed between two scans (it is no longer being written); it is claimed
by renaming it into `.processing/`, which only one replica can do, then imported (APPEND)
and moved to `.done/` or `.failed/` with a note naming the import or the error.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from cxmesh.lists.v1 import import_pb2
from cxmesh_server.lists.import_handlers import ImportHandlers, Spool
from cxmesh_server.runtime.errors import DomainError
from cxmesh_server.runtime.logging import repeating

log = logging.getLogger(__name__)

SCAN_SECONDS = 2.0
FORMATS = {
    ".csv": import_pb2.FileFormat(file_type=import_pb2.FILE_TYPE_CSV),
    ".txt": import_pb2.FileFormat(file_type=import_pb2.FILE_TYPE_DELIMITED, delimiter="|"),
    ".xlsx": import_pb2.FileFormat(file_type=import_pb2.FILE_TYPE_XLSX),
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class DropFolder:
    def __init__(self, root: Path, handlers: ImportHandlers, spool_dir: Path) -> None:
        self._root = root
        self._handlers = handlers
        self._spool_dir = spool_dir
        self._sizes: dict[Path, int] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception:
                log.exception("drop folder scan failed", extra=repeating())
            await asyncio.sleep(SCAN_SECONDS)

    async def scan(self) -> list[import_pb2.Import]:
        started = []
        for path in await asyncio.to_thread(self._ready_files):
            result = await self._take(path)
            if result is not None:
                started.append(result)
        return started

    def _ready_files(self) -> list[Path]:
        ready, sizes = [], {}
        if not self._root.is_dir():
            return []
        for path in sorted(self._root.glob("*/*/*")):
            if not path.is_file() or path.suffix.lower() not in FORMATS:
                continue
            size = path.stat().st_size
            sizes[path] = size
            if self._sizes.get(path) == size:
                ready.append(path)
        self._sizes = sizes
        return ready

    async def _take(self, path: Path) -> import_pb2.Import | None:
        tenant, list_id = path.parent.parent.name, path.parent.name
        if not (_NAME.match(tenant) and _NAME.match(list_id)):
            return None
        claimed = await asyncio.to_thread(self._claim, path)
        if claimed is None:
            return None
        requested = import_pb2.Import(
            mode=import_pb2.IMPORT_MODE_APPEND,
            file_name=path.name,
            inline_format=FORMATS[path.suffix.lower()],
            request_id=f"drop:{path.name}:{self._sizes.get(path, 0)}",
        )
        try:
            spool = await asyncio.to_thread(Spool.of_file, self._spool_dir, claimed)
            started = await self._handlers.begin(
                tenant,
                f"contactLists/{list_id}",
                requested,
                spool,
                import_pb2.IMPORT_SOURCE_DROP_FOLDER,
            )
        except DomainError as error:
            await asyncio.to_thread(self._finish, claimed, ".failed", error.message)
            return None
        await asyncio.to_thread(self._finish, claimed, ".done", started.name)
        return started

    @staticmethod
    def _claim(path: Path) -> Path | None:
        processing = path.parent / ".processing"
        processing.mkdir(exist_ok=True)
        claimed = processing / path.name
        try:
            path.rename(claimed)  # atomic: exactly one replica wins the file
        except FileNotFoundError:
            return None
        return claimed

    @staticmethod
    def _finish(claimed: Path, outcome: str, note: str) -> None:
        folder = claimed.parent.parent / outcome
        folder.mkdir(exist_ok=True)
        claimed.rename(folder / claimed.name)
        (folder / f"{claimed.name}.result").write_text(note + "\n")
