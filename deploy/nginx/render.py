"""Render marketflow.conf.template (beside this file) into an nginx include for conf.d/.

    python deploy/nginx/render.py --cert /etc/ssl/marketflow/fullchain.pem \\
        --key /etc/ssl/marketflow/privkey.pem --htpasswd /etc/nginx/marketflow.htpasswd \\
        > /etc/nginx/conf.d/marketflow.conf
    nginx -t && systemctl reload nginx

Defaults: Dagster UI on https://<host>:8443 (backend 127.0.0.1:3000), dashboard on
https://<host>:8444 (backend 127.0.0.1:8501), listening on 0.0.0.0.

The password file (one ``user:hash`` line per user), either of:

    printf 'analyst:%s\\n' "$(openssl passwd -apr1)" > /etc/nginx/marketflow.htpasswd
    htpasswd -c -B /etc/nginx/marketflow.htpasswd analyst      # apache2-utils, bcrypt

then ``chown root:www-data`` and ``chmod 640`` it (nginx workers run as www-data).

Standard library only. A missing file or a bad value: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import re
import string
import sys
from pathlib import Path

TEMPLATE = Path(__file__).with_name("marketflow.conf.template")
UPSTREAM = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


class RenderError(Exception):
    """A bad argument: reported in one line, exit code 2."""


def _port(value: str, option: str) -> str:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise RenderError(f"{option} {value!r} is not a TCP port")
    return str(int(value))


def _upstream(value: str, option: str) -> str:
    match = UPSTREAM.match(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise RenderError(f"{option} {value!r} is not host:port (e.g. 127.0.0.1:3000)")
    return value


def _file(value: str, option: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise RenderError(f"{option} {value}: no such file")
    return str(path.resolve())  # nginx reads relative paths from its prefix, not from here


def _listen_host(value: str) -> str:
    host = f"[{value}]" if ":" in value and not value.startswith("[") else value  # IPv6
    if not re.match(r"^([A-Za-z0-9.*-]+|\[[0-9A-Fa-f:.]+\])$", host):
        raise RenderError(f"--listen {value!r} is not an address")
    return host


def render(args: argparse.Namespace, template: str | None = None) -> str:
    values = {
        "CERT": _file(args.cert, "--cert"),
        "KEY": _file(args.key, "--key"),
        "HTPASSWD": _file(args.htpasswd, "--htpasswd"),
        "DAGSTER_PORT": _port(args.dagster_port, "--dagster-port"),
        "DASHBOARD_PORT": _port(args.dashboard_port, "--dashboard-port"),
        "LISTEN_HOST": _listen_host(args.listen),
        "DAGSTER_UPSTREAM": _upstream(args.dagster_upstream, "--dagster-upstream"),
        "DASHBOARD_UPSTREAM": _upstream(args.dashboard_upstream, "--dashboard-upstream"),
    }
    if values["DAGSTER_PORT"] == values["DASHBOARD_PORT"]:
        raise RenderError("--dagster-port and --dashboard-port must differ")
    text = TEMPLATE.read_text() if template is None else template
    # safe_substitute: nginx's own $variables (lower case) stay as they are
    out = string.Template(text).safe_substitute(values)
    left = sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", out)))
    if left:
        raise RenderError(f"template placeholders without a value: {', '.join(left)}")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="render.py",
        description="Print the nginx config that puts the Dagster UI and the dashboard behind "
        "TLS and HTTP basic auth (for /etc/nginx/conf.d/marketflow.conf).",
        epilog="password file: printf 'USER:%%s\\n' \"$(openssl passwd -apr1)\" > FILE, "
        "or htpasswd -c -B FILE USER (apache2-utils)",
    )
    p.add_argument("--cert", required=True, help="TLS certificate (PEM, full chain)")
    p.add_argument("--key", required=True, help="its private key (PEM)")
    p.add_argument("--htpasswd", required=True, help="basic-auth password file")
    p.add_argument("--dagster-port", default="8443", help="TLS port of the Dagster UI (8443)")
    p.add_argument("--dashboard-port", default="8444", help="TLS port of the dashboard (8444)")
    p.add_argument("--listen", default="0.0.0.0", help="address nginx listens on (0.0.0.0)")
    p.add_argument(
        "--dagster-upstream", default="127.0.0.1:3000", help="Dagster UI backend (127.0.0.1:3000)"
    )
    p.add_argument(
        "--dashboard-upstream", default="127.0.0.1:8501", help="dashboard backend (127.0.0.1:8501)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        text = render(args)
    except RenderError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
