"""``crm-pulse statement USER``: a person's audit statement from a running worker's API."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from urllib.parse import quote, urlencode

import orjson

from app.settings import Settings


def print_statement(settings: Settings, user_id: str, period: str, at: str | None,
                    answer_format: str, url: str | None) -> int:
    """Print the statement (CSV or JSON) to stdout; 0, or 1 with the reason on stderr."""
    query = {"period": period, "format": answer_format, **({"at": at} if at else {})}
    base = (url or settings.web_url).rstrip("/")
    if not base.startswith(("http://", "https://")):
        print(f"statement: --url must be http(s)://host:port, not {base!r}", file=sys.stderr)
        return 2
    request = urllib.request.Request(  # noqa: S310 (http URL, checked above)
        f"{base}/api/users/{quote(user_id, safe='')}/statement?{urlencode(query)}")
    if settings.api_token is not None:
        request.add_header("Authorization",
                           f"Bearer {settings.api_token.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as error:
        detail = orjson.loads(error.read() or b"{}")
        print(f"statement: {error.code} {detail.get('error')}: {detail.get('message')}",
              file=sys.stderr)
        return 1
    except OSError as error:
        print(f"statement: no worker answers at {base} ({error}); start one (crm-pulse worker "
              "or crm-pulse dev) or pass --url", file=sys.stderr)
        return 1
    if answer_format == "json":
        body = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) + b"\n"
    sys.stdout.write(body.decode())
    return 0
