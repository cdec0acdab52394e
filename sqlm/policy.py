"""What SQL on a connection may touch outside its catalog.

A local connection (the CLI, Python) may read and write any file its user can, set global defaults and
change the catalog. The server's /v1/sql runs under `SqlPolicy.sandbox()`: no file reads or writes
unless one directory is opened to it (`sqlm serve --sql-files DIR`: paths resolved, symlinks followed,
anything outside refused), no `SET GLOBAL` / `RESET GLOBAL`, and no DDL unless `--sql-write`.
Refusals name what was refused, never a file's contents.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PolicyError(PermissionError):
    pass


@dataclass(frozen=True)
class SqlPolicy:
    files: bool = True  # table functions over paths, quoted file names, COPY TO, CREATE MODEL FROM 'path'
    file_root: Path | None = None  # when set, only paths inside it
    ddl: bool = True  # CREATE TABLE / CREATE MODEL
    global_settings: bool = True  # SET GLOBAL / RESET GLOBAL: defaults of every later session

    @staticmethod
    def sandbox(files_dir: str | Path | None = None, write: bool = False) -> SqlPolicy:
        root = Path(files_dir).expanduser().resolve(strict=True) if files_dir is not None else None
        if root is not None and not root.is_dir():
            raise NotADirectoryError(f"--sql-files must be a directory: {files_dir}")
        return SqlPolicy(files=root is not None, file_root=root, ddl=write, global_settings=False)

    def path(self, text: str, purpose: str) -> str:
        """The file `text` names, where this policy allows it for `purpose` ('read' | 'write'); PolicyError else."""
        if not self.files:
            raise PolicyError(f"cannot {purpose} files here: this server's SQL has no file access "
                              "(start it with --sql-files DIR to open one directory)")
        if self.file_root is None:
            return text
        if ".." in Path(text).parts:
            raise PolicyError(f"cannot {purpose} {text!r}: paths with '..' are refused")
        candidate = Path(text).expanduser()
        resolved = (candidate if candidate.is_absolute() else self.file_root / candidate).resolve()
        if not resolved.is_relative_to(self.file_root):
            raise PolicyError(f"cannot {purpose} {text!r}: only files under the server's --sql-files directory "
                              "are allowed")
        return str(resolved)

    def check_ddl(self, what: str) -> None:
        if not self.ddl:
            raise PolicyError(f"{what} is not allowed here (start the server with --sql-write to allow it)")

    def check_global(self) -> None:
        if not self.global_settings:
            raise PolicyError("SET GLOBAL / RESET GLOBAL are not allowed here: they would change every later "
                              "session's defaults; SET (this request only) is")
