"""What every `mrag` command shares: context settings, the error decorator, common options, and one
output convention (`output_options`, as sqlite-utils bundles its output options): every command that
prints a result takes `--json` and `--plain`/`-p`, one `plain` parameter. Results are JSON by default,
a line a result (`search`: an object per hit, `heads`: one list); `demo`, `ask` and `eval`, whose output
people read first, print text by default.
`serve` prints nothing."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from mrag.errors import LANCE_STORE, STORAGE_ERRNOS, StoreError, lance_message, no_space
from mrag.settings import Plan, parse_strategy

CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class FiniteFloat(click.FloatRange):
    """click's FloatRange, which lets NaN and the infinities through ("nan" passes any bound): refused here."""

    name = "finite number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("LANCE_LOG", "error")
    os.environ.setdefault("LANCEDB_LOG", "error")  # lancedb's own Rust log (LANCE_LOG is pylance's)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars too, once it is imported
    transformers = sys.modules.get("transformers")  # imported already (the environment is read at its import):
    if transformers is not None:  # importing it here cost every command a second or more, a search by BM25 too
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's errors on bad input into one-line messages and exit status 1 (Ctrl-C: 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # the reader left (`| head`): click ends quietly
            raise
        except KeyboardInterrupt:  # Ctrl-C: the shell's status for SIGINT (click's would be 1, as for an error)
            click.echo("\ninterrupted: what was committed stays, and a write cut off is whole or not at all", err=True)
            raise SystemExit(128 + signal.SIGINT) from None
        except RuntimeError as e:  # Lance's storage errors (a damaged index, not a bug of ours), and a full disk
            if not (str(e).startswith("lance error") or no_space(str(e))):  # faiss's, writing the HNSW graphs
                raise
            raise click.ClickException(lance_message(str(e).splitlines()[0])) from e
        except (ValueError, FileNotFoundError, TypeError, OSError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, ValueError) and not isinstance(e, StoreError) and re.search(LANCE_STORE, first):
                raise click.ClickException(lance_message(first)) from e  # Lance connecting to an object store
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:  # the graphs' folder, the lock file
                raise click.ClickException(lance_message(first)) from e
            raise click.ClickException(first) from e

    return wrapper


db_option: Callable[..., Any] = click.option(
    "--db", envvar="MRAG_DB", required=True, type=click.Path(file_okay=False), help="Index folder (or MRAG_DB)."
)
model_option: Callable[..., Any] = click.option(
    "--model", "-m", envvar="MRAG_MODEL", default=None, help="Hugging Face id or path (or MRAG_MODEL)."
)
where_option: Callable[..., Any] = click.option(
    "--where", metavar="SQL", default=None,
    help="Only chunks this SQL filter keeps, as LanceDB takes it: columns id, doc_id, source (a file's absolute "
         "path), title, position, text, metadata (JSON text); e.g. \"source LIKE '%/notes/%'\".")


def output_options(plain: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--json` and `--plain`/`-p` as one boolean parameter, `plain` (the last flag given wins);
    `plain=True`: text unless --json."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--plain", "-p", "plain", flag_value=True, default=plain,
                          help="Readable text" + (" (the default)." if plain else " instead of JSON."))(fn)
        return click.option("--json", "plain", flag_value=False, default=plain,
                            help="JSON" + (" instead of text." if plain else " (the default)."))(fn)

    return decorate


plain_option = output_options()  # JSON by default


def emit(obj: Any) -> None:
    click.echo(json_line(obj))


def json_line(obj: Any) -> str:
    """`obj` as one line of JSON, non-ASCII text as it is but for the separators a reader that splits lines
    by Unicode's rules (Python's `str.splitlines`) cuts at: U+2028, U+2029 and U+0085 escaped."""
    return json.dumps(obj, ensure_ascii=False).translate(LINE_SEPARATORS)


LINE_SEPARATORS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}
# line breaks and the other control characters (a document's carriage returns, a terminal's escape sequences)
CONTROL = re.compile("\r\n|[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def usage_strategy(strategy: str) -> Plan:
    """A strategy's plan; an unknown one is a usage error (exit 2), as a bad option is."""
    try:
        return parse_strategy(strategy)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def refuse_fusion(strategy: str | None) -> None:
    """Refuse an unknown strategy, or one that fuses sub-queries an LLM writes, where a command has no LLM."""
    if strategy is not None and usage_strategy(strategy).expand == "fusion":
        raise click.UsageError(f"strategy {strategy!r} fuses sub-queries an LLM writes: use `mrag ask` (or the "
                               "server's /search with \"subqueries\")")


def one_line(text: str) -> str:
    """Text as `--plain` prints it on one line: its line breaks and other control characters as spaces (a
    carriage return overwrote the line on a terminal, an escape sequence of a document's reached it)."""
    return CONTROL.sub(" ", text)
